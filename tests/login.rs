//! `bearerd login`: authorization code + PKCE on a loopback redirect, and the device grant;
//! the refresh token reaches the running sidecar through the admin API.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Discovery, FailMode, Harness, Options};

async fn harness_without_refresh_token() -> Harness {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let opts = Options {
        grant: "refresh_token",
        discovery: Discovery::Issuer,
        ..Default::default()
    };
    Harness::start_raw(tokens, upstream, opts, String::new()).await
}

/// Starts `bearerd login` (with `extra` arguments) and returns it with a reader of its stdout.
fn start_login(
    h: &Harness,
    device: bool,
    extra: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let dir = std::env::temp_dir().join(format!("bearerd-login-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("bearerd.toml");
    std::fs::write(&config, &h.config_text).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearerd"));
    cmd.args(["login", "api", "-c"]).arg(&config);
    if device {
        cmd.arg("--device");
    }
    cmd.args(extra);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (child, rx)
}

fn wait_line(rx: &std::sync::mpsc::Receiver<String>, pred: impl Fn(&str) -> bool) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("bearerd login printed nothing useful");
        if pred(&line) {
            return line;
        }
    }
}

async fn finish(child: std::process::Child) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The user approves the device code; the login must complete and the sidecar serve.
async fn approve_and_expect_login(
    h: &Harness,
    child: std::process::Child,
    rx: &std::sync::mpsc::Receiver<String>,
) {
    h.tokens.state.approve_devices();
    wait_line(rx, |l| l.contains("logged in"));
    let (ok, stderr) = finish(child).await;
    assert!(ok, "{stderr}");
    assert_eq!(h.get("/api/y").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_code_and_pkce_hands_the_refresh_token_to_the_sidecar() {
    let h = harness_without_refresh_token().await;
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 503, "no refresh token before the login");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true);

    let (child, rx) = start_login(&h, false, &[]);
    let url = wait_line(&rx, |l| l.trim_start().starts_with("http"))
        .trim()
        .to_string();
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("state="),
        "{url}"
    );
    // The "browser": the authorization server redirects back to the CLI's loopback listener.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 302);
    let callback = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(callback.starts_with("http://127.0.0.1:"), "{callback}");
    // A redirect with a foreign state is ignored, not accepted.
    let forged = callback.replace("state=", "state=forged");
    let page = reqwest::get(&forged).await.unwrap().text().await.unwrap();
    assert!(page.contains("not for the current attempt"), "{page}");
    let page = reqwest::get(&callback).await.unwrap().text().await.unwrap();
    assert!(page.contains("Logged in"), "{page}");
    let done = wait_line(&rx, |l| l.contains("logged in"));
    let (ok, stderr) = finish(child).await;
    assert!(ok, "{stderr}");
    assert!(!done.contains("tok_") && !done.contains("rt_"));

    assert_eq!(h.get("/api/y").await.status(), 200);
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["state"], "valid");
    assert_eq!(status["credentials"]["api"]["has_refresh_token"], true);
    assert_eq!(h.tokens.state.reuse_detected(), 0);
}

