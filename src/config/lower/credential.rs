//! One credential table into a [`CredentialConfig`]: an arm per grant kind, each reading its
//! own strict table through the shared key groups (token request, schedule, waiting).

use super::*;

use crate::config::raw::{RawSchedule, RawTokenRequest, RawWait};
use crate::material::RawSecretRef;

pub(super) fn lower_credential(
    map: &SourceMap,
    name: &str,
    rc: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let (grant, policy, subjects) = match rc {
        RawCredential::ClientCredentials(t) => {
            let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
            let request = lower_token_request(
                map,
                name,
                &t.grant,
                &t.token_request(),
                ClientIdRule::Required,
                false,
            )?;
            (GrantConfig::ClientCredentials(request), policy, None)
        }
        RawCredential::RefreshToken(t) => {
            let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
            let (grant, subjects) = lower_refresh_token(map, name, t)?;
            (grant, policy, subjects)
        }
        RawCredential::Static(t) => {
            // A static token has no lifetime of its own: nothing to schedule.
            let policy = lower_policy(map, name, &RawSchedule::default(), &t.wait())?;
            let Some(token) = &t.token else {
                return Err(map.error_at(
                    &key("grant"),
                    format!(
                        "grant {:?} needs `token = {{ file = \"…\" }}` (or {{ env = \"…\" }})",
                        t.grant
                    ),
                ));
            };
            let token = map.lower_secret(&key("token"), token)?;
            (GrantConfig::Static { token }, policy, None)
        }
        RawCredential::TokenExchange(t) => {
            let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
            let (grant, subjects) = lower_token_exchange(map, name, t)?;
            (grant, policy, subjects)
        }
        RawCredential::JwtBearer(t) => {
            let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
            (lower_jwt_bearer(map, name, t)?, policy, None)
        }
        RawCredential::Unknown(other) => {
            return Err(map.error_at(
                &key("grant"),
                format!(
                    "unknown grant {other:?} (expected {})",
                    RawCredential::GRANTS.join(" | ")
                ),
            ))
        }
        RawCredential::Missing => {
            return Err(map.error_at(
                &format!("credentials.{name}"),
                format!(
                    "the credential needs `grant = \"…\"` ({})",
                    RawCredential::GRANTS.join(" | ")
                ),
            ))
        }
    };
    Ok(CredentialConfig {
        name: name.to_string(),
        grant,
        policy,
        subjects,
    })
}

/// A `refresh_token` credential: the token request, the login endpoints, the seed, and the
/// subjects when it keeps one refresh token per user.
fn lower_refresh_token(
    map: &SourceMap,
    name: &str,
    t: &crate::config::raw::RawRefreshTokenCredential,
) -> Result<(GrantConfig, Option<SubjectConfig>), ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let mut request = lower_token_request(
        map,
        name,
        &t.grant,
        &t.token_request(),
        ClientIdRule::Required,
        false,
    )?;
    let optional_url = |field: &str, value: &Option<String>| {
        value
            .as_deref()
            .map(|v| private_url(map, &key(field), v, t.insecure_http))
            .transpose()
    };
    // The device endpoint takes the client's credentials; the authorization endpoint,
    // the user's.
    request.authorization_url = optional_url("authorization_url", &t.authorization_url)?;
    request.device_authorization_url =
        optional_url("device_authorization_url", &t.device_authorization_url)?;
    request.redirect_port = t.redirect_port;
    request.scope_on_refresh = t.scope_on_refresh.unwrap_or(false);
    // Without a seed the credential waits for `bearerd login`.
    let seed = t
        .refresh_token
        .as_ref()
        .map(|r| map.lower_secret(&key("refresh_token"), r))
        .transpose()?;
    let subjects = lower_subjects(map, name, t)?;
    if subjects.is_some() && seed.is_some() {
        return Err(map.error_at(
            &key("refresh_token"),
            "a per-subject credential (subject_header) gets a refresh token per subject (connect flow, login, or the admin API), not one configured seed",
        ));
    }
    Ok((GrantConfig::RefreshToken { request, seed }, subjects))
}

