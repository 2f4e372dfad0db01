//! Token persistence behind one trait, [`TokenStore`]: load, save with compare-and-set on
//! the generation, a refresh lease, remove, and a watch for changes. `memory` keeps token
//! sets for the life of the process; `file` keeps them in an embedded transactional database
//! (redb), one sealed row per record, each save one durable transaction, so a crash leaves
//! either the old set or the new one, never a torn mix, and a write touches one record only;
//! `redis` is shared by replicas. The refresher never knows which one it talks to.

mod codec;
mod coord;
mod durable;
mod file;
pub mod journal;
pub mod lock;
mod memory;
pub mod metered;
mod record_key;
mod redis;
mod redis_client;
mod redis_journal;
pub mod sealed;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{LowerStore, StoreConfig, StoreTables, StrictTable};
pub use coord::LocalCoordination;
pub use file::FileStore;
pub use memory::MemoryStore;
pub use record_key::{RecordKey, SubjectNames};
pub use redis::RedisStore;
pub use redis_client::{MasterCredentials, RedisFailure, RedisTarget};
pub use redis_journal::{
    HelperJournalConnection, JournalError, RedisJournalReader, RedisJournalTarget,
};

/// The store backends; also the `backend` of `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreBackend {
    Memory,
    File,
    Redis,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Memory => "memory",
            StoreBackend::File => "file",
            StoreBackend::Redis => "redis",
        }
    }
}

/// The `store` of `/status`.
#[derive(Debug, Clone)]
pub struct StoreHealth {
    pub backend: StoreBackend,
    /// Whether the last operation reached the store.
    pub up: bool,
    pub last_error: Option<String>,
}

/// A credential's token set as the store holds it, with the generation it was saved under:
/// every save makes the next generation, so a newer set is recognised by its number.
#[derive(Debug, Clone)]
pub struct StoredSet {
    pub token: StoredToken,
    pub generation: u64,
}

/// What a compare-and-set save did.
#[derive(Debug)]
pub enum SaveOutcome {
    /// Written (durably, for a persistent store) as this generation.
    Saved { generation: u64 },
    /// Another writer got there first: this is what the store holds instead.
    Conflict { current: Option<Box<StoredSet>> },
}

/// The right to refresh one credential, for a while. One holder at a time per credential.
#[derive(Debug, Clone)]
pub struct Lease {
    pub credential: String,
    /// Unique to this lease (the process's owner id and a nonce): only this holder renews
    /// or releases it, never a later one.
    pub holder: String,
}

/// How long a shared store that may have lost writes (it restarted, came back empty, or
/// failed over to a replica) gives no lease to a credential whose refresh token must never
/// be sent twice. It counts from the first replica that notices (its health check, a second
/// apart, or a lease). Meanwhile every live replica notices too (within about two health
/// checks) and writes back the set it holds, and a holder whose token request was in flight
/// takes its lost lease back at its next renewal (every 2 s): 6 s covers both with room.
pub const STORE_SETTLE: Duration = Duration::from_secs(6);

/// What asking for the refresh lease got.
#[derive(Debug)]
pub enum LeaseAnswer {
    Taken(Lease),
    /// Another holder has it.
    Held,
    /// A shared store that may have lost writes since the credential's last lease (it
    /// restarted, came back empty or failed over) gives no lease for `left` yet: the replicas
    /// write back the sets they hold first, so none sends a refresh token that a newer set,
    /// lost by the store, has already spent.
    Settling {
        left: Duration,
    },
}

impl Lease {
    pub(crate) fn new(credential: &str, owner: &str) -> Lease {
        Lease {
            credential: credential.to_string(),
            holder: format!("{owner}-{:016x}", rand::random::<u64>()),
        }
    }
}

