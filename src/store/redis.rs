//! The Redis store, shared by the replicas of an app. Every value is sealed with the store
//! key (as in the file store) and bound to the prefix, the credential's name and what its
//! token is (the credential's binding), so Redis never holds a plaintext token, and a
//! replica whose credential differs reads and writes other keys.
//!
//! Keys under `{prefix}:` (`{c}` is the credential's name and a hash of its binding; a subject of
//! a per-subject credential is `{c}:s:` and a hash of the subject keyed by the store key, never
//! the subject itself):
//! - `set:{c}`: a hash, `gen` (the generation, in clear for the compare-and-set) and
//!   `sealed` (the token set, its generation inside);
//! - `lease:{c}`: the refresh lease, its owner id, with a time to live;
//! - `settle:{c}`: a hash, `run` (the run id of the server the credential's lease was last
//!   given on) and `until` (when that server's settle ends, in its own clock): a lease on a
//!   server this does not name waits for the settle (see `TAKE_LEASE`);
//! - `subjects:{c}`: a per-subject credential's index, a sorted set of `{hash}:{sealed subject}`
//!   (score 0, so in the order of the hashes): listing pages through it without a subject in
//!   clear, and every save of a subject's record puts its entry back if it is missing;
//! - `connect:{hash of the state}`: a connect flow waiting for its callback, sealed, with a
//!   time to live, taken once by whichever replica the callback reaches;
//! - `keycheck`: a sealed constant: a sidecar with another key refuses to start;
//! - channel `changed:{c}`: the generation of each save, for replicas waiting on the lease.
//!
//! Every command has a short time limit: a hanging Redis costs an attempt a second, never
//! a request (requests never touch the store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use secrecy::SecretString;
use tokio::sync::watch;

use super::codec::{open_set, seal_set, Unsealed};
use super::redis_client::{
    within, Located, RedisClients, RedisConnection, RedisFailure, RedisTarget, Reload, ReplicaRule,
    COMMAND_TIMEOUT, CONNECT_TIMEOUT, REPLICA_WAIT,
};
use super::redis_journal::RedisJournalReader;
use super::sealed::Sealer;
use super::{FlowStore, LocalCoordination, RecordKey, SubjectNames};
use super::{
    HelperJournal, Lease, LeaseAnswer, SaveOutcome, StoreBackend, StoreError, StoreHealth,
    StoredSet, StoredToken, TokenStore,
};
use crate::config::RedisTls;

/// `backend = "redis"`: shared by the replicas of an app; sealed values, leases and
/// change notifications.
pub struct RedisBackend;

impl super::Backend for RedisBackend {
    const NAME: &'static str = "redis";
    type Table = RawRedisStore;
}

mod table {
    //! The strict `[store]` table of the redis backend and its lowering.

    use std::path::PathBuf;

    use crate::config::{
        ClientIdentity, ConfigError, MasterAuth, Material, RedisServers, RedisTls, SourceMap,
        StoreConfig,
    };
    use crate::material::RawSecretRef;

    crate::config::lowering::store_table! {
        pub struct RawRedisStore {
            key: Option<RawSecretRef>,
            /// `redis://[user:pass@]host:port/db` or `rediss://…` (TLS); it may hold a password.
            url: Option<RawSecretRef>,
            /// Instead of `url`: sentinels (`redis://[user:pass@]host:26379`, each may be a
            /// secret reference) that name the master of `master_name`.
            sentinels: Option<Vec<RawSecretRef>>,
            master_name: Option<String>,
            /// With `sentinels`: the master's password (and user), when the sentinels' urls
            /// carry another one or none.
            master_password: Option<RawSecretRef>,
            master_username: Option<String>,
            /// Instead of `url`: nodes of a Redis Cluster (`redis://[user:pass@]host:7000`,
            /// each may be a secret reference); the rest of the cluster is found from them.
            cluster_nodes: Option<Vec<RawSecretRef>>,
            /// Replicas that must have a stored refresh token before it is used (`WAIT`).
            min_replicas_acked: Option<i64>,
            /// The key namespace, so several apps can share one Redis.
            prefix: Option<String>,
            /// rediss: the CA certificates (PEM) that sign the Redis server's certificate,
            /// instead of the system roots.
            ca_file: Option<PathBuf>,
            /// rediss: a client certificate (chain) and its key, PEM files, for a Redis that
            /// asks for one (`tls-auth-clients yes`).
            client_cert: Option<RawSecretRef>,
            client_key: Option<RawSecretRef>,
        }
    }

    impl crate::config::LowerStore for RawRedisStore {
        fn lower(&self, map: &SourceMap) -> Result<StoreConfig, ConfigError> {
            lower_redis_store(map, self)
        }
    }

    /// The most replicas a write may wait for: more is a typo (no deployment runs that many
    /// replicas of one master, and every rotation would wait for them in vain).
    const MAX_REPLICAS_ACKED: i64 = 16;

    fn lower_redis_store(map: &SourceMap, raw: &RawRedisStore) -> Result<StoreConfig, ConfigError> {
        let tls_keys: Vec<_> = [
            ("ca_file", raw.ca_file.is_some()),
            ("client_cert", raw.client_cert.is_some()),
            ("client_key", raw.client_key.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| map.place(&format!("store.{key}")))
        .collect();
        let servers = lower_servers(map, raw, tls_keys)?;
        let tls = lower_tls(map, raw)?;
        let key = crate::config::lowering::lower_store_key(map, &raw.key, "redis")?;
        let prefix = raw.prefix.clone().unwrap_or_else(|| "bearerd".to_string());
        if prefix.is_empty()
            || prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(map.error_at(
                "store.prefix",
                format!("prefix {prefix:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
            ));
        }
        let min_replicas_acked = match raw.min_replicas_acked {
            None => None,
            Some(n @ 0..=MAX_REPLICAS_ACKED) => Some(n as u32),
            Some(n) => {
                return Err(map.error_at(
                    "store.min_replicas_acked",
                    format!("{n} replicas: must be 0 (do not wait) to {MAX_REPLICAS_ACKED}"),
                ))
            }
        };
        Ok(StoreConfig::Redis {
            servers,
            key,
            prefix,
            tls,
            min_replicas_acked,
        })
    }

    /// Redis urls listed under `key` (sentinels, cluster nodes): at least one, each checked
    /// as `url` is.
    fn lower_url_list(
        map: &SourceMap,
        key: &str,
        list: &[RawSecretRef],
        tls_keys: &[crate::config::Place],
    ) -> Result<Vec<crate::config::SecretRef>, ConfigError> {
        if list.is_empty() {
            return Err(map.error_at(
                key,
                "lists no server: give at least one, e.g. [\"redis://host:26379\"]",
            ));
        }
        let mut urls = Vec::with_capacity(list.len());
        for entry in list {
            let url = map.lower_secret(key, entry)?;
            map.check_later(
                key,
                Material::RedisUrl {
                    url: url.clone(),
                    tls_keys: tls_keys.to_vec(),
                },
            );
            urls.push(url);
        }
        Ok(urls)
    }

    /// `master_password` and `master_username`: with `sentinels` only, the user with its
    /// password.
    fn lower_master_auth(
        map: &SourceMap,
        raw: &RawRedisStore,
    ) -> Result<Option<MasterAuth>, ConfigError> {
        let (password, username) = (&raw.master_password, &raw.master_username);
        if raw.sentinels.is_none() {
            for (key, set) in [
                ("store.master_password", password.is_some()),
                ("store.master_username", username.is_some()),
            ] {
                if set {
                    return Err(map.error_at(key, "only applies with `sentinels` (a `url` or cluster node carries its own user and password)"));
                }
            }
        }
        match (password, username) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(map.error_at(
                "store.master_username",
                "needs `master_password = { env = \"…\" }`, the password of that user",
            )),
            (Some(password), username) => {
                if username.as_deref().is_some_and(|u| u.trim().is_empty()) {
                    return Err(map.error_at(
                        "store.master_username",
                        "is empty: leave it out for the default user",
                    ));
                }
                Ok(Some(MasterAuth {
                    username: username.clone(),
                    password: map.lower_secret("store.master_password", password)?,
                }))
            }
        }
    }

