//! `bearerd login`: authorization code + PKCE on a loopback redirect, and the device grant;
//! the refresh token reaches the running sidecar through the admin API.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Discovery, Harness, Options};

async fn harness_without_refresh_token() -> Harness {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let opts = Options {
        grant: "refresh_token",
        discovery: Discovery::Issuer,
        ..Default::default()
    };
    Harness::start_raw(tokens, upstream, opts, String::new()).await
}

/// Starts `bearerd login` and returns it with a reader of its stdout.
fn start_login(
    h: &Harness,
    device: bool,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_code_and_pkce_hands_the_refresh_token_to_the_sidecar() {
    let h = harness_without_refresh_token().await;
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 503, "no refresh token before the login");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true);

    let (child, rx) = start_login(&h, false);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_with_the_device_grant_polls_until_approved() {
    let h = harness_without_refresh_token().await;
    let (child, rx) = start_login(&h, true);
    let prompt = wait_line(&rx, |l| l.contains("enter the code"));
    assert!(prompt.contains("WDJB-MJHT"), "{prompt}");
    assert_eq!(h.tokens.state.device_codes(), 1);
    h.tokens.state.approve_devices();
    wait_line(&rx, |l| l.contains("logged in"));
    let (ok, stderr) = finish(child).await;
    assert!(ok, "{stderr}");
    assert_eq!(h.get("/api/y").await.status(), 200);
}