/// A provider without offline access issues no refresh token at the login: the access
/// token is served until it expires, nothing is ever refreshed, and then the credential
/// asks for a login again (503 with `requires_reauth`), never forwarding a dead token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_without_a_refresh_token_serves_its_access_token_until_it_expires() {
    let h = harness_without_refresh_token().await;
    h.tokens.state.no_refresh_token_on_login();
    h.tokens.state.set_lifetime(Duration::from_secs(4));
    let (child, rx) = start_login(&h, false, &[]);
    let url = wait_line(&rx, |l| l.trim_start().starts_with("http"))
        .trim()
        .to_string();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects.get(&url).send().await.unwrap();
    let callback = resp.headers()["location"].to_str().unwrap().to_string();
    let page = reqwest::get(&callback).await.unwrap().text().await.unwrap();
    assert!(page.contains("Logged in"), "{page}");
    wait_line(&rx, |l| l.contains("logged in"));
    let (ok, stderr) = finish(child).await;
    assert!(ok, "{stderr}");
    assert!(stderr.contains("no refresh token"), "{stderr}");

    // The upstream gets the login's access token.
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.state.seen();
    assert!(seen.last().unwrap().token_serial.is_some(), "a live token");
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["state"], "valid");
    assert_eq!(status["credentials"]["api"]["has_refresh_token"], false);
    let token_requests = h.tokens.state.requests();

    // Once it has expired, the credential asks for a login; no token request was sent.
    let expired = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let resp = h.get("/api/y").await;
        if resp.status() == 503 {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["requires_reauth"], true, "{body}");
            break;
        }
        assert_eq!(resp.status(), 200);
        assert!(
            tokio::time::Instant::now() < expired,
            "still served after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "nothing to refresh with"
    );
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"],
        "login_required"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_the_device_grant_polls_until_approved() {
    let h = harness_without_refresh_token().await;
    let (child, rx) = start_login(&h, true, &[]);
    let prompt = wait_line(&rx, |l| l.contains("enter the code"));
    assert!(prompt.contains("WDJB-MJHT"), "{prompt}");
    assert_eq!(h.tokens.state.device_codes(), 1);
    approve_and_expect_login(&h, child, &rx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_login_keeps_polling_through_provider_errors() {
    let h = harness_without_refresh_token().await;
    let (child, rx) = start_login(&h, true, &[]);
    wait_line(&rx, |l| l.contains("enter the code"));
    // The provider falls over while the user is still approving: polls meet 503s.
    let before = h.tokens.state.requests();
    h.tokens.state.set_fail(FailMode::Status(503));
    for _ in 0..200 {
        if h.tokens.state.requests() >= before + 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        h.tokens.state.requests() >= before + 2,
        "login stopped polling"
    );
    h.tokens.state.set_fail(FailMode::None);
    approve_and_expect_login(&h, child, &rx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_refuses_to_send_a_refresh_token_in_clear_off_the_host() {
    let h = harness_without_refresh_token().await;
    // 192.0.2.0/24 is TEST-NET-1: nothing answers there, and nothing must be sent there.
    let (mut child, _rx) = start_login(&h, true, &["--admin", "http://192.0.2.1:9090"]);
    let mut exited = None;
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(status) = exited else {
        child.kill().unwrap();
        panic!("login started instead of refusing");
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("in clear"), "{stderr}");
    assert!(stderr.contains("http://192.0.2.1:9090"), "{stderr}");
    // Refused before the login began: the provider saw nothing.
    assert_eq!(h.tokens.state.device_codes(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_a_subject_connects_that_subject_only() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let opts = Options {
        grant: "refresh_token",
        discovery: Discovery::Issuer,
        credential_extra: "subject_header = \"x-bearerd-subject\"\n".into(),
        ..Default::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let (child, rx) = start_login(&h, true, &["--subject", "alice@example.com"]);
    wait_line(&rx, |l| l.contains("enter the code"));
    h.tokens.state.approve_devices();
    let done = wait_line(&rx, |l| l.contains("logged in"));
    assert!(done.contains("alice@example.com"), "{done}");
    let (ok, stderr) = finish(child).await;
    assert!(ok, "{stderr}");
    let as_user = |s: &'static str| {
        h.client
            .get(h.url("/api/x"))
            .header("x-bearerd-subject", s)
            .send()
    };
    assert_eq!(as_user("alice@example.com").await.unwrap().status(), 200);
    assert_eq!(as_user("bob@example.com").await.unwrap().status(), 403);
    let alice: serde_json::Value = h
        .admin_get("/credentials/api/subjects/alice%40example.com")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alice["state"], "valid", "{alice}");
}

/// The admin API takes a handed-over access token only when it could be sent: not empty,
/// no spaces, a lifetime of at least a second; a silly lifetime is taken for a year.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handed_over_access_token_is_checked() {
    let h = harness_without_refresh_token().await;
    let login = |body: serde_json::Value| {
        h.client
            .post(h.admin("/credentials/api/login"))
            .json(&body)
            .send()
    };
    for bad in [
        serde_json::json!({}),
        serde_json::json!({"access_token": ""}),
        serde_json::json!({"access_token": "a b"}),
        serde_json::json!({"access_token": "t", "expires_in": 0}),
    ] {
        let resp = login(bad.clone()).await.unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains("a b"), "the token is not echoed: {text}");
    }
    let (access_token, _) = h.tokens.state.tokens_for("alice");
    let resp = login(serde_json::json!({"access_token": access_token, "expires_in": u64::MAX}))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let status = h.status().await;
    let left = status["credentials"]["api"]["expires_in_s"]
        .as_f64()
        .unwrap();
    assert!(left > 364.0 * 86400.0, "{status}");
    assert_eq!(h.get("/api/x").await.status(), 200);
}
