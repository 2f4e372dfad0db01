//! `backend = "file"`: an encrypted file (one sealed row per record) that survives restarts.

use std::path::PathBuf;

use super::super::error::SourceMap;
use super::super::{ConfigError, StoreConfig};
use super::lower_store_key;
use crate::material::RawSecretRef;

store_table! {
    pub struct RawFileStore {
        path: Option<PathBuf>,
        key: Option<RawSecretRef>,
    }
}

pub(super) fn lower(map: &SourceMap, raw: &RawFileStore) -> Result<StoreConfig, ConfigError> {
    let Some(path) = raw.path.clone() else {
        return Err(map.error_at(
            "store.backend",
            "the file store needs `path = \"/var/lib/bearerd/tokens.store\"`",
        ));
    };
    let key = lower_store_key(map, &raw.key, "file")?;
    Ok(StoreConfig::File { path, key })
}
