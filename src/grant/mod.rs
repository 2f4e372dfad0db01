//! Grants: how a token is obtained. One file per grant kind holds all of it: its strict
//! table (`credential_table!`), its lowering ([`LowerGrant`]), its settings
//! ([`GrantSettings`]) and its behaviour ([`GrantKind`]), tied together by its [`Kind`]
//! impl. A new grant is its file plus one line of [`grants!`].
//!
//! Config knows no grant kind: it is read with this room's registry, [`Grants`] (see
//! `crate::kinds`).

mod client_credentials;
mod jwt_bearer;
mod refresh_token;
mod static_token;
mod token_exchange;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde::de::{DeserializeOwned, MapAccess};

use crate::config::{GrantConfig, GrantSettings, GrantTables, LowerGrant, StrictTable};
use crate::oauth::carrier::Carrier;
pub use crate::oauth::IssuedToken;
use crate::oauth::TokenEndpoint;
pub use crate::oauth::{GrantError, GrantErrorKind};
pub use client_credentials::ClientCredentials;
pub use jwt_bearer::{JwtBearer, JwtBearerConfig};
pub use refresh_token::{RefreshTokenConfig, RefreshTokenGrant};
pub use static_token::{StaticToken, StaticTokenConfig};
pub use token_exchange::{TokenExchange, TokenExchangeConfig, TypedToken};

/// One grant kind, as the registry sees it: the name a config gives it, its strict table
/// (which lowers into its settings), and how its settings become its behaviour.
pub trait Kind {
    const NAME: &'static str;
    type Table: StrictTable + LowerGrant + DeserializeOwned + 'static;
    type Settings: GrantSettings;

    fn build(settings: &Self::Settings) -> Result<Box<dyn GrantKind>, GrantBuildError>;
}

/// The registry: one line per grant kind, in the order error messages list them.
macro_rules! grants {
    ($($kind:ty,)*) => {
        /// Every grant kind this build reads.
        pub struct Grants;

        impl GrantTables for Grants {
            const NAMES: &'static [&'static str] = &[$(<$kind as Kind>::NAME),*];

            fn keys_of(grant: &str) -> Option<&'static [&'static str]> {
                $(if grant == <$kind as Kind>::NAME {
                    return Some(<<$kind as Kind>::Table as StrictTable>::KEYS);
                })*
                None
            }

            fn read<'de, A: MapAccess<'de>>(
                grant: &str,
                map: &mut A,
            ) -> Result<Option<Box<dyn LowerGrant>>, A::Error> {
                $(if grant == <$kind as Kind>::NAME {
                    let table: <$kind as Kind>::Table = map.next_value()?;
                    return Ok(Some(Box::new(table)));
                })*
                Ok(None)
            }
        }

        /// The behaviour of a grant's settings, by the kind that wrote them.
        fn build(config: &GrantConfig) -> Result<Box<dyn GrantKind>, GrantBuildError> {
            $(if let Some(settings) = config.settings::<<$kind as Kind>::Settings>() {
                return <$kind as Kind>::build(settings);
            })*
            Err(GrantBuildError::UnknownKind(config.kind()))
        }
    };
}

grants! {
    client_credentials::ClientCredentialsKind,
    refresh_token::RefreshTokenKind,
    token_exchange::TokenExchangeKind,
    jwt_bearer::JwtBearerKind,
    static_token::StaticKind,
}

/// Writes the [`GrantSettings`] methods every kind's settings write the same way: its
/// name, its token request (the `request` field, or none) and the copy and downcast.
macro_rules! settings_of {
    ($kind:ty, request) => {
        fn request(&self) -> Option<&$crate::config::TokenRequestConfig> {
            Some(&self.request)
        }

        fn request_mut(&mut self) -> Option<&mut $crate::config::TokenRequestConfig> {
            Some(&mut self.request)
        }

        $crate::grant::settings_of!($kind);
    };
    ($kind:ty) => {
        fn kind(&self) -> &'static str {
            <$kind as $crate::grant::Kind>::NAME
        }

        fn clone_box(&self) -> Box<dyn $crate::config::GrantSettings> {
            Box::new(self.clone())
        }

        fn as_any(&self) -> &dyn ::std::any::Any {
            self
        }
    };
}
pub(crate) use settings_of;

