//! The encrypted file store: an embedded transactional key-value database (redb) in one
//! file. Each credential's record (and each subject's, for per-subject credentials) is a
//! row of its own, sealed with XChaCha20-Poly1305 under the store key, with the record's
//! key as associated data (a record moved to another key does not decrypt). A key-check
//! row makes a wrong key an error even when the store holds no token.
//!
//! A save is one write transaction, committed durably (redb fsyncs its commit) before it
//! returns: a crash leaves the old record or the new one, never a torn mix, and writing one
//! record never rewrites the others, so 100,000 subjects cost no more per write than one.
//!
//! A subject's row is keyed by its credential and a hash of the subject keyed by the store
//! key ([`SubjectNames`]), and the subject itself is kept sealed in a table of its own, for
//! listing: the file shows no subject, and a guessed one cannot be checked against it.
//!
//! A store of the first format (one JSON file) is migrated at open, its file kept beside
//! the new one as `…v1.bak`. A store of the second (subjects' keys in clear) is rewritten
//! into a new file at open, without a backup (it would show the subjects).

use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use redb::{ReadableDatabase, ReadableTable, TableDefinition};

use super::codec::{open_set, seal_set, Unsealed};
use super::durable::{parent_dir, sync_dir, write_and_rename};
use super::memory::compare_and_set;
use super::sealed::Sealer;
use super::{journal, lock};
use super::{
    HelperJournal, JournalPolicy, SaveOutcome, StoreBackend, StoreError, StoredSet, StoredToken,
    TokenStore,
};
use super::{LocalCoordination, RecordKey, SubjectNames};

/// `backend = "file"`: an encrypted file (one sealed row per record) that survives restarts.
pub struct FileBackend;

impl super::Backend for FileBackend {
    const NAME: &'static str = "file";
    type Table = RawFileStore;
}

crate::config::lowering::store_table! {
    pub struct RawFileStore {
        path: Option<PathBuf>,
        key: Option<crate::material::RawSecretRef>,
    }
}

impl crate::config::LowerStore for RawFileStore {
    fn lower(
        &self,
        map: &crate::config::SourceMap,
    ) -> Result<crate::config::StoreConfig, crate::config::ConfigError> {
        let Some(path) = self.path.clone() else {
            return Err(map.error_at(
                "store.backend",
                "the file store needs `path = \"/var/lib/bearerd/tokens.store\"`",
            ));
        };
        let key = crate::config::lowering::lower_store_key(map, &self.key, "file")?;
        Ok(crate::config::StoreConfig::File { path, key })
    }
}

/// How long a starting sidecar waits for another instance on the store to go away.
const INSTANCE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a starting sidecar waits for a rotation helper of its previous life: twice the
/// longest a helper can live.
const HELPER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(
    2 * (journal::HELPER_REQUEST_MAX.as_secs() + journal::HELPER_MARGIN.as_secs()),
);

const FORMAT: &str = "bearerd-store-v3";
/// Subjects' rows keyed by the subject in clear.
const V2_FORMAT: &str = "bearerd-store-v2";
const V1_FORMAT: &str = "bearerd-store-v1";
const KEY_CHECK: &[u8] = b"bearerd key check";
const KEY_CHECK_AAD: &[u8] = b"bearerd:key-check";

/// `format` and `key_check`.
const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// Stored key ([`SubjectNames::stored_key`]) → the sealed record (base64).
const RECORDS: TableDefinition<&str, &str> = TableDefinition::new("records");
/// A subject's stored key → the subject, sealed: what listing the subjects reads.
const SUBJECTS: TableDefinition<&str, &str> = TableDefinition::new("subjects");

/// The first format: one JSON document holding every sealed record.
#[derive(Serialize, Deserialize)]
struct V1Contents {
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
    names: SubjectNames,
    /// Kept for the rotation helper, which seals the journal with it.
    key: SecretBox<[u8; 32]>,
    /// Declared before the claim, so it is closed (its own lock released) before the claim
    /// lets the next sidecar in: fields drop in order.
    db: redb::Database,
    /// Writes waiting for the next commit, and the outcomes of the last ones.
    group: std::sync::Mutex<GroupCommit>,
    group_turn: std::sync::Condvar,
    /// This process's exclusive claim on the store, released when the store is dropped.
    _claim: std::fs::File,
}

/// The state of the group commit (see [`FileInner::write`]).
#[derive(Default)]
struct GroupCommit {
    queue: Vec<PendingWrite>,
    committing: bool,
    next_ticket: u64,
    done: std::collections::HashMap<u64, Result<SaveOutcome, StoreError>>,
}

struct PendingWrite {
    ticket: u64,
    credential: String,
    token: Option<StoredToken>,
    expected: Option<Option<u64>>,
}

impl FileStore {
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<FileStore, StoreError> {
        Ok(FileStore {
            inner: Arc::new(FileInner::open(path, key)?),
            local: LocalCoordination::default(),
        })
    }

    pub fn load(&self, credential: &str) -> Option<StoredToken> {
        self.inner.load(credential).ok().flatten().map(|s| s.token)
    }

    /// Sets (or with `None` removes) one credential's record, whatever its generation.
    pub fn save(&self, credential: &str, token: Option<&StoredToken>) -> Result<(), StoreError> {
        self.inner.write(credential, token, None).map(|_| ())
    }

