//! Refresh-token rotation that survives the sidecar's death.
//!
//! Between the provider committing a rotation and the sidecar's fsync of the new refresh
//! token there is a window of a few milliseconds. A `kill -9` inside it loses the only copy
//! of the new token; the next start must send the old one, and a provider without a reuse
//! grace revokes the whole grant. So rotating exchanges run in a child process, the rotation
//! helper (`bearerd rotation-helper`, the same binary): it sends the token request the
//! sidecar built, writes any rotated refresh token to the store's journal, and only then
//! hands the answer back. A kill of the sidecar leaves the helper running in its own process
//! group: it finishes the exchanges it has, and ends when its input closes.
//! - File store (`store::journal`): the next start waits for the helper (the store lock it
//!   holds) and applies its journals.
//! - Redis (`store::redis_journal`): the helper marks the exchange in flight in Redis before
//!   sending it and journals the answer there; whoever sends next under the lease waits for
//!   a mark on its token and takes a journaled successor instead (`before_send`).
//!
//! What stays open is the loss of both processes at once (a machine or a whole container
//! dying); that needs the provider's grace period.
//!
//! One helper serves every exchange of the sidecar, many at once: with thousands of
//! subjects, a process per exchange would be dozens of spawns a second. Requests and
//! answers are JSON lines with an id, over pipes, never on the command line or in the
//! environment: they hold refresh tokens, the client secret and the store key. A helper that
//! dies is replaced at the next exchange; the exchanges it had fail as transient errors (a
//! journal it wrote is still found).

pub mod policy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::config::ClientIdentity;
use crate::material::identity::load_identity;
use crate::oauth::carrier::{Carrier, CarrierError};
use crate::oauth::transport::{error_chain, token_http_client, RawResponse};
use crate::store::journal::{self, JournalEntry, HELPER_MARGIN, HELPER_REQUEST_MAX};
use crate::store::lock;
use crate::store::sealed::Sealer;
use crate::store::{
    HelperJournal, HelperJournalConnection, JournalError, RedisJournalTarget, SubjectNames,
};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Where a credential's rotations are journaled, and the helper that runs them.
pub struct DurableRotation {
    pub helper: Arc<RotationHelper>,
    pub journal: HelperJournal,
    /// The record's key in the store (a credential's name, or a subject's record key).
    pub credential: String,
}

/// The sidecar's side of its rotation helper: started at the first exchange, started again
/// after it died.
pub struct RotationHelper {
    program: PathBuf,
    running: tokio::sync::Mutex<Option<Arc<HelperConnection>>>,
}

/// A running helper: its input, and the exchanges waiting for its answers. Dropping it
/// closes the helper's input, which ends the helper once its exchanges are done.
struct HelperConnection {
    stdin: tokio::sync::Mutex<tokio::process::ChildStdin>,
    answers: Arc<Answers>,
    next_id: AtomicU64,
    _child: tokio::process::Child,
}

/// Shared with the task that reads the helper's output (which must not keep its input
/// open: the helper would never end).
struct Answers {
    waiting: Mutex<HashMap<u64, oneshot::Sender<HelperAnswer>>>,
    alive: AtomicBool,
}

/// A request as it travels: an id, then the request.
#[derive(Serialize, Deserialize)]
struct Framed<T> {
    id: u64,
    #[serde(flatten)]
    body: T,
}

impl RotationHelper {
    pub fn new(program: PathBuf) -> Arc<RotationHelper> {
        Arc::new(RotationHelper {
            program,
            running: tokio::sync::Mutex::new(None),
        })
    }

    /// The running helper, started if there is none (or the last one died).
    async fn connection(&self) -> Result<Arc<HelperConnection>, CarrierError> {
        let mut running = self.running.lock().await;
        if let Some(c) = running
            .as_ref()
            .filter(|c| c.answers.alive.load(Ordering::SeqCst))
        {
            return Ok(Arc::clone(c));
        }
        let mut child = tokio::process::Command::new(&self.program)
            .arg("rotation-helper")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a signal to the sidecar's group does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                CarrierError::NotStarted(format!(
                    "cannot start the rotation helper {}: {e}",
                    self.program.display()
                ))
            })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(CarrierError::NotStarted("the helper has no pipes".into()));
        };
        let answers = Arc::new(Answers {
            waiting: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
        });
        tokio::spawn(read_answers(Arc::clone(&answers), stdout));
        let connection = Arc::new(HelperConnection {
            stdin: tokio::sync::Mutex::new(stdin),
            answers,
            next_id: AtomicU64::new(1),
            _child: child,
        });
        *running = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