/// A `token_exchange` credential (RFC 8693): a subject token from a file, or from each
/// request's header (on behalf of its user), and an optional actor token.
fn lower_token_exchange(
    map: &SourceMap,
    name: &str,
    t: &crate::config::raw::RawTokenExchangeCredential,
) -> Result<(GrantConfig, Option<SubjectConfig>), ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let mut subjects = None;
    let request = lower_token_request(
        map,
        name,
        &t.grant,
        &t.token_request(),
        ClientIdRule::Optional,
        false,
    )?;
    let Some(subject) = &t.subject_token else {
        return Err(map.error_at(
            &key("grant"),
            "grant \"token_exchange\" needs `subject_token = { file = \"…\" }` (or `{ header = \"…\" }` on behalf of each request's user)",
        ));
    };
    let subject = match subject {
        RawSecretRef::Header { header } => {
            subjects = Some(lower_on_behalf_of(map, name, header, t)?);
            TypedToken {
                // Never sent: each subject's grant takes the request's token.
                token: SecretRef::Value(secrecy::SecretString::from(String::new())),
                token_type: match &t.subject_token_type {
                    Some(ty) => token_type_uri(map, &key("subject_token_type"), ty)?,
                    None => TOKEN_TYPE_JWT.to_string(),
                },
            }
        }
        _ => {
            for (field, set) in [
                ("subject_idle", t.subject_idle.is_some()),
                ("max_subjects_in_memory", t.max_subjects_in_memory.is_some()),
                (
                    "new_subjects_per_second",
                    t.new_subjects_per_second.is_some(),
                ),
                ("opaque_token_lifetime", t.opaque_token_lifetime.is_some()),
            ] {
                if set {
                    return Err(map.error_at(
                        &key(field),
                        format!("{field} belongs to on-behalf-of exchanges: subject_token = {{ header = \"…\" }}"),
                    ));
                }
            }
            lower_typed_token(
                map,
                name,
                ("subject_token", subject),
                ("subject_token_type", &t.subject_token_type),
            )?
        }
    };
    let actor = match (&t.actor_token, &t.actor_token_type) {
        (Some(actor), ty) => Some(lower_typed_token(
            map,
            name,
            ("actor_token", actor),
            ("actor_token_type", ty),
        )?),
        (None, Some(_)) => {
            return Err(map.error_at(
                &key("actor_token_type"),
                "actor_token_type needs `actor_token`",
            ))
        }
        (None, None) => None,
    };
    let requested_token_type = t
        .requested_token_type
        .as_deref()
        .map(|v| token_type_uri(map, &key("requested_token_type"), v))
        .transpose()?;
    let audience = non_empty(map, &key("audience"), &t.audience)?;
    if request.params.contains_key("audience") {
        return Err(map.error_at(
            &key("params"),
            "a token_exchange credential sets `audience` as a key of its own, not in params",
        ));
    }
    let exchange = TokenExchangeConfig {
        request,
        subject,
        actor,
        audience,
        requested_token_type,
    };
    Ok((GrantConfig::TokenExchange(exchange), subjects))
}

/// A `jwt_bearer` credential (RFC 7523): a signing key (PEM or a service-account file),
/// the assertion's issuer and subject.
fn lower_jwt_bearer(
    map: &SourceMap,
    name: &str,
    t: &crate::config::raw::RawJwtBearerCredential,
) -> Result<GrantConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let rc = t.token_request();
    let source = match (&rc.private_key, &t.service_account_key) {
        (Some(_), Some(_)) => {
            return Err(map.error_at(
                &key("service_account_key"),
                "give `private_key` or `service_account_key`, not both",
            ))
        }
        (Some(pem), None) => (
            "private_key",
            KeySource::Pem(key_source(map, &key("private_key"), pem)?),
        ),
        (None, Some(sa)) => {
            if rc.key_id.is_some() {
                return Err(map.error_at(
                    &key("key_id"),
                    "key_id comes from the service-account key (private_key_id)",
                ));
            }
            (
                "service_account_key",
                KeySource::ServiceAccount(key_source(map, &key("service_account_key"), sa)?),
            )
        }
        (None, None) => {
            return Err(map.error_at(
                &key("grant"),
                "grant \"jwt_bearer\" needs `private_key = { file = \"…\" }` or `service_account_key = { file = \"…\" }`",
            ))
        }
    };
    let (source_key, source) = source;
    // Google refuses a service-account assertion without a scope; said once the key has
    // been read (a file that is no service-account key is the first thing to fix).
    let service_account = matches!(source, KeySource::ServiceAccount(_));
    let scopes_missing = service_account && rc.scopes.as_ref().is_none_or(Vec::is_empty);
    let signing = lower_signing(map, name, &rc, (source, source_key), scopes_missing)?;
    let request = lower_token_request(map, name, &t.grant, &rc, ClientIdRule::Optional, true)?;
    // A service-account key names the assertion's issuer (its account) and may name the
    // token endpoint (read when the grant is built).
    let issuer = non_empty(map, &key("assertion_issuer"), &t.assertion_issuer)?;
    if issuer.is_none() && !service_account && request.client.client_id.is_none() {
        return Err(map.error_at(
            &key("grant"),
            "grant \"jwt_bearer\" needs `client_id` or `assertion_issuer` (the assertion's issuer)",
        ));
    }
    let jwt = JwtBearerConfig {
        request,
        signing,
        issuer,
        subject: non_empty(map, &key("assertion_subject"), &t.assertion_subject)?,
    };
    Ok(GrantConfig::JwtBearer(jwt))
}

