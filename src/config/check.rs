//! The check step: everything the config names outside its own text (environment
//! variables, secret files, CA files, client certificates, private keys, JWT files, the
//! store key, the Redis url) read and parsed, so a mistake is a config error at its line
//! rather than a failure at the first refresh.
//!
//! Lowering is pure (text in, [`Config`] out): it only records what to check, with the
//! place each value was written. `run` and `check` run both steps; `inject`, which runs
//! where the pod's files do not exist, runs lowering alone. Hot reload will run both.

use secrecy::ExposeSecret;

use super::pending::{Material, MaterialCheck, Place};
use super::urls::{check_redis_url, parse_http_url, secure_or_loopback};
use super::{Config, ConfigError};
use crate::material::signing::{load_key, service_account_token_uri, KeyError};
use crate::material::{identity, jwt, load_ca_file, parse_store_key};

impl Config {
    /// Reads and parses everything the config names outside its text; the first failure
    /// is an error at the line that named it.
    pub fn check_material(&self) -> Result<(), ConfigError> {
        for check in &self.material {
            self.check_one(check).map_err(|(at, message)| ConfigError {
                file: self.source.clone(),
                line: at.line,
                column: at.column,
                key: Some(at.key.clone()),
                message,
            })?;
        }
        Ok(())
    }

    fn check_one<'a>(&self, check: &'a MaterialCheck) -> Result<(), (&'a Place, String)> {
        let at = &check.at;
        let fail = |m: &dyn std::fmt::Display| (at, m.to_string());
        match &check.what {
            Material::Secret(secret) => secret.resolve().map(drop).map_err(|e| fail(&e)),
            Material::Jwt(secret) => {
                let value = secret.resolve().map_err(|e| fail(&e))?;
                jwt::peek(value.expose_secret()).map(drop).map_err(|e| {
                    let what = at.key.rsplit('.').next().unwrap_or(&at.key);
                    fail(&format!("{what} ({}) {e}", secret.describe()))
                })
            }
            Material::CaFile(path) => load_ca_file(path).map(drop).map_err(|e| fail(&e)),
            Material::Identity { identity, key_at } => identity::load_identity(identity)
                .map(drop)
                .map_err(|e| match e.file {
                    identity::IdentityFile::Cert => fail(&e),
                    identity::IdentityFile::Key => (key_at, e.to_string()),
                }),
            Material::SigningKey {
                config,
                alg_at,
                scopes_missing,
            } => {
                let loaded = load_key(config).map_err(|e| {
                    let place = match e {
                        KeyError::WrongAlgorithm { .. } => alg_at,
                        _ => at,
                    };
                    (place, format!("{} {e}", config.key.describe()))
                })?;
                if loaded.account.is_some() && *scopes_missing {
                    return Err(fail(
                        &"a service-account key needs `scopes` (they go into the assertion)",
                    ));
                }
                Ok(())
            }
            Material::ServiceAccountEndpoint {
                key,
                required_at,
                insecure_http,
            } => {
                match (service_account_token_uri(key).map_err(|e| fail(&e))?, required_at) {
                    (Some(uri), _) => {
                        let url = parse_http_url(&uri).map_err(|e| fail(&e))?;
                        if !insecure_http && !secure_or_loopback(&url) {
                            return Err(fail(&format!("the key's token_uri {uri:?} is plain http to another host: assertions would cross the network in clear. Use https, or set `insecure_http = true` on this credential")));
                        }
                        Ok(())
                    }
                    (None, Some(grant_at)) => Err((
                        grant_at,
                        "grant \"jwt_bearer\" needs `token_url`, or `issuer` for discovery, or an upstream with `discover = true`".to_string(),
                    )),
                    (None, None) => Ok(()),
                }
            }
            Material::StoreKey { key, help } => key
                .resolve()
                .map_err(|e| fail(&format!("{e}. {help}")))
                .and_then(|text| {
                    parse_store_key(text.expose_secret())
                        .map(drop)
                        .map_err(|e| fail(&format!("{e}. {help}")))
                }),
            Material::WebhookSecret(secret) => {
                let text = secret.resolve().map_err(|e| fail(&e))?;
                crate::material::webhook_secret::parse_webhook_secret(text.expose_secret())
                    .map(drop)
                    .map_err(|e| fail(&e))
            }
            Material::RedisUrl { url, tls_keys } => {
                let text = url.resolve().map_err(|e| fail(&e))?;
                let tls = check_redis_url(text.expose_secret()).map_err(|e| fail(&e))?;
                match tls_keys.first() {
                    Some(key) if !tls => Err((
                        key,
                        "only applies to a TLS connection: the url is redis://, use rediss://"
                            .to_string(),
                    )),
                    _ => Ok(()),
                }
            }
        }
    }
}