    /// `url`, `sentinels` with `master_name`, or `cluster_nodes`: one of them. Whether a url
    /// asks for TLS is known once it is read: the check step.
    fn lower_servers(
        map: &SourceMap,
        raw: &RawRedisStore,
        tls_keys: Vec<crate::config::Place>,
    ) -> Result<RedisServers, ConfigError> {
        let master_auth = lower_master_auth(map, raw)?;
        if let Some(nodes) = &raw.cluster_nodes {
            if raw.url.is_some() || raw.sentinels.is_some() {
                return Err(map.error_at(
                    "store.cluster_nodes",
                    "give one of `url`, `sentinels` or `cluster_nodes`: a cluster's nodes say where every key lives",
                ));
            }
            if raw.master_name.is_some() {
                return Err(map.error_at(
                    "store.master_name",
                    "only applies with `sentinels` (the name the sentinels monitor the master under)",
                ));
            }
            let nodes = lower_url_list(map, "store.cluster_nodes", nodes, &tls_keys)?;
            return Ok(RedisServers::Cluster(nodes));
        }
        match (&raw.url, &raw.sentinels, &raw.master_name) {
            (Some(_), Some(_), _) => Err(map.error_at(
                "store.sentinels",
                "give `url` or `sentinels`, not both: with sentinels, the master's address comes from them",
            )),
            (Some(_), None, Some(_)) => Err(map.error_at(
                "store.master_name",
                "only applies with `sentinels` (the name the sentinels monitor the master under)",
            )),
            (Some(url), None, None) => {
                let url = map.lower_secret("store.url", url)?;
                map.check_later(
                    "store.url",
                    Material::RedisUrl {
                        url: url.clone(),
                        tls_keys,
                    },
                );
                Ok(RedisServers::Url(url))
            }
            (None, Some(_), None) => Err(map.error_at(
                "store.sentinels",
                "needs `master_name = \"mymaster\"`, the name the sentinels monitor the master under",
            )),
            (None, Some(list), Some(name)) => {
                let sentinels = lower_url_list(map, "store.sentinels", list, &tls_keys)?;
                if name.trim().is_empty() || name.chars().any(char::is_whitespace) {
                    return Err(map.error_at(
                        "store.master_name",
                        format!("{name:?} is not a master name (one word, as in `sentinel monitor <name> …`)"),
                    ));
                }
                Ok(RedisServers::Sentinel {
                    sentinels,
                    master_name: name.clone(),
                    master_auth,
                })
            }
            (None, None, _) => Err(map.error_at(
                "store.backend",
                "the redis store needs `url = { env = \"BEARERD_REDIS_URL\" }` (redis://[user:pass@]host:port/db, or rediss:// for TLS), or `sentinels = [\"redis://host:26379\", …]` with `master_name`, or `cluster_nodes = [\"redis://host:7000\", …]`",
            )),
        }
    }

    /// The TLS keys: the certificate and its key together, each file read and parsed by the
    /// check step rather than at the first refresh.
    fn lower_tls(map: &SourceMap, raw: &RawRedisStore) -> Result<RedisTls, ConfigError> {
        if let Some(ca) = &raw.ca_file {
            map.check_later("store.ca_file", Material::CaFile(ca.clone()));
        }
        let identity = match (&raw.client_cert, &raw.client_key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(map.error_at(
                    "store.client_cert",
                    "needs `client_key = { file = \"…\" }`, the certificate's private key",
                ))
            }
            (None, Some(_)) => {
                return Err(map.error_at(
                    "store.client_key",
                    "needs `client_cert = { file = \"…\" }`, the certificate it belongs to",
                ))
            }
            (Some(cert), Some(key)) => {
                let file = |key: &str, raw: &RawSecretRef| match raw {
                    RawSecretRef::File { file } => Ok(file.clone()),
                    _ => Err(map.error_at(
                        &format!("store.{key}"),
                        format!("`{key}` must be a PEM file: {key} = {{ file = \"…\" }}"),
                    )),
                };
                let identity = ClientIdentity {
                    cert: file("client_cert", cert)?,
                    key: file("client_key", key)?,
                };
                map.check_identity_later("store", &identity);
                Some(identity)
            }
        };
        Ok(RedisTls {
            ca_file: raw.ca_file.clone(),
            identity,
        })
    }
}
pub use table::RawRedisStore;

fn settle_ms() -> u64 {
    super::STORE_SETTLE.as_millis() as u64
}

const KEY_CHECK: &[u8] = b"bearerd key check";

/// Lua shared by the writing scripts: a subject's record (KEYS[2] is its credential's
/// index) gets its index entry, unless an entry for its hash is there already.
macro_rules! index_subject {
    () => {
        r"
local function index_subject(hash, member)
  if KEYS[2] and #redis.call('ZRANGEBYLEX', KEYS[2], '[' .. hash .. ':', '(' .. hash .. ';', 'LIMIT', 0, 1) == 0 then
    redis.call('ZADD', KEYS[2], 0, member)
  end
end
"
    };
}

/// Writes a set, and announces it, when the rule in ARGV[1] holds: 'cas' when the stored
/// generation is ARGV[2] ('' for none; a save), 'newer' when the store has none or an older
/// one than ARGV[3] (a refill after the store lost it). A write of this holder's that the
/// replicas did not confirm (ARGV[6], its sealed value; '' for none) may be written again
/// over itself: the retry of a save.
const WRITE_SET: &str = concat!(
    index_subject!(),
    r"
local current = redis.call('HGET', KEYS[1], 'gen')
local write
if ARGV[1] == 'cas' then
  write = (current == false and ARGV[2] == '') or (current ~= false and current == ARGV[2])
else
  write = current == false or tonumber(current) < tonumber(ARGV[3])
end
if not write and ARGV[6] ~= '' and current == ARGV[3] then
  write = redis.call('HGET', KEYS[1], 'sealed') == ARGV[6]
end
if write then
  redis.call('HSET', KEYS[1], 'gen', ARGV[3], 'sealed', ARGV[4])
  redis.call('PUBLISH', ARGV[5], ARGV[3])
  index_subject(ARGV[7], ARGV[8])
  return 1
end
return 0
"
);

/// When [`WRITE_SET`] writes.
enum WriteRule {
    /// A save: the stored generation is this one (`None`: there is no record).
    IfGeneration(Option<u64>),
    /// A refill: the store has no record, or an older one.
    IfNewer,
}

/// Reads a record; a subject's gets its index entry back if it lacks one (a record written
/// before the index existed is listed from its first load on).
const LOAD: &str = concat!(
    index_subject!(),
    r"
local sealed = redis.call('HGET', KEYS[1], 'sealed')
if sealed then
  index_subject(ARGV[1], ARGV[2])
end
return sealed
"
);