    /// A record as it is on disk (sealed), for tests that tamper with it.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn sealed_record(&self, credential: &str) -> Option<String> {
        let txn = self.inner.db.begin_read().ok()?;
        let table = txn.open_table(RECORDS).ok()?;
        let value = table
            .get(self.inner.names.stored_key(credential).as_str())
            .ok()??;
        Some(value.value().to_string())
    }

    /// Every record's key.
    pub fn keys(&self) -> Vec<String> {
        self.inner.list("", None, usize::MAX).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn key(&self) -> &[u8; 32] {
        self.inner.key.expose_secret()
    }

    pub fn recover_rotation(
        &self,
        credential: &str,
        policy: JournalPolicy,
    ) -> Result<bool, StoreError> {
        self.inner.recover_rotation(credential, policy)
    }

    /// Where the rotation helper journals this record's rotations.
    pub fn journal_path(&self, credential: &str) -> PathBuf {
        journal::journal_path(&self.inner.path, &self.inner.names, credential)
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
        // A read of one page, from the page cache as a rule: not worth a blocking task.
        self.inner.load(credential)
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

    fn coordination(&self) -> &LocalCoordination {
        &self.local
    }

    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix, after, limit)
    }

    /// Subjects are listed in the order of their stored keys (their hashes).
    fn list_order(&self, key: &str) -> String {
        self.inner.names.stored_key(key)
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<StoredSet>>, StoreError> {
        // Reads from the page cache as a rule, as `load` does; a page of a census is at most
        // a few hundred records.
        self.inner.load_many(keys)
    }

    fn recover_journals(
        &self,
        credentials: &[&str],
        policy: JournalPolicy,
    ) -> Result<Vec<String>, StoreError> {
        // Subjects' records too: a helper may have rotated a subject's token.
        let mut records: Vec<String> = credentials.iter().map(|c| c.to_string()).collect();
        records.extend(
            self.keys()
                .into_iter()
                .filter(|k| RecordKey::parse(k).subject().is_some()),
        );
        let mut applied = Vec::new();
        for record in records {
            if self.inner.recover_rotation(&record, policy)? {
                applied.push(record);
            }
        }
        Ok(applied)
    }

    fn helper_journal(&self, _record: &str) -> Option<HelperJournal> {
        Some(HelperJournal::File {
            store: self.inner.path.clone(),
            key: SecretBox::new(Box::new(*self.key())),
        })
    }
}

impl FileInner {
    fn err(path: &Path, message: String) -> StoreError {
        StoreError::Io {
            path: path.display().to_string(),
            message,
        }
    }