/// What one grant attempt gave.
pub enum GrantOutcome {
    Issued(IssuedToken),
    /// The static token file did not change since the last read.
    Unchanged,
}

/// What every grant kind does, implemented once per kind in its file. `obtain` and
/// `endpoint` are each kind's own; the rest default to what most grants do.
#[async_trait::async_trait]
pub trait GrantKind: Send + Sync {
    async fn obtain(&self) -> Result<GrantOutcome, GrantError>;

    /// The token endpoint (a static token has none).
    fn endpoint(&self) -> Option<&TokenEndpoint>;

    /// The endpoint a per-subject credential's subjects share (refresh-token and
    /// on-behalf-of token-exchange grants).
    fn subject_endpoint(&self) -> Option<Arc<TokenEndpoint>> {
        None
    }

    /// Static tokens are watched by polling; OAuth tokens are refreshed on a schedule.
    fn poll_interval(&self) -> Option<Duration> {
        None
    }

    /// Tokens of this grant expire (static ones are used until their source changes).
    fn has_lifetime(&self) -> bool {
        true
    }

    /// The refresh-token grant's state: its refresh tokens, its seed, its rotations.
    fn refresh_grant(&self) -> Option<&RefreshTokenGrant> {
        None
    }

    /// Sends rotating exchanges through a carrier that journals them (a grant that rotates).
    fn make_rotation_durable(&mut self, _carrier: Box<dyn Carrier>) {}
}

/// A credential's grant, whatever its kind.
pub struct Grant(Box<dyn GrantKind>);

