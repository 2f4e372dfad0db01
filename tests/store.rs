//! Tokens that survive restarts: the encrypted file store, seen from outside.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bearerd::Sidecar;
use support::{Harness, Options};

fn store_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bearerd-store-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn file_store(dir: &Path, key: &str) -> String {
    format!(
        "backend = \"file\"\npath = {:?}\nkey = \"{key}\"",
        dir.join("tokens.store").display().to_string()
    )
}

use support::restart;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_a_valid_stored_token_makes_no_token_request_and_is_ready_at_once() {
    let dir = store_dir();
    let key = bearerd::store::generate_key();
    let mut h = Harness::start(Options {
        store: file_store(&dir, &key),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let first: serde_json::Value = h.get("/api/a").await.json().await.unwrap();
    assert_eq!(h.tokens.state.requests(), 1);

    restart(&mut h).await;
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status(), 200, "ready as soon as it listens");
    let again: serde_json::Value = h.get("/api/b").await.json().await.unwrap();
    assert_eq!(
        again["token_serial"], first["token_serial"],
        "the stored token is used"
    );
    assert_eq!(
        h.tokens.state.requests(),
        1,
        "zero token requests after the restart"
    );
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["state"], "valid");
    assert!(
        status["credentials"]["api"]["next_refresh_in_s"]
            .as_f64()
            .unwrap()
            > 30.0
    );

    let bytes = std::fs::read(dir.join("tokens.store")).unwrap();
    assert!(
        !String::from_utf8_lossy(&bytes).contains("tok_"),
        "tokens are encrypted at rest"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("tokens.store"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_with_an_expired_token_refreshes_once_with_the_stored_refresh_token() {
    let dir = store_dir();
    let key = bearerd::store::generate_key();
    let mut h = Harness::start(Options {
        grant: "refresh_token",
        lifetime: Duration::from_secs(2),
        store: file_store(&dir, &key),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let old = h.sidecar.take().unwrap();
    tokio::task::spawn_blocking(move || old.shutdown())
        .await
        .unwrap();
    let before = h.tokens.state.requests();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let config = support::sidecar_config(&h.config_text);
    h.sidecar = Some(
        tokio::task::spawn_blocking(move || Sidecar::start(config))
            .await
            .unwrap()
            .unwrap(),
    );
    h.wait_ready().await;
    assert_eq!(
        h.tokens.state.requests(),
        before + 1,
        "one refresh, then ready"
    );
    assert_eq!(h.get("/api/x").await.status(), 200);
    // The seed was spent before the restart: using it again would have revoked the grant.
    assert_eq!(h.tokens.state.reuse_detected(), 0);
    assert_eq!(h.tokens.state.active_refresh_tokens(), 1);
}

/// Issue 20, hole 5: a stored token does not outlive a config change. Reproduced on the
/// file store: a token for one scope and endpoint A was served after the config changed,
/// and its refresh token went to the new endpoint B.
/// - Same issuer, other scopes: the old access token is not served; the stored refresh
///   token goes back to the issuer that issued it, once, for a token that fits the config.
/// - Another issuer: its token endpoint sees nothing; the credential needs a login or a
///   new seed, and its status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_config_change_never_serves_the_old_token_nor_sends_its_refresh_token_elsewhere() {
    let dir = store_dir();
    let key = bearerd::store::generate_key();
    let mut h = Harness::start(Options {
        grant: "refresh_token",
        store: file_store(&dir, &key),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let first: serde_json::Value = h.get("/api/a").await.json().await.unwrap();

    h.config_text = h.config_text.replace(
        "scopes = [\"demo.read\"]",
        "scopes = [\"demo.read\", \"demo.write\"]",
    );
    let before = h.tokens.state.requests();
    restart(&mut h).await;
    h.wait_ready().await;
    let second: serde_json::Value = h.get("/api/b").await.json().await.unwrap();
    assert_ne!(
        second["token_serial"], first["token_serial"],
        "the token of the old config is not served"
    );
    assert_eq!(
        h.tokens.state.requests(),
        before + 1,
        "one refresh, with the stored refresh token"
    );
    assert_eq!(h.tokens.state.reuse_detected(), 0);
    assert_eq!(h.tokens.state.active_refresh_tokens(), 1);

    let other = TokenServer::start(Duration::from_secs(60)).await.unwrap();
    h.config_text = h
        .config_text
        .replace(&h.tokens.token_url(), &other.token_url());
    restart(&mut h).await;
    // A deadline, so a regression fails the test instead of hanging it. The first attempt
    // may still be in flight ("refreshing") when the status is first read.
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = h.status().await;
            let state = &s["credentials"]["api"]["state"];
            if state != "initializing" && state != "refreshing" {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the credential settles within 30 s");
    let api = &status["credentials"]["api"];
    assert_eq!(api["state"], "failed", "{api}");
    let message = api["last_error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("issued by {}", h.tokens.issuer())),
        "the status says why: {message}"
    );
    assert_eq!(
        other.state.requests(),
        0,
        "nothing was sent to the new endpoint"
    );
    let r = h.get("/api/c").await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true);
}

fn run_bearerd(config: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["run", "-c"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("bearerd kept running with a bad store");
}

#[test]
fn a_bad_store_stops_startup_with_a_clear_error_and_is_left_unchanged() {
    let dir = store_dir();
    let store = dir.join("tokens.store");
    let write_config = |key: &str| {
        let path = dir.join("bearerd.toml");
        let (proxy, admin) = support::free_addr_pair();
        std::fs::write(
            &path,
            format!(
                "[server]\nproxy_listen = \"{}\"\nadmin_listen = \"{}\"\n[store]\n{}\n[credentials.c]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"x\"\n[upstreams.u]\nurl = \"http://127.0.0.1:9/\"\npath_prefix = \"/u\"\ncredential = \"c\"\n",
                proxy,
                admin,
                file_store(&dir, key)
            ),
        )
        .unwrap();
        path
    };
    // A store written under one key …
    let key_a = bearerd::store::generate_key();
    let key_b = bearerd::store::generate_key();
    let fs = bearerd::store::FileStore::open(&store, &bearerd::store::parse_key(&key_a).unwrap())
        .unwrap();
    let token = bearerd::store::StoredToken {
        access_token: secrecy::SecretString::from("tok_stored".to_string()),
        issued_at: std::time::SystemTime::now(),
        expires_at: Some(std::time::SystemTime::now() + Duration::from_secs(600)),
        scopes: vec![],
        refresh_token: None,
        logged_out: false,
        spent_seed: None,
        logout: None,
        bound_to: None,
        registration: None,
        dpop: None,
    };
    fs.save("c", Some(&token)).unwrap();
    let sealed = fs.sealed_record("c").unwrap();
    drop(fs); // one process per store: the sidecars below claim it
    let original = std::fs::read(&store).unwrap();

    // … opened with another: a clear error naming the file, and the file untouched.
    let out = run_bearerd(&write_config(&key_b));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&store.display().to_string()) && stderr.contains("wrong key"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&store).unwrap(), original);

    // Truncated: same.
    std::fs::write(&store, &original[..original.len() / 3]).unwrap();
    let out = run_bearerd(&write_config(&key_a));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&store.display().to_string()) && stderr.contains("truncated or damaged"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&store).unwrap(),
        &original[..original.len() / 3]
    );

    // Tampered: one byte of the sealed record flipped.
    let mut tampered = original.clone();
    let at = original
        .windows(sealed.len())
        .position(|w| w == sealed.as_bytes())
        .expect("the sealed record is in the file")
        + sealed.len()
        - 4;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&store, &tampered).unwrap();
    let out = run_bearerd(&write_config(&key_a));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("tampered"), "{stderr}");
    assert_eq!(std::fs::read(&store).unwrap(), tampered);
}

#[test]
fn a_file_store_without_a_key_says_how_to_make_one() {
    let dir = store_dir();
    let path = dir.join("bearerd.toml");
    std::fs::write(
        &path,
        format!("[store]\nbackend = \"file\"\npath = {:?}\n[credentials.c]\ngrant = \"static\"\ntoken = \"t\"\n[upstreams.u]\nurl = \"http://127.0.0.1:9/\"\npath_prefix = \"/u\"\ncredential = \"c\"\n", dir.join("s").display().to_string()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["check", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("bearerd keygen") && stderr.contains(":2:"),
        "{stderr}"
    );
}

#[test]
fn keygen_prints_a_usable_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .arg("keygen")
        .output()
        .unwrap();
    assert!(out.status.success());
    let key = String::from_utf8(out.stdout).unwrap();
    assert_eq!(bearerd::store::parse_key(key.trim()).unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_and_a_spent_seed_survive_a_restart() {
    let dir = store_dir();
    let key = bearerd::store::generate_key();
    let mut h = Harness::start(Options {
        grant: "refresh_token",
        store: file_store(&dir, &key),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let resp = h.admin_post("/credentials/api/logout").await;
    assert_eq!(resp.status(), 200);
    let made = h.tokens.state.requests();

    restart(&mut h).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.tokens.state.requests(),
        made,
        "the configured seed is not sent again after a restart"
    );
    assert_eq!(
        h.status().await["credentials"]["api"]["state"],
        "logged_out"
    );
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 503);
    // Even an operator's refresh refuses the spent seed instead of burning the grant.
    let resp = h.admin_post("/credentials/api/refresh").await;
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["status"]["last_error"]["kind"], "refresh_token_spent",
        "{body}"
    );
    assert_eq!(h.tokens.state.requests(), made);
    assert_eq!(h.tokens.state.reuse_detected(), 0);
}

// ---- The shared Redis store: replicas (real `bearerd run` processes) that behave as one ----

use support::redis_server::RedisServer;
use support::{TokenServer, Upstream};

/// A sidecar config on the shared peers and Redis; `grant_lines` add to the credential.
fn fleet_config(
    tokens: &TokenServer,
    upstream: &Upstream,
    redis: &RedisServer,
    key: &str,
    grant_lines: &str,
) -> String {
    // A TLS Redis is reached with its CA and a client certificate.
    let tls = redis.tls.as_ref().map_or(String::new(), |pki| {
        format!(
            "ca_file = {:?}\nclient_cert = {{ file = {:?} }}\nclient_key = {{ file = {:?} }}\n",
            pki.ca.display().to_string(),
            pki.client_cert.display().to_string(),
            pki.client_key.display().to_string()
        )
    });
    format!(
        "[server]\nproxy_listen = \"{{proxy}}\"\nadmin_listen = \"{{admin}}\"\n[store]\nbackend = \"redis\"\nurl = \"{}\"\nkey = \"{key}\"\n{tls}[credentials.api]\n{grant_lines}token_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nbackoff_base = \"200ms\"\nbackoff_cap = \"2s\"\n[upstreams.api]\nurl = \"http://{}/base\"\npath_prefix = \"/api\"\ncredential = \"api\"\n",
        redis.url(),
        tokens.token_url(),
        support::token_server::CLIENT_ID,
        support::token_server::CLIENT_SECRET,
        upstream.addr,
    )
}

/// A real `bearerd run` process of a fleet, with its own config and log; killed (SIGKILL)
/// when dropped.
struct Replica {
    proxy_addr: std::net::SocketAddr,
    admin_addr: std::net::SocketAddr,
    child: std::process::Child,
    dir: PathBuf,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes `template` with free ports to a directory of its own: (dir, config, proxy, admin).
fn replica_files(template: &str) -> (PathBuf, PathBuf, std::net::SocketAddr, std::net::SocketAddr) {
    let dir = std::env::temp_dir().join(format!("bearerd-replica-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (proxy, admin) = support::free_addr_pair();
    let text = template
        .replace("{proxy}", &proxy.to_string())
        .replace("{admin}", &admin.to_string());
    let config = dir.join("bearerd.toml");
    std::fs::write(&config, text).unwrap();
    (dir, config, proxy, admin)
}

/// Starts a `bearerd run` process (trying other ports if its own were taken meanwhile).
async fn start_sidecar(template: &str) -> Replica {
    for _ in 0..4 {
        let (dir, config, proxy_addr, admin_addr) = replica_files(template);
        let log = std::fs::File::create(dir.join("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bearerd"))
            .args(["run", "-c"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut replica = Replica {
            proxy_addr,
            admin_addr,
            child,
            dir,
        };
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if std::net::TcpStream::connect(admin_addr).is_ok() {
                return replica;
            }
            if replica.child.try_wait().unwrap().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!(
            "sidecar did not start: {}",
            std::fs::read_to_string(replica.dir.join("log")).unwrap_or_default()
        );
    }
    panic!("no sidecar process came up");
}

async fn wait_ready(client: &reqwest::Client, sidecar: &Replica) {
    for _ in 0..800 {
        let url = format!("http://{}/readyz", sidecar.admin_addr);
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sidecar never became ready");
}

/// `clients` loops of GETs through each sidecar for `duration`: (ok, non-2xx statuses).
async fn fleet_load(sidecars: &[Replica], clients: usize, duration: Duration) -> (usize, Vec<u16>) {
    let proxies: Vec<_> = sidecars.iter().map(|s| s.proxy_addr).collect();
    load_through(proxies, clients, duration).await
}

async fn load_through(
    proxies: Vec<std::net::SocketAddr>,
    clients: usize,
    duration: Duration,
) -> (usize, Vec<u16>) {
    let mut tasks = Vec::new();
    for proxy in proxies {
        for i in 0..clients {
            let url = format!("http://{proxy}/api/load/{i}");
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ok, mut bad) = (0, Vec::new());
                let started = std::time::Instant::now();
                while started.elapsed() < duration {
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => ok += 1,
                        Ok(r) => bad.push(r.status().as_u16()),
                        Err(_) => bad.push(0),
                    }
                }
                (ok, bad)
            }));
        }
    }
    let mut total = (0, Vec::new());
    for t in tasks {
        let (ok, bad) = t.await.unwrap();
        total.0 += ok;
        total.1.extend(bad);
    }
    total
}

/// One Redis, one token server and upstream, one store key: the sidecars of a fleet.
struct Fleet {
    redis: RedisServer,
    tokens: TokenServer,
    upstream: Upstream,
    key: String,
    client: reqwest::Client,
}

const CLIENT_CREDENTIALS: &str = "grant = \"client_credentials\"\n";

impl Fleet {
    async fn start(lifetime: Duration) -> Fleet {
        Self::start_on(lifetime, RedisServer::start()).await
    }

    async fn start_on(lifetime: Duration, redis: RedisServer) -> Fleet {
        let (tokens, upstream) = support::start_peers(lifetime).await;
        Fleet {
            redis,
            tokens,
            upstream,
            key: bearerd::store::generate_key(),
            client: reqwest::Client::new(),
        }
    }

    fn config(&self, redis: &RedisServer, key: &str, grant_lines: &str) -> String {
        fleet_config(&self.tokens, &self.upstream, redis, key, grant_lines)
    }

    /// A sidecar of the fleet, once ready.
    async fn sidecar(&self, grant_lines: &str) -> Replica {
        self.sidecar_on(&self.redis, grant_lines).await
    }

    async fn sidecar_on(&self, redis: &RedisServer, grant_lines: &str) -> Replica {
        let s = start_sidecar(&self.config(redis, &self.key, grant_lines)).await;
        wait_ready(&self.client, &s).await;
        s
    }

    fn requests(&self) -> usize {
        self.tokens.state.requests()
    }

    /// A grant that rotates refresh tokens, seeded with a fresh one; `extra` adds lines.
    fn rotating_grant(&self, extra: &str) -> String {
        let mut seed = String::new();
        Harness::write_seed(&mut seed, self.tokens.state.seed_refresh_token());
        format!("grant = \"refresh_token\"\n{seed}{extra}")
    }

    /// No refresh token was sent twice, and the grant's refresh token is still valid.
    fn assert_grant_alive(&self) {
        assert_eq!(
            self.tokens.state.reuse_detected(),
            0,
            "a refresh token was sent twice"
        );
        assert_eq!(
            self.tokens.state.active_refresh_tokens(),
            1,
            "the grant is alive"
        );
    }

    /// A GET through a replica's proxy.
    async fn get(&self, replica: &Replica, path: &str) -> reqwest::Response {
        let url = format!("http://{}{path}", replica.proxy_addr);
        self.client.get(url).send().await.unwrap()
    }

    /// A GET from a replica's admin API, as text.
    async fn admin(&self, replica: &Replica, path: &str) -> String {
        let url = format!("http://{}{path}", replica.admin_addr);
        let resp = self.client.get(url).send().await.unwrap();
        resp.text().await.unwrap()
    }

    /// Nothing in Redis is a token, a refresh token or a secret in the clear: every key
    /// and value is scanned for everything the provider issued and the client secret.
    fn assert_only_sealed_values(&self) {
        let dump = self.redis.dump();
        assert!(!dump.is_empty(), "nothing in Redis to scan");
        let secrets: Vec<String> = self
            .tokens
            .state
            .every_issued()
            .into_iter()
            .chain([support::token_server::CLIENT_SECRET.to_string()])
            .collect();
        for (k, v) in &dump {
            for s in &secrets {
                assert!(
                    !v.contains(s.as_str()) && !k.contains(s.as_str()),
                    "a secret in Redis under {k}"
                );
            }
        }
    }
}

/// Three sidecars on one Redis: the first makes the one token request, the others start
/// from its set; under load with 3-second tokens they make about the token requests of one
/// sidecar alone, with no failed request; and Redis holds only sealed values.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_makes_the_token_requests_of_one_sidecar() {
    let f = Fleet::start(Duration::from_secs(3)).await;

    // One sidecar alone, on a Redis of its own, for the comparison.
    let own_redis = RedisServer::start();
    let alone = f.sidecar_on(&own_redis, CLIENT_CREDENTIALS).await;
    let before = f.requests();
    let (_, bad) = fleet_load(std::slice::from_ref(&alone), 8, Duration::from_secs(12)).await;
    support::assert_all_2xx(&bad);
    let one_alone = f.requests() - before + 1;
    drop(vec![alone]);

    let before = f.requests();
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(f.sidecar(CLIENT_CREDENTIALS).await);
    }
    assert_eq!(
        f.requests() - before,
        1,
        "one token request for three sidecars at startup"
    );
    let (ok, bad) = fleet_load(&fleet, 8, Duration::from_secs(12)).await;
    let fleet_requests = f.requests() - before;
    eprintln!("token requests in 12 s: one sidecar alone {one_alone}, three on one Redis {fleet_requests} ({ok} requests served)");
    support::assert_all_2xx(&bad);
    assert!(
        fleet_requests as f64 <= 1.5 * one_alone as f64,
        "three sidecars made {fleet_requests} token requests, one alone {one_alone}"
    );

    f.assert_only_sealed_values();
    drop(fleet);
}

/// Redis over TLS as a managed Redis, or one with cert-manager certificates, runs it: a
/// private CA, and a client certificate required (`tls-auth-clients yes`). Two sidecars with
/// `rediss://`, `ca_file`, `client_cert` and `client_key` share one token set through it (one
/// token request between them), and Redis holds only sealed values. A sidecar that trusts
/// another CA, or shows no client certificate, never gets through to that Redis: it still
/// serves (client credentials refresh without the store), and its `/status` says the store
/// is down and why. When the CA and certificates are renewed (files rewritten, Redis
/// restarted with them), the sidecars reconnect with the new files without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_rediss_with_a_private_ca_and_client_certificates_shares_one_token() {
    let f = Fleet::start_on(Duration::from_secs(300), RedisServer::start_tls()).await;
    let a = f.sidecar(CLIENT_CREDENTIALS).await;
    let b = f.sidecar(CLIENT_CREDENTIALS).await;
    assert_eq!(
        f.requests(),
        1,
        "the second sidecar starts from the first one's token, read over TLS"
    );
    for s in [&a, &b] {
        let status: serde_json::Value = serde_json::from_str(&f.admin(s, "/status").await).unwrap();
        assert_eq!(status["store"]["up"], true, "{status}");
        let resp = f.get(s, "/api/x").await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(f.requests(), 1);
    f.assert_only_sealed_values();

    let pki = f.redis.tls.as_ref().unwrap();
    let good = f.config(&f.redis, &f.key, CLIENT_CREDENTIALS);
    let ca_line = format!("ca_file = {:?}\n", pki.ca.display().to_string());
    let client_lines = good
        .lines()
        .filter(|l| l.starts_with("client_cert = {") || l.starts_with("client_key = {"))
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    assert!(good.contains(&ca_line) && !client_lines.is_empty());
    for (why, config) in [
        (
            "trusts another CA",
            good.replace(
                &ca_line,
                &format!("ca_file = {:?}\n", pki.other_ca.display().to_string()),
            ),
        ),
        (
            "shows no client certificate",
            good.replace(&client_lines, ""),
        ),
    ] {
        assert_ne!(config, good);
        let before = f.requests();
        let s = start_sidecar(&config).await;
        wait_ready(&f.client, &s).await;
        store_up_becomes(&f.client, &s, false).await;
        let status: serde_json::Value =
            serde_json::from_str(&f.admin(&s, "/status").await).unwrap();
        let error = status["store"]["last_error"].as_str().unwrap_or_default();
        eprintln!("a sidecar that {why}: the store is down: {error}");
        // The reason is the certificate, not a timeout: the server's certificate is from
        // an unknown CA, or the server refused the handshake (TLS 1.3 sends that alert
        // after the client's last flight, so a slow reader may see the connection end).
        let expected: &[&str] = if why.contains("another CA") {
            &["UnknownIssuer"]
        } else {
            &[
                "CertificateRequired",
                "reset",
                "closed",
                "broken pipe",
                "eof",
            ]
        };
        assert!(
            expected
                .iter()
                .any(|e| error.to_lowercase().contains(&e.to_lowercase())),
            "a sidecar that {why}: the store error {error:?} does not say why"
        );
        let resp = f.get(&s, "/api/x").await;
        assert_eq!(resp.status(), 200, "a sidecar that {why} still serves");
        assert_eq!(
            f.requests(),
            before + 1,
            "a sidecar that {why} did not get the shared token"
        );
    }
    for s in [&a, &b] {
        let status: serde_json::Value = serde_json::from_str(&f.admin(s, "/status").await).unwrap();
        assert_eq!(status["store"]["up"], true, "{status}");
    }

    // The CA and every certificate are renewed in place, and Redis restarts with them: the
    // sidecars read the files again and get back in without a restart of their own (with
    // the files of their start, the server's new certificate is of an unknown CA).
    let loads_ok = |m: &str| {
        support::metric(
            m,
            "bearerd_store_operations_total{op=\"load\",result=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    let mut loads_before = Vec::new();
    for s in [&a, &b] {
        loads_before.push(loads_ok(&f.admin(s, "/metrics").await));
    }
    let mut f = f;
    f.redis.renew_pki_and_restart();
    let back = std::time::Instant::now();
    while !f.redis.dump().iter().any(|(k, _)| k.contains(":set:")) {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the set never came back over the renewed TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Each sidecar (not only the one that wrote the set back) reads the store again over
    // the renewed files: the emptied Redis made both look.
    for (s, before) in [&a, &b].into_iter().zip(loads_before) {
        while loads_ok(&f.admin(s, "/metrics").await) <= before {
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "a sidecar never read the store over the renewed TLS"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        store_up_becomes(&f.client, s, true).await;
        assert_eq!(f.get(s, "/api/x").await.status(), 200);
    }
    assert_eq!(f.requests(), 3, "no token request for the renewal");
    drop(vec![a, b]);
}

/// Replicas share a token set only when their credentials agree on what the token is: two
/// configs that differ only in scopes each get their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sidecars_whose_credentials_differ_never_adopt_each_others_token() {
    let f = Fleet::start(Duration::from_secs(60)).await;
    let narrow = format!("{CLIENT_CREDENTIALS}scopes = [\"a\"]\n");
    let a = f.sidecar(&narrow).await;
    let b = f
        .sidecar(&format!("{CLIENT_CREDENTIALS}scopes = [\"a\", \"b\"]\n"))
        .await;
    assert_eq!(f.requests(), 2);
    // The same config again adopts.
    let c = f.sidecar(&narrow).await;
    assert_eq!(f.requests(), 2);
    drop(vec![a, b, c]);
}

/// A sidecar with another store key refuses to start, names the store, and changes nothing
/// in Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sidecar_with_another_key_refuses_to_start_and_changes_nothing() {
    let f = Fleet::start(Duration::from_secs(60)).await;
    let first = f.sidecar(CLIENT_CREDENTIALS).await;
    let before = f.redis.dump();
    let other_key = f.config(
        &f.redis,
        &bearerd::store::generate_key(),
        CLIENT_CREDENTIALS,
    );
    let (dir, config, _, _) = replica_files(&other_key);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_bearerd"))
            .args(["run", "-c"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let e = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a wrong key must stop startup");
    assert!(e.contains("redis store") && e.contains("wrong key"), "{e}");
    assert!(
        !e.contains(&f.redis.url()),
        "the url is not in the error: {e}"
    );
    assert_eq!(f.redis.dump(), before);
    assert_eq!(f.requests(), 1);
    drop(vec![first]);
}

/// Three sidecars start at once on one Redis with one seed refresh token, against a
/// provider that revokes the grant on any reuse: under load with 3-second tokens, the seed
/// is sent once, no refresh token twice, the grant lives, and every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_sends_a_rotating_refresh_token_once() {
    let f = Fleet::start(Duration::from_secs(3)).await;
    let grant_lines = f.rotating_grant("");
    let fleet: Vec<_> = futures::future::join_all((0..3).map(|_| f.sidecar(&grant_lines))).await;
    assert_eq!(f.requests(), 1, "the seed was sent once");
    let (_, bad) = fleet_load(&fleet, 4, Duration::from_secs(15)).await;
    support::assert_all_2xx(&bad);
    assert!(
        f.tokens.state.rotations() >= 4,
        "{} rotations",
        f.tokens.state.rotations()
    );
    f.assert_grant_alive();
    f.assert_only_sealed_values();
    drop(fleet);
}

/// DPoP on a fleet: the key travels with the token set through Redis, so every replica
/// proves possession with the one key the tokens are bound to (the upstream checks each
/// proof against the token's binding), and the rotating grant, whose refresh tokens are
/// bound too, survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_redis_shares_the_dpop_key_with_its_tokens() {
    let f = Fleet::start(Duration::from_secs(2)).await;
    f.tokens.state.require_dpop(Some("fleet-nonce"));
    let grant_lines = f.rotating_grant("dpop = true\n");
    let fleet: Vec<_> = futures::future::join_all((0..3).map(|_| f.sidecar(&grant_lines))).await;
    let (_, bad) = fleet_load(&fleet, 4, Duration::from_secs(8)).await;
    support::assert_all_2xx(&bad);
    assert!(
        f.tokens.state.rotations() >= 3,
        "{}",
        f.tokens.state.rotations()
    );
    f.assert_grant_alive();
    let keys: std::collections::HashSet<String> = f
        .tokens
        .state
        .every_issued()
        .iter()
        .filter_map(|t| f.tokens.state.jkt_of(t))
        .collect();
    assert_eq!(keys.len(), 1, "one key for the fleet's tokens");
    let (accepted, refused, _, why) = f.upstream.state.dpop_counts();
    assert!(accepted > 0);
    assert_eq!(refused, 0, "{why:?}");
    f.assert_only_sealed_values();
    drop(fleet);
}

/// The `store.up` a sidecar's /status reports, once it reads `want` (bounded wait).
async fn store_up_becomes(client: &reqwest::Client, sidecar: &Replica, want: bool) {
    let url = format!("http://{}/status", sidecar.admin_addr);
    for _ in 0..200 {
        let status: serde_json::Value =
            client.get(&url).send().await.unwrap().json().await.unwrap();
        if status["store"]["up"] == want {
            assert_eq!(status["store"]["backend"], "redis");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("store.up never became {want}");
}

/// Redis hangs (SIGSTOP for 5 s), then dies and comes back empty, while two sidecars share
/// a rotating refresh token under load with 16-second tokens: no request fails, `store.up`
/// goes false and comes back, the set is back in Redis within seconds, and the grant lives.
///
/// The tokens outlive the outage (the rotation, which needs the lease, comes at 11–13 s,
/// after Redis is back): with 10-second tokens a slow machine sometimes reached the rotation
/// while Redis was still down, and a request got 503 `store-unavailable`, which is the
/// designed answer to a rotation that cannot take the lease, not what this test is about.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_rides_out_redis_hanging_and_coming_back_empty() {
    let mut f = Fleet::start(Duration::from_secs(16)).await;
    let grant_lines = f.rotating_grant("");
    let fleet = vec![f.sidecar(&grant_lines).await, f.sidecar(&grant_lines).await];
    let proxies = fleet.iter().map(|s| s.proxy_addr).collect();
    let load = tokio::spawn(load_through(proxies, 4, Duration::from_secs(18)));

    tokio::time::sleep(Duration::from_millis(500)).await;
    f.redis.freeze();
    let frozen = std::time::Instant::now();
    store_up_becomes(&f.client, &fleet[0], false).await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(frozen.elapsed())).await;
    f.redis.thaw();
    store_up_becomes(&f.client, &fleet[0], true).await;

    f.redis.kill();
    store_up_becomes(&f.client, &fleet[0], false).await;
    f.redis.restart_empty();
    store_up_becomes(&f.client, &fleet[0], true).await;
    let back = std::time::Instant::now();
    let restored = |suffix: &str| f.redis.dump().iter().any(|(k, _)| k.contains(suffix));
    while !restored(":set:") || !restored(":keycheck") {
        assert!(
            back.elapsed() < Duration::from_secs(10),
            "the set never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "the set was back in Redis {:?} after it answered again",
        back.elapsed()
    );

    let (_, bad) = load.await.unwrap();
    support::assert_all_2xx(&bad);
    assert!(
        f.tokens.state.rotations() >= 1,
        "no rotation during the test"
    );
    f.assert_grant_alive();
    // The outage is in the operation counts, and so are the writes that ended it.
    let mut errors = 0.0;
    let mut saves = 0.0;
    for s in &fleet {
        let m = f.admin(s, "/metrics").await;
        let count = |op: &str, result: &str| {
            support::metric(
                &m,
                &format!("bearerd_store_operations_total{{op=\"{op}\",result=\"{result}\"}}"),
            )
            .unwrap()
        };
        errors += ["load", "save", "refill", "lease", "renew", "release"]
            .iter()
            .map(|op| count(op, "error"))
            .sum::<f64>();
        saves += count("save", "ok") + count("refill", "ok");
        assert_eq!(support::metric(&m, "bearerd_store_up"), Some(1.0));
    }
    assert!(
        errors > 0.0 && saves > 0.0,
        "errors {errors}, saves {saves}"
    );
    f.assert_only_sealed_values();
    drop(fleet);
}

/// While Redis is gone, a rotating refresh token is never sent (it needs the lease): once
/// the token runs out, requests get 503 `store-unavailable` (not a re-login), and when Redis
/// is back the sidecar recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_a_rotating_refresh_token_waits_and_requests_get_store_unavailable() {
    let mut f = Fleet::start(Duration::from_secs(3)).await;
    let grant_lines = f.rotating_grant("wait_budget = \"1s\"\n");
    let sidecar = f.sidecar(&grant_lines).await;
    f.redis.kill();
    store_up_becomes(&f.client, &sidecar, false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resp = f.get(&sidecar, "/api/x").await;
    assert_eq!(resp.status(), 503);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:bearerd:problem:store-unavailable",
        "{problem}"
    );
    assert_eq!(problem["requires_reauth"], false);
    assert_eq!(
        f.requests(),
        1,
        "no refresh token was sent without the lease"
    );
    let status: serde_json::Value =
        serde_json::from_str(&f.admin(&sidecar, "/status").await).unwrap();
    assert!(status["store"]["last_error"].is_string(), "{status}");
    let metrics = f.admin(&sidecar, "/metrics").await;
    assert_eq!(support::metric(&metrics, "bearerd_store_up"), Some(0.0));

    f.redis.restart_empty();
    store_up_becomes(&f.client, &sidecar, true).await;
    let mut status = 0;
    for _ in 0..100 {
        status = f.get(&sidecar, "/api/x").await.status().as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "no recovery once Redis was back");
    f.assert_grant_alive();
    drop(vec![sidecar]);
}

/// A slow but live lease holder keeps the lease (it renews it while it works) and its
/// answer wins: with a provider that takes 8 s to answer, longer than an unrenewed lease
/// lasts, the second replica waits for the holder's set and adopts it instead of sending
/// the same refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_lease_holder_keeps_the_lease_and_its_answer_wins() {
    let f = Fleet::start(Duration::from_secs(60)).await;
    let grant_lines = f.rotating_grant("wait_budget = \"20s\"\n");
    f.tokens.state.set_delay(Duration::from_secs(8));
    let fleet: Vec<_> = futures::future::join_all((0..2).map(|_| f.sidecar(&grant_lines))).await;
    assert_eq!(f.requests(), 1, "the refresh token was sent once");
    f.assert_grant_alive();
    drop(fleet);
}

/// With Redis gone, a client-credentials credential refreshes on its own (no refresh token
/// to protect): its requests keep succeeding past the token's lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_redis_client_credentials_refresh_locally() {
    let mut f = Fleet::start(Duration::from_secs(2)).await;
    let sidecar = f.sidecar(CLIENT_CREDENTIALS).await;
    f.redis.kill();
    store_up_becomes(&f.client, &sidecar, false).await;
    let before = f.requests();
    let (_, bad) = load_through(vec![sidecar.proxy_addr], 2, Duration::from_secs(5)).await;
    support::assert_all_2xx(&bad);
    assert!(
        f.requests() > before,
        "no local refresh while Redis was down"
    );
    drop(vec![sidecar]);
}

/// How many empty restarts the settle test makes: 5 by default (CI), the full 20 with
/// `BEARERD_EMPTY_RESTARTS=20` (the README's command).
fn empty_restarts() -> usize {
    std::env::var("BEARERD_EMPTY_RESTARTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5)
}

/// A request of the load that was not answered 2xx: when it was sent, its status, and the
/// problem type bearerd answered with.
struct BadAnswer {
    sent: std::time::Instant,
    status: u16,
    problem: String,
}

/// `clients` loops of GETs spread over the proxies (client i on proxy i mod n) until `stop`:
/// (ok, the slowest ok, the answers that were not 2xx).
fn load_until(
    proxies: Vec<std::net::SocketAddr>,
    clients: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Duration, Vec<BadAnswer>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for i in 0..clients {
            let url = format!("http://{}/api/load/{i}", proxies[i % proxies.len()]);
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                let (mut ok, mut slowest, mut bad) = (0, Duration::ZERO, Vec::new());
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let sent = std::time::Instant::now();
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => {
                            ok += 1;
                            slowest = slowest.max(sent.elapsed());
                        }
                        Ok(r) => {
                            let status = r.status().as_u16();
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            let problem = format!(
                                "{} {}",
                                body["type"].as_str().unwrap_or(""),
                                body["detail"].as_str().unwrap_or("")
                            );
                            bad.push(BadAnswer {
                                sent,
                                status,
                                problem,
                            });
                        }
                        Err(_) => bad.push(BadAnswer {
                            sent,
                            status: 0,
                            problem: String::new(),
                        }),
                    }
                }
                (ok, slowest, bad)
            }));
        }
        let mut total = (0, Duration::ZERO, Vec::new());
        for t in tasks {
            let (ok, slowest, bad) = t.await.unwrap();
            total.0 += ok;
            total.1 = total.1.max(slowest);
            total.2.extend(bad);
        }
        total
    })
}