    fn open(path: &Path, key: &[u8; 32]) -> Result<FileInner, StoreError> {
        let (sealer, names) = (Sealer::new(key), SubjectNames::new(key));
        let err = |message: String| Self::err(path, message);
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
        let existing = match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(err(format!("cannot read: {e}"))),
            Ok(bytes) if bytes.is_empty() => None,
            Ok(bytes) => Some(bytes),
        };
        let db = match existing {
            None => create_database(path, &sealer)?,
            Some(bytes) if bytes.first() == Some(&b'{') => {
                migrate_v1(path, &bytes, &sealer, &names)?
            }
            Some(_) => without_panics(path, || match check_database(path, &sealer, &names)? {
                Format::Current => database().open(path).map_err(|e| unreadable(path, &e)),
                Format::SubjectsInClear => migrate_v2(path, &sealer, &names),
            })?,
        };
        Ok(FileInner {
            path: path.to_path_buf(),
            sealer,
            names,
            key: SecretBox::new(Box::new(*key)),
            _claim: claim,
            db,
            group: std::sync::Mutex::new(GroupCommit::default()),
            group_turn: std::sync::Condvar::new(),
        })
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        Self::err(&self.path, format!("{what}: {e}"))
    }

    /// A row of the records table, opened (`stored` is its stored key).
    fn open_record(&self, stored: &str, sealed: &str) -> Result<StoredSet, StoreError> {
        open_record(&self.path, &self.sealer, stored, sealed)
    }

    /// The records table, as of now.
    fn records(&self) -> Result<redb::ReadOnlyTable<&'static str, &'static str>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.io("cannot read", e))?;
        txn.open_table(RECORDS)
            .map_err(|e| self.io("cannot read", e))
    }

    fn load(&self, credential: &str) -> Result<Option<StoredSet>, StoreError> {
        self.read_record(&self.records()?, credential)
    }

    /// Several records from one read transaction (one snapshot).
    fn load_many(&self, keys: &[String]) -> Result<Vec<Option<StoredSet>>, StoreError> {
        let table = self.records()?;
        keys.iter()
            .map(|key| self.read_record(&table, key))
            .collect()
    }

    /// One record, opened, from a read transaction's table.
    fn read_record(
        &self,
        table: &redb::ReadOnlyTable<&'static str, &'static str>,
        key: &str,
    ) -> Result<Option<StoredSet>, StoreError> {
        let stored = self.names.stored_key(key);
        let sealed = table
            .get(stored.as_str())
            .map_err(|e| self.io("cannot read", e))?;
        sealed
            .map(|s| self.open_record(&stored, s.value()))
            .transpose()
    }

    /// Keys with `prefix` (a credential's subjects' prefix, or "" for all), after `after`,
    /// in the order of their stored keys, at most `limit`.
    fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| self.io("cannot read", e))?;
        let cannot = |e: &dyn std::fmt::Display| self.io("cannot read", e);
        let table = txn.open_table(RECORDS).map_err(|e| cannot(&e))?;
        let subjects = txn.open_table(SUBJECTS).map_err(|e| cannot(&e))?;
        let after = after.map(|a| self.names.stored_key(a));
        let start = match &after {
            Some(a) if a.as_str() >= prefix => Bound::Excluded(a.as_str()),
            _ => Bound::Included(prefix),
        };
        let mut keys = Vec::new();
        let range = table
            .range::<&str>((start, Bound::Unbounded))
            .map_err(|e| cannot(&e))?;
        for row in range {
            let (k, _) = row.map_err(|e| cannot(&e))?;
            let stored = k.value();
            if !stored.starts_with(prefix) || keys.len() >= limit {
                break;
            }
            let RecordKey::Subject { credential, .. } = RecordKey::parse(stored) else {
                keys.push(stored.to_string());
                continue;
            };
            let sealed = subjects.get(stored).map_err(|e| cannot(&e))?;
            match sealed.and_then(|s| open_subject(&self.sealer, &self.names, stored, s.value())) {
                Some(subject) => keys.push(format!("{credential}\n{subject}")),
                // Checked at open: only a row written since, by something else, gets here.
                None => tracing::warn!(
                    store = %self.path.display(),
                    credential,
                    "a subject's record has no readable name; it is not listed"
                ),
            }
        }
        Ok(keys)
    }

    /// Sets (or with `None` removes) one credential's record, durably. With `expected`, only
    /// when the record's generation is still that (compare-and-set); without, whatever it is.
    ///
    /// Group commit: writes that arrive while a commit is under way wait for it, and the
    /// next commit takes all of them in one transaction (one fsync for many subjects'
    /// rotations). Each write still gets its own outcome, and returns only once durable.
    fn write(
        &self,
        credential: &str,
        token: Option<&StoredToken>,
        expected: Option<Option<u64>>,
    ) -> Result<SaveOutcome, StoreError> {
        let mut group = self.lock_group();
        let ticket = group.next_ticket;
        group.next_ticket += 1;
        group.queue.push(PendingWrite {
            ticket,
            credential: credential.to_string(),
            token: token.cloned(),
            expected,
        });
        loop {
            if let Some(outcome) = group.done.remove(&ticket) {
                return outcome;
            }
            if group.committing {
                group = self
                    .group_turn
                    .wait(group)
                    .unwrap_or_else(|p| p.into_inner());
                continue;
            }
            // This write leads the next commit, for every write queued so far.
            group.committing = true;
            let batch = std::mem::take(&mut group.queue);
            drop(group);
            let outcomes = self.commit_batch(&batch);
            group = self.lock_group();
            group.committing = false;
            group.done.extend(outcomes);
            self.group_turn.notify_all();
        }
    }

    fn lock_group(&self) -> std::sync::MutexGuard<'_, GroupCommit> {
        self.group.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One transaction for the batch: each write's compare-and-set against what the
    /// transaction sees (earlier writes of the batch included), then one durable commit.
    fn commit_batch(&self, batch: &[PendingWrite]) -> Vec<(u64, Result<SaveOutcome, StoreError>)> {
        let failed_all = |e: &dyn std::fmt::Display| {
            let message = format!("cannot write: {e}");
            batch
                .iter()
                .map(|w| (w.ticket, Err(Self::err(&self.path, message.clone()))))
                .collect()
        };
        let txn = match self.db.begin_write() {
            Ok(t) => t,
            Err(e) => return failed_all(&e),
        };
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut tables = match (txn.open_table(RECORDS), txn.open_table(SUBJECTS)) {
                (Ok(records), Ok(subjects)) => (records, subjects),
                (Err(e), _) => return failed_all(&e),
                (_, Err(e)) => return failed_all(&e),
            };
            for w in batch {
                outcomes.push((w.ticket, self.apply(&mut tables, w)));
            }
        }
        // The commit point: durable when it returns.
        if let Err(e) = txn.commit() {
            return failed_all(&e);
        }
        for (w, (_, outcome)) in batch.iter().zip(&outcomes) {
            if matches!(outcome, Ok(SaveOutcome::Saved { .. })) {
                // The record now holds at least what a rotation journal held.
                journal::remove(&self.path, &self.names, &w.credential);
            }
        }
        outcomes
    }

    /// One write inside the batch's transaction.
    fn apply(
        &self,
        (table, subjects): &mut (StrTable<'_>, StrTable<'_>),
        w: &PendingWrite,
    ) -> Result<SaveOutcome, StoreError> {
        let cannot = |e: &dyn std::fmt::Display| self.io("cannot write", e);
        let stored = self.names.stored_key(&w.credential);
        let stored = stored.as_str();
        let current = match table.get(stored).map_err(|e| cannot(&e))? {
            Some(sealed) => Some(self.open_record(stored, sealed.value())?),
            None => None,
        };
        let generation = match w.expected {
            Some(expected) => match compare_and_set(current.as_ref(), expected) {
                Ok(g) => g,
                Err(conflict) => return Ok(conflict),
            },
            None => current.map_or(1, |c| c.generation + 1),
        };
        match &w.token {
            Some(t) => {
                let set = StoredSet {
                    token: t.clone(),
                    generation,
                };
                let sealed = seal_set(&self.sealer, &set, aad(stored).as_bytes())?;
                table
                    .insert(stored, sealed.as_str())
                    .map_err(|e| cannot(&e))?;
                if let Some(subject) = RecordKey::parse(&w.credential).subject() {
                    if subjects.get(stored).map_err(|e| cannot(&e))?.is_none() {
                        let name = seal_subject(&self.sealer, stored, subject);
                        subjects
                            .insert(stored, name.as_str())
                            .map_err(|e| cannot(&e))?;
                    }
                }
            }
            None => {
                table.remove(stored).map_err(|e| cannot(&e))?;
                subjects.remove(stored).map_err(|e| cannot(&e))?;
            }
        }
        Ok(SaveOutcome::Saved { generation })
    }

    /// Applies the credential's rotation journal, left by a helper that outlived its
    /// sidecar, as `policy` rules. Returns whether it was applied.
    fn recover_rotation(
        &self,
        credential: &str,
        policy: JournalPolicy,
    ) -> Result<bool, StoreError> {
        let Some(entry) = journal::read(&self.sealer, &self.names, &self.path, credential)? else {
            return Ok(false);
        };
        let current = self.load(credential)?.map(|s| s.token);
        let Some(record) = policy(current, entry) else {
            tracing::info!(
                record = %super::record_name(credential),
                "a rotation journal older than the stored token was discarded"
            );
            journal::remove(&self.path, &self.names, credential);
            return Ok(false);
        };
        self.write(credential, Some(&record), None)?;
        Ok(true)
    }
}

