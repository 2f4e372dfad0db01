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

#[async_trait]
pub trait Carrier: Send + Sync {
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
