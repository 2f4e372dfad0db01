// A tiny scripted "browser" for the e2e tests: fetch with a cookie jar, manual redirects and
// HTML form submission, enough to walk oidc-provider's dev interactions (login with any user
// name, consent) and its device-flow pages, and to land on bearerd's loopback /callback.
//
//   import { authorize, completeDeviceFlow } from './browser.mjs';
//   const r = await authorize(authorizationUrl, { username: 'alice' });   // r.callbackUrl
//   await completeDeviceFlow({ verificationUri, userCode, username: 'bob' });

const MAX_STEPS = 30;

function decodeEntities(s) {
  return String(s)
    .replace(/&quot;/g, '"')
    .replace(/&#39;/g, "'")
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&#x2F;/gi, '/')
    .replace(/&amp;/g, '&');
}

function attr(tag, name) {
  const m = new RegExp(`\\s${name}\\s*=\\s*("([^"]*)"|'([^']*)'|([^\\s>]+))`, 'i').exec(tag);
  if (!m) return undefined;
  return decodeEntities(m[2] ?? m[3] ?? m[4] ?? '');
}

/** The forms of an HTML page: [{ id, action, method, fields: {name: value} }]. */
export function parseForms(html, baseUrl) {
  const forms = [];
  const re = /<form\b([^>]*)>([\s\S]*?)<\/form>/gi;
  let m;
  while ((m = re.exec(html))) {
    const [, head, inner] = m;
    const fields = {};
    const inputs = inner.match(/<input\b[^>]*>/gi) || [];
    for (const input of inputs) {
      const name = attr(input, 'name');
      if (!name) continue;
      fields[name] = attr(input, 'value') ?? '';
    }
    forms.push({
      id: attr(`<form ${head}>`, 'id'),
      action: new URL(attr(`<form ${head}>`, 'action') || baseUrl, baseUrl).href,
      method: (attr(`<form ${head}>`, 'method') || 'get').toUpperCase(),
      fields,
    });
  }
  return forms;
}

/** A cookie jar that follows RFC 6265 closely enough: host-only, path-scoped, expiring. */
export class CookieJar {
  constructor() {
    this.cookies = new Map(); // `${host}|${path}|${name}` -> {host, path, name, value, expires}
  }

  store(url, setCookies) {
    const u = new URL(url);
    for (const line of setCookies) {
      const [pair, ...attrs] = line.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      if (eq < 1) continue;
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = u.pathname.replace(/\/[^/]*$/, '') || '/';
      let expires = Infinity;
      for (const a of attrs) {
        const [k, ...v] = a.split('=');
        const key = k.toLowerCase();
        const val = v.join('=');
        if (key === 'path' && val.startsWith('/')) path = val;
        if (key === 'max-age') expires = Date.now() + Number(val) * 1000;
        if (key === 'expires' && expires === Infinity) expires = Date.parse(val);
      }
      const k = `${u.hostname}|${path}|${name}`;
      if (expires <= Date.now()) this.cookies.delete(k);
      else this.cookies.set(k, { host: u.hostname, path, name, value, expires });
    }
  }

  header(url) {
    const u = new URL(url);
    const now = Date.now();
    const out = [];
    for (const [k, c] of this.cookies) {
      if (c.expires <= now) {
        this.cookies.delete(k);
        continue;
      }
      if (c.host !== u.hostname) continue;
      const p = u.pathname;
      if (p === c.path || p.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`) || c.path === '/') {
        out.push(`${c.name}=${c.value}`);
      }
    }
    return out.join('; ');
  }
}

export class Browser {
  constructor({ log = () => {} } = {}) {
    this.jar = new CookieJar();
    this.steps = [];
    this.log = log;
  }

  /** One request, no redirect following; records the step. */
  async request(method, url, form) {
    const headers = { 'user-agent': 'bearerd-e2e-browser/1.0', accept: 'text/html,application/json' };
    const cookie = this.jar.header(url);
    if (cookie) headers.cookie = cookie;
    let body;
    if (form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(form).toString();
    }
    const res = await fetch(url, { method, headers, body, redirect: 'manual' });
    this.jar.store(url, res.headers.getSetCookie());
    const text = await res.text();
    const step = { method, url, status: res.status, location: res.headers.get('location') };
    this.steps.push(step);
    this.log(`${method} ${url} -> ${res.status}${step.location ? ` ${step.location}` : ''}`);
    return { status: res.status, headers: res.headers, text, url };
  }

  /**
   * Navigates from `url`: follows redirects and submits the provider's forms (login,
   * consent, device code entry and confirmation) until `stop(url)` is true for a redirect
   * target (which is then fetched once, as a browser would) or a page has nothing to submit.
   */
  async navigate(url, { username = 'alice', userCode, stop = () => false } = {}) {
    let method = 'GET';
    let target = url;
    let form;
    for (let i = 0; i < MAX_STEPS; i += 1) {
      const stopping = stop(target);
      const res = await this.request(method, target, form);
      if (stopping) return { final: res, stoppedAt: target };
      if (res.status >= 300 && res.status < 400 && res.headers.get('location')) {
        target = new URL(res.headers.get('location'), target).href;
        method = 'GET';
        form = undefined;
        continue;
      }
      if (res.status !== 200) {
        throw new Error(`browser: ${method} ${target} answered ${res.status}: ${res.text.slice(0, 500)}`);
      }
      const forms = parseForms(res.text, target).filter((f) => f.method === 'POST');
      const next = pickForm(forms, { username, userCode });
      if (!next) return { final: res, stoppedAt: null };
      method = 'POST';
      target = next.action;
      form = next.fields;
    }
    throw new Error(`browser: more than ${MAX_STEPS} steps from ${url}`);
  }
}

// Which form a user would submit on this page, filled in.
function pickForm(forms, { username, userCode }) {
  for (const f of forms) {
    const fields = { ...f.fields };
    if ('login' in fields && 'password' in fields) {
      // oidc-provider's dev login: any user name, any password.
      return { ...f, fields: { ...fields, login: username, password: 'any-password' } };
    }
    if (fields.prompt === 'consent') return { ...f, fields };
    if ('user_code' in fields && fields.confirm === 'yes') return { ...f, fields };
    if ('user_code' in fields && 'xsrf' in fields) {
      if (!fields.user_code) {
        if (!userCode) throw new Error('browser: the device page asks for a user code');
        fields.user_code = userCode;
      }
      return { ...f, fields };
    }
  }
  return undefined;
}

/**
 * Completes an authorization-code login: opens `authorizationUrl`, logs in as `username`,
 * consents if asked, and follows the redirect to the client's loopback `redirect_uri`
 * (bearerd's listener). Returns { callbackUrl, status, body, steps }.
 */
export async function authorize(authorizationUrl, { username = 'alice', log } = {}) {
  const redirectUri = new URL(authorizationUrl).searchParams.get('redirect_uri');
  if (!redirectUri) throw new Error('browser: the authorization URL has no redirect_uri');
  const cb = new URL(redirectUri);
  const browser = new Browser({ log });
  const { final, stoppedAt } = await browser.navigate(authorizationUrl, {
    username,
    stop: (u) => {
      const x = new URL(u);
      return x.origin === cb.origin && x.pathname === cb.pathname;
    },
  });
  if (!stoppedAt) {
    throw new Error(`browser: never redirected to ${redirectUri}; last page: ${final.text.slice(0, 800)}`);
  }
  return { callbackUrl: stoppedAt, status: final.status, body: final.text, steps: browser.steps };
}

/**
 * Completes a device authorization (RFC 8628) as the user: opens the verification URI,
 * enters `userCode` (or opens `verificationUriComplete`), logs in and confirms.
 * Returns { status, body, steps } of the final page.
 */
export async function completeDeviceFlow({
  verificationUri, verificationUriComplete, userCode, username = 'bob', useComplete = false, log,
}) {
  const browser = new Browser({ log });
  const start = useComplete && verificationUriComplete ? verificationUriComplete : verificationUri;
  const { final } = await browser.navigate(start, { username, userCode });
  if (final.status !== 200 || !/Sign-in Success|success/i.test(final.text)) {
    throw new Error(`browser: device flow did not end on a success page: ${final.status} ${final.text.slice(0, 800)}`);
  }
  return { status: final.status, body: final.text, steps: browser.steps };
}
