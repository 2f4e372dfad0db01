// bearerd end to end: a real OpenID provider (oidc-provider), a real MCP server
// (@modelcontextprotocol/sdk, Streamable HTTP) and the real bearerd binary between them.
//
//   bash run.sh            (or: node --test e2e.test.mjs, with BEARERD_BIN=... if needed)
//
// E2E_VERBOSE=1 echoes every child's stderr.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, before, test } from 'node:test';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema, UrlElicitationRequiredError } from '@modelcontextprotocol/sdk/types.js';
import { Client as Client2026, StreamableHTTPClientTransport as Transport2026 } from '@modelcontextprotocol/client';
import { execFile } from 'node:child_process';

import { authorize, completeDeviceFlow } from './browser.mjs';
import {
  BEARERD_BIN, HERE, bearerd, bearerdCli, freePorts, getJson, sleep, start, startNodeService, until,
} from './harness.mjs';
import { CLIENTS } from './clients.mjs';

const ROTATIONS = 3;

let tmp;
let cfgPath;
let oidc; // Child, .info.issuer
let mcp; // Child, .info.port, .info.resource
let sidecar; // Child
let proxy; // http://127.0.0.1:PORT of proxy_listen
let admin; // http://127.0.0.1:PORT of admin_listen
let mcpListen; // http://127.0.0.1:PORT of the MCP upstream's own port
let appCallback; // the multi-user app's redirect URI, which relays to bearerd
let signedKeyPem; // the signed client's private key (PEM), from the provider
const cliOutputs = []; // stdout+stderr of every bearerd CLI run, for the secret scan

async function status() {
  const r = await getJson(`${admin}/status`);
  assert.equal(r.status, 200, `GET /status: ${JSON.stringify(r.body)}`);
  return r.body;
}
const cred = async (name) => (await status()).credentials[name];
const mcpStats = async () => (await getJson(`${mcp.origin}/stats`)).body;
const providerStats = async () => (await getJson(`${oidc.info.issuer}/test/stats`)).body;
const refreshTokens = async (client = 'agent') => (await getJson(`${oidc.info.issuer}/test/refresh-tokens?client=${client}`)).body;

async function introspect(token, hint) {
  // The agent introspects its own tokens (client_secret_post, as in bearerd's config).
  const r = await getJson(`${oidc.info.issuer}/token/introspection`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      token, token_type_hint: hint, client_id: CLIENTS.agent.id, client_secret: CLIENTS.agent.secret,
    }),
  });
  assert.equal(r.status, 200, `introspection: ${JSON.stringify(r.body)}`);
  return r.body;
}

/** 401s the MCP server answered, and what bearerd did about them (its metrics). */
async function upstream401s() {
  const metrics = await (await fetch(`${admin}/metrics`)).text();
  const lines = metrics.split('\n').filter((l) => l.startsWith('bearerd_upstream_401_total') && !/ 0$/.test(l));
  return `MCP server 401s: ${(await mcpStats()).unauthorized}; bearerd: ${lines.join(', ') || 'none'}`;
}

async function runCli(args, opts) {
  const r = await bearerdCli([...args], opts);
  cliOutputs.push({ args, ...r });
  return r;
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'bearerd-e2e-'));
  process.on('exit', () => {
    if (!process.env.E2E_KEEP) rmSync(tmp, { recursive: true, force: true });
  });
  oidc = await startNodeService('oidc.mjs', ['0']);
  mcp = await startNodeService('mcp-server.mjs', [oidc.info.issuer, '0']);
  mcp.origin = `http://127.0.0.1:${mcp.info.port}`;
  const [proxyPort, adminPort, mcpPort, appPort] = await freePorts(4);
  appCallback = `http://127.0.0.1:${appPort}/oauth/callback`;
  proxy = `http://127.0.0.1:${proxyPort}`;
  admin = `http://127.0.0.1:${adminPort}`;
  mcpListen = `http://127.0.0.1:${mcpPort}`;
  const { issuer } = oidc.info;
  const { resource } = mcp.info;
  // The file store: refresh-token exchanges then run through the rotation helper.
  const keygen = await runCli(['keygen']);
  assert.equal(keygen.code, 0, `bearerd keygen: ${keygen.stderr}`);
  writeFileSync(join(tmp, 'store-key'), keygen.stdout.trim(), { mode: 0o600 });
  signedKeyPem = (await getJson(`${issuer}/test/signed-client-key`)).body.pem;
  writeFileSync(join(tmp, 'signed.pem'), signedKeyPem, { mode: 0o600 });
  // Discovery only: no token_url, revocation_url, authorization_url anywhere.
  cfgPath = join(tmp, 'bearerd.toml');
  writeFileSync(cfgPath, `
[server]
proxy_listen = "127.0.0.1:${proxyPort}"
admin_listen = "127.0.0.1:${adminPort}"

[store]
backend = "file"
path = "${join(tmp, 'tokens.store')}"
key = { file = "${join(tmp, 'store-key')}" }

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
client_secret = { file = "${join(tmp, 'agent-secret')}" }
client_auth = "post"
scopes = ["openid", "offline_access", "api:read"]
resource = "${resource}"

[credentials.signed]
grant = "client_credentials"
issuer = "${issuer}"
client_id = "${CLIENTS.signed.id}"
client_auth = "private_key_jwt"
private_key = { file = "${join(tmp, 'signed.pem')}" }
key_id = "e2e-1"
scopes = ["api:read"]
resource = "${resource}"

[credentials.dpop]
grant = "client_credentials"
issuer = "${issuer}"
client_id = "${CLIENTS.dpop.id}"
client_secret = "${CLIENTS.dpop.secret}"
client_auth = "basic"
scopes = ["api:read"]
resource = "${resource}"
dpop = true

[credentials.users]
grant = "refresh_token"
issuer = "${issuer}"
client_id = "${CLIENTS.agent.id}"
client_secret = { file = "${join(tmp, 'agent-secret')}" }
client_auth = "post"
scopes = ["openid", "offline_access", "api:read"]
resource = "${resource}"
subject_header = "x-bearerd-subject"
redirect_uri = "${appCallback}"

[upstreams.usersapi]
url = "${mcp.origin}/"
path_prefix = "/users"
credential = "users"

[upstreams.usersmcp]
url = "${mcp.origin}/"
path_prefix = "/users-mcp"
credential = "users"
mcp = true

[upstreams.api]
url = "${mcp.origin}/"
path_prefix = "/svc"
credential = "svc"

[upstreams.signedapi]
url = "${mcp.origin}/"
path_prefix = "/signed"
credential = "signed"

[upstreams.dpopapi]
url = "${mcp.origin}/"
path_prefix = "/dpop"
credential = "dpop"

[upstreams.agentapi]
url = "${mcp.origin}/"
path_prefix = "/agent"
credential = "agent"

[upstreams.mcp]
url = "${mcp.origin}/"
listen = "127.0.0.1:${mcpPort}"
credential = "svc"
`);
  writeFileSync(join(tmp, 'agent-secret'), CLIENTS.agent.secret);
  const check = await runCli(['check', '-c', cfgPath]);
  assert.equal(check.code, 0, `bearerd check: ${check.stdout}${check.stderr}`);

  // trace: every log line bearerd can write is scanned for secrets at the end.
  sidecar = await bearerd('bearerd run', ['run', '-c', cfgPath], { env: { BEARERD_LOG: 'trace' } });
  await until('bearerd admin /healthz', async () => (await fetch(`${admin}/healthz`)).ok, { timeoutMs: 20000 });
});

