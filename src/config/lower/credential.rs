//! One credential table into a [`CredentialConfig`]: an arm per grant kind, each reading its
//! own strict table through the shared key groups (token request, schedule, waiting).

use super::*;
use crate::config::raw::{RawSchedule, RawTokenRequest, RawWait};

pub(super) fn lower_credential(
    map: &SourceMap,
    name: &str,
    rc: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let (grant, policy) = match rc {
        RawCredential::ClientCredentials(t) => {
            let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
            let request = lower_token_request(map, name, &t.grant, &t.token_request())?;
            (GrantConfig::ClientCredentials(request), policy)
        }
        RawCredential::RefreshToken(t) => {
            let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
            let mut request = lower_token_request(map, name, &t.grant, &t.token_request())?;
            let optional_url = |field: &str, value: &Option<String>| {
                value
                    .as_deref()
                    .map(|v| http_url(map, &key(field), v))
                    .transpose()
            };
            request.authorization_url = optional_url("authorization_url", &t.authorization_url)?;
            request.device_authorization_url =
                optional_url("device_authorization_url", &t.device_authorization_url)?;
            request.redirect_port = t.redirect_port;
            request.scope_on_refresh = t.scope_on_refresh.unwrap_or(false);
            // Without a seed the credential waits for `bearerd login`.
            let seed = t
                .refresh_token
                .as_ref()
                .map(|r| lower_secret(map, &key("refresh_token"), r))
                .transpose()?;
            (GrantConfig::RefreshToken { request, seed }, policy)
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
            let token = lower_secret(map, &key("token"), token)?;
            (GrantConfig::Static { token }, policy)
        }
        RawCredential::Unknown(g) if matches!(g.as_str(), "token_exchange" | "jwt_bearer") => {
            return Err(map.error_at(
                &key("grant"),
                format!("grant {g:?} is not available in this build"),
            ))
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
    let Some(client_id) = rc.client_id.clone().filter(|c| !c.trim().is_empty()) else {
        return Err(map.error_at(
            &key("client_id"),
            format!("grant {grant:?} needs a non-empty `client_id`"),
        ));
    };
    let client_secret = rc
        .client_secret
        .as_ref()
        .map(|r| lower_secret(map, &key("client_secret"), r))
        .transpose()?;
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
    ] {
        if params.contains_key(reserved) {
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
        authorization_url: None,
        device_authorization_url: None,
        issuer,
        protected_resource: None,
        redirect_port: None,
        scope_on_refresh: false,
        client: ClientAuth {
            client_id,
            client_secret,
            method,
        },
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
    })
}
