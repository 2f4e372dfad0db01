//! Configuration: the TOML schema (`raw`), lowered into the validated [`Config`] the rest of
//! bearerd uses. Lowering is where every mistake is caught, with file, line and key.

mod error;
mod raw;
mod secret;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::ConfigError;
use error::SourceMap;
use raw::{RawConfig, RawCredential, RawUpstream};
pub use secret::{same_secret, SecretRef};

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
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: None,
            message: format!("cannot read config: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates config text; `source` names it in errors.
    pub fn parse(source: &Path, text: &str) -> Result<Config, ConfigError> {
        let map = SourceMap::new(source, text);
        let raw: RawConfig = toml::from_str(text).map_err(|e| map.toml_error(&e))?;
        lower(source, &map, raw)
    }

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

/// The longest duration accepted anywhere: beyond it, instant arithmetic could overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 86400);

fn duration(
    map: &SourceMap,
    key: &str,
    value: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    bounded_duration(map, key, value, default, Duration::ZERO)
}

/// A duration of at least `min` (a zero wait budget or timeout would fail every request).
fn bounded_duration(
    map: &SourceMap,
    key: &str,
    value: &Option<String>,
    default: Duration,
    min: Duration,
) -> Result<Duration, ConfigError> {
    let Some(s) = value else { return Ok(default) };
    let d = humantime::parse_duration(s.trim()).map_err(|e| {
        map.error_at(
            key,
            format!("invalid duration {s:?}: {e} (use e.g. \"500ms\", \"60s\", \"5m\")"),
        )
    })?;
    if d < min || d > MAX_DURATION {
        return Err(map.error_at(
            key,
            format!(
                "{s:?} is out of range: between {} and 365 days",
                humantime::format_duration(min)
            ),
        ));
    }
    Ok(d)
}

fn socket_addr(map: &SourceMap, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        map.error_at(
            key,
            format!("invalid listen address {value:?} (expected ip:port, e.g. \"127.0.0.1:8080\")"),
        )
    })
}

fn lower(source: &Path, map: &SourceMap, raw: RawConfig) -> Result<Config, ConfigError> {
    let server = lower_server(map, &raw)?;

    let store = lower_store(map, &raw.store)?;

    let mut credentials = Vec::new();
    let mut index = HashMap::new();
    for (name, rc) in &raw.credentials {
        index.insert(name.clone(), credentials.len());
        credentials.push(lower_credential(map, name, rc)?);
    }

    if raw.upstreams.is_empty() {
        return Err(map.error_at(
            "upstreams",
            "no upstream is configured: add an [upstreams.NAME] table",
        ));
    }
    let mut upstreams = Vec::new();
    let mut prefixes: HashMap<String, String> = HashMap::new();
    let mut ports: HashMap<SocketAddr, String> = HashMap::new();
    ports.insert(server.proxy_listen, "server.proxy_listen".into());
    if let Some(other) = ports.insert(server.admin_listen, "server.admin_listen".into()) {
        return Err(map.error_at(
            "server.admin_listen",
            format!("the same address is already used by {other}"),
        ));
    }
    for (name, ru) in &raw.upstreams {
        let up = lower_upstream(map, name, ru, &index)?;
        match &up.route {
            RouteConfig::Prefix(p) => {
                if let Some(other) = prefixes.insert(p.clone(), name.clone()) {
                    return Err(map.error_at(
                        &format!("upstreams.{name}.path_prefix"),
                        format!("path prefix {p:?} is already used by upstream {other:?}"),
                    ));
                }
            }
            RouteConfig::Listen(a) => {
                if let Some(other) = ports.insert(*a, format!("upstreams.{name}.listen")) {
                    return Err(map.error_at(
                        &format!("upstreams.{name}.listen"),
                        format!("listen address {a} is already used by {other}"),
                    ));
                }
            }
        }
        if ru.discover == Some(true) {
            let cred = &mut credentials[up.credential];
            match &mut cred.grant {
                GrantConfig::ClientCredentials(req)
                | GrantConfig::RefreshToken { request: req, .. } => {
                    req.protected_resource.get_or_insert_with(|| up.url.clone());
                }
                GrantConfig::Static { .. } => {
                    return Err(map.error_at(
                        &format!("upstreams.{name}.discover"),
                        "discovery needs an OAuth grant; the credential is static",
                    ))
                }
            }
        }
        upstreams.push(up);
    }
    // Every OAuth credential must be able to find its token endpoint.
    for (cred, name) in credentials.iter().zip(raw.credentials.keys()) {
        if let GrantConfig::ClientCredentials(req)
        | GrantConfig::RefreshToken { request: req, .. } = &cred.grant
        {
            if req.token_url.is_none() && req.issuer.is_none() && req.protected_resource.is_none() {
                return Err(map.error_at(
                    &format!("credentials.{name}.grant"),
                    format!(
                        "grant {:?} needs `token_url`, or `issuer` for discovery, or an upstream with `discover = true`",
                        cred.grant.kind()
                    ),
                ));
            }
        }
    }

    Ok(Config {
        source: source.to_path_buf(),
        server,
        store,
        credentials,
        upstreams,
    })
}

