//! The token request that every OAuth grant sends: the endpoint (or its discovery), the
//! client and its authentication, what it asks for, and the pins of a discovered
//! authorization server.

use super::client_auth::lower_client_auth;
use super::credential::*;
use super::*;
use crate::config::table::RawTokenRequest;

/// The token request of an OAuth grant; the login endpoints are the refresh_token grant's.
pub(crate) fn lower_token_request(
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
        resource_speaks_mcp: false,
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
        registration: None,
        step_up: StepUpRule::Machine {
            allowed: rc.step_up_scopes.clone().unwrap_or_default(),
        },
        dpop: rc.dpop.unwrap_or(false),
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