type StrTable<'t> = redb::Table<'t, &'static str, &'static str>;

/// A record's associated data: its stored key (a record moved to another row does not open).
fn aad(stored: &str) -> String {
    format!("bearerd:credential:{stored}")
}

fn subject_aad(stored: &str) -> String {
    format!("bearerd:subject:{stored}")
}

/// A subject's name as the subjects table holds it.
fn seal_subject(sealer: &Sealer, stored: &str, subject: &str) -> String {
    sealer.seal(subject.as_bytes(), subject_aad(stored).as_bytes())
}

/// The subject a subjects-table row names: `None` unless it opens and is the subject its
/// stored key was made from.
fn open_subject(
    sealer: &Sealer,
    names: &SubjectNames,
    stored: &str,
    sealed: &str,
) -> Option<String> {
    let subject = String::from_utf8(sealer.open(sealed, subject_aad(stored).as_bytes())?).ok()?;
    let credential = RecordKey::parse(stored).credential();
    let key = RecordKey::Subject {
        credential,
        subject: &subject,
    }
    .to_key();
    (names.stored_key(&key) == stored).then_some(subject)
}

fn open_record(
    path: &Path,
    sealer: &Sealer,
    stored: &str,
    sealed: &str,
) -> Result<StoredSet, StoreError> {
    let what = super::record_name(stored);
    open_set(sealer, sealed, aad(stored).as_bytes()).map_err(|why| {
        let message = match why {
            Unsealed::DoesNotOpen => {
                format!("{what} fails authentication (tampered); the store was left unchanged")
            }
            Unsealed::Malformed => format!("{what} is malformed"),
        };
        FileInner::err(path, message)
    })
}

/// Runs `f` on a file that may be damaged: redb asserts some of its invariants on what it
/// reads (a truncated file trips one), and a damaged store must be an error naming the
/// file, never a panic. The default panic message is kept off the terminal meanwhile.
fn without_panics<T>(
    path: &Path,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(previous);
    result.unwrap_or_else(|_| {
        Err(FileInner::err(
            path,
            "not a readable bearerd store (truncated or damaged?); it was left unchanged".into(),
        ))
    })
}

/// How the store's database is opened: with a page cache of 16 MiB. redb's default (a
/// share of the machine's memory) would keep a sidecar's RSS growing with the store; the
/// records a sidecar reads are few and small, and the OS page cache is there behind it.
fn database() -> redb::Builder {
    let mut builder = redb::Database::builder();
    builder.set_cache_size(16 << 20);
    builder
}

/// A new, empty store (mode 0600), with its format and key check.
fn create_database(path: &Path, sealer: &Sealer) -> Result<redb::Database, StoreError> {
    let err = |m: String| FileInner::err(path, m);
    // redb initialises an empty file in place: created here with the mode it must have.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| err(format!("cannot create: {e}")))?;
    let db = database()
        .create(path)
        .map_err(|e| err(format!("cannot create: {e}")))?;
    {
        let cannot = |e: &dyn std::fmt::Display| err(format!("cannot write: {e}"));
        let txn = db.begin_write().map_err(|e| cannot(&e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| cannot(&e))?;
            meta.insert("format", FORMAT).map_err(|e| cannot(&e))?;
            let check = sealer.seal(KEY_CHECK, KEY_CHECK_AAD);
            meta.insert("key_check", check.as_str())
                .map_err(|e| cannot(&e))?;
            txn.open_table(RECORDS).map_err(|e| cannot(&e))?;
            txn.open_table(SUBJECTS).map_err(|e| cannot(&e))?;
        }
        txn.commit().map_err(|e| cannot(&e))?;
    }
    sync_dir(path).map_err(|e| err(format!("cannot sync its directory: {e}")))?;
    Ok(db)
}