/// Where a rotation helper journals what it rotated, for one record.
pub enum HelperJournal {
    /// Beside the file store (its path and key), under the store's lock.
    File {
        store: PathBuf,
        key: SecretBox<[u8; 32]>,
    },
    /// In Redis: what the helper needs to mark its exchange in flight and journal the
    /// answer, and the reader with which the sidecar looks before it sends.
    Redis {
        target: RedisJournalTarget,
        reader: Arc<RedisJournalReader>,
    },
}

/// Connect flows shared between replicas: kept by the replica that starts one, taken once
/// by whichever the callback reaches. Only a store replicas share has one.
#[async_trait]
pub trait FlowStore: Send + Sync {
    /// Keeps a connect flow (sealed by the store) under `id` for `ttl`.
    async fn put_connect(&self, id: &str, flow: &[u8], ttl: Duration) -> Result<(), StoreError>;

    /// Takes a connect flow: the first replica to ask gets it, every later one `None`.
    async fn take_connect(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

#[async_trait]
pub trait TokenStore: Send + Sync {
    fn backend(&self) -> StoreBackend;

    async fn load(&self, credential: &str) -> Result<Option<StoredSet>, StoreError>;

    /// Saves `token` as the next generation, if the store still holds generation `expected`
    /// (`None`: no record). When it returns `Saved`, the set is durable.
    async fn save(
        &self,
        credential: &str,
        token: &StoredToken,
        expected: Option<u64>,
    ) -> Result<SaveOutcome, StoreError>;

    async fn remove(&self, credential: &str) -> Result<(), StoreError>;

    /// Takes the credential's refresh lease for `hold_for`. With `settle_first`, a shared
    /// store that may have lost writes since its last lease (a server it has not seen this
    /// credential's lease on) first settles for [`STORE_SETTLE`]: no lease for anyone
    /// meanwhile. Stores inside this process never lose writes and never settle: their
    /// leases are among this process's refreshers (one sidecar per file store).
    async fn lease(
        &self,
        credential: &str,
        hold_for: Duration,
        _settle_first: bool,
    ) -> Result<LeaseAnswer, StoreError> {
        Ok(self.coordination().lease(credential, hold_for))
    }

    /// The leases and change notifications among this process's refreshers.
    fn coordination(&self) -> &LocalCoordination;

    /// Writes back a set the store lost (a shared store that restarted empty): only when
    /// the store has no record, or an older generation than `set`'s, so an older set never
    /// replaces a newer one. A store inside this process never loses records.
    async fn refill(&self, _credential: &str, _set: &StoredSet) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Extends a lease this holder still has: `false` when it ran out and is gone.
    async fn renew(&self, lease: &Lease, hold_for: Duration) -> Result<bool, StoreError> {
        Ok(self.coordination().renew(lease, hold_for))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.coordination().release(lease);
        Ok(())
    }

    /// Record keys that start with `prefix`, in order, those after `after` only, at most
    /// `limit` (the subjects of a per-subject credential, a page at a time). A store that
    /// cannot list answers none.
    async fn list(
        &self,
        _prefix: &str,
        _after: Option<&str>,
        _limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Applies the rotation journals that helpers of the previous run left, for these
    /// credentials' records and every stored subject's, each under `policy` (the engine's
    /// rule, see `token::rotation::policy`). Returns the records it changed. Only a store
    /// whose journals are files beside it keeps any.
    fn recover_journals(
        &self,
        _credentials: &[&str],
        _policy: JournalPolicy,
    ) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// What `list` orders keys by: their text, unless the store orders otherwise (Redis lists
    /// a credential's subjects in the order of their hashes). Whoever merges a page with
    /// keys from elsewhere sorts by this.
    fn list_order(&self, key: &str) -> String {
        key.to_string()
    }

    /// Several records at once, one answer per key in order (a census of subjects). Stores
    /// with a round trip per command answer in one.
    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<StoredSet>>, StoreError> {
        let mut sets = Vec::with_capacity(keys.len());
        for key in keys {
            sets.push(self.load(key).await?);
        }
        Ok(sets)
    }

    /// Where connect flows are shared, when replicas share this store (so a flow started
    /// on one can finish on another; see `token::subject::connect`).
    fn flow_store(self: Arc<Self>) -> Option<Arc<dyn FlowStore>> {
        None
    }

    /// Changes whenever the credential's record changes in the store.
    fn watch(&self, credential: &str) -> watch::Receiver<u64> {
        self.coordination().watch(credential)
    }

    /// Where a rotation helper journals the rotations of this record (stores that keep
    /// files, and Redis).
    fn helper_journal(&self, _record: &str) -> Option<HelperJournal> {
        None
    }

    /// Whether the store answers; a store inside this process always does.
    fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: self.backend(),
            up: true,
            last_error: None,
        }
    }
}

/// Opens the configured store for these credentials (name, binding). A file store is read
/// and every record decrypted now, so a wrong key or a damaged file stops startup with a
/// clear error (and the file is left exactly as it was); the engine then applies the
/// rotations that helpers of the previous run journaled (`recover_journals`). A Redis store checks its key when Redis answers, and
/// starts without it when it does not (it reconnects by itself).
pub fn open(
    config: &StoreConfig,
    credentials: &[(&str, String)],
) -> Result<Arc<dyn TokenStore>, StoreError> {
    match config {
        StoreConfig::Memory => Ok(Arc::new(MemoryStore::new())),
        StoreConfig::File { path, key } => {
            let store = FileStore::open(path, &resolve_key(key)?)?;
            Ok(Arc::new(store))
        }
        StoreConfig::Redis {
            servers,
            key,
            prefix,
            tls,
            min_replicas_acked,
        } => {
            let resolve = |s: &crate::config::SecretRef| {
                s.resolve().map_err(|e| StoreError::Invalid(e.to_string()))
            };
            let (url, sentinels, master_auth, nodes);
            let target = match servers {
                crate::config::RedisServers::Url(u) => {
                    url = resolve(u)?;
                    redis_client::RedisTarget::Url(&url)
                }
                crate::config::RedisServers::Sentinel {
                    sentinels: list,
                    master_name,
                    master_auth: auth,
                } => {
                    sentinels = list.iter().map(resolve).collect::<Result<Vec<_>, _>>()?;
                    master_auth = auth
                        .as_ref()
                        .map(|a| {
                            Ok::<_, StoreError>(redis_client::MasterCredentials {
                                username: a.username.clone(),
                                password: resolve(&a.password)?,
                            })
                        })
                        .transpose()?;
                    redis_client::RedisTarget::Sentinel {
                        sentinels: &sentinels,
                        master_name,
                        master_auth: master_auth.as_ref(),
                    }
                }
                crate::config::RedisServers::Cluster(list) => {
                    nodes = list.iter().map(resolve).collect::<Result<Vec<_>, _>>()?;
                    redis_client::RedisTarget::Cluster { nodes: &nodes }
                }
            };
            let store = RedisStore::new(
                target,
                tls,
                &resolve_key(key)?,
                prefix,
                credentials,
                *min_replicas_acked,
            )?;
            // Off the service runtimes, which do not exist yet: a runtime for this check.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StoreError::Invalid(format!("cannot check the redis store: {e}")))?;
            match runtime.block_on(store.verify_key()) {
                Ok(()) => {}
                Err(e @ StoreError::Unavailable { .. }) => {
                    tracing::warn!(error = %e, "starting without the store; it is retried at every refresh");
                }
                Err(e) => return Err(e),
            }
            Ok(Arc::new(store))
        }
    }
}

/// The key that seals the store's records, when it has one (file and Redis stores).
pub fn sealing_key(config: &StoreConfig) -> Option<[u8; 32]> {
    match config {
        StoreConfig::Memory => None,
        StoreConfig::File { key, .. } | StoreConfig::Redis { key, .. } => resolve_key(key).ok(),
    }
}

fn resolve_key(key: &crate::config::SecretRef) -> Result<[u8; 32], StoreError> {
    let text = key
        .resolve()
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    parse_key(text.expose_secret()).map_err(|e| StoreError::Invalid(e.to_string()))
}

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
    /// A logout's tombstone: when, and what the provider answered.
    pub logout: Option<LogoutRecord>,
    /// What the token was obtained for (`None` in records written before bindings).
    pub bound_to: Option<RecordBinding>,
    /// The client the sidecar registered for the credential (`registration = "auto"`),
    /// with the issuer it belongs to: opaque here (the token engine writes and reads it),
    /// sealed with the rest. Carried over by every save.
    pub registration: Option<SecretString>,
    /// The credential's DPoP key (`dpop = true`), and whether the tokens here are bound to
    /// it: opaque here too, sealed with the rest, carried over by every save.
    pub dpop: Option<DpopRecord>,
}

