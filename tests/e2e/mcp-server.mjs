// A real MCP server (Streamable HTTP transport of @modelcontextprotocol/sdk, sessions on) at
// /mcp on 127.0.0.1, protected by bearer tokens of the e2e OpenID provider.
//
//   node mcp-server.mjs ISSUER [PORT]      (or MCP_ISSUER / MCP_PORT; port 0 picks one)
//
// Prints {"event":"listening","port":...,"resource":...} on stdout when ready.
// Also importable: `startMcpServer({ issuer, port })`.
//
// Every request to /mcp or /api/* must carry `Authorization: Bearer <token>` (or, for a
// DPoP-bound token, `DPoP <token>` with a proof of its key and this server's nonce); the token is
// introspected at the provider (RFC 7662) on every request, so expired, revoked or foreign
// tokens are refused with 401 and a `WWW-Authenticate: Bearer resource_metadata=...`
// challenge (RFC 9728), whose document is served at /.well-known/oauth-protected-resource.
//
// Without auth (test control, loopback only):
//   GET  /stats            counters: requests, 401s, distinct tokens seen, GET SSE streams
//   POST /test/broadcast   sends a notifications/message on every session's GET SSE stream
import { createHash, createPublicKey, randomUUID, verify } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { McpServer as McpServer2026, createMcpHandler } from '@modelcontextprotocol/server';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import * as z4 from 'zod/v4';

import { CLIENTS } from './clients.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const digest = (token) => createHash('sha256').update(token).digest('hex').slice(0, 16);

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function sendJson(res, status, body, headers = {}) {
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...headers });
  res.end(data);
}

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const sha256 = (s) => createHash('sha256').update(s).digest();

/**
 * RFC 9449 §7: checks the DPoP proof of a request that presents a DPoP-bound token (its
 * introspection's `cnf.jkt`). Answers null when it holds, else why not ('use_dpop_nonce'
 * when only the nonce is missing).
 */
function dpopProblem(req, token, jkt, dpop) {
  const proof = req.headers.dpop;
  if (typeof proof !== 'string') return 'no_proof';
  const [h, p, sig] = proof.split('.');
  let header;
  let claims;
  let signed;
  try {
    header = JSON.parse(Buffer.from(h, 'base64url'));
    claims = JSON.parse(Buffer.from(p, 'base64url'));
    if (header.typ !== 'dpop+jwt' || header.alg !== 'ES256' || header.jwk?.d) return 'bad_header';
    const { crv, x, y } = header.jwk || {};
    const key = createPublicKey({ key: { kty: 'EC', crv, x, y }, format: 'jwk' });
    signed = verify('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(sig || '', 'base64url'));
  } catch {
    return 'malformed_proof';
  }
  const { crv, x, y } = header.jwk;
  if (!signed) return 'bad_signature';
  const thumbprint = b64url(sha256(JSON.stringify({ crv, kty: 'EC', x, y })));
  if (thumbprint !== jkt) return 'wrong_key';
  const url = new URL(req.url, `http://${req.headers.host}`);
  if (claims.htm !== req.method || claims.htu !== `http://${req.headers.host}${url.pathname}`) return 'wrong_htm_htu';
  if (claims.ath !== b64url(sha256(token))) return 'wrong_ath';
  if (Math.abs(Date.now() / 1000 - claims.iat) > 60) return 'stale_iat';
  if (claims.nonce !== dpop.nonce) return 'use_dpop_nonce';
  if (typeof claims.jti !== 'string' || dpop.jtis.has(claims.jti)) return 'replayed_jti';
  dpop.jtis.add(claims.jti);
  return null;
}

function buildMcpServer() {
  const mcp = new McpServer(
    { name: 'bearerd-e2e-mcp', version: '1.0.0' },
    { capabilities: { logging: {} } },
  );
  mcp.registerTool(
    'echo',
    { description: 'Returns its input', inputSchema: { text: z.string() } },
    async ({ text }) => ({ content: [{ type: 'text', text }] }),
  );
  mcp.registerTool(
    'countdown',
    {
      description: 'Sends one notifications/message a second, then returns',
      inputSchema: { from: z.number().int().min(1).max(10).default(3) },
    },
    async ({ from }, extra) => {
      for (let i = from; i >= 1; i -= 1) {
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'info', logger: 'countdown', data: { tick: i, sentAt: Date.now() } },
        });
        await sleep(1000);
      }
      return { content: [{ type: 'text', text: 'liftoff' }] };
    },
  );
  return mcp;
}

/**
 * The same server in the 2026-07-28 revision's stateless form (no session, no initialize),
 * with the official SDK's server (@modelcontextprotocol/server 2.x), at /mcp2026.
 */
function buildMcp2026Handler() {
  return createMcpHandler(() => {
    const mcp = new McpServer2026({ name: 'bearerd-e2e-mcp-2026', version: '1.0.0' });
    mcp.registerTool(
      'echo',
      { description: 'Returns its input', inputSchema: z4.object({ text: z4.string() }) },
      async ({ text }) => ({ content: [{ type: 'text', text }] }),
    );
    return mcp;
  });
}

