//! The validated configuration the rest of bearerd uses: the buffer between the stable TOML
//! schema (`raw`) and the internals. Every value here has been checked by `lower`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{ClientAuthMethod, ClientIdentity, GrantConfig, SecretRef};

/// The default listeners: a high pair in the app's network namespace that apps (8080,
/// 3000, 5000…), Prometheus and Dapr (9090), Istio (15000–15090), Linkerd (4140–4191),
/// Consul/Envoy (19000, 21000+), Vault Agent (8100, 8200) and oauth2-proxy (4180) leave
/// free. `bearerd demo` uses them too.
pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:14080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:14090";

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from, for messages.
    pub source: PathBuf,
    pub server: ServerConfig,
    pub store: StoreConfig,
    pub credentials: Vec<CredentialConfig>,
    pub upstreams: Vec<UpstreamConfig>,
    pub events: EventsConfig,
    pub telemetry: TelemetryConfig,
    /// The text it was read from (a reload compares the next text with it).
    pub text: SourceText,
    /// What the config names outside its text, for the check step.
    pub material: Vec<super::MaterialCheck>,
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
        servers: RedisServers,
        key: SecretRef,
        prefix: String,
        tls: RedisTls,
        /// Replicas that must have a stored refresh token before it is used or its lease
        /// released (`WAIT`); `None`: 1 when the master has replicas, else 0.
        min_replicas_acked: Option<u32>,
    },
}

/// `master_username` and `master_password`: how the master is reached when the sentinels
/// ask for another password, or for none.
#[derive(Debug, Clone)]
pub struct MasterAuth {
    pub username: Option<String>,
    pub password: SecretRef,
}

/// Where the Redis store's master is.
#[derive(Debug, Clone)]
pub enum RedisServers {
    /// One address (a single server, or a managed service's primary endpoint).
    Url(SecretRef),
    /// Sentinels that name the master of `master_name`, followed through failovers.
    Sentinel {
        sentinels: Vec<SecretRef>,
        master_name: String,
        /// The master's own user and password, when they are not the sentinels'.
        master_auth: Option<MasterAuth>,
    },
    /// A Redis Cluster, found from these nodes; a credential's keys share one hash slot.
    Cluster(Vec<SecretRef>),
}

/// What a `rediss://` connection trusts and shows, beyond the system roots. Empty for
/// `redis://` (the config refuses these keys there).
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// The CAs that sign the server's certificate, instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// The client certificate for a Redis that asks for one.
    pub identity: Option<ClientIdentity>,
}

impl RedisTls {
    /// The files, by key and path, for messages.
    pub fn describe(&self) -> String {
        let mut files = Vec::new();
        if let Some(ca) = &self.ca_file {
            files.push(format!("ca_file {}", ca.display()));
        }
        if let Some(id) = &self.identity {
            files.push(format!("client_cert {}", id.cert.display()));
            files.push(format!("client_key {}", id.key.display()));
        }
        files.join(", ")
    }
}

/// A config's text. It may hold secrets written inline: `Debug` never shows it.
#[derive(Clone, Default)]
pub struct SourceText(pub std::sync::Arc<str>);

impl std::fmt::Debug for SourceText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceText({} bytes)", self.0.len())
    }
}

/// Where events go besides `/events`: webhooks and the audit file.
#[derive(Debug, Clone, Default)]
pub struct EventsConfig {
    pub webhooks: Vec<WebhookConfig>,
    /// JSON lines, one per request a credential was used for; off when none.
    pub audit_file: Option<PathBuf>,
}

