//! `grant = "token_exchange"` (RFC 8693): a subject token from a file, or from each
//! request's header (on behalf of its user), and an optional actor token.

use super::super::credential::*;
use super::super::token_request::lower_token_request;
use super::super::*;
use crate::config::raw::{LowerGrant, LoweredGrant};
use raw::RawTokenExchangeCredential;

impl LowerGrant for RawTokenExchangeCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        lower_token_exchange(map, name, self)
    }
}

/// A `token_exchange` credential (RFC 8693): a subject token from a file, or from each
/// request's header (on behalf of its user), and an optional actor token.
fn lower_token_exchange(
    map: &SourceMap,
    name: &str,
    t: &raw::RawTokenExchangeCredential,
) -> Result<LoweredGrant, ConfigError> {
    // The schedule first, as for every grant: its errors are reported before the others.
    let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
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
    Ok(LoweredGrant {
        grant: GrantConfig::TokenExchange(exchange),
        policy,
        subjects,
    })
}

/// `subject_token = { header = "…" }`: each request carries its user's token, exchanged
/// (and cached under a hash of it) on that user's behalf.
fn lower_on_behalf_of(
    map: &SourceMap,
    name: &str,
    header: &str,
    t: &raw::RawTokenExchangeCredential,
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
