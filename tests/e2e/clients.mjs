// The OAuth clients the e2e provider knows, shared by the provider, the MCP server and the
// tests (test-only secrets; the suite checks that bearerd never prints them).
export const CLIENTS = {
  svc: { id: 'svc', secret: 'svc-secret-4f1c9e' },
  agent: { id: 'agent', secret: 'agent-secret-8b2d7a' },
  mcp: { id: 'mcp-server', secret: 'mcp-server-secret-c3e5f0' },
  // No secret: it authenticates with private_key_jwt (its key is made at provider start).
  signed: { id: 'signed' },
  // Tokens bound to a DPoP key (RFC 9449): the provider refuses it any request without a proof.
  dpop: { id: 'dpop', secret: 'dpop-secret-71ae0d' },
};