/// Redis restarted empty inside a rotation, again and again, while three sidecars share a
/// rotating refresh token (3-second tokens) against a strict provider (no reuse grace, the
/// grant revoked on any reuse), under load. Each restart comes right after a rotation, when
/// the holder has the new set and the other replicas still hold the one before it: the
/// window where a replica with an older set could take the first lease on the empty Redis
/// and send a spent refresh token. Every time the grant survives, no refresh token is sent
/// twice, and the only answers that are not 2xx are 503 `store-unavailable` sent while the
/// store settled (from the kill until every sidecar serves again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_restarted_empty_inside_a_rotation_never_burns_the_grant() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;
    let mut f = Fleet::start(Duration::from_secs(3)).await;
    let grant_lines = f.rotating_grant("");
    let fleet: Vec<_> = futures::future::join_all((0..3).map(|_| f.sidecar(&grant_lines))).await;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let load = load_until(
        fleet.iter().map(|s| s.proxy_addr).collect(),
        4 * fleet.len(),
        stop.clone(),
    );
    let mut rng = rand::thread_rng();
    // (killed at, every sidecar served again at)
    let mut settles: Vec<(Instant, Instant)> = Vec::new();
    let mut rotated_after = Vec::new();
    for round in 1..=empty_restarts() {
        // Right after a rotation: one replica holds the new set, the others the one before.
        let rotations = f.tokens.state.rotations();
        let waiting = Instant::now();
        while f.tokens.state.rotations() == rotations {
            assert_eq!(
                f.tokens.state.reuse_detected(),
                0,
                "after restart {}: a refresh token was sent twice, and the grant is revoked",
                round - 1
            );
            assert!(
                waiting.elapsed() < Duration::from_secs(30),
                "round {round}: no rotation"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(rand::Rng::gen_range(
            &mut rng,
            0..300,
        )))
        .await;
        f.redis.kill();
        let killed = Instant::now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rotations = f.tokens.state.rotations();
        f.redis.restart_empty();
        let back = Instant::now();
        // The settle ends with the next rotation: no refresh token goes out before it.
        while f.tokens.state.rotations() == rotations && f.tokens.state.reuse_detected() == 0 {
            assert!(
                back.elapsed() < Duration::from_secs(60),
                "round {round}: no rotation after the restart"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let first_rotation = back.elapsed();
        // Served again through every sidecar (or the grant is gone).
        for s in &fleet {
            while f.tokens.state.reuse_detected() == 0
                && f.get(s, "/api/probe").await.status() != 200
            {
                assert!(
                    killed.elapsed() < Duration::from_secs(60),
                    "round {round}: a sidecar never served again"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert_eq!(
            f.tokens.state.reuse_detected(),
            0,
            "round {round}: a refresh token was sent twice, and the grant is revoked"
        );
        settles.push((killed, Instant::now()));
        rotated_after.push(first_rotation);
        eprintln!(
            "restart {round}: the first rotation {:.1} s after Redis was back",
            first_rotation.as_secs_f64()
        );
    }
    // A last stretch after the last settle: every answer in it must be 2xx.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, slowest, bad) = load.await.unwrap();
    f.assert_grant_alive();
    let in_a_settle = |b: &BadAnswer| settles.iter().any(|(k, s)| b.sent >= *k && b.sent <= *s);
    for b in &bad {
        assert!(
            b.status == 503
                && b.problem
                    .starts_with("urn:bearerd:problem:store-unavailable "),
            "an answer {} {:?}",
            b.status,
            b.problem
        );
        assert!(in_a_settle(b), "a 503 outside the settle after a restart");
    }
    let settle_s: Vec<String> = rotated_after
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect();
    eprintln!(
        "{} empty restarts: the first rotation after each came [{}] s after Redis was back; {ok} requests answered 2xx (the slowest in {:.1} s), {} answered 503 store-unavailable while the store settled; {} rotations, no refresh token sent twice",
        settles.len(),
        settle_s.join(", "),
        slowest.as_secs_f64(),
        bad.len(),
        f.tokens.state.rotations()
    );
    drop(fleet);
}

/// What a rotation costs with the rotation helper and its Redis journal, against the same
/// exchange sent directly (no helper), on one Redis: the median of 40 forced refreshes each
/// (README figure; `cargo test --test store rotation_cost -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn rotation_cost_with_and_without_the_redis_journal() {
    let f = Fleet::start(Duration::from_secs(3600)).await;
    for helper in [false, true] {
        let template = f.config(&f.redis, &f.key, &f.rotating_grant(""));
        let (proxy, admin) = support::free_addr_pair();
        let text = template
            .replace("{proxy}", &proxy.to_string())
            .replace("{admin}", &admin.to_string());
        let mut config = support::sidecar_config(&text);
        if !helper {
            config.server.rotation_helper = None;
        }
        let sidecar = tokio::task::spawn_blocking(move || Sidecar::start(config))
            .await
            .unwrap()
            .unwrap();
        let mut times = Vec::new();
        for _ in 0..40 {
            let started = std::time::Instant::now();
            let r = f
                .client
                .post(format!(
                    "http://{}/credentials/api/refresh",
                    sidecar.admin_addr
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            times.push(started.elapsed());
        }
        times.sort();
        eprintln!(
            "{}: median {:.2} ms per forced rotation (min {:.2}, max {:.2})",
            if helper {
                "rotation helper with the Redis journal"
            } else {
                "sent directly, no journal"
            },
            times[20].as_secs_f64() * 1e3,
            times[0].as_secs_f64() * 1e3,
            times[39].as_secs_f64() * 1e3
        );
        tokio::task::spawn_blocking(move || sidecar.shutdown())
            .await
            .unwrap();
    }
    assert_eq!(f.tokens.state.reuse_detected(), 0);
}

/// A login's access token without a refresh token (a provider without offline access),
/// after a restart: still served until it expires, still said to have no refresh token,
/// and no refresh is tried before then (it would fail and mark a valid token failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_access_token_without_a_refresh_token_is_kept_to_its_expiry_across_a_restart() {
    let dir = store_dir();
    let key = bearerd::store::generate_key();
    let (tokens, upstream) = support::start_peers(Duration::from_secs(6)).await;
    let opts = Options {
        grant: "refresh_token",
        store: file_store(&dir, &key),
        ..Default::default()
    };
    let mut h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let (access_token, _) = h.tokens.state.tokens_for("alice");
    let handed = h
        .client
        .post(h.admin("/credentials/api/login"))
        .json(&serde_json::json!({"access_token": access_token, "expires_in": 6}))
        .send()
        .await
        .unwrap();
    assert_eq!(handed.status(), 200);
    let token_requests = h.tokens.state.requests();

    restart(&mut h).await;
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["state"], "valid", "{status}");
    assert_eq!(status["credentials"]["api"]["has_refresh_token"], false);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The state is read first: a token seen valid is still served a moment later, while
        // one read after a request may just have crossed its expiry floor.
        let status = h.status().await;
        let resp = h.get("/api/x").await;
        if resp.status() == 503 {
            break;
        }
        assert_eq!(resp.status(), 200);
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["token_subject"], "alice", "the handed-over token");
        assert_eq!(status["credentials"]["api"]["state"], "valid", "{status}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "still served after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "nothing to refresh with"
    );
}

// ---- Redis with failover: Sentinel, and writes the replicas confirm ----

use support::redis_server::{ClusterGroup, SentinelGroup, GROUP_PASSWORD, MASTER_NAME};

impl Fleet {
    /// A sidecar config on other Redis servers than the fleet's own: `servers` replaces its
    /// `url` line in `[store]`.
    fn config_on(&self, servers: &str, grant_lines: &str) -> String {
        let url_line = format!("url = \"{}\"\n", self.redis.url());
        let config = self.config(&self.redis, &self.key, grant_lines);
        assert!(config.contains(&url_line));
        config.replace(&url_line, servers)
    }

    /// A sidecar config on the Sentinel group; `store_lines` add to `[store]`.
    fn sentinel_config(
        &self,
        group: &SentinelGroup,
        store_lines: &str,
        grant_lines: &str,
    ) -> String {
        let urls: Vec<String> = group.urls().iter().map(|u| format!("{u:?}")).collect();
        let servers = format!(
            "sentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\n{store_lines}",
            urls.join(", ")
        );
        self.config_on(&servers, grant_lines)
    }

    async fn sentinel_sidecar(
        &self,
        group: &SentinelGroup,
        store_lines: &str,
        grant_lines: &str,
    ) -> Replica {
        let s = start_sidecar(&self.sentinel_config(group, store_lines, grant_lines)).await;
        wait_ready(&self.client, &s).await;
        s
    }

    async fn cluster_sidecar(&self, cluster: &ClusterGroup, grant_lines: &str) -> Replica {
        let urls: Vec<String> = cluster.urls().iter().map(|u| format!("{u:?}")).collect();
        let servers = format!("cluster_nodes = [{}]\n", urls.join(", "));
        let s = start_sidecar(&self.config_on(&servers, grant_lines)).await;
        wait_ready(&self.client, &s).await;
        s
    }
}

/// What a sidecar's `/status` and `bearerd_store_up` said about the store while watched:
/// (down seen in /status, up seen after it, 0 seen in the metric, 1 seen after it).
#[derive(Default, Debug, Clone, Copy)]
struct StoreSeen {
    status_down: bool,
    status_up_again: bool,
    metric_down: bool,
    metric_up_again: bool,
}

/// Watches a sidecar's store health every 100 ms until `stop` flips.
async fn watch_store(
    admin: std::net::SocketAddr,
    stop: tokio::sync::watch::Receiver<bool>,
) -> StoreSeen {
    let client = reqwest::Client::new();
    let mut seen = StoreSeen::default();
    while !*stop.borrow() {
        if let Ok(r) = client.get(format!("http://{admin}/status")).send().await {
            let status: serde_json::Value = r.json().await.unwrap_or_default();
            match status["store"]["up"].as_bool() {
                Some(false) => seen.status_down = true,
                Some(true) if seen.status_down => seen.status_up_again = true,
                _ => {}
            }
        }
        if let Ok(r) = client.get(format!("http://{admin}/metrics")).send().await {
            let text = r.text().await.unwrap_or_default();
            match support::metric(&text, "bearerd_store_up") {
                Some(0.0) => seen.metric_down = true,
                Some(v) if v == 1.0 && seen.metric_down => seen.metric_up_again = true,
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

/// Issue 23's acceptance test. Three sidecars find the master through three sentinels (every
/// server and sentinel with a password, given in the sentinel urls) and
/// share a rotating refresh token (3-second tokens, a provider that revokes the grant on any
/// reuse) under 8 clients, while the master is killed (`kill -9`) at random moments and
/// Sentinel promotes the replica each time; the dead master comes back empty as the new
/// master's replica. Results: no refresh token sent twice, the grant alive, every non-2xx a
/// 503 `store-unavailable` (counted and printed), and each sidecar saw the store go down and
/// come back in `/status` and in `bearerd_store_up`.
///
/// Short form here (2 failovers). The full form (README, "Redis with failover"):
/// `BEARERD_FAILOVERS=10 cargo test --test store failovers -- --nocapture`, and
/// with `BEARERD_MIN_REPLICAS_ACKED=0` for the run without confirmed writes (then the grant's
/// fate is printed, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_sentinel_rides_out_failovers_without_reusing_a_refresh_token() {
    use rand::Rng;
    let failovers: usize = std::env::var("BEARERD_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let acked = std::env::var("BEARERD_MIN_REPLICAS_ACKED").ok();
    let store_lines = acked
        .as_ref()
        .map_or(String::new(), |n| format!("min_replicas_acked = {n}\n"));
    let unconfirmed = acked.as_deref() == Some("0");

    let f = Fleet::start(Duration::from_secs(3)).await;
    let mut group = tokio::task::block_in_place(SentinelGroup::start);
    let grant_lines = f.rotating_grant("");
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(f.sentinel_sidecar(&group, &store_lines, &grant_lines).await);
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stop_load = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = load_until(
        fleet.iter().map(|s| s.proxy_addr).collect(),
        8,
        stop_load.clone(),
    );
    let watchers: Vec<_> = fleet
        .iter()
        .map(|s| tokio::spawn(watch_store(s.admin_addr, stopped.clone())))
        .collect();

    let started = std::time::Instant::now();
    let rotations_before = f.tokens.state.rotations();
    let mut gone = Vec::new();
    for _ in 0..failovers {
        let pause = rand::thread_rng().gen_range(1500..4500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        gone.push(tokio::task::block_in_place(|| group.fail_over()));
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.send(true).unwrap();
    stop_load.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, slowest, bad) = load.await.unwrap();
    let mut seen = Vec::new();
    for w in watchers {
        seen.push(w.await.unwrap());
    }
    let rotations = f.tokens.state.rotations() - rotations_before;
    let store_unavailable = bad
        .iter()
        .filter(|b| b.status == 503 && b.problem.contains("store-unavailable "))
        .count();
    eprintln!(
        "failover figures: {failovers} failovers in {:.1?} (master gone {gone:?}), min_replicas_acked {}, {ok} ok (slowest {slowest:.1?}), {} non-2xx ({store_unavailable} 503 store-unavailable), {rotations} rotations ({} token requests in all), refresh tokens reused {}, grant alive {}",
        started.elapsed(),
        acked.as_deref().unwrap_or("default"),
        bad.len(),
        f.requests(),
        f.tokens.state.reuse_detected(),
        f.tokens.state.active_refresh_tokens() == 1,
    );
    for b in &bad {
        eprintln!(
            "non-2xx {:.1?} into the run: {} {}",
            b.sent.saturating_duration_since(started),
            b.status,
            b.problem
        );
    }
    if unconfirmed {
        // Figures only: without confirmed writes, what a failover costs is what this run
        // shows.
        return;
    }
    f.assert_grant_alive();
    assert!(
        rotations as usize > failovers,
        "{rotations} rotations across {failovers} failovers"
    );
    assert_eq!(
        store_unavailable,
        bad.len(),
        "every non-2xx is a 503 store-unavailable"
    );
    assert!(
        bad.len() * 20 <= ok,
        "503s stay a bounded share: {} of {ok}",
        bad.len()
    );
    for (i, s) in seen.iter().enumerate() {
        assert!(
            s.status_down && s.status_up_again && s.metric_down && s.metric_up_again,
            "sidecar {i} saw the store go down and come back: {s:?}"
        );
    }
    // The sentinels' and the master's password (in every sentinel url) is in no log.
    for s in &fleet {
        let log = std::fs::read_to_string(s.dir.join("log")).unwrap();
        assert!(!log.contains(GROUP_PASSWORD), "the Redis password in a log");
    }
    drop(fleet);
}

/// Waits until `done`, for 30 s at most.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `min_replicas_acked`: while the replica is frozen, a rotated refresh token stored on the
/// master is not confirmed; its holder keeps the lease (a refresh asked of either sidecar
/// meanwhile sends no refresh token) and writes it again; once the replica is back, the
/// write is confirmed and rotations go on, the grant alive. The holder's `/status` says why
/// meanwhile. (8-second tokens: the holder waits for the replicas for at most half of what
/// the new token has left, 4 s here, well past the checks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rotation_is_confirmed_by_a_replica_before_its_lease_goes() {
    let f = Fleet::start(Duration::from_secs(8)).await;
    let group = tokio::task::block_in_place(SentinelGroup::start);
    let grant_lines = f.rotating_grant("");
    let fleet = vec![
        f.sentinel_sidecar(&group, "min_replicas_acked = 1\n", &grant_lines)
            .await,
        f.sentinel_sidecar(&group, "min_replicas_acked = 1\n", &grant_lines)
            .await,
    ];
    // A first rotation with the replica there.
    let start = f.tokens.state.rotations();
    until("a first rotation", || f.tokens.state.rotations() > start).await;
    // The next rotation's request is held at the provider: its sender has the lease (which
    // the replica confirmed) when the replica freezes, and the rotated set it stores then
    // is not confirmed.
    f.tokens.state.set_delay(Duration::from_millis(1500));
    let asked = f.requests();
    until("the next refresh", || f.requests() > asked).await;
    group.freeze_replicas();
    let frozen_at = f.tokens.state.rotations();
    until("the held rotation", &|| {
        f.tokens.state.rotations() > frozen_at
    })
    .await;
    f.tokens.state.set_delay(Duration::ZERO);
    // The rotation happened; its set is on the master but not confirmed: the lease stays,
    // and a refresh asked of either sidecar now (by an operator) does not rotate again.
    for s in &fleet {
        let url = format!("http://{}/credentials/api/refresh", s.admin_addr);
        let _ = f
            .client
            .post(url)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
    }
    // The rotation helper waits half a second for its journal to be confirmed, then the
    // holder stores the set, unconfirmed: its /status says so.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut said = false;
        for s in &fleet {
            said |= f.admin(s, "/status").await.contains("min_replicas_acked");
        }
        if said {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a holder's /status says its write is not confirmed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leased = group
        .master()
        .dump()
        .iter()
        .any(|(k, _)| k.contains(":lease:"));
    assert!(
        leased,
        "the holder keeps the lease while its write is not confirmed"
    );
    assert_eq!(
        f.tokens.state.rotations(),
        frozen_at + 1,
        "no other rotation while the lease is held"
    );

    group.thaw_replicas();
    let thawed = std::time::Instant::now();
    let confirmed = || {
        fleet.iter().any(|s| {
            std::fs::read_to_string(s.dir.join("log"))
                .unwrap_or_default()
                .contains("the token set is stored and confirmed")
        })
    };
    while !confirmed() {
        assert!(
            thawed.elapsed() < Duration::from_secs(10),
            "the write was never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Rotations go on: the other sidecar's refresh (asked above, or asked now) rotates.
    let after = f.tokens.state.rotations();
    let refresh = format!("http://{}/credentials/api/refresh", fleet[1].admin_addr);
    let _ = f.client.post(refresh).send().await;
    until("a rotation after the thaw", || {
        f.tokens.state.rotations() > after
    })
    .await;
    let (_, bad) = fleet_load(&fleet, 2, Duration::from_secs(3)).await;
    support::assert_all_2xx(&bad);
    f.assert_grant_alive();
}

/// The Redis store itself, on a master with one replica: a save of a set with a refresh
/// token waits for the replica (`WAIT`). With the replica frozen it answers `NotReplicated`
/// (the set is on the master, unconfirmed); the same save again, once the replica is back,
/// writes over its own unconfirmed write and is confirmed, with the generation it asked
/// for. Prints what the wait costs per write (the README's figure), against
/// `min_replicas_acked = 0`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_with_a_refresh_token_waits_for_the_replica_and_is_retried_over_itself() {
    use bearerd::store::{RedisStore, RedisTarget, SaveOutcome, StoreError, TokenStore};
    let group = tokio::task::block_in_place(SentinelGroup::start);
    let (sentinels, key) = secret_urls_and_key(group.urls());
    let credentials = [
        ("api", "binding".to_string()),
        ("crm", "binding-crm".to_string()),
        ("mail", "binding-mail".to_string()),
    ];
    let store = |acked: u32| {
        RedisStore::new(
            RedisTarget::Sentinel {
                sentinels: &sentinels,
                master_name: MASTER_NAME,
                master_auth: None,
            },
            &Default::default(),
            &key,
            "wait",
            &credentials,
            Some(acked),
        )
        .unwrap()
    };
    let token = stored_with_refresh_token;
    let confirmed = store(1);
    let saved = confirmed.save("api", &token("rt-1"), None).await.unwrap();
    assert!(
        matches!(saved, SaveOutcome::Saved { generation: 1 }),
        "{saved:?}"
    );

    assert!(confirmed.load("mail").await.unwrap().is_none());
    group.freeze_replicas();
    // While that write's WAIT holds its connection (half a second: the replica is away),
    // another credential's load is answered: it does not queue behind the WAIT. Another
    // confirmed write meanwhile waits its turn (not its time limit): unconfirmed too, not
    // a store that does not answer.
    let ((unconfirmed, saved_at), second, (other, loaded_at)) = tokio::join!(
        async {
            let r = confirmed.save("api", &token("rt-2"), Some(1)).await;
            (r, std::time::Instant::now())
        },
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            confirmed.save("crm", &token("rt-crm"), None).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = confirmed.load("mail").await;
            (r, std::time::Instant::now())
        }
    );
    assert!(matches!(other, Ok(None)), "{other:?}");
    assert!(
        loaded_at < saved_at,
        "the other credential's load waited for the WAIT"
    );
    assert!(
        matches!(second, Err(StoreError::NotReplicated { asked: 1, .. })),
        "{second:?}"
    );
    assert!(
        matches!(
            unconfirmed,
            Err(StoreError::NotReplicated {
                asked: 1,
                acknowledged: 0,
                ..
            })
        ),
        "{unconfirmed:?}"
    );
    group.thaw_replicas();
    // The retry: the record holds generation 2 (this holder's own, unconfirmed) and the
    // save still expects 1.
    let retried = confirmed
        .save("api", &token("rt-2"), Some(1))
        .await
        .unwrap();
    assert!(
        matches!(retried, SaveOutcome::Saved { generation: 2 }),
        "{retried:?}"
    );
    let loaded = confirmed.load("api").await.unwrap().unwrap();
    assert_eq!(loaded.generation, 2);
    use secrecy::ExposeSecret;
    assert_eq!(loaded.token.refresh_token.unwrap().expose_secret(), "rt-2");
    // Only the retry of the same set writes over an unconfirmed write: another set at that
    // generation (a logout's tombstone, another replica's) is a conflict, and so is a
    // stale save once the write was confirmed.
    group.freeze_replicas();
    let unconfirmed = confirmed.save("api", &token("rt-3"), Some(2)).await;
    assert!(
        matches!(unconfirmed, Err(StoreError::NotReplicated { .. })),
        "{unconfirmed:?}"
    );
    group.thaw_replicas();
    let other_set = confirmed
        .save("api", &token("rt-other"), Some(2))
        .await
        .unwrap();
    assert!(
        matches!(other_set, SaveOutcome::Conflict { .. }),
        "{other_set:?}"
    );
    let retried = confirmed
        .save("api", &token("rt-3"), Some(2))
        .await
        .unwrap();
    assert!(
        matches!(retried, SaveOutcome::Saved { generation: 3 }),
        "{retried:?}"
    );
    let again = confirmed
        .save("api", &token("rt-3"), Some(2))
        .await
        .unwrap();
    assert!(matches!(again, SaveOutcome::Conflict { .. }), "{again:?}");
    let stored = confirmed.load("api").await.unwrap().unwrap();
    assert_eq!(stored.generation, 3);
    assert_eq!(stored.token.refresh_token.unwrap().expose_secret(), "rt-3");
    let other = store(1);
    let conflict = other.save("api", &token("rt-x"), Some(2)).await.unwrap();
    assert!(
        matches!(conflict, SaveOutcome::Conflict { .. }),
        "{conflict:?}"
    );

    // The rotation helper's in-flight mark is confirmed too: with the replica away, the
    // helper does not send (a failover that lost the mark while its holder died would
    // have the next holder send the same refresh token).
    let Some(bearerd::store::HelperJournal::Redis { target, reader }) =
        confirmed.helper_journal("api")
    else {
        panic!("a Redis journal target");
    };
    group.freeze_replicas();
    let mut helper = target.connect().await.unwrap();
    let marked = helper.mark_in_flight("fp-1", Duration::from_secs(5)).await;
    group.thaw_replicas();
    assert!(
        matches!(&marked, Err(bearerd::store::RedisFailure::Refused(m)) if m.contains("0 of the 1 replica(s)")),
        "{marked:?}"
    );
    // Not sent, so not left marked: the next try of the same token does not wait it out.
    assert_eq!(reader.in_flight(&target, "fp-1").await.unwrap(), None);
    let mut helper = target.connect().await.unwrap();
    helper
        .mark_in_flight("fp-1", Duration::from_secs(5))
        .await
        .unwrap();
    helper
        .journal(
            secrecy::SecretString::from("rt-journaled".to_string()),
            "fp-1".into(),
        )
        .await
        .unwrap();
    helper.clear_in_flight("fp-1").await;

    // The cost of the wait per write, on loopback.
    let mut figures = Vec::new();
    for acked in [0, 1] {
        let s = store(acked);
        let mut generation = s.load("api").await.unwrap().unwrap().generation;
        let n = 300;
        let started = std::time::Instant::now();
        for i in 0..n {
            let saved = s
                .save("api", &token(&format!("rt-{acked}-{i}")), Some(generation))
                .await
                .unwrap();
            let SaveOutcome::Saved { generation: g } = saved else {
                panic!("{saved:?}");
            };
            generation = g;
        }
        figures.push((acked, started.elapsed() / n));
    }
    eprintln!(
        "save of a set with a refresh token, per write: {figures:?} (min_replicas_acked, mean)"
    );
}

/// Servers' urls as the store takes them, and a fresh store key.
fn secret_urls_and_key(urls: Vec<String>) -> (Vec<secrecy::SecretString>, [u8; 32]) {
    let urls = urls.into_iter().map(secrecy::SecretString::from).collect();
    let key = bearerd::store::parse_key(&bearerd::store::generate_key()).unwrap();
    (urls, key)
}

/// A token set with a refresh token, for the store-level tests.
fn stored_with_refresh_token(rt: &str) -> bearerd::store::StoredToken {
    let now = std::time::SystemTime::now();
    bearerd::store::StoredToken {
        access_token: secrecy::SecretString::from(format!("at-{rt}")),
        issued_at: now,
        expires_at: Some(now + Duration::from_secs(600)),
        scopes: vec![],
        refresh_token: Some(secrecy::SecretString::from(rt.to_string())),
        logged_out: false,
        spent_seed: None,
        logout: None,
        bound_to: None,
        registration: None,
        dpop: None,
    }
}

/// A Redis Cluster with a replica per master: a write holding a refresh token is WAITed
/// for on its own slot's master (the pipeline of script and WAIT goes to one node), so the
/// replica that counts is that master's: frozen, the write is not confirmed, while the
/// other masters' replicas being frozen changes nothing. Unset, `min_replicas_acked` turns
/// 1 once the health check saw a replica behind every master (CLUSTER NODES).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_replicas_waits_for_the_replica_of_the_credentials_master() {
    use bearerd::store::{RedisStore, RedisTarget, SaveOutcome, StoreError, TokenStore};
    let cluster = tokio::task::block_in_place(ClusterGroup::start_with_replicas);
    let (nodes, key) = secret_urls_and_key(cluster.urls());
    let credentials = [("api", "binding".to_string())];
    let store = |acked: Option<u32>| {
        RedisStore::new(
            RedisTarget::Cluster { nodes: &nodes },
            &Default::default(),
            &key,
            "replicated",
            &credentials,
            acked,
        )
        .unwrap()
    };
    let confirmed = store(Some(1));
    let saved = confirmed
        .save("api", &stored_with_refresh_token("rt-1"), None)
        .await
        .unwrap();
    assert!(
        matches!(saved, SaveOutcome::Saved { generation: 1 }),
        "{saved:?}"
    );
    let dump = cluster.dump();
    let (master, _, _) = dump
        .iter()
        .find(|(_, k, _)| k.contains(":set:"))
        .expect("the set in the cluster");
    let own: Vec<&RedisServer> = cluster.replicas_of(*master);
    assert_eq!(own.len(), 1, "one replica behind {master}");
    let others: Vec<&RedisServer> = cluster
        .nodes
        .iter()
        .filter(|n| n.master_port().is_some_and(|m| m != *master))
        .collect();
    assert_eq!(others.len(), 2);

    // The other shards' replicas away: this write is confirmed all the same.
    others.iter().for_each(|r| r.freeze());
    let saved = confirmed
        .save("api", &stored_with_refresh_token("rt-2"), Some(1))
        .await;
    others.iter().for_each(|r| r.thaw());
    assert!(
        matches!(saved, Ok(SaveOutcome::Saved { generation: 2 })),
        "{saved:?}"
    );
    // Its own master's replica away: not confirmed.
    own[0].freeze();
    let unconfirmed = confirmed
        .save("api", &stored_with_refresh_token("rt-3"), Some(2))
        .await;
    own[0].thaw();
    assert!(
        matches!(
            unconfirmed,
            Err(StoreError::NotReplicated {
                asked: 1,
                acknowledged: 0,
                ..
            })
        ),
        "{unconfirmed:?}"
    );

    // Unset: once the health check counted the replicas, the same freeze is refused too.
    let by_default = store(None);
    // A watch starts the store's health check (as a sidecar's refresher does).
    let _changes = by_default.watch("api");
    let mut expected = by_default.load("api").await.unwrap().unwrap().generation;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        // A save with the replica there first, so the connection for confirmed writes is
        // made while every node answers (a cluster client connects to every node, and a
        // frozen one holds a new connection up to its time limit).
        let warm = format!("rt-warm-{expected}");
        expected = match by_default
            .save("api", &stored_with_refresh_token(&warm), Some(expected))
            .await
        {
            Ok(SaveOutcome::Saved { generation }) => generation,
            other => panic!("{other:?}"),
        };
        own[0].freeze();
        let rt = format!("rt-default-{expected}");
        let saved = by_default
            .save("api", &stored_with_refresh_token(&rt), Some(expected))
            .await;
        own[0].thaw();
        match saved {
            Err(StoreError::NotReplicated { asked: 1, .. }) => break,
            Ok(SaveOutcome::Saved { generation }) => expected = generation,
            // The default turned 1 between the two saves: that connection was first made
            // with the replica frozen. Again.
            Err(StoreError::Unavailable { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "min_replicas_acked never turned 1 on a cluster with a replica per master"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The Redis store on a 3-master Redis Cluster: every operation works (key check, saves
/// with compare-and-set, leases, a per-subject credential's records, index and listing,
/// connect flows), and every key of one credential, its subjects included, hashes to one
/// slot (a hash tag), so the scripts that touch several keys stay atomic on one node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_store_keeps_every_key_of_a_credential_in_one_slot() {
    use bearerd::store::{LeaseAnswer, RedisStore, RedisTarget, SaveOutcome, TokenStore};
    let cluster = tokio::task::block_in_place(ClusterGroup::start);
    let (nodes, key) = secret_urls_and_key(cluster.urls());
    let names = ["api", "crm", "gmail", "drive", "mail"];
    let credentials: Vec<(&str, String)> =
        names.iter().map(|n| (*n, format!("binding-{n}"))).collect();
    let store = RedisStore::new(
        RedisTarget::Cluster { nodes: &nodes },
        &Default::default(),
        &key,
        "app",
        &credentials,
        None,
    )
    .unwrap();
    store.verify_key().await.unwrap();
    for name in names {
        let saved = store
            .save(name, &stored_with_refresh_token(name), None)
            .await
            .unwrap();
        assert!(
            matches!(saved, SaveOutcome::Saved { generation: 1 }),
            "{saved:?}"
        );
        let again = store
            .save(name, &stored_with_refresh_token(name), None)
            .await
            .unwrap();
        assert!(matches!(again, SaveOutcome::Conflict { .. }), "{again:?}");
        // The lease script with its settle record: two keys, one script, one node.
        let settling = store
            .lease(name, Duration::from_secs(6), true)
            .await
            .unwrap();
        assert!(
            matches!(settling, LeaseAnswer::Settling { .. }),
            "{settling:?}"
        );
        let lease = match store
            .lease(name, Duration::from_secs(6), false)
            .await
            .unwrap()
        {
            LeaseAnswer::Taken(lease) => lease,
            other => panic!("{name}: {other:?}"),
        };
        assert!(matches!(
            store
                .lease(name, Duration::from_secs(6), false)
                .await
                .unwrap(),
            LeaseAnswer::Held
        ));
        assert!(store.renew(&lease, Duration::from_secs(6)).await.unwrap());
        store.release(&lease).await.unwrap();
    }
    for subject in ["alice@example.com", "bob@example.com", "carol@example.com"] {
        let record = format!("gmail\n{subject}");
        let saved = store
            .save(&record, &stored_with_refresh_token(subject), None)
            .await
            .unwrap();
        assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
    }
    let listed = store.list("gmail\n", None, 10).await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");
    let loaded = store.load_many(&listed).await.unwrap();
    assert!(loaded.iter().all(Option::is_some));
    store.remove("gmail\nbob@example.com").await.unwrap();
    assert_eq!(store.list("gmail\n", None, 10).await.unwrap().len(), 2);
    use bearerd::store::FlowStore;
    store
        .put_connect("state-1", b"flow", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.take_connect("state-1").await.unwrap().as_deref(),
        Some(&b"flow"[..])
    );
    assert_eq!(store.take_connect("state-1").await.unwrap(), None);

    let dump = cluster.dump();
    let mut nodes_used = std::collections::HashSet::new();
    for name in names {
        let keys: Vec<&(u16, String, String)> = dump
            .iter()
            .filter(|(_, k, _)| k.contains(&format!("{{{name}:")))
            .collect();
        assert!(
            keys.len() >= 2,
            "{name}: its set and settle record: {keys:?}"
        );
        let slots: std::collections::HashSet<i64> =
            keys.iter().map(|(_, k, _)| cluster.slot(k)).collect();
        assert_eq!(slots.len(), 1, "{name}'s keys in one slot: {keys:?}");
        nodes_used.insert(keys[0].0);
    }
    let gmail = dump
        .iter()
        .filter(|(_, k, _)| k.contains("{gmail:"))
        .count();
    assert!(
        gmail >= 4,
        "gmail's two subjects, its index and its settle record: {gmail}"
    );
    eprintln!(
        "5 credentials' keys on {} of the 3 masters",
        nodes_used.len()
    );
}

/// Two sidecars on a Redis Cluster share a rotating refresh token under load (3-second
/// tokens, a strict provider): every request succeeds, no refresh token is sent twice, and
/// the fleet makes the token requests of about one sidecar.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_a_redis_cluster_sends_a_rotating_refresh_token_once() {
    let f = Fleet::start(Duration::from_secs(3)).await;
    let cluster = tokio::task::block_in_place(ClusterGroup::start);
    let grant_lines = f.rotating_grant("");
    let fleet = vec![
        f.cluster_sidecar(&cluster, &grant_lines).await,
        f.cluster_sidecar(&cluster, &grant_lines).await,
    ];
    let before = f.requests();
    let (ok, bad) = fleet_load(&fleet, 4, Duration::from_secs(9)).await;
    support::assert_all_2xx(&bad);
    let made = f.requests() - before;
    eprintln!("cluster fleet: {ok} requests, {made} token requests in 9 s");
    assert!(made >= 2, "rotations happened: {made}");
    assert!(made <= 6, "about one sidecar's token requests: {made}");
    f.assert_grant_alive();
    let sets = cluster
        .dump()
        .into_iter()
        .filter(|(_, k, _)| k.contains(":set:{api:"))
        .count();
    assert_eq!(sets, 1, "the set lives in the cluster under its hash tag");
    drop(fleet);
}

/// A Redis Cluster failover: the master holding the credential's keys is killed (`kill
/// -9`) and the cluster promotes its replica while two sidecars share a rotating refresh
/// token under load: every request 2xx, no refresh token sent twice, the grant alive,
/// rotations after the failover, the set on the promoted master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_a_redis_cluster_rides_out_a_master_failover() {
    let f = Fleet::start(Duration::from_secs(3)).await;
    let mut cluster = tokio::task::block_in_place(ClusterGroup::start_with_replicas);
    let grant_lines = f.rotating_grant("");
    let fleet = [
        f.cluster_sidecar(&cluster, &grant_lines).await,
        f.cluster_sidecar(&cluster, &grant_lines).await,
    ];
    let proxies = fleet.iter().map(|s| s.proxy_addr).collect();
    let load = tokio::spawn(load_through(proxies, 2, Duration::from_secs(18)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let set_on = |cluster: &ClusterGroup| {
        let on: Vec<u16> = cluster
            .dump()
            .into_iter()
            .filter(|(_, k, _)| k.contains(":set:{api:"))
            .map(|(port, _, _)| port)
            .collect();
        on
    };
    let holder = set_on(&cluster)[0];
    let before = f.tokens.state.rotations();
    let (gone, promoted) = tokio::task::block_in_place(|| cluster.fail_over(holder));
    eprintln!("cluster failover: {holder} killed, {promoted} promoted after {gone:.1?}");
    let (ok, bad) = load.await.unwrap();
    eprintln!("cluster failover: {ok} requests 2xx, {} not", bad.len());
    support::assert_all_2xx(&bad);
    assert!(
        f.tokens.state.rotations() > before,
        "rotations after the failover"
    );
    f.assert_grant_alive();
    assert_eq!(
        set_on(&cluster),
        [promoted],
        "the set on the promoted master"
    );
}

/// Sentinel over TLS: every server and sentinel speaks TLS only with a private CA and asks
/// for a client certificate; two sidecars given `rediss://` sentinel urls with `ca_file`,
/// `client_cert` and `client_key` find the master through the sentinels, share a rotating
/// refresh token, and follow it through a `kill -9` failover: every request 2xx, no refresh
/// token sent twice, the set in the promoted master.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fleet_on_sentinel_over_tls_follows_a_failover() {
    let f = Fleet::start(Duration::from_secs(3)).await;
    let mut group = tokio::task::block_in_place(SentinelGroup::start_tls);
    let pki = group.pki.clone().unwrap();
    let tls = format!(
        "ca_file = {:?}\nclient_cert = {{ file = {:?} }}\nclient_key = {{ file = {:?} }}\n",
        pki.ca.display().to_string(),
        pki.client_cert.display().to_string(),
        pki.client_key.display().to_string()
    );
    a_pair_rides_out_a_failover(&f, &mut group, &tls, Duration::from_secs(18)).await;
}

/// Sentinels that ask for no password in front of servers that do: the sentinel urls carry
/// none, `master_password` is the master's. Two sidecars share a rotating refresh token
/// through a `kill -9` failover (the promoted master is reached with that password too),
/// and the password is in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_without_a_password_in_front_of_a_master_with_one() {
    let f = Fleet::start(Duration::from_secs(3)).await;
    let mut group = tokio::task::block_in_place(SentinelGroup::start_with_open_sentinels);
    assert!(group.urls().iter().all(|u| !u.contains('@')));
    std::env::set_var("BEARERD_TEST_MASTER_PW", GROUP_PASSWORD);
    let master_auth = "master_password = { env = \"BEARERD_TEST_MASTER_PW\" }\n";
    let fleet =
        a_pair_rides_out_a_failover(&f, &mut group, master_auth, Duration::from_secs(14)).await;
    for s in &fleet {
        let log = std::fs::read_to_string(s.dir.join("log")).unwrap();
        assert!(
            !log.contains(GROUP_PASSWORD),
            "the master's password in a log"
        );
    }
}

/// Two sidecars on `group` (`store_lines` added to `[store]`) share a rotating refresh
/// token under `load_for` of load through a `kill -9` failover: every request 2xx,
/// rotations after it, the grant alive, the set in the promoted master. Before the
/// failover, the sidecars ask the sentinels (each once a second) over kept connections:
/// no handshake per question (the second count's own 3 connections are taken off).
async fn a_pair_rides_out_a_failover(
    f: &Fleet,
    group: &mut SentinelGroup,
    store_lines: &str,
    load_for: Duration,
) -> [Replica; 2] {
    let grant_lines = f.rotating_grant("");
    let fleet = [
        f.sentinel_sidecar(group, store_lines, &grant_lines).await,
        f.sentinel_sidecar(group, store_lines, &grant_lines).await,
    ];
    let proxies = fleet.iter().map(|s| s.proxy_addr).collect();
    let load = tokio::spawn(load_through(proxies, 2, load_for));
    // A second in, past the connections made at start; then 4 s of asking (8 questions).
    // The slack: sentinels reopen links to each other when a ping is slow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let accepted = tokio::task::block_in_place(|| group.connections_received());
    tokio::time::sleep(Duration::from_secs(4)).await;
    let new = tokio::task::block_in_place(|| group.connections_received()) - accepted - 3;
    assert!(
        new <= 3,
        "{new} new sentinel connections in 4 s of asking every second from 2 sidecars"
    );
    let before = f.tokens.state.rotations();
    tokio::task::block_in_place(|| group.fail_over());
    let (ok, bad) = load.await.unwrap();
    support::assert_all_2xx(&bad);
    assert!(ok > 0);
    assert!(
        f.tokens.state.rotations() > before,
        "rotations after the failover"
    );
    f.assert_grant_alive();
    let sets = group
        .master()
        .dump()
        .into_iter()
        .filter(|(k, _)| k.contains(":set:"))
        .count();
    assert_eq!(sets, 1, "the set in the promoted master");
    fleet
}