after(async () => {
  await sidecar?.stop();
  await Promise.all([mcp?.stop(), oidc?.stop()]);
  if (tmp) {
    writeFileSync(join(tmp, 'bearerd.stderr.log'), sidecar?.stderr ?? '');
    if (process.env.E2E_KEEP) console.log(`e2e files kept in ${tmp}`);
    else rmSync(tmp, { recursive: true, force: true });
  }
});

test('discovery: bearerd finds the provider from `issuer` alone and gets a token', async () => {
  const svc = await until('svc valid', async () => {
    const c = await cred('svc');
    return c.state === 'valid' && c;
  });
  assert.ok(svc.generation >= 1);
  assert.equal(svc.last_error, null);
  const p = await providerStats();
  const wellKnown = (p.requests['/.well-known/oauth-authorization-server'] || 0)
    + (p.requests['/.well-known/openid-configuration'] || 0);
  assert.ok(wellKnown >= 1, `the provider saw no metadata request: ${JSON.stringify(p.requests)}`);
  assert.ok(p.events['client_credentials.saved'] >= 1, 'no client_credentials token issued');
});

test('client_credentials: requests through bearerd reach the MCP server with valid tokens', async () => {
  // (The MCP server answers 200 only after the provider's introspection says the token is
  // active, for this resource, with api:read.)
  // The server really refuses requests without a valid token, and says where to get one.
  const bare = await fetch(`${mcp.origin}/api/whoami`);
  assert.equal(bare.status, 401);
  const challenge = bare.headers.get('www-authenticate');
  assert.match(challenge, /^Bearer .*resource_metadata="([^"]+)"/);
  const prm = await getJson(/resource_metadata="([^"]+)"/.exec(challenge)[1]);
  assert.deepEqual(prm.body.authorization_servers, [oidc.info.issuer]);
  assert.equal(prm.body.resource, mcp.info.resource);
  const forged = await fetch(`${mcp.origin}/api/whoami`, { headers: { authorization: 'Bearer forged-token' } });
  assert.equal(forged.status, 401);

  // Through bearerd, with no auth (and with a wrong one, which must be replaced).
  for (let i = 0; i < 20; i += 1) {
    const headers = i % 2 ? { authorization: 'Bearer app-must-not-leak-this' } : {};
    const r = await getJson(`${proxy}/svc/api/whoami?i=${i}`, { headers });
    assert.equal(r.status, 200, `request ${i}: ${JSON.stringify(r.body)}`);
    assert.equal(r.body.client_id, 'svc');
    assert.equal(r.body.aud, mcp.info.resource);
    assert.equal(r.body.host, `127.0.0.1:${mcp.info.port}`, 'Host is the upstream authority');
    assert.equal(r.body.query, `?i=${i}`);
  }

  // The CLI reads the same JSON.
  const cli = await runCli(['status', '--json', '-c', cfgPath]);
  assert.equal(cli.code, 0, cli.stderr);
  assert.equal(JSON.parse(cli.stdout).credentials.svc.state, 'valid');
});