/// A credential's DPoP key as a record carries it (RFC 9449).
#[derive(Debug, Clone)]
pub struct DpopRecord {
    /// The private key, in the form the token engine reads.
    pub key: SecretString,
    /// The access token is bound to the key (`token_type` DPoP); so is the refresh token of
    /// a public client (RFC 9449 §5).
    pub bound: bool,
}

/// What a record's tokens were obtained for, the same in every store: a fingerprint of the
/// credential's binding (grant, endpoint, client, scopes, resource, audience, identity),
/// and the origin of its token endpoint (or issuer), the only place its refresh token may
/// be sent. A record bound otherwise is never served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordBinding {
    pub fingerprint: String,
    pub issuer: Option<String>,
}

impl RecordBinding {
    pub fn of(config: &crate::config::CredentialConfig) -> RecordBinding {
        // Only an issuer the config names: one found through an upstream's metadata is
        // not known here, so a record of such a credential counts as another issuer's on
        // any config change (its refresh token is never sent on a guess).
        let issuer = config.grant.request().and_then(|r| {
            r.token_url
                .as_ref()
                .or(r.issuer.as_ref())
                .map(|u| u.origin().ascii_serialization())
        });
        RecordBinding {
            fingerprint: fingerprint(&SecretString::from(config.binding())),
            issuer,
        }
    }
}

