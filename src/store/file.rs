//! The encrypted file store. One JSON file; each credential's record is sealed with
//! XChaCha20-Poly1305 under the store key, with the credential name as associated data (a
//! record moved to another name does not decrypt). A key-check record makes a wrong key an
//! error even when the store holds no token. Writes replace the file atomically.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::durable::{parent_dir, sync_dir, write_and_rename};
use super::memory::{compare_and_set, LocalCoordination};
use super::sealed::Sealer;
use super::{journal, lock};
use super::{
    HelperJournal, Lease, SaveOutcome, StoreBackend, StoreError, StoredSet, StoredSetRecord,
    StoredToken, TokenStore,
};

/// How long a starting sidecar waits for another instance on the store to go away.
const INSTANCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a starting sidecar waits for a rotation helper of its previous life: twice the
/// longest a helper can live.
const HELPER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(
    2 * (journal::HELPER_REQUEST_MAX.as_secs() + journal::HELPER_MARGIN.as_secs()),
);

const FORMAT: &str = "bearerd-store-v1";
const KEY_CHECK: &[u8] = b"bearerd key check";
const KEY_CHECK_AAD: &[u8] = b"bearerd:key-check";

#[derive(Serialize, Deserialize)]
struct FileContents {
    format: String,
    key_check: String,
    records: BTreeMap<String, String>,
}

pub struct FileStore {
    /// Shared with the blocking tasks that write the file.
    inner: Arc<FileInner>,
    local: LocalCoordination,
}

struct FileInner {
    path: PathBuf,
    sealer: Sealer,
    /// Kept for the rotation helper, which seals the journal with it.
    key: SecretBox<[u8; 32]>,
    /// This process's exclusive claim on the store, released when the store is dropped.
    _claim: std::fs::File,
    /// Decrypted records, and the sealed ones as they are on disk.
    state: Mutex<(BTreeMap<String, StoredSet>, BTreeMap<String, String>)>,
}

impl FileStore {
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<FileStore, StoreError> {
        Ok(FileStore {
            inner: Arc::new(FileInner::open(path, key)?),
            local: LocalCoordination::default(),
        })
    }

    pub fn load(&self, credential: &str) -> Option<StoredToken> {
        self.inner.load(credential).map(|s| s.token)
    }

    /// Sets (or with `None` removes) one credential's record, whatever its generation, and
    /// replaces the file.
    pub fn save(&self, credential: &str, token: Option<&StoredToken>) -> Result<(), StoreError> {
        self.inner.write(credential, token, None).map(|_| ())
    }

    /// Every record's key.
    pub fn keys(&self) -> Vec<String> {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0.keys().cloned().collect()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn key(&self) -> &[u8; 32] {
        self.inner.key.expose_secret()
    }

    pub fn recover_rotation(&self, credential: &str) -> Result<bool, StoreError> {
        self.inner.recover_rotation(credential)
    }

    /// Runs a write on the blocking pool: it fsyncs.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FileInner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Invalid(format!("store write task failed: {e}")))?
    }
}

#[async_trait]
impl TokenStore for FileStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::File
    }

    async fn load(&self, credential: &str) -> Result<Option<StoredSet>, StoreError> {
        Ok(self.inner.load(credential))
    }

    async fn save(
        &self,
        credential: &str,
        token: &StoredToken,
        expected: Option<u64>,
    ) -> Result<SaveOutcome, StoreError> {
        let (name, token) = (credential.to_string(), token.clone());
        let outcome = self
            .blocking(move |f| f.write(&name, Some(&token), Some(expected)))
            .await?;
        if matches!(outcome, SaveOutcome::Saved { .. }) {
            self.local.changed(credential);
        }
        Ok(outcome)
    }

    async fn remove(&self, credential: &str) -> Result<(), StoreError> {
        let name = credential.to_string();
        self.blocking(move |f| f.write(&name, None, None)).await?;
        self.local.changed(credential);
        Ok(())
    }

    async fn lease(
        &self,
        credential: &str,
        hold_for: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        // One sidecar per file store (the instance claim): leases are among its refreshers.
        Ok(self.local.lease(credential, hold_for))
    }

    async fn renew(&self, lease: &Lease, hold_for: Duration) -> Result<bool, StoreError> {
        Ok(self.local.renew(lease, hold_for))
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.local.release(lease);
        Ok(())
    }

    fn watch(&self, credential: &str) -> watch::Receiver<u64> {
        self.local.watch(credential)
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        use std::ops::Bound;
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix.to_string()),
        };
        Ok(state
            .0
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }

    fn helper_journal(&self) -> Option<HelperJournal> {
        Some(HelperJournal {
            store: self.inner.path.clone(),
            key: SecretBox::new(Box::new(*self.key())),
        })
    }
}

