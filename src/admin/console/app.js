// bearerd console: renders /status, follows /events (no polling), and drives the admin API
// with a session cookie + CSRF token. Everything is built with the DOM API and textContent:
// nothing the server says is ever parsed as HTML.
'use strict';

const EVENT_KINDS = ['refreshed', 'retrying', 'failed', 'logged_out', 'login_completed',
  'subject_connected', 'subject_disconnected', 'store_down', 'store_up', 'config_reloaded',
  'config_refused', 'drill_started', 'drill_ended', 'step_up'];
const BAD_KINDS = new Set(['failed', 'logged_out', 'store_down', 'config_refused', 'subject_disconnected']);
const OK_KINDS = new Set(['refreshed', 'login_completed', 'subject_connected', 'store_up', 'config_reloaded']);
const MAX_EVENTS = 50;
const PAGE = 20;

// The CSRF token lives in this tab's sessionStorage: scoped to this origin and port (the
// session cookie is sent to every port of the host), and never handed out again by bearerd.
const CSRF_KEY = 'bearerd.csrf';
const LOGIN_KEY = 'bearerd.login';
const state = {
  status: null,
  fetchedAt: 0,
  csrf: sessionStorage.getItem(CSRF_KEY),
  tokenRequired: true,
  events: [],
  subjects: new Map(), // credential -> { rows, next, query, connectUrl, error }
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null && c !== false) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const enc = encodeURIComponent;

async function api(path, { method = 'GET', body } = {}) {
  const headers = { accept: 'application/json' };
  if (state.csrf) headers['x-bearerd-csrf'] = state.csrf;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    return { ok: false, status: 0, data: { error: `bearerd does not answer (${e.message})` } };
  }
  let data = null;
  try { data = await response.json(); } catch { data = null; }
  if (response.status === 401 && state.csrf && path !== '/console/session') {
    // The session ended (expired, signed out elsewhere, a new admin token): ask again.
    setCsrf(null);
    notify('The console session ended: sign in again.', 'bad');
    loadSession();
  }
  return { ok: response.ok, status: response.status, data };
}

function setCsrf(csrf) {
  state.csrf = csrf || null;
  if (state.csrf) sessionStorage.setItem(CSRF_KEY, state.csrf);
  else sessionStorage.removeItem(CSRF_KEY);
}

function problem(r) {
  const d = r.data || {};
  return d.error || d.detail || d.title || `HTTP ${r.status}`;
}

// ---- notices -------------------------------------------------------------------------
function notify(text, kind = 'info') {
  const n = $('notice');
  n.className = `notice ${kind}`;
  $('notice-text').textContent = text;
  n.hidden = false;
}

