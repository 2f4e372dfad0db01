//! The rotation journal on the Redis store: how a refresh token that a provider just rotated
//! survives the death of the replica that asked for it.
//!
//! The lease holder's rotating exchange runs in its rotation helper, a child process in its
//! own process group that outlives the sidecar (`token::rotation`). Before the
//! helper sends the request it marks the exchange in flight in Redis (`inflight:{c}`: the
//! fingerprint of the refresh token it sends, with a time to live that outlasts the
//! exchange). When the provider answers with a rotated token, the helper journals it
//! (`journal:{c}`, sealed with the store key, naming the tokens it supersedes), and only then
//! clears the mark and answers the sidecar.
//!
//! Whoever is about to send a refresh token under the lease looks first (`before_send`):
//! while a mark names that token it waits, at most for the mark's time to live; then a
//! journal entry that supersedes the token gives the successor to send instead. So the kill
//! of a holder at any moment of its exchange costs the others a wait, never the grant, and a
//! kill before the mark costs nothing: nothing was sent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::journal::{open_entry, seal_entry, JournalEntry};
use super::redis_client::{
    within, RedisClients, RedisConnection, RedisFailure, RedisTarget, ReplicaRule, COMMAND_TIMEOUT,
    REPLICA_WAIT,
};
use super::sealed::Sealer;
use super::StoreError;
use crate::config::{ClientIdentity, RedisTls};

/// More `WAIT`s after an unconfirmed journal write, before the helper goes on (each
/// holds up the rotation's answer while a replica is away).
const JOURNAL_WAITS: usize = 1;

/// Clears the mark only when it still names this exchange's token.
const CLEAR_IN_FLIGHT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// What a rotation helper needs to journal one record's rotation in Redis. It crosses the
/// helper's pipe (never its command line or environment): it holds the Redis URL, which may
/// carry a password, and the store key. No `Debug`, for the same reason.
#[derive(Clone, Serialize, Deserialize)]
pub struct RedisJournalTarget {
    url: String,
    /// A Redis Cluster's nodes (urls); empty for one server (`url`).
    #[serde(default)]
    cluster_nodes: Vec<String>,
    ca_file: Option<PathBuf>,
    identity: Option<ClientIdentity>,
    /// The store key, base64.
    key: String,
    journal: String,
    in_flight: String,
    aad: String,
    /// Replicas that must have the in-flight mark before the exchange is sent, and that are
    /// waited for after the journal write (the store's [`ReplicaRule`] when the exchange
    /// starts). A failover that lost either, with the holder dead in the same moment, would
    /// have the next holder send a spent refresh token.
    #[serde(default)]
    confirm: u32,
}

/// The sidecar's side: reads marks and journals over a connection of its own.
pub struct RedisJournalReader {
    clients: Arc<RedisClients>,
    connection: tokio::sync::Mutex<Option<RedisConnection>>,
    /// The client generation the connection was made with: a master that moved (or renewed
    /// TLS files) means a new connection.
    built_from: std::sync::atomic::AtomicU64,
    sealer: Sealer,
    tls: RedisTls,
    key: [u8; 32],
    replica_rule: ReplicaRule,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl RedisJournalReader {
    pub(super) fn new(
        clients: Arc<RedisClients>,
        tls: &RedisTls,
        key: &[u8; 32],
        replica_rule: ReplicaRule,
    ) -> RedisJournalReader {
        RedisJournalReader {
            clients,
            connection: tokio::sync::Mutex::new(None),
            built_from: std::sync::atomic::AtomicU64::new(0),
            sealer: Sealer::new(key),
            tls: tls.clone(),
            key: *key,
            replica_rule,
        }
    }

    /// The target of one record, named by the store (`{prefix}:…:{suffix}`).
    pub(super) fn target(&self, prefix: &str, suffix: &str) -> RedisJournalTarget {
        RedisJournalTarget {
            url: self.master_url(),
            cluster_nodes: self.clients.cluster_urls(),
            ca_file: self.tls.ca_file.clone(),
            identity: self.tls.identity.clone(),
            key: b64().encode(self.key),
            journal: format!("{prefix}:journal:{suffix}"),
            in_flight: format!("{prefix}:inflight:{suffix}"),
            aad: format!("bearerd:redis-journal:{prefix}:{suffix}"),
            confirm: self.replica_rule.replicas(),
        }
    }

    /// The master's url as last located (empty before it was: a helper then journals
    /// nothing, and no lease was given either).
    fn master_url(&self) -> String {
        self.clients
            .master_url()
            .map(|u| u.expose_secret().to_string())
            .unwrap_or_default()
    }

    /// `target` pointed at the master as it is now (it may have moved since the target was
    /// made), with the replicas to confirm as they are now.
    pub fn current(&self, target: &RedisJournalTarget) -> RedisJournalTarget {
        RedisJournalTarget {
            url: self.master_url(),
            confirm: self.replica_rule.replicas(),
            ..target.clone()
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        let mut slot = self.connection.lock().await;
        let generation = self.clients.generation();
        if self.built_from.swap(generation, Ordering::SeqCst) != generation {
            *slot = None;
        }
        let mut con = match slot.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .clients
                    .connect(false)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                *slot = Some(c.clone());
                c
            }
        };
        drop(slot);
        let answer = within(COMMAND_TIMEOUT, cmd.query_async(&mut con)).await;
        if answer.is_err() {
            // Connected again at the next use (the server may have restarted).
            *self.connection.lock().await = None;
        }
        answer.map_err(|e| unavailable(e.to_string()))
    }