/// Hands each answer line to the exchange waiting for it. When the helper's output ends, it
/// is dead: the exchanges still waiting get no answer (their senders are dropped).
async fn read_answers(answers: Arc<Answers>, stdout: tokio::process::ChildStdout) {
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let line = SecretString::from(line);
        if let Ok(framed) = serde_json::from_str::<Framed<HelperAnswer>>(line.expose_secret()) {
            let waiter = lock_ignoring_poison(&answers.waiting).remove(&framed.id);
            if let Some(w) = waiter {
                let _ = w.send(framed.body);
            }
        }
    }
    answers.alive.store(false, Ordering::SeqCst);
    lock_ignoring_poison(&answers.waiting).clear();
}

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
    journal: JournalTarget,
    /// Fingerprint of the refresh token in the request.
    replaces: String,
}

/// Where the helper journals a rotated refresh token.
#[derive(Serialize, Deserialize)]
enum JournalTarget {
    /// Beside the file store (the store key in base64), holding the store's lock.
    File {
        store: PathBuf,
        key: String,
        credential: String,
    },
    /// In Redis, after marking the exchange in flight there.
    Redis(RedisJournalTarget),
}

/// The helper's answer: the provider's response, or why there is none.
#[derive(Serialize, Deserialize)]
pub enum HelperAnswer {
    Response {
        status: u16,
        retry_after: Option<String>,
        body: String,
        journaled: bool,
        /// RFC 9449 §8: the server's `DPoP-Nonce`, for the proof of the next request.
        #[serde(default)]
        dpop_nonce: Option<String>,
    },
    Failed {
        timeout: bool,
        message: String,
    },
    /// Nothing was sent: the exchange could not be marked in flight in the store.
    NotSent {
        message: String,
    },
}

impl HelperAnswer {
    /// The provider's response as the endpoint reads it, or why there is none.
    fn into_raw(self, credential: &dyn std::fmt::Display) -> Result<RawResponse, CarrierError> {
        match self {
            HelperAnswer::Response {
                status,
                retry_after,
                body,
                journaled,
                dpop_nonce,
            } => {
                if !journaled {
                    tracing::warn!(
                        credential = %credential,
                        "the rotation helper could not journal the response; the sidecar persists it"
                    );
                }
                Ok(RawResponse {
                    status,
                    retry_after: retry_after.and_then(|v| http::HeaderValue::from_str(&v).ok()),
                    body: b64().decode(body).unwrap_or_default(),
                    dpop_nonce,
                })
            }
            HelperAnswer::Failed { timeout, message } => {
                Err(CarrierError::Failed { timeout, message })
            }
            HelperAnswer::NotSent { message } => Err(CarrierError::NotSent(message)),
        }
    }
}

#[async_trait::async_trait]
impl Carrier for DurableRotation {
    async fn successor_before_send(
        &self,
        refresh_token: &SecretString,
    ) -> Result<Option<SecretString>, crate::oauth::carrier::RotationUnknown> {
        self.before_send(refresh_token)
            .await
            .map_err(|e| crate::oauth::carrier::RotationUnknown(Box::new(e)))
    }

