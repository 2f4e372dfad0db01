//! The kinds this build has: the registries of grant kinds (`grant::Grants`) and of store
//! backends (`store::Backends`) that a config is read with. Config sits below both rooms
//! and knows none of their kinds, so the config API with them is written here; callers and
//! tests keep `Config::load`, `parse` and `lower`.

use std::path::Path;

use crate::config::{Config, ConfigError, Kinds};

/// Every grant kind and store backend of this build.
pub struct Builtin;

impl Kinds for Builtin {
    type Grants = crate::grant::Grants;
    type Stores = crate::store::Backends;
    const CLIENT_AUTHS: &'static [&'static dyn crate::config::ClientAuthKind] =
        crate::oauth::client_auth::METHODS;
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with::<Builtin>(path)
    }

    /// Validates config text and everything it names (both steps); `source` names it in
    /// errors.
    pub fn parse(source: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::parse_with::<Builtin>(source, text)
    }

    /// Validates config text alone: reads no file and no environment variable. What the
    /// text names outside itself is left for [`Config::check_material`].
    pub fn lower(source: &Path, text: &str) -> Result<Config, ConfigError> {
        Config::lower_with::<Builtin>(source, text)
    }
}