fn lower_store(map: &SourceMap, raw: &raw::RawStore) -> Result<StoreConfig, ConfigError> {
    let only_for = |key: &str, set: bool, backends: &str| -> Result<(), ConfigError> {
        if set {
            Err(map.error_at(
                &format!("store.{key}"),
                format!("only applies to the {backends} backend"),
            ))
        } else {
            Ok(())
        }
    };
    match raw.backend.as_deref() {
        None | Some("memory") => {
            only_for("path", raw.path.is_some(), "file")?;
            only_for("key", raw.key.is_some(), "file")?;
            only_for("url", raw.url.is_some(), "redis")?;
            Ok(StoreConfig::Memory)
        }
        Some("file") => {
            only_for("url", raw.url.is_some(), "redis")?;
            let Some(path) = raw.path.clone() else {
                return Err(map.error_at(
                    "store.backend",
                    "the file store needs `path = \"/var/lib/bearerd/tokens.store\"`",
                ));
            };
            let Some(key) = &raw.key else {
                return Err(map.error_at(
                    "store.backend",
                    "the file store needs `key = { env = \"BEARERD_STORE_KEY\" }` (or { file = \"…\" }): make one with `bearerd keygen`",
                ));
            };
            let key = lower_secret(map, "store.key", key)?;
            let text = key.resolve().map_err(|m| map.error_at("store.key", m))?;
            parse_store_key(secrecy::ExposeSecret::expose_secret(&text)).map_err(|m| {
                map.error_at("store.key", format!("{m}; make one with `bearerd keygen`"))
            })?;
            Ok(StoreConfig::File { path, key })
        }
        Some("redis") => Err(map.error_at(
            "store.backend",
            "store backend \"redis\" is not available in this build; use \"memory\" or \"file\"",
        )),
        Some(other) => Err(map.error_at(
            "store.backend",
            format!("unknown store backend {other:?} (expected memory | file | redis)"),
        )),
    }
}

fn lower_server(map: &SourceMap, raw: &RawConfig) -> Result<ServerConfig, ConfigError> {
    let s = &raw.server;
    let proxy_listen = socket_addr(
        map,
        "server.proxy_listen",
        s.proxy_listen.as_deref().unwrap_or(DEFAULT_PROXY_LISTEN),
    )?;
    let admin_listen = socket_addr(
        map,
        "server.admin_listen",
        s.admin_listen.as_deref().unwrap_or(DEFAULT_ADMIN_LISTEN),
    )?;
    let threads = s.threads.unwrap_or(1);
    if threads == 0 || threads > 256 {
        return Err(map.error_at(
            "server.threads",
            format!("threads must be between 1 and 256, got {threads}"),
        ));
    }
    let log_format = match s.log_format.as_deref() {
        None | Some("pretty") => LogFormat::Pretty,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(map.error_at(
                "server.log_format",
                format!("unknown log format {other:?} (expected pretty | json)"),
            ))
        }
    };
    let admin_token = match &s.admin_token {
        Some(r) => Some(lower_secret(map, "server.admin_token", r)?),
        None => None,
    };
    if admin_token.is_none() && !admin_listen.ip().is_loopback() {
        return Err(map.error_at(
            "server.admin_listen",
            format!("{admin_listen} is not a loopback address: set `admin_token` so only operators can refresh or log out credentials"),
        ));
    }
    Ok(ServerConfig {
        proxy_listen,
        admin_listen,
        admin_token,
        threads,
        work_stealing: s.work_stealing.unwrap_or(true),
        log_format,
        access_log: s.access_log.unwrap_or(false),
        rotation_helper: None,
        shutdown_grace: duration(
            map,
            "server.shutdown_grace",
            &s.shutdown_grace,
            Duration::from_secs(5),
        )?,
    })
}

