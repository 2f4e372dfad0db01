//! `[store]`: config knows no store backend. Each is a file of the `store` room with its
//! own strict table ([`store_table!`](super::table::store_table)) and its lowering
//! ([`LowerStore`]) into its arm of [`StoreConfig`]; the room's registry is handed to
//! config as a [`StoreTables`]. `raw::parse` reads `backend` first, then the table strictly
//! as that backend's, so a key of another backend is refused with its line (and named by
//! `lower::schema_error`). What every sealing backend shares, the store key, is here.

use serde::de::Deserializer;

use super::error::SourceMap;
use super::pending::Material;
use super::{ConfigError, SecretRef, StoreConfig};
use crate::material::RawSecretRef;

/// The backend a `[store]` table without `backend` names, and the store of a config
/// without one.
pub const DEFAULT_BACKEND: &str = "memory";

/// The registry of store backends a config is read with (`store::Backends`).
pub trait StoreTables {
    /// Every backend, in the order error messages list them.
    const NAMES: &'static [&'static str];

    /// The keys a table of this backend accepts; `None` for one this build does not know.
    fn keys_of(backend: &str) -> Option<&'static [&'static str]>;

    /// Reads the table strictly as the backend it names; `Ok(None)` (the table skipped)
    /// for a backend this build does not know.
    fn read<'de, D: Deserializer<'de>>(
        backend: &str,
        table: D,
    ) -> Result<Option<Box<dyn LowerStore>>, D::Error>;
}

/// One backend's table lowered into its arm of the model: implemented in its file.
pub trait LowerStore {
    fn lower(&self, map: &SourceMap) -> Result<StoreConfig, ConfigError>;
}

/// A `[store]` table, strict for the backend it names.
#[derive(Default)]
pub enum RawStore {
    /// No `[store]` table: the default backend, with nothing to read.
    #[default]
    Absent,
    Table(Box<dyn LowerStore>),
    /// A backend this build does not know (the table is not read further).
    Unknown(String),
}

impl RawStore {
    /// Reads the table as the backend it names (none: the default).
    pub(super) fn read<'de, S: StoreTables, D: Deserializer<'de>>(
        backend: Option<&str>,
        table: D,
    ) -> Result<RawStore, D::Error> {
        let backend = backend.unwrap_or(DEFAULT_BACKEND);
        Ok(match S::read(backend, table)? {
            Some(table) => RawStore::Table(table),
            None => RawStore::Unknown(backend.to_string()),
        })
    }
}

/// The store the table describes.
pub(super) fn lower_store<S: StoreTables>(
    map: &SourceMap,
    raw: &RawStore,
) -> Result<StoreConfig, ConfigError> {
    match raw {
        RawStore::Absent => Ok(StoreConfig::Memory),
        RawStore::Table(table) => table.lower(map),
        RawStore::Unknown(other) => Err(map.error_at(
            "store.backend",
            format!(
                "unknown store backend {other:?} (expected {})",
                S::NAMES.join(" | ")
            ),
        )),
    }
}

/// The store key of a backend that seals its values: present, resolvable, 32 bytes.
pub(crate) fn lower_store_key(
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