/// Deletes a record and, for a subject, its index entry.
const REMOVE: &str = r"
redis.call('DEL', KEYS[1])
if KEYS[2] then
  redis.call('ZREMRANGEBYLEX', KEYS[2], '[' .. ARGV[1] .. ':', '(' .. ARGV[1] .. ';')
end
return 1
";

/// Takes a value once: the first caller gets it, and it is gone for every later one.
const TAKE: &str = r"
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('DEL', KEYS[1])
end
return value
";

/// A subject's record in the index: the credential's index key, the subject's hash, and
/// the subject sealed (for listing).
struct SubjectEntry {
    index: String,
    hash: String,
    member: String,
}

/// Lua shared by the lease scripts: `settle(key, ms)` makes sure the credential's settle
/// record (KEYS[2] of the lease) names this server. A server it does not name (a restart,
/// perhaps empty, or a failover to a replica that may lack the last writes) or a missing
/// record (an empty or new store) starts a settle of `ms` there. Returns the time left of
/// the settle in this server's clock (0 when settled).
macro_rules! settle {
    () => {
        r"
local function settle(key, ms)
  local ok, info = pcall(redis.call, 'INFO', 'server')
  local run = (ok and string.match(info, 'run_id:(%w+)')) or ''
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local seen = redis.call('HMGET', key, 'run', 'until')
  if seen[1] ~= run then
    redis.call('HSET', key, 'run', run, 'until', now + ms)
    return ms
  end
  return math.max(tonumber(seen[2]) - now, 0)
end
"
    };
}

/// Takes the lease (`1`; `0` while another holder has it). With a settle time (ARGV[3] ms,
/// `0` for none), a server that may have lost writes gives no lease until it has settled,
/// and answers minus the time left, so every replica writes back the set it holds before
/// anyone sends a refresh token.
const TAKE_LEASE: &str = concat!(
    settle!(),
    r"
local ms = tonumber(ARGV[3])
if ms > 0 then
  local left = settle(KEYS[2], ms)
  if left > 0 then
    return -left
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"
);

/// Starts the settle of each credential's record in KEYS (ARGV[1] ms) unless this server
/// has seen it: the health check runs it when it finds the server restarted or back, so
/// the settle counts from then rather than from the next lease.
const BEGIN_SETTLE: &str = concat!(
    settle!(),
    r"
for _, key in ipairs(KEYS) do
  settle(key, tonumber(ARGV[1]))
end
return 1
"
);

/// Deletes the lease only when this holder still has it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Extends the lease only when this holder still has it. A lease that is gone (the store
/// lost it: it restarted empty while the holder worked) is taken back by its live holder,
/// so nobody else sends the refresh token the holder's request is rotating.
const RENEW: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// A write that holds a refresh token, sent but not confirmed by the replicas.
struct Unconfirmed {
    generation: u64,
    /// Its sealed value, as the record holds it when the write went through.
    sealed: String,
    /// A hash of its tokens: only a retry of the same set may write over it (a logout's
    /// tombstone at the same generation may not).
    content: String,
}

/// A hash of what a set's tokens are, for [`Unconfirmed`].
fn content_of(token: &StoredToken) -> String {
    use secrecy::ExposeSecret;
    let rt = token
        .refresh_token
        .as_ref()
        .map_or("", |r| r.expose_secret());
    super::fingerprint(&SecretString::from(format!(
        "{}\n{rt}",
        token.access_token.expose_secret()
    )))
}

/// The store's connection, and the TLS files' generation it was made with.
struct StoreConnection {
    built_from: u64,
    /// The master moves seen when it was made: after a move it is never kept.
    built_moves: u64,
    con: RedisConnection,
    /// After a failed attempt with renewed files: not before then again.
    retry_at: Option<Instant>,
}

/// Which of the store's two connections a command goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Everything but a confirmed write.
    Data,
    /// A write followed by `WAIT`: WAIT holds its connection until the replicas answer (up
    /// to [`REPLICA_WAIT`] while one is away), and loads, leases and saves of every other
    /// credential must not queue behind it. A record's removal goes here too, after them.
    Confirmed,
}

/// How long the open connection serves on after renewed TLS files failed to connect.
const RENEWED_RETRY: Duration = Duration::from_secs(5);

pub struct RedisStore {
    clients: Arc<RedisClients>,
    replica_rule: ReplicaRule,
    /// Per record, this holder's last write that the replicas did not confirm, so the
    /// retry of that same write may write over it (see [`WRITE_SET`]).
    unconfirmed: Mutex<HashMap<String, Unconfirmed>>,
    /// Connected on first use, on the runtime that uses it; reconnects by itself, and is
    /// built again when the client's TLS files were renewed (the generation it was built
    /// from is older than the client's). One per [`Lane`].
    connections: [tokio::sync::Mutex<Option<StoreConnection>>; 2],
    /// Held for each write on [`Lane::Confirmed`] (see `run_confirmed`).
    confirmed_turn: tokio::sync::Mutex<()>,
    sealer: Sealer,
    prefix: String,
    /// Credential name → its key suffix (`name:hash-of-binding`).
    keys: HashMap<String, String>,
    owner: String,
    local: Arc<LocalCoordination>,
    health: Arc<Health>,
    /// Whether the tasks that forward change notifications and watch health run.
    subscribed: AtomicBool,
    /// The key of subjects' names (derived from the store key).
    subject_names: SubjectNames,
    /// Names subjects as bearerd did before keyed names (tests of the move only).
    unkeyed_names: bool,
    /// Reads rotation helpers' marks and journals (see `redis_journal`).
    journal_reader: Arc<RedisJournalReader>,
}

/// Whether Redis answers, as the last command or health check found it.
struct Health {
    store: String,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// The replicas connected to the master at the last health check (the rule's).
    replicas: Arc<std::sync::atomic::AtomicU32>,
}

impl Health {
    /// Returns whether this is a recovery (it was down).
    fn mark_up(&self) -> bool {
        let recovered = !self.up.swap(true, Ordering::SeqCst);
        if recovered {
            tracing::info!(store = %self.store, "the store answers again");
        }
        recovered
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::SeqCst) {
            tracing::warn!(store = %self.store, error = why, "the store is unavailable");
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.to_string());
    }
}

/// How bearerd before keyed names named a subject: 32 hex digits of its plain SHA-256, which
/// anyone reading Redis could check a guessed subject against. Records under such names are
/// moved to their keyed names when loaded.
fn unkeyed_subject_hash(subject: &str) -> String {
    let mut hashed = super::fingerprint(&SecretString::from(subject.to_string()));
    hashed.truncate(32);
    hashed
}