impl FileInner {
    fn open(path: &Path, key: &[u8; 32]) -> Result<FileInner, StoreError> {
        let sealer = Sealer::new(key);
        let err = |message: String| StoreError::Io {
            path: path.display().to_string(),
            message,
        };
        // Checked at startup: a store that cannot be written would lose rotated tokens.
        let dir = parent_dir(path);
        if !dir.is_dir() {
            return Err(err(format!("directory {} does not exist", dir.display())));
        }
        // Prove the directory is writable now, not at the first rotation.
        let probe = dir.join(format!(".bearerd-probe-{}", std::process::id()));
        std::fs::write(&probe, b"")
            .map_err(|e| err(format!("directory {} is not writable: {e}", dir.display())))?;
        let _ = std::fs::remove_file(&probe);
        let claim = lock::claim_store(path, INSTANCE_PATIENCE)?;
        // A helper of the previous run may still be rotating: its answer comes first.
        lock::wait_for_helpers(path, HELPER_PATIENCE)?;
        let mut tokens = BTreeMap::new();
        let mut sealed = BTreeMap::new();
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(format!("cannot read: {e}"))),
            Ok(bytes) => {
                let contents: FileContents = serde_json::from_slice(&bytes).map_err(|e| {
                    err(format!("not a readable bearerd store (truncated or damaged?): {e}; it was left unchanged"))
                })?;
                if contents.format != FORMAT {
                    return Err(err(format!(
                        "unknown store format {:?}; it was left unchanged",
                        contents.format
                    )));
                }
                let check = sealer.open(&contents.key_check, KEY_CHECK_AAD);
                if check.as_deref() != Some(KEY_CHECK) {
                    return Err(err(
                        "the store key does not open this store (wrong key, or the file was altered); it was left unchanged"
                            .into(),
                    ));
                }
                for (name, record) in contents.records {
                    let plain = sealer.open(&record, aad(&name).as_bytes()).ok_or_else(|| {
                        err(format!("the record for credential {name:?} fails authentication (tampered); the store was left unchanged"))
                    })?;
                    let parsed: StoredSetRecord = serde_json::from_slice(&plain).map_err(|e| {
                        err(format!(
                            "the record for credential {name:?} is malformed: {e}"
                        ))
                    })?;
                    tokens.insert(name.clone(), parsed.into());
                    sealed.insert(name, record);
                }
            }
        }
        Ok(FileInner {
            path: path.to_path_buf(),
            sealer,
            key: SecretBox::new(Box::new(*key)),
            _claim: claim,
            state: Mutex::new((tokens, sealed)),
        })
    }

    fn load(&self, credential: &str) -> Option<StoredSet> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .get(credential)
            .cloned()
    }

    /// Sets (or with `None` removes) one credential's record and replaces the file. With
    /// `expected`, only when the record's generation is still that (compare-and-set);
    /// without, whatever it is.
    fn write(
        &self,
        credential: &str,
        token: Option<&StoredToken>,
        expected: Option<Option<u64>>,
    ) -> Result<SaveOutcome, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let current = state.0.get(credential);
        let generation = match expected {
            Some(expected) => match compare_and_set(current, expected) {
                Ok(g) => g,
                Err(conflict) => return Ok(conflict),
            },
            None => current.map_or(1, |c| c.generation + 1),
        };
        let (mut tokens, mut sealed) = (state.0.clone(), state.1.clone());
        match token {
            Some(t) => {
                let set = StoredSet {
                    token: t.clone(),
                    generation,
                };
                let plain = serde_json::to_vec(&StoredSetRecord::from(&set))
                    .map_err(|e| StoreError::Invalid(e.to_string()))?;
                sealed.insert(
                    credential.to_string(),
                    self.seal(&plain, aad(credential).as_bytes()),
                );
                tokens.insert(credential.to_string(), set);
            }
            None => {
                sealed.remove(credential);
                tokens.remove(credential);
            }
        }
        let contents = FileContents {
            format: FORMAT.to_string(),
            key_check: self.seal(KEY_CHECK, KEY_CHECK_AAD),
            records: sealed.clone(),
        };
        let bytes =
            serde_json::to_vec_pretty(&contents).map_err(|e| StoreError::Invalid(e.to_string()))?;
        write_and_rename(&self.path, &bytes).map_err(|e| StoreError::Io {
            path: self.path.display().to_string(),
            message: format!("cannot write: {e}"),
        })?;
        // The rename is the commit point: from here the file holds the new set, and the
        // in-memory view must follow it even if the directory sync below fails.
        *state = (tokens, sealed);
        // The record now holds at least what a rotation journal held.
        journal::remove(&self.path, credential);
        if let Err(e) = sync_dir(&self.path) {
            // The set is in the file (the rename happened): reporting a failure would leave
            // the caller's generation behind the store's. A crash now may lose the rename.
            tracing::warn!(store = %self.path.display(), error = %e, "the store was written, but its directory could not be synced");
        }
        Ok(SaveOutcome::Saved { generation })
    }

    fn seal(&self, plain: &[u8], aad: &[u8]) -> String {
        self.sealer.seal(plain, aad)
    }

    /// Applies the credential's rotation journal, left by a helper that outlived its
    /// sidecar: its refresh token replaces the stored one when the store still holds the
    /// token it replaced (or none). Returns whether it was applied.
    fn recover_rotation(&self, credential: &str) -> Result<bool, StoreError> {
        let Some(entry) = journal::read(&self.sealer, &self.path, credential)? else {
            return Ok(false);
        };
        let current = self.load(credential).map(|s| s.token);
        let stored_rt = current.as_ref().and_then(|c| c.refresh_token.as_ref());
        let applies = match (&current, stored_rt) {
            (Some(c), _) if c.logged_out => false,
            (_, Some(rt)) => entry.supersedes(&super::fingerprint(rt)),
            (_, None) => true,
        };
        if !applies {
            tracing::info!(
                credential,
                "a rotation journal older than the stored token was discarded"
            );
            journal::remove(&self.path, credential);
            return Ok(false);
        }
        let mut record = current.unwrap_or_else(StoredToken::empty);
        if record.refresh_token.is_none() {
            // The first replaced token was a configured seed: it must never be sent again.
            record.spent_seed = entry.replaces.first().cloned();
        }
        record.refresh_token = Some(entry.refresh_token);
        self.write(credential, Some(&record), None)?;
        Ok(true)
    }
}