    /// Runs one token request through the helper and returns the provider's response.
    async fn send(
        &self,
        request: &reqwest::Request,
        timeout: Duration,
        ca_file: Option<PathBuf>,
        client_identity: Option<ClientIdentity>,
        replaces: String,
    ) -> Result<RawResponse, CarrierError> {
        let timeout = timeout.min(HELPER_REQUEST_MAX);
        // Every header the grant sets is text; were one not, the request goes out directly
        // rather than without it.
        let headers = request
            .headers()
            .iter()
            .map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| CarrierError::NotStarted("a token request header is not text".into()))?;
        let body = request.body().and_then(|b| b.as_bytes()).unwrap_or(&[]);
        let ask = HelperRequest {
            parent: std::process::id(),
            url: request.url().to_string(),
            headers,
            body: b64().encode(body),
            timeout_ms: timeout.as_millis() as u64,
            ca_file,
            client_identity,
            journal: match &self.journal {
                HelperJournal::File { store, key } => JournalTarget::File {
                    store: store.clone(),
                    key: b64().encode(key.expose_secret()),
                    credential: self.credential.clone(),
                },
                HelperJournal::Redis { target, reader } => {
                    JournalTarget::Redis(reader.current(target))
                }
            },
            replaces,
        };
        let connection = self.helper.connection().await?;
        let id = connection.next_id.fetch_add(1, Ordering::Relaxed);
        let mut line = serde_json::to_string(&Framed { id, body: ask })
            .map_err(|e| CarrierError::NotStarted(e.to_string()))?;
        line.push('\n');
        let line = SecretString::from(line);
        let (answered, answer) = oneshot::channel();
        lock_ignoring_poison(&connection.answers.waiting).insert(id, answered);
        {
            let mut stdin = connection.stdin.lock().await;
            // A failed write: the helper died before it could read the request (a line it
            // did not read whole is never run), so nothing was sent.
            if let Err(e) = stdin.write_all(line.expose_secret().as_bytes()).await {
                lock_ignoring_poison(&connection.answers.waiting).remove(&id);
                connection.answers.alive.store(false, Ordering::SeqCst);
                return Err(CarrierError::NotStarted(format!(
                    "the rotation helper: {e}"
                )));
            }
            let _ = stdin.flush().await;
        }
        // The helper bounds each exchange itself; this bound is a safety net.
        let answer = match tokio::time::timeout(timeout + 2 * HELPER_MARGIN, answer).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => {
                return Err(CarrierError::Failed {
                    timeout: false,
                    message: "the rotation helper ended without an answer".into(),
                })
            }
            Err(_) => {
                lock_ignoring_poison(&connection.answers.waiting).remove(&id);
                return Err(CarrierError::Failed {
                    timeout: true,
                    message: "the rotation helper did not answer".into(),
                });
            }
        };
        answer.into_raw(&self.credential)
    }

    /// The refresh token a helper journaled for the exchange that sent the token with this
    /// fingerprint, when its answer never arrived (the helper was killed, or timed out after
    /// the journal was written). Without this, the next attempt would send the spent token.
    async fn journaled_successor(&self, replaced: &str) -> Option<SecretString> {
        match &self.journal {
            HelperJournal::File { store, key } => {
                let sealer = Sealer::new(key.expose_secret());
                let names = SubjectNames::new(key.expose_secret());
                let entry = journal::read(&sealer, &names, store, &self.credential).ok()??;
                (entry.replaces.last().map(String::as_str) == Some(replaced))
                    .then_some(entry.refresh_token)
            }
            HelperJournal::Redis { target, reader } => {
                reader.successor(target, replaced).await.ok().flatten()
            }
        }
    }
}

/// Sends a grant's rotating exchanges (of the record `record`) through the rotation helper,
/// when the store journals rotations (a file store, Redis) and the sidecar has a helper;
/// other grants have nothing to lose.
pub fn carry_rotations(
    grant: &mut crate::grant::Grant,
    store: &dyn crate::store::TokenStore,
    helper: Option<&Arc<RotationHelper>>,
    record: &str,
) {
    if let (Some(journal), Some(helper)) = (store.helper_journal(record), helper) {
        grant.make_rotation_durable(Box::new(DurableRotation {
            helper: Arc::clone(helper),
            journal,
            credential: record.to_string(),
        }));
    }
}