fn lower_secret(
    map: &SourceMap,
    key: &str,
    raw: &secret::RawSecretRef,
) -> Result<SecretRef, ConfigError> {
    SecretRef::lower(raw).map_err(|m| map.error_at(key, m))
}

fn lower_credential(
    map: &SourceMap,
    name: &str,
    rc: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let defaults = RefreshPolicy::default();
    let ratio = rc.refresh_ratio.unwrap_or(defaults.ratio);
    if !(ratio > 0.0 && ratio <= 1.0) {
        return Err(map.error_at(
            &key("refresh_ratio"),
            format!("refresh_ratio must be in (0, 1], got {ratio}"),
        ));
    }
    let policy = RefreshPolicy {
        ratio,
        margin: duration(
            map,
            &key("refresh_margin"),
            &rc.refresh_margin,
            defaults.margin,
        )?,
        default_lifetime: bounded_duration(
            map,
            &key("default_lifetime"),
            &rc.default_lifetime,
            defaults.default_lifetime,
            Duration::from_secs(1),
        )?,
        min_interval: bounded_duration(
            map,
            &key("min_refresh_interval"),
            &rc.min_refresh_interval,
            defaults.min_interval,
            Duration::from_millis(100),
        )?,
        backoff_base: bounded_duration(
            map,
            &key("backoff_base"),
            &rc.backoff_base,
            defaults.backoff_base,
            Duration::from_millis(10),
        )?,
        backoff_cap: duration(
            map,
            &key("backoff_cap"),
            &rc.backoff_cap,
            defaults.backoff_cap,
        )?,
        wait_budget: bounded_duration(
            map,
            &key("wait_budget"),
            &rc.wait_budget,
            defaults.wait_budget,
            Duration::from_millis(10),
        )?,
    };

    if policy.backoff_cap < policy.backoff_base {
        return Err(map.error_at(
            &key("backoff_cap"),
            "backoff_cap must be at least backoff_base",
        ));
    }

    let only_for = |field: &str, present: bool, grants: &str| -> Result<(), ConfigError> {
        if present {
            Err(map.error_at(
                &key(field),
                format!(
                    "`{field}` only applies to grant {grants}, not {:?}",
                    rc.grant
                ),
            ))
        } else {
            Ok(())
        }
    };

    let grant = match rc.grant.as_str() {
        "client_credentials" => {
            only_for("refresh_token", rc.refresh_token.is_some(), "refresh_token")?;
            only_for("token", rc.token.is_some(), "static")?;
            GrantConfig::ClientCredentials(lower_token_request(map, name, rc)?)
        }
        "refresh_token" => {
            only_for("token", rc.token.is_some(), "static")?;
            let request = lower_token_request(map, name, rc)?;
            // Without a seed the credential waits for `bearerd login`.
            let seed = match &rc.refresh_token {
                Some(r) => Some(lower_secret(map, &key("refresh_token"), r)?),
                None => None,
            };
            GrantConfig::RefreshToken { request, seed }
        }
        "static" => {
            for (field, present) in [
                ("token_url", rc.token_url.is_some()),
                ("client_id", rc.client_id.is_some()),
                ("client_secret", rc.client_secret.is_some()),
                ("refresh_token", rc.refresh_token.is_some()),
            ] {
                only_for(field, present, "client_credentials | refresh_token")?;
            }
            let token = match &rc.token {
                Some(r) => lower_secret(map, &key("token"), r)?,
                None => {
                    return Err(map.error_at(
                        &key("grant"),
                        "grant \"static\" needs `token = { file = \"…\" }`",
                    ))
                }
            };
            GrantConfig::Static { token }
        }
        g @ ("token_exchange" | "jwt_bearer") => {
            return Err(map.error_at(
                &key("grant"),
                format!("grant {g:?} is not available in this build"),
            ))
        }
        other => {
            return Err(map.error_at(
                &key("grant"),
                format!(
                "unknown grant {other:?} (expected client_credentials | refresh_token | static)"
            ),
            ))
        }
    };
    Ok(CredentialConfig {
        name: name.to_string(),
        grant,
        policy,
    })
}

