//! Lowering: the raw TOML tables into the validated model, with every error located at its
//! file, line and key. Credentials, one grant at a time, are in `credential`.

mod client_auth;
mod credential;
mod events;
mod token_request;

use credential::lower_credential;
// What a grant kind's lowering (in the `grant` room) shares, through `config::lowering`.
pub(crate) use credential::{
    file_only, key_source, lower_policy, lower_signing, non_empty, subject_header_name,
    subjects_in_memory, ClientIdRule, SIGNING_KEYS,
};
pub(crate) use token_request::lower_token_request;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::error::SourceMap;
use super::grant::GrantTables;
use super::kinds::Kinds;
use super::pending::Material;
use super::raw::{RawConfig, RawCredential, RawUpstream};
use super::store::StoreTables;
use super::urls::parse_http_url;
use super::*;

/// A schema error (syntax, type, unknown key) at its line and key. A key of a table that
/// its kind (a credential's grant, the store's backend) does not take says which kinds
/// take it, or which keys this one takes.
pub(super) fn schema_error<K: Kinds>(map: &SourceMap, err: &toml::de::Error) -> ConfigError {
    let mut e = map.toml_error(err);
    if !e.message.starts_with("unknown field") {
        return e;
    }
    let path = e.key.clone().unwrap_or_default();
    let hint = match path.split('.').collect::<Vec<_>>()[..] {
        ["store", field] => {
            let backend = map.str_at(&["store", "backend"]).unwrap_or(DEFAULT_BACKEND);
            let kinds = ("backend", K::Stores::NAMES, K::Stores::keys_of as KeysOf);
            unknown_key_hint(field, backend, kinds)
        }
        ["credentials", name, field] => {
            let grant = map
                .str_at(&["credentials", name, "grant"])
                .unwrap_or_default();
            let kinds = ("grant", K::Grants::NAMES, K::Grants::keys_of as KeysOf);
            unknown_key_hint(field, grant, kinds)
        }
        _ => None,
    };
    if let Some(message) = hint {
        e.message = message;
    }
    e
}

/// The keys a table of one kind takes (`None`: a kind this build does not know).
type KeysOf = fn(&str) -> Option<&'static [&'static str]>;

/// Says which kinds take `field` (or the near key it may be a typo of), and the keys the
/// table's own kind takes; `None` when the kind itself is unknown.
fn unknown_key_hint(
    field: &str,
    kind: &str,
    (noun, all, keys_of): (&str, &[&str], KeysOf),
) -> Option<String> {
    let keys = keys_of(kind)?;
    let takers: Vec<&str> = all
        .iter()
        .copied()
        .filter(|k| keys_of(k).is_some_and(|keys| keys.contains(&field)))
        .collect();
    let hint = if !takers.is_empty() {
        format!("it is a key of {noun} {}, not {kind:?}", takers.join(" | "))
    } else if let Some(near) = keys.iter().find(|k| edit_distance(k, field) <= 2) {
        format!("did you mean `{near}`?")
    } else {
        format!("no {noun} takes it")
    };
    Some(format!(
        "unknown field `{field}`: {hint}; {noun} {kind:?} takes: {}",
        keys.join(", ")
    ))
}

/// Levenshtein distance, for "did you mean" on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
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
pub(crate) fn bounded_duration(
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

pub(super) fn lower<K: Kinds>(
    source: &Path,
    map: &SourceMap,
    raw: RawConfig,
) -> Result<Config, ConfigError> {
    let server = lower_server(map, &raw)?;
    app_listener(
        map,
        "server.proxy_listen",
        server.proxy_listen,
        server.allow_remote_clients,
    )?;

    let store = super::store::lower_store::<K::Stores>(map, &raw.store)?;

    let mut credentials = Vec::new();
    let mut index = HashMap::new();
    for (name, rc) in &raw.credentials {
        index.insert(name.clone(), credentials.len());
        credentials.push(lower_credential::<K::Grants>(map, name, rc)?);
    }

    if raw.upstreams.is_empty() {
        return Err(map.error_at(
            "upstreams",
            "no upstream is configured: add an [upstreams.NAME] table",
        ));
    }
    let mut upstreams = Vec::new();
    let mut prefixes: HashMap<String, String> = HashMap::new();
    let mut ports = server_ports(map, &server)?;
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
                let key = format!("upstreams.{name}.listen");
                app_listener(map, &key, *a, server.allow_remote_clients)?;
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
            match cred.grant.request_mut() {
                // The upstream would choose who receives the client's credentials.
                Some(req)
                    if req.issuer.is_none() && req.allowed_authorization_servers.is_empty() =>
                {
                    return Err(map.error_at(
                        &format!("upstreams.{name}.discover"),
                        format!("discover = true lets the upstream name the authorization server that receives credential {:?}'s secrets: pin it on the credential with `issuer = \"https://…\"` or `allowed_authorization_servers = [\"idp.example.com\"]`", cred.name),
                    ));
                }
                Some(req) => {
                    req.protected_resource.get_or_insert_with(|| up.url.clone());
                    req.resource_speaks_mcp |= up.mcp;
                }
                None => {
                    return Err(map.error_at(
                        &format!("upstreams.{name}.discover"),
                        "discovery needs an OAuth grant; the credential is static",
                    ))
                }
            }
        }
        upstreams.push(up);
    }
    every_token_endpoint_found(map, &credentials)?;

    Ok(Config {
        source: source.to_path_buf(),
        server,
        store,
        credentials,
        upstreams,
        events: events::lower_events(map, &raw.events)?,
        telemetry: events::lower_telemetry(map, &raw.telemetry)?,
        text: SourceText::default(),
        material: Vec::new(),
    })
}

