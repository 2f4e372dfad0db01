//! Refresh-token rotation that survives the sidecar's death.
//!
//! Between the provider committing a rotation and the sidecar's fsync of the new refresh
//! token there is a window of a few milliseconds. A `kill -9` inside it loses the only copy
//! of the new token; the next start must send the old one, and a provider without a reuse
//! grace revokes the whole grant. So the rotating exchange runs in a short-lived child
//! process, the rotation helper (`bearerd rotation-helper`, the same binary): it sends the
//! token request the sidecar built, writes any rotated refresh token to the store's journal
//! (`store::journal`), and only then hands the answer back. A kill of the sidecar leaves the
//! helper running in its own process group; the next start waits for it and applies its
//! journal. What stays open is the loss of both processes at once (a machine or a whole
//! container dying); that needs the provider's grace period.
//!
//! The request travels over a pipe, never on the command line or in the environment: it
//! holds the refresh token, the client secret and the store key.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::transport::{error_chain, load_identity, token_http_client, RawResponse};
use crate::config::ClientIdentity;
use crate::store::journal::{self, JournalEntry, HELPER_MARGIN, HELPER_REQUEST_MAX};
use crate::store::lock;
use crate::store::sealed::Sealer;

/// Set once the provider answered: from then on the helper's deadline no longer ends it,
/// so a journaled token always gets its answer out too.
static ANSWERED: AtomicBool = AtomicBool::new(false);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Where a credential's rotations are journaled, and the program that runs the helper.
pub struct DurableRotation {
    pub helper: PathBuf,
    pub store: PathBuf,
    pub key: SecretBox<[u8; 32]>,
    pub credential: String,
}

/// What the sidecar asks of the helper.
#[derive(Serialize, Deserialize)]
struct HelperRequest {
    /// The sidecar's pid: a helper whose parent died before it sent anything sends nothing.
    parent: u32,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
    timeout_ms: u64,
    ca_file: Option<PathBuf>,
    /// tls_client_auth: the helper reads the certificate and key itself.
    #[serde(default)]
    client_identity: Option<ClientIdentity>,
    store: PathBuf,
    key: String,
    credential: String,
    /// Fingerprint of the refresh token in the request.
    replaces: String,
}

/// The helper's answer: the provider's response, or why there is none.
#[derive(Serialize, Deserialize)]
pub enum HelperAnswer {
    Response {
        status: u16,
        retry_after: Option<String>,
        body: String,
        journaled: bool,
    },
    Failed {
        timeout: bool,
        message: String,
    },
}

/// Why the helper gave no response.
pub enum HelperError {
    /// It did not start: nothing was sent, the sidecar may send the request itself.
    NotStarted(String),
    /// The request failed (or may have been sent and its answer lost).
    Failed { timeout: bool, message: String },
}

