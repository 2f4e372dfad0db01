//! One credential table into a [`CredentialConfig`]: an arm per grant kind, each reading its
//! own strict table through the shared key groups (token request, schedule, waiting).

use super::*;

use crate::config::raw::LoweredGrant;

use crate::config::raw::{RawSchedule, RawTokenRequest, RawWait};
use crate::material::RawSecretRef;

pub(super) fn lower_credential(
    map: &SourceMap,
    name: &str,
    rc: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let Some(table) = rc.table() else {
        return Err(match rc {
            RawCredential::Unknown(other) => map.error_at(
                &key("grant"),
                format!(
                    "unknown grant {other:?} (expected {})",
                    RawCredential::GRANTS.join(" | ")
                ),
            ),
            _ => map.error_at(
                &format!("credentials.{name}"),
                format!(
                    "the credential needs `grant = \"…\"` ({})",
                    RawCredential::GRANTS.join(" | ")
                ),
            ),
        });
    };
    let LoweredGrant {
        grant,
        policy,
        subjects,
    } = table.lower(map, name)?;
    Ok(CredentialConfig {
        name: name.to_string(),
        grant,
        policy,
        subjects,
    })
}

/// Request headers a subject header may not be: bearerd or HTTP itself gives them meaning.
pub(super) const RESERVED_SUBJECT_HEADERS: [&str; 12] = [
    "authorization",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "cookie",
    "x-request-id",
    "proxy-authorization",
];

/// `subject_idle` and `max_subjects_in_memory`: how subjects leave memory.
pub(super) fn subjects_in_memory(
    map: &SourceMap,
    name: &str,
    idle: &Option<String>,
    max: Option<usize>,
) -> Result<(Duration, usize), ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let idle = bounded_duration(
        map,
        &key("subject_idle"),
        idle,
        SubjectConfig::DEFAULT_IDLE,
        Duration::from_secs(1),
    )?;
    let max = max.unwrap_or(SubjectConfig::DEFAULT_MAX_IN_MEMORY);
    if max == 0 {
        return Err(map.error_at(
            &key("max_subjects_in_memory"),
            "max_subjects_in_memory must be at least 1",
        ));
    }
    Ok((idle, max))
}

/// A header the app names its end user (or passes the user's token) in.
pub(super) fn subject_header_name(
    map: &SourceMap,
    key: &str,
    header: &str,
) -> Result<http::HeaderName, ConfigError> {
    let parsed = http::HeaderName::from_bytes(header.trim().as_bytes())
        .map_err(|_| map.error_at(key, format!("{header:?} is not a valid HTTP header name")))?;
    if RESERVED_SUBJECT_HEADERS.contains(&parsed.as_str()) {
        return Err(map.error_at(
            key,
            format!(
                "{:?} has a meaning of its own in HTTP or in bearerd; use a header of your own, such as \"x-bearerd-subject\"",
                parsed.as_str()
            ),
        ));
    }
    Ok(parsed)
}

pub(super) fn lower_policy(
    map: &SourceMap,
    name: &str,
    schedule: &RawSchedule,
    wait: &RawWait,
) -> Result<RefreshPolicy, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let defaults = RefreshPolicy::default();
    let ratio = schedule.refresh_ratio.unwrap_or(defaults.ratio);
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
            &schedule.refresh_margin,
            defaults.margin,
        )?,
        default_lifetime: bounded_duration(
            map,
            &key("default_lifetime"),
            &schedule.default_lifetime,
            defaults.default_lifetime,
            Duration::from_secs(1),
        )?,
        min_interval: bounded_duration(
            map,
            &key("min_refresh_interval"),
            &wait.min_refresh_interval,
            defaults.min_interval,
            Duration::from_millis(100),
        )?,
        backoff_base: bounded_duration(
            map,
            &key("backoff_base"),
            &schedule.backoff_base,
            defaults.backoff_base,
            Duration::from_millis(10),
        )?,
        backoff_cap: duration(
            map,
            &key("backoff_cap"),
            &schedule.backoff_cap,
            defaults.backoff_cap,
        )?,
        wait_budget: bounded_duration(
            map,
            &key("wait_budget"),
            &wait.wait_budget,
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
    Ok(policy)
}

