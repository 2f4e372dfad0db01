// A real MCP server (Streamable HTTP transport of @modelcontextprotocol/sdk, sessions on) at
// /mcp on 127.0.0.1, protected by bearer tokens of the e2e OpenID provider.
//
//   node mcp-server.mjs ISSUER [PORT]      (or MCP_ISSUER / MCP_PORT; port 0 picks one)
//
// Prints {"event":"listening","port":...,"resource":...} on stdout when ready.
// Also importable: `startMcpServer({ issuer, port })`.
//
// Every request to /mcp or /api/* must carry `Authorization: Bearer <token>`; the token is
// introspected at the provider (RFC 7662) on every request, so expired, revoked or foreign
// tokens are refused with 401 and a `WWW-Authenticate: Bearer resource_metadata=...`
// challenge (RFC 9728), whose document is served at /.well-known/oauth-protected-resource.
//
// Without auth (test control, loopback only):
//   GET  /stats            counters: requests, 401s, distinct tokens seen, GET SSE streams
//   POST /test/broadcast   sends a notifications/message on every session's GET SSE stream
import { createHash, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

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
  };
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
    const m = /^Bearer ([A-Za-z0-9\-._~+/]+=*)$/.exec(header);
    if (!m) return reject('missing');
    const token = m[1];
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
    if (info.token_type !== 'Bearer') return reject('not_an_access_token');
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
      if (url.pathname === '/mcp' || url.pathname.startsWith('/api/')) {
        const info = await authenticate(req, res);
        if (!info) return undefined;
        if (url.pathname === '/api/whoami') {
          return sendJson(res, 200, {
            client_id: info.client_id,
            sub: info.sub ?? null,
            scope: info.scope,
            aud: info.aud,
            host: req.headers.host,
            path: url.pathname,
            query: url.search,
          });
        }
        if (url.pathname === '/mcp') return await handleMcp(req, res);
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