/// The error for a file that is not a readable store; the file is left as it is.
fn unreadable(path: &Path, e: &dyn std::fmt::Display) -> StoreError {
    FileInner::err(
        path,
        format!("not a readable bearerd store (truncated or damaged?): {e}; it was left unchanged"),
    )
}

/// The formats of a database file that open reads.
enum Format {
    Current,
    /// The second format: rewritten at open (see [`migrate_v2`]).
    SubjectsInClear,
}

/// Checks an existing store before anything writes to it: it is a bearerd store, the key
/// opens it, and every record authenticates. Opened read-only, so that a refusal leaves the
/// file exactly as it was.
fn check_database(
    path: &Path,
    sealer: &Sealer,
    names: &SubjectNames,
) -> Result<Format, StoreError> {
    let damaged = |e: &dyn std::fmt::Display| unreadable(path, e);
    let db = match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => db,
        // Not shut down cleanly (a killed sidecar): redb's own recovery runs when it is
        // opened for writing, and the records are checked after.
        Err(redb::DatabaseError::RepairAborted) => return check_after_repair(path, sealer, names),
        Err(e) => return Err(damaged(&e)),
    };
    let txn = db.begin_read().map_err(|e| damaged(&e))?;
    check_contents(path, sealer, names, &txn)
}

fn check_after_repair(
    path: &Path,
    sealer: &Sealer,
    names: &SubjectNames,
) -> Result<Format, StoreError> {
    let db = database().open(path).map_err(|e| {
        FileInner::err(
            path,
            format!("not a readable bearerd store (truncated or damaged?): {e}"),
        )
    })?;
    let txn = db
        .begin_read()
        .map_err(|e| FileInner::err(path, format!("cannot read: {e}")))?;
    check_contents(path, sealer, names, &txn)
}

fn check_contents(
    path: &Path,
    sealer: &Sealer,
    names: &SubjectNames,
    txn: &redb::ReadTransaction,
) -> Result<Format, StoreError> {
    let err = |m: String| FileInner::err(path, m);
    let damaged = |e: &dyn std::fmt::Display| unreadable(path, e);
    let meta = txn.open_table(META).map_err(|e| damaged(&e))?;
    let format = meta
        .get("format")
        .map_err(|e| damaged(&e))?
        .map(|v| v.value().to_string());
    let found = match format.as_deref() {
        Some(FORMAT) => Format::Current,
        Some(V2_FORMAT) => Format::SubjectsInClear,
        _ => {
            return Err(err(format!(
                "unknown store format {format:?}; it was left unchanged"
            )))
        }
    };
    let check = meta
        .get("key_check")
        .map_err(|e| damaged(&e))?
        .and_then(|v| sealer.open(v.value(), KEY_CHECK_AAD));
    if check.as_deref() != Some(KEY_CHECK) {
        return Err(err(
            "the store key does not open this store (wrong key, or the file was altered); it was left unchanged"
                .into(),
        ));
    }
    let records = txn.open_table(RECORDS).map_err(|e| damaged(&e))?;
    let subjects = match found {
        Format::Current => Some(txn.open_table(SUBJECTS).map_err(|e| damaged(&e))?),
        Format::SubjectsInClear => None,
    };
    for row in records.iter().map_err(|e| damaged(&e))? {
        let (k, v) = row.map_err(|e| damaged(&e))?;
        let stored = k.value();
        open_record(path, sealer, stored, v.value())?;
        let Some(subjects) = &subjects else { continue };
        if RecordKey::parse(stored).subject().is_none() {
            continue;
        }
        let name = subjects.get(stored).map_err(|e| damaged(&e))?;
        if name
            .and_then(|n| open_subject(sealer, names, stored, n.value()))
            .is_none()
        {
            return Err(err(format!(
                "the name of {} fails authentication (tampered); the store was left unchanged",
                super::record_name(stored)
            )));
        }
    }
    Ok(found)
}

/// A store of the first format: checked as it always was, its sealed records copied into a
/// new database beside it, which then replaces it; the old file is kept as `….v1.bak`. A
/// crash at any point leaves the old file in place, and the next start migrates again.
fn migrate_v1(
    path: &Path,
    bytes: &[u8],
    sealer: &Sealer,
    names: &SubjectNames,
) -> Result<redb::Database, StoreError> {
    let err = |m: String| FileInner::err(path, m);
    let contents: V1Contents = serde_json::from_slice(bytes).map_err(|e| unreadable(path, &e))?;
    if contents.format != V1_FORMAT {
        return Err(err(format!(
            "unknown store format {:?}; it was left unchanged",
            contents.format
        )));
    }
    if sealer.open(&contents.key_check, KEY_CHECK_AAD).as_deref() != Some(KEY_CHECK) {
        return Err(err(
            "the store key does not open this store (wrong key, or the file was altered); it was left unchanged"
                .into(),
        ));
    }
    for (name, record) in &contents.records {
        open_record(path, sealer, name, record)?;
    }
    let backup = parent_dir(path).join(format!("{}.v1.bak", journal::file_name(path)));
    let keep_backup = || {
        write_and_rename(&backup, bytes).map_err(|e| err(format!("cannot keep the old store: {e}")))
    };
    rewrite(path, sealer, names, &contents.records, keep_backup)?;
    tracing::info!(
        store = %path.display(),
        records = contents.records.len(),
        backup = %backup.display(),
        "the store was migrated to the per-record format"
    );
    database()
        .open(path)
        .map_err(|e| err(format!("cannot open after migrating: {e}")))
}

