// The client command the MCP conformance suite runs for each `client` scenario:
//
//   node client.mjs <server URL>       (MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_CONTEXT set)
//
// It plays an app with no auth code of its own behind bearerd:
//   1. writes a bearerd config for the scenario's server (`discover = true`, with the
//      credential the scenario's context implies);
//   2. starts bearerd;
//   3. logs in where the grant needs a person (the suite's authorization server approves
//      at once, so following the authorize URL plays the person);
//   4. runs the MCP TypeScript SDK client through bearerd: initialize, list tools, call one;
//   5. logs in again after a step-up (bearerd answers 403 insufficient-scope with the path).
// Exit 0 when the client got through; the suite judges the rest from what its servers saw.

import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { bearerd, freePorts, getJson, until } from '../e2e/harness.mjs';
import { authorize } from '../e2e/browser.mjs';

const serverUrl = process.argv[process.argv.length - 1];
const scenario = process.env.MCP_CONFORMANCE_SCENARIO || '';
const context = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT || '{}');
const log = (...a) => console.error('[client]', ...a);

/** Where the suite expects a client's metadata document (auth/basic-cimd). */
const CLIENT_METADATA_URL = 'https://conformance-test.local/client-metadata.json';

/** TOML string literal. */
const q = (s) => JSON.stringify(String(s));

/**
 * The credential the scenario's context implies, as TOML lines (after `grant`), and
 * whether a person must log in.
 */
function credentialFor(dir) {
  if (context.private_key_pem) {
    const key = join(dir, 'client.pem');
    writeFileSync(key, context.private_key_pem, { mode: 0o600 });
    return {
      login: false,
      lines: [
        'grant = "client_credentials"',
        `client_id = ${q(context.client_id)}`,
        'client_auth = "private_key_jwt"',
        `private_key = { file = ${q(key)} }`,
        `signing_alg = ${q(context.signing_algorithm || 'ES256')}`,
      ],
    };
  }
  if (context.idp_id_token) {
    // Enterprise-managed authorization: the ID token is exchanged for an ID-JAG first.
    const idToken = join(dir, 'id-token');
    writeFileSync(idToken, context.idp_id_token, { mode: 0o600 });
    return {
      login: false,
      lines: [
        'grant = "jwt_bearer"',
        `client_id = ${q(context.client_id)}`,
        `client_secret = ${q(context.client_secret)}`,
        `assertion = { id_jag = { token_url = ${q(context.idp_token_endpoint)}, client_id = ${q(context.idp_client_id)}, subject_token = { file = ${q(idToken)} } } }`,
      ],
    };
  }
  if (scenario.startsWith('auth/client-credentials')) {
    return {
      login: false,
      lines: [
        'grant = "client_credentials"',
        `client_id = ${q(context.client_id)}`,
        `client_secret = ${q(context.client_secret)}`,
      ],
    };
  }
  if (context.client_id) {
    // A client registered beforehand: the authorization-code grant, with its secret.
    return {
      login: true,
      lines: [
        'grant = "refresh_token"',
        `client_id = ${q(context.client_id)}`,
        ...(context.client_secret ? [`client_secret = ${q(context.client_secret)}`] : []),
      ],
    };
  }
  // No client yet: bearerd registers one (client ID metadata document, else RFC 7591).
  // The suite's servers take the document's URL without fetching it.
  return {
    login: true,
    lines: [
      'grant = "refresh_token"',
      'registration = "auto"',
      `client_metadata_url = ${q(CLIENT_METADATA_URL)}`,
    ],
  };
}

async function loginAgent(cfgPath) {
  const cli = await bearerd('bearerd login', ['login', 'mcp', '-c', cfgPath]);
  try {
    await cli.waitFor(/Open this URL in a browser/, 20000);
    const [, url] = await cli.waitFor(/^\s+(http\S+)\s*$/m, 20000);
    const r = await authorize(url);
    log('authorize →', r.status);
    const { code } = await cli.wait(30000);
    if (code !== 0) throw new Error(`bearerd login exited ${code}:\n${cli.stdout}${cli.stderr}`);
  } finally {
    await cli.stop();
  }
}

/** Initialize, list tools, call the first one; a 403 that asks for a login is answered once. */
async function runMcpClient(endpoint, cfgPath, { login }) {
  for (let attempt = 0; ; attempt += 1) {
    const client = new Client({ name: 'bearerd-conformance', version: '1.0.0' });
    const transport = new StreamableHTTPClientTransport(new URL(endpoint));
    try {
      await client.connect(transport);
      const { tools } = await client.listTools();
      log('tools:', tools.map((t) => t.name).join(', ') || '(none)');
      if (tools.length > 0) {
        await client.callTool({ name: tools[0].name, arguments: {} });
      }
      await client.close();
      return;
    } catch (err) {
      await client.close().catch(() => {});
      const reauth = /insufficient-scope|requires_reauth|subject-not-connected/.test(String(err?.message));
      if (login && reauth && attempt === 0) {
        log('bearerd asks for a new login (step-up):', err.message);
        await loginAgent(cfgPath);
        continue;
      }
      throw err;
    }
  }
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'bearerd-conformance-'));
  const [proxyPort, adminPort] = await freePorts(2);
  const { login, lines } = credentialFor(dir);
  const server = new URL(serverUrl);
  const cfgPath = join(dir, 'bearerd.toml');
  writeFileSync(
    cfgPath,
    [
      '[server]',
      `proxy_listen = "127.0.0.1:${proxyPort}"`,
      `admin_listen = "127.0.0.1:${adminPort}"`,
      '',
      '[credentials.mcp]',
      ...lines,
      // The suite's authorization servers are on this machine, on ports it picks.
      'allowed_authorization_servers = ["localhost", "127.0.0.1"]',
      '',
      '[upstreams.mcp]',
      `url = ${q(serverUrl)}`,
      `path_prefix = ${q(server.pathname)}`,
      'credential = "mcp"',
      'discover = true',
      'mcp = true',
      '',
    ].join('\n'),
  );
  const sidecar = await bearerd('bearerd run', ['run', '-c', cfgPath], {
    env: { RUST_LOG: process.env.RUST_LOG || 'info' },
  });
  try {
    await until('bearerd to serve', async () => (await getJson(`http://127.0.0.1:${adminPort}/healthz`)).status === 200, {
      timeoutMs: 20000,
    });
    if (login) await loginAgent(cfgPath);
    const endpoint = `http://127.0.0.1:${proxyPort}${server.pathname}`;
    await runMcpClient(endpoint, cfgPath, { login });
    log('done');
  } finally {
    await sidecar.stop();
    if (process.env.CONFORMANCE_VERBOSE) console.error(sidecar.stderr);
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error('[client] failed:', err?.stack || err);
    process.exit(1);
  },
);