impl DurableRotation {
    /// Runs one token request through the helper and returns the provider's response.
    pub async fn send(
        &self,
        request: &reqwest::Request,
        timeout: Duration,
        ca_file: Option<PathBuf>,
        client_identity: Option<ClientIdentity>,
        replaces: String,
    ) -> Result<RawResponse, HelperError> {
        let timeout = timeout.min(HELPER_REQUEST_MAX);
        // Every header the grant sets is text; were one not, the request goes out directly
        // rather than without it.
        let headers = request
            .headers()
            .iter()
            .map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| HelperError::NotStarted("a token request header is not text".into()))?;
        let body = request.body().and_then(|b| b.as_bytes()).unwrap_or(&[]);
        let ask = HelperRequest {
            parent: std::process::id(),
            url: request.url().to_string(),
            headers,
            body: b64().encode(body),
            timeout_ms: timeout.as_millis() as u64,
            ca_file,
            client_identity,
            store: self.store.clone(),
            key: b64().encode(self.key.expose_secret()),
            credential: self.credential.clone(),
            replaces,
        };
        let ask = SecretString::from(
            serde_json::to_string(&ask).map_err(|e| HelperError::NotStarted(e.to_string()))?,
        );
        let mut child = tokio::process::Command::new(&self.helper)
            .arg("rotation-helper")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a signal to the sidecar's group does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                HelperError::NotStarted(format!(
                    "cannot start the rotation helper {}: {e}",
                    self.helper.display()
                ))
            })?;
        let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(HelperError::NotStarted("the helper has no pipes".into()));
        };
        let exchange = async {
            // A failed write means the helper died before reading: it sent nothing.
            stdin
                .write_all(ask.expose_secret().as_bytes())
                .await
                .map_err(|e| HelperError::NotStarted(format!("the rotation helper: {e}")))?;
            drop(stdin);
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out).await;
            Ok(out)
        };
        // The helper ends itself after the request timeout; this bound is a safety net.
        let out = match tokio::time::timeout(timeout + 2 * HELPER_MARGIN, exchange).await {
            Ok(Ok(out)) => out,
            failed => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                return Err(match failed {
                    Ok(Err(e)) => e,
                    _ => HelperError::Failed {
                        timeout: true,
                        message: "the rotation helper did not answer".into(),
                    },
                });
            }
        };
        let _ = child.wait().await;
        match serde_json::from_slice::<HelperAnswer>(&out) {
            Ok(HelperAnswer::Response {
                status,
                retry_after,
                body,
                journaled,
            }) => {
                if !journaled {
                    tracing::warn!(
                        credential = %self.credential,
                        "the rotation helper could not journal the response; the sidecar persists it"
                    );
                }
                Ok(RawResponse {
                    status,
                    retry_after: retry_after.and_then(|v| http::HeaderValue::from_str(&v).ok()),
                    body: b64().decode(body).unwrap_or_default(),
                })
            }
            Ok(HelperAnswer::Failed { timeout, message }) => {
                Err(HelperError::Failed { timeout, message })
            }
            Err(_) => Err(HelperError::Failed {
                timeout: false,
                message: "the rotation helper ended without an answer".into(),
            }),
        }
    }

    /// The refresh token a helper journaled for the exchange that sent the token with this
    /// fingerprint, when its answer never arrived (the helper was killed, or timed out after
    /// the journal was written). Without this, the next attempt would send the spent token.
    pub fn journaled_successor(&self, replaced: &str) -> Option<SecretString> {
        let sealer = Sealer::new(self.key.expose_secret());
        let entry = journal::read(&sealer, &self.store, &self.credential).ok()??;
        (entry.replaces.last().map(String::as_str) == Some(replaced)).then_some(entry.refresh_token)
    }
}

/// `bearerd rotation-helper`: reads one request from stdin, answers on stdout. Never
/// prints anything else: its stdout may be a pipe to a sidecar that is gone.
pub fn helper_main() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::from(2);
    };
    // A stop of the whole service (systemd sends SIGTERM to every process of the unit) lets
    // the exchange finish: the helper ends by itself well within any stop timeout.
    let _ignored = runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ]
        .map(|k| signal(k).ok())
    });
    let mut input = String::new();
    if std::io::stdin().read_to_string(&mut input).is_err() {
        return ExitCode::from(2);
    }
    let input = SecretString::from(input);
    let Ok(ask) = serde_json::from_str::<HelperRequest>(input.expose_secret()) else {
        return ExitCode::from(2);
    };
    // Whatever happens below, the helper ends: a starting sidecar waits for its lock.
    let deadline = Duration::from_millis(ask.timeout_ms) + HELPER_MARGIN;
    std::thread::spawn(move || {
        std::thread::sleep(deadline);
        if !ANSWERED.load(Ordering::SeqCst) {
            std::process::exit(3);
        }
    });
    let answer = match run_helper(&runtime, &ask) {
        Some(a) => a,
        None => return ExitCode::from(4),
    };
    let mut out = std::io::stdout().lock();
    if let Ok(text) = serde_json::to_vec(&answer) {
        let _ = out.write_all(&text);
        let _ = out.flush();
    }
    ExitCode::SUCCESS
}

/// `None`: the sidecar died before the request was sent, so it is not sent at all.
fn run_helper(runtime: &tokio::runtime::Runtime, ask: &HelperRequest) -> Option<HelperAnswer> {
    let failed = |message: String| {
        Some(HelperAnswer::Failed {
            timeout: false,
            message,
        })
    };
    let lock = match lock::open_lock(&ask.store) {
        Ok(l) => l,
        Err(e) => return failed(format!("cannot open the store lock: {e}")),
    };
    if let Err(e) = lock.lock_shared() {
        return failed(format!("cannot lock the store: {e}"));
    }
    // With the lock held, a new sidecar waits for this helper; without a parent, one may
    // already have started and used the refresh token itself.
    if std::os::unix::process::parent_id() != ask.parent {
        return None;
    }
    let key: [u8; 32] = b64().decode(&ask.key).ok()?.try_into().ok()?;
    let sealer = Sealer::new(&key);
    let response = runtime.block_on(send(ask));
    let (status, retry_after, body) = match response {
        Ok(r) => r,
        Err(answer) => return Some(answer),
    };
    ANSWERED.store(true, Ordering::SeqCst);
    let mut journaled = true;
    if (200..300).contains(&status) {
        if let Some(rt) = rotated_refresh_token(&body) {
            // An unreadable journal is not carried on: the new entry replaces it.
            let previous = journal::read(&sealer, &ask.store, &ask.credential)
                .ok()
                .flatten();
            let entry = JournalEntry::after(previous, rt, ask.replaces.clone());
            journaled = journal::write(&sealer, &ask.store, &ask.credential, &entry).is_ok();
        }
    }
    drop(lock);
    Some(HelperAnswer::Response {
        status,
        retry_after,
        body: b64().encode(body),
        journaled,
    })
}