/// A credential's key suffix as a Redis Cluster hash tag (`{name:hash}`), so every key of
/// the credential and of its subjects (`set:{c}:s:…`, `lease:…`, `settle:{c}`,
/// `subjects:{c}`) hashes to one slot and a script that touches several of them runs on one
/// node. On one server the names stay as they were (records written before stay found).
fn hash_tagged(suffix: &str, cluster: bool) -> String {
    if cluster {
        format!("{{{suffix}}}")
    } else {
        suffix.to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn binding_hash(binding: &str) -> String {
    super::fingerprint(&SecretString::from(binding.to_string()))[..16].to_string()
}

impl RedisStore {
    /// A store for these credentials (name, binding). Nothing is sent yet.
    pub fn new(
        target: RedisTarget<'_>,
        tls: &RedisTls,
        key: &[u8; 32],
        prefix: &str,
        credentials: &[(&str, String)],
        min_replicas_acked: Option<u32>,
    ) -> Result<RedisStore, StoreError> {
        let clients = Arc::new(RedisClients::new(target, tls)?);
        let replica_rule = ReplicaRule {
            configured: min_replicas_acked,
            sentinels: clients.follows_sentinels(),
            seen: Arc::default(),
        };
        let journal_reader = Arc::new(RedisJournalReader::new(
            Arc::clone(&clients),
            tls,
            key,
            replica_rule.clone(),
        ));
        let cluster = clients.is_cluster();
        let keys = credentials
            .iter()
            .map(|(name, binding)| {
                let suffix = format!("{name}:{}", binding_hash(binding));
                (name.to_string(), hash_tagged(&suffix, cluster))
            })
            .collect();
        Ok(RedisStore {
            clients,
            unconfirmed: Mutex::new(HashMap::new()),
            connections: Default::default(),
            confirmed_turn: tokio::sync::Mutex::new(()),
            sealer: Sealer::new(key),
            prefix: prefix.to_string(),
            keys,
            // The process id first: which process holds a lease can be seen in Redis.
            owner: format!("{}-{:032x}", std::process::id(), rand::random::<u128>()),
            local: Arc::new(LocalCoordination::default()),
            health: Arc::new(Health {
                store: format!("redis store (prefix {prefix:?})"),
                up: AtomicBool::new(true),
                last_error: Mutex::new(None),
                replicas: Arc::clone(&replica_rule.seen),
            }),
            replica_rule,
            subscribed: AtomicBool::new(false),
            subject_names: SubjectNames::new(key),
            unkeyed_names: false,
            journal_reader,
        })
    }

    /// Names subjects as bearerd did before keyed names, to test the move of such records.
    #[cfg(feature = "test-hooks")]
    pub fn with_unkeyed_subject_names(mut self) -> RedisStore {
        self.unkeyed_names = true;
        self
    }

    /// A subject as Redis names it: 32 hex digits of a hash keyed by the store key, so
    /// nobody without the key can check a guessed subject (an e-mail address) against them.
    fn subject_hash(&self, subject: &str) -> String {
        if self.unkeyed_names {
            return unkeyed_subject_hash(subject);
        }
        self.subject_names.hash(subject)
    }

    /// Names the store in errors: the prefix (never the URL, which may hold a password).
    fn describe(&self) -> String {
        self.health.store.clone()
    }

    fn suffix(&self, credential: &str) -> String {
        // A subject's record: under its credential's binding, named by a hash of the
        // subject, so Redis key names never show a subject (often an e-mail address).
        if let RecordKey::Subject {
            credential: name,
            subject,
        } = RecordKey::parse(credential)
        {
            return format!("{}:s:{}", self.suffix(name), self.subject_hash(subject));
        }
        self.keys
            .get(credential)
            .cloned()
            .unwrap_or_else(|| hash_tagged(credential, self.clients.is_cluster()))
    }

    fn set_key(&self, credential: &str) -> String {
        format!("{}:set:{}", self.prefix, self.suffix(credential))
    }

    fn lease_key(&self, credential: &str) -> String {
        format!("{}:lease:{}", self.prefix, self.suffix(credential))
    }

    /// The credential's settle record (which server its lease was last given on, and until
    /// when that server settles), shared by its subjects: a new subject on a settled store
    /// does not wait.
    fn settle_key(&self, credential: &str) -> String {
        let name = RecordKey::parse(credential).credential();
        format!("{}:settle:{}", self.prefix, self.suffix(name))
    }

    fn channel(&self, credential: &str) -> String {
        format!("{}:changed:{}", self.prefix, self.suffix(credential))
    }

    fn aad(&self, credential: &str) -> Vec<u8> {
        format!("bearerd:redis:{}:{}", self.prefix, self.suffix(credential)).into_bytes()
    }

    fn index_key(&self, credential: &str) -> String {
        format!("{}:subjects:{}", self.prefix, self.suffix(credential))
    }

    fn subject_aad(&self, credential: &str, hash: &str) -> Vec<u8> {
        format!(
            "bearerd:redis-subject:{}:{}:{hash}",
            self.prefix,
            self.suffix(credential)
        )
        .into_bytes()
    }

    /// See [`ReplicaRule`].
    fn replicas_to_confirm(&self) -> u32 {
        self.replica_rule.replicas()
    }

    /// Writes a sealed set under `rule` (see [`WRITE_SET`]); true when it was written. A set
    /// that holds a refresh token (`confirm`) counts as written only once the replicas
    /// `min_replicas_acked` asks for have it: the write and its `WAIT` go together on one
    /// connection, so the wait is for this write.
    async fn write_set(
        &self,
        credential: &str,
        rule: WriteRule,
        generation: u64,
        sealed: String,
        confirm: Option<String>,
    ) -> Result<bool, StoreError> {
        let mut keys = vec![self.set_key(credential)];
        let (rule, expected) = match rule {
            WriteRule::IfGeneration(expected) => {
                ("cas", expected.map_or(String::new(), |g| g.to_string()))
            }
            WriteRule::IfNewer => ("newer", String::new()),
        };
        let own_retry = lock(&self.unconfirmed)
            .get(credential)
            .filter(|u| u.generation == generation && Some(&u.content) == confirm.as_ref())
            .map(|u| u.sealed.clone())
            .unwrap_or_default();
        let mut args = vec![
            rule.to_string(),
            expected,
            generation.to_string(),
            sealed.clone(),
            self.channel(credential),
            own_retry,
        ];
        if let Some(entry) = self.subject_entry(credential) {
            keys.push(entry.index);
            args.extend([entry.hash, entry.member]);
        }
        let (asked, content) = match confirm {
            Some(content) => (self.replicas_to_confirm(), content),
            None => (0, String::new()),
        };
        if asked == 0 {
            let written = self.run_confirmed(WRITE_SET, &keys, &args, 0).await?;
            lock(&self.unconfirmed).remove(credential);
            return Ok(written == 1);
        }
        // Noted before it goes: an answer lost after the write ran (a timeout) leaves the
        // retry its own write to write over. A write that did not happen puts back what
        // was noted before.
        let previous = lock(&self.unconfirmed).insert(
            credential.to_string(),
            Unconfirmed {
                generation,
                sealed,
                content,
            },
        );
        let written = self.run_confirmed(WRITE_SET, &keys, &args, asked).await?;
        let mut unconfirmed = lock(&self.unconfirmed);
        match (written == 1, previous) {
            (false, Some(previous)) => unconfirmed.insert(credential.to_string(), previous),
            _ => unconfirmed.remove(credential),
        };
        Ok(written == 1)
    }

    /// Runs a script that writes and, in one pipeline on the same connection (so the wait
    /// is for this write), `WAIT asked`: the script's answer, or `NotReplicated` when it
    /// wrote (answered 1) and fewer replicas confirmed in time. `asked == 0`: the script alone.
    async fn run_confirmed(
        &self,
        script: &'static str,
        keys: &[String],
        args: &[String],
        asked: u32,
    ) -> Result<i64, StoreError> {
        if asked == 0 {
            let script = redis::Script::new(script);
            let mut invocation = script.prepare_invoke();
            invocation.key(keys).arg(args);
            return self.script(&invocation).await;
        }
        // One confirmed write at a time: Redis blocks a connection during its WAIT, so a
        // second one sent behind it would wait out the first's WAIT inside its own time
        // limit (and time out while a replica is away); here it waits its turn instead.
        let _turn = self.confirmed_turn.lock().await;
        let mut pipe = redis::pipe();
        pipe.cmd("EVAL")
            .arg(script)
            .arg(keys.len())
            .arg(keys)
            .arg(args)
            .cmd("WAIT")
            .arg(asked)
            .arg(REPLICA_WAIT.as_millis() as u64);
        let mut con = self.connection_on(Lane::Confirmed).await?;
        let (answer, acknowledged): (i64, i64) =
            self.answered(within(COMMAND_TIMEOUT, pipe.query_async(&mut con)).await)?;
        let acknowledged = acknowledged.max(0) as u32;
        if answer == 1 && acknowledged < asked {
            return Err(StoreError::NotReplicated {
                store: self.describe(),
                asked,
                acknowledged,
            });
        }
        Ok(answer)
    }

    /// The index entry of a subject's record; `None` for a credential's own record.
    fn subject_entry(&self, key: &str) -> Option<SubjectEntry> {
        let RecordKey::Subject {
            credential: name,
            subject,
        } = RecordKey::parse(key)
        else {
            return None;
        };
        let hash = self.subject_hash(subject);
        let sealed = self
            .sealer
            .seal(subject.as_bytes(), &self.subject_aad(name, &hash));
        Some(SubjectEntry {
            index: self.index_key(name),
            member: format!("{hash}:{sealed}"),
            hash,
        })
    }

    /// The subject an index entry names, or `None` (with a warning) when it does not open.
    fn open_member(&self, credential: &str, member: &str) -> Option<String> {
        let opened = member.split_once(':').and_then(|(hash, sealed)| {
            let plain = self
                .sealer
                .open(sealed, &self.subject_aad(credential, hash))?;
            String::from_utf8(plain)
                .ok()
                .filter(|subject| self.subject_hash(subject) == hash)
        });
        if opened.is_none() {
            tracing::warn!(store = %self.health.store, credential, "an entry of the subject index does not open (tampered?); it is dropped from the index, and the subject's next save or load puts it back");
        }
        opened
    }

    fn connect_aad(&self, id: &str) -> Vec<u8> {
        format!("bearerd:redis-connect:{}:{id}", self.prefix).into_bytes()
    }

    fn key_check_aad(&self) -> Vec<u8> {
        format!("bearerd:redis-key-check:{}", self.prefix).into_bytes()
    }

    /// Checks that the key opens this store's values, writing the check value into an
    /// empty store. A wrong key is an error; an unreachable Redis is one too (the caller
    /// decides whether to start without it).
    pub async fn verify_key(&self) -> Result<(), StoreError> {
        let mut con = self.connect_once().await?;
        // The replicas as they are now, so the first lease already asks for them (the
        // health check, which keeps the count, starts with the first watch).
        is_master(&mut con, &self.health, self.clients.is_cluster()).await;
        let key = format!("{}:keycheck", self.prefix);
        let existing: Option<String> = self.run(redis::cmd("GET").arg(&key), &mut con).await?;
        match existing {
            Some(sealed) => match self.sealer.open(&sealed, &self.key_check_aad()) {
                Some(check) if check == KEY_CHECK => Ok(()),
                _ => Err(StoreError::Unreadable {
                    store: self.describe(),
                    message: "the store key does not open this store's values (wrong key, or another app's prefix); nothing was changed".into(),
                }),
            },
            None => {
                let sealed = self.sealer.seal(KEY_CHECK, &self.key_check_aad());
                let _: Option<String> = self
                    .run(redis::cmd("SET").arg(&key).arg(sealed).arg("NX"), &mut con)
                    .await?;
                Ok(())
            }
        }
    }

    /// A plain connection for a one-off check (at startup, off the service runtimes).
    async fn connect_once(&self) -> Result<RedisConnection, StoreError> {
        self.clients
            .connect(false)
            .await
            .map_err(|why| self.unavailable(&why.to_string()))
    }

    /// While the health check finds Redis down, operations fail at once: waiting out a
    /// connection attempt per operation would make a refresh that may go on without the
    /// store (a client-credentials token) late. The check notices a recovery within a second.
    fn known_down(&self) -> Option<StoreError> {
        // A cluster is down for the health check when any of its masters is; the others
        // still serve their credentials.
        if !self.subscribed.load(Ordering::SeqCst)
            || self.health.up.load(Ordering::SeqCst)
            || self.clients.is_cluster()
        {
            return None;
        }
        let why = self
            .health
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| "no answer".into());
        Some(StoreError::Unavailable {
            store: self.describe(),
            message: why,
        })
    }

    /// The data connection (see [`Lane`]).
    async fn connection(&self) -> Result<RedisConnection, StoreError> {
        self.connection_on(Lane::Data).await
    }

    /// The lane's connection: the one open, or a new one after renewed TLS files or a
    /// failover.
    async fn connection_on(&self, lane: Lane) -> Result<RedisConnection, StoreError> {
        if let Some(down) = self.known_down() {
            return Err(down);
        }
        // Held while connecting, so concurrent first uses make one connection; whoever
        // waited looks at the health again.
        let mut slot = self.connections[lane as usize].lock().await;
        if let Some(down) = self.known_down() {
            return Err(down);
        }
        let generation = self.clients.generation();
        let moves = self.clients.moves();
        if let Some(current) = slot.as_ref() {
            // Backing off from renewed TLS files keeps the open connection, unless the
            // master moved meanwhile: a connection to the old one is never kept.
            let backing_off = current.retry_at.is_some_and(|at| Instant::now() < at)
                && current.built_moves == moves;
            if current.built_from == generation || backing_off {
                return Ok(current.con.clone());
            }
        }
        let connected = self.clients.connect(true).await;
        match (connected, slot.as_mut()) {
            (Ok(con), _) => {
                *slot = Some(StoreConnection {
                    built_from: generation,
                    built_moves: moves,
                    con: con.clone(),
                    retry_at: None,
                });
                Ok(con)
            }
            // Renewed TLS files that do not get in yet: the open connection serves on (TLS
            // checked its certificates at its handshake), and the new files are tried again
            // in a few seconds rather than by every operation in turn.
            (Err(why), Some(current)) if current.built_moves == moves => {
                tracing::warn!(store = %self.health.store, error = %why, "a connection with the renewed TLS files failed; the open one serves on");
                current.retry_at = Some(Instant::now() + RENEWED_RETRY);
                Ok(current.con.clone())
            }
            // No connection, or one to a master the sentinels no longer name.
            (Err(why), _) => Err(self.unavailable(&why.to_string())),
        }
    }

    /// Runs one command within the time limit, noting whether Redis answered.
    async fn run<T: redis::FromRedisValue, C: redis::aio::ConnectionLike + Send>(
        &self,
        cmd: &redis::Cmd,
        con: &mut C,
    ) -> Result<T, StoreError> {
        self.answered(within(COMMAND_TIMEOUT, cmd.query_async(con)).await)
    }

    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.script_on(Lane::Data, script).await
    }

    async fn script_on<T: redis::FromRedisValue>(
        &self,
        lane: Lane,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut con = self.connection_on(lane).await?;
        self.answered(within(COMMAND_TIMEOUT, script.invoke_async(&mut con)).await)
    }

    /// Notes whether Redis answered, and turns a failure into the store's error.
    fn answered<T>(&self, result: Result<T, RedisFailure>) -> Result<T, StoreError> {
        match result {
            Ok(v) => {
                self.mark_up();
                Ok(v)
            }
            Err(why) => Err(self.unavailable(&why.to_string())),
        }
    }

    fn mark_up(&self) {
        if self.health.mark_up() {
            self.announce_recovery();
        }
    }

    /// After an outage every credential and subject in memory looks at the store again: it
    /// may have come back empty, and the replica with the newest set writes it back.
    fn announce_recovery(&self) {
        self.local.changed_all();
    }

    fn unavailable(&self, why: &str) -> StoreError {
        self.health.mark_down(why);
        StoreError::Unavailable {
            store: self.describe(),
            message: why.to_string(),
        }
    }

    fn open_set(&self, credential: &str, sealed: &str) -> Result<StoredSet, StoreError> {
        self.open_sealed_set(credential, sealed, &self.aad(credential))
    }

    fn open_sealed_set(
        &self,
        credential: &str,
        sealed: &str,
        aad: &[u8],
    ) -> Result<StoredSet, StoreError> {
        let what = super::record_name(credential);
        open_set(&self.sealer, sealed, aad).map_err(|why| StoreError::Unreadable {
            store: self.describe(),
            // The parser's words could quote the value: only what is wrong.
            message: match why {
                Unsealed::DoesNotOpen => format!("{what} does not open (wrong key, or tampered)"),
                Unsealed::Malformed => format!("{what} is malformed"),
            },
        })
    }

    /// A record as it is under its name now.
    async fn read_set(
        &self,
        credential: &str,
        con: &mut RedisConnection,
    ) -> Result<Option<StoredSet>, StoreError> {
        let sealed: Option<String> = self
            .run(
                redis::cmd("HGET")
                    .arg(self.set_key(credential))
                    .arg("sealed"),
                con,
            )
            .await?;
        sealed.map(|s| self.open_set(credential, &s)).transpose()
    }

    /// A subject's record under the unkeyed name an earlier bearerd gave it, moved to its
    /// keyed name (written there unless a newer set is there, then removed from the old).
    async fn adopt_unkeyed(&self, credential: &str) -> Result<Option<StoredSet>, StoreError> {
        let RecordKey::Subject {
            credential: name,
            subject,
        } = RecordKey::parse(credential)
        else {
            return Ok(None);
        };
        let old_suffix = format!("{}:s:{}", self.suffix(name), unkeyed_subject_hash(subject));
        let old_key = format!("{}:set:{old_suffix}", self.prefix);
        let mut con = self.connection().await?;
        let sealed: Option<String> = self
            .run(redis::cmd("HGET").arg(&old_key).arg("sealed"), &mut con)
            .await?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let old_aad = format!("bearerd:redis:{}:{old_suffix}", self.prefix).into_bytes();
        let set = self.open_sealed_set(credential, &sealed, &old_aad)?;
        use super::TokenStore;
        let written = self.refill(credential, &set).await?;
        let _: i64 = self.run(redis::cmd("DEL").arg(&old_key), &mut con).await?;
        tracing::info!(store = %self.health.store, credential = name, "a subject's record moved to its keyed name");
        if written {
            return Ok(Some(set));
        }
        // Another replica moved it first, or saved a newer set: that one counts.
        self.read_set(credential, &mut con).await
    }

    /// Starts forwarding change notifications (once, on the runtime of the first watcher).
    fn subscribe(&self) {
        if self.subscribed.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.subscribed.store(false, Ordering::SeqCst);
            return;
        };
        let channels: HashMap<String, String> = self
            .keys
            .keys()
            .map(|name| (self.channel(name), name.clone()))
            .collect();
        runtime.spawn(forward_changes(
            Arc::clone(&self.clients),
            format!("{}:changed:*", self.prefix),
            channels,
            Arc::clone(&self.local),
        ));
        runtime.spawn(watch_health(
            Arc::clone(&self.clients),
            Arc::clone(&self.health),
            Arc::clone(&self.local),
            self.keys.keys().map(|name| self.settle_key(name)).collect(),
            (
                format!("{}:keycheck", self.prefix),
                self.sealer.seal(KEY_CHECK, &self.key_check_aad()),
            ),
        ));
    }
}

