//! The audit file: one JSON line per request a credential was used for (which credential,
//! which upstream, which subject tag, when), for operators who must keep that record.
//!
//! The proxy pushes each record to a bounded buffer and goes on; one writer task takes the
//! buffer every 100 ms and appends it in one write. A full buffer drops the record and counts
//! it (`bearerd_events_dropped_total{sink="audit"}`): requests never wait for the disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::{EventBus, Sink};

/// Records that may wait for the writer; beyond it new ones are dropped and counted.
const QUEUE: usize = 65_536;

/// How often the writer takes what waits: requests only push to a buffer, and nothing
/// wakes the writer per record (a wake is a system call on the request's thread).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// One use of a credential. Never a token, nor a subject in clear.
pub struct AuditRecord {
    pub at: std::time::SystemTime,
    pub credential: Arc<str>,
    pub upstream: Arc<str>,
    pub subject_tag: Option<String>,
    pub request_id: http::HeaderValue,
    pub method: http::Method,
    pub status: u16,
    /// Which of the credential's tokens was sent.
    pub generation: u64,
}

/// One line of the file.
#[derive(Serialize)]
struct Line<'a> {
    /// RFC 3339, milliseconds.
    at: String,
    credential: &'a str,
    upstream: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject_tag: Option<&'a str>,
    request_id: &'a str,
    method: &'a str,
    status: u16,
    generation: u64,
}

impl AuditRecord {
    fn write_line(&self, out: &mut Vec<u8>) {
        let line = Line {
            at: humantime::format_rfc3339_millis(self.at).to_string(),
            credential: &self.credential,
            upstream: &self.upstream,
            subject_tag: self.subject_tag.as_deref(),
            request_id: self.request_id.to_str().unwrap_or("-"),
            method: self.method.as_str(),
            status: self.status,
            generation: self.generation,
        };
        if serde_json::to_writer(&mut *out, &line).is_ok() {
            out.push(b'\n');
        }
    }
}

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit_file {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

/// The proxy's end: takes records without waiting (a short, uncontended lock).
#[derive(Clone)]
pub struct AuditLog {
    waiting: Arc<Mutex<Vec<AuditRecord>>>,
    bus: Arc<EventBus>,
}

impl AuditLog {
    pub fn record(&self, record: AuditRecord) {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if waiting.len() >= QUEUE {
            drop(waiting);
            self.bus.count_dropped(Sink::Audit);
            return;
        }
        waiting.push(record);
    }
}

/// The writer's end, to run on the control runtime.
pub struct AuditWriter {
    path: PathBuf,
    file: std::fs::File,
    waiting: Arc<Mutex<Vec<AuditRecord>>>,
}

/// Opens (or creates, readable by its owner only) the audit file for appending.
pub fn open(path: &Path, bus: Arc<EventBus>) -> Result<(AuditLog, AuditWriter), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| AuditError {
            path: path.to_path_buf(),
            source,
        })?;
    let waiting = Arc::new(Mutex::new(Vec::new()));
    Ok((
        AuditLog {
            waiting: Arc::clone(&waiting),
            bus,
        },
        AuditWriter {
            path: path.to_path_buf(),
            file,
            waiting,
        },
    ))
}

impl AuditWriter {
    /// Appends what waits every 100 ms until `shutdown` changes, then what is left.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut out = tokio::fs::File::from_std(self.file);
        let mut batch = Vec::new();
        let mut bytes = Vec::new();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => false,
                _ = shutdown.changed() => true,
            };
            std::mem::swap(
                &mut batch,
                &mut *self.waiting.lock().unwrap_or_else(|p| p.into_inner()),
            );
            if !batch.is_empty() {
                bytes.clear();
                for r in batch.drain(..) {
                    r.write_line(&mut bytes);
                }
                if let Err(e) = out.write_all(&bytes).await {
                    tracing::error!(path = %self.path.display(), error = %e, "could not append to the audit file");
                }
            }
            if stopping {
                let _ = out.flush().await;
                return;
            }
        }
    }
}