/// How a stored record's binding compares with the credential's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingMatch {
    /// The same, or a record from before bindings (served as before).
    Same,
    /// Obtained under another config, from the same issuer: its access token is not
    /// served; its refresh token may be used.
    SameIssuer,
    /// Obtained from another issuer: neither token is used.
    OtherIssuer { was: Option<String> },
}

impl RecordBinding {
    pub fn compare(&self, stored: &StoredToken) -> BindingMatch {
        match &stored.bound_to {
            None => BindingMatch::Same,
            Some(b) if b.fingerprint == self.fingerprint => BindingMatch::Same,
            Some(b) if b.issuer.is_some() && b.issuer == self.issuer => BindingMatch::SameIssuer,
            Some(b) => BindingMatch::OtherIssuer {
                was: b.issuer.clone(),
            },
        }
    }
}

/// When a logout happened and what the revocation endpoint answered for each token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogoutRecord {
    /// RFC 3339.
    pub at: String,
    /// `refresh_token: revoked`, `access_token: revocation endpoint answered 503`, …
    pub revocation: Vec<String>,
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
            logout: None,
            bound_to: None,
            registration: None,
            dpop: None,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logout: Option<LogoutRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bound_to: Option<RecordBinding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    registration: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dpop_key: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dpop_bound: bool,
}

/// A record as it is sealed: the token set and its generation (0 in stores written before
/// generations existed).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredSetRecord {
    #[serde(flatten)]
    token: StoredTokenRecord,
    #[serde(default)]
    generation: u64,
}

impl From<&StoredSet> for StoredSetRecord {
    fn from(s: &StoredSet) -> Self {
        StoredSetRecord {
            token: (&s.token).into(),
            generation: s.generation,
        }
    }
}

