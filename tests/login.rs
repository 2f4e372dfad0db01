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
    let (_, stderr) = log_in(&h).await;
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

/// A file store in a new directory, as `[store]` lines.
fn file_store() -> String {
    let dir = std::env::temp_dir().join(format!("bearerd-login-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    format!(
        "backend = \"file\"\npath = {:?}\nkey = \"{}\"",
        dir.join("tokens.store").display().to_string(),
        bearerd::store::generate_key()
    )
}

/// A `registration = "auto"` credential (issuer discovery) before its first login, against
/// a token server that offers dynamic registration (`Some(confidential)`) or none.
async fn registering(lifetime: Duration, offer: Option<bool>, store: String) -> Harness {
    let (tokens, upstream) = support::start_peers(lifetime).await;
    if let Some(confidential) = offer {
        tokens.state.offer_registration(confidential);
    }
    let opts = Options {
        grant: "refresh_token",
        discovery: Discovery::Issuer,
        client: Some("registration = \"auto\"".into()),
        store,
        ..Default::default()
    };
    Harness::start_raw(tokens, upstream, opts, String::new()).await
}

/// Runs `bearerd login` through the authorization server (which approves at once) and
/// returns the authorization URL it showed, and what it said on stderr.
async fn log_in(h: &Harness) -> (String, String) {
    let (child, rx) = start_login(h, false, &[]);
    let url = wait_line(&rx, |l| l.trim_start().starts_with("http"))
        .trim()
        .to_string();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = no_redirects.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 302, "{url}");
    let callback = resp.headers()["location"].to_str().unwrap().to_string();
    let page = reqwest::get(&callback).await.unwrap().text().await.unwrap();
    assert!(page.contains("Logged in"), "{page}");
    wait_line(&rx, |l| l.contains("logged in"));
    let (ok, stderr) = finish(child).await;
    assert!(ok, "{stderr}");
    (url, stderr)
}

/// A credential with `registration = "auto"` has no client in its config: the sidecar
/// registers one (RFC 7591: native, loopback redirect, public where allowed), keeps it in
/// the store, and refreshes with it, before and after a restart, without registering again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_without_a_client_registers_one_and_keeps_it() {
    let mut h = registering(Duration::from_secs(3), Some(false), file_store()).await;
    assert_eq!(h.get("/api/x").await.status(), 503, "no login yet");
    assert!(
        h.tokens.state.registrations().is_empty(),
        "nothing registered before a login"
    );

    let (url, _) = log_in(&h).await;
    let registrations = h.tokens.state.registrations();
    assert_eq!(registrations.len(), 1, "{registrations:?}");
    let asked = &registrations[0];
    assert_eq!(asked["application_type"], "native");
    assert_eq!(
        asked["redirect_uris"],
        serde_json::json!(["http://127.0.0.1/callback"])
    );
    assert_eq!(asked["token_endpoint_auth_method"], "none");
    // The server has a device endpoint: `bearerd login --device` may use the client too.
    assert_eq!(
        asked["grant_types"],
        serde_json::json!([
            "authorization_code",
            "refresh_token",
            "urn:ietf:params:oauth:grant-type:device_code"
        ])
    );
    assert!(
        url.contains("client_id=reg-"),
        "the registered client logs in: {url}"
    );
    assert_eq!(h.get("/api/x").await.status(), 200);

    // Tokens live 3 s: a refresh with the registered client happens within the test.
    let before = h.tokens.state.requests();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while h.tokens.state.requests() == before {
        assert!(tokio::time::Instant::now() < deadline, "no refresh in 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let form = h.tokens.state.last_form();
    assert!(
        form.iter()
            .any(|(k, v)| k == "client_id" && v.starts_with("reg-")),
        "{form:?}"
    );

    support::restart(&mut h).await;
    let answer = h.admin_post("/credentials/api/register").await;
    assert_eq!(answer.status(), 200);
    let report: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(report["mode"], "dynamic");
    assert_eq!(report["token_endpoint_auth_method"], "none");
    assert!(
        report.get("client_secret").is_none(),
        "a public client has none"
    );
    let served = h.get("/api/y").await;
    assert_eq!(served.status(), 200, "the login survives the restart");
    assert_eq!(
        h.tokens.state.registrations().len(),
        1,
        "the stored registration is used, not a new one"
    );
}

/// Where the authorization server takes client ID metadata documents, the document's URL
/// is the client: nothing is registered, and `bearerd client-metadata` prints what to host.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metadata_document_url_is_the_client_where_the_server_takes_one() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    tokens.state.offer_registration(false);
    tokens.state.offer_client_metadata_documents();
    let document = "https://app.example/bearerd-client.json";
    let opts = Options {
        grant: "refresh_token",
        discovery: Discovery::Issuer,
        client: Some(format!(
            "registration = \"auto\"\nclient_metadata_url = \"{document}\""
        )),
        ..Default::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let (url, _) = log_in(&h).await;
    let encoded: String = url::form_urlencoded::byte_serialize(document.as_bytes()).collect();
    assert!(url.contains(&format!("client_id={encoded}")), "{url}");
    assert!(
        h.tokens.state.registrations().is_empty(),
        "documents come first"
    );
    assert_eq!(h.get("/api/x").await.status(), 200);
    let report: serde_json::Value = h
        .admin_post("/credentials/api/register")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["mode"], "client_id_metadata_document");
    assert_eq!(report["client_id"], document);
}

