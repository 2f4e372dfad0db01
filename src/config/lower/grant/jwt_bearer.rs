//! `grant = "jwt_bearer"` (RFC 7523 §2.1): an assertion signed with `private_key` or a
//! Google service-account key.

use super::super::credential::*;
use super::super::token_request::lower_token_request;
use super::super::*;
use crate::config::raw::{LowerGrant, LoweredGrant};
use raw::RawJwtBearerCredential;

impl LowerGrant for RawJwtBearerCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let policy = lower_policy(map, name, &self.schedule(), &self.wait())?;
        Ok(LoweredGrant {
            grant: lower_jwt_bearer(map, name, self)?,
            policy,
            subjects: None,
        })
    }
}

/// A `jwt_bearer` credential (RFC 7523): a signing key (PEM or a service-account file),
/// the assertion's issuer and subject.
fn lower_jwt_bearer(
    map: &SourceMap,
    name: &str,
    t: &raw::RawJwtBearerCredential,
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