impl From<StoredSetRecord> for StoredSet {
    fn from(r: StoredSetRecord) -> Self {
        StoredSet {
            token: r.token.into(),
            generation: r.generation,
        }
    }
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
            logout: t.logout.clone(),
            bound_to: t.bound_to.clone(),
            registration: t
                .registration
                .as_ref()
                .map(|r| r.expose_secret().to_string()),
            dpop_key: t.dpop.as_ref().map(|d| d.key.expose_secret().to_string()),
            dpop_bound: t.dpop.as_ref().is_some_and(|d| d.bound),
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
            logout: r.logout,
            bound_to: r.bound_to,
            registration: r.registration.map(SecretString::from),
            dpop: r.dpop_key.map(|key| DpopRecord {
                key: SecretString::from(key),
                bound: r.dpop_bound,
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Invalid(String),
    /// A store file could not be read or written.
    #[error("store {path}: {message}")]
    Io { path: String, message: String },
    /// A shared store's value does not open or parse (another key, another app's prefix,
    /// tampering); the store named as it describes itself.
    #[error("store {store}: {message}")]
    Unreadable { store: String, message: String },
    /// The store did not answer (a shared store that is down, slow or unreachable).
    #[error("{store} is unavailable: {message}")]
    Unavailable { store: String, message: String },
    /// The master took a write that holds a refresh token, but fewer replicas than
    /// `min_replicas_acked` confirmed it in time: a failover now could lose it. The write is
    /// retried while the refresh lease is held.
    #[error("{store}: {acknowledged} of the {asked} replica(s) asked for (min_replicas_acked) confirmed the write in time; a failover could lose it")]
    NotReplicated {
        store: String,
        asked: u32,
        acknowledged: u32,
    },
}

impl StoreError {
    /// Whether trying the same write again later may succeed (the store was down, or its
    /// replicas slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::NotReplicated { .. }
        )
    }
}

/// One store backend as the registry sees it: the name `[store] backend` gives it and its
/// strict table, which lowers into its arm of `StoreConfig` (opened by [`open`]).
pub trait Backend {
    const NAME: &'static str;
    type Table: StrictTable + LowerStore + serde::de::DeserializeOwned + 'static;
}

/// The registry: one line per backend, in the order error messages list them.
macro_rules! store_backends {
    ($($backend:ty,)*) => {
        /// Every store backend this build has.
        pub struct Backends;

        impl StoreTables for Backends {
            const NAMES: &'static [&'static str] = &[$(<$backend as Backend>::NAME),*];

            fn keys_of(backend: &str) -> Option<&'static [&'static str]> {
                $(if backend == <$backend as Backend>::NAME {
                    return Some(<<$backend as Backend>::Table as StrictTable>::KEYS);
                })*
                None
            }

            fn read<'de, D: serde::Deserializer<'de>>(
                backend: &str,
                table: D,
            ) -> Result<Option<Box<dyn LowerStore>>, D::Error> {
                $(if backend == <$backend as Backend>::NAME {
                    let table: <$backend as Backend>::Table = Deserialize::deserialize(table)?;
                    return Ok(Some(Box::new(table)));
                })*
                serde::de::IgnoredAny::deserialize(table)?;
                Ok(None)
            }
        }
    };
}

store_backends! {
    memory::MemoryBackend,
    file::FileBackend,
    redis::RedisBackend,
}

pub use crate::material::parse_store_key as parse_key;

/// SHA-256 of a secret, hex: how a spent or replaced refresh token is remembered without
/// keeping the token.
/// What a rotation journal does to the stored record: the record to write, or `None` for a
/// journal older than the record (it is discarded).
pub type JournalPolicy = fn(Option<StoredToken>, journal::JournalEntry) -> Option<StoredToken>;

/// A record as errors name it (see [`RecordKey::describe`]).
pub(crate) fn record_name(key: &str) -> String {
    RecordKey::parse(key).describe()
}

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
        assert!(parse_key("c2hvcnQ=")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        assert!(parse_key("not a key!").is_err());
    }
}