/// Request headers a subject header may not be: bearerd or HTTP itself gives them meaning.
const RESERVED_SUBJECT_HEADERS: [&str; 12] = [
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

/// `subject_header` and its companions (which mean nothing without it).
fn lower_subjects(
    map: &SourceMap,
    name: &str,
    t: &crate::config::raw::RawRefreshTokenCredential,
) -> Result<Option<SubjectConfig>, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    if let (Some(_), Some(_)) = (&t.subject_header, &t.subject_from) {
        return Err(map.error_at(
            &key("subject_from"),
            "subject_header and subject_from both name the subject: keep one",
        ));
    }
    let from_jwt = t
        .subject_from
        .as_ref()
        .map(|f| lower_subject_jwt(map, name, &f.jwt, t.insecure_http.unwrap_or(false)))
        .transpose()?
        .map(|(header, mut jwt)| {
            jwt.ca_file = t.ca_file.clone();
            (header, jwt)
        });
    let header = match (&t.subject_header, &from_jwt) {
        (Some(header), _) => Some(subject_header_name(map, &key("subject_header"), header)?),
        (None, Some((header, _))) => Some(header.clone()),
        (None, None) => None,
    };
    let Some(parsed) = header else {
        for (field, set) in [
            ("redirect_uri", t.redirect_uri.is_some()),
            ("subject_idle", t.subject_idle.is_some()),
            ("max_subjects_in_memory", t.max_subjects_in_memory.is_some()),
            ("connect_lifetime", t.connect_lifetime.is_some()),
        ] {
            if set {
                return Err(map.error_at(
                    &key(field),
                    format!("{field} belongs to per-subject credentials: set subject_header too"),
                ));
            }
        }
        return Ok(None);
    };
    let redirect_uri = t
        .redirect_uri
        .as_deref()
        .map(|v| private_url(map, &key("redirect_uri"), v, t.insecure_http))
        .transpose()?;
    let (idle, max_in_memory) =
        subjects_in_memory(map, name, &t.subject_idle, t.max_subjects_in_memory)?;
    let connect_lifetime = bounded_duration(
        map,
        &key("connect_lifetime"),
        &t.connect_lifetime,
        SubjectConfig::DEFAULT_CONNECT_LIFETIME,
        Duration::from_secs(1),
    )?;
    if connect_lifetime > Duration::from_secs(3600) {
        return Err(map.error_at(
            &key("connect_lifetime"),
            "connect_lifetime may be at most 1h: a state is a key to the subject's account",
        ));
    }
    Ok(Some(SubjectConfig {
        header: parsed,
        kind: SubjectKind::Delegated { redirect_uri },
        idle,
        max_in_memory,
        connect_lifetime,
        from_jwt: from_jwt.map(|(_, jwt)| jwt),
    }))
}