fn aad(credential: &str) -> String {
    format!("bearerd:credential:{credential}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::{ExposeSecret, SecretString};
    use std::time::SystemTime;

    fn token(rt: &str) -> StoredToken {
        StoredToken {
            access_token: SecretString::from("at-1".to_string()),
            issued_at: SystemTime::now(),
            expires_at: Some(SystemTime::now() + std::time::Duration::from_secs(60)),
            scopes: vec!["a".into()],
            refresh_token: Some(SecretString::from(rt.to_string())),
            logged_out: false,
            spent_seed: None,
        }
    }

    fn temp_path() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("bearerd-store-unit-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("tokens.store")
    }

    /// The store opened again. One sidecar per store: the old one's claim goes when it drops.
    fn reopen(s: FileStore, path: &Path, key: &[u8; 32]) -> FileStore {
        drop(s);
        FileStore::open(path, key).unwrap()
    }

    #[test]
    fn round_trips_and_survives_reopen() {
        let path = temp_path();
        let key = [7u8; 32];
        let s = FileStore::open(&path, &key).unwrap();
        s.save("crm", Some(&token("rt-1"))).unwrap();
        s.save("crm", Some(&token("rt-2"))).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("rt-2") && !text.contains("at-1"),
            "records are encrypted"
        );
        let s = reopen(s, &path, &key);
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"));
        s.save("crm", None).unwrap();
        assert!(reopen(s, &path, &key).load("crm").is_none());
    }

    #[test]
    fn wrong_key_tampering_and_truncation_are_errors_that_leave_the_file_alone() {
        let path = temp_path();
        let s = FileStore::open(&path, &[1u8; 32]).unwrap();
        s.save("crm", Some(&token("rt"))).unwrap();
        let original = std::fs::read(&path).unwrap();

        drop(s); // one sidecar per store: the claim goes with it
        let e = FileStore::open(&path, &[2u8; 32])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("wrong key") && e.contains(&path.display().to_string()),
            "{e}"
        );

        let mut contents: FileContents = serde_json::from_slice(&original).unwrap();
        let rec = contents.records.get_mut("crm").unwrap();
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut raw = b64.decode(&*rec).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        *rec = b64.encode(raw);
        std::fs::write(&path, serde_json::to_vec(&contents).unwrap()).unwrap();
        let tampered = std::fs::read(&path).unwrap();
        let e = FileStore::open(&path, &[1u8; 32])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("tampered"), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), tampered);

        std::fs::write(&path, &original[..original.len() / 2]).unwrap();
        let e = FileStore::open(&path, &[1u8; 32])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("truncated or damaged"), "{e}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            &original[..original.len() / 2]
        );
    }

    fn fp(s: &str) -> String {
        super::super::fingerprint(&SecretString::from(s.to_string()))
    }

    /// Journals `rt` replacing `replaces`, on top of the journal there, as the helper does.
    fn journal(path: &Path, key: &[u8; 32], rt: &str, replaces: &str) {
        let sealer = Sealer::new(key);
        let previous = journal::read(&sealer, path, "crm").unwrap();
        let entry = journal::JournalEntry::after(
            previous,
            SecretString::from(rt.to_string()),
            fp(replaces),
        );
        journal::write(&sealer, path, "crm", &entry).unwrap();
    }

    fn stored_rt(s: &FileStore) -> Option<String> {
        s.load("crm")?
            .refresh_token
            .map(|r| r.expose_secret().to_string())
    }

    #[test]
    fn a_rotation_journal_applies_only_over_the_token_it_replaced() {
        let (path, key) = (temp_path(), [3u8; 32]);
        let s = FileStore::open(&path, &key).unwrap();
        s.save("crm", Some(&token("rt-1"))).unwrap();

        // A helper rotated rt-1 into rt-2 after its sidecar died.
        journal(&path, &key, "rt-2", "rt-1");
        let s = reopen(s, &path, &key);
        assert!(s.recover_rotation("crm").unwrap());
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"));
        assert!(
            !journal::journal_path(&path, "crm").exists(),
            "applied once"
        );
        let s = reopen(s, &path, &key);
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"), "durable");

        // A stale journal (the store moved past it) never brings back a spent token.
        journal(&path, &key, "rt-1", "rt-0");
        assert!(!s.recover_rotation("crm").unwrap());
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"));
        assert!(!journal::journal_path(&path, "crm").exists());

        // Saving the record makes the journal redundant.
        journal(&path, &key, "rt-3", "rt-2");
        s.save("crm", Some(&token("rt-3"))).unwrap();
        assert!(!journal::journal_path(&path, "crm").exists());
    }

    #[test]
    fn a_journal_over_a_seed_marks_the_seed_spent() {
        let (path, key) = (temp_path(), [4u8; 32]);
        journal(&path, &key, "rt-1", "the-seed");
        let s = FileStore::open(&path, &key).unwrap();
        assert!(s.recover_rotation("crm").unwrap());
        let rec = s.load("crm").unwrap();
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-1"));
        assert_eq!(rec.spent_seed, Some(fp("the-seed")));
    }

    #[test]
    fn rotations_while_the_store_cannot_be_written_chain_in_the_journal() {
        let (path, key) = (temp_path(), [8u8; 32]);
        let s = FileStore::open(&path, &key).unwrap();
        s.save("crm", Some(&token("rt-1"))).unwrap();
        // Two rotations journaled, neither saved to the store (say, a full disk).
        journal(&path, &key, "rt-2", "rt-1");
        journal(&path, &key, "rt-3", "rt-2");
        let s = reopen(s, &path, &key);
        assert!(s.recover_rotation("crm").unwrap());
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-3"));
    }

    #[test]
    fn a_damaged_journal_is_an_error_naming_it_and_left_alone() {
        let (path, key) = (temp_path(), [5u8; 32]);
        journal(&path, &key, "rt-2", "rt-1");
        let jp = journal::journal_path(&path, "crm");
        let mut bytes = std::fs::read(&jp).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        std::fs::write(&jp, &bytes).unwrap();
        let s = FileStore::open(&path, &key).unwrap();
        let e = s.recover_rotation("crm").unwrap_err().to_string();
        assert!(e.contains(&jp.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&jp).unwrap(), bytes);
        drop(s); // one sidecar per store: the claim goes with it
        let e = FileStore::open(&path, &[6u8; 32])
            .unwrap()
            .recover_rotation("crm")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fails authentication") || e.contains("readable"),
            "{e}"
        );
    }

    #[test]
    fn a_second_sidecar_on_the_same_store_is_refused() {
        let path = temp_path();
        let first = lock::claim_store(&path, std::time::Duration::ZERO).unwrap();
        let e = lock::claim_store(&path, std::time::Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another bearerd is using this store"), "{e}");
        drop(first);
        lock::claim_store(&path, std::time::Duration::ZERO).unwrap();
    }

    #[test]
    fn opening_waits_for_a_helper_that_holds_the_lock() {
        let path = temp_path();
        let helper = lock::open_lock(&path).unwrap();
        helper.lock_shared().unwrap();
        let e = lock::wait_for_helpers(&path, std::time::Duration::from_millis(100))
            .unwrap_err()
            .to_string();
        assert!(e.contains("rotation helper"), "{e}");
        helper.unlock().unwrap();
        lock::wait_for_helpers(&path, std::time::Duration::from_millis(100)).unwrap();
    }
}