/// Pings Redis every second, so `/status` and `bearerd_store_up` follow an outage even while
/// no refresh runs. A recovery puts the key check back (a Redis that restarted empty lost
/// it, and a sidecar with another key must still be refused) and makes every credential
/// look at the store again. It also reads a `rediss://` store's TLS files again, so renewed
/// ones are used from the next connection on.
async fn watch_health(
    clients: Arc<RedisClients>,
    health: Arc<Health>,
    local: Arc<LocalCoordination>,
    settle_keys: Vec<String>,
    (key_check_key, key_check): (String, String),
) {
    let begin_settle = redis::Script::new(BEGIN_SETTLE);
    let cluster = clients.is_cluster();
    let mut connection: Option<RedisConnection> = None;
    // The server's run id as last seen: a new one means Redis restarted (or failed over)
    // since, perhaps empty, even when no ping failed in between.
    let mut run_id: Option<String> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // Whether the sentinels answered last time (said once per change, not every second).
    let mut sentinels_answer = true;
    loop {
        tick.tick().await;
        if follow_master(&clients, &health, &mut sentinels_answer).await {
            connection = None;
        }
        match clients.reload() {
            Reload::Unchanged => {}
            Reload::Renewed => {
                tracing::info!(store = %health.store, "renewed TLS files are used for new connections");
                connection = None;
            }
            Reload::Refused(why) => tracing::warn!(
                store = %health.store,
                error = %why,
                "the changed TLS files cannot be used; the previous ones stay in use"
            ),
        }
        let mut reconnected = false;
        if connection.is_none() {
            match clients.connect(false).await {
                Ok(c) => {
                    connection = Some(c);
                    reconnected = true;
                }
                Err(why) => health.mark_down(&why.to_string()),
            }
        }
        let Some(con) = connection.as_mut() else {
            continue;
        };
        match within(
            COMMAND_TIMEOUT,
            redis::cmd("PING").query_async::<String>(con),
        )
        .await
        {
            Ok(_) if !is_master(con, &health, cluster).await => {
                // A demoted master (or a url that names a replica) takes no writes: down
                // until the sentinels name the promoted one.
                health.mark_down("the server answers as a replica, not as the master");
                connection = None;
            }
            Ok(_) => {
                let recovered = health.mark_up();
                // On every new connection, not only after an outage this check saw: Redis
                // may have restarted between two pings (while this connection was being
                // replaced for renewed TLS files, say). Another run id, or a key check that
                // was missing, means the data may be gone: every credential looks, and
                // writes its set back if it is (only over nothing or an older set).
                if recovered || reconnected {
                    let restarted =
                        server_restarted(con, &key_check_key, &key_check, &mut run_id).await;
                    if recovered || restarted {
                        // A server that may have lost writes settles from now, not from
                        // the next lease (see `STORE_SETTLE`). A cluster's keys live on
                        // several nodes: one script per credential there.
                        let group = if cluster { 1 } else { settle_keys.len().max(1) };
                        for keys in settle_keys.chunks(group) {
                            let mut settle = begin_settle.prepare_invoke();
                            settle.key(keys).arg(settle_ms());
                            if let Err(why) =
                                within(COMMAND_TIMEOUT, settle.invoke_async::<i64>(con)).await
                            {
                                tracing::warn!(store = %health.store, error = %why, "could not start the store's settle; the next lease starts it");
                            }
                        }
                        local.changed_all();
                    }
                }
            }
            Err(why) => {
                health.mark_down(&why.to_string());
                connection = None;
            }
        }
    }
}