/// The token request of an OAuth grant; the login endpoints are the refresh_token grant's.
pub(super) fn lower_token_request(
    map: &SourceMap,
    name: &str,
    grant: &str,
    rc: &RawTokenRequest,
    client_id_rule: ClientIdRule,
    grant_signs: bool,
) -> Result<TokenRequestConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let optional_url =
        |field: &str, value: &Option<String>| -> Result<Option<url::Url>, ConfigError> {
            value
                .as_deref()
                .map(|v| private_url(map, &key(field), v, rc.insecure_http))
                .transpose()
        };
    let token_url = optional_url("token_url", &rc.token_url)?;
    let issuer = optional_url("issuer", &rc.issuer)?;
    let client = lower_client_auth(map, name, grant, rc, client_id_rule, grant_signs)?;
    if let Some(r) = &rc.resource {
        url::Url::parse(r).map_err(|e| {
            map.error_at(
                &key("resource"),
                format!("resource must be an absolute URI: {e}"),
            )
        })?;
    }
    let params = rc.params.clone().unwrap_or_default();
    for reserved in [
        "grant_type",
        "client_id",
        "client_secret",
        "client_assertion",
        "client_assertion_type",
        "refresh_token",
        "scope",
        "resource",
        "assertion",
        "subject_token",
        "subject_token_type",
        "actor_token",
        "actor_token_type",
        "requested_token_type",
        "code",
        "code_verifier",
        "redirect_uri",
        "device_code",
    ] {
        if params.contains_key(reserved) {
            return Err(map.error_at(
                &key("params"),
                format!("params may not set {reserved:?}; bearerd sets it"),
            ));
        }
    }
    if let Some(ca) = &rc.ca_file {
        map.check_later(&key("ca_file"), Material::CaFile(ca.clone()));
    }
    let revocation_url = optional_url("revocation_url", &rc.revocation_url)?;
    Ok(TokenRequestConfig {
        token_url,
        revocation_url,
        authorization_url: None,
        device_authorization_url: None,
        issuer,
        protected_resource: None,
        redirect_port: None,
        scope_on_refresh: false,
        client,
        scopes: rc.scopes.clone().unwrap_or_default(),
        resource: rc.resource.clone(),
        params,
        timeout: bounded_duration(
            map,
            &key("token_timeout"),
            &rc.token_timeout,
            Duration::from_secs(10),
            Duration::from_millis(100),
        )?,
        ca_file: rc.ca_file.clone(),
        insecure_http: rc.insecure_http.unwrap_or(false),
        allowed_authorization_servers: lower_pins(
            map,
            &key("allowed_authorization_servers"),
            &rc.allowed_authorization_servers,
        )?,
    })
}

/// `allowed_authorization_servers`: issuer URLs (https, or http on loopback) or hosts.
pub(super) fn lower_pins(
    map: &SourceMap,
    key: &str,
    pins: &Option<Vec<String>>,
) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for pin in pins.iter().flatten() {
        let pin = pin.trim();
        let normalized = if pin.contains("://") {
            let url = http_url(map, key, pin)?;
            if !secure_or_loopback(&url) {
                return Err(map.error_at(
                    key,
                    format!("{pin:?}: an authorization server must use https (plain http only on loopback)"),
                ));
            }
            url.as_str().trim_end_matches('/').to_string()
        } else {
            let (host, port) = match pin.rsplit_once(':') {
                Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
                _ => (pin, None),
            };
            let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
            if pin.is_empty()
                || pin.contains(['*', '/', '@', ' '])
                || !port_ok
                || url::Host::parse(host).is_err()
            {
                return Err(map.error_at(
                    key,
                    format!("{pin:?} is neither an issuer URL nor a host (e.g. \"https://idp.example.com/tenant\" or \"idp.example.com\"); wildcards are not accepted"),
                ));
            }
            pin.to_ascii_lowercase()
        };
        out.push(normalized);
    }
    Ok(out)
}