/// Where spans go (OTLP over HTTP); no endpoint, no tracing and no cost on the data path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The collector's base URL (`/v1/traces` is added), or the full traces URL.
    pub otlp_endpoint: Option<url::Url>,
    /// `service.name` of every span.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "bearerd".to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: url::Url,
    /// The kinds it takes; every kind when empty.
    pub on: Vec<crate::api::EventKind>,
    /// `whsec_<base64>`; read and checked by the check step.
    pub secret: SecretRef,
    /// Events that may wait for delivery; beyond it new ones are dropped and counted.
    pub queue: usize,
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
    /// Health, readiness and metrics only, for the kubelet and Prometheus on the pod IP,
    /// while the admin listener (status, refresh, logout, login) stays on loopback.
    pub metrics_listen: Option<SocketAddr>,
    pub admin_token: Option<SecretRef>,
    pub threads: usize,
    pub work_stealing: bool,
    pub log_format: LogFormat,
    pub access_log: bool,
    pub shutdown_grace: Duration,
    /// Requests with a larger head (request line and headers) get 431, never forwarded.
    pub max_request_header_bytes: usize,
    /// Host names accepted besides IP literals and loopback names (lowercase, no port).
    pub allowed_hosts: Vec<String>,
    /// Browser origins allowed besides loopback ones (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// `allow_remote_clients = true`: the proxy (or an upstream's listener) may listen off
    /// loopback, where others than the app can spend the credentials.
    pub allow_remote_clients: bool,
    /// The program that runs `rotation-helper` (this binary), for rotations that survive a
    /// kill. Not a config key: `bearerd run` sets it; embedders may.
    pub rotation_helper: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// Sent with every method; only a `jwt_bearer` or `token_exchange` credential may go
    /// without one.
    pub client_id: Option<String>,
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
    /// The protected resource is an MCP server (`mcp = true`): when a GET draws no challenge,
    /// discovery asks with a JSON-RPC `ping` (MCP servers serve POST only).
    pub resource_speaks_mcp: bool,
    pub redirect_port: Option<u16>,
    pub scope_on_refresh: bool,
    pub client: ClientAuth,
    pub scopes: Vec<String>,
    pub resource: Option<String>,
    pub params: BTreeMap<String, String>,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    /// What discovery from a protected resource may use: issuer URLs (no trailing slash)
    /// or hosts (`host` or `host:port`, lowercase).
    pub allowed_authorization_servers: Vec<String>,
    /// `insecure_http = true`: its endpoints may be plain http to another host.
    pub insecure_http: bool,
    /// `registration = "auto"`: no `client_id` in the config; the sidecar registers one.
    pub registration: Option<RegistrationConfig>,
    /// What a 403 `insufficient_scope` may add (see `oauth::step_up`).
    pub step_up: StepUpRule,
    /// `dpop = true`: tokens bound to a key the sidecar keeps (RFC 9449), proven at the
    /// token endpoint and on every upstream request.
    pub dpop: bool,
}

/// Who may widen a credential's scopes after an upstream's 403 `insufficient_scope`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepUpRule {
    /// A machine grant: bearerd itself, within `step_up_scopes` (none by default).
    Machine { allowed: Vec<String> },
    /// A user grant: the person, at the next login.
    User,
}

/// How a credential with `registration = "auto"` gets its client (see `oauth::registration`).
#[derive(Debug, Clone)]
pub struct RegistrationConfig {
    /// `client_metadata_url`: the client ID metadata document the operator hosts; its URL
    /// is the `client_id` wherever the authorization server accepts such documents.
    pub client_metadata_url: Option<url::Url>,
    /// What the authorization server shows the user: `bearerd ({credential})`.
    pub client_name: String,
    /// A per-subject credential's connect flows come back to this https `redirect_uri`
    /// (a "web" client); without one, `bearerd login`'s loopback redirect (a "native" one).
    pub web_redirect: Option<url::Url>,
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
    /// Set for a per-subject credential: one token set per end user.
    pub subjects: Option<SubjectConfig>,
}

/// `subject_header` and its companions: a credential that keeps one token set per end user
/// (the subject), named by the app in a request header.
#[derive(Debug, Clone)]
pub struct SubjectConfig {
    /// Read on the proxy listener, and removed before the request goes upstream.
    pub header: http::HeaderName,
    pub kind: SubjectKind,
    /// Subjects unused this long leave memory (they come back from the store).
    pub idle: Duration,
    /// The most subjects held in memory at once; the least recently used leave first.
    pub max_in_memory: usize,
    /// How long a connect flow's `state` is accepted.
    pub connect_lifetime: Duration,
    /// `subject_from = { jwt = … }`: `header` carries the user's JWT, and the subject is
    /// its verified claim.
    pub from_jwt: Option<JwtSubjectConfig>,
}

/// A user JWT that names the subject, and what it must say to be believed.
#[derive(Debug, Clone)]
pub struct JwtSubjectConfig {
    /// Its `iss`, exactly; its keys are discovered from this issuer's metadata.
    pub issuer: String,
    pub audience: String,
    /// The claim that names the subject.
    pub claim: String,
    pub jwks_url: Option<url::Url>,
    /// The table's `insecure_http`: a discovered `jwks_uri` may be plain http.
    pub insecure_http: bool,
    /// The credential's `ca_file`, trusted for the issuer's metadata and keys too.
    pub ca_file: Option<std::path::PathBuf>,
}

/// How a subject gets its tokens.
#[derive(Debug, Clone)]
pub enum SubjectKind {
    /// Its own refresh token, from a connect flow or a hand-over (`grant = "refresh_token"`).
    Delegated {
        /// Where the provider sends the user back after a connect flow (the app relays it
        /// to `/connect/callback`); connect flows need it.
        redirect_uri: Option<url::Url>,
    },
    /// On behalf of: the header carries the user's own token, exchanged (RFC 8693) and
    /// cached under a hash of it (`grant = "token_exchange"`).
    OnBehalfOf {
        /// User tokens not seen before that may be exchanged per second (and at once).
        new_per_second: u32,
        /// How long an opaque user token's exchange is served before it is done again.
        opaque_lifetime: Duration,
    },
}