fn lower_token_request(
    map: &SourceMap,
    name: &str,
    rc: &RawCredential,
) -> Result<TokenRequestConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let optional_url =
        |field: &str, value: &Option<String>| -> Result<Option<url::Url>, ConfigError> {
            value
                .as_deref()
                .map(|v| http_url(map, &key(field), v))
                .transpose()
        };
    let token_url = optional_url("token_url", &rc.token_url)?;
    let issuer = optional_url("issuer", &rc.issuer)?;
    let authorization_url = optional_url("authorization_url", &rc.authorization_url)?;
    let device_authorization_url =
        optional_url("device_authorization_url", &rc.device_authorization_url)?;
    let Some(client_id) = rc.client_id.clone().filter(|c| !c.trim().is_empty()) else {
        return Err(map.error_at(
            &key("client_id"),
            format!("grant {:?} needs a non-empty `client_id`", rc.grant),
        ));
    };
    let client_secret = match &rc.client_secret {
        Some(r) => Some(lower_secret(map, &key("client_secret"), r)?),
        None => None,
    };
    let method = match rc.client_auth.as_deref() {
        None | Some("basic") => ClientAuthMethod::Basic,
        Some("post") => ClientAuthMethod::Post,
        Some("private_key_jwt") => {
            return Err(map.error_at(
                &key("client_auth"),
                "client_auth \"private_key_jwt\" is not available in this build",
            ))
        }
        Some(other) => {
            return Err(map.error_at(
                &key("client_auth"),
                format!("unknown client_auth {other:?} (expected basic | post)"),
            ))
        }
    };
    if method == ClientAuthMethod::Basic && client_secret.is_none() && rc.client_auth.is_some() {
        return Err(map.error_at(
            &key("client_auth"),
            "client_auth \"basic\" needs `client_secret`",
        ));
    }
    if let Some(r) = &rc.resource {
        url::Url::parse(r).map_err(|e| {
            map.error_at(
                &key("resource"),
                format!("resource must be an absolute URI: {e}"),
            )
        })?;
    }
    for reserved in [
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "refresh_token",
        "scope",
        "resource",
    ] {
        if rc.params.contains_key(reserved) {
            return Err(map.error_at(
                &key("params"),
                format!("params may not set {reserved:?}; bearerd sets it"),
            ));
        }
    }
    if let Some(ca) = &rc.ca_file {
        load_ca_file(ca).map_err(|m| map.error_at(&key("ca_file"), m))?;
    }
    let revocation_url = optional_url("revocation_url", &rc.revocation_url)?;
    Ok(TokenRequestConfig {
        token_url,
        revocation_url,
        authorization_url,
        device_authorization_url,
        issuer,
        protected_resource: None,
        redirect_port: rc.redirect_port,
        scope_on_refresh: rc.scope_on_refresh.unwrap_or(false),
        client: ClientAuth {
            client_id,
            client_secret,
            method,
        },
        scopes: rc.scopes.clone(),
        resource: rc.resource.clone(),
        params: rc.params.clone(),
        timeout: bounded_duration(
            map,
            &key("token_timeout"),
            &rc.token_timeout,
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?,
        ca_file: rc.ca_file.clone(),
    })
}