/// A confidential registration: the server hands out a secret, and the refreshes
/// authenticate with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_confidential_registration_authenticates_with_its_secret() {
    let h = registering(Duration::from_secs(60), Some(true), String::new()).await;
    log_in(&h).await;
    assert_eq!(
        h.tokens.state.registrations()[0]["token_endpoint_auth_method"],
        "client_secret_basic",
        "asks for what the server supports"
    );
    assert_eq!(h.get("/api/x").await.status(), 200);
    let refreshed = h.admin_post("/credentials/api/refresh").await;
    assert_eq!(
        refreshed.status(),
        200,
        "the registered secret authenticates"
    );
}

/// A server that forgot its registered clients (it kept them in memory and restarted):
/// the refresh fails with `invalid_client`, and the next login registers a new client
/// instead of handing out the dead one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_the_server_forgot_is_registered_again_at_the_next_login() {
    let h = registering(Duration::from_secs(60), Some(false), String::new()).await;
    log_in(&h).await;
    h.tokens.state.forget_registered_clients();
    let refreshed = h.admin_post("/credentials/api/refresh").await;
    assert_ne!(refreshed.status(), 200);
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"], "invalid_client",
        "{status}"
    );
    let (url, _) = log_in(&h).await;
    let registrations = h.tokens.state.registrations();
    assert_eq!(registrations.len(), 2, "registered again");
    assert_eq!(h.get("/api/x").await.status(), 200, "{url}");
}

/// A server that offers no registration: the login says what to do instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_registration_mode_the_login_says_what_to_do() {
    let h = registering(Duration::from_secs(60), None, String::new()).await;
    let (child, _rx) = start_login(&h, false, &[]);
    let (ok, stderr) = finish(child).await;
    assert!(!ok);
    assert!(
        stderr.contains("neither client ID metadata documents nor dynamic registration")
            && stderr.contains("client_id"),
        "{stderr}"
    );
}

