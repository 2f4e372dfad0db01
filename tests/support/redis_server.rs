//! A real `redis-server` (Debian's, installed by scripts/setup.sh) on a free loopback port,
//! with no persistence, that a test can freeze, kill and restart empty. Stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::TestPki;

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: PathBuf,
    /// When set, the server speaks TLS only, with this CA's server certificate, and asks
    /// every client for a certificate from it (`tls-auth-clients yes`).
    pub tls: Option<TestPki>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// A TLS-only server (`rediss://`) with a private CA that asks for client certificates.
    pub fn start_tls() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> RedisServer {
        let dir = std::env::temp_dir().join(format!("bearerd-redis-{}", super::rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = tls.then(|| TestPki::generate(&dir.join("pki")));
        let mut server = RedisServer {
            port: 0,
            child: None,
            dir,
            tls,
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
                .args(["--tls-auth-clients", "yes"]),
        };
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
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Runs one command (for tests that tamper with what bearerd wrote).
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let mut con = self.connection().expect("redis is up");
        cmd.query(&mut con).unwrap()
    }

    fn connection(&self) -> Option<redis::Connection> {
        let client = match &self.tls {
            None => redis::Client::open(self.url()).ok()?,
            Some(pki) => {
                let read = |p: &PathBuf| std::fs::read(p).unwrap();
                redis::Client::build_with_tls(
                    self.url(),
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
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(500))
            .ok()?;
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
        let dir = self.dir.join("pki");
        self.tls = Some(TestPki::generate(&dir));
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