fn http_url(map: &SourceMap, key: &str, value: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(value)
        .map_err(|e| map.error_at(key, format!("invalid URL {value:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(map.error_at(key, format!("URL {value:?} must use http or https")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(map.error_at(key, format!("URL {value:?} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(map.error_at(
            key,
            format!("URL {value:?} may not carry a query or fragment"),
        ));
    }
    Ok(url)
}

fn lower_upstream(
    map: &SourceMap,
    name: &str,
    ru: &RawUpstream,
    credentials: &HashMap<String, usize>,
) -> Result<UpstreamConfig, ConfigError> {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let url = http_url(map, &key("url"), &ru.url)?;
    let tls = url.scheme() == "https";
    let host = url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = url
        .port_or_known_default()
        .unwrap_or(if tls { 443 } else { 80 });
    let authority = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let base_path = url.path().trim_end_matches('/').to_string();

    let route = match (&ru.path_prefix, &ru.listen) {
        (Some(_), Some(_)) => {
            return Err(map.error_at(&key("listen"), "set either `path_prefix` or `listen`, not both"))
        }
        (None, None) => {
            return Err(map.error_at(
                &key("url"),
                "the upstream needs a route: `path_prefix = \"/name\"` or a dedicated `listen = \"127.0.0.1:PORT\"`",
            ))
        }
        (Some(p), None) => {
            let p = p.trim_end_matches('/');
            if !p.starts_with('/') || p.contains(['?', '#', ' ']) {
                return Err(map.error_at(&key("path_prefix"), format!("path_prefix {p:?} must start with '/' and hold only a path")));
            }
            if p.is_empty() {
                return Err(map.error_at(&key("path_prefix"), "path_prefix \"/\" would route everything; use a dedicated `listen` instead"));
            }
            RouteConfig::Prefix(p.to_string())
        }
        (None, Some(l)) => RouteConfig::Listen(socket_addr(map, &key("listen"), l)?),
    };

    let Some(&credential) = credentials.get(&ru.credential) else {
        let known: Vec<&str> = credentials.keys().map(String::as_str).collect();
        return Err(map.error_at(
            &key("credential"),
            format!(
                "no credential named {:?} (defined: {})",
                ru.credential,
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    if let Some(ca) = &ru.ca_file {
        if !tls {
            return Err(map.error_at(&key("ca_file"), "ca_file needs an https upstream url"));
        }
        load_ca_file(ca).map_err(|m| map.error_at(&key("ca_file"), m))?;
    }
    Ok(UpstreamConfig {
        name: name.to_string(),
        tls,
        host,
        port,
        base_path,
        authority,
        route,
        credential,
        ca_file: ru.ca_file.clone(),
        connect_timeout: bounded_duration(
            map,
            &key("connect_timeout"),
            &ru.connect_timeout,
            Duration::from_secs(5),
            Duration::from_millis(10),
        )?,
        idle_timeout: duration(
            map,
            &key("idle_timeout"),
            &ru.idle_timeout,
            Duration::from_secs(4),
        )?,
        // Unset: no limit.
        read_timeout: ru
            .read_timeout
            .as_ref()
            .map(|_| {
                bounded_duration(
                    map,
                    &key("read_timeout"),
                    &ru.read_timeout,
                    Duration::ZERO,
                    Duration::from_millis(10),
                )
            })
            .transpose()?,
        url,
    })
}

/// Parses a store key: 32 bytes as base64 (what `bearerd keygen` prints) or 64 hex digits.
pub fn parse_store_key(text: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| e.to_string()))
            .collect::<Result<Vec<u8>, String>>()?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| "the store key is neither base64 nor hex".to_string())?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("the store key must be 32 bytes, got {}", b.len()))
}

/// Reads a PEM bundle and returns its certificates as DER, each one checked to parse, so a
/// bad file is a config error rather than a failure (or a panic) at the first connection.
pub fn load_ca_file(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let data =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut data.as_slice()) {
        let der = item.map_err(|e| format!("CA file {} is not valid PEM: {e}", path.display()))?;
        x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| {
            format!(
                "CA file {} holds a certificate that does not parse: {e}",
                path.display()
            )
        })?;
        certs.push(der.as_ref().to_vec());
    }
    if certs.is_empty() {
        return Err(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("t.toml"), text)
    }

    const GOOD: &str = r#"
[credentials.crm]
grant = "client_credentials"
token_url = "http://127.0.0.1:1/token"
client_id = "billing"
client_secret = "s3cret"

[upstreams.crm]
url = "http://127.0.0.1:2/api/"
path_prefix = "/crm"
credential = "crm"
"#;

    #[test]
    fn lowers_a_good_config() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.upstreams[0].base_path, "/api");
        assert_eq!(c.upstreams[0].authority, "127.0.0.1:2");
        assert_eq!(c.upstreams[0].route, RouteConfig::Prefix("/crm".into()));
        assert_eq!(c.credentials[0].policy.ratio, 0.8);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace(
            "client_id = \"billing\"",
            "client_id = \"billing\"\nclient_secrte = \"x\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.line, 6, "{e}");
        assert!(e.to_string().contains("client_secrte"), "{e}");
        assert!(e.to_string().starts_with("t.toml:6:"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let text = GOOD.replace(
            "grant = \"client_credentials\"",
            "grant = \"client_credentials\"\nrefresh_ratio = \"high\"",
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(
            e.key.as_deref(),
            Some("credentials.crm.refresh_ratio"),
            "{e}"
        );
        assert_eq!(e.line, 4);
    }
}