impl SubjectConfig {
    pub fn redirect_uri(&self) -> Option<&url::Url> {
        match &self.kind {
            SubjectKind::Delegated { redirect_uri } => redirect_uri.as_ref(),
            SubjectKind::OnBehalfOf { .. } => None,
        }
    }

    pub fn on_behalf_of(&self) -> bool {
        matches!(self.kind, SubjectKind::OnBehalfOf { .. })
    }

    pub const DEFAULT_IDLE: Duration = Duration::from_secs(15 * 60);
    pub const DEFAULT_MAX_IN_MEMORY: usize = 100_000;
    pub const DEFAULT_CONNECT_LIFETIME: Duration = Duration::from_secs(600);
    pub const DEFAULT_NEW_PER_SECOND: u32 = 50;
    pub const DEFAULT_OPAQUE_LIFETIME: Duration = Duration::from_secs(15 * 60);
}

impl CredentialConfig {
    /// What the credential's token is: grant, token endpoint (or where it is discovered),
    /// client, scopes, resource and audience. Replicas share a token set only when this
    /// agrees, so a changed config never adopts a token obtained for another.
    pub fn binding(&self) -> String {
        let Some(request) = self.grant.request() else {
            return format!("static\n{}", self.name);
        };
        // Who the token stands for, beyond the client: the assertion's issuer and subject,
        // or the subject and actor tokens' sources and the requested type.
        let (audience, identity) = self.grant.identity();
        let audience = audience.or(request.params.get("audience").map(String::as_str));
        let endpoint = request
            .token_url
            .as_ref()
            .or(request.issuer.as_ref())
            .or(request.protected_resource.as_ref())
            .map_or("", url::Url::as_str);
        let mut scopes = request.scopes.clone();
        scopes.sort();
        // Empty for the older grants, so their bindings (and the stored sets keyed by them)
        // stay what they were.
        let identity = (!identity.is_empty()).then_some(identity);
        // The authorization servers discovery may pick (absent for credentials without
        // pins, so their bindings stay what they were).
        let mut pins = request.allowed_authorization_servers.clone();
        pins.sort();
        let pins = (!pins.is_empty()).then(|| format!("pins {}", pins.join(" ")));
        // A DPoP-bound token cannot be sent as a bearer token, nor the other way round
        // (absent without DPoP, so other bindings stay what they were).
        let dpop = request.dpop.then_some("dpop");
        [
            self.grant.kind(),
            endpoint,
            request.client.client_id.as_deref().unwrap_or(""),
            &scopes.join(" "),
            request.resource.as_deref().unwrap_or(""),
            audience.unwrap_or(""),
        ]
        .into_iter()
        .chain(identity.as_deref())
        .chain(pins.as_deref())
        .chain(dpop)
        .collect::<Vec<_>>()
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
    /// A tool's credential instead of `credential`, for requests whose `Mcp-Name` header
    /// names the tool: (the tool's name, index into `Config::credentials`).
    pub tools: Vec<(String, usize)>,
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// The longest one read from the upstream may wait; `None`: no limit (streams may idle).
    pub read_timeout: Option<Duration>,
    /// `insecure_http = true`: its url may be plain http to another host.
    pub insecure_http: bool,
    /// `mcp = true`: an MCP server (see `proxy::elicitation`).
    pub mcp: bool,
}

impl Config {
    pub fn credential(&self, name: &str) -> Option<&CredentialConfig> {
        self.credentials.iter().find(|c| c.name == name)
    }

    /// A human-readable list of the routes, for `bearerd check`.
    /// One warning line for each relaxation of the trust boundary in force, for `check`
    /// and the startup log.
    pub fn relaxations(&self) -> Vec<String> {
        let s = &self.server;
        let mut out = Vec::new();
        if s.allow_remote_clients {
            out.push("server.allow_remote_clients: the proxy may listen off loopback, where others than the app can spend the credentials".to_string());
        }
        for c in &self.credentials {
            if c.grant.request().is_some_and(|r| r.insecure_http) {
                out.push(format!(
                    "credentials.{}.insecure_http: its endpoints may be plain http to another host (tokens and secrets in clear on the network)",
                    c.name
                ));
            }
        }
        for u in &self.upstreams {
            if u.insecure_http {
                out.push(format!(
                    "upstreams.{}.insecure_http: its url may be plain http to another host (its token in clear on the network)",
                    u.name
                ));
            }
        }
        if !s.allowed_hosts.is_empty() {
            out.push(format!(
                "server.allowed_hosts: requests naming {} are served like the app's (whoever can make those names resolve here can use the credentials)",
                s.allowed_hosts.join(", ")
            ));
        }
        if !s.allowed_origins.is_empty() {
            out.push(format!(
                "server.allowed_origins: web pages from {} may use the credentials",
                s.allowed_origins.join(", ")
            ));
        }
        out
    }

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