test('DPoP: oidc-provider binds every token to bearerd\'s key, and the MCP server checks every proof', { timeout: 60000 }, async () => {
  const issuedFor = async () => (await getJson(`${oidc.info.issuer}/test/issued`)).body
    .filter((t) => t.clientId === CLIENTS.dpop.id && t.kind === 'client_credentials').length;
  await until('dpop valid', async () => (await cred('dpop')).state === 'valid');
  const first = await issuedFor();
  const keys = new Set();
  let calls = 0;
  // Across two rotations (tokens live 4 s): each token request carried a proof the
  // provider verified (with its nonce), each API request one the MCP server verified.
  while ((await issuedFor()) < first + 2) {
    const r = await getJson(`${proxy}/dpop/api/whoami?i=${calls}`);
    assert.equal(r.status, 200, `request ${calls}: ${JSON.stringify(r.body)} (${await upstream401s()})`);
    assert.equal(r.body.client_id, CLIENTS.dpop.id);
    assert.equal(r.body.token_type, 'DPoP', 'the provider bound the token');
    keys.add(r.body.jkt);
    calls += 1;
    await sleep(200);
  }
  assert.equal(keys.size, 1, `one key for every token: ${[...keys]}`);
  const { dpop } = await mcpStats();
  assert.ok(dpop.verified >= calls, JSON.stringify(dpop));
  assert.deepEqual(dpop.refused, {}, 'no proof was refused');
  assert.equal(dpop.nonceChallenges, 1, 'the resource\'s nonce was asked for once, then kept');
  // The provider asked for its nonce too (use_dpop_nonce; only this client sends proofs),
  // and nothing else of this client failed.
  const { tokenErrors } = await providerStats();
  assert.ok(tokenErrors.some((e) => e.error === 'use_dpop_nonce'), JSON.stringify(tokenErrors));
  const other = tokenErrors.filter((e) => e.client === CLIENTS.dpop.id && e.error !== 'use_dpop_nonce');
  assert.deepEqual(other, []);
  const c = await cred('dpop');
  assert.equal(c.last_error, null, JSON.stringify(c));
  // A live token is worthless without the key: as a bearer token, or without a proof.
  const live = (await getJson(`${oidc.info.issuer}/test/issued`)).body
    .filter((t) => t.clientId === CLIENTS.dpop.id && t.kind === 'client_credentials').pop().value;
  for (const [authorization, reason] of [[`Bearer ${live}`, 'wrong_scheme'], [`DPoP ${live}`, 'dpop_no_proof']]) {
    const stolen = await getJson(`${mcp.origin}/api/whoami`, { headers: { authorization } });
    assert.equal(stolen.status, 401, authorization.split(' ')[0]);
    assert.equal(stolen.body.reason, reason);
  }
});

test('private_key_jwt: oidc-provider verifies bearerd\'s signed assertions, and the MCP SDK client works through them', { timeout: 60000 }, async () => {
  const client = new Client({ name: 'bearerd-e2e-signed', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(`${proxy}/signed/mcp`)));
  const issuedFor = async () => (await getJson(`${oidc.info.issuer}/test/issued`)).body
    .filter((t) => t.clientId === CLIENTS.signed.id && t.kind === 'client_credentials').length;
  const first = await issuedFor();
  assert.ok(first >= 1, 'the provider issued a token to the signed client');
  // Calls across at least two rotations (tokens live 4 s): each new token needed a new
  // assertion the provider verified (signature, aud, exp, jti).
  let calls = 0;
  while ((await issuedFor()) < first + 2) {
    const text = `signed-${calls}`;
    const r = await client.callTool({ name: 'echo', arguments: { text } });
    assert.equal(r.content?.[0]?.text, text, JSON.stringify(r));
    calls += 1;
    await new Promise((res) => { setTimeout(res, 200); });
  }
  await client.close();
  const who = await getJson(`${proxy}/signed/api/whoami`);
  assert.equal(who.status, 200, JSON.stringify(who.body));
  assert.equal(who.body.client_id, CLIENTS.signed.id);
  const status = await cred('signed');
  assert.equal(status.client_auth, 'private_key_jwt');
  assert.equal(status.consecutive_failures, 0);
});

