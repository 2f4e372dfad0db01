//! The rotation journal: where a refresh token that a provider just rotated is written by
//! the rotation helper (a child process) before anyone else sees it, so that the new token
//! survives the sidecar's death at any moment of the exchange.
//!
//! One sealed file per credential next to the store, replaced atomically; the store's key
//! seals it, with its own associated data. A journal entry names the refresh tokens it
//! supersedes (the one it replaced, and those that entry replaced while the store could not
//! be written): at startup it is applied only when the store holds one of them (or none),
//! so a stale journal can never bring back a spent token. The sidecar removes the journal
//! whenever it saves the credential's record, which then holds at least what the journal
//! held.
//!
//! A lock file next to the store orders the two processes: a helper holds it shared while
//! it works, and a starting sidecar takes it exclusively (waiting) before it reads anything,
//! so it never sends a refresh token that a helper of its previous life is still using.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::durable::{parent_dir, sync_dir, write_and_rename};
use super::sealed::Sealer;
use super::{RecordKey, StoreError, SubjectNames};

const FORMAT: &str = "bearerd-rotation-v1";

/// The longest a helper's token request may take (a longer `token_timeout` is cut to this),
/// and the time it has beyond that to journal and answer: together they bound its life, and
/// with it how long a starting sidecar may have to wait.
pub const HELPER_REQUEST_MAX: Duration = Duration::from_secs(60);
pub const HELPER_MARGIN: Duration = Duration::from_secs(10);

/// A rotated refresh token, and the SHA-256 fingerprints of the ones it supersedes, the
/// one it replaced last.
pub struct JournalEntry {
    pub refresh_token: SecretString,
    pub replaces: Vec<String>,
}

/// How many superseded tokens an entry remembers: enough for rotations while the store
/// cannot be written, bounded so that the journal stays small.
const CHAIN: usize = 32;

impl JournalEntry {
    /// The entry for `refresh_token`, which replaced the token with fingerprint `replaced`.
    /// When the previous entry's token is the one replaced, its chain carries on: the store
    /// may still hold any token of it.
    pub fn after(
        previous: Option<JournalEntry>,
        refresh_token: SecretString,
        replaced: String,
    ) -> JournalEntry {
        // The same rotation journaled again (a retry after a write whose answer was lost):
        // the entry as it is, chain and all.
        if let Some(p) = &previous {
            if p.refresh_token.expose_secret() == refresh_token.expose_secret()
                && p.replaces.last() == Some(&replaced)
            {
                return previous.unwrap();
            }
        }
        let mut replaces = match previous {
            Some(p) if super::fingerprint(&p.refresh_token) == replaced => p.replaces,
            _ => Vec::new(),
        };
        replaces.retain(|f| *f != replaced);
        replaces.push(replaced);
        if replaces.len() > CHAIN {
            replaces.drain(..replaces.len() - CHAIN);
        }
        JournalEntry {
            refresh_token,
            replaces,
        }
    }

    /// Whether this entry is newer than a store holding the token with this fingerprint.
    pub fn supersedes(&self, fingerprint: &str) -> bool {
        self.replaces.iter().any(|f| f == fingerprint)
    }
}

#[derive(Serialize, Deserialize)]
struct JournalFile {
    format: String,
    sealed: String,
}

#[derive(Serialize, Deserialize)]
struct JournalRecord {
    refresh_token: String,
    replaces: Vec<String>,
}

pub(super) fn file_name(store: &Path) -> &str {
    store
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("store")
}