/// Issue 21: a registration is bound to its issuer. When the upstream names another
/// authorization server, nothing is sent there with the old client or its refresh token;
/// the credential asks for a login, which registers at the new server and drops the old
/// grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_registered_at_one_server_is_never_used_at_another() {
    let (first, upstream) = support::start_peers(Duration::from_secs(3)).await;
    let second = support::TokenServer::start(Duration::from_secs(3))
        .await
        .unwrap();
    first.state.offer_registration(false);
    second.state.offer_registration(false);
    let opts = Options {
        grant: "refresh_token",
        discovery: Discovery::ProtectedResource,
        client: Some(format!(
            "registration = \"auto\"\nallowed_authorization_servers = [\"{}\", \"{}\"]",
            first.issuer(),
            second.issuer()
        )),
        // The pin line the harness writes for discovery is replaced by the two above.
        endpoint: Some(String::new()),
        store: file_store(),
        ..Default::default()
    };
    let mut h = Harness::start_raw(first, upstream, opts, String::new()).await;
    *h.upstream.state.authorization_server.lock().unwrap() = Some(h.tokens.issuer());
    log_in(&h).await;
    assert_eq!(h.get("/api/x").await.status(), 200);
    assert_eq!(h.tokens.state.registrations().len(), 1);

    // The upstream moves to another authorization server.
    *h.upstream.state.authorization_server.lock().unwrap() = Some(second.issuer());
    support::restart(&mut h).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let s = h.status().await;
        let api = s["credentials"]["api"].clone();
        if api["last_error"]["kind"] == "registration_required" {
            break api;
        }
        assert!(tokio::time::Instant::now() < deadline, "{api}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let message = status["last_error"]["message"].as_str().unwrap();
    assert!(message.contains(&second.issuer()), "{message}");
    assert_eq!(second.state.requests(), 0, "nothing sent to the new server");

    // A login registers at the new server; the first server's grant is gone.
    log_in(&h).await;
    assert_eq!(second.state.registrations().len(), 1);
    // What the new server has seen since is its own grant's (the login's refresh).
    let form = second.state.last_form();
    let sent = form
        .iter()
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v);
    assert!(
        sent.is_none_or(|rt| second.state.every_issued().contains(rt)),
        "{form:?}"
    );
    let report: serde_json::Value = h
        .admin_post("/credentials/api/register")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["issuer"], second.issuer());
}

/// Issue 21: a user grant's 403 `insufficient_scope` is the person's to consent to: the
/// app gets 403 `insufficient-scope` with the scopes and the login path, and the next
/// login asks for the union.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_grant_asks_for_a_login_with_the_union_of_scopes() {
    let h = harness_without_refresh_token().await;
    log_in(&h).await;
    assert_eq!(h.get("/api/x").await.status(), 200);
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.write".into());
    let before = h.tokens.state.requests();
    let r = h.get("/api/write").await;
    assert_eq!(r.status(), 403);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        problem["type"], "urn:bearerd:problem:insufficient-scope",
        "{problem}"
    );
    assert_eq!(problem["requires_reauth"], true);
    assert_eq!(
        problem["scopes"],
        serde_json::json!(["demo.read", "demo.write"])
    );
    assert_eq!(problem["login"], "/credentials/api/login");
    assert_eq!(
        h.tokens.state.requests(),
        before,
        "no token request on a person's behalf"
    );
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["step_up_scopes"],
        serde_json::json!(["demo.read", "demo.write"]),
        "what the upstream asked for"
    );
    // Never asked for in a refresh: only the person can consent to it.
    let refreshed = h.admin_post("/credentials/api/refresh").await;
    assert_eq!(refreshed.status(), 200);
    assert!(!h
        .tokens
        .state
        .last_form()
        .iter()
        .any(|(k, v)| k == "scope" && v.contains("demo.write")));
    let (url, _) = log_in(&h).await;
    assert!(url.contains("scope=demo.read+demo.write"), "{url}");
}

/// A credential that needs a login says where the login goes: the admin API's login path,
/// which `bearerd login` calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credential_that_needs_a_login_says_where_the_login_goes() {
    let h = harness_without_refresh_token().await;
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true, "{body}");
    assert_eq!(body["login"], "/credentials/api/login", "{body}");
    assert_eq!(h.upstream.state.requests(), 0);
}