/// `subject_from = { jwt = … }`: the header that carries the user's JWT (`authorization`
/// by default, which bearerd replaces before forwarding) and what the JWT must say.
fn lower_subject_jwt(
    map: &SourceMap,
    name: &str,
    raw: &crate::config::raw::RawSubjectJwt,
    insecure_http: bool,
) -> Result<(http::HeaderName, JwtSubjectConfig), ConfigError> {
    let key = |k: &str| format!("credentials.{name}.subject_from.jwt.{k}");
    let header = match raw.header.as_deref().map(str::trim) {
        None => http::header::AUTHORIZATION,
        Some(h) if h.eq_ignore_ascii_case("authorization") => http::header::AUTHORIZATION,
        Some(h) => subject_header_name(map, &key("header"), h)?,
    };
    let insecure = Some(insecure_http);
    // The issuer is compared with `iss` as written, and its metadata is fetched from it.
    private_url(map, &key("issuer"), &raw.issuer, insecure)?;
    let jwks_url = raw
        .jwks_url
        .as_deref()
        .map(|v| private_url(map, &key("jwks_url"), v, insecure))
        .transpose()?;
    let audience = raw.audience.trim();
    if audience.is_empty() {
        return Err(map.error_at(&key("audience"), "audience may not be empty"));
    }
    let claim = raw.claim.as_deref().unwrap_or("sub").trim();
    if claim.is_empty() {
        return Err(map.error_at(&key("claim"), "claim may not be empty"));
    }
    Ok((
        header,
        JwtSubjectConfig {
            issuer: raw.issuer.clone(),
            audience: audience.to_string(),
            claim: claim.to_string(),
            jwks_url,
            insecure_http,
            ca_file: None,
        },
    ))
}

/// `subject_idle` and `max_subjects_in_memory`: how subjects leave memory.
fn subjects_in_memory(
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
fn subject_header_name(
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

/// `subject_token = { header = "…" }`: each request carries its user's token, exchanged
/// (and cached under a hash of it) on that user's behalf.
fn lower_on_behalf_of(
    map: &SourceMap,
    name: &str,
    header: &str,
    t: &crate::config::raw::RawTokenExchangeCredential,
) -> Result<SubjectConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    // An `actor_token` (the agent's own token, from a file) goes with every user's
    // exchange, lowered with the other grant keys.
    let header = subject_header_name(map, &key("subject_token"), header)?;
    let (idle, max_in_memory) =
        subjects_in_memory(map, name, &t.subject_idle, t.max_subjects_in_memory)?;
    let new_per_second = t
        .new_subjects_per_second
        .unwrap_or(SubjectConfig::DEFAULT_NEW_PER_SECOND);
    if new_per_second == 0 {
        return Err(map.error_at(
            &key("new_subjects_per_second"),
            "new_subjects_per_second must be at least 1",
        ));
    }
    let opaque_lifetime = bounded_duration(
        map,
        &key("opaque_token_lifetime"),
        &t.opaque_token_lifetime,
        SubjectConfig::DEFAULT_OPAQUE_LIFETIME,
        Duration::from_secs(1),
    )?;
    Ok(SubjectConfig {
        header,
        kind: SubjectKind::OnBehalfOf {
            new_per_second,
            opaque_lifetime,
        },
        idle,
        max_in_memory,
        connect_lifetime: SubjectConfig::DEFAULT_CONNECT_LIFETIME,
        from_jwt: None,
    })
}

fn lower_policy(
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
fn lower_token_request(
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
fn lower_pins(
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
enum ClientIdRule {
    Required,
    /// jwt_bearer and token_exchange: the assertion or subject token says who is asking.
    Optional,
}

/// The `client_auth` values, parsed before the method's keys are read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
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
const SIGNING_KEYS: [&str; 4] = ["private_key", "key_id", "signing_alg", "assertion_audience"];

/// A file, required for what the platform rewrites (a projected token, a certificate):
/// a value given inline or in the environment could never be renewed.
fn file_only(
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
fn key_source(map: &SourceMap, key: &str, raw: &RawSecretRef) -> Result<SecretRef, ConfigError> {
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

fn lower_client_auth(
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
fn client_auth_method(
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
fn lower_client_auth_method(
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
fn lower_signing(
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
fn lower_typed_token(
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

fn token_type_uri(map: &SourceMap, key: &str, value: &str) -> Result<String, ConfigError> {
    if value.contains(':') && !value.chars().any(char::is_whitespace) {
        Ok(value.to_string())
    } else {
        Err(map.error_at(
            key,
            format!("{value:?} is not a token type URI (such as {TOKEN_TYPE_JWT})"),
        ))
    }
}

fn non_empty(
    map: &SourceMap,
    key: &str,
    value: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(map.error_at(key, "must not be empty")),
        other => Ok(other.clone()),
    }
}
