//! `grant = "refresh_token"`: a delegated token, kept fresh with a refresh token from the
//! config, `bearerd login` or the admin API; with `subject_header` or `subject_from`, one
//! per end user.

use super::super::credential::*;
use super::super::token_request::lower_token_request;
use super::super::*;
use crate::config::raw::{LowerGrant, LoweredGrant};
use raw::RawRefreshTokenCredential;

impl LowerGrant for RawRefreshTokenCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        lower_refresh_token(map, name, self)
    }
}

/// A `refresh_token` credential: the token request, the login endpoints, the seed, and the
/// subjects when it keeps one refresh token per user.
fn lower_refresh_token(
    map: &SourceMap,
    name: &str,
    t: &raw::RawRefreshTokenCredential,
) -> Result<LoweredGrant, ConfigError> {
    // The schedule first, as for every grant: its errors are reported before the others.
    let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
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
    Ok(LoweredGrant {
        grant: GrantConfig::RefreshToken { request, seed },
        policy,
        subjects,
    })
}

/// `subject_header` and its companions (which mean nothing without it).
fn lower_subjects(
    map: &SourceMap,
    name: &str,
    t: &raw::RawRefreshTokenCredential,
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
    raw: &raw::RawSubjectJwt,
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
