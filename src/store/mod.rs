//! Token persistence. `memory` keeps token sets for the life of the process; `file` keeps
//! them in one encrypted file, replaced atomically (write, fsync, rename, fsync the
//! directory), so a crash leaves either the old set or the new one, never a torn mix.

mod durable;
mod file;
pub mod journal;
pub mod lock;
pub mod sealed;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::StoreConfig;
pub use file::FileStore;

/// What is kept per credential.
#[derive(Clone)]
pub struct StoredToken {
    pub access_token: SecretString,
    pub issued_at: SystemTime,
    /// `None` when the token does not expire.
    pub expires_at: Option<SystemTime>,
    pub scopes: Vec<String>,
    pub refresh_token: Option<SecretString>,
    /// Logged out: no token, no refresh until a login (survives restarts).
    pub logged_out: bool,
    /// SHA-256 of a configured seed refresh token that was already sent.
    pub spent_seed: Option<String>,
}

impl StoredToken {
    /// A record that holds no token: only what must be remembered across restarts.
    pub fn empty() -> StoredToken {
        StoredToken {
            access_token: SecretString::from(String::new()),
            issued_at: UNIX_EPOCH,
            expires_at: Some(UNIX_EPOCH),
            scopes: Vec::new(),
            refresh_token: None,
            logged_out: false,
            spent_seed: None,
        }
    }
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The plaintext form inside an encrypted record.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredTokenRecord {
    access_token: String,
    issued_at_unix_ms: u64,
    expires_at_unix_ms: Option<u64>,
    #[serde(default)]
    scopes: Vec<String>,
    refresh_token: Option<String>,
    #[serde(default)]
    logged_out: bool,
    #[serde(default)]
    spent_seed: Option<String>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl From<&StoredToken> for StoredTokenRecord {
    fn from(t: &StoredToken) -> Self {
        StoredTokenRecord {
            access_token: t.access_token.expose_secret().to_string(),
            issued_at_unix_ms: unix_ms(t.issued_at),
            expires_at_unix_ms: t.expires_at.map(unix_ms),
            scopes: t.scopes.clone(),
            refresh_token: t
                .refresh_token
                .as_ref()
                .map(|r| r.expose_secret().to_string()),
            logged_out: t.logged_out,
            spent_seed: t.spent_seed.clone(),
        }
    }
}

impl From<StoredTokenRecord> for StoredToken {
    fn from(r: StoredTokenRecord) -> Self {
        StoredToken {
            access_token: SecretString::from(r.access_token),
            issued_at: from_unix_ms(r.issued_at_unix_ms),
            expires_at: r.expires_at_unix_ms.map(from_unix_ms),
            scopes: r.scopes,
            refresh_token: r.refresh_token.map(SecretString::from),
            logged_out: r.logged_out,
            spent_seed: r.spent_seed,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    #[error("store {path}: {message}")]
    Io { path: String, message: String },
}

pub enum Store {
    Memory(Mutex<HashMap<String, StoredToken>>),
    File(FileStore),
}

impl Store {
    /// Opens the configured store. A file store is read and every record decrypted now, so
    /// a wrong key or a damaged file stops startup with a clear error (and the file is left
    /// exactly as it was).
    pub fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        match config {
            StoreConfig::Memory => Ok(Store::Memory(Mutex::new(HashMap::new()))),
            StoreConfig::File { path, key } => {
                let text = key.resolve().map_err(StoreError::Invalid)?;
                let key = parse_key(text.expose_secret()).map_err(StoreError::Invalid)?;
                Ok(Store::File(FileStore::open(path, &key)?))
            }
        }
    }

    pub fn is_persistent(&self) -> bool {
        matches!(self, Store::File(_))
    }

    pub fn load(&self, credential: &str) -> Option<StoredToken> {
        match self {
            Store::Memory(m) => m
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(credential)
                .cloned(),
            Store::File(f) => f.load(credential),
        }
    }

    /// Durable when it returns Ok (for the file store: fsynced and renamed into place).
    pub fn save(&self, credential: &str, token: &StoredToken) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(credential.to_string(), token.clone());
                Ok(())
            }
            Store::File(f) => f.save(credential, Some(token)),
        }
    }

    /// Applies a rotation journal left by a helper that outlived the previous run (see
    /// `journal`). A memory store has none.
    pub fn recover_rotation(&self, credential: &str) -> Result<bool, StoreError> {
        match self {
            Store::Memory(_) => Ok(false),
            Store::File(f) => f.recover_rotation(credential),
        }
    }

    pub fn remove(&self, credential: &str) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(credential);
                Ok(())
            }
            Store::File(f) => f.save(credential, None),
        }
    }
}

pub use crate::config::parse_store_key as parse_key;

/// SHA-256 of a secret, hex: how a spent or replaced refresh token is remembered without
/// keeping the token.
pub fn fingerprint(secret: &SecretString) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.expose_secret().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new random key, base64, for `bearerd keygen`.
pub fn generate_key() -> String {
    use base64::Engine;
    let key: [u8; 32] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_both_forms() {
        let k = generate_key();
        let bytes = parse_key(&k).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_key(&hex).unwrap(), bytes);
        assert!(parse_key("c2hvcnQ=").unwrap_err().contains("32 bytes"));
        assert!(parse_key("not a key!").is_err());
    }
}
