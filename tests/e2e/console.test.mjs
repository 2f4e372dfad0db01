// The operator console in a real browser: Debian's headless Chromium (puppeteer-core, no
// browser download) against the bearerd binary, a real OpenID provider (oidc-provider) and
// the MCP server as the upstream.
//
//   bash run.sh            (CHROMIUM=/path/to/chromium to use another build)
//
// The page loads, a credential turns valid, a keyboard refresh moves its generation, a login
// goes through the provider's own login form and comes back, a logout shows logged_out; no
// token, secret or refresh token ever reaches the DOM or any response the page fetched.
// It also takes the README's screenshot (CONSOLE_SCREENSHOT, default target/console.png).
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';

import puppeteer from 'puppeteer-core';

import { CLIENTS } from './clients.mjs';
import { authorize } from './browser.mjs';
import { HERE, bearerd, freePorts, getJson, startNodeService, until } from './harness.mjs';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = resolve(HERE, process.env.CONSOLE_SCREENSHOT || '../../target/console.png');
const ADMIN_TOKEN = 'console-admin-token-4d1e9b7c';

let tmp; let oidc; let mcp; let sidecar; let admin; let browser; let page;
const fetched = []; // { url, status, body } of every response the page got from bearerd
const consoleErrors = [];
const pageErrors = []; // uncaught exceptions in the page's script

const card = (name) => `[data-credential="${name}"]`;
// The page re-renders its cards on every event (tokens here rotate every few seconds): find
// and click in one step inside the page, so the button cannot be swapped in between.
// (`page.$eval` is two round trips, a query then a call: a render between them left the
// click on a detached button, seen in CI.)
const press = (selector) => page.evaluate((sel) => {
  const button = document.querySelector(sel);
  if (!button) throw new Error(`nothing matches ${sel}`);
  button.click();
}, selector);
// The same for keyboard focus: a render keeps focus on the element with the same data-key.
const focusOn = (selector) => page.evaluate((sel) => {
  const target = document.querySelector(sel);
  if (!target) throw new Error(`nothing matches ${sel}`);
  target.focus();
}, selector);
const cardState = (name) => page.$eval(card(name), (e) => e.dataset.state);
const generation = (name) => page.$eval(`${card(name)} [data-field="generation"]`, (e) => Number(e.textContent));

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'bearerd-console-'));
  oidc = await startNodeService('oidc.mjs', ['0']);
  mcp = await startNodeService('mcp-server.mjs', [oidc.info.issuer, '0']);
  const [proxyPort, adminPort, appPort] = await freePorts(3);
  admin = `http://127.0.0.1:${adminPort}`;
  const { issuer } = oidc.info;
  const { resource } = mcp.info;
  const cfg = join(tmp, 'bearerd.toml');
  writeFileSync(cfg, `
[server]
proxy_listen = "127.0.0.1:${proxyPort}"
admin_listen = "127.0.0.1:${adminPort}"
admin_token = "${ADMIN_TOKEN}"

[credentials.svc]
grant = "client_credentials"
issuer = "${issuer}"
client_id = "${CLIENTS.svc.id}"
client_secret = "${CLIENTS.svc.secret}"
client_auth = "basic"
scopes = ["api:read"]
resource = "${resource}"

[credentials.agent]
grant = "refresh_token"
issuer = "${issuer}"
client_id = "${CLIENTS.agent.id}"
client_secret = "${CLIENTS.agent.secret}"
client_auth = "post"
scopes = ["openid", "offline_access", "api:read"]
resource = "${resource}"

[credentials.users]
grant = "refresh_token"
issuer = "${issuer}"
client_id = "${CLIENTS.agent.id}"
client_secret = "${CLIENTS.agent.secret}"
client_auth = "post"
scopes = ["openid", "offline_access", "api:read"]
resource = "${resource}"
subject_header = "x-bearerd-subject"
redirect_uri = "http://127.0.0.1:${appPort}/oauth/callback"

[upstreams.api]
url = "http://127.0.0.1:${mcp.info.port}/"
path_prefix = "/svc"
credential = "svc"

[upstreams.agentapi]
url = "http://127.0.0.1:${mcp.info.port}/"
path_prefix = "/agent"
credential = "agent"

[upstreams.usersapi]
url = "http://127.0.0.1:${mcp.info.port}/"
path_prefix = "/users"
credential = "users"
`);
  sidecar = await bearerd('bearerd run (console)', ['run', '-c', cfg], { env: { BEARERD_LOG: 'debug' } });
  await until('bearerd admin /healthz', async () => (await fetch(`${admin}/healthz`)).ok, { timeoutMs: 20000 });

  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Root in a container has no user namespace for Chromium's sandbox.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--no-first-run'],
  });
  page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('response', async (r) => {
    if (!r.url().startsWith(admin)) return;
    const type = r.headers()['content-type'] || '';
    if (type.includes('text/event-stream') || (r.status() >= 300 && r.status() < 400)) {
      fetched.push({ url: r.url(), status: r.status(), body: '' });
      return;
    }
    try {
      fetched.push({ url: r.url(), status: r.status(), body: await r.text() });
    } catch { /* a body gone with a navigation */ }
  });
});

