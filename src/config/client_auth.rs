//! Client authentication (`client_auth`), as config sees it: nothing of any one method.
//! Each method is a file of `oauth::client_auth` holding the keys it reads, its lowering,
//! its settings and what it puts in a request, registered by one line there; the registry
//! reaches lowering as [`Kinds::CLIENT_AUTHS`](super::Kinds::CLIENT_AUTHS) through the
//! source map, and `lower/client_auth.rs` picks the method and lowers it.

use std::any::Any;
use std::fmt;

use super::error::SourceMap;
use super::table::RawTokenRequest;
use super::{ClientIdentity, ConfigError, SecretRef};
use crate::material::RawSecretRef;

/// One client authentication method, as lowering sees it (an entry of the registry).
pub trait ClientAuthKind: Sync {
    /// The `client_auth` value.
    fn name(&self) -> &'static str;

    /// The client authentication keys this method reads.
    fn keys(&self) -> &'static [&'static str];

    /// Whether the method names the client (its `client_id` is then required).
    fn names_the_client(&self) -> bool;

    /// Without `client_auth`: whether the keys given (`present`) say this is the method.
    fn implied_by(&self, present: &dyn Fn(&str) -> bool, grant_signs: bool) -> bool;

    /// The method with what it needs read and checked.
    fn lower(&self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError>;
}

/// A method's validated settings. The method's own code downcasts to its settings type.
pub trait ClientAuthSettings: fmt::Debug + Send + Sync + 'static {
    /// The `client_auth` value, for `bearerd status` and `/status`.
    fn name(&self) -> &'static str;

    /// The client certificate the transport presents (mutual TLS).
    fn identity(&self) -> Option<&ClientIdentity> {
        None
    }

    fn clone_box(&self) -> Box<dyn ClientAuthSettings>;

    fn as_any(&self) -> &dyn Any;
}

/// How the client proves who it is to the token endpoint (DESIGN §3): one method's
/// settings, each holding exactly what it needs.
pub struct ClientAuthMethod(Box<dyn ClientAuthSettings>);

impl ClientAuthMethod {
    pub fn new(settings: impl ClientAuthSettings) -> ClientAuthMethod {
        ClientAuthMethod(Box::new(settings))
    }

    /// The settings of one method, when the credential uses that method.
    pub fn settings<T: ClientAuthSettings>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    pub fn name(&self) -> &'static str {
        self.0.name()
    }

    pub fn identity(&self) -> Option<&ClientIdentity> {
        self.0.identity()
    }
}

impl Clone for ClientAuthMethod {
    fn clone(&self) -> Self {
        ClientAuthMethod(self.0.clone_box())
    }
}

impl fmt::Debug for ClientAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a method's lowering reads: the credential's token-request keys, and how to say
/// that one it needs is missing.
pub struct Needed<'a> {
    pub map: &'a SourceMap<'a>,
    pub name: &'a str,
    pub rc: &'a RawTokenRequest,
    /// The error for a missing key, at `client_auth` (or `grant` when that is implied).
    pub(crate) missing: &'a dyn Fn(&str) -> ConfigError,
}

impl Needed<'_> {
    /// The key's full path, for errors and the check step.
    pub fn key(&self, k: &str) -> String {
        format!("credentials.{}.{k}", self.name)
    }

    /// A key the method cannot do without.
    pub fn required(
        &self,
        k: &str,
        raw: &Option<RawSecretRef>,
    ) -> Result<RawSecretRef, ConfigError> {
        raw.clone().ok_or_else(|| (self.missing)(k))
    }

    /// The client secret (basic and post).
    pub fn client_secret(&self) -> Result<SecretRef, ConfigError> {
        let raw = self.required("client_secret", &self.rc.client_secret)?;
        self.map.lower_secret(&self.key("client_secret"), &raw)
    }
}