    /// Whether a helper marked an exchange of the refresh token with this fingerprint in
    /// flight, and how long the mark lasts at most.
    pub async fn in_flight(
        &self,
        target: &RedisJournalTarget,
        fingerprint: &str,
    ) -> Result<Option<Duration>, StoreError> {
        let marked: Option<String> = self.run(redis::cmd("GET").arg(&target.in_flight)).await?;
        if marked.as_deref() != Some(fingerprint) {
            return Ok(None);
        }
        let ttl: i64 = self.run(redis::cmd("PTTL").arg(&target.in_flight)).await?;
        Ok(Some(Duration::from_millis(ttl.max(0) as u64)))
    }

    /// Deletes the record's journal (the record itself is gone). A mark stays: it runs out
    /// by itself, and an exchange it names may still be under way.
    pub async fn forget(&self, target: &RedisJournalTarget) -> Result<(), StoreError> {
        let _: i64 = self.run(redis::cmd("DEL").arg(&target.journal)).await?;
        Ok(())
    }

    /// The refresh token a helper journaled as a successor of the one with this fingerprint.
    /// A journal that does not open (another key, or tampered) counts as none, with a warning.
    pub async fn successor(
        &self,
        target: &RedisJournalTarget,
        fingerprint: &str,
    ) -> Result<Option<SecretString>, StoreError> {
        let sealed: Option<String> = self.run(redis::cmd("GET").arg(&target.journal)).await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        match open_entry(&self.sealer, target.aad.as_bytes(), &sealed) {
            Some(entry) if entry.supersedes(fingerprint) => Ok(Some(entry.refresh_token)),
            Some(_) => Ok(None),
            None => {
                tracing::warn!(
                    "a rotation journal in the store does not open (tampered?); it is ignored"
                );
                Ok(None)
            }
        }
    }
}

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable {
        store: "redis store (rotation journal)".into(),
        message,
    }
}