/// A store of the second format (checked): rewritten into a new file with subjects under
/// their keyed names. A new file, not rows changed in place: the old rows' pages, subjects
/// in clear, would stay in the file until reused. No backup is kept, for the same reason.
fn migrate_v2(
    path: &Path,
    sealer: &Sealer,
    names: &SubjectNames,
) -> Result<redb::Database, StoreError> {
    let err = |m: String| FileInner::err(path, m);
    let cannot = |e: &dyn std::fmt::Display| err(format!("cannot migrate: {e}"));
    let records: BTreeMap<String, String> = {
        let db = database().open(path).map_err(|e| cannot(&e))?;
        let txn = db.begin_read().map_err(|e| cannot(&e))?;
        let table = txn.open_table(RECORDS).map_err(|e| cannot(&e))?;
        let rows = table.iter().map_err(|e| cannot(&e))?;
        rows.map(|row| {
            let (k, v) = row.map_err(|e| cannot(&e))?;
            Ok((k.value().to_string(), v.value().to_string()))
        })
        .collect::<Result<_, StoreError>>()?
    };
    rewrite(path, sealer, names, &records, || Ok(()))?;
    tracing::info!(
        store = %path.display(),
        records = records.len(),
        "the store was migrated: subjects are kept under keyed names"
    );
    database()
        .open(path)
        .map_err(|e| err(format!("cannot open after migrating: {e}")))
}