impl DurableRotation {
    /// Looks before `refresh_token` is sent (under the lease) for a rotation of it that a
    /// holder which died may have started: waits while one is in flight (at most as long as
    /// its mark lasts), then answers the successor a helper journaled, to send instead.
    /// A store that cannot be asked is an error: sending without knowing could burn the
    /// grant. The file store needs none of this: a starting sidecar waits for its previous
    /// helper and applies its journal before anything is sent.
    pub async fn before_send(
        &self,
        refresh_token: &SecretString,
    ) -> Result<Option<SecretString>, crate::store::StoreError> {
        let HelperJournal::Redis { target, reader } = &self.journal else {
            return Ok(None);
        };
        let fingerprint = crate::store::fingerprint(refresh_token);
        let waited = std::time::Instant::now();
        // A mark lasts an exchange's deadline and margin: this bounds the wait even if
        // marks kept coming back.
        let limit = HELPER_REQUEST_MAX + 2 * HELPER_MARGIN;
        let mut told = false;
        while let Some(lasts) = reader.in_flight(target, &fingerprint).await? {
            if waited.elapsed() >= limit {
                break;
            }
            if !told {
                tracing::info!(
                    credential = %crate::store::record_name(&self.credential),
                    "a rotation of this refresh token is in flight (its holder died?); waiting for its answer"
                );
                told = true;
            }
            tokio::time::sleep(IN_FLIGHT_POLL.min(lasts.max(Duration::from_millis(10)))).await;
        }
        let successor = reader.successor(target, &fingerprint).await?;
        if successor.is_some() {
            tracing::warn!(
                credential = %crate::store::record_name(&self.credential),
                "a replica's rotation of this refresh token was journaled before it died; the new refresh token is used"
            );
        }
        Ok(successor)
    }
}

/// How often a replica looks whether a rotation in flight has ended.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(100);

/// `bearerd rotation-helper`: serves the exchanges its sidecar sends as JSON lines on
/// stdin, many at once, answering each on stdout as a JSON line. Holds the store's lock
/// (shared) for its whole life, so a sidecar starting on the store waits for it. When stdin
/// closes (the sidecar is gone) it finishes the exchanges under way, journaling what they
/// rotated, and ends. Never prints anything else.
pub fn helper_main() -> ExitCode {
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return ExitCode::from(2);
    };
    runtime.block_on(serve())
}

async fn serve() -> ExitCode {
    // A stop of the whole service (systemd sends SIGTERM to every process of the unit) lets
    // the exchanges under way finish: each ends by itself within its deadline.
    let _ignored = {
        use tokio::signal::unix::{signal, SignalKind};
        [
            SignalKind::terminate(),
            SignalKind::interrupt(),
            SignalKind::hangup(),
        ]
        .map(|k| signal(k).ok())
    };
    let parent = std::os::unix::process::parent_id();
    let out = Arc::new(tokio::sync::Mutex::new(tokio::io::stdout()));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut under_way = tokio::task::JoinSet::new();
    // The store lock, taken at the first request (which names the store) and held to the end.
    let mut store_lock: Option<std::fs::File> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let line = SecretString::from(line);
        let Ok(framed) = serde_json::from_str::<Framed<HelperRequest>>(line.expose_secret()) else {
            continue;
        };
        let (id, ask) = (framed.id, framed.body);
        if let (None, JournalTarget::File { store, .. }) = (&store_lock, &ask.journal) {
            match lock::open_lock(store).and_then(|l| l.lock_shared().map(|()| l)) {
                Ok(l) => store_lock = Some(l),
                Err(e) => {
                    let answer = HelperAnswer::Failed {
                        timeout: false,
                        message: format!("cannot lock the store: {e}"),
                    };
                    write_answer(&out, id, &answer).await;
                    continue;
                }
            }
        }
        // With the lock held, no new sidecar starts on the store; a request that arrives
        // after its sidecar died is not sent: nobody would use the answer.
        if std::os::unix::process::parent_id() != parent || ask.parent != parent {
            continue;
        }
        let out = Arc::clone(&out);
        under_way.spawn(async move {
            if let Some(answer) = exchange(&ask).await {
                write_answer(&out, id, &answer).await;
            }
        });
        // Reap the finished ones as we go, so the set stays small.
        while under_way.try_join_next().is_some() {}
    }
    while under_way.join_next().await.is_some() {}
    drop(store_lock);
    ExitCode::SUCCESS
}

