//! The operator's commands against a running sidecar and its providers: `drill` (a
//! rehearsed failure that sends nothing and ends by itself), `inspect` (a token's claims,
//! never the token) and `check --live` (a token per credential, no store touched).

use std::time::Duration;

use super::support::{self, Harness, Options};
use super::{cli, harness, ADMIN_TOKEN};

fn status_of(body: &serde_json::Value) -> &serde_json::Value {
    &body["credentials"]["api"]
}

async fn status(h: &Harness) -> serde_json::Value {
    h.admin_get("/status").await.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drill_fails_token_requests_without_sending_them_and_ends_by_itself() {
    let h = harness().await;
    h.wait_ready().await;
    let sent = h.tokens.state.requests();
    let (ok, out) = cli(
        &h,
        &["drill", "api", "--fail", "invalid_grant", "--for", "3s"],
        None,
    )
    .await;
    assert!(!ok && out.contains("admin token"), "{out}");
    let (ok, out) = cli(
        &h,
        &["drill", "api", "--fail", "invalid_grant", "--for", "3s"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(ok && out.contains("drill running"), "{out}");

    // It shows as the real failure would: in /status, the metrics and the refresh count.
    super::status_eventually(&h, |s| status_of(s)["state"] == "failed").await;
    let s = status(&h).await;
    let c = status_of(&s);
    assert_eq!(c["drill"]["fail"], "invalid_grant", "{c}");
    assert_eq!(c["last_error"]["kind"], "invalid_grant", "{c}");
    assert!(c["last_error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("drill"));
    let m = h.metrics().await;
    assert_eq!(
        support::metric(&m, "bearerd_drill_active{credential=\"api\"}"),
        Some(1.0)
    );
    assert!(
        support::metric(
            &m,
            "bearerd_token_refresh_total{credential=\"api\",result=\"permanent_error\",trigger=\"manual\"}"
        ) >= Some(1.0),
        "{m}"
    );
    // A manual refresh during the drill is drilled too; nothing reaches the provider.
    let r = h
        .client
        .post(h.admin("/credentials/api/refresh"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        h.tokens.state.requests(),
        sent,
        "a drill sends no token request"
    );
    // The token held before the drill still serves.
    assert_eq!(h.get("/api/x").await.status(), 200);

    // It ends by itself, and the state before it comes back: the refresh token was
    // neither sent nor forgotten, so a refresh works at once.
    super::status_eventually(&h, |s| status_of(s)["drill"].is_null()).await;
    let s = status(&h).await;
    let c = status_of(&s);
    assert_eq!(c["state"], "valid", "{c}");
    assert!(c["last_error"].is_null(), "{c}");
    assert_eq!(c["has_refresh_token"], true, "{c}");
    assert_eq!(h.tokens.state.requests(), sent);
    let (ok, out) = cli(&h, &["refresh", "api"], Some(ADMIN_TOKEN)).await;
    assert!(ok, "{out}");
    assert_eq!(h.tokens.state.requests(), sent + 1);
    assert_eq!(
        support::metric(
            &h.metrics().await,
            "bearerd_drill_active{credential=\"api\"}"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drill_of_a_transient_failure_retries_and_can_be_stopped() {
    let h = harness().await;
    h.wait_ready().await;
    let (ok, out) = cli(
        &h,
        &["drill", "api", "--fail", "500", "--for", "10m"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(ok, "{out}");
    super::status_eventually(&h, |s| status_of(s)["state"] == "retrying").await;
    assert_eq!(
        status_of(&status(&h).await)["last_error"]["kind"],
        "http_500"
    );
    let (ok, out) = cli(&h, &["drill", "api", "--stop"], Some(ADMIN_TOKEN)).await;
    assert!(ok && out.contains("no drill runs"), "{out}");
    let s = status(&h).await;
    assert_eq!(status_of(&s)["state"], "valid", "{s}");
    // Too long a drill, or an unknown failure, is refused.
    let (ok, out) = cli(
        &h,
        &["drill", "api", "--fail", "500", "--for", "2h"],
        Some(ADMIN_TOKEN),
    )
    .await;
    assert!(!ok && out.contains("between 1s and 1h"), "{out}");
    let (ok, out) = cli(&h, &["drill", "api", "--fail", "503"], Some(ADMIN_TOKEN)).await;
    assert!(
        !ok && out.contains("401 | 500 | timeout | invalid_grant"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inspect_shows_a_tokens_claims_and_never_the_token() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(600)).await;
    tokens.state.issue_jwt_access_tokens();
    let h = Harness::start_with(
        tokens,
        upstream,
        Options {
            server_extra: format!("admin_token = \"{ADMIN_TOKEN}\""),
            ..Default::default()
        },
    )
    .await;
    h.wait_ready().await;
    let (ok, out) = cli(&h, &["inspect", "api"], None).await;
    assert!(!ok && out.contains("admin token"), "{out}");
    let (ok, out) = cli(&h, &["inspect", "api"], Some(ADMIN_TOKEN)).await;
    assert!(ok, "{out}");
    for expected in [
        "jwt token (Bearer)",
        "https://issuer.testkit.example",
        "https://api.example",
        "demo.read",
        "expires_at",
        "s:",
    ] {
        assert!(out.contains(expected), "{expected} in {out}");
    }
    assert!(
        !out.contains("svc-reports"),
        "the subject only as a tag: {out}"
    );
    let (ok, json) = cli(&h, &["inspect", "api", "--json"], Some(ADMIN_TOKEN)).await;
    assert!(ok, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        (590.0..=600.0).contains(&v["expires_in_s"].as_f64().unwrap()),
        "{v}"
    );
    for t in h.tokens.state.every_issued() {
        // Not the token, nor any of its three parts.
        for part in t.split('.') {
            assert!(!out.contains(part) && !json.contains(part), "{out}{json}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_live_gets_a_token_per_credential_and_spends_no_refresh_token() {
    let (tokens, _upstream) = support::start_peers(Duration::from_secs(60)).await;
    let dir = std::env::temp_dir().join(format!("bearerd-live-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let rt = dir.join("refresh_token");
    std::fs::write(&rt, tokens.state.seed_refresh_token()).unwrap();
    let token_url = tokens.token_url();
    let (id, secret) = (
        support::token_server::CLIENT_ID,
        support::token_server::CLIENT_SECRET,
    );
    let good = format!(
        "[credentials.good]\ngrant = \"client_credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\nscopes = [\"demo.read\"]\n"
    );
    let bad = format!(
        "[credentials.bad]\ngrant = \"client_credentials\"\ntoken_url = \"{token_url}\"\nclient_id = \"{id}\"\nclient_secret = \"not-the-secret\"\n"
    );
    let user = format!(
        "[credentials.user]\ngrant = \"refresh_token\"\ntoken_url = \"{token_url}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\nrefresh_token = {{ file = {:?} }}\n",
        rt.display().to_string()
    );
    let upstream = "[upstreams.a]\nurl = \"http://127.0.0.1:9/\"\npath_prefix = \"/a\"\ncredential = \"good\"\n";
    let run = |text: String| {
        let path = dir.join(format!("{}.toml", support::rand_suffix()));
        std::fs::write(&path, text).unwrap();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
                    .args(["check", "--live", "-c"])
                    .arg(&path)
                    .env_remove("BEARERD_CONFIG")
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.code(), text)
        }
    };
    let (code, out) = run(format!("{good}{bad}{user}{upstream}")).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("good: ok: bearer token, expires in 60s"),
        "{out}"
    );
    assert!(
        out.contains("bad: FAILED: invalid_client (permanent)"),
        "{out}"
    );
    assert!(out.contains("check client_id"), "{out}");
    assert!(out.contains("user: skipped: refresh_token"), "{out}");
    assert_eq!(tokens.state.requests(), 2, "the refresh token was not sent");
    assert!(!out.contains(secret));

    let (code, out) = run(format!("{good}{user}{upstream}")).await;
    assert_eq!(code, Some(0), "{out}");
}