test(`MCP through bearerd: tool calls across ≥${ROTATIONS} token rotations with zero errors, unbuffered notifications, long-lived GET stream`, { timeout: 90000 }, async (t) => {
  const ticks = [];
  const broadcasts = [];
  const errors = [];
  const client = new Client({ name: 'bearerd-e2e', version: '1.0.0' });
  client.onerror = (err) => errors.push(`client: ${err?.message || err}`);
  client.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
    const { logger, data } = n.params;
    if (logger === 'countdown') ticks.push({ ...data, receivedAt: Date.now() });
    if (logger === 'broadcast') broadcasts.push({ ...data, receivedAt: Date.now() });
  });
  // No auth configured on the client: bearerd adds it.
  const transport = new StreamableHTTPClientTransport(new URL(`${mcpListen}/mcp`));
  await client.connect(transport);
  const sessionId = transport.sessionId;
  assert.ok(sessionId, 'the server runs sessions');
  const tools = await client.listTools();
  assert.deepEqual(tools.tools.map((t) => t.name).sort(), ['countdown', 'echo']);
  await until('the GET SSE stream is open', async () => (await mcpStats()).getStreamsBySession[sessionId] === 1);

  const g0 = (await cred('svc')).generation;
  const t0 = (await mcpStats()).tokensByClient.svc;

  const countdown = (async () => {
    const startedAt = Date.now();
    const r = await client.callTool({ name: 'countdown', arguments: { from: 3 } });
    return { r, startedAt, doneAt: Date.now() };
  })();

  let calls = 0;
  let generation = g0;
  let tokens = t0;
  const began = Date.now();
  while (Date.now() - began < 60000) {
    const text = `ping-${calls}`;
    try {
      const r = await client.callTool({ name: 'echo', arguments: { text } });
      if (r.isError || r.content?.[0]?.text !== text) errors.push(`call ${calls}: ${JSON.stringify(r)}`);
    } catch (err) {
      errors.push(`call ${calls}: ${err?.message || err}`);
    }
    calls += 1;
    if (calls % 10 === 0) {
      generation = (await cred('svc')).generation;
      tokens = (await mcpStats()).tokensByClient.svc;
      if (generation - g0 >= ROTATIONS && tokens - t0 >= ROTATIONS) break;
    }
    await sleep(25);
  }
  const cd = await countdown;

  assert.deepEqual(errors, [], 'MCP errors through bearerd');
  assert.ok(generation - g0 >= ROTATIONS, `bearerd rotated ${generation - g0} times`);
  assert.ok(tokens - t0 >= ROTATIONS, `the MCP server saw ${tokens - t0} new tokens`);
  assert.ok(calls >= 50, `only ${calls} calls`);

  // The countdown's notifications came as they were sent, not with the result.
  assert.equal(cd.r.content[0].text, 'liftoff');
  assert.equal(ticks.length, 3, `ticks: ${JSON.stringify(ticks)}`);
  assert.ok(cd.doneAt - ticks[0].receivedAt >= 1500,
    `first notification only ${cd.doneAt - ticks[0].receivedAt} ms before the result`);
  assert.ok(ticks[2].receivedAt - ticks[0].receivedAt >= 1000, 'notifications arrived in a burst');
  for (const t of ticks) assert.ok(t.receivedAt - t.sentAt < 900, `a notification took ${t.receivedAt - t.sentAt} ms`);

  // The standalone GET stream, opened with a token that has long expired, is still the same
  // stream and still delivers.
  const s = await mcpStats();
  assert.equal(s.getStreamsBySession[sessionId], 1, 'the GET SSE stream was reopened');
  const b = await getJson(`${mcp.origin}/test/broadcast?text=after-rotations`, { method: 'POST' });
  assert.ok(b.body.sent >= 1);
  await until('the broadcast on the GET stream', async () => broadcasts.some((x) => x.text === 'after-rotations'), { timeoutMs: 5000 });
  assert.equal((await mcpStats()).getStreamsBySession[sessionId], 1, 'the GET SSE stream was reopened');

  const st = await mcpStats();
  assert.deepEqual(st.errors, [], 'MCP server errors');
  t.diagnostic(`${calls} echo calls in ${Date.now() - began} ms, ${generation - g0} rotations, `
    + `${tokens - t0} tokens seen by the server; first countdown tick ${cd.doneAt - ticks[0].receivedAt} ms `
    + `before the result; ${await upstream401s()}`);
  await transport.terminateSession();
  await client.close();
  assert.deepEqual(errors, [], 'MCP errors through bearerd');
});

/** Runs `bearerd login agent` and drives the browser part; returns the CLI's result. */
async function login({ device, username }) {
  const args = ['login', 'agent', ...(device ? ['--device'] : []), '-c', cfgPath];
  const cli = await bearerd('bearerd login', args);
  try {
    if (device) {
      const m = await cli.waitFor(/Go to (\S+) and enter the code (\S+)/);
      const complete = await cli.waitFor(/\(or open (\S+)\)/);
      assert.ok(complete[1].includes(encodeURIComponent(m[2])) || complete[1].includes(m[2]));
      await completeDeviceFlow({ verificationUri: m[1], userCode: m[2], username });
    } else {
      await cli.waitFor(/Open this URL in a browser/);
      const [, url] = await cli.waitFor(/^\s+(http\S+)\s*$/m);
      const u = new URL(url);
      assert.equal(u.searchParams.get('code_challenge_method'), 'S256');
      assert.match(u.searchParams.get('redirect_uri'), /^http:\/\/127\.0\.0\.1:\d+\/callback$/);
      const r = await authorize(url, { username });
      assert.equal(r.status, 200, 'bearerd answered the redirect');
      assert.match(r.body, /Logged in/);
    }
    const { code } = await cli.wait(30000);
    cliOutputs.push({ args, code, stdout: cli.stdout, stderr: cli.stderr });
    return { code, stdout: cli.stdout, stderr: cli.stderr };
  } finally {
    await cli.stop();
  }
}