async fn send(ask: &HelperRequest) -> Result<(u16, Option<String>, Vec<u8>), HelperAnswer> {
    let failed = |timeout: bool, message: String| HelperAnswer::Failed { timeout, message };
    let timeout = Duration::from_millis(ask.timeout_ms);
    let identity = match &ask.client_identity {
        Some(id) => Some(load_identity(id).map_err(|m| failed(false, m))?.identity),
        None => None,
    };
    let client = token_http_client(timeout, ask.ca_file.as_deref(), identity)
        .map_err(|m| failed(false, m))?;
    let mut req = client.post(&ask.url);
    for (k, v) in &ask.headers {
        req = req.header(k, v);
    }
    let body = b64().decode(&ask.body).unwrap_or_default();
    let resp = req.body(body).send().await.map_err(|e| {
        failed(
            e.is_timeout(),
            format!("token endpoint unreachable: {}", error_chain(&e)),
        )
    })?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.map_err(|e| {
        failed(
            e.is_timeout(),
            format!("token response broke off: {}", error_chain(&e)),
        )
    })?;
    Ok((status, retry_after, body.to_vec()))
}

/// The `refresh_token` of a success body, if any: what must not be lost.
fn rotated_refresh_token(body: &[u8]) -> Option<SecretString> {
    #[derive(Deserialize)]
    struct Rotated {
        refresh_token: Option<String>,
    }
    let parsed: Rotated = serde_json::from_slice(body).ok()?;
    parsed
        .refresh_token
        .filter(|t| !t.is_empty())
        .map(SecretString::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rotation(dir: &std::path::Path) -> DurableRotation {
        DurableRotation {
            helper: PathBuf::from("/nonexistent/bearerd"),
            store: dir.join("tokens.store"),
            key: SecretBox::new(Box::new([9u8; 32])),
            credential: "api".into(),
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[test]
    fn a_lost_answer_is_recovered_from_the_journal_for_the_token_it_replaced() {
        let dir = std::env::temp_dir().join(format!("bearerd-rot-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = rotation(&dir);
        let fp = crate::store::fingerprint;
        assert!(r.journaled_successor(&fp(&secret("rt-1"))).is_none());
        let sealer = Sealer::new(r.key.expose_secret());
        let entry = JournalEntry::after(None, secret("rt-2"), fp(&secret("rt-1")));
        journal::write(&sealer, &r.store, &r.credential, &entry).unwrap();
        let got = r.journaled_successor(&fp(&secret("rt-1"))).unwrap();
        assert_eq!(got.expose_secret(), "rt-2");
        // Not for another exchange: that one sent a different token.
        assert!(r.journaled_successor(&fp(&secret("rt-0"))).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_helper_that_cannot_start_sent_nothing() {
        let dir = std::env::temp_dir();
        let request = reqwest::Client::new()
            .post("http://127.0.0.1:9/token")
            .body("grant_type=refresh_token")
            .build()
            .unwrap();
        let sent = rotation(&dir)
            .send(&request, Duration::from_secs(1), None, None, "fp".into())
            .await;
        assert!(matches!(sent, Err(HelperError::NotStarted(_))));
    }

    #[test]
    fn only_a_success_body_with_a_token_counts_as_a_rotation() {
        assert_eq!(
            rotated_refresh_token(br#"{"access_token":"a","refresh_token":"r"}"#)
                .unwrap()
                .expose_secret(),
            "r"
        );
        assert!(rotated_refresh_token(br#"{"access_token":"a"}"#).is_none());
        assert!(rotated_refresh_token(br#"{"refresh_token":""}"#).is_none());
        assert!(rotated_refresh_token(b"<html>").is_none());
    }
}
