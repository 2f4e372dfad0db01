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

/// Stops the harness's sidecar and starts a new one from the same config (same store).
async fn restart(h: &mut Harness) {
    let old = h.sidecar.take().unwrap();
    tokio::task::spawn_blocking(move || old.shutdown())
        .await
        .unwrap();
    let config = support::sidecar_config(&h.config_text);
    h.sidecar = Some(
        tokio::task::spawn_blocking(move || Sidecar::start(config))
            .await
            .unwrap()
            .unwrap(),
    );
}

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

    let text = std::fs::read_to_string(dir.join("tokens.store")).unwrap();
    assert!(!text.contains("tok_"), "tokens are encrypted at rest");
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
        std::fs::write(
            &path,
            format!(
                "[server]\nproxy_listen = \"{}\"\nadmin_listen = \"{}\"\n[store]\n{}\n[credentials.c]\ngrant = \"client_credentials\"\ntoken_url = \"http://127.0.0.1:9/token\"\nclient_id = \"x\"\n[upstreams.u]\nurl = \"http://127.0.0.1:9/\"\npath_prefix = \"/u\"\ncredential = \"c\"\n",
                support::free_addr(),
                support::free_addr(),
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
    };
    fs.save("c", Some(&token)).unwrap();
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
    let text = String::from_utf8(original.clone()).unwrap();
    let at = text.find("\"c\": \"").unwrap() + 12;
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
