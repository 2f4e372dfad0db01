// A real OpenID provider (panva/oidc-provider) on 127.0.0.1 for bearerd's end-to-end tests.
//
//   node oidc.mjs [PORT]        (or OIDC_PORT=...; 0 or nothing picks a free port)
//
// Prints one JSON line {"event":"listening","issuer":...,"port":...} on stdout when ready.
// Also importable: `startProvider({ port })` returns { issuer, port, provider, close }.
//
// What it offers (see the bearerd e2e tests for the why):
// - clients `svc` (client_credentials, client_secret_basic), `agent` (authorization code +
//   PKCE, refresh_token, device_code; client_secret_post; native loopback redirect) and
//   `mcp-server` (a resource server that may only introspect);
// - opaque access tokens that live 4 seconds, audience-bound to the MCP resource (RFC 8707)
//   and checked by the MCP server through introspection (RFC 7662), so expired and revoked
//   tokens are refused;
// - refresh tokens that rotate on every use; reusing a consumed one revokes the grant;
// - dev interactions (any user name logs in) and automatic consent;
// - DPoP (RFC 9449) with nonces, required of the `dpop` client.
// - test-only endpoints under /test/ (loopback only): counters and the tokens it issued,
//   so a test can introspect a refresh token it never saw and grep logs for every token.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { pathToFileURL } from 'node:url';

import Provider, { errors } from 'oidc-provider';

import { CLIENTS } from './clients.mjs';

export { CLIENTS };

export const ACCESS_TOKEN_TTL = 4;
const RESOURCE_SCOPES = 'api:read api:write';
const OIDC_SCOPES = new Set(['openid', 'offline_access', 'profile', 'email']);

// Any MCP endpoint on loopback is a resource server of this provider.
const RESOURCE_RE = /^http:\/\/127\.0\.0\.1:\d+\/mcp$/;