/// The server's own listeners by address; two on one address is an error.
fn server_ports(
    map: &SourceMap,
    server: &ServerConfig,
) -> Result<HashMap<SocketAddr, String>, ConfigError> {
    let mut ports: HashMap<SocketAddr, String> = HashMap::new();
    ports.insert(server.proxy_listen, "server.proxy_listen".into());
    let listeners = [
        Some((server.admin_listen, "server.admin_listen")),
        server.metrics_listen.map(|a| (a, "server.metrics_listen")),
    ];
    for (addr, key) in listeners.into_iter().flatten() {
        if let Some(other) = ports.insert(addr, key.into()) {
            return Err(map.error_at(key, format!("the same address is already used by {other}")));
        }
    }
    Ok(ports)
}

/// Every OAuth credential must be able to find its token endpoint: configured, discovered,
/// or named by its service-account key (which the check step reads).
fn every_token_endpoint_found(
    map: &SourceMap,
    credentials: &[CredentialConfig],
) -> Result<(), ConfigError> {
    for cred in credentials {
        let name = &cred.name;
        if let Some(req) = cred.grant.request() {
            let configured = req.token_url.is_some() || req.issuer.is_some();
            if let (false, Some(sa)) = (configured, cred.grant.service_account_key()) {
                // The key file may name the endpoint: the check step reads it.
                let required_at = req
                    .protected_resource
                    .is_none()
                    .then(|| map.place(&format!("credentials.{name}.grant")));
                map.check_later(
                    &format!("credentials.{name}.service_account_key"),
                    Material::ServiceAccountEndpoint {
                        key: sa.clone(),
                        required_at,
                        insecure_http: req.insecure_http,
                    },
                );
            } else if !configured && req.protected_resource.is_none() {
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
    Ok(())
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
    let metrics_listen = s
        .metrics_listen
        .as_deref()
        .map(|a| socket_addr(map, "server.metrics_listen", a))
        .transpose()?;
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
        Some(r) => Some(map.lower_secret("server.admin_token", r)?),
        None => None,
    };
    if admin_token.is_none() && !admin_listen.ip().is_loopback() {
        return Err(map.error_at(
            "server.admin_listen",
            format!("{admin_listen} is not a loopback address: set `admin_token` so only operators can refresh or log out credentials"),
        ));
    }
    // Envoy's default is 60 KiB; Pingora itself refuses heads over 1 MiB.
    let max_request_header_bytes = s.max_request_header_bytes.unwrap_or(64 * 1024);
    if !(1024..=1024 * 1024).contains(&max_request_header_bytes) {
        return Err(map.error_at(
            "server.max_request_header_bytes",
            format!("max_request_header_bytes must be between 1024 and 1048576 (1 MiB, Pingora's own limit), got {max_request_header_bytes}"),
        ));
    }
    Ok(ServerConfig {
        max_request_header_bytes,
        allowed_hosts: lower_allowed_hosts(map, &s.allowed_hosts)?,
        allowed_origins: lower_allowed_origins(map, &s.allowed_origins)?,
        allow_remote_clients: s.allow_remote_clients.unwrap_or(false),
        proxy_listen,
        admin_listen,
        metrics_listen,
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

/// `server.allowed_hosts`: names as they appear in `Host`, without a port.
fn lower_allowed_hosts(
    map: &SourceMap,
    hosts: &Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let key = "server.allowed_hosts";
    let mut out = Vec::new();
    for h in hosts.iter().flatten() {
        let name = h.trim().trim_end_matches('.').to_ascii_lowercase();
        let problem = if name.is_empty() || name == "*" || name.contains('*') {
            Some("wildcards and empty names are not accepted: list each host name")
        } else if name.contains(['/', ':', '@', ' ']) {
            Some("give the bare host name: no scheme, port or path (e.g. \"bearerd.local\")")
        } else if url::Host::parse(&name).is_err() {
            Some("is not a valid host name")
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(map.error_at(key, format!("{h:?}: {p}")));
        }
        out.push(name);
    }
    Ok(out)
}

/// `server.allowed_origins`: origins exactly as browsers send them.
fn lower_allowed_origins(
    map: &SourceMap,
    origins: &Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let key = "server.allowed_origins";
    let mut out = Vec::new();
    for o in origins.iter().flatten() {
        let url = url::Url::parse(o.trim()).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some_and(|h| !h.contains('*'))
                && u.path() == "/"
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none()
        });
        let Some(url) = url else {
            return Err(map.error_at(
                key,
                format!("{o:?} is not an origin: give scheme://host[:port], e.g. \"https://console.example.com\" (no path, no wildcard)"),
            ));
        };
        out.push(url.origin().ascii_serialization());
    }
    Ok(out)
}

fn http_url(map: &SourceMap, key: &str, value: &str) -> Result<url::Url, ConfigError> {
    parse_http_url(value).map_err(|e| map.error_at(key, e))
}

/// A URL that tokens or secrets travel to: https, or plain http on this machine, unless
/// its table says `insecure_http = true`.
pub(crate) fn private_url(
    map: &SourceMap,
    key: &str,
    value: &str,
    insecure_http: Option<bool>,
) -> Result<url::Url, ConfigError> {
    let url = http_url(map, key, value)?;
    if !insecure_http.unwrap_or(false) && !secure_or_loopback(&url) {
        return Err(map.error_at(
            key,
            format!("{value:?} is plain http to another host: tokens and secrets would cross the network in clear. Use https, or set `insecure_http = true` on this table"),
        ));
    }
    Ok(url)
}

/// A listener that spends credentials: on loopback, unless `allow_remote_clients = true`.
fn app_listener(
    map: &SourceMap,
    key: &str,
    addr: SocketAddr,
    allow_remote_clients: bool,
) -> Result<(), ConfigError> {
    if addr.ip().is_loopback() || allow_remote_clients {
        return Ok(());
    }
    Err(map.error_at(
        key,
        format!("{addr} is not a loopback address: anyone who reaches it spends the credentials. Keep it on 127.0.0.1, or set `allow_remote_clients = true` under [server] (and keep others out with a network policy)"),
    ))
}

fn lower_upstream(
    map: &SourceMap,
    name: &str,
    ru: &RawUpstream,
    credentials: &HashMap<String, usize>,
) -> Result<UpstreamConfig, ConfigError> {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    let url = private_url(map, &key("url"), &ru.url, ru.insecure_http)?;
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

    let route = lower_route(map, name, ru)?;
    let credential = credential_named(map, &key("credential"), &ru.credential, credentials)?;
    let tools = lower_tools(map, name, ru, credentials)?;
    if let Some(ca) = &ru.ca_file {
        if !tls {
            return Err(map.error_at(&key("ca_file"), "ca_file needs an https upstream url"));
        }
        map.check_later(&key("ca_file"), Material::CaFile(ca.clone()));
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
        tools,
        mcp: ru.mcp.unwrap_or(false),
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
        insecure_http: ru.insecure_http.unwrap_or(false),
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

/// The index of the credential `name` names, or an error at `key` listing those defined.
fn credential_named(
    map: &SourceMap,
    key: &str,
    name: &str,
    credentials: &HashMap<String, usize>,
) -> Result<usize, ConfigError> {
    credentials.get(name).copied().ok_or_else(|| {
        let mut known: Vec<&str> = credentials.keys().map(String::as_str).collect();
        known.sort_unstable();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        map.error_at(
            key,
            format!("no credential named {name:?} (defined: {known})"),
        )
    })
}

/// `[upstreams.X.tools]`: the credential of each tool an `Mcp-Name` header may name. A
/// tool's name is sent by the app as a header value, so it must be one.
fn lower_tools(
    map: &SourceMap,
    name: &str,
    ru: &RawUpstream,
    credentials: &HashMap<String, usize>,
) -> Result<Vec<(String, usize)>, ConfigError> {
    let mut tools = Vec::new();
    for (tool, credential) in ru.tools.iter().flatten() {
        let key = format!("upstreams.{name}.tools.{tool}");
        if tool.is_empty() || http::HeaderValue::from_str(tool).is_err() {
            return Err(map.error_at(
                &key,
                format!("{tool:?} cannot be an Mcp-Name header value: use the tool's name"),
            ));
        }
        tools.push((
            tool.clone(),
            credential_named(map, &key, credential, credentials)?,
        ));
    }
    Ok(tools)
}

/// How requests reach an upstream: a path prefix on the proxy listener, or a listener of
/// its own.
fn lower_route(map: &SourceMap, name: &str, ru: &RawUpstream) -> Result<RouteConfig, ConfigError> {
    let key = |k: &str| format!("upstreams.{name}.{k}");
    Ok(match (&ru.path_prefix, &ru.listen) {
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
    })
}