after(async () => {
  await browser?.close();
  await sidecar?.stop();
  await Promise.all([mcp?.stop(), oidc?.stop()]);
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('the console loads with a strict CSP, shows a credential turning valid, and follows /events', { timeout: 60000 }, async () => {
  const response = await page.goto(`${admin}/`, { waitUntil: 'domcontentloaded' });
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'(;|$)/, 'no inline or foreign script');
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|https?:/);
  await page.waitForSelector(`${card('svc')}[data-state="valid"]`, { timeout: 20000 });
  await page.waitForSelector('#live[data-live="live"]', { timeout: 10000 });
  // Upstreams and the store are shown with their routes.
  const route = await page.$eval('[data-upstream="api"]', (e) => e.textContent);
  assert.match(route, /prefix \/svc/);
  assert.equal(await page.$eval('[data-field="store-up"]', (e) => e.textContent), 'up');
  // Reading needs no session; acting does: the buttons wait for the admin token.
  assert.equal(await page.$eval(`${card('svc')} button[data-action="refresh"]`, (b) => b.disabled), true);
  // The live feed: the first token's event arrives over /events.
  await page.waitForSelector('#events li[data-kind="refreshed"]', { timeout: 10000 });
});

test('signing in takes the admin token once; a keyboard refresh moves the generation', { timeout: 60000 }, async () => {
  await page.type('#admin-token', 'not-the-token');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#notice.bad:not([hidden])');
  assert.match(await page.$eval('#notice-text', (e) => e.textContent), /Sign-in failed/);
  await page.type('#admin-token', ADMIN_TOKEN);
  await page.keyboard.press('Enter');
  await page.waitForSelector('body[data-signed-in="true"]');
  assert.equal(await page.$eval('#admin-token', (e) => e.value), '', 'the token is not kept in the page');
  const cookies = await browser.cookies?.() ?? await page.cookies();
  const session = cookies.find((c) => c.name === 'bearerd_console');
  assert.ok(session, 'a session cookie');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');

  const g0 = await generation('svc');
  const button = `${card('svc')} button[data-action="refresh"]`;
  await page.waitForSelector(`${button}:not([disabled])`);
  await focusOn(button);
  await page.keyboard.press('Enter');
  await page.waitForFunction((sel, g) => Number(document.querySelector(sel)?.textContent) > g, { timeout: 20000 },
    `${card('svc')} [data-field="generation"]`, g0);
  await page.waitForSelector('#notice.ok:not([hidden])');
  assert.match(await page.$eval('#notice-text', (e) => e.textContent), /svc: refreshed, generation \d+ → \d+/);
});

test('log in through oidc-provider\'s own login form, back to the console: the credential turns valid', { timeout: 90000 }, async () => {
  assert.notEqual(await cardState('agent'), 'valid', 'agent has no login yet');
  await Promise.all([
    page.waitForNavigation({ waitUntil: 'domcontentloaded', timeout: 20000 }),
    press(`${card('agent')} button[data-action="log-in"]`),
  ]);
  // The provider's pages: the dev login form (any user, any password), then consent.
  const issuerOrigin = new URL(oidc.info.issuer).origin;
  for (let step = 0; step < 6; step += 1) {
    await page.waitForFunction((a, i) => location.origin === a || (location.origin === i && document.querySelector('form')),
      { timeout: 20000 }, new URL(admin).origin, issuerOrigin);
    if (new URL(page.url()).origin !== issuerOrigin) break;
    const navigated = page.waitForNavigation({ waitUntil: 'domcontentloaded', timeout: 20000 });
    if (await page.$('input[name="login"]')) {
      await page.type('input[name="login"]', 'carol');
      await page.type('input[name="password"]', 'any-password');
    }
    await page.click('form button[type="submit"], form [type="submit"]');
    await navigated;
  }
  assert.equal(new URL(page.url()).origin, new URL(admin).origin, `back on the console, not ${page.url()}`);
  await page.waitForSelector(`${card('agent')}[data-state="valid"]`, { timeout: 20000 }).catch(async (e) => {
    const notice = await page.$eval('#notice-text', (n) => n.textContent).catch(() => '');
    throw new Error(`${e.message}; at ${page.url()}, notice: ${notice}; agent: ${await cardState('agent').catch(() => '?')}`);
  });
  await page.waitForSelector('#events li[data-kind="login_completed"]', { timeout: 10000 });
  assert.match(await page.$eval('#notice-text', (e) => e.textContent), /agent: logged in/);
  assert.equal(new URL(page.url()).hash, '', 'the outcome is taken off the address');
  // The tokens are the provider's, for carol, with a refresh token held by bearerd only.
  const status = (await getJson(`${admin}/status`)).body.credentials.agent;
  assert.equal(status.has_refresh_token, true);

  // The README's screenshot: both credentials valid, the live events beside them.
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await page.screenshot({ path: SCREENSHOT, fullPage: true });
});

test('log out (asked twice, inline) shows logged_out; subjects list and connect link work', { timeout: 60000 }, async () => {
  const logout = `${card('agent')} button[data-action="log-out"]`;
  await press(logout);
  assert.match(await page.$eval(logout, (b) => b.textContent), /Confirm log out/);
  assert.notEqual(await cardState('agent'), 'logged_out', 'one press does nothing yet');
  await press(logout);
  await page.waitForSelector(`${card('agent')}[data-state="logged_out"]`, { timeout: 20000 });
  await page.waitForSelector('#events li[data-kind="logged_out"]', { timeout: 10000 });

  // Per subject: the list is empty, a connect link goes to the provider with the app's redirect.
  await press(`${card('users')} form.search button[type="submit"]`);
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.includes('No subject matches'), {}, card('users'));
  await focusOn('#s-users');
  await page.keyboard.type('dave@example.com');
  await page.keyboard.press('Enter');
  await page.waitForSelector(`${card('users')} a.connect-url`);
  const link = new URL(await page.$eval(`${card('users')} a.connect-url`, (a) => a.href));
  assert.equal(link.origin, new URL(oidc.info.issuer).origin);
  assert.match(link.searchParams.get('redirect_uri'), /\/oauth\/callback$/);
});

