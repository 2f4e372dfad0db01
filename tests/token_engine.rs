//! The token engine seen from outside: cold start, rotation, outages, permanent failures,
//! rotating refresh tokens, static tokens. Tokens live seconds, so rotation happens here.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{metric, FailMode, Harness, Options};

/// Runs `clients` loops of GET requests for `duration`; returns (ok, non-2xx statuses).
async fn load(h: &Harness, clients: usize, duration: Duration) -> (usize, Vec<u16>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..clients {
        let c = h.client.clone();
        let url = h.url(&format!("/api/load/{i}"));
        let (ok, bad) = (ok.clone(), bad.clone());
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            while started.elapsed() < duration {
                match c.get(&url).send().await {
                    Ok(r) if r.status().is_success() => {
                        ok.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => bad.lock().unwrap().push(r.status().as_u16()),
                    Err(_) => bad.lock().unwrap().push(0),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let bad = bad.lock().unwrap().clone();
    (ok.load(Ordering::SeqCst), bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cold_start_50_concurrent_requests_share_one_token_request() {
    let h = Harness::start(Options {
        token_delay: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = h.client.clone();
        let url = h.url(&format!("/api/cold/{i}"));
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(h.tokens.state.requests(), 1, "exactly one token request");
    let m = h.metrics().await;
    let waits = metric(&m, r#"bearerd_token_wait_seconds_count{credential="api"}"#).unwrap();
    assert!(waits >= 1.0, "requests that waited are measured: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_second_tokens_rotate_proactively_under_load() {
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let (ok, bad) = load(&h, 8, Duration::from_secs(10)).await;
    assert!(bad.is_empty(), "non-2xx under rotation: {bad:?}");
    assert!(ok > 100, "{ok}");
    let made = h.tokens.state.requests();
    assert!(
        (3..=10).contains(&made),
        "{made} token requests for 3 s tokens over 10 s"
    );
    let serials: std::collections::HashSet<_> = h
        .upstream
        .state
        .seen()
        .iter()
        .filter_map(|r| r.token_serial)
        .collect();
    assert!(
        serials.len() >= 3,
        "the tokens rotated during the test: {serials:?}"
    );
    let m = h.metrics().await;
    assert!(
        metric(
            &m,
            r#"bearerd_token_refresh_total{credential="api",result="success",trigger="scheduled"}"#
        )
        .unwrap()
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn provider_outage_while_the_token_is_valid_fails_no_request_and_recovers() {
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(8),
        credential_extra: "refresh_ratio = 0.25".into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let gen_before = h.status().await["credentials"]["api"]["generation"]
        .as_u64()
        .unwrap();
    let before = h.tokens.state.requests();
    h.tokens.state.set_fail(FailMode::Status(503));
    // The scheduled refresh (at about 2 s) falls into the outage.
    let (ok, bad) = load(&h, 4, Duration::from_secs(4)).await;
    let during = h.tokens.state.requests() - before;
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["state"], "retrying",
        "{status}"
    );
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"],
        "http_503"
    );
    h.tokens.state.set_fail(FailMode::None);
    assert!(bad.is_empty(), "requests failed during the outage: {bad:?}");
    assert!(ok > 50);
    assert!(
        (2..=12).contains(&during),
        "{during} token requests during a 2 s outage with backoff"
    );

    let mut recovered = false;
    for _ in 0..100 {
        let s = h.status().await;
        if s["credentials"]["api"]["generation"].as_u64().unwrap() > gen_before
            && s["credentials"]["api"]["state"] == "valid"
        {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        recovered,
        "a new token after the outage: {}",
        h.status().await
    );
    let (_, bad) = load(&h, 2, Duration::from_millis(500)).await;
    assert!(bad.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_failures_fail_closed_and_stop_retrying() {
    for code in ["invalid_client", "invalid_grant"] {
        let h = Harness::start(Options {
            fail: Some(FailMode::OAuthError(code.into())),
            ..Default::default()
        })
        .await;
        for _ in 0..5 {
            let resp = h
                .client
                .post(h.url("/api/x"))
                .body("{}")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 503, "{code}");
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            let body: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(body["requires_reauth"], true, "{body}");
            assert_eq!(body["credential"], "api");
            assert!(body["detail"].as_str().unwrap().contains(code), "{body}");
        }
        let ready = h.admin_get("/readyz").await;
        assert_eq!(ready.status(), 503);
        let status = h.status().await;
        assert_eq!(status["credentials"]["api"]["state"], "failed", "{status}");
        assert_eq!(status["credentials"]["api"]["last_error"]["kind"], code);
        let made = h.tokens.state.requests();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let _ = h.get("/api/again").await;
        assert_eq!(
            h.tokens.state.requests(),
            made,
            "{code}: automatic retries stop"
        );
        assert_eq!(made, 1);
        assert_eq!(
            h.upstream.state.requests(),
            0,
            "never forwarded without a token"
        );
        let m = h.metrics().await;
        assert_eq!(
            metric(
                &m,
                r#"bearerd_token_refresh_total{credential="api",result="permanent_error",trigger="startup"}"#
            ),
            Some(1.0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_failure_after_a_valid_token_serves_it_until_expiry_then_fails_closed() {
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    h.tokens
        .state
        .set_fail(FailMode::OAuthError("invalid_client".into()));
    assert_eq!(h.get("/api/still-valid").await.status(), 200);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let resp = h.get("/api/expired").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true);
    // Every forwarded request carried a token the provider still considered valid.
    assert!(h
        .upstream
        .state
        .seen()
        .iter()
        .all(|r| r.token_serial.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_that_runs_out_during_an_outage_shows_expired_through_the_retries() {
    // The state an alert keys on: `expired` must hold while requests get 503, not flip to
    // `refreshing` or `retrying` with every attempt of the backoff.
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(2),
        credential_extra: "min_refresh_interval = \"200ms\"\nwait_budget = \"200ms\"".into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    h.tokens.state.set_fail(FailMode::Status(503));
    let mut state = String::new();
    for _ in 0..100 {
        state = h.state().await;
        if state == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(state, "expired");
    let attempts_before = h.tokens.state.requests();
    for _ in 0..10 {
        // Each request waits for a token, which asks for a refresh: attempts go on.
        assert_eq!(h.get("/api/x").await.status(), 503);
        let status = h.status().await;
        assert_eq!(status["credentials"]["api"]["state"], "expired", "{status}");
        h.metric_eventually(
            r#"bearerd_credential_state{credential="api",state="expired"}"#,
            1.0,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        h.tokens.state.requests() > attempts_before,
        "the provider was retried meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_wait_for_a_recovering_provider_within_the_budget() {
    let h = Harness::start(Options {
        fail: Some(FailMode::Status(503)),
        credential_extra: "wait_budget = \"1s\"\nmin_refresh_interval = \"500ms\"".into(),
        ..Default::default()
    })
    .await;
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["requires_reauth"], false,
        "an outage is transient: {body}"
    );
    h.tokens.state.set_fail(FailMode::None);
    // A waiting request drives a refresh at the request-triggered interval.
    let resp = h.get("/api/y").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_refresh_tokens_survive_concurrent_load_without_reuse() {
    let h = Harness::start(Options {
        grant: "refresh_token",
        lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let (ok, bad) = load(&h, 8, Duration::from_secs(6)).await;
    assert!(bad.is_empty(), "non-2xx: {bad:?}");
    assert!(ok > 50);
    assert!(
        h.tokens.state.requests() >= 3,
        "the refresh token rotated several times"
    );
    assert_eq!(
        h.tokens.state.reuse_detected(),
        0,
        "a refresh token was used twice"
    );
    assert_eq!(
        h.tokens.state.active_refresh_tokens(),
        1,
        "the grant survives"
    );
    let form = h.tokens.state.last_form();
    assert!(form
        .iter()
        .any(|(k, v)| k == "grant_type" && v == "refresh_token"));
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["has_refresh_token"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn missing_expires_in_uses_the_default_lifetime() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    tokens.state.omit_expires_in(true);
    let h = Harness::start_with(
        tokens,
        upstream,
        Options {
            credential_extra: "default_lifetime = \"2s\"".into(),
            ..Default::default()
        },
    )
    .await;
    h.wait_ready().await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        h.tokens.state.requests() >= 2,
        "refreshed on the assumed lifetime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_token_responses_are_retried_not_forwarded() {
    let h = Harness::start(Options {
        fail: Some(FailMode::Malformed),
        credential_extra: "wait_budget = \"500ms\"".into(),
        ..Default::default()
    })
    .await;
    let resp = h.get("/api/x").await;
    assert_eq!(resp.status(), 503);
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["last_error"]["kind"],
        "malformed_response"
    );
    // No token yet and the attempts keep failing: requests get 503, so `expired`.
    assert_eq!(status["credentials"]["api"]["state"], "expired");
    assert_eq!(h.upstream.state.requests(), 0);
    h.tokens.state.set_fail(FailMode::None);
    h.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn static_token_file_is_reread_when_it_changes() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(600)).await;
    let client = reqwest::Client::new();
    let issue = || async {
        let v: serde_json::Value = client
            .post(tokens.token_url())
            .basic_auth(
                support::token_server::CLIENT_ID,
                Some(support::token_server::CLIENT_SECRET),
            )
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["access_token"].as_str().unwrap().to_string()
    };
    let dir = std::env::temp_dir().join(format!("bearerd-static-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, format!("{}\n", issue().await)).unwrap();
    let (proxy, admin) = support::free_addr_pair();
    let text = format!(
        "[server]\nproxy_listen = \"{proxy}\"\nadmin_listen = \"{admin}\"\n[credentials.pat]\ngrant = \"static\"\ntoken = {{ file = {:?} }}\n[upstreams.api]\nurl = \"http://{}/\"\npath_prefix = \"/api\"\ncredential = \"pat\"\n",
        file.display().to_string(),
        upstream.addr
    );
    let config =
        bearerd::config::Config::parse(std::path::Path::new("static.toml"), &text).unwrap();
    let sidecar = tokio::task::spawn_blocking(move || bearerd::Sidecar::start(config))
        .await
        .unwrap()
        .unwrap();
    let r: serde_json::Value = client
        .get(format!("http://{proxy}/api/a"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = r["token_serial"].as_u64().unwrap();

    tokens.state.revoke_access_tokens();
    std::fs::write(&file, issue().await).unwrap();
    let mut second = None;
    for _ in 0..60 {
        let resp = client
            .get(format!("http://{proxy}/api/b"))
            .send()
            .await
            .unwrap();
        if resp.status() == 200 {
            let r: serde_json::Value = resp.json().await.unwrap();
            second = r["token_serial"].as_u64();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        second.is_some_and(|s| s > first),
        "the new file content is used: {second:?}"
    );
    tokio::task::spawn_blocking(move || sidecar.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_metric_series_exists_from_startup() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    tokens.state.set_delay(Duration::from_secs(2));
    let h = Harness::start_with(tokens, upstream, Options::default()).await;
    let m = h.metrics().await;
    for trigger in ["startup", "scheduled", "on_demand", "on_401", "manual"] {
        for result in ["success", "transient_error", "permanent_error"] {
            let s = format!(
                r#"bearerd_token_refresh_total{{credential="api",result="{result}",trigger="{trigger}"}}"#
            );
            assert_eq!(metric(&m, &s), Some(0.0), "{s}");
        }
    }
    for outcome in [
        "replayed_ok",
        "replayed_401",
        "not_replayable",
        "rate_limited",
    ] {
        let s = format!(r#"bearerd_upstream_401_total{{outcome="{outcome}",upstream="api"}}"#);
        assert_eq!(metric(&m, &s), Some(0.0), "{s}");
    }
    for state in [
        "valid",
        "refreshing",
        "retrying",
        "expired",
        "failed",
        "logged_out",
    ] {
        let s = format!(r#"bearerd_credential_state{{credential="api",state="{state}"}}"#);
        let expected = if state == "refreshing" { 1.0 } else { 0.0 };
        assert_eq!(metric(&m, &s), Some(expected), "{s}\n{m}");
    }
    for s in [
        r#"bearerd_requests_total{status="200",upstream="api"}"#,
        r#"bearerd_token_expires_in_seconds{credential="api"}"#,
        r#"bearerd_token_refresh_duration_seconds_count{credential="api"}"#,
        r#"bearerd_request_duration_seconds_count{upstream="api"}"#,
        r#"bearerd_token_wait_seconds_count{credential="api"}"#,
    ] {
        assert_eq!(metric(&m, s), Some(0.0), "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_refresh_through_the_admin_api() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    let before = h.tokens.state.requests();
    let resp = h.admin_post("/credentials/api/refresh").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["outcome"], "success");
    assert_eq!(body["generation"], 2);
    assert_eq!(h.tokens.state.requests(), before + 1);
    let resp = h.admin_post("/credentials/nope/refresh").await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_requests_carry_scopes_resource_params_and_client_auth() {
    for auth in ["basic", "post"] {
        let h = Harness::start(Options {
            credential_extra: format!(
                "client_auth = \"{auth}\"\nresource = \"https://api.example.com/\"\nparams = {{ audience = \"crm\" }}"
            ),
            ..Default::default()
        })
        .await;
        h.wait_ready().await;
        let form = h.tokens.state.last_form();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("grant_type").as_deref(), Some("client_credentials"));
        assert_eq!(get("scope").as_deref(), Some("demo.read"));
        assert_eq!(get("resource").as_deref(), Some("https://api.example.com/"));
        assert_eq!(get("audience").as_deref(), Some("crm"));
        // The test token server accepted the client: basic in a header, post in the form.
        assert_eq!(get("client_secret").is_some(), auth == "post", "{auth}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seed_survives_transient_failures_until_the_provider_answers() {
    let h = Harness::start(Options {
        fail: Some(FailMode::Status(503)),
        grant: "refresh_token",
        ..Default::default()
    })
    .await;
    // A few failed attempts with the seed (nothing reached the grant) …
    for _ in 0..100 {
        if h.tokens.state.requests() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(h.tokens.state.requests() >= 2);
    // … and the same seed still works once the provider is back.
    h.tokens.state.set_fail(FailMode::None);
    h.wait_ready().await;
    assert_eq!(h.tokens.state.reuse_detected(), 0);
}

/// One replica's token engine (slot, grant, refresher) on a store it may share with others.
struct Replica {
    slot: Arc<bearerd::token::CredentialSlot>,
    metrics: Arc<bearerd::metrics::Metrics>,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn replica(
    config: &bearerd::config::Config,
    store: &Arc<dyn bearerd::store::TokenStore>,
) -> Replica {
    let c = &config.credentials[0];
    let metrics = Arc::new(bearerd::metrics::Metrics::new(["api"], ["api"]));
    let slot = bearerd::token::CredentialSlot::new(c, Arc::clone(&metrics));
    let grant = bearerd::token::grant::Grant::new(&c.grant).unwrap();
    let cred =
        bearerd::token::credential::Credential::new(Arc::clone(&slot), grant, Arc::clone(store));
    let (stop, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(bearerd::token::refresher::run(cred, rx));
    Replica {
        slot,
        metrics,
        _stop: stop,
    }
}

fn replica_config(tokens: &support::TokenServer, grant_lines: &str) -> bearerd::config::Config {
    let text = format!(
        "[credentials.api]\n{grant_lines}token_url = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\nbackoff_base = \"100ms\"\n[upstreams.api]\nurl = \"http://127.0.0.1:1/base\"\npath_prefix = \"/api\"\ncredential = \"api\"\n",
        tokens.token_url(),
        support::token_server::CLIENT_ID,
        support::token_server::CLIENT_SECRET,
    );
    bearerd::config::Config::parse(std::path::Path::new("replica.toml"), &text).unwrap()
}

async fn wait_for_token(slot: &bearerd::token::CredentialSlot) {
    for _ in 0..400 {
        if slot.is_ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no token: {:?}", slot.status());
}

/// Runs the replicas for `duration`, checking every 20 ms that each holds a usable token
/// that the token server still accepts; returns how many checks failed.
async fn watch_replicas(
    tokens: &support::TokenServer,
    replicas: &[Replica],
    duration: Duration,
) -> usize {
    let started = Instant::now();
    let mut bad = 0;
    while started.elapsed() < duration {
        for r in replicas {
            let ok = r.slot.current().is_some_and(|t| {
                let value = t
                    .header
                    .to_str()
                    .unwrap()
                    .trim_start_matches("Bearer ")
                    .to_string();
                t.is_usable(Instant::now()) && tokens.state.validate(&value).is_some()
            });
            bad += usize::from(!ok);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bad
}

/// Three engines on one store behave as one: the second and third start from the first's
/// token set, and each rotation is one token request that the others adopt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_a_store_adopt_the_set_instead_of_requesting_one() {
    let (tokens, _upstream) = support::start_peers(Duration::from_secs(3)).await;
    let config = replica_config(&tokens, "grant = \"client_credentials\"\n");
    let store: Arc<dyn bearerd::store::TokenStore> = Arc::new(bearerd::store::MemoryStore::new());
    let first = replica(&config, &store);
    wait_for_token(&first.slot).await;
    assert_eq!(tokens.state.requests(), 1);
    let (second, third) = (replica(&config, &store), replica(&config, &store));
    wait_for_token(&second.slot).await;
    wait_for_token(&third.slot).await;
    assert_eq!(
        tokens.state.requests(),
        1,
        "the others start from the stored set"
    );
    let replicas = [first, second, third];
    let bad = watch_replicas(&tokens, &replicas, Duration::from_secs(8)).await;
    assert_eq!(bad, 0, "every replica always held a valid token");
    // One engine alone makes one request per rotation (about every 2.4 s of 3 s tokens):
    // 1 + 3 or 4 in 8 s. Three independent ones would make three times that.
    let requests = tokens.state.requests();
    let adopted: f64 = replicas
        .iter()
        .map(|r| {
            metric(
                &r.metrics.render(),
                "bearerd_token_adopted_total{credential=\"api\"}",
            )
            .unwrap()
        })
        .sum();
    eprintln!("token requests: {requests}, adoptions: {adopted}");
    assert!(
        requests <= 6,
        "{requests} token requests for three replicas in 8 s"
    );
    assert!(adopted >= 4.0, "only {adopted} adoptions");
}

/// Three engines start at once on one store with one seed refresh token, against a strict
/// provider: the seed is sent once, no refresh token is ever sent twice, and the grant
/// lives on through the rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_a_store_send_a_rotating_refresh_token_once() {
    let (tokens, _upstream) = support::start_peers(Duration::from_secs(3)).await;
    let mut grant_lines = String::new();
    Harness::write_seed(&mut grant_lines, tokens.state.seed_refresh_token());
    let config = replica_config(
        &tokens,
        &format!("grant = \"refresh_token\"\n{grant_lines}"),
    );
    let store: Arc<dyn bearerd::store::TokenStore> = Arc::new(bearerd::store::MemoryStore::new());
    let replicas = [
        replica(&config, &store),
        replica(&config, &store),
        replica(&config, &store),
    ];
    for r in &replicas {
        wait_for_token(&r.slot).await;
    }
    assert_eq!(tokens.state.requests(), 1, "the seed was sent once");
    let bad = watch_replicas(&tokens, &replicas, Duration::from_secs(8)).await;
    assert_eq!(
        tokens.state.reuse_detected(),
        0,
        "a refresh token was sent twice"
    );
    assert_eq!(bad, 0, "every replica always held a valid token");
    assert!(
        tokens.state.rotations() >= 2,
        "{} rotations",
        tokens.state.rotations()
    );
    assert!(
        tokens.state.requests() <= 6,
        "{} token requests",
        tokens.state.requests()
    );
    assert_eq!(
        tokens.state.active_refresh_tokens(),
        1,
        "the grant is alive"
    );
}
