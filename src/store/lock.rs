//! File locks that order processes on one store: the instance claim (one sidecar per file
//! store, for its whole life) and the helper lock (a rotation helper holds it shared while it
//! works; a starting sidecar waits for it exclusively before it reads anything).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::durable::parent_dir;
use super::StoreError;

fn file_name(store: &Path) -> &str {
    store
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("store")
}

pub fn lock_path(store: &Path) -> PathBuf {
    parent_dir(store).join(format!(".{}.lock", file_name(store)))
}

/// Held exclusively by the one sidecar that uses the store, for its whole life.
pub fn instance_lock_path(store: &Path) -> PathBuf {
    parent_dir(store).join(format!(".{}.instance", file_name(store)))
}

pub fn open_lock(store: &Path) -> std::io::Result<File> {
    open_lock_file(&lock_path(store))
}

fn open_lock_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

/// Makes this process the store's only user: two sidecars on one store would both send
/// the same refresh token, and the second use burns the grant. Waits a little for one that
/// is shutting down (a restart that overlaps). The lock goes with the returned file (Rust
/// opens files close-on-exec, so helpers do not inherit it).
pub fn claim_store(store: &Path, patience: Duration) -> Result<File, StoreError> {
    let path = instance_lock_path(store);
    let err = |message: String| StoreError::Io {
        path: store.display().to_string(),
        message,
    };
    let file = open_lock_file(&path)
        .map_err(|e| err(format!("cannot open the lock file {}: {e}", path.display())))?;
    match lock_within(&file, patience) {
        Ok(true) => Ok(file),
        Ok(false) => Err(err(format!(
            "another bearerd is using this store (it holds {}); two sidecars sharing one store would send the same refresh token twice: give each its own store file",
            path.display()
        ))),
        Err(e) => Err(err(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// Takes `file`'s exclusive lock, trying until `patience` runs out: `false` if it could not.
fn lock_within(file: &File, patience: Duration) -> std::io::Result<bool> {
    let deadline = Instant::now() + patience;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(true),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Waits until no rotation helper of an earlier run is at work on this store. A helper
/// gives up by itself after its request timeout, so the wait is bounded.
pub fn wait_for_helpers(store: &Path, patience: Duration) -> Result<(), StoreError> {
    let lock = lock_path(store);
    let err = |message: String| StoreError::Io {
        path: lock.display().to_string(),
        message,
    };
    let file = open_lock(store).map_err(|e| err(format!("cannot open the lock file: {e}")))?;
    match lock_within(&file, patience) {
        Ok(true) => file.unlock().map_err(|e| err(e.to_string())),
        Ok(false) => Err(err(format!(
            "a rotation helper of an earlier run still holds it after {patience:?}"
        ))),
        Err(e) => Err(err(e.to_string())),
    }
}
