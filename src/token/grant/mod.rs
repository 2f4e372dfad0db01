//! Grants: how a token is obtained. One file per grant kind holds what it sends and what it
//! keeps between attempts; this file dispatches with one arm per kind and no defaults, so a
//! new grant is a file plus an arm the compiler asks for everywhere it matters.

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

pub enum Grant {
    ClientCredentials(ClientCredentials),
    RefreshToken(RefreshTokenGrant),
    Static(StaticToken),
    TokenExchange(TokenExchange),
    JwtBearer(JwtBearer),
}

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
        Ok(match config {
            GrantConfig::ClientCredentials(req) => {
                Grant::ClientCredentials(ClientCredentials::new(TokenEndpoint::new(req)?))
            }
            GrantConfig::RefreshToken { request, seed } => Grant::RefreshToken(
                RefreshTokenGrant::new(Arc::new(TokenEndpoint::new(request)?), seed.clone()),
            ),
            GrantConfig::Static { token } => Grant::Static(StaticToken::new(token.clone())),
            GrantConfig::TokenExchange(x) => Grant::TokenExchange(TokenExchange::new(
                Arc::new(TokenEndpoint::new(&x.request)?),
                x,
            )),
            GrantConfig::JwtBearer(j) => {
                let request = jwt_bearer::token_request(j)?;
                Grant::JwtBearer(JwtBearer::new(TokenEndpoint::new(&request)?, j))
            }
        })
    }

    /// The endpoint a per-subject credential's subjects share (refresh-token and
    /// on-behalf-of token-exchange grants).
    pub fn subject_endpoint(&self) -> Option<Arc<TokenEndpoint>> {
        match self {
            Grant::RefreshToken(g) => Some(g.shared_endpoint()),
            Grant::TokenExchange(g) => Some(g.shared_endpoint()),
            Grant::ClientCredentials(_) | Grant::Static(_) | Grant::JwtBearer(_) => None,
        }
    }

    /// The grant of one subject: the shared endpoint, and a refresh token of the subject's
    /// own (from the store, a connect flow or a login; never a configured seed).
    pub fn for_subject(endpoint: Arc<TokenEndpoint>) -> Grant {
        Grant::RefreshToken(RefreshTokenGrant::new(endpoint, None))
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
        match self {
            Grant::RefreshToken(g) => g.make_durable(rotation),
            Grant::ClientCredentials(_)
            | Grant::Static(_)
            | Grant::TokenExchange(_)
            | Grant::JwtBearer(_) => {}
        }
    }

    /// Static tokens are watched by polling; OAuth tokens are refreshed on a schedule.
    pub fn poll_interval(&self) -> Option<Duration> {
        match self {
            Grant::Static(g) => g.poll_interval(),
            Grant::ClientCredentials(_)
            | Grant::RefreshToken(_)
            | Grant::TokenExchange(_)
            | Grant::JwtBearer(_) => None,
        }
    }

    /// Tokens of this grant expire (static ones are used until their source changes).
    pub fn has_lifetime(&self) -> bool {
        match self {
            Grant::Static(_) => false,
            Grant::ClientCredentials(_)
            | Grant::RefreshToken(_)
            | Grant::TokenExchange(_)
            | Grant::JwtBearer(_) => true,
        }
    }

    /// Tokens of this grant are worth persisting (static ones are re-read from their source).
    pub fn persists(&self) -> bool {
        self.has_lifetime()
    }

    /// Sending this grant's request twice at once can cost the grant (a rotating refresh
    /// token): without the store's lease it is not sent at all. The others may refresh
    /// locally while the store is down.
    pub fn needs_lease(&self) -> bool {
        match self {
            Grant::RefreshToken(_) => true,
            Grant::ClientCredentials(_)
            | Grant::Static(_)
            | Grant::TokenExchange(_)
            | Grant::JwtBearer(_) => false,
        }
    }

    pub fn forgets_refresh_token_on_failure(&self) -> bool {
        self.needs_lease()
    }

    pub fn endpoint(&self) -> Option<&TokenEndpoint> {
        match self {
            Grant::ClientCredentials(g) => Some(g.endpoint()),
            Grant::RefreshToken(g) => Some(g.endpoint()),
            Grant::TokenExchange(g) => Some(g.endpoint()),
            Grant::JwtBearer(g) => Some(g.endpoint()),
            Grant::Static(_) => None,
        }
    }

    fn refresh_grant(&self) -> Option<&RefreshTokenGrant> {
        match self {
            Grant::RefreshToken(g) => Some(g),
            Grant::ClientCredentials(_)
            | Grant::Static(_)
            | Grant::TokenExchange(_)
            | Grant::JwtBearer(_) => None,
        }
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
        match self {
            Grant::ClientCredentials(g) => g.obtain().await.map(GrantOutcome::Issued),
            Grant::RefreshToken(g) => g.obtain().await.map(GrantOutcome::Issued),
            Grant::Static(g) => g.obtain().await,
            Grant::TokenExchange(g) => g.obtain().await.map(GrantOutcome::Issued),
            Grant::JwtBearer(g) => g.obtain().await.map(GrantOutcome::Issued),
        }
    }
}
