//! DPoP at the token endpoint (RFC 9449, `dpop = true`): the credential's key and the nonce
//! its authorization server last asked for. The key is one per credential. The store's
//! record carries it with the tokens bound to it, so a restart or another replica takes the
//! same key (a refresh token bound to a key is worthless without it).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use secrecy::{ExposeSecret, SecretString};

use super::error::{GrantError, GrantInput};
use crate::material::dpop::{htu_of, DpopKey, DpopKeyError};

/// The header a proof travels in.
pub const DPOP: &str = "DPoP";

/// A credential's DPoP key and its authorization server's nonce.
pub struct DpopProver {
    key: ArcSwap<DpopKey>,
    /// RFC 9449 §8: the last `DPoP-Nonce` the server sent, put in every proof until it
    /// sends another.
    nonce: Mutex<Option<String>>,
    /// Set once the store's key (if any) is taken: no token request is sent before, or
    /// its tokens would be bound to a key about to be replaced.
    settled: tokio::sync::watch::Sender<bool>,
}

/// The longest a token request waits for the stored key to be taken.
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl DpopProver {
    /// A prover with a new key (replaced by the stored one, if the store has one).
    pub fn new() -> Result<DpopProver, DpopKeyError> {
        Ok(DpopProver {
            key: ArcSwap::from_pointee(DpopKey::generate()?),
            nonce: Mutex::new(None),
            settled: tokio::sync::watch::channel(false).0,
        })
    }

    /// The store's key is taken (or there was none): token requests may go.
    pub fn settle(&self) {
        self.settled.send_replace(true);
    }

    /// Waits (boundedly) until the store's key is taken.
    pub async fn settled(&self) {
        let mut rx = self.settled.subscribe();
        if tokio::time::timeout(SETTLE_WAIT, rx.wait_for(|s| *s))
            .await
            .is_err()
        {
            tracing::warn!("the stored DPoP key was not read in time; signing with this process's");
        }
    }

    /// The key proofs are signed with now.
    pub fn key(&self) -> Arc<DpopKey> {
        self.key.load_full()
    }

    /// Uses the key a store record carries from now on (the key its tokens are bound to).
    pub fn take_record(&self, record: &SecretString) {
        if record.expose_secret() == self.key.load().to_record().expose_secret() {
            return;
        }
        match DpopKey::from_record(record) {
            Ok(key) => {
                tracing::info!(jkt = key.thumbprint(), "using the DPoP key from the store");
                self.key.store(Arc::new(key));
            }
            Err(e) => tracing::warn!(error = %e, "keeping this process's DPoP key"),
        }
    }

    /// A proof for a POST to `url` (a token endpoint) with `key`, carrying the server's
    /// nonce when it gave one; with that nonce.
    pub fn proof(
        &self,
        key: &DpopKey,
        url: &url::Url,
    ) -> Result<(String, Option<String>), GrantError> {
        let nonce = self.nonce.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let proof = key
            .proof("POST", &htu_of(url), None, nonce.as_deref())
            .map_err(|e| GrantError::unavailable(GrantInput::DpopKey, e))?;
        Ok((proof, nonce))
    }

    /// Keeps the nonce an answer carried, for the next proof.
    pub fn remember_nonce(&self, nonce: Option<&String>) {
        if let Some(nonce) = nonce {
            *self.nonce.lock().unwrap_or_else(|p| p.into_inner()) = Some(nonce.clone());
        }
    }
}
