//! The operator's view: the CLI over the admin API (status, refresh, logout, drill,
//! inspect, check --live), the admin token, logout's revocation at the provider, and
//! events (the stream, webhooks, the audit file), hot reload, the console's server side, and traces.

mod support;

#[path = "operator/console.rs"]
mod console;
#[path = "operator/drill.rs"]
mod drill;
#[path = "operator/events.rs"]
mod events;
#[path = "operator/reload.rs"]
mod reload;
#[path = "operator/telemetry.rs"]
mod telemetry;

use std::process::Command;
use std::time::Duration;

use support::{Harness, Options};

const ADMIN_TOKEN: &str = "admin-token-for-tests-7c1";

async fn harness() -> Harness {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let revoke = tokens.revocation_url();
    Harness::start_with(
        tokens,
        upstream,
        Options {
            grant: "refresh_token",
            server_extra: format!("admin_token = \"{ADMIN_TOKEN}\""),
            credential_extra: format!("revocation_url = \"{revoke}\""),
            ..Default::default()
        },
    )
    .await
}

/// Runs the CLI against the harness's admin API; returns (success, stdout + stderr).
async fn cli(h: &Harness, args: &[&str], token: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearerd"));
    cmd.args(args)
        .arg("--admin")
        .arg(h.admin(""))
        .env_remove("BEARERD_CONFIG");
    match token {
        Some(t) => cmd.env("BEARERD_ADMIN_TOKEN", t),
        None => cmd.env_remove("BEARERD_ADMIN_TOKEN"),
    };
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Waits (up to 20 s) until `/status` satisfies `check`.
async fn status_eventually(h: &Harness, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s: serde_json::Value = h.admin_get("/status").await.json().await.unwrap();
        if check(&s) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_secret(h: &Harness, text: &str) {
    for s in h.tokens.state.every_issued().iter().chain(
        [
            ADMIN_TOKEN.to_string(),
            support::token_server::CLIENT_SECRET.to_string(),
        ]
        .iter(),
    ) {
        assert!(
            !text.contains(&s[..s.len().min(16)]),
            "a secret ({}…) in CLI output:\n{text}",
            &s[..4]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_cli_prints_a_table_json_and_detail_without_secrets() {
    let h = harness().await;
    h.wait_ready().await;
    let (ok, table) = cli(&h, &["status"], None).await;
    assert!(ok, "{table}");
    assert!(table.starts_with("CREDENTIAL"), "{table}");
    let row = table.lines().find(|l| l.starts_with("api")).unwrap();
    assert!(
        row.contains("valid") && row.contains("demo.read") && row.contains("yes"),
        "{row}"
    );

    let (ok, json) = cli(&h, &["status", "--json"], None).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let c = &v["credentials"]["api"];
    for key in [
        "state",
        "expires_in_s",
        "token_age_s",
        "generation",
        "refreshes",
        "consecutive_failures",
        "last_error",
        "next_refresh_in_s",
        "scopes",
        "has_refresh_token",
    ] {
        assert!(c.get(key).is_some(), "/status lacks {key}: {c}");
    }
    assert_eq!(c["state"], "valid");
    assert_eq!(v["upstreams"]["api"]["credential"], "api");

    let (ok, detail) = cli(&h, &["status", "api"], None).await;
    assert!(ok && detail.contains("state          valid"), "{detail}");
    let (ok, missing) = cli(&h, &["status", "nope"], None).await;
    assert!(!ok && missing.contains("no credential named"), "{missing}");
    for text in [table, json, detail] {
        assert_no_secret(&h, &text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refresh_cli_needs_the_admin_token_and_shows_the_attempt() {
    let h = harness().await;
    h.wait_ready().await;
    let before = h.tokens.state.requests();
    let (ok, out) = cli(&h, &["refresh", "api"], Some("wrong")).await;
    assert!(!ok && out.contains("admin token"), "{out}");
    assert_eq!(
        h.tokens.state.requests(),
        before,
        "a refused refresh sends nothing"
    );

    let (ok, out) = cli(&h, &["refresh", "api", "--verbose"], Some(ADMIN_TOKEN)).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("refreshed in") && out.contains("generation 1 -> 2"),
        "{out}"
    );
    assert!(out.contains("refresh token  yes"), "{out}");
    assert_eq!(h.tokens.state.requests(), before + 1);
    assert_no_secret(&h, &out);

    h.tokens.state.set_fail(support::FailMode::Status(503));
    let (ok, out) = cli(&h, &["refresh", "api"], Some(ADMIN_TOKEN)).await;
    assert!(!ok && out.contains("http_503"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_revokes_at_the_provider_and_fails_closed() {
    let h = harness().await;
    h.wait_ready().await;
    assert_eq!(h.get("/api/x").await.status(), 200);
    let issued = h.tokens.state.every_issued();
    let rt = issued
        .iter()
        .rev()
        .find(|t| t.starts_with("rt_"))
        .unwrap()
        .clone();
    assert!(h.tokens.state.refresh_token_active(&rt));

    let (ok, out) = cli(&h, &["logout", "api"], Some(ADMIN_TOKEN)).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("refresh_token at the provider: revoked"),
        "{out}"
    );
    assert!(
        out.contains("access_token at the provider: revoked"),
        "{out}"
    );
    assert!(
        !h.tokens.state.refresh_token_active(&rt),
        "the provider says the refresh token is inactive"
    );
    assert_eq!(h.tokens.state.revocations(), 2);
    assert_no_secret(&h, &out);

    let resp = h.get("/api/y").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true);
    assert_eq!(
        h.status().await["credentials"]["api"]["state"],
        "logged_out"
    );
    assert_eq!(h.admin_get("/readyz").await.status(), 503);
    let made = h.tokens.state.requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = h.get("/api/z").await;
    assert_eq!(h.tokens.state.requests(), made, "no refresh after a logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logout_forgets_locally_even_when_revocation_fails() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let dead = format!("http://{}/revoke", support::free_addr());
    let h = Harness::start_with(
        tokens,
        upstream,
        Options {
            credential_extra: format!("revocation_url = \"{dead}\""),
            ..Default::default()
        },
    )
    .await;
    h.wait_ready().await;
    let (ok, out) = cli(&h, &["logout", "api"], None).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("unreachable"),
        "the failed revocation is reported: {out}"
    );
    assert_eq!(h.get("/api/y").await.status(), 503);
}

#[test]
fn a_non_loopback_admin_listener_needs_an_admin_token() {
    let text = "[server]\nadmin_listen = \"0.0.0.0:9090\"\n[credentials.c]\ngrant = \"static\"\ntoken = \"t\"\n[upstreams.u]\nurl = \"http://127.0.0.1:9/\"\npath_prefix = \"/u\"\ncredential = \"c\"\n";
    let e = bearerd::config::Config::parse(std::path::Path::new("b.toml"), text).unwrap_err();
    assert_eq!(e.line, 2);
    assert!(e.to_string().contains("admin_token"), "{e}");
    let with_token = text.replace("[credentials.c]", "admin_token = \"x\"\n[credentials.c]");
    assert!(bearerd::config::Config::parse(std::path::Path::new("b.toml"), &with_token).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_logout_is_not_undone_by_the_refresh_that_was_scheduled() {
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let (ok, out) = cli(&h, &["logout", "api"], None).await;
    assert!(ok, "{out}");
    let made = h.tokens.state.requests();
    // Past the moment the old token's refresh was due.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        h.tokens.state.requests(),
        made,
        "the armed refresh must not run after a logout"
    );
    assert_eq!(
        h.status().await["credentials"]["api"]["state"],
        "logged_out"
    );
    assert_eq!(h.get("/api/y").await.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn browsers_cannot_drive_the_admin_api() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    let forged = h
        .client
        .post(h.admin("/credentials/api/login"))
        .header("origin", "https://evil.example")
        .header("content-type", "text/plain")
        .body(r#"{"refresh_token":"attacker"}"#)
        .send()
        .await
        .unwrap();
    // The trust boundary refuses a web page's request before the admin token is asked
    // for (issue 20: 403 `cross-origin-refused`, where it was 401).
    assert_eq!(forged.status(), 403);
    let body: serde_json::Value = forged.json().await.unwrap();
    assert_eq!(body["type"], "urn:bearerd:problem:cross-origin-refused");
    let logout = h
        .client
        .post(h.admin("/credentials/api/logout"))
        .header("origin", "null")
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 403);
    assert_eq!(h.status().await["credentials"]["api"]["state"], "valid");
}

/// Every command that sends the admin token refuses a plain-http admin URL off the host,
/// before anything is sent (the URL is in TEST-NET-1, where nothing answers). An HTTP proxy
/// from the environment, pointed at a local trap, is never used either: it would see the
/// token of a plain-http request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commands_refuse_to_send_the_admin_token_in_clear_off_the_host() {
    use tokio::io::AsyncWriteExt;
    let trap = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let caught = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = caught.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = trap.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
    });
    let run = |args: Vec<&'static str>, token: Option<&'static str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearerd"));
        cmd.args(args)
            .args(["--admin", "http://192.0.2.1:9090"])
            .env_remove("BEARERD_CONFIG")
            .env("HTTP_PROXY", &trap_url)
            .env("http_proxy", &trap_url)
            .env_remove("NO_PROXY")
            .env_remove("no_proxy");
        match token {
            Some(t) => cmd.env("BEARERD_ADMIN_TOKEN", t),
            None => cmd.env_remove("BEARERD_ADMIN_TOKEN"),
        };
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    for args in [vec!["refresh", "api"], vec!["logout", "api"]] {
        let out = run(args.clone(), Some(ADMIN_TOKEN)).await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(stderr.contains("the admin token in clear"), "{stderr}");
        assert!(stderr.contains("kubectl port-forward"), "{stderr}");
        assert!(stderr.contains("http://192.0.2.1:9090"), "{stderr}");
        assert!(!stderr.contains(ADMIN_TOKEN), "{stderr}");
        assert_eq!(
            caught.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{args:?} sent the admin token"
        );
    }
    // Over loopback the token does go, straight to the admin URL: the trap, as an admin
    // API, sees it (so it would have seen the refused ones), and an HTTP proxy from the
    // environment is not used (the trap, as that proxy, sees nothing).
    let direct = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let direct_url = format!("http://{}", direct.local_addr().unwrap());
    let seen = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut s, _) = direct.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).await.unwrap();
        let _ = s
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        String::from_utf8_lossy(&buf[..n]).to_string()
    });
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearerd"));
    cmd.args(["refresh", "api", "--admin", &direct_url])
        .env_remove("BEARERD_CONFIG")
        .env("HTTP_PROXY", &trap_url)
        .env("http_proxy", &trap_url)
        .env("BEARERD_ADMIN_TOKEN", ADMIN_TOKEN);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    let request = seen.await.unwrap();
    assert!(
        request.contains(&format!("Bearer {ADMIN_TOKEN}")),
        "{request}"
    );
    assert_eq!(caught.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// The listener for the kubelet and Prometheus (`metrics_listen`) serves health,
/// readiness and metrics only: status and the operations stay on the loopback admin. Its
/// health stays 200 when the identity provider refuses the client and the token runs out,
/// which is what a pod's readiness after start follows; `/readyz` (the startup gate) says
/// 503 then.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_probes_listener_serves_health_readiness_and_metrics_only() {
    let probes = support::free_addr();
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(1),
        server_extra: format!("metrics_listen = \"{probes}\""),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let get = |path: &str| h.client.get(format!("http://{probes}{path}")).send();
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(get("/readyz").await.unwrap().status(), 200);
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(metrics.contains("bearerd_token_refresh_total"), "{metrics}");
    for path in [
        "/status",
        "/credentials/api/refresh",
        "/credentials/api/logout",
    ] {
        assert_eq!(get(path).await.unwrap().status(), 404, "GET {path}");
        let post = h
            .client
            .post(format!("http://{probes}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), 404, "POST {path}");
    }
    assert_eq!(h.admin_get("/status").await.status(), 200);

    // The provider refuses the client; the token runs out.
    h.tokens
        .state
        .set_fail(support::FailMode::OAuthError("invalid_client".into()));
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while get("/readyz").await.unwrap().status() != 503 {
        assert!(std::time::Instant::now() < deadline, "never 503");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get("/healthz").await.unwrap().status(), 200);
    assert_eq!(h.get("/api/items").await.status(), 503);
    // Off the admin listener, readiness says states only: never the provider's error text.
    let probe: serde_json::Value = get("/readyz").await.unwrap().json().await.unwrap();
    assert_eq!(probe["credentials"]["api"]["state"], "failed", "{probe}");
    assert!(
        probe["credentials"]["api"].get("last_error").is_none(),
        "{probe}"
    );
    assert!(!probe.to_string().contains("invalid_client"), "{probe}");
    let admin: serde_json::Value = h.admin_get("/readyz").await.json().await.unwrap();
    assert!(
        admin["credentials"]["api"]["last_error"]["kind"] == "invalid_client",
        "{admin}"
    );
}

/// The default listeners stay off the ports apps, meshes and agents take: an app on 8080
/// (or Prometheus on 9090) in the same pod never meets "address in use".
#[test]
fn default_ports_avoid_the_ones_apps_and_meshes_use() {
    let config = bearerd::config::Config::parse(
        std::path::Path::new("d.toml"),
        "[credentials.api]\ngrant = \"static\"\ntoken = \"t\"\n[upstreams.api]\nurl = \"https://api.test/\"\npath_prefix = \"/api\"\ncredential = \"api\"\n",
    )
    .unwrap();
    // Apps and frameworks, Prometheus, Dapr, Istio, Linkerd, Envoy, Consul, Vault Agent,
    // oauth2-proxy.
    let taken = [
        80, 443, 3000, 3500, 4000, 4140, 4143, 4180, 4190, 4191, 5000, 8000, 8080, 8081, 8100,
        8200, 8443, 8500, 8888, 9090, 9091, 9901, 15000, 15001, 15006, 15020, 15021, 15090, 19000,
        50001,
    ];
    for addr in [config.server.proxy_listen, config.server.admin_listen] {
        assert!(addr.ip().is_loopback(), "{addr}");
        assert!(!taken.contains(&addr.port()), "{addr} is a port others use");
        assert!(addr.port() >= 10000, "{addr}: a low port collides sooner");
    }
}

/// A credential whose name needs percent-encoding in a path (`crm:eu`): the CLI encodes it,
/// and the admin API decodes it on every route, so `refresh`, `status` and `logout` find the
/// credential (refresh and logout used to answer `no credential named "crm%3Aeu"`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_name_that_needs_encoding_works_with_every_command() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let (proxy, admin) = support::free_addr_pair();
    let name = "crm:eu";
    let text = format!(
        "[server]\nproxy_listen = \"{proxy}\"\nadmin_listen = \"{admin}\"\n[credentials.\"{name}\"]\ngrant = \"client_credentials\"\ntoken_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nrevocation_url = \"{}\"\n[upstreams.crm]\nurl = \"http://{}/\"\npath_prefix = \"/crm\"\ncredential = \"{name}\"\n",
        tokens.token_url(),
        support::token_server::CLIENT_ID,
        support::token_server::CLIENT_SECRET,
        tokens.revocation_url(),
        upstream.addr,
    );
    let config = support::sidecar_config(&text);
    let sidecar = tokio::task::spawn_blocking(move || bearerd::Sidecar::start(config))
        .await
        .unwrap()
        .unwrap();
    let run = |args: Vec<String>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearerd"));
        cmd.args(args)
            .arg("--admin")
            .arg(format!("http://{admin}"))
            .env_remove("BEARERD_CONFIG")
            .env_remove("BEARERD_ADMIN_TOKEN");
        async move {
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        }
    };
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let ready = client
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = tokens.state.requests();
    let (ok, out) = run(vec!["refresh".into(), name.into()]).await;
    assert!(ok, "{out}");
    assert_eq!(tokens.state.requests(), before + 1, "the refresh went out");
    let (ok, out) = run(vec!["status".into(), name.into()]).await;
    assert!(ok && out.contains(name), "{out}");
    let (ok, out) = run(vec!["logout".into(), name.into()]).await;
    assert!(ok, "{out}");
    let r = client
        .get(format!("http://{proxy}/crm/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "logged out: no token is served");
    tokio::task::spawn_blocking(move || sidecar.shutdown())
        .await
        .unwrap();
}
