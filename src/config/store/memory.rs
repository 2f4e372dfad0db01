//! `backend = "memory"` (the default): tokens live as long as the process.

use super::super::error::SourceMap;
use super::super::{ConfigError, StoreConfig};

store_table! {
    /// The memory store takes no keys of its own.
    pub struct RawMemoryStore {}
}

pub(super) fn lower(_map: &SourceMap, _raw: &RawMemoryStore) -> Result<StoreConfig, ConfigError> {
    Ok(StoreConfig::Memory)
}
