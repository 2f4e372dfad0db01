//! The Redis store's client, and the TLS files behind it. A `rediss://` store with a
//! `ca_file` or a client certificate reads them again every second (from the health check):
//! a renewed, usable set becomes the client of every new connection, and the store's own
//! connection is rebuilt on its next use. Open connections are not cut: TLS checks
//! certificates at the handshake only. A changed set that cannot be used (a certificate
//! written before its key, say) is reported once and the previous set stays in use.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::StoreError;
use crate::config::RedisTls;
use crate::material::watched::{fingerprint, Seen, Watched};

/// Why the TLS files of a Redis store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsFilesError {
    #[error("cannot read {what} {}: {source}", path.display())]
    Unreadable {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    CaFile(#[from] crate::material::ca::CaFileError),
    #[error(transparent)]
    Identity(#[from] crate::material::identity::IdentityError),
    #[error("the TLS files ({files}) cannot be used: {source}")]
    Unusable {
        files: String,
        source: redis::RedisError,
    },
}

/// What a reload found.
#[derive(Debug)]
pub enum Reload {
    /// The files are as they were (or as a set already refused).
    Unchanged,
    /// A new set is in use for new connections.
    Renewed,
    /// The files changed but cannot be used; the previous set stays. Said once per set.
    Refused(TlsFilesError),
}

/// Where the master is: one address, or wherever the sentinels say it is now.
enum Topology {
    Single,
    Sentinel {
        /// Each sentinel (asked on database 0), and the master's database its url names.
        sentinels: Vec<(redis::ConnectionInfo, i64)>,
        master_name: String,
        /// The master's own user and password; `None`: the sentinel url's.
        master_auth: Option<MasterCredentials>,
        /// The sentinel that answered last, asked first next time.
        first: AtomicUsize,
    },
    /// A Redis Cluster: commands go to their key's slot master (the cluster client
    /// follows the slot map); these nodes are where it starts.
    Cluster {
        nodes: Vec<redis::ConnectionInfo>,
        /// The node the change subscription tries first (the next after one that failed).
        first: AtomicUsize,
    },
}

/// The master's own user and password behind sentinels that ask for another (or none).
#[derive(Clone)]
pub struct MasterCredentials {
    pub username: Option<String>,
    pub password: SecretString,
}

/// The Redis servers bearerd talks to, resolved from the config.
pub enum RedisTarget<'a> {
    Url(&'a SecretString),
    Sentinel {
        sentinels: &'a [SecretString],
        master_name: &'a str,
        master_auth: Option<&'a MasterCredentials>,
    },
    Cluster {
        nodes: &'a [SecretString],
    },
}

/// A connection to the store's data: one server (a plain multiplexed connection, or one
/// that reconnects by itself), or a cluster that routes each command to its slot's master.
#[derive(Clone)]
pub enum RedisConnection {
    Plain(redis::aio::MultiplexedConnection),
    Managed(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl redis::aio::ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RedisConnection::Plain(c) => c.req_packed_command(cmd),
            RedisConnection::Managed(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RedisConnection::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Plain(c) => c.get_db(),
            RedisConnection::Managed(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// What locating the master found.
#[derive(Debug, PartialEq, Eq)]
pub enum Located {
    /// Where it was (or a single server).
    Same,
    /// The sentinels name another master: new connections go there.
    Moved,
}

pub struct RedisClients {
    topology: Topology,
    /// The master's address and handshake (user, password, database) as last located; the
    /// url's for a single server. `None` until the sentinels first answered.
    master: Mutex<Option<redis::ConnectionInfo>>,
    tls: RedisTls,
    /// The client for new connections to the master.
    current: ArcSwapOption<redis::Client>,
    /// The TLS files' contents in use, for clients to other addresses (sentinels, a master
    /// that moved).
    certificates: Mutex<Option<redis::TlsCertificates>>,
    /// Counts the clients put in use (renewed files, a master that moved); a connection
    /// built from an older one is rebuilt.
    generation: AtomicU64,
    /// Counts the master's moves alone: a connection to a master that moved is never kept.
    moves: AtomicU64,
    /// The TLS files as last read, and the client built from the last good set.
    files: Watched<BuiltSet>,
    /// The connection to the sentinel that answered last, kept: the sentinels are asked
    /// every second, and a handshake (TLS, AUTH) each time is a cost for every sidecar.
    kept_sentinel: Mutex<Option<KeptSentinel>>,
}

/// A sentinel's connection, and the client generation it was made in (renewed TLS files
/// or a moved master: a new one is made, as for the store's own connection).
struct KeptSentinel {
    index: usize,
    generation: u64,
    con: redis::aio::MultiplexedConnection,
}

/// A client and the certificates it was built with.
struct BuiltSet {
    client: Option<redis::Client>,
    certificates: redis::TlsCertificates,
}

/// The files' bytes, read together.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    cert: Option<Vec<u8>>,
    key: Option<Zeroizing<Vec<u8>>>,
}

impl TlsFiles {
    fn read(tls: &RedisTls) -> Result<TlsFiles, TlsFilesError> {
        let read = |path: &std::path::Path, what: &'static str| {
            std::fs::read(path).map_err(|source| TlsFilesError::Unreadable {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(TlsFiles {
            ca: tls
                .ca_file
                .as_deref()
                .map(|p| read(p, "ca_file"))
                .transpose()?,
            cert: tls
                .identity
                .as_ref()
                .map(|id| read(&id.cert, "client_cert"))
                .transpose()?,
            key: tls
                .identity
                .as_ref()
                .map(|id| read(&id.key, "client_key").map(Zeroizing::new))
                .transpose()?,
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        fingerprint([
            self.ca.as_deref().unwrap_or_default(),
            self.cert.as_deref().unwrap_or_default(),
            self.key.as_deref().map(|k| &k[..]).unwrap_or_default(),
        ])
    }
}

/// A url as the client reads it; errors never quote it (it may hold a password).
fn connection_info(url: &SecretString, what: &str) -> Result<redis::ConnectionInfo, StoreError> {
    redis::IntoConnectionInfo::into_connection_info(url.expose_secret().trim())
        .map_err(|e| StoreError::Invalid(format!("redis store: unusable {what}: {:?}", e.kind())))
}

impl RedisClients {
    /// The clients for `target`, with the TLS files read now. Nothing is sent yet (the
    /// sentinels are first asked at the first connection).
    pub fn new(target: RedisTarget<'_>, tls: &RedisTls) -> Result<RedisClients, StoreError> {
        let (topology, master) = match target {
            RedisTarget::Url(url) => (Topology::Single, Some(connection_info(url, "url")?)),
            RedisTarget::Sentinel {
                sentinels,
                master_name,
                master_auth,
            } => {
                // A sentinel has no databases (it refuses SELECT): it is asked on 0, and the
                // url's database is the master's.
                let sentinels = sentinels
                    .iter()
                    .enumerate()
                    .map(|(i, url)| {
                        let info = connection_info(url, &format!("sentinels entry {}", i + 1))?;
                        let db = info.redis_settings().db();
                        let settings = info.redis_settings().clone().set_db(0);
                        Ok((info.set_redis_settings(settings), db))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                if sentinels.is_empty() {
                    return Err(StoreError::Invalid(
                        "redis store: sentinels is empty".into(),
                    ));
                }
                let topology = Topology::Sentinel {
                    sentinels,
                    master_name: master_name.to_string(),
                    master_auth: master_auth.cloned(),
                    first: AtomicUsize::new(0),
                };
                (topology, None)
            }
            RedisTarget::Cluster { nodes } => {
                let nodes = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, url)| connection_info(url, &format!("cluster_nodes entry {}", i + 1)))
                    .collect::<Result<Vec<_>, _>>()?;
                // New connections for the subscription go to a node; the data's go
                // through the cluster client (see `connect`).
                let first = nodes.first().cloned().ok_or_else(|| {
                    StoreError::Invalid("redis store: cluster_nodes is empty".into())
                })?;
                let topology = Topology::Cluster {
                    nodes,
                    first: AtomicUsize::new(0),
                };
                (topology, Some(first))
            }
        };
        let clients = RedisClients {
            topology,
            master: Mutex::new(master.clone()),
            tls: tls.clone(),
            current: ArcSwapOption::empty(),
            certificates: Mutex::new(None),
            generation: AtomicU64::new(0),
            moves: AtomicU64::new(0),
            files: Watched::default(),
            kept_sentinel: Mutex::new(None),
        };
        if clients.has_tls_files() {
            let seen = clients
                .files
                .look(TlsFiles::read(tls), TlsFiles::fingerprint, |f| {
                    build(master.as_ref(), tls, f)
                })
                .map_err(|m| StoreError::Invalid(format!("redis store: {m}")))?;
            clients.put_in_use(seen.value());
        } else if let Some(info) = master {
            let client = redis::Client::open(info).map_err(|e| {
                StoreError::Invalid(format!("redis store: unusable url: {:?}", e.kind()))
            })?;
            clients.current.store(Some(Arc::new(client)));
        }
        Ok(clients)
    }

    fn put_in_use(&self, set: &BuiltSet) {
        *lock(&self.certificates) = Some(set.certificates.clone());
        self.current.store(set.client.clone().map(Arc::new));
    }

    /// The client for new connections to the master. With sentinels, they are asked first
    /// when no master is known yet.
    pub async fn client(&self) -> Result<redis::Client, RedisFailure> {
        if let Some(client) = self.current.load_full() {
            return Ok((*client).clone());
        }
        self.locate().await?;
        self.current
            .load_full()
            .map(|c| (*c).clone())
            .ok_or_else(|| RedisFailure::Refused("no master located".into()))
    }

    /// A client for another address with this store's TLS files (a sentinel, a master that
    /// moved).
    fn client_for(&self, info: redis::ConnectionInfo) -> Result<redis::Client, RedisFailure> {
        let certificates = lock(&self.certificates).clone();
        match certificates {
            Some(c) => redis::Client::build_with_tls(info, c),
            None => redis::Client::open(info),
        }
        .map_err(|e| RedisFailure::Refused(format!("unusable address: {:?}", e.kind())))
    }

    /// Asks the sentinels where the master is now (the one that answered last first); a
    /// master that moved gets the client of new connections. A single server never moves.
    pub async fn locate(&self) -> Result<Located, RedisFailure> {
        let Topology::Sentinel {
            sentinels,
            master_name,
            master_auth,
            first,
        } = &self.topology
        else {
            return Ok(Located::Same);
        };
        let start = first.load(Ordering::Relaxed);
        let mut last_failure = RedisFailure::Refused("no sentinel configured".into());
        for i in (0..sentinels.len()).map(|k| (start + k) % sentinels.len()) {
            let (sentinel, db) = &sentinels[i];
            match self.ask_sentinel(i, sentinel, master_name).await {
                Ok(Some((host, port))) => {
                    first.store(i, Ordering::Relaxed);
                    return self.master_at(sentinel, *db, master_auth.as_ref(), (host, port));
                }
                Ok(None) => {
                    last_failure = RedisFailure::Refused(format!(
                        "sentinel {} knows no master named {master_name:?}",
                        i + 1
                    ))
                }
                Err(why) => {
                    last_failure = RedisFailure::Refused(format!("sentinel {}: {why}", i + 1))
                }
            }
        }
        Err(last_failure)
    }

    /// Sentinel `index`'s answer, over the kept connection when it is this sentinel's and
    /// still answers, else over a new one (kept in turn).
    async fn ask_sentinel(
        &self,
        index: usize,
        sentinel: &redis::ConnectionInfo,
        master_name: &str,
    ) -> Result<Option<(String, u16)>, RedisFailure> {
        let ask = |mut con: redis::aio::MultiplexedConnection| async move {
            let cmd = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg(master_name)
                .clone();
            within(COMMAND_TIMEOUT, cmd.query_async(&mut con)).await
        };
        let generation = self.generation();
        let kept = lock(&self.kept_sentinel)
            .as_ref()
            .filter(|k| k.index == index && k.generation == generation)
            .map(|k| k.con.clone());
        if let Some(con) = kept {
            if let Ok(answer) = ask(con).await {
                return Ok(answer);
            }
            // Gone (a restarted sentinel, a cut connection): a new one below.
            *lock(&self.kept_sentinel) = None;
        }
        let client = self.client_for(sentinel.clone())?;
        let con = within(CONNECT_TIMEOUT, connect_plain(&client)).await?;
        let answer = ask(con.clone()).await?;
        *lock(&self.kept_sentinel) = Some(KeptSentinel {
            index,
            generation,
            con,
        });
        Ok(answer)
    }

    /// The master is at `host:port`, reached as `sentinel` is (TLS, user, password), or with
    /// its own user and password, on database `db`: a new address gets a new client.
    fn master_at(
        &self,
        sentinel: &redis::ConnectionInfo,
        db: i64,
        auth: Option<&MasterCredentials>,
        (host, port): (String, u16),
    ) -> Result<Located, RedisFailure> {
        let addr = match sentinel.addr() {
            redis::ConnectionAddr::TcpTls { .. } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                tls_params: None,
            },
            _ => redis::ConnectionAddr::Tcp(host, port),
        };
        let mut master = lock(&self.master);
        let same = master
            .as_ref()
            .is_some_and(|m| m.addr().to_string() == addr.to_string());
        if same && self.current.load().is_some() {
            return Ok(Located::Same);
        }
        let settings = match auth {
            None => sentinel.redis_settings().clone().set_db(db),
            Some(auth) => {
                // The sentinel url's protocol (e.g. `?protocol=resp3`) holds for the master too.
                let own = redis::RedisConnectionInfo::default()
                    .set_protocol(sentinel.redis_settings().protocol())
                    .set_db(db)
                    .set_password(auth.password.expose_secret());
                match &auth.username {
                    Some(user) => own.set_username(user),
                    None => own,
                }
            }
        };
        let info = sentinel.clone().set_addr(addr).set_redis_settings(settings);
        let client = self.client_for(info.clone())?;
        *master = Some(info);
        self.current.store(Some(Arc::new(client)));
        self.moves.fetch_add(1, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(Located::Moved)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// How often the master moved (a failover the sentinels announced).
    pub fn moves(&self) -> u64 {
        self.moves.load(Ordering::SeqCst)
    }

    /// Whether the master is found through sentinels (and may move).
    pub fn follows_sentinels(&self) -> bool {
        matches!(self.topology, Topology::Sentinel { .. })
    }

    /// Whether the store is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.topology, Topology::Cluster { .. })
    }

    /// The cluster's seed nodes as urls (for a rotation helper); empty for one server.
    pub fn cluster_urls(&self) -> Vec<String> {
        match &self.topology {
            Topology::Cluster { nodes, .. } => nodes.iter().map(url_of).collect(),
            _ => Vec::new(),
        }
    }

    /// A connection to the data: for a cluster, one that routes each command to its slot's
    /// master; otherwise a plain one to the master, or (`managed`) one that reconnects by
    /// itself.
    pub async fn connect(&self, managed: bool) -> Result<RedisConnection, RedisFailure> {
        if let Topology::Cluster { nodes, .. } = &self.topology {
            let mut builder = redis::cluster::ClusterClientBuilder::new(nodes.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(COMMAND_TIMEOUT)
                .retries(2);
            if let Some(certificates) = lock(&self.certificates).clone() {
                builder = builder.certs(certificates);
            }
            let client = builder.build().map_err(|e| {
                RedisFailure::Refused(format!("unusable cluster_nodes: {:?}", e.kind()))
            })?;
            let con = within(CONNECT_TIMEOUT * 2, client.get_async_connection()).await?;
            return Ok(RedisConnection::Cluster(con));
        }
        let client = self.client().await?;
        if !managed {
            let con = within(CONNECT_TIMEOUT * 2, connect_plain(&client)).await?;
            return Ok(RedisConnection::Plain(con));
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let con = within(
            CONNECT_TIMEOUT * 2,
            redis::aio::ConnectionManager::new_with_config(client, config),
        )
        .await?;
        Ok(RedisConnection::Managed(con))
    }

    /// A cluster's change subscription failed on its node: the next connection tries the
    /// next node.
    pub fn next_node(&self) {
        let Topology::Cluster { nodes, first } = &self.topology else {
            return;
        };
        let next = (first.load(Ordering::Relaxed) + 1) % nodes.len();
        first.store(next, Ordering::Relaxed);
        if let Ok(client) = self.client_for(nodes[next].clone()) {
            *lock(&self.master) = Some(nodes[next].clone());
            self.current.store(Some(Arc::new(client)));
        }
    }

    /// Whether there are files to watch.
    pub fn has_tls_files(&self) -> bool {
        self.tls.ca_file.is_some() || self.tls.identity.is_some()
    }

    /// The url of the master as last located (for a rotation helper, which connects by
    /// itself); `None` before the sentinels answered.
    pub fn master_url(&self) -> Option<SecretString> {
        let master = lock(&self.master).clone()?;
        Some(SecretString::from(url_of(&master)))
    }

    /// Reads the TLS files again and puts a changed, usable set in use.
    pub fn reload(&self) -> Reload {
        if !self.has_tls_files() {
            return Reload::Unchanged;
        }
        let master = lock(&self.master).clone();
        let seen = self
            .files
            .look(TlsFiles::read(&self.tls), TlsFiles::fingerprint, |f| {
                build(master.as_ref(), &self.tls, f)
            });
        match seen {
            Ok(Seen::Renewed(set)) => {
                self.put_in_use(&set);
                self.generation.fetch_add(1, Ordering::SeqCst);
                Reload::Renewed
            }
            // Missing for a moment (a volume being updated) is not a change: the next
            // second reads them again.
            Ok(Seen::Kept {
                why: Some(why),
                unreadable: false,
                ..
            }) => Reload::Refused(why),
            Ok(_) => Reload::Unchanged,
            Err(why) => Reload::Refused(why),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A url that reads back as `info` (user and password percent-encoded).
fn url_of(info: &redis::ConnectionInfo) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let (scheme, host, port) = match info.addr() {
        redis::ConnectionAddr::TcpTls { host, port, .. } => ("rediss", host.clone(), *port),
        redis::ConnectionAddr::Tcp(host, port) => ("redis", host.clone(), *port),
        redis::ConnectionAddr::Unix(_) => ("redis", String::new(), 0),
        // The enum is non-exhaustive; bearerd builds only the kinds above.
        _ => ("redis", String::new(), 0),
    };
    let settings = info.redis_settings();
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    let userinfo = match (settings.username(), settings.password()) {
        (None, None) => String::new(),
        (user, password) => format!(
            "{}:{}@",
            user.map(enc).unwrap_or_default(),
            password.map(enc).unwrap_or_default()
        ),
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{userinfo}{host}:{port}/{}", settings.db())
}

/// A client with these files, checked first as the config check does (a certificate that
/// parses, a client certificate that matches its key), so a half-written set is refused
/// here rather than at every handshake. No client before the master is located.
fn build(
    info: Option<&redis::ConnectionInfo>,
    tls: &RedisTls,
    files: TlsFiles,
) -> Result<BuiltSet, TlsFilesError> {
    // The bytes read, not the files again: they may have changed since.
    if let (Some(path), Some(ca)) = (&tls.ca_file, &files.ca) {
        crate::material::parse_ca_pem(path, ca)?;
    }
    if let (Some(identity), Some(cert), Some(key)) = (&tls.identity, &files.cert, &files.key) {
        crate::material::identity::identity_from_pem(identity, cert, key)?;
    }
    let certificates = redis::TlsCertificates {
        client_tls: match (files.cert, files.key) {
            (Some(client_cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert,
                // The Redis client keeps its own copy for every reconnection.
                client_key: key.to_vec(),
            }),
            _ => None,
        },
        root_cert: files.ca,
    };
    let client = info
        .map(|info| redis::Client::build_with_tls(info.clone(), certificates.clone()))
        .transpose()
        .map_err(|source| TlsFilesError::Unusable {
            files: tls.describe(),
            source,
        })?;
    Ok(BuiltSet {
        client,
        certificates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientIdentity;

    fn pair(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["bearerd".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// Unchanged files are not rebuilt; a renewed pair is put in use; a pair that does not
    /// match (the certificate written before its key) is refused once, not every second,
    /// and the set in use stays; the completed renewal is then put in use.
    #[test]
    fn renewed_files_are_used_and_a_half_written_pair_is_refused_once() {
        let dir = std::env::temp_dir().join(format!("bearerd-rc-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = pair(&dir, "first");
        let live = (dir.join("tls.crt"), dir.join("tls.key"));
        std::fs::copy(&cert, &live.0).unwrap();
        std::fs::copy(&key, &live.1).unwrap();
        let tls = RedisTls {
            ca_file: Some(live.0.clone()),
            identity: Some(ClientIdentity {
                cert: live.0.clone(),
                key: live.1.clone(),
            }),
        };
        let url = SecretString::from("rediss://127.0.0.1:1/0".to_string());
        let clients = RedisClients::new(RedisTarget::Url(&url), &tls).unwrap();
        assert!(matches!(clients.reload(), Reload::Unchanged));
        assert_eq!(clients.generation(), 0);

        let (cert2, key2) = pair(&dir, "second");
        std::fs::copy(&cert2, &live.0).unwrap();
        assert!(
            matches!(clients.reload(), Reload::Refused(m) if m.to_string().contains("does not match"))
        );
        assert!(
            matches!(clients.reload(), Reload::Unchanged),
            "refused once"
        );
        assert_eq!(clients.generation(), 0);

        std::fs::copy(&key2, &live.1).unwrap();
        assert!(matches!(clients.reload(), Reload::Renewed));
        assert_eq!(clients.generation(), 1);
        assert!(matches!(clients.reload(), Reload::Unchanged));

        // A file missing for a moment (a volume being swapped) changes nothing.
        std::fs::remove_file(&live.1).unwrap();
        assert!(matches!(clients.reload(), Reload::Unchanged));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The config refuses empty lists, but the type is public: an empty one is an error,
    /// not a panic.
    #[test]
    fn an_empty_list_of_nodes_or_sentinels_is_an_error() {
        let none: [SecretString; 0] = [];
        let tls = RedisTls::default();
        let cluster = RedisClients::new(RedisTarget::Cluster { nodes: &none }, &tls);
        assert!(
            matches!(cluster, Err(StoreError::Invalid(m)) if m.contains("cluster_nodes is empty"))
        );
        let sentinel = RedisTarget::Sentinel {
            sentinels: &none,
            master_name: "mymaster",
            master_auth: None,
        };
        let sentinel = RedisClients::new(sentinel, &tls);
        assert!(
            matches!(sentinel, Err(StoreError::Invalid(m)) if m.contains("sentinels is empty"))
        );
    }
}

/// How long one `WAIT` for the replicas may take (within the command's time limit).
pub(super) const REPLICA_WAIT: Duration = Duration::from_millis(500);

/// How many replicas must confirm a write that holds a refresh token, or guards one (a
/// lease, the rotation helper's in-flight mark and journal): `store.min_replicas_acked`;
/// by default 1 with sentinels (there are replicas by design, and a master cut off from
/// them must not give a lease), and otherwise 1 while the master has a replica connected
/// (a lone server has nothing a failover could promote). Shared with the journal reader.
#[derive(Clone)]
pub(super) struct ReplicaRule {
    pub(super) configured: Option<u32>,
    pub(super) sentinels: bool,
    /// The replicas connected to the master at the last health check (the fewest any
    /// master has, in a cluster).
    pub(super) seen: Arc<std::sync::atomic::AtomicU32>,
}

impl ReplicaRule {
    pub(super) fn replicas(&self) -> u32 {
        self.configured.unwrap_or_else(|| {
            if self.sentinels {
                return 1;
            }
            self.seen.load(Ordering::SeqCst).min(1)
        })
    }
}

/// The longest one Redis command may take.
pub(super) const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The longest a connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a Redis call gave nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisFailure {
    /// Redis's (or the connection's) own words, which never quote the URL.
    #[error("{0}")]
    Refused(String),
    #[error("no answer within {0:?}")]
    NoAnswer(Duration),
}

/// `work` within `limit`: its result, or why there is none (never the URL: it may hold a
/// password, and Redis errors do not quote it).
pub(super) async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, RedisFailure> {
    match tokio::time::timeout(limit, work).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(RedisFailure::Refused(e.to_string())),
        Err(_) => Err(RedisFailure::NoAnswer(limit)),
    }
}

/// A plain multiplexed connection with bearerd's time limits.
pub(super) async fn connect_plain(
    client: &redis::Client,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(COMMAND_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
}
