//! Grants: how a token is obtained. One file per grant kind holds what it sends, what it
//! keeps between attempts, and its [`GrantKind`] impl; [`Grant::new`] has the one line per
//! kind that builds it from its config. A new grant is a file plus that line.

mod client_credentials;
mod jwt_bearer;
mod refresh_token;
mod static_token;
mod token_exchange;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::rotation::{DurableRotation, RotationHelper};
use crate::config::GrantConfig;
pub use crate::oauth::IssuedToken;
use crate::oauth::TokenEndpoint;
pub use crate::oauth::{GrantError, GrantErrorKind};
pub use client_credentials::ClientCredentials;
pub use jwt_bearer::JwtBearer;
pub use refresh_token::RefreshTokenGrant;
pub use static_token::StaticToken;
pub use token_exchange::TokenExchange;

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

    /// Sends rotating exchanges through the rotation helper (a grant that rotates).
    fn make_rotation_durable(&mut self, _rotation: DurableRotation) {}
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
}

impl Grant {
    pub fn new(config: &GrantConfig) -> Result<Grant, GrantBuildError> {
        let kind: Box<dyn GrantKind> = match config {
            GrantConfig::ClientCredentials(req) => {
                Box::new(ClientCredentials::new(TokenEndpoint::new(req)?))
            }
            GrantConfig::RefreshToken { request, seed } => Box::new(RefreshTokenGrant::new(
                Arc::new(TokenEndpoint::new(request)?),
                seed.clone(),
            )),
            GrantConfig::Static { token } => Box::new(StaticToken::new(token.clone())),
            GrantConfig::TokenExchange(x) => Box::new(TokenExchange::new(
                Arc::new(TokenEndpoint::new(&x.request)?),
                x,
            )),
            GrantConfig::JwtBearer(j) => {
                let request = jwt_bearer::token_request(j)?;
                Box::new(JwtBearer::new(TokenEndpoint::new(&request)?, j))
            }
        };
        Ok(Grant(kind))
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

    /// Runs this grant's rotating exchanges through the rotation helper (refresh-token grants
    /// on a file or Redis store; other grants have nothing to lose).
    /// Sends this grant's rotating exchanges (of the record `record`) through the rotation
    /// helper, when the store journals rotations (a file store, Redis) and the sidecar has
    /// a helper.
    pub fn carry_rotations(
        &mut self,
        store: &dyn crate::store::TokenStore,
        helper: Option<&Arc<RotationHelper>>,
        record: &str,
    ) {
        if let (Some(journal), Some(helper)) = (store.helper_journal(record), helper) {
            self.make_rotation_durable(DurableRotation {
                helper: Arc::clone(helper),
                journal,
                credential: record.to_string(),
            });
        }
    }

    pub fn make_rotation_durable(&mut self, rotation: DurableRotation) {
        self.0.make_rotation_durable(rotation);
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
}
