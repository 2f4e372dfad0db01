//! Client authentication (`client_auth`): one file per method, holding the keys it reads
//! and its lowering, registered by one line of `client_auth_methods!`. Which method a
//! credential uses is `client_auth`, else the one its keys imply; a key of another method
//! is an error that names the methods it belongs to.

mod basic;
mod client_assertion;
mod none;
mod post;
mod private_key_jwt;
mod tls_client_auth;

use super::credential::*;
use super::*;
use crate::config::table::RawTokenRequest;
use crate::material::RawSecretRef;

/// The registry: a method's `client_auth` value, its variant and its file, which has
/// `KEYS` (the keys it reads), `NAMES_THE_CLIENT` (its `client_id` is then required) and
/// `lower`.
macro_rules! client_auth_methods {
    ($($name:literal => $variant:ident($module:ident),)*) => {
        /// The `client_auth` values, parsed before the method's keys are read.
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        enum Method {
            $($variant,)*
        }

        impl Method {
            /// In the order error messages list them.
            const ALL: &'static [Method] = &[$(Method::$variant),*];

            fn name(self) -> &'static str {
                match self {
                    $(Method::$variant => $name,)*
                }
            }

            /// The client authentication keys this method reads.
            fn keys(self) -> &'static [&'static str] {
                match self {
                    $(Method::$variant => $module::KEYS,)*
                }
            }

            /// Whether the method names the client (its `client_id` is then required).
            fn names_the_client(self) -> bool {
                match self {
                    $(Method::$variant => $module::NAMES_THE_CLIENT,)*
                }
            }

            /// The method with what it needs read and checked.
            fn lower(self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
                match self {
                    $(Method::$variant => $module::lower(needed),)*
                }
            }
        }
    };
}

client_auth_methods! {
    "basic" => Basic(basic),
    "post" => Post(post),
    "private_key_jwt" => PrivateKeyJwt(private_key_jwt),
    "client_assertion" => ClientAssertion(client_assertion),
    "tls_client_auth" => TlsClientAuth(tls_client_auth),
    "none" => None(none),
}

/// What a method's lowering reads: the credential's token-request keys, and how to say
/// that one it needs is missing.
struct Needed<'a> {
    map: &'a SourceMap<'a>,
    name: &'a str,
    rc: &'a RawTokenRequest,
    /// The error for a missing key, at `client_auth` (or `grant` when that is implied).
    missing: &'a dyn Fn(&str) -> ConfigError,
}

impl Needed<'_> {
    /// The key's full path, for errors and the check step.
    fn key(&self, k: &str) -> String {
        format!("credentials.{}.{k}", self.name)
    }

    /// A key the method cannot do without.
    fn required(&self, k: &str, raw: &Option<RawSecretRef>) -> Result<RawSecretRef, ConfigError> {
        raw.clone().ok_or_else(|| (self.missing)(k))
    }

    /// The client secret (basic and post).
    fn client_secret(&self) -> Result<SecretRef, ConfigError> {
        let raw = self.required("client_secret", &self.rc.client_secret)?;
        self.map.lower_secret(&self.key("client_secret"), &raw)
    }
}

/// The client of a token request: its `client_id` (required when the grant or the method
/// needs one) and its authentication, lowered by the method's file.
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
            .iter()
            .copied()
            .find(|x| x.name() == m)
            .ok_or_else(|| {
                let all: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
                map.error_at(
                    &key("client_auth"),
                    format!("unknown client_auth {m:?} (expected {})", all.join(" | ")),
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