// Issue 20, hole 1: the MCP project's own conformance check for DNS rebinding, run against
// bearerd in front of the MCP server. It sends `initialize` with a foreign Host and Origin
// (which must get a 4xx, and reach nothing), then with the URL's own (a 2xx, through bearerd).
test('MCP conformance: dns-rebinding-protection passes against bearerd in front of the MCP server', { timeout: 60000 }, async () => {
  const { CONFORMANCE_NODE, CONFORMANCE_BIN } = process.env;
  assert.ok(CONFORMANCE_NODE && CONFORMANCE_BIN, 'run.sh sets CONFORMANCE_NODE and CONFORMANCE_BIN');
  const before = (await mcpStats()).mcpRequests.POST;
  const c = await start('conformance', CONFORMANCE_NODE, [
    CONFORMANCE_BIN, 'server', '--url', `${mcpListen}/mcp`, '--scenario', 'dns-rebinding-protection',
  ]);
  const { code } = await c.wait(50000);
  assert.equal(code, 0, `conformance failed:\n${c.stdout}\n${c.stderr}`);
  assert.match(c.stdout, /localhost-host-rebinding-rejected/);
  // Only the accepted initialize reached the MCP server.
  assert.equal((await mcpStats()).mcpRequests.POST, before + 1);
});

// Issue 21: the conformance suite's `client` mode, with an MCP SDK client that has no auth
// code of its own behind bearerd (tests/conformance/client.mjs). Only the scenarios bearerd
// passes today run here; tests/conformance/run.sh runs them all.
for (const scenario of ['auth/pre-registration']) {
  test(`MCP conformance (client, through bearerd): ${scenario}`, { timeout: 90000 }, async () => {
    const { CONFORMANCE_NODE, CONFORMANCE_BIN } = process.env;
    const client = resolve(HERE, '../conformance/client.mjs');
    const c = await start('conformance', CONFORMANCE_NODE, [
      CONFORMANCE_BIN, 'client', '--command', `${CONFORMANCE_NODE} ${client}`, '--scenario', scenario,
      '--timeout', '60000',
    ], { env: { BEARERD_BIN } });
    const { code } = await c.wait(85000);
    const out = `${c.stdout}\n${c.stderr}`;
    assert.equal(code, 0, `conformance failed:\n${out}`);
    assert.match(out, /OVERALL: PASSED/);
    assert.doesNotMatch(out, /CLIENT EXITED WITH ERROR/);
  });
}

/**
 * The multi-user app's redirect URI: it relays the provider's redirect to bearerd for the
 * user signed in at that browser (`signedIn()`). Close it when done.
 */
async function appRelay(signedIn) {
  const app = createServer(async (req, res) => {
    const query = new URL(req.url, appCallback).search;
    const r = await fetch(`${admin}/connect/callback${query}&subject=${encodeURIComponent(signedIn())}`);
    res.writeHead(r.status, { 'content-type': 'application/json' });
    res.end(await r.text());
  });
  await new Promise((ok) => app.listen(Number(new URL(appCallback).port), '127.0.0.1', ok));
  return app;
}

test('per-subject: two users connect through bearerd, and each request carries its own user\'s token', async () => {
  const users = ['alice@example.com', 'bob@example.com'];
  // Not connected yet: the app is told to start the connect flow.
  const before = await getJson(`${proxy}/users/api/whoami`, { headers: { 'x-bearerd-subject': users[0] } });
  assert.equal(before.status, 403);
  assert.equal(before.body.type, 'urn:bearerd:problem:subject-not-connected');
  assert.equal(before.body.requires_reauth, true);
  // The app: its redirect URI relays the provider's redirect to bearerd, for the user it
  // knows is signed in at that browser.
  let signedIn;
  const app = await appRelay(() => signedIn);
  try {
    for (const user of users) {
      signedIn = user;
      const start = await getJson(`${admin}${before.body.connect.replace(encodeURIComponent(users[0]), encodeURIComponent(user))}`, { method: 'POST' });
    assert.equal(start.status, 200, JSON.stringify(start.body));
      // The user logs in at the provider, which redirects the browser to the app.
      const r = await authorize(start.body.authorize_url, { username: user });
      assert.equal(r.status, 200, `the relayed callback: ${r.body}`);
      assert.equal(JSON.parse(r.body).connected, true);
      // The same redirect again is refused: a state is good once.
      const replay = await getJson(`${admin}/connect/callback${new URL(r.callbackUrl).search}`);
      assert.equal(replay.status, 400);
    }
  } finally {
    app.close();
  }
  // Interleaved requests: the MCP server sees each user's own identity, across rotations.
  const g0 = (await getJson(`${admin}/credentials/users/subjects/${encodeURIComponent(users[0])}`)).body.generation;
  const began = Date.now();
  const wrong = [];
  let rotated = false;
  while (Date.now() - began < 30000 && !rotated) {
    for (const user of users) {
      const r = await getJson(`${proxy}/users/api/whoami`, { headers: { 'x-bearerd-subject': user } });
      if (r.status !== 200 || r.body.sub !== user) wrong.push(`${user}: ${r.status} ${JSON.stringify(r.body)}`);
    }
    const g = (await getJson(`${admin}/credentials/users/subjects/${encodeURIComponent(users[0])}`)).body.generation;
    rotated = g - g0 >= 2;
    await sleep(200);
  }
  assert.deepEqual(wrong, []);
  assert.ok(rotated, 'the users\' tokens rotated during the test');
  // Both users counted valid (a rotation in flight shows one as refreshing for a moment).
  let st;
  for (const until = Date.now() + 10000; ; await sleep(100)) {
    st = await status();
    if (st.credentials.users.subjects.valid === 2 || Date.now() > until) break;
  }
  assert.equal(st.credentials.users.subjects.valid, 2, JSON.stringify(st.credentials.users));
  assert.ok(!JSON.stringify(st).includes('alice@'), '/status names no subject');
  // Each user disconnects: revoked at the provider, and the app is told to connect again.
  // (This also stops their rotations: they share the agent's OAuth client, whose newest
  // refresh token the agent tests below take for the agent's own.)
  for (const user of users) {
    const out = await getJson(`${admin}/credentials/users/subjects/${encodeURIComponent(user)}/logout`, { method: 'POST' });
    assert.equal(out.status, 200, JSON.stringify(out.body));
    const r = await getJson(`${proxy}/users/api/whoami`, { headers: { 'x-bearerd-subject': user } });
    assert.equal(r.status, 403);
    assert.equal(r.body.requires_reauth, true);
  }
});

