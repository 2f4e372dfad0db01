//! Per-subject credentials, black-box: one token set per end user, named by the app in
//! `x-bearerd-subject`. The test token server records which user each token was issued
//! for, and the upstream answers with it, so every response says whose token it carried.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bearerd::token::subject::SubjectKey;
use serde_json::json;
use support::{FailMode, Harness, Options};

const HEADER: &str = "x-bearerd-subject";
const REDIRECT: &str = "https://app.example/oauth/callback";

async fn start(lifetime: Duration, extra: &str, store: &str) -> Harness {
    let (tokens, upstream) = support::start_peers(lifetime).await;
    start_with(tokens, upstream, extra, store).await
}

async fn start_with(
    tokens: support::TokenServer,
    upstream: support::Upstream,
    extra: &str,
    store: &str,
) -> Harness {
    let opts = Options {
        grant: "refresh_token",
        discovery: support::Discovery::Issuer,
        credential_extra: format!(
            "subject_header = \"{HEADER}\"\nredirect_uri = \"{REDIRECT}\"\n{extra}"
        ),
        store: store.to_string(),
        ..Options::default()
    };
    Harness::start_raw(tokens, upstream, opts, String::new()).await
}

/// A `[store]` body: a sealed file store in a new temporary directory (also given).
fn file_store(name: &str) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("bearerd-{name}-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let store = format!(
        "backend = \"file\"\npath = {:?}\nkey = \"{}\"",
        dir.join("tokens.store").display().to_string(),
        bearerd::store::generate_key()
    );
    (dir, store)
}

fn seg(s: &str) -> String {
    bearerd::api::encode_segment(s)
}

fn subject_path(s: &str, op: &str) -> String {
    format!("/credentials/api/subjects/{}{op}", seg(s))
}

/// Hands a subject's refresh token over, as an app migrating its token table does.
async fn hand_over(h: &Harness, subject: &str, rt: &str) -> reqwest::Response {
    h.client
        .post(h.admin(&subject_path(subject, "/login")))
        .json(&json!({ "refresh_token": rt }))
        .send()
        .await
        .unwrap()
}

async fn post_as(
    h: &Harness,
    subject: &str,
    path: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    h.client
        .post(h.url(path))
        .header(HEADER, subject)
        .json(body)
        .send()
        .await
        .unwrap()
}

async fn get_as(h: &Harness, subject: &str, path: &str) -> reqwest::Response {
    h.client
        .get(h.url(path))
        .header(HEADER, subject)
        .send()
        .await
        .unwrap()
}

/// The user whose token the upstream saw, from its answer.
async fn token_subject(r: reqwest::Response) -> Option<String> {
    let body: serde_json::Value = r.json().await.unwrap();
    body["token_subject"].as_str().map(str::to_string)
}

