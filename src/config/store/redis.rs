//! `backend = "redis"`: shared by the replicas of an app; sealed values, leases and
//! change notifications (see `store::redis`).

use std::path::PathBuf;

use super::super::error::SourceMap;
use super::super::pending::Material;
use super::super::{ClientIdentity, ConfigError, RedisTls, StoreConfig};
use super::lower_store_key;
use crate::material::RawSecretRef;

store_table! {
    pub struct RawRedisStore {
        key: Option<RawSecretRef>,
        /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS); it may hold a password.
        url: Option<RawSecretRef>,
        /// The key namespace, so several apps can share one Redis.
        prefix: Option<String>,
        /// rediss: the CA certificates (PEM) that sign the Redis server's certificate,
        /// instead of the system roots.
        ca_file: Option<PathBuf>,
        /// rediss: a client certificate (chain) and its key, PEM files, for a Redis that
        /// asks for one (`tls-auth-clients yes`).
        client_cert: Option<RawSecretRef>,
        client_key: Option<RawSecretRef>,
    }
}

pub(super) fn lower(map: &SourceMap, raw: &RawRedisStore) -> Result<StoreConfig, ConfigError> {
    let Some(url) = &raw.url else {
        return Err(map.error_at(
            "store.backend",
            "the redis store needs `url = { env = \"BEARERD_REDIS_URL\" }` (redis://[user:pass@]host:port/db, or rediss:// for TLS)",
        ));
    };
    let url = map.lower_secret("store.url", url)?;
    let tls_keys = [
        ("ca_file", raw.ca_file.is_some()),
        ("client_cert", raw.client_cert.is_some()),
        ("client_key", raw.client_key.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| map.place(&format!("store.{key}")))
    .collect();
    // Whether the url asks for TLS is known once it is read: the check step.
    map.check_later(
        "store.url",
        Material::RedisUrl {
            url: url.clone(),
            tls_keys,
        },
    );
    let tls = lower_tls(map, raw)?;
    let key = lower_store_key(map, &raw.key, "redis")?;
    let prefix = raw.prefix.clone().unwrap_or_else(|| "bearerd".to_string());
    if prefix.is_empty()
        || prefix.len() > 64
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(map.error_at(
            "store.prefix",
            format!("prefix {prefix:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
        ));
    }
    Ok(StoreConfig::Redis {
        url,
        key,
        prefix,
        tls,
    })
}

/// The TLS keys: the certificate and its key together, each file read and parsed by the
/// check step rather than at the first refresh.
fn lower_tls(map: &SourceMap, raw: &RawRedisStore) -> Result<RedisTls, ConfigError> {
    if let Some(ca) = &raw.ca_file {
        map.check_later("store.ca_file", Material::CaFile(ca.clone()));
    }
    let identity = match (&raw.client_cert, &raw.client_key) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(map.error_at(
                "store.client_cert",
                "needs `client_key = { file = \"…\" }`, the certificate's private key",
            ))
        }
        (None, Some(_)) => {
            return Err(map.error_at(
                "store.client_key",
                "needs `client_cert = { file = \"…\" }`, the certificate it belongs to",
            ))
        }
        (Some(cert), Some(key)) => {
            let file = |key: &str, raw: &RawSecretRef| match raw {
                RawSecretRef::File { file } => Ok(file.clone()),
                _ => Err(map.error_at(
                    &format!("store.{key}"),
                    format!("`{key}` must be a PEM file: {key} = {{ file = \"…\" }}"),
                )),
            };
            let identity = ClientIdentity {
                cert: file("client_cert", cert)?,
                key: file("client_key", key)?,
            };
            map.check_identity_later("store", &identity);
            Some(identity)
        }
    };
    Ok(RedisTls {
        ca_file: raw.ca_file.clone(),
        identity,
    })
}
