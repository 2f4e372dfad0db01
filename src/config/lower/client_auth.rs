//! Which client authentication method a credential uses: `client_auth`, else the first
//! of the registry's methods its keys imply; a key of another method is an error that
//! names the methods it belongs to. The method's own file (in `oauth::client_auth`) lowers
//! what it reads.

use super::credential::{ClientIdRule, SIGNING_KEYS};
use crate::config::client_auth::{ClientAuthKind, Needed};
use crate::config::table::RawTokenRequest;
use crate::config::{ClientAuth, ConfigError, SourceMap};

/// The client of a token request: its `client_id` (required when the grant or the method
/// needs one) and its authentication, lowered by the method's file.
pub(crate) fn lower_client_auth(
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
    let missing = |k: &str| {
        map.error_at(
            &at_method,
            format!("client_auth {:?} needs `{k}`", method.name()),
        )
    };
    let client_id = rc.client_id.clone().filter(|c| !c.trim().is_empty());
    let id_needed = client_id_rule == ClientIdRule::Required || method.names_the_client();
    if client_id.is_none() && (id_needed || rc.client_id.is_some()) {
        return Err(map.error_at(
            &key("client_id"),
            format!("grant {grant:?} needs a non-empty `client_id`"),
        ));
    }
    let method = method.lower(&Needed {
        map,
        name,
        rc,
        missing: &missing,
    })?;
    Ok(ClientAuth { client_id, method })
}

/// The client authentication method: `client_auth`, else the one the credential's keys
/// imply. A key that belongs to another method is an error.
fn client_auth_method(
    map: &SourceMap,
    name: &str,
    rc: &RawTokenRequest,
    grant_signs: bool,
) -> Result<&'static dyn ClientAuthKind, ConfigError> {
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
    let methods = map.client_auths();
    let method = match rc.client_auth.as_deref() {
        Some(m) => methods
            .iter()
            .copied()
            .find(|x| x.name() == m)
            .ok_or_else(|| {
                let all: Vec<&str> = methods.iter().map(|m| m.name()).collect();
                map.error_at(
                    &key("client_auth"),
                    format!("unknown client_auth {m:?} (expected {})", all.join(" | ")),
                )
            })?,
        // Without `client_auth`, the credential's keys say which method it uses: the first
        // in the registry's order that they imply.
        None => methods
            .iter()
            .copied()
            .find(|x| x.implied_by(&present, grant_signs))
            .ok_or_else(|| map.error_at(&key("client_auth"), "no client_auth method fits"))?,
    };
    for (k, is_given) in given {
        let used = method.keys().contains(&k) || (grant_signs && SIGNING_KEYS.contains(&k));
        if is_given && !used {
            let owners: Vec<&str> = methods
                .iter()
                .filter(|m| m.keys().contains(&k))
                .map(|m| m.name())
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
