//! A token request carried by someone other than the endpoint's own client: the rotation
//! helper (`token::rotation`), which journals a rotated refresh token before its answer
//! comes back. The endpoint only knows this trait, so speaking OAuth never depends on where
//! tokens are kept.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::transport::RawResponse;
use crate::config::ClientIdentity;

/// Why a carrier gave no response.
#[derive(Debug)]
pub enum CarrierError {
    /// It did not start: nothing was sent, the endpoint may send the request itself.
    NotStarted(String),
    /// The request failed (or may have been sent and its answer lost).
    Failed { timeout: bool, message: String },
    /// The carrier refused to send it (the store could not mark it in flight): nothing was
    /// sent, and it must not be sent without the mark either.
    NotSent(String),
}

/// Why a carrier cannot tell whether a rotation of a refresh token is under way (its store
/// cannot be asked): the token must not be sent.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RotationUnknown(pub Box<dyn std::error::Error + Send + Sync>);

#[async_trait]
pub trait Carrier: Send + Sync {
    /// Before a refresh token is sent: the successor a holder that died journaled for it,
    /// to send instead.
    async fn successor_before_send(
        &self,
        _refresh_token: &SecretString,
    ) -> Result<Option<SecretString>, RotationUnknown> {
        Ok(None)
    }

    /// Sends one token request (whose refresh token has the fingerprint `replaces`) and
    /// returns the provider's response.
    async fn send(
        &self,
        request: &reqwest::Request,
        timeout: Duration,
        ca_file: Option<PathBuf>,
        client_identity: Option<ClientIdentity>,
        replaces: String,
    ) -> Result<RawResponse, CarrierError>;

    /// The refresh token the carrier kept for the exchange that sent the token with this
    /// fingerprint, when its answer never arrived.
    async fn journaled_successor(&self, replaced: &str) -> Option<SecretString>;
}
