//! A real `redis-server` (Debian's, installed by scripts/setup.sh) on a free loopback port,
//! with no persistence, that a test can freeze, kill and restart empty. Stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::TestPki;

/// Whether a server speaks TLS, and with whose PKI.
pub enum Tls {
    None,
    Own,
    Shared(TestPki),
}

impl From<Option<TestPki>> for Tls {
    fn from(pki: Option<TestPki>) -> Tls {
        pki.map_or(Tls::None, Tls::Shared)
    }
}

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// When set, the server speaks TLS only, with this CA's server certificate, and asks
    /// every client for a certificate from it (`tls-auth-clients yes`).
    pub tls: Option<TestPki>,
    /// A replica's master port (`--replicaof 127.0.0.1 <port>`).
    replica_of: Option<u16>,
    /// A cluster node (`--cluster-enabled yes`), with its bus port.
    cluster_bus: Option<u16>,
    /// `requirepass` (and `masterauth`, for a replica), in the url too.
    password: Option<&'static str>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A TLS-only server (`rediss://`) with a private CA that asks for client certificates.
    pub fn start_tls() -> RedisServer {
        Self::start_with(true)
    }

    /// A node of a Redis Cluster (not in a cluster yet: see [`ClusterGroup`]).
    pub fn start_cluster_node() -> RedisServer {
        let dir = std::env::temp_dir().join(format!("bearerd-redis-{}", super::rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = RedisServer {
            port: 0,
            child: None,
            dir,
            tls: None,
            replica_of: None,
            cluster_bus: None,
            password: None,
        };
        for _ in 0..5 {
            server.port = super::free_addr().port();
            server.cluster_bus = Some(super::free_addr().port());
            if server.spawn() {
                return server;
            }
        }
        panic!("no cluster node started on any of 5 free ports");
    }

    /// A replica of the server on `master_port`, once it answers (it syncs by itself).
    /// `pki`: TLS only, with that PKI (shared by a group), replication over TLS too.
    pub fn start_replica_of(
        master_port: u16,
        password: Option<&'static str>,
        pki: Option<TestPki>,
    ) -> RedisServer {
        Self::start_as(pki, Some(master_port), password)
    }

    /// A server that asks for this password (`requirepass`); TLS only with `pki`.
    pub fn start_with_password(password: &'static str, pki: Option<TestPki>) -> RedisServer {
        Self::start_as(pki, None, Some(password))
    }

    fn start_with(tls: bool) -> RedisServer {
        let tls = if tls { Tls::Own } else { Tls::None };
        Self::start_as(tls, None, None)
    }

    fn start_as(
        tls: impl Into<Tls>,
        replica_of: Option<u16>,
        password: Option<&'static str>,
    ) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("bearerd-redis-{}", super::rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = match tls.into() {
            Tls::None => None,
            // Its own PKI, in its own directory (removed with it).
            Tls::Own => Some(TestPki::generate(&dir.join("pki"))),
            Tls::Shared(pki) => Some(pki),
        };
        let mut server = RedisServer {
            port: 0,
            child: None,
            dir,
            tls,
            replica_of,
            cluster_bus: None,
            password,
        };
        // The port picked can be taken by another test before redis-server binds it; then
        // that server exits, and the test must not go on against somebody else's server.
        for _ in 0..5 {
            server.port = super::free_addr().port();
            if server.spawn() {
                return server;
            }
        }
        panic!("redis-server did not start on any of 5 free ports");
    }

    /// Starts redis-server on `self.port` and waits until it answers; false when it exited
    /// instead (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(pki) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&pki.server_cert)
                .arg("--tls-key-file")
                .arg(&pki.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&pki.ca)
                .args(["--tls-auth-clients", "yes", "--tls-replication", "yes"])
                .arg("--tls-client-cert-file")
                .arg(&pki.client_cert)
                .arg("--tls-client-key-file")
                .arg(&pki.client_key),
        };
        if let Some(master) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        if let Some(password) = self.password {
            command.args(["--requirepass", password, "--masterauth", password]);
        }
        if let Some(bus) = self.cluster_bus {
            command
                .args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .args(["--cluster-port", &bus.to_string()])
                .arg("--cluster-config-file")
                .arg(self.dir.join(format!("nodes-{}.conf", self.port)));
        }
        let mut child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dir", &self.dir.display().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if child.try_wait().ok().flatten().is_some() {
                return false;
            }
            if let Some(mut con) = self.connection() {
                // The answer may come from another test's server that got the same port
                // while ours is still failing to bind: only our own process counts.
                let info: String = redis::cmd("INFO")
                    .arg("server")
                    .query(&mut con)
                    .unwrap_or_default();
                let ours = format!("process_id:{}", child.id());
                if !info.lines().any(|l| l.trim() == ours) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        let auth = self.password.map_or(String::new(), |p| format!(":{p}@"));
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// Runs one command (for tests that tamper with what bearerd wrote).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut con = self.connection().expect("redis is up");
        cmd.query(&mut con).unwrap()
    }

    fn connection(&self) -> Option<redis::Connection> {
        let mut con = client_for(&self.url(), self.tls.as_ref())?;
        redis::cmd("PING").query::<String>(&mut con).ok()?;
        Some(con)
    }

    /// Every key with its value (strings as they are, hashes as `field=value` lines). A key
    /// that expires between the listing and the read (a lease) is left out.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut con = self.connection().expect("redis is up");
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
        keys.sort();
        keys.into_iter()
            .filter_map(|k| {
                let kind: String = redis::cmd("TYPE").arg(&k).query(&mut con).unwrap();
                let value = match kind.as_str() {
                    "hash" => {
                        let mut fields: Vec<(String, String)> =
                            redis::cmd("HGETALL").arg(&k).query(&mut con).unwrap();
                        fields.sort();
                        fields
                            .into_iter()
                            .map(|(f, v)| format!("{f}={v}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    }
                    "string" => redis::cmd("GET")
                        .arg(&k)
                        .query::<Option<String>>(&mut con)
                        .unwrap()?,
                    "zset" => redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .query::<Vec<String>>(&mut con)
                        .unwrap()
                        .join("\n"),
                    "none" => return None,
                    other => format!("<{other}>"),
                };
                Some((k, value))
            })
            .collect()
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let ok = Command::new("kill")
            .args([signal, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {signal} {pid}");
    }

    /// Freezes the server: connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Whether the process runs (it was not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (its data is gone: there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new CA, server and client certificates written over the old files (as a
    /// certificate manager renews them), and the server restarted empty with them.
    pub fn renew_pki_and_restart(&mut self) {
        // Over the same files: the sidecars under test read them where they were.
        let pki = self.tls.as_ref().expect("a TLS server");
        let dir = pki.ca.parent().unwrap().to_path_buf();
        self.tls = Some(TestPki::generate(&dir));
        self.restart_empty();
    }

    /// The port of the master this server replicates, by its `INFO replication`; `None`
    /// for a master.
    pub fn master_port(&self) -> Option<u16> {
        let info: String = self.query(redis::cmd("INFO").arg("replication"));
        if !info.lines().any(|l| l.trim() == "role:slave") {
            return None;
        }
        info.lines()
            .find_map(|l| l.trim().strip_prefix("master_port:"))
            .and_then(|p| p.parse().ok())
    }

    /// Whether a replica's link to its master is up (it has synced).
    pub fn replica_synced(&self) -> bool {
        self.connection().is_some_and(|mut con| {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut con)
                .is_ok_and(|i| i.lines().any(|l| l.trim() == "master_link_status:up"))
        })
    }

    /// Starts an empty server on the same port, as a replica of `master_port` (a master
    /// that died comes back as the promoted one's replica).
    pub fn restart_empty_as_replica_of(&mut self, master_port: u16) {
        self.replica_of = Some(master_port);
        self.restart_empty();
    }

    /// Starts an empty server on the same port.
    pub fn restart_empty(&mut self) {
        self.kill();
        // The port was ours a moment ago; a clear failure beats a silent port change, since
        // the sidecars under test are configured with this port.
        assert!(
            self.spawn(),
            "redis-server did not restart on port {}",
            self.port
        );
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // A frozen server would not die of SIGTERM; SIGKILL always works.
            self.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Sentinel group on loopback: a master, one replica, and three sentinels (quorum 2) that
/// promote the replica about a second after the master stops answering. Every server and
/// sentinel asks for [`GROUP_PASSWORD`].
pub struct SentinelGroup {
    /// The data servers; which one is the master changes with each failover.
    pub servers: Vec<RedisServer>,
    pub sentinels: Vec<Sentinel>,
    /// TLS everywhere (servers, replication, sentinels), with one PKI.
    pub pki: Option<TestPki>,
    /// The sentinels ask for no password (the servers still do).
    pub open_sentinels: bool,
}

pub const MASTER_NAME: &str = "mymaster";
pub const GROUP_PASSWORD: &str = "sentinel-group-pw-5d1f";

impl SentinelGroup {
    pub fn start() -> SentinelGroup {
        Self::start_with(None, false)
    }

    /// Sentinels that ask for no password, in front of servers that ask for
    /// [`GROUP_PASSWORD`] (`store.master_password`).
    pub fn start_with_open_sentinels() -> SentinelGroup {
        Self::start_with(None, true)
    }

    /// Every server and sentinel speaks TLS only, with one private CA, and asks clients for
    /// a certificate from it.
    pub fn start_tls() -> SentinelGroup {
        let dir = std::env::temp_dir().join(format!("bearerd-pki-{}", super::rand_suffix()));
        Self::start_with(Some(TestPki::generate(&dir)), false)
    }

    fn start_with(pki: Option<TestPki>, open_sentinels: bool) -> SentinelGroup {
        let master = RedisServer::start_with_password(GROUP_PASSWORD, pki.clone());
        let replica = RedisServer::start_replica_of(master.port, Some(GROUP_PASSWORD), pki.clone());
        let group_master = master.port;
        let sentinels = (0..3)
            .map(|_| Sentinel::start(group_master, pki.as_ref(), !open_sentinels))
            .collect();
        let group = SentinelGroup {
            servers: vec![master, replica],
            sentinels,
            pki,
            open_sentinels,
        };
        group.wait_settled(group_master);
        group
    }

    /// The sentinels' urls, for `store.sentinels`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| {
                let scheme = if self.pki.is_some() {
                    "rediss"
                } else {
                    "redis"
                };
                let auth = if self.open_sentinels {
                    String::new()
                } else {
                    format!(":{GROUP_PASSWORD}@")
                };
                format!("{scheme}://{auth}127.0.0.1:{}", s.port)
            })
            .collect()
    }

    /// The master's port as the first sentinel that answers names it.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| s.master_port())
    }

    fn index_of(&self, port: u16) -> usize {
        self.servers.iter().position(|s| s.port == port).unwrap()
    }

    /// Until every sentinel names `master` and the master's replica has synced.
    fn wait_settled(&self, master: u16) {
        // A sentinel election that splits waits out the failover timeout before it tries
        // again: room for two.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let named = self
                .sentinels
                .iter()
                .all(|s| s.master_port() == Some(master));
            let synced = self
                .servers
                .iter()
                .filter(|s| s.port != master)
                .all(RedisServer::replica_synced);
            if named && synced {
                return;
            }
            if Instant::now() >= deadline {
                let views: Vec<_> = self.sentinels.iter().map(Sentinel::master_port).collect();
                let links: Vec<_> = self
                    .servers
                    .iter()
                    .map(|s| (s.port, s.replica_of, s.replica_synced()))
                    .collect();
                panic!("the sentinel group never settled on {master}: sentinels name {views:?}, servers (port, replica of, synced) {links:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of the master; returns once the sentinels promoted the replica, and the
    /// dead one is back, empty, as the new master's replica and synced. Returns how long
    /// the master was gone (kill to promotion).
    pub fn fail_over(&mut self) -> Duration {
        let old = self.master_port().expect("a master");
        let killed = Instant::now();
        let i = self.index_of(old);
        self.servers[i].kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        let new = loop {
            match self.master_port() {
                Some(p) if p != old => break p,
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "no sentinel promoted the replica"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let gone = killed.elapsed();
        self.servers[i].restart_empty_as_replica_of(new);
        self.wait_settled(new);
        gone
    }

    /// Freezes every replica (SIGSTOP): writes reach the master only.
    pub fn freeze_replicas(&self) {
        let master = self.master_port();
        for s in self.servers.iter().filter(|s| Some(s.port) != master) {
            s.freeze();
        }
    }

    pub fn thaw_replicas(&self) {
        let master = self.master_port();
        for s in self.servers.iter().filter(|s| Some(s.port) != master) {
            s.thaw();
        }
    }

    /// The server that is the master now.
    pub fn master(&self) -> &RedisServer {
        &self.servers[self.index_of(self.master_port().expect("a master"))]
    }
}

/// A `redis-server --sentinel` on a free loopback port, with a config file of its own (a
/// sentinel rewrites it). Killed on drop.
pub struct Sentinel {
    pub port: u16,
    child: Child,
    dir: PathBuf,
    pki: Option<TestPki>,
    password: Option<&'static str>,
}

impl Sentinel {
    fn start(master_port: u16, pki: Option<&TestPki>, with_password: bool) -> Sentinel {
        let password = with_password.then_some(GROUP_PASSWORD);
        for _ in 0..5 {
            let dir =
                std::env::temp_dir().join(format!("bearerd-sentinel-{}", super::rand_suffix()));
            std::fs::create_dir_all(&dir).unwrap();
            let port = super::free_addr().port();
            let conf = dir.join("sentinel.conf");
            let listen = match pki {
                None => format!("port {port}"),
                Some(p) => format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\ntls-auth-clients yes\ntls-replication yes\ntls-client-cert-file {}\ntls-client-key-file {}",
                    p.server_cert.display(),
                    p.server_key.display(),
                    p.ca.display(),
                    p.client_cert.display(),
                    p.client_key.display()
                ),
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}\nbind 127.0.0.1\ndir {}\nsentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\nsentinel down-after-milliseconds {MASTER_NAME} 1000\nsentinel failover-timeout {MASTER_NAME} 3000\nsentinel parallel-syncs {MASTER_NAME} 1\n{}sentinel auth-pass {MASTER_NAME} {GROUP_PASSWORD}\n",
                    dir.display(),
                    password.map(|p| format!("requirepass {p}\n")).unwrap_or_default()
                ),
            )
            .unwrap();
            let mut child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server --sentinel (scripts/setup.sh installs redis-server)");
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut up = false;
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                // Only our own process counts (another test may have taken the port).
                if sentinel_pid(port, pki, password) == Some(child.id()) {
                    up = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if up {
                return Sentinel {
                    port,
                    child,
                    dir,
                    pki: pki.cloned(),
                    password,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&dir);
        }
        panic!("no sentinel came up on any of 5 free ports");
    }

    /// The master's port as this sentinel names it.
    pub fn master_port(&self) -> Option<u16> {
        let mut con = sentinel_connection(self.port, self.pki.as_ref(), self.password)?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut con)
            .ok()?;
        addr.map(|(_, port)| port)
    }
}

impl SentinelGroup {
    /// Connections the sentinels accepted so far, summed (this call's own included).
    pub fn connections_received(&self) -> u64 {
        self.sentinels
            .iter()
            .map(Sentinel::connections_received)
            .sum()
    }
}

impl Sentinel {
    /// `total_connections_received` from this sentinel's INFO (this call's own included).
    pub fn connections_received(&self) -> u64 {
        let mut con =
            sentinel_connection(self.port, self.pki.as_ref(), self.password).expect("a sentinel");
        let info: String = redis::cmd("INFO").arg("stats").query(&mut con).unwrap();
        info.lines()
            .find_map(|l| l.trim().strip_prefix("total_connections_received:"))
            .and_then(|n| n.parse().ok())
            .expect("total_connections_received in a sentinel's INFO stats")
    }
}

fn sentinel_connection(
    port: u16,
    pki: Option<&TestPki>,
    password: Option<&str>,
) -> Option<redis::Connection> {
    let scheme = if pki.is_some() { "rediss" } else { "redis" };
    let auth = password.map(|p| format!(":{p}@")).unwrap_or_default();
    let url = format!("{scheme}://{auth}127.0.0.1:{port}");
    client_for(&url, pki)
}

/// The process id of whatever answers on `port`.
fn sentinel_pid(port: u16, pki: Option<&TestPki>, password: Option<&str>) -> Option<u32> {
    let mut con = sentinel_connection(port, pki, password)?;
    let info: String = redis::cmd("INFO").arg("server").query(&mut con).ok()?;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.parse().ok())
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of three masters (with or without a replica each) on loopback, made
/// with `redis-cli --cluster create`.
pub struct ClusterGroup {
    pub nodes: Vec<RedisServer>,
}

impl ClusterGroup {
    pub fn start() -> ClusterGroup {
        Self::start_with(0)
    }

    /// Three masters with a replica each, every replica synced.
    pub fn start_with_replicas() -> ClusterGroup {
        Self::start_with(1)
    }

    fn start_with(replicas: usize) -> ClusterGroup {
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| RedisServer::start_cluster_node())
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .expect("redis-cli (scripts/setup.sh installs redis-server, which brings it)");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let group = ClusterGroup { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !group.nodes.iter().all(|n| {
            let info: String = n.query(redis::cmd("CLUSTER").arg("INFO"));
            let synced = n.master_port().is_none() || n.replica_synced();
            synced && info.lines().any(|l| l.trim() == "cluster_state:ok")
        }) {
            assert!(
                Instant::now() < deadline,
                "the cluster never became ok with its replicas synced"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        group
    }

    /// The replicas of the master on `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.master_port() == Some(port))
            .collect()
    }

    /// `kill -9` of the master on `port`; returns once the cluster promoted its replica and
    /// every live node says `cluster_state:ok`, with how long that took and the new master.
    pub fn fail_over(&mut self, port: u16) -> (Duration, u16) {
        let replica = self.replicas_of(port).first().expect("a replica").port;
        let killed = Instant::now();
        let i = self.nodes.iter().position(|n| n.port == port).unwrap();
        self.nodes[i].kill();
        let deadline = Instant::now() + Duration::from_secs(30);
        let promoted = |n: &RedisServer| {
            let info: String = n.query(redis::cmd("INFO").arg("replication"));
            info.lines().any(|l| l.trim() == "role:master")
        };
        let node = |port: u16| self.nodes.iter().find(|n| n.port == port).unwrap();
        loop {
            let ok = self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let info: String = n.query(redis::cmd("CLUSTER").arg("INFO"));
                info.lines().any(|l| l.trim() == "cluster_state:ok")
            });
            if ok && promoted(node(replica)) {
                return (killed.elapsed(), replica);
            }
            assert!(
                Instant::now() < deadline,
                "the cluster never promoted {replica} after {port} died"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes' urls, for `store.cluster_nodes`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Every key in the cluster with its value, and the port of the master holding it.
    pub fn dump(&self) -> Vec<(u16, String, String)> {
        self.nodes
            .iter()
            .filter(|n| n.is_running() && n.master_port().is_none())
            .flat_map(|n| n.dump().into_iter().map(|(k, v)| (n.port, k, v)))
            .collect()
    }

    /// The hash slot of `key`.
    pub fn slot(&self, key: &str) -> i64 {
        self.nodes[0].query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
    }
}

/// A connection to `url` (half a second at most), with the PKI's CA and client certificate
/// for a TLS server.
fn client_for(url: &str, pki: Option<&TestPki>) -> Option<redis::Connection> {
    let client = match pki {
        None => redis::Client::open(url).ok()?,
        Some(pki) => {
            let read = |p: &PathBuf| std::fs::read(p).unwrap();
            redis::Client::build_with_tls(
                url,
                redis::TlsCertificates {
                    client_tls: Some(redis::ClientTlsConfig {
                        client_cert: read(&pki.client_cert),
                        client_key: read(&pki.client_key),
                    }),
                    root_cert: Some(read(&pki.ca)),
                },
            )
            .ok()?
        }
    };
    client
        .get_connection_with_timeout(Duration::from_millis(500))
        .ok()
}