/// The names [`list_subjects`] finds, sorted.
async fn sorted_names(
    client: &reqwest::Client,
    admin: std::net::SocketAddr,
    limit: usize,
) -> Vec<String> {
    let mut names: Vec<String> = list_subjects(client, admin, limit)
        .await
        .iter()
        .map(|s| s["subject"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// Every subject `GET /credentials/api/subjects` lists, walking its pages `limit` at a time.
async fn list_subjects(
    client: &reqwest::Client,
    admin: std::net::SocketAddr,
    limit: usize,
) -> Vec<serde_json::Value> {
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let page: serde_json::Value = client
            .get(format!(
                "http://{admin}/credentials/api/subjects?limit={limit}{after}"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let subjects = page["subjects"].as_array().unwrap();
        assert!(subjects.len() <= limit, "{page}");
        listed.extend(subjects.iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = format!("&after={}", seg(n)),
            None => break,
        }
    }
    listed
}

async fn subject_status(h: &Harness, subject: &str) -> serde_json::Value {
    h.admin_get(&subject_path(subject, ""))
        .await
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_subjects_under_load_each_get_only_their_own_token() {
    let lifetime = Duration::from_secs(3);
    let h = start(lifetime, "", "").await;
    let subjects: Vec<String> = (0..200).map(|i| format!("user{i}@example.com")).collect();
    for s in &subjects {
        let rt = h.tokens.state.seed_refresh_token_for(s);
        let r = hand_over(&h, s, &rt).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    let token_requests_before = h.tokens.state.requests();
    let h = Arc::new(h);
    let (ok, wrong, bad) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    let run_for = Duration::from_secs(10);
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (h, subjects) = (Arc::clone(&h), subjects.clone());
        let (ok, wrong, bad) = (Arc::clone(&ok), Arc::clone(&wrong), Arc::clone(&bad));
        clients.push(tokio::spawn(async move {
            let mut n = c;
            while started.elapsed() < run_for {
                // A cheap spread over the subjects, different per client.
                n = n
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let s = &subjects[(n >> 33) as usize % subjects.len()];
                let r = get_as(&h, s, "/api/x").await;
                if !r.status().is_success() {
                    bad.lock().unwrap().push(r.status().as_u16());
                    continue;
                }
                match token_subject(r).await {
                    Some(seen) if seen == *s => ok.fetch_add(1, Ordering::Relaxed),
                    _ => wrong.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    support::assert_all_2xx(&bad.lock().unwrap());
    assert_eq!(
        wrong.load(Ordering::Relaxed),
        0,
        "a request carried another subject's token"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 1000,
        "{} requests",
        ok.load(Ordering::Relaxed)
    );
    // About one token request per subject per refresh window (a refresh at 80 % of 3 s,
    // with jitter): never one per request.
    let token_requests = h.tokens.state.requests() - token_requests_before;
    let windows = run_for.as_secs_f64() / (lifetime.as_secs_f64() * 0.7);
    let most = (subjects.len() as f64 * (windows + 1.0)) as usize;
    assert!(
        token_requests >= subjects.len() * 2 && token_requests <= most,
        "{token_requests} token requests for {} subjects in {run_for:?} (at most {most})",
        subjects.len()
    );
    // The subject header never reaches the upstream.
    assert!(h
        .upstream
        .state
        .seen()
        .iter()
        .all(|r| !r.headers.contains_key(HEADER)));
    // Every subject holds a usable token (one may be refreshing right now: 3 s tokens).
    let status = h.status().await;
    let counts = &status["credentials"]["api"]["subjects"];
    let usable = ["valid", "refreshing", "retrying"]
        .iter()
        .map(|k| counts[*k].as_u64().unwrap())
        .sum::<u64>();
    assert_eq!(usable, 200, "{status}");
    assert!(
        !status.to_string().contains("user1@example.com"),
        "/status lists no subject"
    );
    let metrics = h.metrics().await;
    let gauge = |state: &str| {
        let series = format!("bearerd_subjects{{credential=\"api\",state=\"{state}\"}}");
        support::metric(&metrics, &series).unwrap()
    };
    assert_eq!(
        gauge("valid") + gauge("refreshing") + gauge("retrying"),
        200.0
    );
    assert_eq!(gauge("failed") + gauge("expired"), 0.0);
    assert!(
        !metrics.contains("example.com"),
        "no metric names a subject"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_name_a_valid_subject_and_unknown_ones_are_told_to_connect() {
    let h = start(Duration::from_secs(60), "", "").await;
    let r = h.get("/api/x").await;
    assert_eq!(r.status(), 400);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:bearerd:problem:subject-required");
    for bad in [&b""[..], "älice".as_bytes(), "a".repeat(257).as_bytes()] {
        let r = h
            .client
            .get(h.url("/api/x"))
            .header(
                HEADER,
                reqwest::header::HeaderValue::from_bytes(bad).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    let r = h
        .client
        .get(h.url("/api/x"))
        .header(HEADER, "a")
        .header(HEADER, "b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "two subjects in one request");
    let r = get_as(&h, "nobody@example.com", "/api/x").await;
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:bearerd:problem:subject-not-connected");
    assert_eq!(p["requires_reauth"], true);
    assert_eq!(p["subject"], "nobody@example.com");
    assert_eq!(
        p["connect"],
        "/credentials/api/subjects/nobody%40example.com/connect"
    );
    assert_eq!(h.upstream.state.requests(), 0, "nothing was forwarded");
    // A sidecar with no connected subject is ready.
    assert_eq!(h.admin_get("/readyz").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subjects_failure_and_401_storm_stay_with_that_subject() {
    let h = start(
        Duration::from_secs(2),
        "min_refresh_interval = \"5s\"\n",
        "",
    )
    .await;
    for s in ["alice", "bob", "carol"] {
        let rt = h.tokens.state.seed_refresh_token_for(s);
        assert_eq!(hand_over(&h, s, &rt).await.status(), 200);
    }
    // Alice disconnects the app at the provider: her next scheduled refresh is
    // invalid_grant, and her token runs out.
    h.tokens.state.revoke_subject("alice");
    let deadline = Instant::now() + Duration::from_secs(10);
    let alice = loop {
        let alice = subject_status(&h, "alice").await;
        if alice["state"] == "failed" && alice["expires_in_s"].as_f64().unwrap_or(0.0) <= 0.0 {
            break alice;
        }
        assert!(Instant::now() < deadline, "alice never failed: {alice}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(alice["has_refresh_token"], false);
    let r = get_as(&h, "alice", "/api/x").await;
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["requires_reauth"], true);
    for s in ["bob", "carol"] {
        let r = get_as(&h, s, "/api/x").await;
        assert_eq!(r.status(), 200);
        assert_eq!(token_subject(r).await.as_deref(), Some(s));
        assert_eq!(subject_status(&h, s).await["state"], "valid");
    }
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["subjects"]["failed"], 1);
    assert_eq!(status["credentials"]["api"]["subjects"]["valid"], 2);

    // Long-lived tokens from now on, so that no scheduled refresh runs during the storm.
    h.tokens.state.set_lifetime(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in ["bob", "carol"] {
        while subject_status(&h, s).await["expires_in_s"]
            .as_f64()
            .unwrap_or(0.0)
            < 30.0
        {
            assert!(
                Instant::now() < deadline,
                "{s} never took a long-lived token"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let carol_refreshes = subject_status(&h, "carol").await["refreshes"].clone();
    // Bob's upstream rejects every token of his: one refresh is tried, then his 401s are
    // passed through, rate-limited; Carol's requests never notice.
    h.upstream.state.reject_subject(Some("bob"));
    let before = h.tokens.state.requests();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(get_as(&h, "bob", "/api/x").await.status().as_u16());
        let r = get_as(&h, "carol", "/api/x").await;
        assert_eq!(r.status(), 200);
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    let token_requests = h.tokens.state.requests() - before;
    assert!(
        (1..=2).contains(&token_requests),
        "{token_requests} token requests during Bob's 401 storm"
    );
    let m = h.metrics().await;
    assert!(
        support::metric(
            &m,
            r#"bearerd_upstream_401_total{outcome="rate_limited",upstream="api"}"#
        )
        .unwrap_or(0.0)
            >= 15.0,
        "{m}"
    );
    assert_eq!(
        subject_status(&h, "carol").await["refreshes"],
        carol_refreshes
    );
}

/// Follows the provider's authorization URL as the user's browser would, and returns the
/// query of the redirect back to the app.
async fn consent(h: &Harness, user: &str, authorize_url: &str) -> String {
    h.tokens.state.set_authorizing_user(Some(user));
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = browser.get(authorize_url).send().await.unwrap();
    assert_eq!(r.status(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (target, query) = location.split_once('?').unwrap();
    assert_eq!(target, REDIRECT, "the provider redirects to the app");
    query.to_string()
}

async fn start_connect(h: &Harness, subject: &str) -> String {
    let r = h.admin_post(&subject_path(subject, "/connect")).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["expires_in_s"].as_u64().unwrap() > 0);
    body["authorize_url"].as_str().unwrap().to_string()
}

/// The app relays the provider's redirect to bearerd, naming the user of its own session
/// (`subject=`, which the callback requires: issue 20, hole 2).
async fn relay(h: &Harness, subject: &str, query: &str) -> reqwest::Response {
    h.admin_get(&format!(
        "/connect/callback?{query}&subject={}",
        seg(subject)
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connect_flow_stores_the_subjects_tokens_once_and_only_for_that_subject() {
    let h = start(Duration::from_secs(60), "connect_lifetime = \"2s\"\n", "").await;
    let url = start_connect(&h, "alice@example.com").await;
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let query = consent(&h, "alice@example.com", &url).await;
    let r = relay(&h, "alice@example.com", &query).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = get_as(&h, "alice@example.com", "/api/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(token_subject(r).await.as_deref(), Some("alice@example.com"));
    let token_requests = h.tokens.state.requests();

    // The same callback again (a replay) is refused, and changes nothing.
    let r = relay(&h, "alice@example.com", &query).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown"));
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "no code was redeemed"
    );

    // A flow started for Bob, relayed by the app for Carol (Mallory sent Carol the link
    // of a flow he started for himself): 403, the state used up, nothing stored.
    let url = start_connect(&h, "bob").await;
    let query = consent(&h, "bob", &url).await;
    let r = relay(&h, "carol", &query).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("another subject"));
    let r = relay(&h, "bob", &query).await;
    assert_eq!(r.status(), 400, "the refused state was used up");
    for s in ["bob", "carol"] {
        assert_eq!(get_as(&h, s, "/api/x").await.status(), 403, "{s}");
    }
    // A callback that names no subject: 403, the state used up, nothing stored.
    let url = start_connect(&h, "bob").await;
    let query = consent(&h, "bob", &url).await;
    let r = h.admin_get(&format!("/connect/callback?{query}")).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("names no subject"));
    assert_eq!(relay(&h, "bob", &query).await.status(), 400);
    assert_eq!(get_as(&h, "bob", "/api/x").await.status(), 403);
    // A forged state, and an expired one.
    let r = relay(&h, "dave", "code=x&state=forged").await;
    assert_eq!(r.status(), 400);
    let url = start_connect(&h, "dave").await;
    let query = consent(&h, "dave", &url).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = relay(&h, "dave", &query).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("expired"));
    assert_eq!(get_as(&h, "dave", "/api/x").await.status(), 403);
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "no code was redeemed"
    );
    // The user declined at the provider.
    let url = start_connect(&h, "erin").await;
    let state = url::Url::parse(&url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let r = relay(&h, "erin", &format!("error=access_denied&state={state}")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(get_as(&h, "erin", "/api/x").await.status(), 403);
}

/// Issue 20, hole 2 (RFC 9207, a MUST of MCP 2026-07-28): when the provider's metadata
/// says authorization responses carry `iss`, a response naming another issuer (a mix-up)
/// or none is refused with 403 before its code is redeemed; the state is used up and
/// nothing is stored. The provider's own issuer is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_response_from_another_issuer_is_refused() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let issuer = tokens.issuer();
    tokens.state.set_response_issuer(Some(&issuer));
    let h = start_with(tokens, upstream, "", "").await;
    let url = start_connect(&h, "alice").await;
    let query = consent(&h, "alice", &url).await;
    assert!(query.contains("iss="), "{query}");
    assert_eq!(relay(&h, "alice", &query).await.status(), 200);
    let token_requests = h.tokens.state.requests();

    h.tokens
        .state
        .set_response_issuer(Some("https://evil.example"));
    let url = start_connect(&h, "bob").await;
    let query = consent(&h, "bob", &url).await;
    let r = relay(&h, "bob", &query).await;
    assert_eq!(r.status(), 403);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("another authorization server"));
    assert_eq!(relay(&h, "bob", &query).await.status(), 400, "used up");

    h.tokens.state.set_response_issuer(Some(&issuer));
    let url = start_connect(&h, "carol").await;
    let query = consent(&h, "carol", &url).await;
    let stripped = query
        .split('&')
        .filter(|p| !p.starts_with("iss="))
        .collect::<Vec<_>>()
        .join("&");
    let r = relay(&h, "carol", &stripped).await;
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("no `iss`"));
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "no code was redeemed"
    );
    for s in ["bob", "carol"] {
        assert_eq!(get_as(&h, s, "/api/x").await.status(), 403, "{s}");
    }
    assert_eq!(get_as(&h, "alice", "/api/x").await.status(), 200);

    // A `subject=` or `iss=` smuggled into the provider's redirect would come first in
    // the relayed query: a repeated parameter is refused (RFC 6749 §3.1).
    let url = start_connect(&h, "mallory").await;
    let query = consent(&h, "mallory", &url).await;
    let r = relay(&h, "dave", &format!("subject=mallory&{query}")).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("repeats `subject`"));
    let r = relay(&h, "mallory", &format!("iss={}&{query}", seg(&issuer))).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("repeats `iss`"));
    assert_eq!(get_as(&h, "dave", "/api/x").await.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handed_over_refresh_token_works_and_a_spent_one_is_refused() {
    let h = start(Duration::from_secs(60), "", "").await;
    let rt = h.tokens.state.seed_refresh_token_for("alice");
    let r = hand_over(&h, "alice", &rt).await;
    assert_eq!(r.status(), 200);
    let r = get_as(&h, "alice", "/api/x").await;
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    // A refresh token the provider already rotated away (Zed's, used once) is spent.
    let spent = h.tokens.state.seed_refresh_token_for("zed");
    assert_eq!(hand_over(&h, "zed", &spent).await.status(), 200);
    let r = hand_over(&h, "bob", &spent).await;
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["status"]["state"], "failed", "{body}");
    assert_eq!(get_as(&h, "bob", "/api/x").await.status(), 403);
    // Logout: revoked at the provider, a tombstone kept.
    let r = h.admin_post(&subject_path("carol", "/logout")).await;
    assert_eq!(r.status(), 404, "an unknown subject");
    let revocations = h.tokens.state.revocations();
    let r = h.admin_post(&subject_path("alice", "/logout")).await;
    assert_eq!(r.status(), 200);
    assert!(h.tokens.state.revocations() > revocations);
    let alice = subject_status(&h, "alice").await;
    assert_eq!(alice["state"], "logged_out");
    // The tombstone says when, and what the provider answered.
    assert!(
        alice["logout"]["at"].as_str().unwrap().starts_with("20"),
        "{alice}"
    );
    let answers = alice["logout"]["revocation"].to_string();
    assert!(answers.contains("refresh_token: revoked"), "{alice}");
    assert_eq!(get_as(&h, "alice", "/api/x").await.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_subjects_leave_memory_and_come_back_from_the_store_after_a_restart() {
    let (dir, store) = file_store("subjects");
    let extra = "subject_idle = \"1s\"\nmax_subjects_in_memory = 5\n";
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let mut h = start_with(tokens, upstream, extra, &store).await;
    let subjects: Vec<String> = (0..8).map(|i| format!("user-{i}")).collect();
    for s in &subjects {
        let rt = h.tokens.state.seed_refresh_token_for(s);
        assert_eq!(hand_over(&h, s, &rt).await.status(), 200);
        let registry = h.sidecar().subjects("api").unwrap();
        assert!(registry.in_memory() <= 5, "{}", registry.in_memory());
    }
    // Idle subjects leave memory.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.sidecar().subjects("api").unwrap().in_memory() > 0 {
        assert!(Instant::now() < deadline, "subjects never left memory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counted where they rest: /status and the gauge still see eight valid subjects.
    assert_subject_counts(&h, 8, 0).await;
    // Listed a page at a time, from the store.
    let listed = list_subjects(&h.client, h.sidecar().admin_addr, 3).await;
    for s in &listed {
        assert_eq!(s["state"], "valid", "{s}");
        assert_eq!(s["in_memory"], false);
    }
    let mut names: Vec<&str> = listed
        .iter()
        .map(|s| s["subject"].as_str().unwrap())
        .collect();
    // Listed in the order of their keyed hashes, as the Redis store lists them.
    names.sort();
    assert_eq!(names, subjects);
    // The store's directory shows no subject: row keys and journal names are keyed hashes.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let text = format!("{} {}", path.display(), String::from_utf8_lossy(&bytes));
        assert!(
            !text.contains("user-"),
            "a subject in clear in {}",
            path.display()
        );
    }
    // Served again from the store, without a token request.
    let token_requests = h.tokens.state.requests();
    let r = get_as(&h, "user-3", "/api/x").await;
    assert_eq!(token_subject(r).await.as_deref(), Some("user-3"));
    assert_eq!(h.tokens.state.requests(), token_requests);
    // And after a restart.
    let (tokens, upstream) = (
        std::mem::replace(
            &mut h.tokens,
            support::TokenServer::start(Duration::from_secs(1))
                .await
                .unwrap(),
        ),
        std::mem::replace(
            &mut h.upstream,
            support::Upstream::start(Arc::clone(&h.tokens.state))
                .await
                .unwrap(),
        ),
    );
    h.stop().await;
    let h = start_with(tokens, upstream, extra, &store).await;
    // The census at start counts them before any request brings one back.
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.status().await["credentials"]["api"]["subjects_at_rest"] != 8 {
        assert!(
            Instant::now() < deadline,
            "the census never counted the stored subjects"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_subject_counts(&h, 8, 0).await;
    for s in ["user-0", "user-7"] {
        let r = get_as(&h, s, "/api/x").await;
        assert_eq!(token_subject(r).await.as_deref(), Some(s));
    }
    assert_eq!(h.tokens.state.requests(), token_requests);
}

/// `/status` and `bearerd_subjects` count `valid` valid subjects, `in_memory` of them in
/// memory, and none in another state.
async fn assert_subject_counts(h: &Harness, valid: u64, in_memory: u64) {
    let status = h.status().await;
    let api = &status["credentials"]["api"];
    assert_eq!(api["subjects"]["valid"], valid, "{api}");
    assert_eq!(api["subjects_in_memory"], in_memory, "{api}");
    let others: u64 = api["subjects"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(state, _)| *state != "valid")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(others, 0, "{api}");
    let metrics = h.admin_get("/metrics").await.text().await.unwrap();
    let line = format!("bearerd_subjects{{credential=\"api\",state=\"valid\"}} {valid}");
    assert!(
        metrics.lines().any(|l| l == line),
        "no {line:?} in the metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_endpoints_need_the_admin_token_and_the_callback_does_not() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let opts = Options {
        grant: "refresh_token",
        discovery: support::Discovery::Issuer,
        server_extra: "admin_token = \"let-me-in\"".into(),
        credential_extra: format!("subject_header = \"{HEADER}\"\nredirect_uri = \"{REDIRECT}\"\n"),
        ..Options::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let rt = h.tokens.state.seed_refresh_token_for("alice");
    assert_eq!(hand_over(&h, "alice", &rt).await.status(), 401);
    assert_eq!(h.admin_get("/credentials/api/subjects").await.status(), 401);
    assert_eq!(
        h.admin_post(&subject_path("alice", "/connect"))
            .await
            .status(),
        401
    );
    let r = h
        .client
        .post(h.admin(&subject_path("alice", "/connect")))
        .bearer_auth("let-me-in")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = r.json::<serde_json::Value>().await.unwrap()["authorize_url"]
        .as_str()
        .unwrap()
        .to_string();
    let query = consent(&h, "alice", &url).await;
    assert_eq!(relay(&h, "alice", &query).await.status(), 200);
    assert_eq!(get_as(&h, "alice", "/api/x").await.status(), 200);
}

/// Runs the CLI against the sidecar's admin API.
async fn cli(h: &Harness, args: &[&str]) -> (bool, String) {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    all.extend([
        "--admin".to_string(),
        format!("http://{}", h.sidecar().admin_addr),
    ]);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_bearerd"))
            .args(&all)
            .env_remove("BEARERD_CONFIG")
            .env_remove("BEARERD_ADMIN_TOKEN")
            .current_dir(std::env::temp_dir())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_refreshes_and_logs_out_subjects() {
    let h = start(Duration::from_secs(60), "", "").await;
    for s in ["alice@example.com", "bob@example.com"] {
        let rt = h.tokens.state.seed_refresh_token_for(s);
        assert_eq!(hand_over(&h, s, &rt).await.status(), 200);
    }
    let (ok, out) = cli(&h, &["status"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("per-subject") && out.contains("2 valid"),
        "{out}"
    );
    assert!(
        !out.contains("alice"),
        "the overview names no subject: {out}"
    );
    let (ok, out) = cli(&h, &["status", "api", "--subjects"]).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("alice@example.com") && out.contains("bob@example.com"),
        "{out}"
    );
    assert!(out.contains("2 subjects"), "{out}");
    let (ok, out) = cli(&h, &["status", "api", "--subject", "alice@example.com"]).await;
    assert!(ok && out.contains("valid"), "{out}");
    let (ok, out) = cli(&h, &["refresh", "api", "--subject", "alice@example.com"]).await;
    assert!(ok && out.contains("refreshed"), "{out}");
    assert_eq!(
        subject_status(&h, "alice@example.com").await["refreshes"],
        2
    );
    let (ok, out) = cli(&h, &["logout", "api", "--subject", "bob@example.com"]).await;
    assert!(ok, "{out}");
    assert_eq!(
        subject_status(&h, "bob@example.com").await["state"],
        "logged_out"
    );
    let (ok, out) = cli(&h, &["status", "api", "--subject", "nobody"]).await;
    assert!(!ok && out.contains("404"), "{out}");
    let (ok, out) = cli(&h, &["refresh", "api"]).await;
    assert!(!ok && out.contains("per subject"), "{out}");
}

/// A GET through the on-behalf-of credential with a user's token in `x-user-token`, as
/// `Bearer …` or bare.
async fn with_user_token(h: &Harness, token: String, bearer: bool) -> reqwest::Response {
    let value = if bearer {
        format!("Bearer {token}")
    } else {
        token
    };
    let url = h.url("/api/x");
    h.client
        .get(url)
        .header("x-user-token", value)
        .send()
        .await
        .unwrap()
}

/// The identity provider of an app's users, whose tokens the test token server accepts as
/// token-exchange subject (and actor) tokens.
struct UserIdp(support::keys::TestKey);

impl UserIdp {
    fn trusted_by(tokens: &support::TokenServer) -> UserIdp {
        let key = support::keys::TestKey::generate(support::keys::KeyKind::Rsa);
        let mut signer = key.signer("https://idp.users", None, "sts.test");
        signer.single_use = false;
        tokens.state.trust_grant_assertions(vec![signer]);
        UserIdp(key)
    }

    /// A token for `sub` that expires `lifetime` seconds from now (in the past if negative).
    fn mint(&self, sub: &str, jti: &str, lifetime: i64) -> String {
        let now = support::keys::now();
        self.0.mint(&json!({
            "iss": "https://idp.users", "sub": sub, "aud": "sts.test",
            "iat": now, "exp": now as i64 + lifetime, "jti": jti,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_behalf_of_exchanges_each_users_token_once_and_never_past_its_expiry() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(300)).await;
    let users = UserIdp::trusted_by(&tokens);
    let user_token = |sub: &str, jti: &str, lifetime: i64| users.mint(sub, jti, lifetime);
    let opts = Options {
        grant: "token_exchange",
        lifetime: Duration::from_secs(300),
        credential_extra: "subject_token = { header = \"x-user-token\" }\naudience = \"crm\"\n"
            .into(),
        ..Options::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let as_user = |token: String| with_user_token(&h, token, true);
    assert_eq!(h.get("/api/x").await.status(), 400, "no user token");
    let alice = user_token("alice", "a1", 600);
    let r = as_user(alice.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    let exchanges = h.tokens.state.requests();
    assert_eq!(exchanges, 1);
    for _ in 0..3 {
        let r = as_user(alice.clone()).await;
        assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    }
    assert_eq!(h.tokens.state.requests(), 1, "cached per user token");
    let r = as_user(user_token("bob", "b1", 600)).await;
    assert_eq!(token_subject(r).await.as_deref(), Some("bob"));
    // A new token of the same user is a new exchange.
    let r = as_user(user_token("alice", "a2", 600)).await;
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    assert_eq!(h.tokens.state.requests(), 3);
    // The exchanged token never outlives the user's token.
    let short = user_token("alice", "a3", 3);
    assert_eq!(as_user(short.clone()).await.status(), 200);
    let key = SubjectKey::of_token(&secrecy::SecretString::from(short));
    let status = subject_status(&h, key.as_str()).await;
    let left = status["expires_in_s"].as_f64().unwrap();
    assert!(left <= 3.0, "bounded by the user's token: {status}");
    assert!(!status.to_string().contains("alice"), "{status}");
    // An expired user token is the app's to replace: 403, not a wait.
    let r = as_user(user_token("carol", "c1", -10)).await;
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["requires_reauth"], true);
    assert!(p.get("connect").is_none(), "{p}");
    assert!(h
        .upstream
        .state
        .seen()
        .iter()
        .all(|r| !r.headers.contains_key("x-user-token")));
    let form = h.tokens.state.last_form();
    assert!(
        form.iter().any(|(k, v)| k == "audience" && v == "crm"),
        "{form:?}"
    );
    assert_eq!(h.status().await["credentials"]["api"]["on_behalf_of"], true);
    let rt = "irrelevant";
    assert_eq!(hand_over(&h, "someone", rt).await.status(), 400);
}

/// On behalf of, with the agent's own token as `actor_token` (RFC 8693 delegation: the
/// user is the subject, the agent the actor): every user's exchange sends the actor token
/// as its file holds it at that moment, so the platform's rotation of it is picked up, and
/// a user's exchanged token never outlives the actor token either. An exchange refused while
/// the actor token is bad is tried again (rate-limited) once it is fixed, so the users who
/// were active then are not refused for as long as their own tokens live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_behalf_of_with_an_actor_token_sends_the_agents_current_token() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(300)).await;
    let users = UserIdp::trusted_by(&tokens);
    let mint = |sub: &str, jti: &str, lifetime: i64| users.mint(sub, jti, lifetime);
    let dir = std::env::temp_dir().join(format!("bearerd-actor-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let actor_file = dir.join("agent.jwt");
    let first_actor = mint("agent", "agent-1", 600);
    std::fs::write(&actor_file, &first_actor).unwrap();
    let opts = Options {
        grant: "token_exchange",
        lifetime: Duration::from_secs(300),
        credential_extra: format!(
            "subject_token = {{ header = \"x-user-token\" }}\nactor_token = {{ file = {:?} }}\nmin_refresh_interval = \"1s\"\n",
            actor_file.display().to_string()
        ),
        ..Options::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let as_user = |token: String| with_user_token(&h, token, false);
    let sent = |h: &Harness| {
        let form = h.tokens.state.last_form();
        let get = |k: &str| {
            form.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        (
            get("subject_token"),
            get("actor_token"),
            get("actor_token_type"),
        )
    };

    let alice = mint("alice", "a1", 600);
    let r = as_user(alice.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    assert_eq!(
        sent(&h),
        (
            Some(alice.clone()),
            Some(first_actor.clone()),
            Some("urn:ietf:params:oauth:token-type:jwt".to_string())
        )
    );

    // The platform rotates the agent's token; the next user's exchange sends the new one,
    // and its 30-second life bounds that user's exchanged token.
    let second_actor = mint("agent", "agent-2", 30);
    std::fs::write(&actor_file, &second_actor).unwrap();
    let bob = mint("bob", "b1", 600);
    let r = as_user(bob.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(token_subject(r).await.as_deref(), Some("bob"));
    assert_eq!(sent(&h).1, Some(second_actor));
    assert_eq!(h.tokens.state.requests(), 2);
    let key = SubjectKey::of_token(&secrecy::SecretString::from(bob));
    let status = subject_status(&h, key.as_str()).await;
    let left = status["expires_in_s"].as_f64().unwrap();
    assert!(left <= 30.0, "bounded by the actor token: {status}");

    // The provider refuses the agent for a while (invalid_grant): carol, who arrives then,
    // is refused with requires_reauth, as the answer reads.
    h.tokens
        .state
        .set_fail(FailMode::OAuthError("invalid_grant".into()));
    let carol = mint("carol", "c1", 600);
    let r = as_user(carol.clone()).await;
    assert_eq!(r.status(), 403);
    let before = h.tokens.state.requests();
    // Fixed: carol's same token gets through again, after a rate-limited new exchange.
    h.tokens.state.set_fail(FailMode::None);
    let fixed = Instant::now();
    loop {
        let r = as_user(carol.clone()).await;
        if r.status() == 200 {
            assert_eq!(token_subject(r).await.as_deref(), Some("carol"));
            break;
        }
        assert_eq!(r.status(), 403);
        assert!(
            fixed.elapsed() < Duration::from_secs(15),
            "carol is still refused after the actor was fixed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let retries = h.tokens.state.requests() - before;
    assert!(
        (1..=3).contains(&retries),
        "{retries} exchanges for carol's retry: one per min_refresh_interval at most"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_back_after_its_token_expired_is_refreshed_on_its_first_request() {
    let h = start(Duration::from_secs(2), "subject_idle = \"1s\"\n", "").await;
    let rt = h.tokens.state.seed_refresh_token_for("alice");
    assert_eq!(hand_over(&h, "alice", &rt).await.status(), 200);
    let registry = h.sidecar().subjects("api").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.in_memory() > 0 {
        assert!(Instant::now() < deadline, "alice never left memory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Out of memory, nothing refreshes her token: it runs out.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(subject_status(&h, "alice").await["state"], "expired");
    let before = h.tokens.state.requests();
    let r = get_as(&h, "alice", "/api/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    assert_eq!(
        h.tokens.state.requests(),
        before + 1,
        "one refresh, on the request"
    );
}

/// `subjects` subjects on 3-second tokens and the file store, every rotation through the
/// rotation helper, for `run_for`: the rotations per second it sustains and how many
/// subjects have no usable token at the end; never a refresh token sent twice.
async fn rotations_on_the_file_store(subjects: usize, run_for: Duration) -> (f64, u64) {
    let (_, store) = file_store("rot");
    let h = start(Duration::from_secs(3), "", &store).await;
    let names: Vec<String> = (0..subjects).map(|i| format!("user-{i:05}")).collect();
    let h = Arc::new(h);
    // Handed over 16 at a time, as an app migrating its token table would.
    let mut batch = tokio::task::JoinSet::new();
    for chunk in names.chunks(subjects.div_ceil(16)) {
        let (h, chunk) = (Arc::clone(&h), chunk.to_vec());
        batch.spawn(async move {
            for s in chunk {
                let rt = h.tokens.state.seed_refresh_token_for(&s);
                // A refused hand-over shows in the states counted at the end.
                let _ = hand_over(&h, &s, &rt).await;
            }
        });
    }
    while let Some(r) = batch.join_next().await {
        r.unwrap();
    }
    let (rotations, started) = (h.tokens.state.rotations(), Instant::now());
    tokio::time::sleep(run_for).await;
    let per_second =
        (h.tokens.state.rotations() - rotations) as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        h.tokens.state.reuse_detected(),
        0,
        "a refresh token was sent twice"
    );
    let counts = h.status().await["credentials"]["api"]["subjects"].clone();
    // Refreshing and retrying subjects still hold a usable token; these do not.
    let not_valid = ["expired", "failed", "logged_out"]
        .iter()
        .map(|k| counts[*k].as_u64().unwrap_or(0))
        .sum::<u64>();
    println!("{subjects} subjects after {run_for:?}: {counts}");
    (per_second, not_valid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_subjects_rotate_through_one_helper_on_the_file_store() {
    let (per_second, not_valid) = rotations_on_the_file_store(100, Duration::from_secs(6)).await;
    assert_eq!(not_valid, 0, "every subject holds a usable token");
    // 100 subjects refreshing at 80 % of 3 s: about 40 a second, all of them rotating.
    assert!(per_second > 10.0, "{per_second:.0} rotations/s");
}

/// The README's figure: `cargo test --release --test subjects -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_rotations_per_second_with_1000_subjects_on_the_file_store() {
    let (per_second, not_valid) = rotations_on_the_file_store(1000, Duration::from_secs(15)).await;
    println!("1000 subjects, 3 s tokens, file store: {per_second:.0} rotations/s, {not_valid} without a usable token");
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// The README's memory and load-time figures: a file store holding 100,000 subjects, a
/// sidecar started on it, then 10,000 of them brought into memory one by one.
/// `cargo test --release --test subjects measure_memory -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn measure_memory_and_load_time_with_100000_stored_subjects() {
    let dir = std::env::temp_dir().join(format!("bearerd-mem-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = bearerd::store::generate_key();
    let path = dir.join("tokens.store");
    let (tokens, upstream) = support::start_peers(Duration::from_secs(3600)).await;
    let stored = 100_000;
    {
        let fs = Arc::new(
            bearerd::store::FileStore::open(&path, &bearerd::store::parse_key(&key).unwrap())
                .unwrap(),
        );
        let now = std::time::SystemTime::now();
        let records: Vec<(String, String, String)> = (0..stored)
            .map(|i| {
                let s = format!("user-{i:06}@example.com");
                let (at, rt) = tokens.state.tokens_for(&s);
                (s, at, rt)
            })
            .collect();
        let records = Arc::new(records);
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let (fs, records) = (Arc::clone(&fs), Arc::clone(&records));
                std::thread::spawn(move || {
                    for (s, at, rt) in records.iter().skip(t).step_by(32) {
                        let token = bearerd::store::StoredToken {
                            access_token: secrecy::SecretString::from(at.clone()),
                            issued_at: now,
                            expires_at: Some(now + Duration::from_secs(3600)),
                            scopes: vec!["demo.read".into()],
                            refresh_token: Some(secrecy::SecretString::from(rt.clone())),
                            logged_out: false,
                            spent_seed: None,
                            logout: None,
                            bound_to: None,
                            registration: None,
                            dpop: None,
                        };
                        fs.save(&format!("api\n{s}"), Some(&token)).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len() as f64 / (1024.0 * 1024.0);
    let before = rss_mib();
    let store = format!(
        "backend = \"file\"\npath = {:?}\nkey = \"{key}\"",
        path.display().to_string()
    );
    let h = start_with(tokens, upstream, "max_subjects_in_memory = 20000\n", &store).await;
    let registry = h.sidecar().subjects("api").unwrap();
    // The census at start counts every stored subject (and keeps a hash of each).
    while registry.at_rest() < stored {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let started = rss_mib();
    let t = Instant::now();
    assert_eq!(registry.take_census().await.unwrap(), stored);
    let census = t.elapsed();
    let in_memory = 10_000;
    let mut took = Duration::ZERO;
    for i in (0..stored).step_by(stored / in_memory) {
        let s = SubjectKey::parse(format!("user-{i:06}@example.com").as_bytes()).unwrap();
        let t = Instant::now();
        let slot = registry.slot_for_request(&s).await.unwrap();
        took += t.elapsed();
        assert!(slot.current().is_some() || slot.token_for_request().await.is_ok());
    }
    assert_eq!(registry.in_memory(), in_memory);
    assert_eq!(registry.at_rest(), stored - in_memory);
    // Every subject's refresher has restored its token by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_mib();
    let r = get_as(&h, "user-000010@example.com", "/api/x").await;
    assert_eq!(
        token_subject(r).await.as_deref(),
        Some("user-000010@example.com")
    );
    println!(
        "store: {stored} subjects, {size:.0} MiB on disk; RSS {before:.0} MiB before the sidecar, \
         {started:.0} MiB started on the store (+{:.0}), {loaded:.0} MiB with {in_memory} in memory \
         (+{:.0}, {:.1} KiB each); bringing a subject back from the store: {:.0} µs on average; \
         a census of the {stored} stored subjects: {:.0} ms",
        started - before,
        loaded - started,
        (loaded - started) * 1024.0 / in_memory as f64,
        took.as_secs_f64() * 1e6 / in_memory as f64,
        census.as_secs_f64() * 1e3
    );
}

/// One Redis and two replicas of the per-subject sidecar on it: the harness's (A, with the
/// provider and upstream) and B, the same config on other ports.
async fn replicas_on_redis(
    lifetime: Duration,
) -> (
    support::redis_server::RedisServer,
    Harness,
    bearerd::SidecarHandle,
) {
    let redis = support::redis_server::RedisServer::start();
    let store = format!(
        "backend = \"redis\"\nurl = \"{}\"\nkey = \"{}\"",
        redis.url(),
        bearerd::store::generate_key()
    );
    let a = start(lifetime, "", &store).await;
    let (proxy, admin) = support::free_addr_pair();
    let text = a
        .config_text
        .replace(&a.sidecar().proxy_addr.to_string(), &proxy.to_string())
        .replace(&a.sidecar().admin_addr.to_string(), &admin.to_string());
    let config = support::sidecar_config(&text);
    let b = tokio::task::spawn_blocking(move || bearerd::Sidecar::start(config))
        .await
        .unwrap()
        .unwrap();
    (redis, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_redis_share_each_subjects_tokens_and_rotate_each_once() {
    let (redis, a, b) = replicas_on_redis(Duration::from_secs(3)).await;
    let via_b = |subject: &str| {
        a.client
            .get(format!("http://{}/api/x", b.proxy_addr))
            .header(HEADER, subject)
            .send()
    };
    // Alice hands over on A; B lists her from Redis's index before it has seen her, and
    // serves her without a token request of its own.
    let rt = a.tokens.state.seed_refresh_token_for("alice");
    assert_eq!(hand_over(&a, "alice", &rt).await.status(), 200);
    let on_b = list_subjects(&a.client, b.admin_addr, 10).await;
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert_eq!(on_b[0]["subject"], "alice");
    assert_eq!(on_b[0]["in_memory"], false);
    assert_eq!(on_b[0]["state"], "valid");
    let before = a.tokens.state.requests();
    let r = via_b("alice").await.unwrap();
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    assert_eq!(
        a.tokens.state.requests(),
        before,
        "B adopted Alice's set from Redis"
    );
    // Bob hands over on B.
    let rt = a.tokens.state.seed_refresh_token_for("bob");
    let r = a
        .client
        .post(format!(
            "http://{}{}",
            b.admin_addr,
            subject_path("bob", "/login")
        ))
        .json(&json!({ "refresh_token": rt }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Both users through both replicas across rotations: each subject rotates once per
    // window for the pair, never sends a refresh token twice, and every answer is 2xx.
    let (rotations, run_for) = (a.tokens.state.rotations(), Duration::from_secs(8));
    let started = Instant::now();
    let mut bad = Vec::new();
    while started.elapsed() < run_for {
        for s in ["alice", "bob"] {
            for r in [get_as(&a, s, "/api/x").await, via_b(s).await.unwrap()] {
                if !r.status().is_success() {
                    bad.push(r.status().as_u16());
                } else if token_subject(r).await.as_deref() != Some(s) {
                    bad.push(0);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    support::assert_all_2xx(&bad);
    assert_eq!(
        a.tokens.state.reuse_detected(),
        0,
        "a refresh token was sent twice"
    );
    let rotated = a.tokens.state.rotations() - rotations;
    // 2 subjects, 8 s, a refresh at 80 % of 3 s (with jitter): about 7; both replicas
    // refreshing on their own would be twice that.
    assert!(
        (4..=10).contains(&rotated),
        "{rotated} rotations for 2 subjects in {run_for:?}"
    );
    // Both replicas list every user, a page at a time; Redis holds no e-mail address in clear.
    let more: Vec<String> = (0..5).map(|i| format!("carol-{i}@example.com")).collect();
    for s in &more {
        let rt = a.tokens.state.seed_refresh_token_for(s);
        assert_eq!(hand_over(&a, s, &rt).await.status(), 200);
    }
    let mut everyone: Vec<String> = ["alice", "bob"]
        .into_iter()
        .map(String::from)
        .chain(more)
        .collect();
    everyone.sort();
    for admin in [a.sidecar().admin_addr, b.admin_addr] {
        let listed = sorted_names(&a.client, admin, 2).await;
        assert_eq!(listed, everyone, "listed on {admin}");
    }
    // A forged index entry is dropped and the page made up from further on; an index lost
    // (records written before it existed) comes back as subjects are loaded.
    let index = redis
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.contains(":subjects:"))
        .expect("the subject index");
    let _: i64 = redis.query(
        redis::cmd("ZADD")
            .arg(&index)
            .arg(0)
            .arg(format!("{}:AAAA", "0".repeat(32))),
    );
    let listed = sorted_names(&a.client, b.admin_addr, 2).await;
    assert_eq!(listed, everyone, "with a forged entry in the index");
    let members: Vec<String> = redis.query(redis::cmd("ZRANGE").arg(&index).arg(0).arg(-1));
    assert_eq!(members.len(), everyone.len(), "the forged entry is dropped");
    let _: i64 = redis.query(redis::cmd("DEL").arg(&index));
    // B holds carol-0 only in Redis; showing her loads her record.
    let carol = &everyone[2];
    assert!(carol.starts_with("carol-0"));
    let r = a
        .client
        .get(format!(
            "http://{}{}",
            b.admin_addr,
            subject_path(carol, "")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let listed: Vec<String> = list_subjects(&a.client, b.admin_addr, 2)
        .await
        .iter()
        .filter(|s| s["in_memory"] == false)
        .map(|s| s["subject"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, std::slice::from_ref(carol), "re-indexed on load");
    // A connect flow started on A finishes on B (the browser came back to another replica),
    // and its state is then used up on A too.
    let url = start_connect(&a, "dave").await;
    let query = consent(&a, "dave", &url).await;
    let r = a
        .client
        .get(format!(
            "http://{}/connect/callback?{query}&subject=dave",
            b.admin_addr
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for r in [
        get_as(&a, "dave", "/api/x").await,
        via_b("dave").await.unwrap(),
    ] {
        assert_eq!(token_subject(r).await.as_deref(), Some("dave"));
    }
    let token_requests = a.tokens.state.requests();
    let r = relay(&a, "dave", &query).await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown"));
    assert_eq!(
        a.tokens.state.requests(),
        token_requests,
        "no code was redeemed twice"
    );
    // Without Redis's answer no flow starts and none finishes: a state is never used on
    // two replicas.
    let url = start_connect(&a, "erin").await;
    let query = consent(&a, "erin", &url).await;
    redis.freeze();
    let r = a.admin_post(&subject_path("frank", "/connect")).await;
    assert_eq!(r.status(), 503);
    let r = relay(&a, "erin", &query).await;
    assert_eq!(r.status(), 503);
    redis.thaw();
    // (Only the addresses: "@" never occurs in base64 by chance, where "bob" may.)
    for (key, value) in redis.dump() {
        for s in everyone.iter().filter(|s| s.contains('@')) {
            assert!(
                !key.contains(s.as_str()) && !value.contains(s.as_str()),
                "{s} in clear in Redis: {key}"
            );
        }
    }
    tokio::task::spawn_blocking(move || b.shutdown())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_names_subjects_by_a_keyed_hash_and_moves_records_from_unkeyed_names() {
    use bearerd::store::{RedisStore, SaveOutcome, StoredToken, TokenStore};
    use secrecy::ExposeSecret;
    use sha2::Digest;
    let redis = support::redis_server::RedisServer::start();
    let url = secrecy::SecretString::from(redis.url());
    let credentials = [("api", "binding".to_string())];
    let key = bearerd::store::parse_key(&bearerd::store::generate_key()).unwrap();
    let store = |key: &[u8; 32], prefix: &str| {
        RedisStore::new(
            bearerd::store::RedisTarget::Url(&url),
            &Default::default(),
            key,
            prefix,
            &credentials,
            None,
        )
        .unwrap()
    };
    let subject = "alice@example.com";
    let record = format!("api\n{subject}");
    let now = std::time::SystemTime::now();
    let token = StoredToken {
        access_token: secrecy::SecretString::from("tok-alice".to_string()),
        issued_at: now,
        expires_at: Some(now + Duration::from_secs(600)),
        scopes: vec![],
        refresh_token: Some(secrecy::SecretString::from("rt-alice".to_string())),
        logged_out: false,
        spent_seed: None,
        logout: None,
        bound_to: None,
        registration: None,
        dpop: None,
    };
    let unkeyed: String = sha2::Sha256::digest(subject.as_bytes())[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let names = |redis: &support::redis_server::RedisServer| -> Vec<String> {
        redis.dump().into_iter().map(|(k, _)| k).collect()
    };

    // A record written by a bearerd from before keyed names: anyone reading Redis can find
    // alice's key from her address.
    let before = store(&key, "app").with_unkeyed_subject_names();
    let saved = before.save(&record, &token, None).await.unwrap();
    assert!(matches!(saved, SaveOutcome::Saved { .. }), "{saved:?}");
    assert!(names(&redis).iter().any(|k| k.ends_with(&unkeyed)));

    // Loaded now, it moves to its keyed name: served, listed, and the old name is gone.
    let now_store = store(&key, "app");
    let set = now_store.load(&record).await.unwrap().expect("moved over");
    assert_eq!(set.token.access_token.expose_secret(), "tok-alice");
    assert!(
        !names(&redis).iter().any(|k| k.contains(&unkeyed)),
        "{:?}",
        names(&redis)
    );
    assert_eq!(
        now_store.list("api\n", None, 10).await.unwrap(),
        std::slice::from_ref(&record)
    );
    let again = now_store
        .load(&record)
        .await
        .unwrap()
        .expect("under its keyed name");
    assert_eq!(again.token.access_token.expose_secret(), "tok-alice");

    // The name depends on the store key: another key names alice differently.
    let other_key = bearerd::store::parse_key(&bearerd::store::generate_key()).unwrap();
    store(&other_key, "other")
        .save(&record, &token, None)
        .await
        .unwrap();
    let hash_of = |prefix: &str| -> String {
        let name = names(&redis)
            .into_iter()
            .find(|k| k.starts_with(&format!("{prefix}:set:")) && k.contains(":s:"))
            .unwrap();
        name.rsplit(':').next().unwrap().to_string()
    };
    let (a, b) = (hash_of("app"), hash_of("other"));
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_ne!(a, unkeyed);
}

/// Redis restarted empty right after a rotation, five times, while two replicas share two
/// users' token sets (12-second tokens, a provider that revokes a grant on any reuse): each
/// subject in memory writes its set back when its replica notices the restart, so no user's
/// refresh token is sent twice, and after each settle both users are served through both
/// replicas.
/// Issue 20, hole 6: someone with write access to Redis puts back the value alice's record
/// had before she logged out. The replica that saw the logout refuses it (its generation is
/// older than the tombstone's), even after alice left its memory: she stays logged out, and
/// her old refresh token is never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_logout_value_put_back_in_redis_leaves_the_subject_logged_out() {
    let redis = support::redis_server::RedisServer::start();
    let store = format!(
        "backend = \"redis\"\nurl = \"{}\"\nkey = \"{}\"",
        redis.url(),
        bearerd::store::generate_key()
    );
    let h = start(Duration::from_secs(60), "subject_idle = \"1s\"\n", &store).await;
    let rt = h.tokens.state.seed_refresh_token_for("alice");
    assert_eq!(hand_over(&h, "alice", &rt).await.status(), 200);
    let r = get_as(&h, "alice", "/api/x").await;
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
    // Alice's record as Redis holds it now (her only record: the one set key of a subject).
    let key = redis
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .find(|k| k.contains(":set:") && k.contains(":s:"))
        .expect("alice's record");
    let before: Vec<(String, String)> = redis.query(redis::cmd("HGETALL").arg(&key));
    assert_eq!(
        h.admin_post(&subject_path("alice", "/logout"))
            .await
            .status(),
        200
    );
    let registry = h.sidecar().subjects("api").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while registry.in_memory() > 0 {
        assert!(Instant::now() < deadline, "alice never left memory");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Put back with redis-cli, as an operator (or an attacker) with access to Redis would.
    let mut put_back = std::process::Command::new("redis-cli");
    put_back.args(["-p", &redis.port.to_string(), "HSET", &key]);
    for (field, value) in &before {
        put_back.args([field, value]);
    }
    assert!(put_back.output().expect("redis-cli runs").status.success());
    let token_requests = h.tokens.state.requests();
    let r = get_as(&h, "alice", "/api/x").await;
    assert_eq!(r.status(), 403, "served from a rolled-back record");
    assert!(token_subject(r).await.is_none());
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "the pre-logout refresh token was sent"
    );
    // The operator's refresh brings alice back into memory: still refused, on every path.
    h.admin_post(&subject_path("alice", "/refresh")).await;
    let r = get_as(&h, "alice", "/api/x").await;
    assert_eq!(
        r.status(),
        403,
        "served from a rolled-back record after a refresh"
    );
    assert_eq!(
        h.tokens.state.requests(),
        token_requests,
        "the pre-logout refresh token was sent after a refresh"
    );
    let status = subject_status(&h, "alice").await;
    assert_ne!(status["state"], "valid", "{status}");
    // And once it has left memory again, the record is still refused.
    while registry.in_memory() > 0 {
        assert!(
            Instant::now() < deadline + Duration::from_secs(10),
            "alice never left memory"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get_as(&h, "alice", "/api/x").await.status(), 403);
    let status = subject_status(&h, "alice").await;
    assert_eq!(status["state"], "failed", "{status}");
    assert!(
        status["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("older"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subjects_survive_redis_restarting_empty_inside_a_rotation() {
    // Tokens that outlive the settle: the replica holding a subject's newest set has no
    // refresh of its own due during it, so only the notice of the restart makes it write back.
    let (mut redis, a, b) = replicas_on_redis(Duration::from_secs(12)).await;
    let users = ["alice", "bob"];
    for s in users {
        let rt = a.tokens.state.seed_refresh_token_for(s);
        assert_eq!(hand_over(&a, s, &rt).await.status(), 200);
    }
    served_everywhere(&a, b.proxy_addr, &users).await;
    for round in 1..=5 {
        let rotations = a.tokens.state.rotations();
        let started = Instant::now();
        while a.tokens.state.rotations() == rotations {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "round {round}: no rotation"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Often after the holder saved the new set and before the other replica adopted it
        // (at its own next refresh): then only the holder has the newest set.
        let after = rand::random::<u64>() % 400;
        tokio::time::sleep(Duration::from_millis(after)).await;
        redis.restart_empty();
        served_everywhere(&a, b.proxy_addr, &users).await;
    }
    // The rotations go on after the last settle, each user's refresh token sent once.
    let rotations = a.tokens.state.rotations();
    tokio::time::sleep(Duration::from_secs(12)).await;
    served_everywhere(&a, b.proxy_addr, &users).await;
    assert!(
        a.tokens.state.rotations() > rotations,
        "no rotation after the restarts"
    );
    assert_eq!(
        a.tokens.state.reuse_detected(),
        0,
        "a refresh token was sent twice"
    );
    tokio::task::spawn_blocking(move || b.shutdown())
        .await
        .unwrap();
}

/// Waits until every user is served through the harness's sidecar and through `other`
/// (asserting meanwhile that no refresh token was sent twice).
async fn served_everywhere(a: &Harness, other: std::net::SocketAddr, users: &[&str]) {
    let started = Instant::now();
    for &s in users {
        for via in [a.url("/api/x"), format!("http://{other}/api/x")] {
            loop {
                assert_eq!(
                    a.tokens.state.reuse_detected(),
                    0,
                    "a refresh token was sent twice"
                );
                let r = a.client.get(&via).header(HEADER, s).send().await.unwrap();
                if r.status() == 200 && token_subject(r).await.as_deref() == Some(s) {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{s} is not served again"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Issue 20, hole 8: every distinct user token cost a subject, a refresher and an exchange,
/// with no limit. Now user tokens not seen before are exchanged at most
/// `new_subjects_per_second` a second (and as many at once); the others get 429 with
/// `Retry-After`, and users already exchanged keep being served through the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_new_user_tokens_is_held_to_the_rate_and_known_users_are_served() {
    const RATE: usize = 20;
    const FLOOD: usize = 10_000;
    let (tokens, upstream) = support::start_peers(Duration::from_secs(300)).await;
    let users = UserIdp::trusted_by(&tokens);
    let opts = Options {
        grant: "token_exchange",
        lifetime: Duration::from_secs(300),
        credential_extra: format!(
            "subject_token = {{ header = \"x-user-token\" }}\naudience = \"crm\"\nnew_subjects_per_second = {RATE}\n"
        ),
        ..Options::default()
    };
    let h = std::sync::Arc::new(Harness::start_raw(tokens, upstream, opts, String::new()).await);
    let alice = users.mint("alice", "a1", 600);
    assert_eq!(with_user_token(&h, alice.clone(), true).await.status(), 200);
    let before = h.tokens.state.requests();
    let started = std::time::Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let known = {
        let (h, done, alice) = (h.clone(), done.clone(), alice.clone());
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                statuses.push(
                    with_user_token(&h, alice.clone(), true)
                        .await
                        .status()
                        .as_u16(),
                );
            }
            statuses
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..32 {
        let h = h.clone();
        workers.spawn(async move {
            let (mut refused, mut others, mut retry_after) = (0, 0, true);
            for i in (w..FLOOD).step_by(32) {
                let r = with_user_token(&h, format!("flood-{i}"), true).await;
                if r.status() == 429 {
                    refused += 1;
                    retry_after &= r.headers().contains_key("retry-after");
                } else {
                    others += 1;
                }
            }
            (refused, others, retry_after)
        });
    }
    let (mut refused, mut others, mut retry_after) = (0, 0, true);
    while let Some(r) = workers.join_next().await {
        let (a, b, c) = r.unwrap();
        refused += a;
        others += b;
        retry_after &= c;
    }
    let elapsed = started.elapsed();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let alice_statuses = known.await.unwrap();
    let exchanges = h.tokens.state.requests() - before;
    let bound = RATE + (RATE as f64 * elapsed.as_secs_f64()).ceil() as usize;
    assert_eq!(refused + others, FLOOD);
    assert!(
        exchanges <= bound,
        "{exchanges} exchanges in {elapsed:?}: at most {bound} allowed"
    );
    assert!(refused >= FLOOD - bound, "{refused} refused");
    assert!(retry_after, "every 429 says when to retry");
    assert!(!alice_statuses.is_empty());
    assert!(
        alice_statuses.iter().all(|s| *s == 200),
        "a known user is served through the flood: {:?}",
        alice_statuses
            .iter()
            .filter(|s| **s != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
}

/// Issue 20, hole 11: the subject from the user's own JWT, verified against the issuer's
/// JWKS. A subject header written by any process on loopback is not believed; a token
/// signed by another key, for another audience, expired, or unsigned is refused with 401;
/// a rotated-in key is fetched when a token names it, and a flood of made-up key ids does
/// not become a flood of fetches; the user's token never reaches the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subject_from_a_verified_jwt_cannot_be_spoofed() {
    use support::keys::{KeyKind, TestKey};
    let idp = support::idp::Idp::start().await;
    let (old_key, new_key, attacker) = (
        TestKey::generate(KeyKind::EcP256),
        TestKey::generate(KeyKind::Ed25519),
        TestKey::generate(KeyKind::EcP256),
    );
    idp.publish(vec![old_key.jwk("k1")]);
    let audience = "api://bearerd-test";
    let opts = Options {
        grant: "refresh_token",
        discovery: support::Discovery::Issuer,
        credential_extra: format!(
            "subject_from = {{ jwt = {{ header = \"x-user-jwt\", issuer = \"{}\", audience = \"{audience}\" }} }}\n",
            idp.issuer()
        ),
        ..Options::default()
    };
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    for user in ["alice", "bob"] {
        let rt = h.tokens.state.seed_refresh_token_for(user);
        assert_eq!(hand_over(&h, user, &rt).await.status(), 200);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = |sub: &str, aud: &str, exp: u64| json!({ "iss": idp.issuer(), "sub": sub, "aud": aud, "exp": exp, "iat": now });
    let send = |jwt: Option<String>, spoof: Option<&'static str>| {
        let mut r = h.client.get(h.url("/api/x"));
        if let Some(jwt) = jwt {
            r = r.header("x-user-jwt", format!("Bearer {jwt}"));
        }
        if let Some(s) = spoof {
            r = r.header(HEADER, s);
        }
        r.send()
    };

    // Alice's own token: her subject, and the upstream never sees her JWT.
    let alice = old_key.mint_with_kid("k1", &claims("alice", audience, now + 300));
    let r = send(Some(alice.clone()), Some("bob")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        token_subject(r).await.as_deref(),
        Some("alice"),
        "the header is not believed"
    );
    let seen = h.upstream.state.seen();
    let last = seen.last().unwrap();
    assert!(
        last.headers.get("x-user-jwt").is_none(),
        "the user's JWT went upstream"
    );
    assert!(!format!("{:?}", last.headers).contains(&alice));

    // Refused, each with 401 problem+json, and nothing forwarded.
    let forwarded = h.upstream.state.requests();
    let unsigned = {
        let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64_url(claims("bob", audience, now + 300).to_string().as_bytes());
        format!("{header}.{body}.")
    };
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims("bob", audience, now + 300),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable").unwrap(),
    )
    .unwrap();
    for (what, jwt, spoof) in [
        ("no token, only the subject header", None, Some("bob")),
        (
            "another key under a known kid",
            Some(attacker.mint_with_kid("k1", &claims("bob", audience, now + 300))),
            None,
        ),
        (
            "another audience",
            Some(old_key.mint_with_kid("k1", &claims("bob", "api://other", now + 300))),
            None,
        ),
        (
            "expired",
            Some(old_key.mint_with_kid("k1", &claims("bob", audience, now - 120))),
            None,
        ),
        ("unsigned", Some(unsigned), None),
        ("a MAC", Some(hmac), None),
        ("not a JWT", Some("bob".to_string()), None),
    ] {
        let r = send(jwt, spoof).await.unwrap();
        assert_eq!(r.status(), 401, "{what}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\"",
            "{what}"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            body["type"], "urn:bearerd:problem:invalid-user-token",
            "{what}: {body}"
        );
    }
    assert_eq!(
        h.upstream.state.requests(),
        forwarded,
        "a refused request was forwarded"
    );

    // The issuer rotates to a new key: a token naming it makes bearerd fetch the keys again
    // (not sooner than 5 s after the last fetch).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fetches = idp.jwks_fetches();
    idp.publish(vec![old_key.jwk("k1"), new_key.jwk("k2")]);
    let bob = new_key.mint_with_kid("k2", &claims("bob", audience, now + 300));
    let r = send(Some(bob), None).await.unwrap();
    assert_eq!(token_subject(r).await.as_deref(), Some("bob"));
    assert_eq!(idp.jwks_fetches(), fetches + 1);
    // Made-up key ids: refused, with no more fetches (at most one each 5 s).
    for i in 0..20 {
        let forged =
            attacker.mint_with_kid(&format!("made-up-{i}"), &claims("bob", audience, now + 300));
        assert_eq!(send(Some(forged), None).await.unwrap().status(), 401);
    }
    assert_eq!(
        idp.jwks_fetches(),
        fetches + 1,
        "a fetch per made-up key id"
    );
    // Alice is still served with the keys there are.
    let r = send(Some(alice), None).await.unwrap();
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Issue 20, hole 8: an opaque user token (not a JWT, so bearerd cannot read when it
/// expires) is exchanged again after `opaque_token_lifetime`, so a token the provider has
/// revoked since stops being served by then; within the lifetime it is exchanged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_user_token_is_exchanged_again_after_its_lifetime() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(300)).await;
    tokens
        .state
        .accept_opaque_subject_token("opaque-token-of-dana", "dana");
    let opts = Options {
        grant: "token_exchange",
        lifetime: Duration::from_secs(300),
        credential_extra:
            "subject_token = { header = \"x-user-token\" }\nsubject_token_type = \"urn:ietf:params:oauth:token-type:access_token\"\nopaque_token_lifetime = \"2s\"\n".into(),
        ..Options::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let dana = || with_user_token(&h, "opaque-token-of-dana".to_string(), true);
    let r = dana().await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    let r = dana().await;
    assert_eq!(token_subject(r).await.as_deref(), Some("dana"));
    let exchanges = h.tokens.state.requests();
    for _ in 0..3 {
        assert_eq!(token_subject(dana().await).await.as_deref(), Some("dana"));
    }
    assert_eq!(
        h.tokens.state.requests(),
        exchanges,
        "exchanged once within its lifetime"
    );
    // The exchanged token lives 300 s, yet past the opaque lifetime it is exchanged again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(token_subject(dana().await).await.as_deref(), Some("dana"));
    assert_eq!(
        h.tokens.state.requests(),
        exchanges + 1,
        "exchanged again after 2 s"
    );
}

/// Issue 21: a subject's 403 `insufficient_scope` is that user's to consent to: the app
/// gets 403 `insufficient-scope` with the scopes and the subject's connect path, and no
/// token request is made on the user's behalf.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subject_that_needs_more_scopes_is_sent_to_its_connect_flow() {
    let h = start(Duration::from_secs(60), "", "").await;
    let rt = h.tokens.state.seed_refresh_token_for("alice");
    assert_eq!(hand_over(&h, "alice", &rt).await.status(), 200);
    assert_eq!(get_as(&h, "alice", "/api/x").await.status(), 200);
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.write".into());
    let before = h.tokens.state.requests();
    let r = get_as(&h, "alice", "/api/write").await;
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:bearerd:problem:insufficient-scope", "{p}");
    assert_eq!(p["requires_reauth"], true);
    assert_eq!(p["subject"], "alice");
    assert_eq!(p["connect"], "/credentials/api/subjects/alice/connect");
    assert_eq!(p["scopes"], json!(["demo.read", "demo.write"]));
    assert_eq!(h.tokens.state.requests(), before);
}

/// Issue 21: on an MCP upstream (`mcp = true`), a user who has not connected is asked to
/// by the MCP client: the JSON-RPC request gets the URL-elicitation-required error
/// (-32042) whose URL starts that user's connect flow, and the flow finishes as any other.
/// A request that is no JSON-RPC request gets the usual problem+json.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_mcp_client_is_asked_to_connect_its_user_with_a_url_elicitation() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let opts = Options {
        grant: "refresh_token",
        discovery: support::Discovery::Issuer,
        credential_extra: format!("subject_header = \"{HEADER}\"\nredirect_uri = \"{REDIRECT}\""),
        upstream_extra: "mcp = true".into(),
        ..Options::default()
    };
    let h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let call = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call", "params": {"name": "x"}});
    let r = post_as(&h, "alice", "/api/mcp", &call).await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["jsonrpc"], "2.0");
    assert_eq!(answer["id"], 41, "{answer}");
    assert_eq!(answer["error"]["code"], -32042);
    let elicitation = &answer["error"]["data"]["elicitations"][0];
    assert_eq!(elicitation["mode"], "url");
    assert!(elicitation["elicitationId"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let url = elicitation["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{}/authorize?", h.tokens.issuer())),
        "{url}"
    );
    assert_eq!(h.upstream.state.requests(), 0, "nothing forwarded");
    // Calling again before connecting: the same flow, not a new one each time.
    let again: serde_json::Value = post_as(&h, "alice", "/api/mcp", &call)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["error"]["data"]["elicitations"][0]["url"], url);
    // A client of a revision before URL elicitations gets the problem+json.
    let old = h
        .client
        .post(h.url("/api/mcp"))
        .header(HEADER, "alice")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&call)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 403);

    // The user follows it; the provider's redirect comes back (relayed by the app).
    let query = consent(&h, "alice", url).await;
    let done = relay(&h, "alice", &query).await;
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    let r = post_as(&h, "alice", "/api/mcp", &call).await;
    assert_eq!(r.status(), 200);
    assert_eq!(token_subject(r).await.as_deref(), Some("alice"));

    // A tool that needs more scopes: the client asks the user to consent, the same way.
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.write".into());
    let r = post_as(&h, "alice", "/api/mcp", &call).await;
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["error"]["code"], -32042, "{answer}");
    let url = answer["error"]["data"]["elicitations"][0]["url"]
        .as_str()
        .unwrap();
    assert!(url.contains("scope=demo.read+demo.write"), "{url}");
    *h.upstream.state.required_scope.lock().unwrap() = None;

    // No JSON-RPC request (a GET stream, a notification): the problem+json answer.
    let r = get_as(&h, "bob", "/api/mcp").await;
    assert_eq!(r.status(), 403);
    let p: serde_json::Value = r.json().await.unwrap();
    assert_eq!(p["type"], "urn:bearerd:problem:subject-not-connected");
}

/// Issue 21: a per-subject credential with `registration = "auto"` registers a web client
/// with its connect flows' redirect_uri before its first user connects, keeps it in its own
/// store record, and its users' tokens are refreshed with it, after a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_per_subject_credential_registers_a_web_client_for_its_connect_flows() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(3)).await;
    tokens.state.offer_registration(false);
    let dir = std::env::temp_dir().join(format!("bearerd-subjects-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let opts = Options {
        grant: "refresh_token",
        discovery: support::Discovery::Issuer,
        client: Some("registration = \"auto\"".into()),
        credential_extra: format!("subject_header = \"{HEADER}\"\nredirect_uri = \"{REDIRECT}\""),
        store: format!(
            "backend = \"file\"\npath = {:?}\nkey = \"{}\"",
            dir.join("tokens.store").display().to_string(),
            bearerd::store::generate_key()
        ),
        ..Options::default()
    };
    let mut h = Harness::start_raw(tokens, upstream, opts, String::new()).await;
    let started = h.admin_post(&subject_path("alice", "/connect")).await;
    assert_eq!(started.status(), 200);
    let started: serde_json::Value = started.json().await.unwrap();
    let url = started["authorize_url"].as_str().unwrap().to_string();
    assert!(url.contains("client_id=reg-"), "{url}");
    let registrations = h.tokens.state.registrations();
    assert_eq!(registrations.len(), 1);
    assert_eq!(registrations[0]["application_type"], "web");
    assert_eq!(registrations[0]["redirect_uris"], json!([REDIRECT]));

    let query = consent(&h, "alice", &url).await;
    let done = relay(&h, "alice", &query).await;
    assert_eq!(done.status(), 200, "{}", done.text().await.unwrap());
    assert_eq!(
        token_subject(get_as(&h, "alice", "/api/x").await)
            .await
            .as_deref(),
        Some("alice")
    );

    // After a restart the stored client is used: the user's token (3 s) is refreshed with it.
    support::restart(&mut h).await;
    let before = h.tokens.state.requests();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while h.tokens.state.requests() == before {
        let r = get_as(&h, "alice", "/api/x").await;
        assert_eq!(r.status(), 200);
        assert!(std::time::Instant::now() < deadline, "no refresh in 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get_as(&h, "alice", "/api/x").await.status(), 200);
    let form = h.tokens.state.last_form();
    assert!(
        form.iter()
            .any(|(k, v)| k == "client_id" && v.starts_with("reg-")),
        "{form:?}"
    );
    assert_eq!(
        h.tokens.state.registrations().len(),
        1,
        "not registered again"
    );
}

/// DPoP for a per-subject credential: every subject's tokens are bound to the one key the
/// credential keeps in its own store record, proven on each request, and used again after
/// a restart (a refresh with another key would be refused: the test server binds refresh
/// tokens too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_subject_dpop_tokens_share_the_credentials_key_across_a_restart() {
    let (_, store) = file_store("subjects");
    let (tokens, upstream) = support::start_peers(Duration::from_millis(1500)).await;
    tokens.state.require_dpop(Some("as-nonce"));
    upstream.state.require_dpop_nonce("rs-nonce");
    let mut h = start_with(tokens, upstream, "dpop = true\n", &store).await;
    for user in ["alice", "bob"] {
        let url = start_connect(&h, user).await;
        let query = consent(&h, user, &url).await;
        let r = relay(&h, user, &query).await;
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
    support::restart(&mut h).await;
    // A user who connects after the restart, before the others are loaded again, gets the
    // same key (a key of this process's own would be lost to theirs).
    let url = start_connect(&h, "carol").await;
    let query = consent(&h, "carol", &url).await;
    assert_eq!(relay(&h, "carol", &query).await.status(), 200);
    // Every user's tokens rotate after the restart, each request proven with the key.
    let issued = h.tokens.state.every_issued().len();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while h.tokens.state.every_issued().len() < issued + 6 {
        for user in ["alice", "bob", "carol"] {
            let r = get_as(&h, user, "/api/x").await;
            assert_eq!(r.status(), 200, "{user}: {}", r.text().await.unwrap());
        }
        assert!(std::time::Instant::now() < deadline, "no rotations");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let every = h.tokens.state.every_issued();
    let keys: std::collections::HashSet<String> = every
        .iter()
        .filter_map(|t| h.tokens.state.jkt_of(t))
        .collect();
    assert_eq!(keys.len(), 1, "one key for every subject's tokens");
    assert!(h
        .upstream
        .state
        .seen()
        .iter()
        .all(|r| r.headers.contains_key("dpop")));
    let (_, refused, _, why) = h.tokens.state.dpop_counts();
    assert_eq!(refused, 0, "{why:?}");
    assert_eq!(h.upstream.state.dpop_counts().1, 0);
    assert_eq!(h.tokens.state.reuse_detected(), 0);
}
