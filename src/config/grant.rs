//! What config knows of grant kinds: nothing of any one kind. Each kind lives in its own
//! file of the `grant` room (its strict table, its lowering, its settings and its
//! behaviour), and the `grant` room's registry is handed to [`Config::lower_with`] as a
//! [`GrantTables`] (through [`Kinds`](super::Kinds)). Config only reads each credential's table as the kind it names, lowers
//! it through [`LowerGrant`], and keeps the result behind [`GrantSettings`].
//!
//! [`Config::lower_with`]: super::Config::lower_with

use std::any::Any;
use std::fmt;

use serde::de::MapAccess;

use super::error::SourceMap;
use super::{ConfigError, RefreshPolicy, SecretRef, SubjectConfig, TokenRequestConfig};

/// The registry of grant kinds a config is read with (`grant::Grants`).
pub trait GrantTables {
    /// Every grant kind, in the order error messages list them.
    const NAMES: &'static [&'static str];

    /// The keys a credential of this grant accepts, for the "belongs to another grant"
    /// hint; `None` for a grant this build does not know.
    fn keys_of(grant: &str) -> Option<&'static [&'static str]>;

    /// Reads a credential's table strictly as the grant it names; `Ok(None)` for a grant
    /// this build does not know (the value is then left unread).
    fn read<'de, A: MapAccess<'de>>(
        grant: &str,
        map: &mut A,
    ) -> Result<Option<Box<dyn LowerGrant>>, A::Error>;
}

/// One grant's table lowered into the model: implemented once per grant, in its file.
pub trait LowerGrant {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError>;
}

/// What a grant's table lowers into.
pub struct LoweredGrant {
    pub grant: GrantConfig,
    pub policy: RefreshPolicy,
    /// Set for a per-subject credential.
    pub subjects: Option<SubjectConfig>,
}

/// A grant kind's validated settings, as the rest of config and the engine see them
/// whatever the kind. The kind's own code downcasts to its settings type.
pub trait GrantSettings: fmt::Debug + Send + Sync + 'static {
    /// The `grant` value: a label of `/status` and part of the binding.
    fn kind(&self) -> &'static str;

    /// The token request of an OAuth grant (none for a static token).
    fn request(&self) -> Option<&TokenRequestConfig> {
        None
    }

    fn request_mut(&mut self) -> Option<&mut TokenRequestConfig> {
        None
    }

    /// Who the token stands for beyond the client, for the binding: an audience of the
    /// grant's own, and the sources of its assertion or subject tokens (empty for the
    /// grants that have none, so their stored sets keep their binding).
    fn identity(&self) -> (Option<&str>, String) {
        (None, String::new())
    }

    /// A service-account key that may name the token endpoint (read by the check step).
    fn service_account_key(&self) -> Option<&SecretRef> {
        None
    }

    fn clone_box(&self) -> Box<dyn GrantSettings>;

    fn as_any(&self) -> &dyn Any;
}

/// A credential's grant settings, whatever its kind.
pub struct GrantConfig(Box<dyn GrantSettings>);

impl GrantConfig {
    pub fn new(settings: impl GrantSettings) -> GrantConfig {
        GrantConfig(Box::new(settings))
    }

    /// The settings of one kind, when the grant is of that kind.
    pub fn settings<T: GrantSettings>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }

    pub fn request(&self) -> Option<&TokenRequestConfig> {
        self.0.request()
    }

    pub fn request_mut(&mut self) -> Option<&mut TokenRequestConfig> {
        self.0.request_mut()
    }

    pub fn identity(&self) -> (Option<&str>, String) {
        self.0.identity()
    }

    pub fn service_account_key(&self) -> Option<&SecretRef> {
        self.0.service_account_key()
    }
}

impl Clone for GrantConfig {
    fn clone(&self) -> Self {
        GrantConfig(self.0.clone_box())
    }
}

impl fmt::Debug for GrantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
