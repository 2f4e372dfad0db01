//! The audit file: one JSON line per request a credential was used for (which credential,
//! which upstream, which subject tag, when), for operators who must keep that record.
//!
//! The proxy hands each record to a bounded queue and goes on; one writer task appends
//! them and flushes whenever the queue runs dry. A full queue drops the record and counts
//! it (`bearerd_events_dropped_total{sink="audit"}`): requests never wait for the disk.

use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};

use super::{EventBus, Sink};
use std::sync::Arc;

const QUEUE: usize = 8192;

/// One use of a credential. Never a token, nor a subject in clear.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    /// RFC 3339, milliseconds.
    pub at: String,
    #[serde(serialize_with = "text")]
    pub credential: Arc<str>,
    #[serde(serialize_with = "text")]
    pub upstream: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_tag: Option<String>,
    pub request_id: String,
    pub method: String,
    pub status: u16,
    /// Which of the credential's tokens was sent.
    pub generation: u64,
}

fn text<S: serde::Serializer>(s: &Arc<str>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(s)
}

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit_file {path}: {source}")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

/// The proxy's end: takes records without waiting.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<AuditRecord>,
    bus: Arc<EventBus>,
}

impl AuditLog {
    pub fn record(&self, record: AuditRecord) {
        if self.queue.try_send(record).is_err() {
            self.bus.count_dropped(Sink::Audit);
        }
    }
}

/// The writer's end, to run on the control runtime.
pub struct AuditWriter {
    path: PathBuf,
    file: std::fs::File,
    queue: mpsc::Receiver<AuditRecord>,
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
    let (tx, rx) = mpsc::channel(QUEUE);
    Ok((
        AuditLog { queue: tx, bus },
        AuditWriter {
            path: path.to_path_buf(),
            file,
            queue: rx,
        },
    ))
}

impl AuditWriter {
    /// Appends records until `shutdown` changes (what is queued then is written first).
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut out = tokio::io::BufWriter::new(tokio::fs::File::from_std(self.file));
        loop {
            let record = tokio::select! {
                r = self.queue.recv() => r,
                _ = shutdown.changed() => None,
            };
            let Some(record) = record else { break };
            let mut batch = vec![record];
            while let Ok(r) = self.queue.try_recv() {
                batch.push(r);
            }
            let mut bytes = Vec::new();
            for r in &batch {
                if serde_json::to_writer(&mut bytes, r).is_ok() {
                    bytes.push(b'\n');
                }
            }
            if let Err(e) = async {
                out.write_all(&bytes).await?;
                out.flush().await
            }
            .await
            {
                tracing::error!(path = %self.path.display(), error = %e, records = batch.len(), "could not append to the audit file");
            }
        }
        while let Ok(r) = self.queue.try_recv() {
            if let Ok(mut line) = serde_json::to_vec(&r) {
                line.push(b'\n');
                let _ = out.write_all(&line).await;
            }
        }
        let _ = out.flush().await;
    }
}