test('a login finished by another browser (a leaked authorization URL) is refused', { timeout: 60000 }, async () => {
  // A session of this test's own (not the page's): sign in, start a login for agent.
  const headers = { origin: admin, 'content-type': 'application/json' };
  const signIn = await fetch(`${admin}/console/session`, {
    method: 'POST', headers, body: JSON.stringify({ admin_token: ADMIN_TOKEN }),
  });
  assert.equal(signIn.status, 200);
  const cookie = signIn.headers.get('set-cookie').split(';')[0];
  const { csrf } = await signIn.json();
  const started = await fetch(`${admin}/console/login/agent`, {
    method: 'POST', headers: { origin: admin, cookie, 'x-bearerd-csrf': csrf },
  });
  assert.equal(started.status, 200);
  assert.match(started.headers.get('set-cookie'), /bearerd_console_login=.*Path=\/console\/callback; HttpOnly; SameSite=Lax/);
  const { authorize_url: url } = await started.json();
  // Someone else's browser (no login cookie) completes it at the provider.
  const other = await authorize(url, { username: 'mallory' });
  assert.equal(other.status, 303);
  await until('the refusal in bearerd\'s log', async () => sidecar.stderr.includes('this login was started in another browser'));
  const agent = (await getJson(`${admin}/status`)).body.credentials.agent;
  assert.equal(agent.state, 'logged_out', 'the code was not redeemed');
});

