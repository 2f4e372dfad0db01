//! Rotation durability: `kill -9` at random moments while refresh tokens rotate, against a
//! provider that revokes the whole grant when a refresh token is used twice. After every
//! restart the sidecar must get a token, and the grant must never be revoked for reuse.
//!
//! One window cannot be closed from the client side: between the provider committing a
//! rotation and bearerd's fsync of the new refresh token (a few milliseconds), a kill loses
//! the only copy of the new token. Providers cover this with a reuse grace period (Okta's
//! grace period, Auth0's reuse interval); the CI test gives the provider a 2 s grace and
//! asserts that no reuse ever falls outside it. `strict_provider_window` (ignored, run by
//! hand) measures how often a strict provider would revoke.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;

/// Kills the sidecar when a failed assertion unwinds, so no process outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["run", "-c"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        ))
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_during_rotation_never_burns_the_grant() {
    let (reused, forgiven) = kill_loop(Duration::from_secs(2)).await;
    eprintln!("kills inside the provider's grace period: {forgiven}");
    assert_eq!(
        reused, 0,
        "a refresh token was sent again outside the grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: how often a provider with no grace period would revoke"]
async fn strict_provider_window() {
    let mut revoked = 0;
    for _ in 0..5 {
        let (reused, _) = kill_loop(Duration::ZERO).await;
        revoked += usize::from(reused > 0);
    }
    eprintln!("runs of 20 kills in which a strict provider revoked the grant: {revoked} of 5");
}

/// Runs 20 kill/restart rounds; returns (reuses outside the grace, reuses forgiven).
async fn kill_loop(grace: Duration) -> (usize, usize) {
    // Tokens live 2 s, so the refresh token rotates about every 1.5 s.
    let tokens = support::TokenServer::start(Duration::from_secs(2))
        .await
        .unwrap();
    tokens.state.set_reuse_grace(grace);
    let upstream = support::Upstream::start(tokens.state.clone())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("bearerd-crash-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("seed"), tokens.state.seed_refresh_token()).unwrap();
    let (proxy, admin) = (support::free_addr(), support::free_addr());
    let config = dir.join("bearerd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
proxy_listen = "{proxy}"
admin_listen = "{admin}"
[store]
backend = "file"
path = "{store}"
key = "{key}"
[credentials.api]
grant = "refresh_token"
token_url = "{url}"
client_id = "{id}"
client_secret = "{secret}"
refresh_token = {{ file = "{seed}" }}
backoff_base = "100ms"
backoff_cap = "1s"
[upstreams.api]
url = "http://{up}/"
path_prefix = "/api"
credential = "api"
"#,
            store = dir.join("tokens.store").display(),
            key = bearerd::store::generate_key(),
            url = tokens.token_url(),
            id = support::token_server::CLIENT_ID,
            secret = support::token_server::CLIENT_SECRET,
            seed = dir.join("seed").display(),
            up = upstream.addr,
        ),
    )
    .unwrap();
    let log = dir.join("log");
    let client = reqwest::Client::new();
    let mut rng = rand::rngs::StdRng::from_entropy();
    use rand::SeedableRng;
    let kills = 20;
    for round in 0..=kills {
        let mut child = KillOnDrop(spawn(&config, &log));
        // After every (re)start the sidecar gets a usable token.
        let started = Instant::now();
        loop {
            let ok = client
                .get(format!("http://{proxy}/api/probe"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ok {
                break;
            }
            if grace.is_zero() && tokens.state.reuse_detected() > 0 {
                let _ = child.kill();
                let _ = child.wait();
                return (tokens.state.reuse_detected(), 0);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round {round}: no token after restart; reuse detected {} times\n{}",
                tokens.state.reuse_detected(),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if round == kills {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        // Let it rotate for a random while, then kill -9 (SIGKILL: no shutdown code runs).
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..3000))).await;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert_eq!(
        tokens.state.active_refresh_tokens(),
        1,
        "the grant survived"
    );
    assert!(
        tokens.state.requests() >= 5,
        "refresh tokens rotated during the test: {}",
        tokens.state.requests()
    );
    (tokens.state.reuse_detected(), tokens.state.grace_reuses())
}
