//! The user-facing TOML schema. Every table refuses unknown keys, so a typo is an error
//! rather than a silently ignored setting. These structs are only read by `lower`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::secret::RawSecretRef;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub store: RawStore,
    #[serde(default)]
    pub credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub proxy_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Required by the admin POST endpoints when set; required when admin_listen is not loopback.
    pub admin_token: Option<RawSecretRef>,
    pub threads: Option<usize>,
    /// Tokio work stealing between request threads (off by default: measured faster).
    pub work_stealing: Option<bool>,
    /// "pretty" | "json"
    pub log_format: Option<String>,
    /// One info line per proxied request (off by default: it costs CPU on the hot path).
    pub access_log: Option<bool>,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    pub backend: Option<String>,
    pub path: Option<PathBuf>,
    pub key: Option<RawSecretRef>,
    pub url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredential {
    pub grant: String,
    pub token_url: Option<String>,
    /// RFC 7009 revocation endpoint, used by logout.
    pub revocation_url: Option<String>,
    /// Authorization endpoint for `bearerd login` (code + PKCE).
    pub authorization_url: Option<String>,
    /// Device authorization endpoint for `bearerd login --device` (RFC 8628).
    pub device_authorization_url: Option<String>,
    /// Send `scope` with refresh_token requests too (some providers, e.g. Microsoft's,
    /// require it); by default the refresh keeps the scope originally granted.
    pub scope_on_refresh: Option<bool>,
    /// Loopback port for the login redirect (default: any free port, RFC 8252).
    pub redirect_port: Option<u16>,
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecretRef>,
    pub client_auth: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub resource: Option<String>,
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// refresh_token grant: the seed refresh token.
    pub refresh_token: Option<RawSecretRef>,
    /// static grant: the token itself (a file is watched for changes).
    pub token: Option<RawSecretRef>,
    pub refresh_ratio: Option<f64>,
    pub refresh_margin: Option<String>,
    /// Lifetime assumed when the token response has no `expires_in`.
    pub default_lifetime: Option<String>,
    /// Least time between two refreshes triggered by requests (a 401 or no token).
    pub min_refresh_interval: Option<String>,
    pub backoff_base: Option<String>,
    pub backoff_cap: Option<String>,
    /// How long a request may wait for a token before it gets a 503.
    pub wait_budget: Option<String>,
    /// Timeout of one token request.
    pub token_timeout: Option<String>,
    /// A PEM bundle trusted for the token endpoint instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub path_prefix: Option<String>,
    pub listen: Option<String>,
    pub credential: String,
    /// Find the credential's authorization server from this upstream's protected resource
    /// metadata (RFC 9728), as MCP servers advertise it.
    pub discover: Option<bool>,
    /// A PEM bundle trusted for this upstream instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    /// Pooled upstream connections idle longer than this are closed. Keep it below the
    /// upstream's own keep-alive timeout (Node's default is 5 s).
    pub idle_timeout: Option<String>,
    /// Each read from the upstream may wait this long: a late response head is a 504, a late
    /// body read cuts the response off. Unset by default: SSE streams, long polls and
    /// websockets may idle longer.
    pub read_timeout: Option<String>,
}