async fn write_answer(out: &tokio::sync::Mutex<tokio::io::Stdout>, id: u64, answer: &HelperAnswer) {
    if let Ok(mut line) = serde_json::to_vec(&Framed { id, body: answer }) {
        line.push(b'\n');
        let mut out = out.lock().await;
        // The sidecar may be gone: the journal already holds what matters.
        let _ = out.write_all(&line).await;
        let _ = out.flush().await;
    }
}

/// One exchange: sent within its deadline, any rotated refresh token journaled before the
/// answer goes back. On Redis, the exchange is marked in flight there before it is sent (and
/// not sent when it cannot be). `None` when the request is unusable.
async fn exchange(ask: &HelperRequest) -> Option<HelperAnswer> {
    let deadline = Duration::from_millis(ask.timeout_ms) + HELPER_MARGIN;
    let mut redis = match &ask.journal {
        JournalTarget::Redis(target) => match mark_in_flight(target, &ask.replaces, deadline).await
        {
            Ok(c) => Some(c),
            Err(why) => {
                let message = format!(
                    "the token request was not sent: the store did not take its in-flight mark ({why})"
                );
                return Some(HelperAnswer::NotSent { message });
            }
        },
        JournalTarget::File { .. } => None,
    };
    let response = match tokio::time::timeout(deadline, send(ask)).await {
        Ok(r) => r,
        Err(_) => Err(HelperAnswer::Failed {
            timeout: true,
            message: "the token request did not finish within its deadline".into(),
        }),
    };
    let (status, retry_after, body, dpop_nonce) = match response {
        Ok(r) => r,
        Err(answer) => {
            if let Some(c) = redis.as_mut() {
                c.clear_in_flight(&ask.replaces).await;
            }
            return Some(answer);
        }
    };
    // From here on there is no deadline: a journaled token always gets its answer out too.
    let mut journaled = true;
    if (200..300).contains(&status) {
        if let Some(rt) = rotated_refresh_token(&body) {
            journaled = match (&ask.journal, redis.as_mut()) {
                (
                    JournalTarget::File {
                        store,
                        key,
                        credential,
                    },
                    _,
                ) => {
                    journal_to_file(
                        store.clone(),
                        key,
                        credential.clone(),
                        rt,
                        ask.replaces.clone(),
                    )
                    .await
                }
                (JournalTarget::Redis(_), Some(c)) => journal_to_redis(c, rt, &ask.replaces).await,
                (JournalTarget::Redis(_), None) => false,
            };
        }
    }
    if let Some(c) = redis.as_mut() {
        c.clear_in_flight(&ask.replaces).await;
    }
    Some(HelperAnswer::Response {
        status,
        retry_after,
        body: b64().encode(body),
        journaled,
        dpop_nonce,
    })
}

/// Connects to Redis and marks the exchange of the token with fingerprint `replaces` in
/// flight for `deadline` and a margin (a few tries: nothing is sent without the mark).
async fn mark_in_flight(
    target: &RedisJournalTarget,
    replaces: &str,
    deadline: Duration,
) -> Result<HelperJournalConnection, JournalError> {
    let mut why = JournalError::BadKey;
    for attempt in 0..3 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match target.connect().await {
            Ok(mut c) => match c.mark_in_flight(replaces, deadline + HELPER_MARGIN).await {
                Ok(()) => return Ok(c),
                Err(e) => why = e.into(),
            },
            Err(e) => why = e,
        }
    }
    Err(why)
}

/// Journals a rotated token beside the file store, durably.
async fn journal_to_file(
    store: PathBuf,
    key: &str,
    credential: String,
    rt: SecretString,
    replaces: String,
) -> bool {
    let Some(key) = b64()
        .decode(key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
    else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        let (sealer, names) = (Sealer::new(&key), SubjectNames::new(&key));
        // An unreadable journal is not carried on: the new entry replaces it.
        let previous = journal::read(&sealer, &names, &store, &credential)
            .ok()
            .flatten();
        let entry = JournalEntry::after(previous, rt, replaces);
        journal::write(&sealer, &names, &store, &credential, &entry).is_ok()
    })
    .await
    .unwrap_or(false)
}

