//! One credential table into a [`CredentialConfig`]: an arm per grant kind, each reading its
//! own strict table through the shared key groups (token request, schedule, waiting).

use super::*;

use crate::config::grant::{GrantTables, LoweredGrant};
use crate::config::table::{RawSchedule, RawTokenRequest, RawWait};
use crate::material::RawSecretRef;

pub(crate) fn lower_credential<G: GrantTables>(
    map: &SourceMap,
    name: &str,
    rc: &RawCredential,
) -> Result<CredentialConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let table = match rc {
        RawCredential::Table(table) => table,
        RawCredential::Unknown(other) => {
            return Err(map.error_at(
                &key("grant"),
                format!(
                    "unknown grant {other:?} (expected {})",
                    G::NAMES.join(" | ")
                ),
            ))
        }
        RawCredential::Missing => {
            return Err(map.error_at(
                &format!("credentials.{name}"),
                format!(
                    "the credential needs `grant = \"…\"` ({})",
                    G::NAMES.join(" | ")
                ),
            ))
        }
    };
    let LoweredGrant {
        grant,
        policy,
        subjects,
    } = table.lower(map, name)?;
    let steps_up = grant.request().is_some_and(|r| {
        matches!(&r.step_up, crate::config::StepUpRule::Machine { allowed } if !allowed.is_empty())
    });
    if steps_up && subjects.is_some() {
        // The subjects share one token endpoint: one user's step-up would be every user's.
        return Err(map.error_at(
            &format!("credentials.{name}.step_up_scopes"),
            "step_up_scopes is for a credential with one token; a per-subject credential's scopes are its users'",
        ));
    }
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
pub(crate) fn subjects_in_memory(
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
pub(crate) fn subject_header_name(
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

pub(crate) fn lower_policy(
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

/// Whether a grant needs `client_id` whatever its client authentication.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientIdRule {
    Required,
    /// jwt_bearer and token_exchange: the assertion or subject token says who is asking.
    Optional,
}

/// Keys a jwt_bearer credential uses for its own assertion.
pub(crate) const SIGNING_KEYS: [&str; 4] =
    ["private_key", "key_id", "signing_alg", "assertion_audience"];

/// A file, required for what the platform rewrites (a projected token, a certificate):
/// a value given inline or in the environment could never be renewed.
pub(crate) fn file_only(
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
pub(crate) fn key_source(
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

/// A signing key and its header: the check step reads the key, so a wrong kind of key, an
/// unreadable file or an algorithm the key cannot sign with is a config error.
pub(crate) fn lower_signing(
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

pub(crate) fn non_empty(
    map: &SourceMap,
    key: &str,
    value: &Option<String>,
) -> Result<Option<String>, ConfigError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(map.error_at(key, "must not be empty")),
        other => Ok(other.clone()),
    }
}