/** An MCP TypeScript SDK client through bearerd's `users-mcp` route, as `user`. */
async function tsClientAs(user) {
  const client = new Client({ name: 'bearerd-e2e', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(`${proxy}/users-mcp/mcp`), {
    requestInit: { headers: { 'x-bearerd-subject': user } },
  });
  await client.connect(transport);
  return client;
}

/** An MCP Python SDK client script as `user`: the JSON line it printed. */
async function pythonClientAs(user, script = 'python_client.py', sdk = 'pymcp', path = '/users-mcp/mcp') {
  const out = await new Promise((resolveRun, reject) => {
    execFile('python3', [join(HERE, script), `${proxy}${path}`, user], {
      env: { ...process.env, PYTHONPATH: resolve(HERE, `../../target/${sdk}`) },
      timeout: 30000,
    }, (err, stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolveRun(stdout)));
  });
  return JSON.parse(out.trim().split('\n').pop());
}

/**
 * A TypeScript SDK 2.x client of the 2026-07-28 revision (stateless) as `user`, on the
 * MCP server's /mcp2026. `onElicit` answers bearerd's URL elicitations. The platform knows
 * the server's discovery already (`prior`), so the tool call is the first request.
 */
async function tsClient2026As(user, prior, onElicit) {
  const client = new Client2026(
    { name: 'bearerd-e2e-2026', version: '1.0.0' },
    { capabilities: { elicitation: { url: {} } }, versionNegotiation: { mode: { pin: '2026-07-28' } } },
  );
  client.setRequestHandler('elicitation/create', async (request) => onElicit(request.params));
  const transport = new Transport2026(new URL(`${proxy}/users-mcp/mcp2026`), {
    requestInit: { headers: { 'x-bearerd-subject': user } },
  });
  await client.connect(transport, { prior: { kind: 'modern', discover: prior } });
  return client;
}

test('URL elicitation: MCP SDK clients (TypeScript, Python) show "connect your account" for a user who has not connected, and work once they have', { timeout: 90000 }, async () => {
  const user = 'carol@example.com';
  // The TypeScript SDK surfaces bearerd's answer as its URL-elicitation error.
  let surfaced;
  try {
    await tsClientAs(user);
  } catch (err) {
    surfaced = err;
  }
  assert.ok(surfaced instanceof UrlElicitationRequiredError, `surfaced: ${surfaced}`);
  const [elicitation] = surfaced.elicitations;
  assert.equal(elicitation.mode, 'url');
  assert.ok(elicitation.elicitationId, 'an elicitation id');
  const url = new URL(elicitation.url);
  assert.ok(elicitation.url.startsWith(oidc.info.issuer), elicitation.url);
  assert.ok(url.searchParams.get('state') && url.searchParams.get('code_challenge'), elicitation.url);
  // So does the Python SDK, for another user.
  const py = await pythonClientAs('dave@example.com');
  assert.equal(py.code, -32042, JSON.stringify(py));
  const [pyElicitation] = py.data.elicitations;
  assert.equal(pyElicitation.mode, 'url');
  assert.ok(new URL(pyElicitation.url).searchParams.get('state'), JSON.stringify(py));
  // The user opens the URL and logs in; the app relays the provider's redirect to bearerd.
  const app = await appRelay(() => user);
  try {
    const r = await authorize(elicitation.url, { username: user });
    assert.equal(r.status, 200, `the relayed callback: ${r.body}`);
    assert.equal(JSON.parse(r.body).connected, true);
  } finally {
    app.close();
  }
  // The MCP client calls again, and gets through as that user.
  const client = await tsClientAs(user);
  try {
    const { tools } = await client.listTools();
    assert.ok(tools.some((t) => t.name === 'echo'));
    const echoed = await client.callTool({ name: 'echo', arguments: { text: 'connected' } });
    assert.equal(echoed.content[0].text, 'connected');
  } finally {
    await client.close();
  }
  const out = await getJson(`${admin}/credentials/users/subjects/${encodeURIComponent(user)}/logout`, { method: 'POST' });
  assert.equal(out.status, 200);
});

test('URL elicitation, 2026-07-28: MCP SDK 2.x clients (TypeScript, Python) get an input_required result, and the call goes through once the user has connected', { timeout: 90000 }, async () => {
  // The server's discovery, as a platform caches it (through bearerd, as the svc client).
  const discovery = new Client2026({ name: 'bearerd-e2e-discover', version: '1.0.0' }, {
    versionNegotiation: { mode: { pin: '2026-07-28' } },
  });
  await discovery.connect(new Transport2026(new URL(`${proxy}/svc/mcp2026`)));
  const prior = discovery.getDiscoverResult();
  assert.ok(prior?.supportedVersions?.includes('2026-07-28'), JSON.stringify(prior));
  await discovery.close();

  // Python: the elicitation reaches its callback; it declines, and the retry gets a
  // complete error result from bearerd (nothing reached the server for that user).
  const before = (await mcpStats()).mcp2026.length;
  const py = await pythonClientAs('frank@example.com', 'python_client_2026.py', 'pymcp2026', '/users-mcp/mcp2026');
  assert.equal(py.protocol, '2026-07-28');
  assert.equal(py.elicited.length, 1, JSON.stringify(py));
  assert.ok(new URL(py.elicited[0].url).searchParams.get('state'), JSON.stringify(py));
  assert.equal(py.result.isError, true, JSON.stringify(py));
  assert.match(py.result.content[0].text, /connect/i, JSON.stringify(py));
  assert.equal((await mcpStats()).mcp2026.length, before, 'nothing reached the server for that user');

  // TypeScript: the user follows the URL and logs in; the handler accepts, the SDK
  // retries, and the call reaches the server as that user.
  const user = 'grace@example.com';
  const seen = [];
  const app = await appRelay(() => user);
  let client;
  try {
    client = await tsClient2026As(user, prior, async (params) => {
      seen.push(params);
      assert.equal(params.mode, 'url');
      const r = await authorize(params.url, { username: user });
      assert.equal(r.status, 200, `the relayed callback: ${r.body}`);
      return { action: 'accept' };
    });
    const calls = (await mcpStats()).mcp2026.length;
    const echoed = await client.callTool({ name: 'echo', arguments: { text: 'connected in 2026' } });
    assert.equal(echoed.content[0].text, 'connected in 2026', JSON.stringify(echoed));
    assert.equal(seen.length, 1, 'one elicitation, then the retry went through');
    assert.ok(seen[0].url.startsWith(oidc.info.issuer), seen[0].url);
    // The server saw the retry only (the first call was answered by bearerd).
    const reached = (await mcpStats()).mcp2026.slice(calls);
    assert.deepEqual(reached.map((r) => r.method), ['tools/call'], JSON.stringify(reached));
  } finally {
    app.close();
    await client?.close();
  }
  const who = await getJson(`${proxy}/users/api/whoami`, { headers: { 'x-bearerd-subject': user } });
  assert.equal(who.body.sub, user);
  const out = await getJson(`${admin}/credentials/users/subjects/${encodeURIComponent(user)}/logout`, { method: 'POST' });
  assert.equal(out.status, 200);
});

/** Requests through the `agent` upstream until bearerd rotated `n` times; all must succeed. */
async function agentRequestsAcrossRotations(username, n = ROTATIONS) {
  const g0 = (await cred('agent')).generation;
  const failures = [];
  let requests = 0;
  let generation = g0;
  const began = Date.now();
  while (Date.now() - began < 40000) {
    const r = await getJson(`${proxy}/agent/api/whoami`);
    requests += 1;
    if (r.status !== 200 || r.body.sub !== username || r.body.client_id !== 'agent') {
      failures.push(`${r.status} ${JSON.stringify(r.body)}`);
    }
    generation = (await cred('agent')).generation;
    if (generation - g0 >= n) break;
    await sleep(100);
  }
  assert.deepEqual(failures, [], 'requests through the agent upstream');
  assert.ok(generation - g0 >= n, `bearerd rotated the agent token ${generation - g0} times`);
  return { requests, rotations: generation - g0 };
}

/** The grant of the newest agent refresh token, with every refresh token of it. */
async function currentAgentGrant() {
  const all = await refreshTokens('agent');
  assert.ok(all.length > 0, 'the provider issued no refresh token to agent');
  const { grantId } = all[all.length - 1];
  return { grantId, tokens: all.filter((t) => t.grantId === grantId) };
}

async function assertRotationWithoutReuse(minRotations) {
  const { grantId, tokens } = await currentAgentGrant();
  const p = await providerStats();
  assert.equal(p.refreshReuse, 0, `refresh token reuse: ${JSON.stringify(p.tokenErrors)}`);
  assert.ok(!p.grantsRevoked.includes(grantId), 'the grant was revoked');
  assert.ok(tokens.every((t) => t.grantAlive), 'the grant is alive');
  const live = tokens.filter((t) => t.exists && !t.consumed);
  assert.equal(live.length, 1, `one live refresh token per grant: ${JSON.stringify(tokens)}`);
  assert.ok(tokens.length >= minRotations + 1, `${tokens.length} refresh tokens in the grant`);
  // Every refresh token but the newest was used exactly once (consumed), none twice.
  assert.ok(tokens.slice(0, -1).every((t) => t.consumed || !t.exists), 'an older refresh token is still usable');
  const newest = tokens[tokens.length - 1];
  assert.equal((await introspect(newest.value, 'refresh_token')).active, true);
  assert.equal((await introspect(tokens[0].value, 'refresh_token')).active, false);
  return { grantId, tokens };
}

// oidc-provider, like OIDC Core §11 asks, drops offline_access from an authorization request
// without prompt=consent; bearerd then asks for offline_access again on every refresh
// (`scope` = the configured scopes), which the provider refuses with invalid_scope. The
// device flow has no prompt parameter, so it keeps offline_access.
test('refresh_token grant: `bearerd login agent` by code + PKCE, then rotations without reuse', { timeout: 90000 }, async (t) => {
  const r = await login({ device: false, username: 'alice' });
  assert.equal(r.code, 0, `bearerd login failed:\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /agent: logged in/);
  const c = await cred('agent');
  assert.equal(c.state, 'valid');
  assert.equal(c.has_refresh_token, true);
  const { requests, rotations } = await agentRequestsAcrossRotations('alice');
  const { tokens } = await assertRotationWithoutReuse(ROTATIONS);
  t.diagnostic(`${requests} requests, ${rotations} rotations, ${tokens.length} refresh tokens in the grant; ${await upstream401s()}`);
});

test('device flow: `bearerd login agent --device`, then rotations without reuse', { timeout: 90000 }, async (t) => {
  const r = await login({ device: true, username: 'bob' });
  assert.equal(r.code, 0, `bearerd login --device failed:\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /agent: logged in/);
  const c = await cred('agent');
  assert.equal(c.state, 'valid');
  const { requests, rotations } = await agentRequestsAcrossRotations('bob');
  const { tokens } = await assertRotationWithoutReuse(ROTATIONS);
  t.diagnostic(`${requests} requests, ${rotations} rotations, ${tokens.length} refresh tokens in the grant; ${await upstream401s()}`);
});

test('logout: revoked at the provider, then 503 requires_reauth', { timeout: 60000 }, async () => {
  const c = await cred('agent');
  assert.equal(c.state, 'valid', 'the agent is logged in (by the device flow test)');
  const { grantId } = await currentAgentGrant();
  const issuedBefore = (await getJson(`${oidc.info.issuer}/test/issued`)).body;
  const loggingOut = Date.now();
  const r = await runCli(['logout', 'agent', '-c', cfgPath]);
  assert.equal(r.code, 0, `bearerd logout:\n${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /agent: refresh_token at the provider: revoked/);

  // The provider: every refresh token and access token of that grant is inactive now.
  const { tokens } = await currentAgentGrant();
  const newest = tokens[tokens.length - 1];
  const history = (await refreshTokens('agent')).map((t) => ({
    grant: t.grantId.slice(0, 6), ms: t.at - loggingOut, consumed: t.consumed, exists: t.exists,
  }));
  assert.equal(newest.grantId, grantId, `the newest refresh token is of another grant: ${JSON.stringify(history)}`);
  assert.equal(newest.consumed, false, 'the newest refresh token was revoked, not rotated');
  for (const [i, t] of tokens.entries()) {
    // On failure, say which one: its place in the grant, its state, and when it was issued
    // relative to the logout (a refresh racing the revocation would be issued after it).
    const { value, ...about } = t;
    assert.equal((await introspect(value, 'refresh_token')).active, false,
      `refresh token ${i + 1} of ${tokens.length} is still active: ${JSON.stringify(about)}, issued ${t.at - loggingOut} ms after the logout began`);
  }
  const accessTokens = issuedBefore.filter((t) => t.kind === 'access_token' && t.grantId === grantId);
  assert.ok(accessTokens.length > 0);
  for (const t of accessTokens.slice(-3)) {
    assert.equal((await introspect(t.value, 'access_token')).active, false, 'an access token is still active');
  }
  const p = await providerStats();
  assert.ok(p.grantsRevoked.includes(grantId), 'the grant was revoked at the provider');

  // bearerd: forgotten, and requests get a problem document asking for a login.
  const after = await cred('agent');
  assert.equal(after.state, 'logged_out');
  assert.equal(after.has_refresh_token, false);
  const res = await fetch(`${proxy}/agent/api/whoami`);
  assert.equal(res.status, 503);
  assert.match(res.headers.get('content-type'), /^application\/problem\+json/);
  const problem = await res.json();
  assert.equal(problem.requires_reauth, true);
  assert.equal(problem.credential, 'agent');
  // The other credential is untouched.
  assert.equal((await getJson(`${proxy}/svc/api/whoami`)).status, 200);
});

test('no secret in bearerd output: client secrets and every token the provider issued', async () => {
  const issued = (await getJson(`${oidc.info.issuer}/test/issued`)).body;
  assert.ok(issued.filter((t) => t.kind === 'client_credentials').length >= 4, 'too few tokens to look for');
  const secrets = [
    ...Object.values(CLIENTS).map((c) => ({ kind: `client_secret of ${c.id}`, value: c.secret })),
    { kind: 'the signed client\'s private key', value: signedKeyPem.split('\n')[1] },
    // A user code is meant to be shown by `bearerd login --device`; nothing else is.
    ...issued.filter((t) => t.kind !== 'user_code'),
  ];
  const logs = [
    { name: 'bearerd run (stderr, BEARERD_LOG=trace)', text: sidecar.stderr },
    { name: 'bearerd run (stdout)', text: sidecar.stdout },
    ...cliOutputs.map((o) => ({ name: `bearerd ${o.args.join(' ')}`, text: o.stdout + o.stderr })),
  ];
  assert.ok(sidecar.stderr.length > 10000, `bearerd wrote only ${sidecar.stderr.length} bytes of logs`);
  const leaks = [];
  for (const { name, text } of logs) {
    for (const s of secrets) {
      if (s.value && text.includes(s.value)) leaks.push(`${s.kind} in ${name}`);
    }
  }
  assert.deepEqual(leaks, []);
});

