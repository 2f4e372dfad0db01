//! No token, refresh token or client secret ever appears in logs, `/status`, metrics or
//! error bodies. Runs the real binary with trace logging and greps everything it wrote.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::FailMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_never_appear_in_logs_status_metrics_or_errors() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(2)).await;
    let seed = tokens.state.seed_refresh_token();
    let dir = std::env::temp_dir().join(format!("bearerd-secrets-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let (proxy, admin) = support::free_addr_pair();
    let config = dir.join("bearerd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
proxy_listen = "{proxy}"
admin_listen = "{admin}"
log_format = "json"
access_log = true

[credentials.cc]
grant = "client_credentials"
token_url = "{url}"
client_id = "{id}"
client_secret = {{ env = "TEST_CLIENT_SECRET" }}
client_auth = "post"

[credentials.rt]
grant = "refresh_token"
token_url = "{url}"
client_id = "{id}"
client_secret = {{ env = "TEST_CLIENT_SECRET" }}
refresh_token = {{ env = "TEST_REFRESH_TOKEN" }}

[credentials.ps]
grant = "refresh_token"
token_url = "{url}"
client_id = "{id}"
client_secret = {{ env = "TEST_CLIENT_SECRET" }}
subject_header = "x-bearerd-subject"

[upstreams.c]
url = "http://{up}/c"
path_prefix = "/c"
credential = "ps"

[upstreams.a]
url = "http://{up}/a"
path_prefix = "/a"
credential = "cc"

[upstreams.b]
url = "http://{up}/b"
path_prefix = "/b"
credential = "rt"
"#,
            url = tokens.token_url(),
            id = support::token_server::CLIENT_ID,
            up = upstream.addr,
        ),
    )
    .unwrap();
    let log_path = dir.join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_bearerd"))
        .args(["run", "-c"])
        .arg(&config)
        .env("BEARERD_LOG", "trace")
        .env("TEST_CLIENT_SECRET", support::token_server::CLIENT_SECRET)
        .env("TEST_REFRESH_TOKEN", &seed)
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("stdout")).unwrap(),
        ))
        .stderr(Stdio::from(std::fs::File::create(&log_path).unwrap()))
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if let Ok(r) = client.get(format!("http://{admin}/readyz")).send().await {
            if r.status() == 200 {
                ready = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "{}", std::fs::read_to_string(&log_path).unwrap());

    let mut collected = String::new();
    // Normal traffic, with an inbound Authorization header that must not be echoed either.
    for path in ["/a/x", "/b/y"] {
        let r = client
            .post(format!("http://{proxy}{path}"))
            .bearer_auth("app-token-zz")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Per-subject: a subject's refresh token handed over, requests for it, and one for a
    // subject that is not connected. Subjects are e-mail addresses here: logs must not
    // name them.
    let rt = tokens
        .state
        .seed_refresh_token_for("alice.private@example.com");
    let r = client
        .post(format!(
            "http://{admin}/credentials/ps/subjects/alice.private%40example.com/login"
        ))
        .json(&serde_json::json!({ "refresh_token": rt }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for subject in ["alice.private@example.com", "bob.private@example.com"] {
        let r = client
            .get(format!("http://{proxy}/c/x"))
            .header("x-bearerd-subject", subject)
            .send()
            .await
            .unwrap();
        assert!(matches!(r.status().as_u16(), 200 | 403));
    }
    // A revocation and its replay.
    tokens.state.revoke_access_tokens();
    let r = client
        .get(format!("http://{proxy}/a/replayed"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Rotation happens (2 s tokens).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        client
            .get(format!("http://{proxy}/b/z"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Error bodies: no route, then a permanent failure.
    collected.push_str(
        &client
            .get(format!("http://{proxy}/nope"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    tokens
        .state
        .set_fail(FailMode::OAuthError("invalid_client".into()));
    let r = client
        .post(format!("http://{admin}/credentials/cc/refresh"))
        .send()
        .await
        .unwrap();
    collected.push_str(&r.text().await.unwrap());
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client
        .get(format!("http://{proxy}/a/after"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    collected.push_str(&r.text().await.unwrap());
    collected.push_str(
        &client
            .get(format!("http://{admin}/status"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    collected.push_str(
        &client
            .get(format!("http://{admin}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    collected.push_str(
        &client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let exited = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        false
    })
    .await
    .unwrap();
    assert!(exited, "bearerd exits on SIGINT");
    let logs = std::fs::read_to_string(&log_path).unwrap()
        + &std::fs::read_to_string(dir.join("stdout")).unwrap();
    assert!(
        logs.contains("token refreshed"),
        "the logs were captured: {}",
        &logs[..logs.len().min(2000)]
    );
    assert!(logs.lines().count() > 20, "trace logging produced output");
    assert!(
        !logs.contains(".private@"),
        "a subject is in the logs in clear"
    );
    assert!(
        logs.contains("\"subject\":\"s:"),
        "subjects are logged by their tag"
    );

    let mut secrets = tokens.state.every_issued();
    assert!(
        secrets.len() >= 6,
        "tokens and refresh tokens were issued: {}",
        secrets.len()
    );
    secrets.push(support::token_server::CLIENT_SECRET.to_string());
    secrets.push("app-token-zz".to_string());
    for s in &secrets {
        // Also no prefix long enough to matter.
        let probe = &s[..s.len().min(16)];
        assert!(
            !logs.contains(probe),
            "a secret ({}…) is in the logs",
            &s[..4]
        );
        assert!(
            !collected.contains(probe),
            "a secret ({}…) is in an API answer",
            &s[..4]
        );
    }
}