/// Whether the server may have lost writes since this check last looked: it had lost the
/// key check (put back now), or it has another run id (it restarted, or another server took
/// over), even when no ping failed in between.
async fn server_restarted(
    con: &mut RedisConnection,
    key_check_key: &str,
    key_check: &str,
    run_id: &mut Option<String>,
) -> bool {
    let mut restore = redis::cmd("SET");
    restore.arg(key_check_key).arg(key_check).arg("NX");
    let emptied = within(COMMAND_TIMEOUT, restore.query_async::<Option<String>>(con))
        .await
        .is_ok_and(|set| set.is_some());
    // A cluster answers INFO from every node: its nodes' restarts are seen by the lease
    // script on the node that holds each credential (see `TAKE_LEASE`).
    if matches!(con, RedisConnection::Cluster(_)) {
        return emptied;
    }
    let info = within(
        COMMAND_TIMEOUT,
        redis::cmd("INFO").arg("server").query_async::<String>(con),
    )
    .await;
    let now_run = info.ok().and_then(|i| {
        i.lines()
            .find_map(|l| l.trim().strip_prefix("run_id:").map(str::to_string))
    });
    let restarted = matches!((&*run_id, &now_run), (Some(a), Some(b)) if a != b);
    if now_run.is_some() {
        *run_id = now_run;
    }
    emptied || restarted
}

