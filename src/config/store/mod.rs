//! `[store]`: one file per backend, each with its own strict table and its lowering. This
//! file is the registry (one line per backend in [`store_backends!`]) and what every backend
//! shares: the store key. `raw::parse` reads `backend` first, then the table strictly as
//! that backend's, so a key of another backend is refused with its line (and named by
//! `lower::schema_error`).

/// Declares a strict `[store]` table: `backend`, then the backend's own keys, and `KEYS`.
macro_rules! store_table {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* $field:ident : $ty:ty,)* }) => {
        $(#[$m])*
        #[derive(serde::Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            /// Read by the first pass, to choose this table; accepted here.
            #[allow(dead_code)]
            backend: Option<String>,
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $name {
            /// Every key this table accepts.
            pub const KEYS: &'static [&'static str] = &["backend", $(stringify!($field)),*];
        }
    };
}

mod file;
mod memory;
mod redis;

use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer};

use super::error::SourceMap;
use super::pending::Material;
use super::{ConfigError, SecretRef, StoreConfig};
use crate::material::RawSecretRef;

/// The registry: a backend's name, its variant and its table; each module has `lower`.
macro_rules! store_backends {
    ($($name:literal => $variant:ident($module:ident::$raw:ident),)*) => {
        /// A `[store]` table, strict for the backend it names.
        pub enum RawStore {
            $($variant($module::$raw),)*
            /// A backend this build does not know (the table is not read further).
            Unknown(String),
        }

        impl RawStore {
            /// Every backend, in the order error messages list them.
            pub const BACKENDS: &'static [&'static str] = &[$($name),*];

            /// The keys a table of this backend accepts.
            pub fn keys_of(backend: &str) -> Option<&'static [&'static str]> {
                match backend {
                    $($name => Some($module::$raw::KEYS),)*
                    _ => None,
                }
            }

            /// Reads the table as the backend it names (none: memory).
            pub(super) fn read<'de, D: Deserializer<'de>>(
                backend: Option<&str>,
                table: D,
            ) -> Result<RawStore, D::Error> {
                Ok(match backend.unwrap_or("memory") {
                    $($name => RawStore::$variant(Deserialize::deserialize(table)?),)*
                    other => {
                        IgnoredAny::deserialize(table)?;
                        RawStore::Unknown(other.to_string())
                    }
                })
            }
        }

        /// The store the table describes.
        pub(super) fn lower_store(
            map: &SourceMap,
            raw: &RawStore,
        ) -> Result<StoreConfig, ConfigError> {
            match raw {
                $(RawStore::$variant(table) => $module::lower(map, table),)*
                RawStore::Unknown(other) => Err(map.error_at(
                    "store.backend",
                    format!(
                        "unknown store backend {other:?} (expected {})",
                        RawStore::BACKENDS.join(" | ")
                    ),
                )),
            }
        }
    };
}

store_backends! {
    "memory" => Memory(memory::RawMemoryStore),
    "file" => File(file::RawFileStore),
    "redis" => Redis(redis::RawRedisStore),
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore::Memory(Default::default())
    }
}

/// The store key of a backend that seals its values: present, resolvable, 32 bytes.
fn lower_store_key(
    map: &SourceMap,
    key: &Option<RawSecretRef>,
    backend: &str,
) -> Result<SecretRef, ConfigError> {
    let Some(key) = key else {
        return Err(map.error_at(
            "store.backend",
            format!("the {backend} store needs `key = {{ env = \"BEARERD_STORE_KEY\" }}` (or {{ file = \"…\" }}): make one with `bearerd keygen`"),
        ));
    };
    let help = store_key_help(key);
    let key =
        SecretRef::lower(key).map_err(|e| map.error_at("store.key", format!("{e}. {help}")))?;
    map.check_later(
        "store.key",
        Material::StoreKey {
            key: key.clone(),
            help,
        },
    );
    Ok(key)
}

/// What the store key is for and how to make one, said with every store key error.
fn store_key_help(key: &RawSecretRef) -> String {
    let purpose = "The store key (32 random bytes) seals every token the store keeps at rest";
    match key {
        RawSecretRef::Env { env } => format!(
            "{purpose}: make one with `bearerd keygen` and set it, e.g. `export {env}=\"$(bearerd keygen)\"` (in Kubernetes, from a Secret)"
        ),
        RawSecretRef::File { file } => format!(
            "{purpose}: make one with `bearerd keygen > {}` (in Kubernetes, a mounted Secret)",
            file.display()
        ),
        RawSecretRef::Inline(_) | RawSecretRef::Header { .. } => format!(
            "{purpose}: make one with `bearerd keygen`, and keep it out of the config: `key = {{ env = \"BEARERD_STORE_KEY\" }}`"
        ),
    }
}