export async function startProvider({ port = 0, log = () => {} } = {}) {
  const server = createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  const actualPort = server.address().port;
  const issuer = `http://127.0.0.1:${actualPort}`;

  const stats = {
    requests: {},            // path -> count
    events: {},              // provider event name -> count
    grantsRevoked: [],       // grant ids
    refreshReuse: 0,         // "refresh token already used"
    tokenErrors: [],         // {error, description, grant_type, client}
  };
  // Every token the provider handed out, by kind, in issue order. Opaque token values are
  // their jti, so these are the exact strings a client holds.
  const issued = []; // {kind, value, clientId, grantId, at}

  // The `signed` client's key pair: the provider knows the public half (a JWKS), bearerd
  // gets the private half from /test/signed-client-key and signs its assertions with it.
  const signedKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const signedJwk = { ...signedKey.publicKey.export({ format: 'jwk' }), alg: 'ES256', use: 'sig', kid: 'e2e-1' };
  const configuration = {
    clients: [
      {
        client_id: CLIENTS.signed.id,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'ES256',
        jwks: { keys: [signedJwk] },
      },
      {
        client_id: CLIENTS.svc.id,
        client_secret: CLIENTS.svc.secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
      {
        client_id: CLIENTS.agent.id,
        client_secret: CLIENTS.agent.secret,
        application_type: 'native',
        grant_types: [
          'authorization_code',
          'refresh_token',
          'urn:ietf:params:oauth:grant-type:device_code',
        ],
        response_types: ['code'],
        // RFC 8252 §7.3: the port of a loopback redirect is not compared.
        // The second: a multi-user app's redirect URI (bearerd's connect flow); the third:
        // bearerd's console, on its admin listener.
        redirect_uris: ['http://127.0.0.1/callback', 'http://127.0.0.1/oauth/callback', 'http://127.0.0.1/console/callback'],
        token_endpoint_auth_method: 'client_secret_post',
      },
      {
        client_id: CLIENTS.dpop.id,
        client_secret: CLIENTS.dpop.secret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        dpop_bound_access_tokens: true,
      },
      {
        client_id: CLIENTS.mcp.id,
        client_secret: CLIENTS.mcp.secret,
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
    claims: { openid: ['sub'] },
    cookies: { keys: ['bearerd-e2e-cookie-key-not-a-secret'] },
    findAccount: async (ctx, sub) => ({
      accountId: sub,
      async claims() {
        return { sub };
      },
    }),
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      deviceFlow: { enabled: true },
      // RFC 9449, with server nonces: a proof without the current nonce gets
      // use_dpop_nonce (requests without a proof are not affected).
      dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
      resourceIndicators: {
        enabled: true,
        // A refresh or code exchange without `resource` still gets the granted one.
        useGrantedResource: async () => true,
        defaultResource: async (ctx, client, oneOf) => oneOf,
        getResourceServerInfo: async (ctx, resourceIndicator) => {
          if (!RESOURCE_RE.test(resourceIndicator)) {
            throw new errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
          }
          return {
            scope: RESOURCE_SCOPES,
            audience: resourceIndicator,
            accessTokenTTL: ACCESS_TOKEN_TTL,
            accessTokenFormat: 'opaque',
          };
        },
      },
    },
    pkce: { required: () => true },
    rotateRefreshToken: true,
    // A refresh token for every client allowed the grant: the `agent` asks for
    // offline_access (which oidc-provider keeps only with prompt=consent, OIDC Core §11).
    issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Automatic consent: whatever the client asked for (scopes, resource scopes) is granted.
    loadExistingGrant: async (ctx) => {
      const { provider, client, session, params } = ctx.oidc;
      const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
      let grant = grantId ? await provider.Grant.find(grantId) : undefined;
      if (!grant) {
        grant = new provider.Grant({ clientId: client.clientId, accountId: session.accountId });
      }
      const requested = String(params.scope || '').split(' ').filter(Boolean);
      const oidc = requested.filter((s) => OIDC_SCOPES.has(s));
      if (oidc.length) grant.addOIDCScope(oidc.join(' '));
      grant.addOIDCClaims(['sub']);
      for (const [indicator, rs] of Object.entries(ctx.oidc.resourceServers || {})) {
        const scopes = requested.filter((s) => rs.scopes.has(s));
        grant.addResourceScope(indicator, scopes.join(' '));
      }
      await grant.save();
      return grant;
    },
    ttl: {
      AccessToken: ACCESS_TOKEN_TTL,
      ClientCredentials: ACCESS_TOKEN_TTL,
      AuthorizationCode: 60,
      DeviceCode: 600,
      Grant: 3600,
      IdToken: 3600,
      Interaction: 600,
      RefreshToken: 3600,
      Session: 3600,
    },
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };

  const provider = new Provider(issuer, configuration);

  const count = (name) => {
    stats.events[name] = (stats.events[name] || 0) + 1;
  };
  const record = (kind) => (token) => {
    count(`${kind}.saved`);
    issued.push({
      kind,
      value: token.jti,
      clientId: token.clientId,
      grantId: token.grantId,
      at: Date.now(),
    });
  };
  provider.on('access_token.saved', record('access_token'));
  provider.on('client_credentials.saved', record('client_credentials'));
  provider.on('refresh_token.saved', record('refresh_token'));
  provider.on('authorization_code.saved', record('authorization_code'));
  provider.on('device_code.saved', (token) => {
    record('device_code')(token);
    if (token.userCode) issued.push({ kind: 'user_code', value: token.userCode, clientId: token.clientId, at: Date.now() });
  });
  for (const name of ['refresh_token.consumed', 'refresh_token.destroyed', 'access_token.destroyed',
    'authorization_code.consumed', 'grant.success', 'revocation.success', 'introspection.error',
    'server_error', 'authorization.error', 'revocation.error']) {
    provider.on(name, () => count(name));
  }
  provider.on('grant.revoked', (ctx, grantId) => {
    count('grant.revoked');
    stats.grantsRevoked.push(grantId);
  });
  provider.on('grant.error', (ctx, err) => {
    count('grant.error');
    if (err?.error_description === 'refresh token already used') stats.refreshReuse += 1;
    stats.tokenErrors.push({
      error: err?.error,
      description: err?.error_description,
      grant_type: ctx?.oidc?.params?.grant_type,
      client: ctx?.oidc?.client?.clientId,
    });
    log(`token error: ${err?.error} ${err?.error_description}`);
  });

  // Test-only endpoints, and request counting.
  provider.use(async (ctx, next) => {
    stats.requests[ctx.path] = (stats.requests[ctx.path] || 0) + 1;
    if (ctx.path === '/test/signed-client-key') {
      ctx.body = { pem: signedKey.privateKey.export({ type: 'pkcs8', format: 'pem' }) };
      return undefined;
    }
    if (ctx.path === '/test/stats') {
      ctx.body = { ...stats, issuedCount: issued.length };
      return undefined;
    }
    if (ctx.path === '/test/issued') {
      // Every token value it handed out (the e2e test greps bearerd's logs for them).
      ctx.body = issued;
      return undefined;
    }
    if (ctx.path === '/test/refresh-tokens') {
      // The refresh tokens of one client with their state at the provider.
      const client = ctx.query.client || CLIENTS.agent.id;
      const out = [];
      for (const t of issued.filter((i) => i.kind === 'refresh_token' && i.clientId === client)) {
        const rt = await provider.RefreshToken.find(t.value, { ignoreExpiration: true });
        const grant = await provider.Grant.find(t.grantId, { ignoreExpiration: true });
        out.push({
          value: t.value,
          grantId: t.grantId,
          at: t.at,
          exists: Boolean(rt),
          consumed: Boolean(rt?.consumed),
          rotations: rt?.rotations ?? null,
          grantAlive: Boolean(grant),
        });
      }
      ctx.body = out;
      return undefined;
    }
    return next();
  });

  server.on('request', provider.callback());

  const close = () => new Promise((resolve) => {
    server.closeAllConnections?.();
    server.close(() => resolve());
  });
  return { issuer, port: actualPort, provider, close, stats, issued };
}

// Run as a program.
if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const port = Number(process.argv[2] || process.env.OIDC_PORT || 0);
  const p = await startProvider({ port, log: (m) => process.stderr.write(`oidc: ${m}\n`) });
  process.stdout.write(`${JSON.stringify({ event: 'listening', issuer: p.issuer, port: p.port })}\n`);
  const stop = () => p.close().then(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}