/// Journals a rotated token in Redis, trying for a while: the sidecar that asked may be
/// dead, and then the journal is the only copy.
async fn journal_to_redis(
    c: &mut HelperJournalConnection,
    rt: SecretString,
    replaces: &str,
) -> bool {
    let tried = std::time::Instant::now();
    loop {
        match c.journal(rt.clone(), replaces.to_string()).await {
            Ok(()) => return true,
            Err(_) if tried.elapsed() < HELPER_MARGIN => {
                tokio::time::sleep(Duration::from_millis(250)).await
            }
            Err(_) => return false,
        }
    }
}

/// A provider's answer as the helper passes it on: status, `Retry-After`, body, `DPoP-Nonce`.
type ProviderAnswer = (u16, Option<String>, Vec<u8>, Option<String>);

async fn send(ask: &HelperRequest) -> Result<ProviderAnswer, HelperAnswer> {
    let failed = |timeout: bool, message: String| HelperAnswer::Failed { timeout, message };
    let timeout = Duration::from_millis(ask.timeout_ms);
    // A client certificate is read again at every exchange (it may have rotated); the
    // client itself is built once per setting: building one loads the system's roots.
    let identity = match &ask.client_identity {
        Some(id) => Some(load_identity(id).map_err(|m| failed(false, m.to_string()))?),
        None => None,
    };
    let setting = (
        ask.timeout_ms,
        ask.ca_file.clone(),
        identity.as_ref().map(|i| i.fingerprint),
    );
    let cached = lock_ignoring_poison(clients()).get(&setting).cloned();
    let client = match cached {
        Some(c) => c,
        None => {
            let c = token_http_client(
                timeout,
                ask.ca_file.as_deref(),
                identity.map(|i| i.identity),
            )
            .map_err(|m| failed(false, m.to_string()))?;
            lock_ignoring_poison(clients()).insert(setting, c.clone());
            c
        }
    };
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
    let dpop_nonce = crate::oauth::transport::dpop_nonce_of(resp.headers());
    let body = resp.bytes().await.map_err(|e| {
        failed(
            e.is_timeout(),
            format!("token response broke off: {}", error_chain(&e)),
        )
    })?;
    Ok((status, retry_after, body.to_vec(), dpop_nonce))
}

/// The helper's token clients, one per (timeout, CA file, client certificate).
type ClientSetting = (u64, Option<PathBuf>, Option<[u8; 32]>);

fn clients() -> &'static Mutex<HashMap<ClientSetting, reqwest::Client>> {
    static CLIENTS: std::sync::OnceLock<Mutex<HashMap<ClientSetting, reqwest::Client>>> =
        std::sync::OnceLock::new();
    CLIENTS.get_or_init(|| Mutex::new(HashMap::new()))
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
            helper: RotationHelper::new(PathBuf::from("/nonexistent/bearerd")),
            journal: HelperJournal::File {
                store: dir.join("tokens.store"),
                key: secrecy::SecretBox::new(Box::new([9u8; 32])),
            },
            credential: "api".into(),
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_string())
    }

    #[tokio::test]
    async fn a_lost_answer_is_recovered_from_the_journal_for_the_token_it_replaced() {
        let dir = std::env::temp_dir().join(format!("bearerd-rot-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let r = rotation(&dir);
        let fp = crate::store::fingerprint;
        assert!(r.journaled_successor(&fp(&secret("rt-1"))).await.is_none());
        let sealer = Sealer::new(&[9u8; 32]);
        let entry = JournalEntry::after(None, secret("rt-2"), fp(&secret("rt-1")));
        let store = dir.join("tokens.store");
        let names = crate::store::SubjectNames::new(&[9u8; 32]);
        journal::write(&sealer, &names, &store, &r.credential, &entry).unwrap();
        let got = r.journaled_successor(&fp(&secret("rt-1"))).await.unwrap();
        assert_eq!(got.expose_secret(), "rt-2");
        // Not for another exchange: that one sent a different token.
        assert!(r.journaled_successor(&fp(&secret("rt-0"))).await.is_none());
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
        assert!(matches!(sent, Err(CarrierError::NotStarted(_))));
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