/// The journal of one credential. The name is hex-encoded: credential names are free text.
/// A subject's is named by its record's stored key (see [`SubjectNames::stored_key`]), so a
/// directory listing shows no subject, and a guessed one cannot be checked against it.
pub fn journal_path(store: &Path, names: &SubjectNames, credential: &str) -> PathBuf {
    let name = if RecordKey::parse(credential).subject().is_some() {
        let stored = names.stored_key(credential);
        let hash = stored.rsplit_once('\n').map_or(stored.as_str(), |(_, h)| h);
        let credential = RecordKey::parse(credential).credential();
        format!("s{}-{hash}", hex(credential))
    } else {
        hex(credential)
    };
    parent_dir(store).join(format!(".{}.rotation-{name}", file_name(store)))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Where bearerd before keyed names journaled a subject's rotation: named by a plain
/// SHA-256 of the record key. Read only to move such a journal when its store is migrated.
pub(super) fn unkeyed_journal_path(store: &Path, credential: &str) -> PathBuf {
    let digest = super::fingerprint(&SecretString::from(credential.to_string()));
    parent_dir(store).join(format!(".{}.rotation-s{digest}", file_name(store)))
}

fn aad(credential: &str) -> String {
    format!("bearerd:rotation:{credential}")
}

/// Writes the entry durably (temporary file, fsync, rename, directory fsync).
pub fn write(
    sealer: &Sealer,
    names: &SubjectNames,
    store: &Path,
    credential: &str,
    entry: &JournalEntry,
) -> std::io::Result<()> {
    let file = JournalFile {
        format: FORMAT.into(),
        sealed: seal_entry(sealer, aad(credential).as_bytes(), entry),
    };
    let path = journal_path(store, names, credential);
    write_and_rename(&path, &serde_json::to_vec(&file)?)?;
    sync_dir(&path)
}

/// The credential's journal entry, if there is one. A journal that does not open is an
/// error naming the file, which is left as it is.
pub fn read(
    sealer: &Sealer,
    names: &SubjectNames,
    store: &Path,
    credential: &str,
) -> Result<Option<JournalEntry>, StoreError> {
    let path = journal_path(store, names, credential);
    let err = |message: &str| StoreError::Io {
        path: path.display().to_string(),
        message: format!("{message}; it was left unchanged"),
    };
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(&format!("cannot read the rotation journal: {e}"))),
        Ok(b) => b,
    };
    let file: JournalFile = serde_json::from_slice(&bytes)
        .map_err(|_| err("not a readable rotation journal (truncated or damaged?)"))?;
    if file.format != FORMAT {
        return Err(err("unknown rotation journal format"));
    }
    let plain = sealer
        .open(&file.sealed, aad(credential).as_bytes())
        .ok_or_else(|| err("the rotation journal fails authentication (wrong key, or tampered)"))?;
    entry_from_plain(&plain)
        .map(Some)
        .ok_or_else(|| err("the rotation journal is malformed"))
}

/// An entry sealed with `aad`: the journal's content, wherever it is kept (a file beside
/// the file store, a key in Redis).
pub(crate) fn seal_entry(sealer: &Sealer, aad: &[u8], entry: &JournalEntry) -> String {
    let record = JournalRecord {
        refresh_token: entry.refresh_token.expose_secret().to_string(),
        replaces: entry.replaces.clone(),
    };
    // A struct of two strings always serializes.
    let plain = zeroize::Zeroizing::new(serde_json::to_vec(&record).unwrap_or_default());
    sealer.seal(&plain, aad)
}

/// The entry in a sealed journal; `None` when it does not open or is malformed.
pub(crate) fn open_entry(sealer: &Sealer, aad: &[u8], sealed: &str) -> Option<JournalEntry> {
    entry_from_plain(&sealer.open(sealed, aad)?)
}

fn entry_from_plain(plain: &[u8]) -> Option<JournalEntry> {
    let record: JournalRecord = serde_json::from_slice(plain).ok()?;
    Some(JournalEntry {
        refresh_token: SecretString::from(record.refresh_token),
        replaces: record.replaces,
    })
}

/// Best effort: a journal left behind is recognised as stale at the next start.
pub fn remove(store: &Path, names: &SubjectNames, credential: &str) {
    let _ = std::fs::remove_file(journal_path(store, names, credential));
}
