//! The validated configuration the rest of bearerd uses: the buffer between the stable TOML
//! schema (`raw`) and the internals. Every value here has been checked by `lower`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::SecretRef;

/// The default config, used by `bearerd demo` and shown in the README.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub credentials: Vec<CredentialConfig>,
    pub upstreams: Vec<UpstreamConfig>,
}

#[derive(Debug, Clone)]
pub enum StoreConfig {
    Memory,
    /// An encrypted file; the key is checked at load time and resolved again at open.
    File {
        path: PathBuf,
        key: SecretRef,
    },
    /// Shared by replicas: every value sealed with the key, under `prefix`.
    Redis {
        url: SecretRef,
        key: SecretRef,
        prefix: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub proxy_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<SecretRef>,
    pub threads: usize,
    pub work_stealing: bool,
    pub log_format: LogFormat,
    pub access_log: bool,
    pub shutdown_grace: Duration,
    /// Requests with a larger head (request line and headers) get 431, never forwarded.
    pub max_request_header_bytes: usize,
    /// The program that runs `rotation-helper` (this binary), for rotations that survive a
    /// kill. Not a config key: `bearerd run` sets it; embedders may.
    pub rotation_helper: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    Basic,
    Post,
}

#[derive(Debug, Clone)]
pub struct ClientAuth {
    pub client_id: String,
    pub client_secret: Option<SecretRef>,
    pub method: ClientAuthMethod,
}

/// What a token request asks for, shared by the OAuth grants.
#[derive(Debug, Clone)]
pub struct TokenRequestConfig {
    /// Explicit endpoints; whatever is missing comes from discovery.
    pub token_url: Option<url::Url>,
    pub revocation_url: Option<url::Url>,
    pub authorization_url: Option<url::Url>,
    pub device_authorization_url: Option<url::Url>,
    /// RFC 8414 / OpenID Connect discovery from this issuer.
    pub issuer: Option<url::Url>,
    /// RFC 9728 discovery from this protected resource (an upstream with `discover = true`).
    pub protected_resource: Option<url::Url>,
    pub redirect_port: Option<u16>,
    pub scope_on_refresh: bool,
    pub client: ClientAuth,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
    pub params: BTreeMap<String, String>,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub enum GrantConfig {
    ClientCredentials(TokenRequestConfig),
    RefreshToken {
        request: TokenRequestConfig,
        /// The configured refresh token; none when it comes from `bearerd login`.
        seed: Option<SecretRef>,
    },
    Static {
        token: SecretRef,
    },
}

impl GrantConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            GrantConfig::ClientCredentials(_) => "client_credentials",
            GrantConfig::RefreshToken { .. } => "refresh_token",
            GrantConfig::Static { .. } => "static",
        }
    }
}

/// When to refresh, how to back off, how long requests wait. See DESIGN §4.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    pub ratio: f64,
    pub margin: Duration,
    pub default_lifetime: Duration,
    pub min_interval: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub wait_budget: Duration,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            ratio: 0.8,
            margin: Duration::from_secs(60),
            default_lifetime: Duration::from_secs(300),
            min_interval: Duration::from_secs(5),
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(300),
            wait_budget: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CredentialConfig {
    pub name: String,
    pub grant: GrantConfig,
    pub policy: RefreshPolicy,
}

impl CredentialConfig {
    /// What the credential's token is: grant, token endpoint (or where it is discovered),
    /// client, scopes, resource and audience. Replicas share a token set only when this
    /// agrees, so a changed config never adopts a token obtained for another.
    pub fn binding(&self) -> String {
        let request = match &self.grant {
            GrantConfig::ClientCredentials(r) | GrantConfig::RefreshToken { request: r, .. } => r,
            GrantConfig::Static { .. } => return format!("static\n{}", self.name),
        };
        let endpoint = request
            .token_url
            .as_ref()
            .or(request.issuer.as_ref())
            .or(request.protected_resource.as_ref())
            .map_or("", url::Url::as_str);
        let mut scopes = request.scopes.clone();
        scopes.sort();
        [
            self.grant.kind(),
            endpoint,
            &request.client.client_id,
            &scopes.join(" "),
            request.resource.as_deref().unwrap_or(""),
            request.params.get("audience").map_or("", String::as_str),
        ]
        .join("\n")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteConfig {
    Prefix(String),
    Listen(SocketAddr),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub url: url::Url,
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// The base path without a trailing slash ("" for the root).
    pub base_path: String,
    /// The value for the `Host` header: host, plus the port when it is not the default.
    pub authority: String,
    pub route: RouteConfig,
    /// Index into `Config::credentials`.
    pub credential: usize,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// The longest one read from the upstream may wait; `None`: no limit (streams may idle).
    pub read_timeout: Option<Duration>,
}

impl Config {
    pub fn credential(&self, name: &str) -> Option<&CredentialConfig> {
        self.credentials.iter().find(|c| c.name == name)
    }

    /// A human-readable list of the routes, for `bearerd check`.
    pub fn describe_routes(&self) -> String {
        let mut out = String::new();
        for up in &self.upstreams {
            let cred = &self.credentials[up.credential];
            let from = match &up.route {
                RouteConfig::Prefix(p) => format!("http://{}{}/…", self.server.proxy_listen, p),
                RouteConfig::Listen(a) => format!("http://{a}/…"),
            };
            out.push_str(&format!(
                "{:<12} {} -> {}{}/…  credential {} ({})\n",
                up.name,
                from,
                up.url.origin().ascii_serialization(),
                up.base_path,
                cred.name,
                cred.grant.kind()
            ));
        }
        out
    }
}