/// Where the master is now (a failover moves new connections to the promoted one): true
/// when it moved. Sentinels that do not answer leave the master last located serving.
async fn follow_master(clients: &RedisClients, health: &Health, answered: &mut bool) -> bool {
    match clients.locate().await {
        Ok(Located::Moved) => {
            tracing::info!(store = %health.store, "the sentinels name another master; connecting to it");
            *answered = true;
            true
        }
        Ok(Located::Same) => {
            *answered = true;
            false
        }
        Err(why) => {
            if std::mem::take(answered) {
                tracing::warn!(store = %health.store, error = %why, "no sentinel names the master; the last one located serves on");
            }
            false
        }
    }
}

/// Whether the server is the master, by `ROLE`; notes whether it has replicas. A server that
/// refuses `ROLE` (a managed service's restricted user) counts as the master. A cluster
/// routes to its masters itself: there, the fewest replicas any master has are noted.
async fn is_master(con: &mut RedisConnection, health: &Health, cluster: bool) -> bool {
    if cluster {
        if let Some(replicas) = cluster_replicas(con).await {
            health.replicas.store(replicas, Ordering::SeqCst);
        }
        return true;
    }
    let role = within(
        COMMAND_TIMEOUT,
        redis::cmd("ROLE").query_async::<redis::Value>(con),
    )
    .await;
    let Ok(redis::Value::Array(parts)) = role else {
        return true;
    };
    let word = match parts.first() {
        Some(redis::Value::BulkString(w)) => String::from_utf8_lossy(w).into_owned(),
        Some(redis::Value::SimpleString(w)) => w.clone(),
        _ => return true,
    };
    if word != "master" {
        return false;
    }
    if let Some(redis::Value::Array(replicas)) = parts.get(2) {
        health
            .replicas
            .store(replicas.len() as u32, Ordering::SeqCst);
    }
    true
}

/// The fewest connected replicas any master of the cluster has, by `CLUSTER NODES`.
async fn cluster_replicas(con: &mut RedisConnection) -> Option<u32> {
    let nodes = within(
        COMMAND_TIMEOUT,
        redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async::<String>(con),
    )
    .await
    .ok()?;
    // `<id> <addr> <flags> <master id> <ping> <pong> <epoch> <link> <slots…>`
    let lines: Vec<Vec<&str>> = nodes.lines().map(|l| l.split(' ').collect()).collect();
    let masters = lines
        .iter()
        .filter(|f| f.len() > 8 && f[2].contains("master") && !f[2].contains("fail"));
    masters
        .map(|m| {
            lines
                .iter()
                .filter(|f| f.len() > 7 && f[3] == m[0] && f[7] == "connected")
                .count() as u32
        })
        .min()
}