/// Writes `records` (record key → sealed under its key as an older format did) into a new
/// database beside `path`, each under its stored key; moves their rotation journals to
/// their keyed names; runs `before_replacing`; then puts the new file in place. A crash at
/// any point leaves the old file in place (a moved journal is found under its new name when
/// the next start migrates again).
fn rewrite(
    path: &Path,
    sealer: &Sealer,
    names: &SubjectNames,
    records: &BTreeMap<String, String>,
    before_replacing: impl FnOnce() -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let err = |m: String| FileInner::err(path, m);
    let cannot = |e: &dyn std::fmt::Display| err(format!("cannot migrate: {e}"));
    let next = parent_dir(path).join(format!(".{}.migrating", journal::file_name(path)));
    let _ = std::fs::remove_file(&next);
    {
        let db = create_database(&next, sealer)?;
        let txn = db.begin_write().map_err(|e| cannot(&e))?;
        {
            let mut table = txn.open_table(RECORDS).map_err(|e| cannot(&e))?;
            let mut subjects = txn.open_table(SUBJECTS).map_err(|e| cannot(&e))?;
            for (key, sealed) in records {
                let stored = names.stored_key(key);
                let Some(subject) = RecordKey::parse(key).subject() else {
                    table
                        .insert(key.as_str(), sealed.as_str())
                        .map_err(|e| cannot(&e))?;
                    continue;
                };
                let set = open_record(path, sealer, key, sealed)?;
                let resealed = seal_set(sealer, &set, aad(&stored).as_bytes())?;
                table
                    .insert(stored.as_str(), resealed.as_str())
                    .map_err(|e| cannot(&e))?;
                let name = seal_subject(sealer, &stored, subject);
                subjects
                    .insert(stored.as_str(), name.as_str())
                    .map_err(|e| cannot(&e))?;
                let old_journal = journal::unkeyed_journal_path(path, key);
                if old_journal.exists() {
                    std::fs::rename(&old_journal, journal::journal_path(path, names, key))
                        .map_err(|e| cannot(&e))?;
                }
            }
        }
        txn.commit().map_err(|e| cannot(&e))?;
    }
    before_replacing()?;
    std::fs::rename(&next, path).map_err(|e| cannot(&e))?;
    sync_dir(path).map_err(|e| err(format!("cannot sync its directory: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredSetRecord;
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
            logout: None,
            bound_to: None,
            registration: None,
            dpop: None,
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
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
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
        let sealed = s.sealed_record("crm").unwrap();
        drop(s); // one sidecar per store: the claim goes with it
        let original = std::fs::read(&path).unwrap();

        let e = FileStore::open(&path, &[2u8; 32])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("wrong key") && e.contains(&path.display().to_string()),
            "{e}"
        );

        let mut tampered = original.clone();
        let at = find(&original, sealed.as_bytes()) + sealed.len() - 4;
        tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&path, &tampered).unwrap();
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

    fn find(haystack: &[u8], needle: &[u8]) -> usize {
        haystack
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the sealed record is in the file")
    }

    #[test]
    fn a_store_of_the_first_format_is_migrated_and_kept_as_a_backup() {
        let (path, key) = (temp_path(), [9u8; 32]);
        let sealer = Sealer::new(&key);
        let set = StoredSet {
            token: token("rt-v1"),
            generation: 4,
        };
        let plain = serde_json::to_vec(&StoredSetRecord::from(&set)).unwrap();
        let v1 = V1Contents {
            format: V1_FORMAT.into(),
            key_check: sealer.seal(KEY_CHECK, KEY_CHECK_AAD),
            records: [(
                "crm".to_string(),
                sealer.seal(&plain, aad("crm").as_bytes()),
            )]
            .into(),
        };
        let bytes = serde_json::to_vec_pretty(&v1).unwrap();
        std::fs::write(&path, &bytes).unwrap();
        // A wrong key refuses the old format too, and changes nothing.
        assert!(FileStore::open(&path, &[1u8; 32]).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let s = FileStore::open(&path, &key).unwrap();
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-v1"));
        assert_eq!(s.inner.load("crm").unwrap().unwrap().generation, 4);
        let backup = path.with_file_name("tokens.store.v1.bak");
        assert_eq!(std::fs::read(&backup).unwrap(), bytes);
        assert_ne!(std::fs::read(&path).unwrap().first(), Some(&b'{'));
        s.save("crm", Some(&token("rt-v2"))).unwrap();
        let s = reopen(s, &path, &key);
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-v2"));
    }

    #[test]
    fn subjects_are_rows_of_their_own_listed_in_order() {
        let (path, key) = (temp_path(), [10u8; 32]);
        let s = FileStore::open(&path, &key).unwrap();
        for k in [
            "gmail\nbob",
            "crm",
            "gmail\nalice",
            "gmail\ncarol",
            "gmailx",
        ] {
            s.save(k, Some(&token(k))).unwrap();
        }
        // In the order of their stored keys, a page at a time.
        let mut all = ["gmail\nalice", "gmail\nbob", "gmail\ncarol"];
        all.sort_by_key(|k| TokenStore::list_order(&s, k));
        let page = s.inner.list("gmail\n", None, 2).unwrap();
        assert_eq!(page, all[..2]);
        let page = s.inner.list("gmail\n", Some(all[1]), 2).unwrap();
        assert_eq!(page, all[2..]);
        assert_eq!(s.keys().len(), 5);
        // A subject's record read back, removed, and gone from the list.
        assert_eq!(s.inner.load("gmail\nbob").unwrap().unwrap().generation, 1);
        s.save("gmail\nbob", None).unwrap();
        let listed = s.inner.list("gmail\n", None, 10).unwrap();
        assert!(!listed.contains(&"gmail\nbob".to_string()), "{listed:?}");
        assert_eq!(listed.len(), 2);
    }

    /// Every file in the store's directory, read whole.
    fn directory_bytes(path: &Path) -> Vec<(String, Vec<u8>)> {
        std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.display().to_string(), std::fs::read(&p).unwrap())
            })
            .collect()
    }

    fn shows(files: &[(String, Vec<u8>)], text: &str) -> bool {
        files
            .iter()
            .any(|(name, bytes)| name.contains(text) || find_in(bytes, text.as_bytes()))
    }

    fn find_in(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn the_directory_shows_no_subject_and_no_unkeyed_hash_of_one() {
        let (path, key) = (temp_path(), [11u8; 32]);
        let s = FileStore::open(&path, &key).unwrap();
        let record = "gmail\nalice@example.com";
        s.save(record, Some(&token("rt-a"))).unwrap();
        // A rotation journaled by a helper whose answer never came.
        let (sealer, names) = (Sealer::new(&key), SubjectNames::new(&key));
        let entry =
            journal::JournalEntry::after(None, SecretString::from("rt-b".to_string()), fp("rt-a"));
        journal::write(&sealer, &names, &path, record, &entry).unwrap();
        let files = directory_bytes(&path);
        assert!(!shows(&files, "alice"), "a subject in clear");
        assert!(!shows(&files, &fp(record)), "an unkeyed hash of a subject");
        // Still listed, and the journal still applies, after a restart.
        let s = reopen(s, &path, &key);
        assert!(s.recover_rotation(record, apply).unwrap());
        assert_eq!(
            s.inner.list("gmail\n", None, 10).unwrap(),
            [record.to_string()]
        );
    }

    /// A store as bearerd wrote it before subjects had keyed names (format 2), with a
    /// subject's journal under its unkeyed name.
    fn write_v2_store(path: &Path, key: &[u8; 32], records: &[(&str, &StoredSet)]) {
        let sealer = Sealer::new(key);
        let db = database().create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            meta.insert("format", V2_FORMAT).unwrap();
            let check = sealer.seal(KEY_CHECK, KEY_CHECK_AAD);
            meta.insert("key_check", check.as_str()).unwrap();
            let mut table = txn.open_table(RECORDS).unwrap();
            for (k, set) in records {
                let sealed = seal_set(&sealer, set, aad(k).as_bytes()).unwrap();
                table.insert(*k, sealed.as_str()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    #[test]
    fn a_store_with_subjects_in_clear_is_rewritten_under_keyed_names() {
        let (path, key) = (temp_path(), [12u8; 32]);
        let set = |rt: &str, generation| StoredSet {
            token: token(rt),
            generation,
        };
        let (alice, crm) = (set("rt-alice", 7), set("rt-crm", 3));
        let record = "gmail\nalice@example.com";
        write_v2_store(&path, &key, &[(record, &alice), ("crm", &crm)]);
        // Its helper's journal, under the old name.
        let sealer = Sealer::new(&key);
        let entry = journal::JournalEntry::after(
            None,
            SecretString::from("rt-alice-2".to_string()),
            fp("rt-alice"),
        );
        let old_journal = journal::unkeyed_journal_path(&path, record);
        let sealed = journal::seal_entry(
            &sealer,
            format!("bearerd:rotation:{record}").as_bytes(),
            &entry,
        );
        let file = serde_json::json!({"format": "bearerd-rotation-v1", "sealed": sealed});
        std::fs::write(&old_journal, file.to_string()).unwrap();
        assert!(
            shows(&directory_bytes(&path), "alice"),
            "the old format shows it"
        );

        let s = FileStore::open(&path, &key).unwrap();
        let files = directory_bytes(&path);
        assert!(!shows(&files, "alice"), "a subject in clear after the move");
        assert!(
            !shows(&files, &fp(record)),
            "an unkeyed hash after the move"
        );
        assert!(!old_journal.exists());
        assert_eq!(s.inner.load(record).unwrap().unwrap().generation, 7);
        assert_eq!(s.inner.load("crm").unwrap().unwrap().generation, 3);
        assert_eq!(s.inner.list("gmail\n", None, 10).unwrap(), [record]);
        assert!(
            s.recover_rotation(record, apply).unwrap(),
            "the journal moved with it"
        );
        let rt = s.load(record).unwrap().refresh_token.unwrap();
        assert_eq!(rt.expose_secret(), "rt-alice-2");
    }

    fn fp(s: &str) -> String {
        super::super::fingerprint(&SecretString::from(s.to_string()))
    }

    /// Journals `rt` replacing `replaces`, on top of the journal there, as the helper does.
    fn journal(path: &Path, key: &[u8; 32], rt: &str, replaces: &str) {
        let (sealer, names) = (Sealer::new(key), SubjectNames::new(key));
        let previous = journal::read(&sealer, &names, path, "crm").unwrap();
        let entry = journal::JournalEntry::after(
            previous,
            SecretString::from(rt.to_string()),
            fp(replaces),
        );
        journal::write(&sealer, &names, path, "crm", &entry).unwrap();
    }

    fn stored_rt(s: &FileStore) -> Option<String> {
        s.load("crm")?
            .refresh_token
            .map(|r| r.expose_secret().to_string())
    }

    /// The journal's token over whatever the store holds. These tests are of the
    /// mechanics; the engine's rule (which journal wins, when a seed is spent) is
    /// `token::rotation::policy`'s, tested there and by tests/crash.rs.
    fn apply(current: Option<StoredToken>, entry: journal::JournalEntry) -> Option<StoredToken> {
        let mut record = current.unwrap_or_else(StoredToken::empty);
        record.refresh_token = Some(entry.refresh_token);
        Some(record)
    }

    fn discard(_: Option<StoredToken>, _: journal::JournalEntry) -> Option<StoredToken> {
        None
    }

    #[test]
    fn a_rotation_journal_is_applied_or_discarded_as_the_policy_rules() {
        let (path, key) = (temp_path(), [3u8; 32]);
        let s = FileStore::open(&path, &key).unwrap();
        s.save("crm", Some(&token("rt-1"))).unwrap();

        // A helper rotated rt-1 into rt-2 after its sidecar died.
        journal(&path, &key, "rt-2", "rt-1");
        let s = reopen(s, &path, &key);
        assert!(s.recover_rotation("crm", apply).unwrap());
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"));
        assert!(!s.journal_path("crm").exists(), "applied once");
        let s = reopen(s, &path, &key);
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"), "durable");
        // Every record the store holds is looked at, subjects' included.
        s.save("crm\nalice", Some(&token("rt-a"))).unwrap();
        let (sealer, names) = (Sealer::new(&key), SubjectNames::new(&key));
        let entry =
            journal::JournalEntry::after(None, SecretString::from("rt-a2".to_string()), fp("rt-a"));
        journal::write(&sealer, &names, &path, "crm\nalice", &entry).unwrap();
        let applied = TokenStore::recover_journals(&s, &["crm"], apply).unwrap();
        assert_eq!(applied, ["crm\nalice"]);

        // A journal the policy discards leaves the record, and goes.
        journal(&path, &key, "rt-1", "rt-0");
        assert!(!s.recover_rotation("crm", discard).unwrap());
        assert_eq!(stored_rt(&s).as_deref(), Some("rt-2"));
        assert!(!s.journal_path("crm").exists());

        // Saving the record makes the journal redundant.
        journal(&path, &key, "rt-3", "rt-2");
        s.save("crm", Some(&token("rt-3"))).unwrap();
        assert!(!s.journal_path("crm").exists());
    }

    #[test]
    fn a_damaged_journal_is_an_error_naming_it_and_left_alone() {
        let (path, key) = (temp_path(), [5u8; 32]);
        journal(&path, &key, "rt-2", "rt-1");
        let jp = journal::journal_path(&path, &SubjectNames::new(&key), "crm");
        let mut bytes = std::fs::read(&jp).unwrap();
        let n = bytes.len();
        bytes[n - 5] ^= 1;
        std::fs::write(&jp, &bytes).unwrap();
        let s = FileStore::open(&path, &key).unwrap();
        let e = s.recover_rotation("crm", apply).unwrap_err().to_string();
        assert!(e.contains(&jp.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&jp).unwrap(), bytes);
        drop(s); // one sidecar per store: the claim goes with it
        std::fs::remove_file(&path).unwrap(); // a store of the other key, the journal kept
        let e = FileStore::open(&path, &[6u8; 32])
            .unwrap()
            .recover_rotation("crm", apply)
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