test('dark mode and a narrow window: legible, nothing runs off the side', { timeout: 30000 }, async () => {
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'dark' }]);
  await page.setViewport({ width: 380, height: 800 });
  const look = await page.evaluate(() => {
    const rgb = (c) => c.match(/\d+/g).slice(0, 3).map(Number);
    const lum = ([r, g, b]) => 0.2126 * r + 0.7152 * g + 0.0722 * b;
    const body = getComputedStyle(document.body);
    return {
      bg: lum(rgb(body.backgroundColor)),
      fg: lum(rgb(body.color)),
      overflow: document.documentElement.scrollWidth - window.innerWidth,
    };
  });
  assert.ok(look.bg < 60 && look.fg > 180, `dark background, light text: ${JSON.stringify(look)}`);
  assert.ok(look.overflow <= 0, `no horizontal scroll on a narrow window: ${look.overflow}px`);
  await page.emulateMediaFeatures([{ name: 'prefers-color-scheme', value: 'light' }]);
  await page.setViewport({ width: 1280, height: 900 });
});

test('a link from elsewhere to the console cannot make it show a login message', { timeout: 30000 }, async () => {
  await page.goto('about:blank');
  await page.goto(`${admin}/#login=svc&login-error=${encodeURIComponent('call +1 555 0100 for help')}`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector(`${card('svc')}[data-state]`, { timeout: 10000 });
  assert.equal(await page.$eval('#notice', (n) => n.hidden), true);
  assert.equal(new URL(page.url()).hash, '');
});

test('no token, secret or refresh token in the DOM or in any response the page fetched; no CSP violation', { timeout: 30000 }, async () => {
  const issued = (await getJson(`${oidc.info.issuer}/test/issued`)).body;
  assert.ok(issued.some((t) => t.kind === 'refresh_token'), 'the login issued a refresh token');
  assert.ok(issued.filter((t) => t.kind !== 'user_code').length >= 3, 'too few tokens to look for');
  const secrets = [
    { kind: 'the admin token', value: ADMIN_TOKEN },
    ...Object.values(CLIENTS).filter((c) => c.secret).map((c) => ({ kind: `client_secret of ${c.id}`, value: c.secret })),
    ...issued.filter((t) => t.kind !== 'user_code').map((t) => ({ kind: t.kind, value: t.value })),
  ];
  // The events the page was streamed, read again as a client would.
  const events = await fetch(`${admin}/events`, { signal: AbortSignal.timeout(1500) })
    .then(async (r) => {
      let text = '';
      const reader = r.body.getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text += new TextDecoder().decode(value);
        }
      } catch { /* the timeout ends it */ }
      return text;
    });
  assert.match(events, /event: login_completed/);
  const dom = await page.evaluate(() => document.documentElement.outerHTML
    + [...document.querySelectorAll('input')].map((i) => i.value).join('\n')
    + document.cookie);
  const places = [{ name: 'the DOM', text: dom }, { name: '/events', text: events },
    ...fetched.map((f) => ({ name: `${f.url} (${f.status})`, text: f.body }))];
  assert.ok(fetched.some((f) => f.url.endsWith('/status')), 'the page fetched /status');
  const leaks = [];
  for (const p of places) {
    for (const s of secrets) if (s.value && p.text.includes(s.value)) leaks.push(`${s.kind} in ${p.name}`);
  }
  assert.deepEqual(leaks, []);
  assert.deepEqual(consoleErrors.filter((e) => /Content Security Policy|Refused to/i.test(e)), []);
  assert.deepEqual(pageErrors, [], 'no exception in the page\'s script');
});