/// Why the helper could not reach (or write) the journal in Redis.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the store key does not decode")]
    BadKey,
    #[error(transparent)]
    Client(#[from] StoreError),
    #[error(transparent)]
    Redis(#[from] RedisFailure),
}

/// The helper's side: one connection per exchange (an exchange is one rotation).
pub struct HelperJournalConnection {
    target: RedisJournalTarget,
    sealer: Sealer,
    con: RedisConnection,
}

impl RedisJournalTarget {
    /// Connects for one exchange. Errors never quote the URL.
    pub async fn connect(&self) -> Result<HelperJournalConnection, JournalError> {
        let key: [u8; 32] = b64()
            .decode(&self.key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or(JournalError::BadKey)?;
        let tls = RedisTls {
            ca_file: self.ca_file.clone(),
            identity: self.identity.clone(),
        };
        let url = SecretString::from(self.url.clone());
        let nodes: Vec<SecretString> = self
            .cluster_nodes
            .iter()
            .map(|n| SecretString::from(n.clone()))
            .collect();
        let target = match nodes.is_empty() {
            true => RedisTarget::Url(&url),
            false => RedisTarget::Cluster { nodes: &nodes },
        };
        let clients = RedisClients::new(target, &tls)?;
        let con = clients.connect(false).await?;
        Ok(HelperJournalConnection {
            target: self.clone(),
            sealer: Sealer::new(&key),
            con,
        })
    }
}

impl HelperJournalConnection {
    /// Marks the exchange of the token with this fingerprint in flight, for `ttl`: done once
    /// the replicas asked for have the mark (else the exchange is not sent).
    pub async fn mark_in_flight(
        &mut self,
        fingerprint: &str,
        ttl: Duration,
    ) -> Result<(), RedisFailure> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(&self.target.in_flight)
            .arg(fingerprint)
            .arg("PX")
            .arg(ttl.as_millis().max(1) as u64);
        let acknowledged = self.write_and_wait(&cmd).await?;
        if acknowledged < self.target.confirm {
            // Nothing is sent: a mark left on the master would have the next try of this
            // very token wait it out (tens of seconds). The lease keeps others from sending.
            self.clear_in_flight(fingerprint).await;
            return Err(RedisFailure::Refused(format!(
                "{acknowledged} of the {} replica(s) asked for (min_replicas_acked) confirmed the in-flight mark in time",
                self.target.confirm
            )));
        }
        Ok(())
    }

    /// `write`, then `WAIT` for the replicas asked for, in one pipeline (so on the key's
    /// node in a cluster, and for this write): how many confirmed it (0 when none are
    /// asked for).
    async fn write_and_wait(&mut self, write: &redis::Cmd) -> Result<u32, RedisFailure> {
        let confirm = self.target.confirm;
        if confirm == 0 {
            within(COMMAND_TIMEOUT, write.query_async::<()>(&mut self.con)).await?;
            return Ok(0);
        }
        let mut pipe = redis::pipe();
        pipe.add_command(write.clone())
            .ignore()
            .cmd("WAIT")
            .arg(confirm)
            .arg(REPLICA_WAIT.as_millis() as u64);
        let (acknowledged,): (i64,) =
            within(COMMAND_TIMEOUT, pipe.query_async(&mut self.con)).await?;
        Ok(acknowledged.max(0) as u32)
    }

    /// Journals `refresh_token`, which replaced the token with fingerprint `replaced`
    /// (carrying on the chain of the entry before, when that entry's token is the one
    /// replaced).
    pub async fn journal(
        &mut self,
        refresh_token: SecretString,
        replaced: String,
    ) -> Result<(), RedisFailure> {
        let aad = self.target.aad.clone();
        let previous: Option<String> = within(
            COMMAND_TIMEOUT,
            redis::cmd("GET")
                .arg(&self.target.journal)
                .query_async(&mut self.con),
        )
        .await?;
        let previous = previous.and_then(|s| open_entry(&self.sealer, aad.as_bytes(), &s));
        let entry = JournalEntry::after(previous, refresh_token, replaced);
        let sealed = seal_entry(&self.sealer, aad.as_bytes(), &entry);
        let mut set = redis::cmd("SET");
        set.arg(&self.target.journal).arg(sealed);
        let mut acknowledged = self.write_and_wait(&set).await?;
        // The provider has answered: the token cannot be given back. Wait a little longer
        // for the replicas (a `WAIT` covers this connection's earlier writes; the key read
        // keeps it on the key's node in a cluster), then go on: the sidecar that asked
        // stores the new set confirmed in turn.
        let mut check = redis::cmd("EXISTS");
        check.arg(&self.target.journal);
        for _ in 0..JOURNAL_WAITS {
            if acknowledged >= self.target.confirm {
                break;
            }
            // Best effort: the journal is written; a failed wait does not write it again.
            match self.write_and_wait(&check).await {
                Ok(n) => acknowledged = n,
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Clears the mark of this exchange (best effort: it runs out by itself).
    pub async fn clear_in_flight(&mut self, fingerprint: &str) {
        let script = redis::Script::new(CLEAR_IN_FLIGHT);
        let mut invocation = script.key(&self.target.in_flight);
        invocation.arg(fingerprint);
        let _ = within(
            COMMAND_TIMEOUT,
            invocation.invoke_async::<i64>(&mut self.con),
        )
        .await;
    }
}