export async function startMcpServer({ issuer, port = 0 }) {
  if (!issuer) throw new Error('startMcpServer needs the issuer');
  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const actualPort = server.address().port;
  const origin = `http://127.0.0.1:${actualPort}`;
  const resource = `${origin}/mcp`;
  const metadataUrl = `${origin}/.well-known/oauth-protected-resource`;

  const meta = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
  const introspectionEndpoint = meta.introspection_endpoint;
  const basic = `Basic ${Buffer.from(`${CLIENTS.mcp.id}:${CLIENTS.mcp.secret}`).toString('base64')}`;

  const stats = {
    requests: 0,
    authorized: 0,
    unauthorized: 0,
    unauthorizedReasons: {},
    tokens: new Set(),
    tokensByClient: {},
    subjects: {},
    mcpRequests: { POST: 0, GET: 0, DELETE: 0 },
    toolCalls: {},
    getStreamsOpened: 0,
    getStreamsOpen: 0,
    getStreamsBySession: {},
    broadcasts: 0,
    sessions: 0,
    errors: [],
    // DPoP-bound tokens: proofs verified, nonce challenges, refusals by reason.
    dpop: { verified: 0, nonceChallenges: 0, refused: {} },
  };
  // This resource's DPoP nonce (RFC 9449 §9) and the proofs' jtis it has seen.
  const dpop = { nonce: `rs-${randomUUID()}`, jtis: new Set() };
  const transports = new Map(); // session id -> transport
  const servers = new Map(); // session id -> McpServer

  // Returns the introspection answer for a valid token, or null after answering 401.
  async function authenticate(req, res) {
    const reject = (reason) => {
      stats.unauthorized += 1;
      stats.unauthorizedReasons[reason] = (stats.unauthorizedReasons[reason] || 0) + 1;
      const params = reason === 'missing'
        ? `resource_metadata="${metadataUrl}"`
        : `error="invalid_token", error_description="${reason}", resource_metadata="${metadataUrl}"`;
      sendJson(res, 401, { error: 'invalid_token', reason }, { 'www-authenticate': `Bearer ${params}` });
      return null;
    };
    const header = req.headers.authorization || '';
    const m = /^(Bearer|DPoP) ([A-Za-z0-9\-._~+/]+=*)$/.exec(header);
    if (!m) return reject('missing');
    const [, scheme, token] = m;
    const r = await fetch(introspectionEndpoint, {
      method: 'POST',
      headers: { authorization: basic, 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token, token_type_hint: 'access_token' }),
    });
    if (!r.ok) {
      stats.errors.push(`introspection answered ${r.status}`);
      return reject('introspection_failed');
    }
    const info = await r.json();
    if (!info.active) return reject('inactive');
    if (info.token_type !== 'Bearer' && info.token_type !== 'DPoP') return reject('not_an_access_token');
    // A DPoP-bound token only in the DPoP scheme with a proof of its key, and a bearer
    // token never in the DPoP scheme.
    const jkt = info.cnf?.jkt;
    if ((scheme === 'DPoP') !== Boolean(jkt)) return reject('wrong_scheme');
    if (jkt) {
      const problem = dpopProblem(req, token, jkt, dpop);
      if (problem === 'use_dpop_nonce') {
        stats.dpop.nonceChallenges += 1;
        sendJson(res, 401, { error: 'use_dpop_nonce' }, {
          'www-authenticate': 'DPoP error="use_dpop_nonce", algs="ES256"',
          'dpop-nonce': dpop.nonce,
        });
        return null;
      }
      if (problem) {
        stats.dpop.refused[problem] = (stats.dpop.refused[problem] || 0) + 1;
        return reject(`dpop_${problem}`);
      }
      stats.dpop.verified += 1;
    }
    const aud = Array.isArray(info.aud) ? info.aud : [info.aud];
    if (!aud.includes(resource)) return reject('wrong_audience');
    if (!String(info.scope || '').split(' ').includes('api:read')) return reject('insufficient_scope');
    if (typeof info.exp !== 'number' || info.exp * 1000 <= Date.now()) return reject('expired');
    stats.authorized += 1;
    const d = digest(token);
    stats.tokens.add(d);
    (stats.tokensByClient[info.client_id] ||= new Set()).add(d);
    if (info.sub) stats.subjects[info.sub] = (stats.subjects[info.sub] || 0) + 1;
    return info;
  }

  const mcp2026 = buildMcp2026Handler();
  // Requests to /mcp2026 as they arrived (method, and the params' keys), for the tests.
  stats.mcp2026 = [];
  async function handleMcp2026(req, res, url) {
    const body = req.method === 'POST' ? await readBody(req) : undefined;
    let parsed;
    try {
      parsed = body ? JSON.parse(body) : undefined;
    } catch {
      parsed = undefined;
    }
    stats.mcp2026.push({ method: parsed?.method, params: Object.keys(parsed?.params || {}) });
    const headers = new Headers();
    for (const [k, v] of Object.entries(req.headers)) if (typeof v === 'string') headers.set(k, v);
    const response = await mcp2026.fetch(new Request(url, { method: req.method, headers, body }));
    const text = await response.text();
    res.writeHead(response.status, Object.fromEntries(response.headers)).end(text);
  }

  async function handleMcp(req, res) {
    stats.mcpRequests[req.method] = (stats.mcpRequests[req.method] || 0) + 1;
    const sessionId = req.headers['mcp-session-id'];
    if (req.method === 'POST') {
      const raw = await readBody(req);
      let body;
      try {
        body = JSON.parse(raw);
      } catch {
        return sendJson(res, 400, { jsonrpc: '2.0', error: { code: -32700, message: 'Parse error' }, id: null });
      }
      for (const msg of Array.isArray(body) ? body : [body]) {
        if (msg?.method === 'tools/call') {
          const name = msg.params?.name;
          stats.toolCalls[name] = (stats.toolCalls[name] || 0) + 1;
        }
      }
      let transport = sessionId ? transports.get(sessionId) : undefined;
      if (!transport) {
        if (sessionId || !isInitializeRequest(body)) {
          return sendJson(res, sessionId ? 404 : 400, {
            jsonrpc: '2.0', error: { code: -32000, message: 'No valid session' }, id: null,
          });
        }
        const mcp = buildMcpServer();
        transport = new StreamableHTTPServerTransport({
          sessionIdGenerator: () => randomUUID(),
          onsessioninitialized: (id) => {
            stats.sessions += 1;
            transports.set(id, transport);
            servers.set(id, mcp);
          },
        });
        transport.onclose = () => {
          if (transport.sessionId) {
            transports.delete(transport.sessionId);
            servers.delete(transport.sessionId);
          }
        };
        await mcp.connect(transport);
      }
      return transport.handleRequest(req, res, body);
    }
    const transport = sessionId ? transports.get(sessionId) : undefined;
    if (!transport) {
      return sendJson(res, sessionId ? 404 : 400, {
        jsonrpc: '2.0', error: { code: -32000, message: 'No valid session' }, id: null,
      });
    }
    if (req.method === 'GET') {
      stats.getStreamsOpened += 1;
      stats.getStreamsOpen += 1;
      stats.getStreamsBySession[sessionId] = (stats.getStreamsBySession[sessionId] || 0) + 1;
      res.on('close', () => {
        stats.getStreamsOpen -= 1;
      });
    }
    return transport.handleRequest(req, res);
  }

  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, origin);
      if (url.pathname === '/stats' && req.method === 'GET') {
        return sendJson(res, 200, {
          ...stats,
          tokens: stats.tokens.size,
          tokensByClient: Object.fromEntries(
            Object.entries(stats.tokensByClient).map(([k, v]) => [k, v.size]),
          ),
          activeSessions: transports.size,
        });
      }
      if (url.pathname === '/test/broadcast' && req.method === 'POST') {
        const text = url.searchParams.get('text') || 'broadcast';
        let sent = 0;
        for (const mcp of servers.values()) {
          await mcp.server.notification({
            method: 'notifications/message',
            params: { level: 'info', logger: 'broadcast', data: { text, sentAt: Date.now() } },
          });
          sent += 1;
        }
        stats.broadcasts += sent;
        return sendJson(res, 200, { sent });
      }
      if (url.pathname === '/.well-known/oauth-protected-resource'
        || url.pathname === '/.well-known/oauth-protected-resource/mcp') {
        return sendJson(res, 200, {
          resource,
          authorization_servers: [issuer],
          scopes_supported: ['api:read'],
          bearer_methods_supported: ['header'],
        });
      }
      stats.requests += 1;
      if (url.pathname === '/mcp' || url.pathname === '/mcp2026' || url.pathname.startsWith('/api/')) {
        const info = await authenticate(req, res);
        if (!info) return undefined;
        if (url.pathname === '/api/whoami') {
          return sendJson(res, 200, {
            client_id: info.client_id,
            sub: info.sub ?? null,
            scope: info.scope,
            aud: info.aud,
            token_type: info.token_type,
            jkt: info.cnf?.jkt ?? null,
            host: req.headers.host,
            path: url.pathname,
            query: url.search,
          });
        }
        if (url.pathname === '/mcp') return await handleMcp(req, res);
        if (url.pathname === '/mcp2026') return await handleMcp2026(req, res, url);
      }
      return sendJson(res, 404, { error: 'not_found', path: url.pathname });
    } catch (err) {
      stats.errors.push(String(err?.stack || err));
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
      else res.end();
      return undefined;
    }
  });

  const close = async () => {
    for (const t of transports.values()) await t.close().catch(() => {});
    server.closeAllConnections?.();
    await new Promise((resolve) => { server.close(() => resolve()); });
  };
  return { port: actualPort, origin, resource, close, stats };
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const issuer = process.argv[2] || process.env.MCP_ISSUER;
  const port = Number(process.argv[3] || process.env.MCP_PORT || 0);
  const s = await startMcpServer({ issuer, port });
  process.stdout.write(`${JSON.stringify({ event: 'listening', port: s.port, resource: s.resource })}\n`);
  const stop = () => s.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