/// Forwards change notifications from Redis to the local watches, reconnecting for as long
/// as the process runs, and to the new master when it moved. The refresher also polls, so a
/// lost message only delays a waiter.
async fn forward_changes(
    clients: Arc<RedisClients>,
    pattern: String,
    channels: HashMap<String, String>,
    local: Arc<LocalCoordination>,
) {
    use futures::StreamExt;
    loop {
        let generation = clients.generation();
        let connected = match clients.client().await {
            Ok(client) => tokio::time::timeout(CONNECT_TIMEOUT * 2, client.get_async_pubsub())
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        if connected.is_none() {
            // A cluster: the next node (any node hears every publication).
            clients.next_node();
        }
        if let Some(mut pubsub) = connected {
            if pubsub.psubscribe(&pattern).await.is_ok() {
                let mut messages = pubsub.on_message();
                let mut moved = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        message = messages.next() => match message {
                            Some(message) => {
                                if let Some(name) = channels.get(message.get_channel_name()) {
                                    local.changed(name);
                                }
                            }
                            None => break,
                        },
                        _ = moved.tick() => if clients.generation() != generation {
                            break;
                        },
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[async_trait]
impl TokenStore for RedisStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Redis
    }

    async fn load(&self, credential: &str) -> Result<Option<StoredSet>, StoreError> {
        if let Some(entry) = self.subject_entry(credential) {
            let script = redis::Script::new(LOAD);
            let mut invocation = script.key(self.set_key(credential));
            invocation
                .key(entry.index)
                .arg(entry.hash)
                .arg(entry.member);
            let sealed: Option<String> = self.script(&invocation).await?;
            return match sealed {
                Some(s) => self.open_set(credential, &s).map(Some),
                None if !self.unkeyed_names => self.adopt_unkeyed(credential).await,
                None => Ok(None),
            };
        }
        let mut con = self.connection().await?;
        self.read_set(credential, &mut con).await
    }

    async fn save(
        &self,
        credential: &str,
        token: &StoredToken,
        expected: Option<u64>,
    ) -> Result<SaveOutcome, StoreError> {
        let generation = expected.map_or(1, |g| g + 1);
        let set = StoredSet {
            token: token.clone(),
            generation,
        };
        let sealed = seal_set(&self.sealer, &set, &self.aad(credential))?;
        let saved = self
            .write_set(
                credential,
                WriteRule::IfGeneration(expected),
                generation,
                sealed,
                token.refresh_token.is_some().then(|| content_of(token)),
            )
            .await?;
        if saved {
            self.local.changed(credential);
            return Ok(SaveOutcome::Saved { generation });
        }
        let current = self.load(credential).await.ok().flatten().map(Box::new);
        Ok(SaveOutcome::Conflict { current })
    }

    async fn refill(&self, credential: &str, set: &StoredSet) -> Result<bool, StoreError> {
        let sealed = seal_set(&self.sealer, set, &self.aad(credential))?;
        let confirm = set
            .token
            .refresh_token
            .is_some()
            .then(|| content_of(&set.token));
        self.write_set(
            credential,
            WriteRule::IfNewer,
            set.generation,
            sealed,
            confirm,
        )
        .await
    }

    async fn remove(&self, credential: &str) -> Result<(), StoreError> {
        let script = redis::Script::new(REMOVE);
        let mut invocation = script.key(self.set_key(credential));
        if let Some(entry) = self.subject_entry(credential) {
            invocation.key(entry.index).arg(entry.hash);
        }
        {
            // After every write to this record already sent on either connection: one that
            // ran out its time may still be queued there, and the removal must not run
            // before it (a write that refills a missing record would bring it back). A
            // keyed read on the data connection (on the record's node in a cluster) comes
            // back once those ahead of it ran; the removal goes on the confirmed writes'
            // connection, in turn.
            let mut exists = redis::cmd("EXISTS");
            exists.arg(self.set_key(credential));
            let mut data = self.connection().await?;
            let _: i64 = self.run(&exists, &mut data).await?;
            let _turn = self.confirmed_turn.lock().await;
            let _: i64 = self.script_on(Lane::Confirmed, &invocation).await?;
        }
        lock(&self.unconfirmed).remove(credential);
        // A removed record's rotation journal goes too (it only matters next to its record).
        let journal = self
            .journal_reader
            .target(&self.prefix, &self.suffix(credential));
        self.journal_reader.forget(&journal).await?;
        self.local.changed(credential);
        Ok(())
    }

    /// A per-subject credential's subjects, from its index, in the order of their hashes.
    async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        // Only a credential's subjects are indexed (`prefix` is "{credential}\n").
        let Some(name) = RecordKey::credential_of_subjects_prefix(prefix) else {
            return Ok(Vec::new());
        };
        let mut min = match after.and_then(|a| a.strip_prefix(prefix)) {
            // Every entry of a greater hash sorts after "{hash};" (';' follows ':').
            Some(subject) => format!("[{};", self.subject_hash(subject)),
            None => "-".to_string(),
        };
        let index = self.index_key(name);
        let mut con = self.connection().await?;
        let mut keys = Vec::new();
        // A short page means the end, so entries that do not open are made up for from
        // further on.
        while keys.len() < limit {
            let want = (limit - keys.len()).min(10_000);
            let members: Vec<String> = self
                .run(
                    redis::cmd("ZRANGEBYLEX")
                        .arg(&index)
                        .arg(&min)
                        .arg("+")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(want),
                    &mut con,
                )
                .await?;
            for member in &members {
                match self.open_member(name, member) {
                    Some(subject) => keys.push(format!("{prefix}{subject}")),
                    // Dropped from the index (the record stays): the subject's next save
                    // or load puts a good entry back.
                    None => {
                        let _: Result<i64, _> = self
                            .run(redis::cmd("ZREM").arg(&index).arg(member), &mut con)
                            .await;
                    }
                }
            }
            match members.last() {
                Some(last) if members.len() == want => min = format!("({last}"),
                _ => break,
            }
        }
        Ok(keys)
    }

    fn flow_store(self: Arc<Self>) -> Option<Arc<dyn FlowStore>> {
        Some(self)
    }

    fn list_order(&self, key: &str) -> String {
        match RecordKey::parse(key).subject() {
            Some(subject) => self.subject_hash(subject),
            None => key.to_string(),
        }
    }

    async fn load_many(&self, keys: &[String]) -> Result<Vec<Option<StoredSet>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.cmd("HGET").arg(self.set_key(key)).arg("sealed");
        }
        let mut con = self.connection().await?;
        let sealed: Vec<Option<String>> =
            self.answered(within(COMMAND_TIMEOUT, pipe.query_async(&mut con)).await)?;
        keys.iter()
            .zip(sealed)
            .map(|(key, s)| s.map(|s| self.open_set(key, &s)).transpose())
            .collect()
    }

    async fn lease(
        &self,
        credential: &str,
        hold_for: Duration,
        settle_first: bool,
    ) -> Result<LeaseAnswer, StoreError> {
        let lease = Lease::new(credential, &self.owner);
        let keys = vec![self.lease_key(credential), self.settle_key(credential)];
        let args = vec![
            lease.holder.clone(),
            (hold_for.as_millis().max(1) as u64).to_string(),
            (if settle_first { settle_ms() } else { 0 }).to_string(),
        ];
        // A lease for a refresh token that must not be sent twice (`settle_first`) counts
        // only once the replicas have it too: a master cut off from them (its sentinels
        // have promoted another) gives no lease.
        let asked = if settle_first {
            self.replicas_to_confirm()
        } else {
            0
        };
        let answer = match self.run_confirmed(TAKE_LEASE, &keys, &args, asked).await {
            Err(e @ StoreError::NotReplicated { .. }) => {
                let _ = self.release(&lease).await;
                return Err(e);
            }
            other => other?,
        };
        Ok(match answer {
            1 => LeaseAnswer::Taken(lease),
            left if left < 0 => LeaseAnswer::Settling {
                left: Duration::from_millis(left.unsigned_abs()),
            },
            _ => LeaseAnswer::Held,
        })
    }

    async fn renew(&self, lease: &Lease, hold_for: Duration) -> Result<bool, StoreError> {
        let script = redis::Script::new(RENEW);
        let mut invocation = script.key(self.lease_key(&lease.credential));
        invocation
            .arg(&lease.holder)
            .arg(hold_for.as_millis().max(1) as u64);
        let renewed: i64 = self.script(&invocation).await?;
        Ok(renewed == 1)
    }

    async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        let script = redis::Script::new(RELEASE);
        let mut invocation = script.key(self.lease_key(&lease.credential));
        invocation.arg(&lease.holder);
        let _: i64 = self.script(&invocation).await?;
        Ok(())
    }

    fn coordination(&self) -> &LocalCoordination {
        &self.local
    }

    fn watch(&self, credential: &str) -> watch::Receiver<u64> {
        self.subscribe();
        self.local.watch(credential)
    }

    fn helper_journal(&self, record: &str) -> Option<HelperJournal> {
        Some(HelperJournal::Redis {
            target: self
                .journal_reader
                .target(&self.prefix, &self.suffix(record)),
            reader: Arc::clone(&self.journal_reader),
        })
    }

    fn health(&self) -> StoreHealth {
        StoreHealth {
            backend: StoreBackend::Redis,
            up: self.health.up.load(Ordering::SeqCst),
            last_error: self
                .health
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

#[async_trait]
impl FlowStore for RedisStore {
    async fn put_connect(&self, id: &str, flow: &[u8], ttl: Duration) -> Result<(), StoreError> {
        let sealed = self.sealer.seal(flow, &self.connect_aad(id));
        let mut con = self.connection().await?;
        let _: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(format!("{}:connect:{id}", self.prefix))
                    .arg(sealed)
                    .arg("PX")
                    .arg(ttl.as_millis().max(1) as u64),
                &mut con,
            )
            .await?;
        Ok(())
    }

    async fn take_connect(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let script = redis::Script::new(TAKE);
        let invocation = script.key(format!("{}:connect:{id}", self.prefix));
        let sealed: Option<String> = self.script(&invocation).await?;
        Ok(sealed.and_then(|s| {
            let flow = self.sealer.open(&s, &self.connect_aad(id));
            if flow.is_none() {
                tracing::warn!(store = %self.health.store, "a connect flow in the store does not open (tampered?); it is refused");
            }
            flow
        }))
    }
}