/// Why a grant cannot be built from its (checked) config.
#[derive(Debug, thiserror::Error)]
pub enum GrantBuildError {
    #[error(transparent)]
    Transport(#[from] crate::oauth::transport::ClientError),
    #[error(transparent)]
    ServiceAccountEndpoint(#[from] jwt_bearer::ServiceAccountEndpointError),
    /// Settings no kind of the registry wrote (only a grant built outside it).
    #[error("grant {0:?} is not in the registry")]
    UnknownKind(&'static str),
}

impl Grant {
    pub fn new(config: &GrantConfig) -> Result<Grant, GrantBuildError> {
        build(config).map(Grant)
    }

    /// A grant of a kind built elsewhere (an on-behalf-of exchange for one user's token).
    pub fn of(kind: impl GrantKind + 'static) -> Grant {
        Grant(Box::new(kind))
    }

    /// The endpoint a per-subject credential's subjects share.
    pub fn subject_endpoint(&self) -> Option<Arc<TokenEndpoint>> {
        self.0.subject_endpoint()
    }

    /// The grant of one subject: the shared endpoint, and a refresh token of the subject's
    /// own (from the store, a connect flow or a login; never a configured seed).
    pub fn for_subject(endpoint: Arc<TokenEndpoint>) -> Grant {
        Grant::of(RefreshTokenGrant::new(endpoint, None))
    }

    /// Sends this grant's rotating exchanges through a carrier that journals them.
    pub fn make_rotation_durable(&mut self, carrier: Box<dyn Carrier>) {
        self.0.make_rotation_durable(carrier);
    }

    pub fn poll_interval(&self) -> Option<Duration> {
        self.0.poll_interval()
    }

    pub fn has_lifetime(&self) -> bool {
        self.0.has_lifetime()
    }

    /// Tokens of this grant are worth persisting (static ones are re-read from their source).
    pub fn persists(&self) -> bool {
        self.has_lifetime()
    }

    /// Sending this grant's request twice at once can cost the grant (a rotating refresh
    /// token): without the store's lease it is not sent at all. The others may refresh
    /// locally while the store is down.
    pub fn needs_lease(&self) -> bool {
        self.refresh_grant().is_some()
    }

    pub fn forgets_refresh_token_on_failure(&self) -> bool {
        self.needs_lease()
    }

    pub fn endpoint(&self) -> Option<&TokenEndpoint> {
        self.0.endpoint()
    }

    fn refresh_grant(&self) -> Option<&RefreshTokenGrant> {
        self.0.refresh_grant()
    }

    /// The refresh token the grant would use next (none for other grants).
    pub async fn refresh_token(&self) -> Option<SecretString> {
        self.refresh_grant()?.refresh_token().await
    }

    /// Forgets every refresh token, the seed included (logout): only a login brings one back.
    pub async fn forget(&self) {
        if let Some(g) = self.refresh_grant() {
            g.forget().await;
        }
    }

    /// The fingerprint of the seed if it has been sent (to persist it).
    pub async fn spent_seed(&self) -> Option<String> {
        self.refresh_grant()?.spent_seed().await
    }

    /// Remembers a seed spent by an earlier run (from the store).
    pub async fn restore_spent_seed(&self, fp: String) {
        if let Some(g) = self.refresh_grant() {
            g.restore_spent_seed(fp).await;
        }
    }

    /// Continues from a refresh token kept in the store (newer than the configured seed).
    pub async fn restore_refresh_token(&self, rt: SecretString) {
        self.take_stored_refresh_token(Some(rt)).await;
    }

    /// Leaves the store's refresh token unused (it belongs to another issuer), saying why.
    pub async fn refuse_stored_refresh_token(&self, why: String) {
        if let Some(g) = self.refresh_grant() {
            g.refuse_stored(why).await;
        }
    }

    /// Takes the store's refresh token as the current one; `None` (another replica's
    /// provider dropped the grant) forgets the one held here, so it is never sent again.
    pub async fn take_stored_refresh_token(&self, rt: Option<SecretString>) {
        if let Some(g) = self.refresh_grant() {
            g.take_stored(rt).await;
        }
    }

    pub async fn obtain(&self) -> Result<GrantOutcome, GrantError> {
        self.0.obtain().await
    }

    /// The client the sidecar registered, as the store keeps it: every record a save
    /// writes carries it over.
    pub fn registration_record(&self) -> Option<SecretString> {
        Some(self.endpoint()?.registration()?.to_record())
    }

    /// The credential's DPoP key as the store keeps it (`dpop = true`).
    pub fn dpop_key_record(&self) -> Option<SecretString> {
        self.endpoint()?.dpop_record()
    }

    /// The key DPoP proofs are signed with now.
    pub fn dpop_key(&self) -> Option<Arc<crate::material::dpop::DpopKey>> {
        self.endpoint()?.dpop_key()
    }

    /// The stored DPoP key, if any, is taken: token requests may be sent.
    pub fn settle_dpop_key(&self) {
        if let Some(endpoint) = self.endpoint() {
            endpoint.settle_dpop_key();
        }
    }

    /// Uses the DPoP key a stored record carries (its tokens are bound to it). A record
    /// without one leaves the key as it is.
    pub fn take_dpop_key(&self, record: Option<&SecretString>) {
        if let (Some(endpoint), Some(record)) = (self.endpoint(), record) {
            endpoint.take_dpop_record(record);
        }
    }

    /// Uses the registered client a stored record carries (another replica's, or this
    /// process's before a restart). A record without one leaves the client as it is.
    pub fn take_registration(&self, record: Option<&SecretString>) {
        let (Some(endpoint), Some(record)) = (self.endpoint(), record) else {
            return;
        };
        match crate::oauth::registration::ClientRegistration::from_record(record) {
            Some(r) => endpoint.use_registration(r),
            None => tracing::warn!(
                "the stored client registration cannot be read; a login registers again"
            ),
        }
    }
}