/// Whether a grant needs `client_id` whatever its client authentication.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientIdRule {
    Required,
    /// jwt_bearer and token_exchange: the assertion or subject token says who is asking.
    Optional,
}

/// The `client_auth` values, parsed before the method's keys are read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Method {
    Basic,
    Post,
    PrivateKeyJwt,
    ClientAssertion,
    TlsClientAuth,
    None,
}

impl Method {
    const ALL: [Method; 6] = [
        Method::Basic,
        Method::Post,
        Method::PrivateKeyJwt,
        Method::ClientAssertion,
        Method::TlsClientAuth,
        Method::None,
    ];

    fn name(self) -> &'static str {
        match self {
            Method::Basic => "basic",
            Method::Post => "post",
            Method::PrivateKeyJwt => "private_key_jwt",
            Method::ClientAssertion => "client_assertion",
            Method::TlsClientAuth => "tls_client_auth",
            Method::None => "none",
        }
    }

    /// The client authentication keys this method reads.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Method::Basic | Method::Post => &["client_secret"],
            Method::PrivateKeyJwt => &SIGNING_KEYS,
            Method::ClientAssertion => &["client_assertion"],
            Method::TlsClientAuth => &["client_cert", "client_key"],
            Method::None => &[],
        }
    }

    /// Whether the method names the client (its `client_id` is then required).
    fn needs_client_id(self) -> bool {
        match self {
            Method::Basic | Method::Post | Method::PrivateKeyJwt | Method::TlsClientAuth => true,
            Method::ClientAssertion | Method::None => false,
        }
    }
}

/// Keys a jwt_bearer credential uses for its own assertion.
pub(super) const SIGNING_KEYS: [&str; 4] =
    ["private_key", "key_id", "signing_alg", "assertion_audience"];

/// A file, required for what the platform rewrites (a projected token, a certificate):
/// a value given inline or in the environment could never be renewed.
pub(super) fn file_only(
    map: &SourceMap,
    key: &str,
    raw: &RawSecretRef,
) -> Result<std::path::PathBuf, ConfigError> {
    let name = key.rsplit('.').next().unwrap_or(key);
    match raw {
        RawSecretRef::File { file } => Ok(file.clone()),
        RawSecretRef::Inline(_) | RawSecretRef::Env { .. } | RawSecretRef::Header { .. } => {
            Err(map.error_at(
                key,
                format!("`{name}` must be a file, which is read again at every use: {name} = {{ file = \"…\" }}"),
            ))
        }
    }
}

/// A private key from a file or the environment, never written into the config itself.
pub(super) fn key_source(
    map: &SourceMap,
    key: &str,
    raw: &RawSecretRef,
) -> Result<SecretRef, ConfigError> {
    match raw {
        RawSecretRef::Inline(_) => {
            let name = key.rsplit('.').next().unwrap_or(key);
            Err(map.error_at(
                key,
                format!("`{name}` must not be written into the config: use {{ file = \"…\" }} or {{ env = \"…\" }}"),
            ))
        }
        RawSecretRef::Env { .. } | RawSecretRef::File { .. } | RawSecretRef::Header { .. } => {
            map.lower_secret(key, raw)
        }
    }
}