// ---- time ----------------------------------------------------------------------------
function duration(s) {
  if (s === null || s === undefined) return '—';
  if (s <= 0) return 'now';
  s = Math.ceil(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
function clock(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleTimeString([], { hour12: false });
}
// Countdowns tick locally from the last /status; nothing is fetched on a timer.
function countdown(seconds, expiredText) {
  const span = el('span', { class: 'num' });
  if (seconds === null || seconds === undefined) { span.textContent = '—'; return span; }
  span.dataset.countdown = String(seconds);
  span.dataset.expired = expiredText;
  paintCountdown(span);
  return span;
}
function paintCountdown(span) {
  const left = Number(span.dataset.countdown) - (Date.now() - state.fetchedAt) / 1000;
  span.textContent = left > 0 ? duration(left) : span.dataset.expired;
}
setInterval(() => document.querySelectorAll('[data-countdown]').forEach(paintCountdown), 1000);

// ---- session -------------------------------------------------------------------------
async function loadSession() {
  const r = await api('/console/session');
  state.tokenRequired = r.data ? r.data.admin_token_required !== false : true;
  // Signed in (the cookie) and this tab holds the CSRF token: keep it; else start over.
  if (!(r.ok && r.data && r.data.signed_in)) setCsrf(null);
  if (!state.csrf && !state.tokenRequired) {
    // No admin token configured: the session only carries the CSRF token.
    const opened = await api('/console/session', { method: 'POST', body: {} });
    setCsrf(opened.ok ? opened.data.csrf : null);
  }
  paintSession();
}
function paintSession() {
  const signedIn = Boolean(state.csrf);
  $('signin').hidden = signedIn;
  $('signed-in').hidden = !signedIn || !state.tokenRequired;
  document.body.dataset.signedIn = String(signedIn);
  render();
}
$('signin').addEventListener('submit', async (e) => {
  e.preventDefault();
  const input = $('admin-token');
  const token = input.value;
  input.value = '';
  const r = await api('/console/session', { method: 'POST', body: { admin_token: token } });
  if (r.ok) {
    setCsrf(r.data.csrf);
    $('notice').hidden = true;
  } else {
    notify(`Sign-in failed: ${problem(r)}`, 'bad');
    input.focus();
  }
  paintSession();
});
$('signout').addEventListener('click', async () => {
  await api('/console/session', { method: 'DELETE' });
  setCsrf(null);
  state.subjects.clear();
  paintSession();
});
$('notice-close').addEventListener('click', () => { $('notice').hidden = true; });

// ---- status --------------------------------------------------------------------------
let statusTimer = null;
function reloadSoon() {
  clearTimeout(statusTimer);
  statusTimer = setTimeout(loadStatus, 150);
}
async function loadStatus() {
  const r = await api('/status');
  if (!r.ok) { notify(`GET /status: ${problem(r)}`, 'bad'); return; }
  state.status = r.data;
  state.fetchedAt = Date.now();
  render();
}

function actionButton(label, key, handler, cls = '') {
  return el('button', {
    type: 'button', class: cls, 'data-key': key, 'data-action': label.toLowerCase().replace(/\s+/g, '-'),
    disabled: !state.csrf,
    title: state.csrf ? undefined : 'Sign in to act',
    onclick: async (e) => {
      const b = e.currentTarget;
      b.disabled = true;
      try { await handler(b); } finally { b.disabled = !state.csrf; }
    },
  }, label);
}

// A destructive action asks twice, inline (keyboard-friendly, no modal). Which buttons are
// armed is kept here: a re-render (tokens rotate every few seconds) must not disarm them.
const armed = new Map(); // data-key -> until (ms)
function confirmButton(label, key, handler) {
  const button = actionButton(label, key, async (b) => {
    if (!(armed.get(key) > Date.now())) {
      armed.set(key, Date.now() + 5000);
      paintArmed(b, label);
      setTimeout(() => { armed.delete(key); render(); }, 5000);
      return;
    }
    armed.delete(key);
    await handler();
  }, 'danger');
  paintArmed(button, label);
  return button;
}
function paintArmed(b, label) {
  const on = armed.get(b.dataset.key) > Date.now();
  b.classList.toggle('armed', on);
  b.textContent = on ? `Confirm ${label.toLowerCase()}` : label;
}

async function refresh(name) {
  const r = await api(`/credentials/${enc(name)}/refresh`, { method: 'POST' });
  if (r.ok) notify(`${name}: refreshed, generation ${r.data.previous_generation} → ${r.data.generation}`, 'ok');
  else notify(`${name}: refresh failed: ${r.data && r.data.status && r.data.status.last_error ? r.data.status.last_error.message : problem(r)}`, 'bad');
  reloadSoon();
}
async function logout(name) {
  const r = await api(`/credentials/${enc(name)}/logout`, { method: 'POST' });
  notify(r.ok ? `${name}: logged out` : `${name}: logout failed: ${problem(r)}`, r.ok ? 'ok' : 'bad');
  reloadSoon();
}
async function login(name) {
  const r = await api(`/console/login/${enc(name)}`, { method: 'POST' });
  if (!r.ok) { notify(`${name}: cannot start a login: ${problem(r)}`, 'bad'); return; }
  // Only a login this tab started is reported when the browser comes back: a link from
  // elsewhere to `/#login=…` shows nothing.
  sessionStorage.setItem(LOGIN_KEY, name);
  window.location.assign(r.data.authorize_url);
}

function fact(term, ...value) {
  return [el('dt', { text: term }), el('dd', {}, ...value)];
}

function singleCard(name, c) {
  const err = c.last_error;
  const source = [c.grant, c.client_auth, state.status.store && `store: ${state.status.store.backend}`].filter(Boolean).join(' · ');
  const actions = [actionButton('Refresh', `${name}/refresh`, () => refresh(name), 'primary')];
  if (c.grant === 'refresh_token') actions.push(actionButton('Log in', `${name}/login`, () => login(name)));
  actions.push(confirmButton('Log out', `${name}/logout`, () => logout(name)));
  return el('article', { class: 'card', 'data-credential': name, 'data-state': c.state, 'aria-labelledby': `c-${name}` },
    el('header', {},
      el('h3', { id: `c-${name}`, text: name }),
      el('span', { class: 'badge', 'data-state': c.state, 'data-field': 'state', text: c.state.replace('_', ' ') }),
      c.drill && el('span', { class: 'badge drill', text: `drill: ${c.drill.fail}` }, ' ', countdown(c.drill.ends_in_s, 'ending'))),
    el('dl', { class: 'facts' },
      fact('Expires in', countdown(c.expires_in_s, 'expired')),
      fact('Next refresh', countdown(c.next_refresh_in_s, 'due')),
      fact('Generation', el('span', { class: 'num', 'data-field': 'generation', text: String(c.generation) })),
      fact('Refreshes', el('span', { class: 'num', text: `${c.refreshes} ok · ${c.consecutive_failures} failing in a row` })),
      fact('Source', source),
      c.scopes && c.scopes.length ? fact('Scopes', el('span', { class: 'mono', text: c.scopes.join(' ') })) : [],
      fact('Refresh token', c.has_refresh_token ? 'held' : 'none'),
      err ? fact('Last error', el('span', { class: 'error', 'data-field': 'last-error', text: `${err.kind}: ${err.message}` }),
        el('span', { class: 'muted', text: ` (${clock(err.at)})` })) : []),
    el('div', { class: 'actions' }, actions));
}

function perSubjectCard(name, c) {
  const counts = Object.entries(c.subjects || {}).filter(([, n]) => n > 0).map(([s, n]) => `${n} ${s.replace('_', ' ')}`).join(' · ') || 'none yet';
  const view = state.subjects.get(name) || {};
  const list = el('div', { class: 'subjects' });
  if (state.csrf) {
    list.append(el('form', {
      class: 'search', role: 'search', 'data-key': `${name}/search`,
      onsubmit: (e) => { e.preventDefault(); searchSubjects(name, e.currentTarget.elements.q.value.trim()); },
    },
    el('label', { class: 'muted', for: `q-${name}`, text: 'Subject or tag' }),
    el('input', { id: `q-${name}`, name: 'q', type: 'search', value: view.query || '', 'data-key': `${name}/q`, placeholder: 'exact subject, or tag s:…' }),
    el('button', { type: 'submit', text: view.rows ? 'Search' : 'List' })));
    list.append(el('form', {
      class: 'connect',
      onsubmit: (e) => { e.preventDefault(); connect(name, e.currentTarget.elements.s.value.trim()); },
    },
    el('label', { class: 'muted', for: `s-${name}`, text: 'Connect' }),
    el('input', { id: `s-${name}`, name: 's', required: true, 'data-key': `${name}/s`, placeholder: 'subject' }),
    el('button', { type: 'submit', 'data-key': `${name}/connect`, text: 'Get link' })));
    if (view.connectUrl) {
      list.append(el('p', { class: 'muted', text: `Send ${view.connectSubject} this link (good for one login):` }),
        el('a', { class: 'connect-url', href: view.connectUrl, rel: 'noreferrer', target: '_blank', text: view.connectUrl }));
    }
    if (view.error) list.append(el('p', { class: 'error', text: view.error }));
    if (view.rows) list.append(subjectTable(name, view));
  } else {
    list.append(el('p', { class: 'muted', text: 'Sign in to list, connect and disconnect subjects.' }));
  }
  return el('article', { class: 'card', 'data-credential': name, 'data-state': 'per-subject', 'aria-labelledby': `c-${name}` },
    el('header', {}, el('h3', { id: `c-${name}`, text: name }), el('span', { class: 'badge', text: 'per subject' })),
    el('dl', { class: 'facts' },
      fact('Subjects', el('span', { class: 'num', 'data-field': 'subject-counts', text: counts })),
      fact('Held', `${c.subjects_in_memory} in memory · ${c.subjects_at_rest} at rest`),
      fact('Header', el('span', { class: 'mono', text: c.subject_header })),
      fact('Source', [c.grant, c.client_auth, c.on_behalf_of ? 'on behalf of' : null].filter(Boolean).join(' · '))),
    list);
}

function subjectTable(name, view) {
  const body = view.rows.map((s) => el('tr', { 'data-subject': s.subject },
    el('td', {}, el('span', { class: 'mono', text: s.subject }), s.tag ? el('div', { class: 'muted mono', text: s.tag }) : null),
    el('td', {}, el('span', { class: 'badge', 'data-state': s.state, text: s.state.replace('_', ' ') })),
    el('td', {}, countdown(s.expires_in_s, 'expired')),
    el('td', {}, el('div', { class: 'actions' },
      actionButton('Refresh', `${name}/${s.subject}/refresh`, () => subjectOp(name, s.subject, 'refresh')),
      confirmButton('Disconnect', `${name}/${s.subject}/logout`, () => subjectOp(name, s.subject, 'logout'))))));
  const table = el('div', { class: 'scroll' }, el('table', {},
    el('thead', {}, el('tr', {}, ['Subject', 'State', 'Expires', ''].map((h) => el('th', { scope: 'col', text: h })))),
    el('tbody', {}, body.length ? body : el('tr', {}, el('td', { colspan: 4, class: 'muted', text: 'No subject matches.' })))));
  const more = view.next ? actionButton('More', `${name}/more`, () => listSubjects(name, view.next)) : null;
  return el('div', {}, table, more);
}

async function listSubjects(name, after) {
  const view = state.subjects.get(name) || {};
  const q = after ? `?limit=${PAGE}&after=${enc(after)}` : `?limit=${PAGE}`;
  const r = await api(`/credentials/${enc(name)}/subjects${q}`);
  if (!r.ok) { view.error = problem(r); state.subjects.set(name, view); render(); return; }
  view.rows = after ? [...(view.rows || []), ...r.data.subjects] : r.data.subjects;
  view.next = r.data.next;
  view.error = null;
  state.subjects.set(name, view);
  render();
}
async function searchSubjects(name, query) {
  const view = state.subjects.get(name) || {};
  view.query = query;
  state.subjects.set(name, view);
  if (!query) { await listSubjects(name); return; }
  // A tag is `s:` and 12 hex digits (events and the audit file name subjects by it).
  const byTag = /^s:[0-9a-f]{12}$/.test(query);
  const r = byTag
    ? await api(`/credentials/${enc(name)}/subjects?tag=${enc(query)}`)
    : await api(`/credentials/${enc(name)}/subjects/${enc(query)}`);
  view.next = null;
  if (r.ok) { view.rows = byTag ? r.data.subjects : [r.data]; view.error = null; }
  else if (r.status === 404) { view.rows = []; view.error = null; }
  else { view.error = problem(r); }
  render();
}
async function subjectOp(name, subject, op) {
  const r = await api(`/credentials/${enc(name)}/subjects/${enc(subject)}/${op}`, { method: 'POST' });
  notify(r.ok ? `${name} / ${subject}: ${op === 'logout' ? 'disconnected' : 'refreshed'}` : `${name} / ${subject}: ${problem(r)}`, r.ok ? 'ok' : 'bad');
  const view = state.subjects.get(name);
  if (view && view.rows) await searchSubjects(name, view.query || '');
}
async function connect(name, subject) {
  if (!subject) return;
  const r = await api(`/credentials/${enc(name)}/subjects/${enc(subject)}/connect`, { method: 'POST' });
  const view = state.subjects.get(name) || {};
  if (r.ok) { view.connectUrl = r.data.authorize_url; view.connectSubject = subject; view.error = null; }
  else { view.connectUrl = null; view.error = problem(r); }
  state.subjects.set(name, view);
  render();
}

// ---- render --------------------------------------------------------------------------
function render() {
  const s = state.status;
  if (!s) return;
  // Keep keyboard focus (and a half-typed search) across a re-render.
  const active = document.activeElement;
  const focusKey = active && active.dataset ? active.dataset.key : undefined;
  const typed = active && active.tagName === 'INPUT' ? active.value : undefined;

  const cards = Object.entries(s.credentials).map(([name, c]) => (c.per_subject ? perSubjectCard(name, c) : singleCard(name, c)));
  $('credential-list').replaceChildren(...(cards.length ? cards : [el('p', { class: 'muted', text: 'No credentials.' })]));

  const relax = s.relaxations || [];
  $('relaxations').hidden = relax.length === 0;
  $('relaxations').replaceChildren(...relax.map((r) => el('li', { text: r })));

  const rows = Object.entries(s.upstreams).map(([name, u]) => el('tr', { 'data-upstream': name },
    el('td', {}, el('code', { text: name })),
    el('td', {}, el('code', { text: u.route.path_prefix !== undefined ? `prefix ${u.route.path_prefix}` : `listen ${u.route.listen}` })),
    el('td', {}, el('code', { text: u.url })),
    el('td', {}, el('code', { text: u.credential }), u.per_subject ? el('span', { class: 'muted', text: ' per subject' }) : null),
    el('td', {}, el('span', { class: 'badge', 'data-state': u.ready ? 'valid' : 'expired', text: u.ready ? 'ready' : 'not ready' }))));
  $('upstreams').tBodies[0].replaceChildren(...rows);

  const st = s.store || {};
  $('store').replaceChildren(
    ...fact('Backend', el('span', { class: 'mono', text: st.backend || '—' })),
    ...fact('Health', el('span', { class: 'badge', 'data-state': st.up ? 'valid' : 'failed', 'data-field': 'store-up', text: st.up ? 'up' : 'down' })),
    ...(st.last_error ? fact('Last error', el('span', { class: 'error', text: st.last_error })) : []));

  if (focusKey) {
    const again = document.querySelector(`[data-key="${CSS.escape(focusKey)}"]`);
    if (again) {
      if (typed !== undefined && again.tagName === 'INPUT') again.value = typed;
      again.focus();
    }
  }
}

function renderEvents() {
  $('events').replaceChildren(...state.events.map((e) => {
    const cls = BAD_KINDS.has(e.kind) ? 'bad' : OK_KINDS.has(e.kind) ? 'ok' : 'warn';
    const who = [e.credential, e.subject_tag && `subject ${e.subject_tag}`, e.generation !== undefined && `gen ${e.generation}`].filter(Boolean).join(' · ');
    return el('li', { 'data-kind': e.kind, 'data-event-id': e.id },
      el('time', { datetime: e.at, text: clock(e.at) }),
      el('span', { class: 'what' }, el('span', { class: `kind ${cls}`, text: e.kind.replace(/_/g, ' ') }), who ? ` ${who}` : '', e.outcome && e.outcome !== 'success' ? el('span', { class: 'muted', text: ` (${e.outcome})` }) : null),
      e.detail || e.error_kind ? el('span', { class: 'detail', text: [e.error_kind, e.detail].filter(Boolean).join(': ') }) : null);
  }));
}

let eventsFrame = 0;
function renderEventsSoon() {
  // A reconnect replays up to the whole ring: paint once per frame, not once per event.
  if (!eventsFrame) eventsFrame = requestAnimationFrame(() => { eventsFrame = 0; renderEvents(); });
}

// ---- live ----------------------------------------------------------------------------
function follow() {
  const live = $('live');
  const source = new EventSource('/events');
  source.onopen = () => { live.dataset.live = 'live'; live.textContent = 'live'; loadStatus(); };
  source.onerror = () => { live.dataset.live = 'down'; live.textContent = 'reconnecting…'; };
  const seen = new Set();
  for (const kind of EVENT_KINDS) {
    source.addEventListener(kind, (m) => {
      let e;
      try { e = JSON.parse(m.data); } catch { return; }
      if (seen.has(e.id)) return;
      seen.add(e.id);
      state.events.unshift(e);
      state.events.length = Math.min(state.events.length, MAX_EVENTS);
      renderEventsSoon();
      reloadSoon();
      const view = e.credential && state.subjects.get(e.credential);
      if (view && view.rows && (e.kind === 'subject_connected' || e.kind === 'subject_disconnected')) searchSubjects(e.credential, view.query || '');
    });
  }
}

// ---- coming back from a login --------------------------------------------------------
function readReturn() {
  if (!window.location.hash) return;
  const p = new URLSearchParams(window.location.hash.slice(1));
  const name = p.get('login');
  const error = p.get('login-error');
  const started = sessionStorage.getItem(LOGIN_KEY);
  sessionStorage.removeItem(LOGIN_KEY);
  history.replaceState(null, '', window.location.pathname);
  if (!started || (name && name !== started)) return;
  if (error) notify(`${started}: login failed: ${error}`, 'bad');
  else if (name) notify(`${name}: logged in`, 'ok');
}

document.addEventListener('keydown', (e) => {
  if (e.target.closest('input, textarea') || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.key === 'r') { e.preventDefault(); loadStatus(); }
  if (e.key === '/') {
    const search = document.querySelector('.subjects input[type="search"]');
    if (search) { e.preventDefault(); search.focus(); }
  }
});

readReturn();
loadSession().then(loadStatus);
follow();