pub(super) fn lower_client_auth(
    map: &SourceMap,
    name: &str,
    grant: &str,
    rc: &RawTokenRequest,
    client_id_rule: ClientIdRule,
    grant_signs: bool,
) -> Result<ClientAuth, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let method = client_auth_method(map, name, rc, grant_signs)?;
    let at_method = key(if rc.client_auth.is_some() {
        "client_auth"
    } else {
        "grant"
    });
    let needs = |k: &str| {
        map.error_at(
            &at_method,
            format!("client_auth {:?} needs `{k}`", method.name()),
        )
    };
    let client_id = rc.client_id.clone().filter(|c| !c.trim().is_empty());
    let id_needed = client_id_rule == ClientIdRule::Required || method.needs_client_id();
    if client_id.is_none() && (id_needed || rc.client_id.is_some()) {
        return Err(map.error_at(
            &key("client_id"),
            format!("grant {grant:?} needs a non-empty `client_id`"),
        ));
    }
    let method = lower_client_auth_method(map, name, rc, method, needs)?;
    Ok(ClientAuth { client_id, method })
}

/// The client authentication method: `client_auth`, else the one the credential's keys
/// imply. A key that belongs to another method is an error.
pub(super) fn client_auth_method(
    map: &SourceMap,
    name: &str,
    rc: &RawTokenRequest,
    grant_signs: bool,
) -> Result<Method, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let given: [(&str, bool); 8] = [
        ("client_secret", rc.client_secret.is_some()),
        ("private_key", rc.private_key.is_some()),
        ("key_id", rc.key_id.is_some()),
        ("signing_alg", rc.signing_alg.is_some()),
        ("assertion_audience", rc.assertion_audience.is_some()),
        ("client_assertion", rc.client_assertion.is_some()),
        ("client_cert", rc.client_cert.is_some()),
        ("client_key", rc.client_key.is_some()),
    ];
    let present = |k: &str| given.iter().any(|(g, p)| *g == k && *p);
    let method = match rc.client_auth.as_deref() {
        Some(m) => Method::ALL
            .into_iter()
            .find(|x| x.name() == m)
            .ok_or_else(|| {
                map.error_at(
                    &key("client_auth"),
                    format!(
                        "unknown client_auth {m:?} (expected {})",
                        Method::ALL.map(Method::name).join(" | ")
                    ),
                )
            })?,
        // Without `client_auth`, the credential's keys say which method it uses.
        None if present("client_secret") => Method::Basic,
        None if present("client_assertion") => Method::ClientAssertion,
        None if present("client_cert") || present("client_key") => Method::TlsClientAuth,
        None if present("private_key") && !grant_signs => Method::PrivateKeyJwt,
        None => Method::None,
    };
    for (k, is_given) in given {
        let used = method.keys().contains(&k) || (grant_signs && SIGNING_KEYS.contains(&k));
        if is_given && !used {
            let owners: Vec<&str> = Method::ALL
                .into_iter()
                .filter(|m| m.keys().contains(&k))
                .map(Method::name)
                .collect();
            return Err(map.error_at(
                &key(k),
                format!(
                    "`{k}` is not used with client_auth {:?}; it belongs to client_auth {}",
                    method.name(),
                    owners.join(" | ")
                ),
            ));
        }
    }
    Ok(method)
}

/// The method with what it needs read and checked: a secret, a key, a client assertion
/// file (a JWT), or a certificate and key that belong together.
pub(super) fn lower_client_auth_method(
    map: &SourceMap,
    name: &str,
    rc: &RawTokenRequest,
    method: Method,
    needs: impl Fn(&str) -> ConfigError,
) -> Result<ClientAuthMethod, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let required = |k: &str, raw: &Option<RawSecretRef>| raw.clone().ok_or_else(|| needs(k));
    Ok(match method {
        Method::Basic => ClientAuthMethod::Basic(map.lower_secret(
            &key("client_secret"),
            &required("client_secret", &rc.client_secret)?,
        )?),
        Method::Post => ClientAuthMethod::Post(map.lower_secret(
            &key("client_secret"),
            &required("client_secret", &rc.client_secret)?,
        )?),
        Method::PrivateKeyJwt => {
            let raw = required("private_key", &rc.private_key)?;
            let pem = key_source(map, &key("private_key"), &raw)?;
            let signing =
                lower_signing(map, name, rc, (KeySource::Pem(pem), "private_key"), false)?;
            ClientAuthMethod::PrivateKeyJwt(signing)
        }
        Method::ClientAssertion => {
            let raw = required("client_assertion", &rc.client_assertion)?;
            let source = SecretRef::File(file_only(map, &key("client_assertion"), &raw)?);
            map.check_later(&key("client_assertion"), Material::Jwt(source.clone()));
            ClientAuthMethod::ClientAssertion(source)
        }
        Method::TlsClientAuth => {
            let identity = ClientIdentity {
                cert: file_only(
                    map,
                    &key("client_cert"),
                    &required("client_cert", &rc.client_cert)?,
                )?,
                key: file_only(
                    map,
                    &key("client_key"),
                    &required("client_key", &rc.client_key)?,
                )?,
            };
            map.check_identity_later(&format!("credentials.{name}"), &identity);
            ClientAuthMethod::TlsClientAuth(identity)
        }
        Method::None => ClientAuthMethod::None,
    })
}

/// A signing key and its header: the check step reads the key, so a wrong kind of key, an
/// unreadable file or an algorithm the key cannot sign with is a config error.
pub(super) fn lower_signing(
    map: &SourceMap,
    name: &str,
    rc: &RawTokenRequest,
    (source, source_key): (KeySource, &str),
    scopes_missing: bool,
) -> Result<SigningConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let alg = match rc.signing_alg.as_deref() {
        None => None,
        Some(a) => Some(SigningAlg::parse(a).ok_or_else(|| {
            map.error_at(
                &key("signing_alg"),
                format!(
                    "unknown signing_alg {a:?} (expected {})",
                    SigningAlg::ALL.map(SigningAlg::as_str).join(" | ")
                ),
            )
        })?),
    };
    let config = SigningConfig {
        key: source,
        key_id: non_empty(map, &key("key_id"), &rc.key_id)?,
        alg,
        audience: non_empty(map, &key("assertion_audience"), &rc.assertion_audience)?,
    };
    map.check_later(
        &key(source_key),
        Material::SigningKey {
            config: config.clone(),
            alg_at: map.place(&key("signing_alg")),
            scopes_missing,
        },
    );
    Ok(config)
}

/// A token read at every use, with its RFC 8693 type (a JWT unless said otherwise; one
/// declared as a JWT must be one already).
pub(super) fn lower_typed_token(
    map: &SourceMap,
    name: &str,
    (token_key, raw): (&str, &RawSecretRef),
    (type_key, token_type): (&str, &Option<String>),
) -> Result<TypedToken, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let token = SecretRef::File(file_only(map, &key(token_key), raw)?);
    let token_type = match token_type {
        Some(t) => token_type_uri(map, &key(type_key), t)?,
        None => TOKEN_TYPE_JWT.to_string(),
    };
    let check = if token_type == TOKEN_TYPE_JWT || token_type == TOKEN_TYPE_ID_TOKEN {
        Material::Jwt(token.clone())
    } else {
        Material::Secret(token.clone())
    };
    map.check_later(&key(token_key), check);
    Ok(TypedToken { token, token_type })
}

pub(super) fn token_type_uri(
    map: &SourceMap,
    key: &str,
    value: &str,
) -> Result<String, ConfigError> {
    if value.contains(':') && !value.chars().any(char::is_whitespace) {
        Ok(value.to_string())
    } else {
        Err(map.error_at(
            key,
            format!("{value:?} is not a token type URI (such as {TOKEN_TYPE_JWT})"),
        ))
    }
}

pub(super) fn non_empty(
    map: &SourceMap,
    key: &str,
    value: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(map.error_at(key, "must not be empty")),
        other => Ok(other.clone()),
    }
}
