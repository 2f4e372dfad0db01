//! The data path against the real sidecar: injection, routing limits, the 401 replay,
//! streaming.

mod support;

use std::time::{Duration, Instant};

use support::{metric, Harness, Options};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injects_token_replaces_authorization_sets_host_and_keeps_path_and_query() {
    let h = Harness::start(Options::default()).await;
    let resp = h
        .client
        .get(h.url("/api/v1/items?limit=5&q=a%20b"))
        .header("authorization", "Bearer app-supplied-must-not-leak")
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-123");

    let seen = h.upstream.state.seen();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    let auth = req.headers["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Bearer tok_"), "{auth}");
    assert!(
        req.token_serial.is_some(),
        "the upstream must have accepted the injected token"
    );
    assert_eq!(req.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(req.headers["host"], h.upstream.addr.to_string());
    assert_eq!(req.target, "/base/v1/items?limit=5&q=a%20b");
    assert_eq!(req.headers["x-request-id"], "trace-123");
    assert_eq!(h.tokens.state.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generates_a_request_id_when_absent() {
    let h = Harness::start(Options::default()).await;
    let resp = h.get("/api/x").await;
    let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(
        h.upstream.state.seen()[0].headers["x-request-id"],
        id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_get_404_problem_json_and_reach_nothing() {
    let h = Harness::start(Options::default()).await;
    for path in ["/nope", "/apix/y", "/"] {
        let resp = h.get(path).await;
        assert_eq!(resp.status(), 404, "{path}");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["status"], 404);
        assert_eq!(body["requires_reauth"], false);
        assert!(body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(body["type"].as_str().unwrap().contains("no-route"));
    }
    assert_eq!(h.upstream.state.requests(), 0);
}

/// Sends raw HTTP/1.1 and returns the whole response text.
async fn raw_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn absolute_form_and_connect_requests_are_proxied_nowhere() {
    let h = Harness::start(Options::default()).await;
    let evil = support::Upstream::start(h.tokens.state.clone())
        .await
        .unwrap();
    let addr = h.sidecar().proxy_addr;
    let abs = format!(
        "GET http://{}/api/steal HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        evil.addr, evil.addr
    );
    let resp = raw_request(addr, &abs).await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    assert!(resp.contains("application/problem+json"));
    let connect = format!(
        "CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n",
        evil.addr, evil.addr
    );
    let resp = raw_request(addr, &connect).await;
    assert!(!resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(evil.state.requests(), 0);
    assert_eq!(h.upstream.state.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dedicated_listener_routes_every_path_to_its_upstream() {
    let listen = support::free_addr();
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let extra = format!(
        "\n[upstreams.direct]\nurl = \"http://{}/d\"\nlisten = \"{listen}\"\ncredential = \"api\"\n",
        upstream.addr
    );
    let h = Harness::start_with(
        tokens,
        upstream,
        Options {
            upstream_extra: extra,
            ..Default::default()
        },
    )
    .await;
    let resp = h
        .client
        .get(format!("http://{listen}/anything/here?x=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(h.upstream.state.seen()[0].target, "/d/anything/here?x=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replays_a_post_once_with_the_identical_body_after_revocation() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    assert_eq!(h.get("/api/warm").await.status(), 200);
    let before = h.tokens.state.requests();
    h.tokens.state.revoke_access_tokens();

    let body = serde_json::json!({"order": 42, "items": ["a", "b"], "note": "é"}).to_string();
    let resp = h
        .client
        .post(h.url("/api/orders"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let posts: Vec<_> = h
        .upstream
        .state
        .seen()
        .into_iter()
        .filter(|r| r.method == "POST")
        .collect();
    assert_eq!(posts.len(), 2, "one rejected attempt and one replay");
    assert_eq!(posts[0].body, body.as_bytes());
    assert_eq!(posts[1].body, body.as_bytes());
    assert!(posts[0].token_serial.is_none() && posts[1].token_serial.is_some());
    assert_eq!(
        h.tokens.state.requests() - before,
        1,
        "exactly one token request"
    );
    let series = r#"bearerd_upstream_401_total{outcome="replayed_ok",upstream="api"}"#;
    let m = h.metric_eventually(series, 1.0).await;
    assert_eq!(metric(&m, series), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_posts_after_revocation_share_one_refresh() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    assert_eq!(h.get("/api/warm").await.status(), 200);
    let before = h.tokens.state.requests();
    h.tokens.state.revoke_access_tokens();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = h.client.clone();
        let url = h.url("/api/orders");
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .body(format!("{{\"n\":{i}}}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        h.tokens.state.requests() - before,
        1,
        "exactly one token request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_body_401_passes_through_and_the_next_request_succeeds() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    assert_eq!(h.get("/api/warm").await.status(), 200);
    h.tokens.state.revoke_access_tokens();
    let big = vec![b'x'; 200 * 1024];
    let resp = h
        .client
        .post(h.url("/api/upload"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "the 401 passes through; not a 5xx");
    // The background refresh runs; the next request gets the new token.
    let mut ok = false;
    for _ in 0..100 {
        if h.get("/api/after").await.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok);
    let series = r#"bearerd_upstream_401_total{outcome="not_replayable",upstream="api"}"#;
    let m = h.metric_eventually(series, 1.0).await;
    assert_eq!(metric(&m, series), Some(1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_rejecting_every_token_cannot_make_bearerd_hammer_the_provider() {
    let h = Harness::start(Options {
        credential_extra: "min_refresh_interval = \"1s\"".into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    h.upstream.state.reject_all(true);
    let before = h.tokens.state.requests();
    let started = Instant::now();
    let mut statuses = Vec::new();
    while started.elapsed() < Duration::from_secs(3) {
        statuses.push(h.get("/api/x").await.status().as_u16());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let made = h.tokens.state.requests() - before;
    assert!(
        statuses.iter().all(|s| *s == 401),
        "401s pass through, no 5xx"
    );
    assert!(
        statuses.len() > 20,
        "enough requests to show the limit: {}",
        statuses.len()
    );
    // At most one request-triggered refresh per interval (plus one at the window's start).
    assert!(
        made as f64 <= elapsed / 1.0 + 1.0,
        "{made} token requests in {elapsed:.1}s"
    );
    assert!(made >= 1);
    let m = h.metrics().await;
    let limited = metric(
        &m,
        r#"bearerd_upstream_401_total{outcome="rate_limited",upstream="api"}"#,
    )
    .unwrap();
    assert!(limited > 10.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sse_events_stream_through_unbuffered() {
    let h = Harness::start(Options::default()).await;
    *h.upstream.state.sse_gap.lock().unwrap() = Duration::from_secs(3);
    let started = Instant::now();
    let mut resp = h.get("/api/events/sse").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let first = resp.chunk().await.unwrap().unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    let mut rest = Vec::new();
    while let Some(c) = resp.chunk().await.unwrap() {
        rest.extend_from_slice(&c);
    }
    let end_at = started.elapsed();
    assert!(String::from_utf8_lossy(&rest).contains("second"));
    // Loose bound: the first event arrives long before the stream ends.
    assert!(end_at >= Duration::from_secs(3));
    assert!(
        first_at < end_at - Duration::from_secs(2),
        "first {first_at:?}, end {end_at:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chunked_request_bodies_stream_to_the_upstream() {
    let h = Harness::start(Options::default()).await;
    let chunks =
        futures::stream::iter((0..50).map(|i| Ok::<_, std::io::Error>(format!("chunk{i};"))));
    let resp = h
        .client
        .post(h.url("/api/stream"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.state.seen();
    let expected: String = (0..50).map(|i| format!("chunk{i};")).collect();
    assert_eq!(seen[0].body, expected.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unreachable_upstream_gives_502_problem_json() {
    let dead = support::free_addr();
    let h = Harness::start(Options {
        upstream_url: Some(format!("http://{dead}/x")),
        ..Default::default()
    })
    .await;
    let resp = h.get("/api/y").await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["upstream"], "api");
    assert_eq!(body["requires_reauth"], false);
}

/// A sidecar for an upstream at `addr` with `extra` timeouts: its first request must end in
/// a 504 problem+json naming the upstream.
async fn expect_upstream_timeout(addr: std::net::SocketAddr, extra: &str) -> Harness {
    let h = Harness::start(Options {
        upstream_url: Some(format!("http://{addr}/x")),
        upstream_extra: extra.into(),
        ..Default::default()
    })
    .await;
    let resp = h.get("/api/y").await;
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], 504);
    assert_eq!(body["upstream"], "api");
    assert!(
        body["type"].as_str().unwrap().contains("upstream-timeout"),
        "{body}"
    );
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_connect_timeout_gives_504_problem_json() {
    // A listener that never accepts, with its accept queue filled: the kernel drops further
    // SYNs, so a connect hangs until the sidecar's connect_timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let black_hole = socket.listen(1).unwrap();
    let addr = black_hole.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let h = expect_upstream_timeout(addr, "connect_timeout = \"300ms\"").await;
    h.metric_eventually(
        "bearerd_requests_total{upstream=\"api\",status=\"504\"}",
        1.0,
    )
    .await;
    drop(fillers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upstream_that_never_answers_gives_504_after_read_timeout() {
    // Accepts, reads the request, and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            held.push(s);
        }
    });
    expect_upstream_timeout(addr, "read_timeout = \"300ms\"").await;
    hung.abort();
}

/// A raw upstream that accepts one upgrade, records its request head, and echoes bytes.
async fn upgrade_upstream() -> (std::net::SocketAddr, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        let _ = tx.send(String::from_utf8_lossy(&head).to_string());
        s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return;
            }
            s.write_all(&buf[..n]).await.unwrap();
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrades_pass_through_with_the_token() {
    let (up, head) = upgrade_upstream().await;
    let h = Harness::start(Options {
        upstream_url: Some(format!("http://{up}/ws")),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let mut s = tokio::net::TcpStream::connect(h.sidecar().proxy_addr)
        .await
        .unwrap();
    s.write_all(
        b"GET /api/chat HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = Vec::new();
    let mut byte = [0u8; 1];
    while !resp.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        resp.push(byte[0]);
    }
    let resp = String::from_utf8_lossy(&resp).to_string();
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let head = head.await.unwrap().to_ascii_lowercase();
    assert!(head.starts_with("get /ws/chat "), "{head}");
    assert!(head.contains("authorization: bearer tok_"), "{head}");
    for msg in ["hello", "over the upgraded connection"] {
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dot_segments_cannot_escape_the_base_path() {
    let h = Harness::start(Options::default()).await;
    let addr = h.sidecar().proxy_addr;
    for target in [
        "/api/../../other/x",
        "/api/%2e%2e/other",
        "/api/.%2E/x",
        "/api/./x",
        "/api/a%5c..%5cb",
        // Servlet containers drop `;parameters` before they resolve dot segments.
        "/api/..;/x",
        "/api/..;jsessionid=1/..;/admin",
        "/api/%2e%2e;/x",
        "/api/a%2f..;x%2fb",
    ] {
        let resp = raw_request(
            addr,
            &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{target}: {resp}");
        assert!(
            resp.contains("application/problem+json"),
            "{target}: {resp}"
        );
    }
    assert_eq!(h.upstream.state.requests(), 0);
    // Parameters on an ordinary segment are no escape: they go through.
    let resp = h.get("/api/items;v=2").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(h.upstream.state.seen()[0].target, "/base/items;v=2");
}

/// What a permissive upstream may make of a path: percent-decoded once, `;params` dropped
/// from each segment (servlet containers), `\` taken as `/`, dot segments removed as in
/// RFC 3986 §5.2.4. Stricter than any one server, so "contained here" means contained there.
fn reference_normalise(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let decoded = String::from_utf8_lossy(&decoded).to_string();
    let stripped: Vec<&str> = decoded
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect();
    let input = stripped.join("/").replace('\\', "/");
    remove_dot_segments(&input)
}

/// RFC 3986 §5.2.4, step by step.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path.to_string();
    let mut output = String::new();
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest.to_string();
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest.to_string();
        } else if input.starts_with("/./") {
            input = input[2..].to_string();
        } else if input == "/." {
            input = "/".to_string();
        } else if input.starts_with("/../") || input == "/.." {
            input = format!("/{}", &input[if input == "/.." { 3 } else { 4 }..]);
            match output.rfind('/') {
                Some(at) => output.truncate(at),
                None => output.clear(),
            }
        } else if input == "." || input == ".." {
            input.clear();
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |e| e + start);
            output.push_str(&input[..end]);
            input = input[end..].to_string();
        }
    }
    output
}

#[test]
fn the_reference_normaliser_climbs_where_servers_do() {
    for (path, want) in [
        ("/base/a/../b", "/base/b"),
        ("/base/..;/x", "/x"),
        ("/base/%2e%2e%3bv=1/x", "/x"),
        ("/base/a%2f..%2f..%2fx", "/x"),
        ("/base/a\\..\\..\\x", "/x"),
        ("/base/items;v=2", "/base/items"),
        ("/base/./x/.", "/base/x/"),
    ] {
        assert_eq!(reference_normalise(path), want, "{path}");
    }
}

/// One sidecar for every case of the path property (a sidecar per case would be slow).
fn path_property_sidecar() -> &'static (tokio::runtime::Runtime, Harness) {
    static SIDECAR: std::sync::OnceLock<(tokio::runtime::Runtime, Harness)> =
        std::sync::OnceLock::new();
    SIDECAR.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let h = rt.block_on(async {
            let h = Harness::start(Options::default()).await;
            h.wait_ready().await;
            h
        });
        (rt, h)
    })
}

/// Paths built from the pieces that climb on one server or another.
fn climbing_path() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop::sample::select(vec![
        "a", "items", ".", "..", ";", ";v=2", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "\\",
        "%3b", "%3B", "",
    ]);
    let segment = prop::collection::vec(piece, 1..4).prop_map(|p| p.concat());
    prop::collection::vec(segment, 1..6).prop_map(|s| format!("/api/{}", s.join("/")))
}

proptest::proptest! {
    // 300 cases by default; PROPTEST_CASES=N for a longer search.
    #![proptest_config(proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(300),
        ..Default::default()
    })]

    /// Every path the sidecar forwards stays under the upstream's base path on the most
    /// permissive reading; every other path is refused with 400 and reaches nothing.
    #[test]
    fn forwarded_paths_stay_under_the_base_path(path in climbing_path()) {
        let (rt, h) = path_property_sidecar();
        let before = h.upstream.state.requests();
        let resp = rt.block_on(raw_request(
            h.sidecar().proxy_addr,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        ));
        if resp.starts_with("HTTP/1.1 200") {
            let seen = h.upstream.state.seen();
            let target = &seen.last().unwrap().target;
            let normalised = reference_normalise(target);
            proptest::prop_assert!(
                normalised == "/base" || normalised.starts_with("/base/"),
                "{path} reached the upstream as {target}, which is {normalised}"
            );
        } else {
            proptest::prop_assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
            proptest::prop_assert_eq!(h.upstream.state.requests(), before, "{} was refused but forwarded", path);
        }
    }
}

/// A request head over `max_request_header_bytes` (64 KiB by default) gets 431
/// problem+json and reaches nothing; one under it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_request_heads_get_431_and_are_never_forwarded() {
    let request = |header_len: usize| {
        format!(
            "GET /api/x HTTP/1.1\r\nHost: localhost\r\nx-big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(header_len)
        )
    };
    let h = Harness::start(Options::default()).await;
    let addr = h.sidecar().proxy_addr;
    let resp = raw_request(addr, &request(200_000)).await;
    assert!(
        resp.starts_with("HTTP/1.1 431"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    assert!(resp.contains("application/problem+json"), "{resp}");
    assert!(
        resp.contains("urn:bearerd:problem:request-header-too-large"),
        "{resp}"
    );
    assert!(resp.contains("max_request_header_bytes"), "{resp}");
    assert_eq!(h.upstream.state.requests(), 0);
    // Just under the default: forwarded whole.
    let resp = raw_request(addr, &request(60_000)).await;
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "{}",
        &resp[..resp.len().min(300)]
    );
    assert_eq!(h.upstream.state.seen()[0].headers["x-big"].len(), 60_000);
    h.stop().await;

    // A configured limit holds either side of it.
    let h = Harness::start(Options {
        server_extra: "max_request_header_bytes = 4096".into(),
        ..Default::default()
    })
    .await;
    let addr = h.sidecar().proxy_addr;
    let resp = raw_request(addr, &request(5_000)).await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp}");
    assert_eq!(h.upstream.state.requests(), 0);
    let resp = raw_request(addr, &request(3_000)).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(h.upstream.state.requests(), 1);
}

/// The trust boundary (issue 20, hole 1): a web page open in a browser on the same host
/// cannot spend the credential, neither through DNS rebinding (its own name in `Host`) nor
/// by a cross-site request (its `Origin`, or `Sec-Fetch-Site`), and cannot read the admin
/// listener. Each refusal is a 403 `cross-origin-refused` that reaches nothing, carries no
/// CORS permission, and is counted; the app's own requests, and the configured exceptions,
/// pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn web_pages_cannot_spend_the_credential_by_rebinding_or_cross_site_requests() {
    let h = Harness::start(Options {
        server_extra:
            "allowed_hosts = [\"bearerd.local\"]\nallowed_origins = [\"https://console.test\"]\n"
                .into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let proxy = h.sidecar().proxy_addr;
    let admin = h.sidecar().admin_addr;
    let port = proxy.port();
    let refused: Vec<(std::net::SocketAddr, String)> = vec![
        (
            proxy,
            format!("GET /api/steal HTTP/1.1\r\nHost: rebind.attacker.test:{port}\r\nOrigin: http://rebind.attacker.test:{port}\r\nConnection: close\r\n\r\n"),
        ),
        (
            proxy,
            format!("POST /api/steal HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/plain\r\nSec-Fetch-Site: cross-site\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
        ),
        (
            proxy,
            format!("POST /api/steal HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"),
        ),
        (
            proxy,
            format!("OPTIONS /api/steal HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: DELETE\r\nConnection: close\r\n\r\n"),
        ),
        (
            admin,
            "GET /status HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n".to_string(),
        ),
        (
            admin,
            "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: null\r\nConnection: close\r\n\r\n".to_string(),
        ),
    ];
    for (addr, request) in &refused {
        let resp = raw_request(*addr, request).await;
        assert!(resp.starts_with("HTTP/1.1 403"), "{request}\n{resp}");
        assert!(resp.contains("application/problem+json"), "{resp}");
        assert!(
            resp.contains("urn:bearerd:problem:cross-origin-refused"),
            "{resp}"
        );
        assert!(
            !resp.to_ascii_lowercase().contains("access-control-allow"),
            "no CORS permission: {resp}"
        );
        assert!(!resp.contains("tok_"), "no token in a refusal: {resp}");
    }
    assert_eq!(
        h.upstream.state.requests(),
        0,
        "nothing refused was forwarded"
    );
    let metrics = h.metrics().await;
    for (listener, reason, count) in [
        ("proxy", "host", 1.0),
        ("proxy", "origin", 2.0),
        ("proxy", "sec_fetch_site", 1.0),
        ("admin", "host", 1.0),
        ("admin", "origin", 1.0),
    ] {
        let series = format!(
            "bearerd_requests_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
        );
        assert_eq!(
            metric(&metrics, &series),
            Some(count),
            "{series}\n{metrics}"
        );
    }

    // The app, and the exceptions the operator configured, are served.
    let allowed = [
        format!("GET /api/a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"),
        format!("GET /api/b HTTP/1.1\r\nHost: localhost:{port}\r\nOrigin: http://localhost:6274\r\nSec-Fetch-Site: same-site\r\nConnection: close\r\n\r\n"),
        format!("GET /api/c HTTP/1.1\r\nHost: bearerd.local:{port}\r\nOrigin: https://console.test\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"),
        format!("POST /api/d HTTP/1.1\r\nHost: [::1]:{port}\r\nSec-Fetch-Site: same-origin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
    ];
    for request in &allowed {
        let resp = raw_request(proxy, request).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{request}\n{resp}");
    }
    assert_eq!(h.upstream.state.requests(), allowed.len());
    let status = raw_request(
        admin,
        "GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // /status shows the relaxations in force.
    let relaxations = h.status().await["relaxations"].clone();
    let relaxations: Vec<&str> = relaxations
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(relaxations.len(), 2, "{relaxations:?}");
    assert!(relaxations[0].starts_with("server.allowed_hosts"));
    assert!(relaxations[1].starts_with("server.allowed_origins"));
}

/// Issue 20, hole 10: the headers that name a subject or carry a user's token are
/// stripped on every route, not only on the per-subject upstream: an app that sends them
/// on every request tells no other upstream who its user is, or hands it the user's token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subject_and_user_token_headers_reach_no_upstream_on_any_route() {
    let (tokens, upstream) = support::start_peers(Duration::from_secs(60)).await;
    let client = format!(
        "client_id = \"{}\"\nclient_secret = \"{}\"",
        support::token_server::CLIENT_ID,
        support::token_server::CLIENT_SECRET
    );
    let extra = format!(
        r#"
[credentials.users]
grant = "refresh_token"
token_url = "{url}"
{client}
subject_header = "x-bearerd-subject"

[credentials.agents]
grant = "token_exchange"
token_url = "{url}"
{client}
subject_token = {{ header = "x-user-token" }}

[upstreams.users]
url = "http://{up}/u"
path_prefix = "/users"
credential = "users"

[upstreams.agents]
url = "http://{up}/a"
path_prefix = "/agents"
credential = "agents"
"#,
        url = tokens.token_url(),
        up = upstream.addr,
    );
    let h = Harness::start_with(
        tokens,
        upstream,
        Options {
            upstream_extra: extra,
            ..Default::default()
        },
    )
    .await;
    let resp = h
        .client
        .get(h.url("/api/x"))
        .header("x-bearerd-subject", "alice@example.com")
        .header("x-user-token", "the-users-own-token")
        .header("x-app-header", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = h.upstream.state.seen();
    let headers = &seen.last().unwrap().headers;
    assert_eq!(headers["x-app-header"], "kept");
    assert!(headers.get("x-bearerd-subject").is_none(), "{headers:?}");
    assert!(headers.get("x-user-token").is_none(), "{headers:?}");
}

/// MCP's stateless transport names the tool of each request in `Mcp-Name`: an upstream may
/// give a tool a credential of its own (`[upstreams.X.tools]`), without reading bodies.
/// Other tools, and requests without the header, use the route's credential; `Mcp-Method`
/// and `Mcp-Name` reach the upstream untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tool_named_in_mcp_name_gets_its_own_credential() {
    // The tool's credential has a token server of its own, so the upstream's view tells
    // which credential each request carried.
    let writes = support::TokenServer::start(Duration::from_secs(60))
        .await
        .unwrap();
    let opts = Options {
        upstream_extra: format!(
            "[upstreams.api.tools]\n\"create_issue\" = \"gh-write\"\n\n\
             [credentials.gh-write]\ngrant = \"client_credentials\"\ntoken_url = \"{}\"\n\
             client_id = \"{}\"\nclient_secret = \"{}\"\n",
            writes.token_url(),
            support::token_server::CLIENT_ID,
            support::token_server::CLIENT_SECRET,
        ),
        ..Default::default()
    };
    let h = Harness::start(opts).await;
    let call = |tool: Option<&'static str>| {
        let mut req = h
            .client
            .post(h.url("/api/mcp"))
            .header("mcp-method", "tools/call")
            .body("{}");
        if let Some(tool) = tool {
            req = req.header("mcp-name", tool);
        }
        req.send()
    };
    call(Some("create_issue")).await.unwrap();
    assert_eq!(call(Some("list_issues")).await.unwrap().status(), 200);
    assert_eq!(call(None).await.unwrap().status(), 200);

    let seen = h.upstream.state.seen();
    let token_of = |i: usize| {
        seen[i].headers["authorization"]
            .to_str()
            .unwrap()
            .strip_prefix("Bearer ")
            .unwrap()
            .to_string()
    };
    // The tool's request: the tool's credential (its token server issued the token).
    assert!(writes.state.validate(&token_of(0)).is_some());
    assert!(h.tokens.state.validate(&token_of(0)).is_none());
    assert_eq!(seen[0].headers["mcp-name"], "create_issue");
    assert_eq!(seen[0].headers["mcp-method"], "tools/call");
    // Another tool, and no tool at all: the route's credential.
    let last = seen.len() - 1;
    for i in [last - 1, last] {
        assert!(
            h.tokens.state.validate(&token_of(i)).is_some(),
            "request {i}"
        );
        assert!(writes.state.validate(&token_of(i)).is_none(), "request {i}");
    }
    assert_eq!(seen[last - 1].headers["mcp-name"], "list_issues");

    // The tool's credential counts for readiness like the route's.
    assert_eq!(h.admin_get("/readyz").await.status(), 200);
    h.admin_post("/credentials/gh-write/logout").await;
    let ready = h.admin_get("/readyz").await;
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert!(body["credentials"]["gh-write"].is_object(), "{body}");
}

/// A token the upstream rejected, whose refresh then failed permanently, is dead: it is
/// never sent again, even before its expiry (DESIGN §4, dead tokens). The app gets the
/// answer of a failed credential, which says a new login or secret is needed, rather than
/// the upstream's 401 again and again (on which MCP clients start an OAuth flow of their
/// own).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rejected_token_that_cannot_be_replaced_is_never_sent_again() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    assert_eq!(h.get("/api/a").await.status(), 200);
    // The provider now refuses the client, and the upstream the token (revoked, say).
    h.tokens
        .state
        .set_fail(support::FailMode::OAuthError("invalid_client".into()));
    h.upstream.state.reject_all(true);
    assert_eq!(h.get("/api/b").await.status(), 401, "the upstream's answer");
    let sent = h.upstream.state.requests();

    // Even an upstream that would take the token again never sees it.
    h.upstream.state.reject_all(false);
    let resp = h.get("/api/c").await;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["requires_reauth"], true, "{body}");
    assert_eq!(body["credential"], "api", "{body}");
    assert_eq!(
        h.upstream.state.requests(),
        sent,
        "the dead token was sent again"
    );
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["state"], "failed", "{status}");
}

/// Issue 21: a machine grant steps up on an upstream's 403 `insufficient_scope`, within its
/// `step_up_scopes`: one token request for the union of scopes, and the request (body
/// included) replayed once with it; later requests carry the broader token. A scope outside
/// `step_up_scopes` is never asked for: that 403 passes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_machine_grant_steps_up_within_its_step_up_scopes() {
    let h = Harness::start(Options {
        credential_extra: "step_up_scopes = [\"demo.write\"]".into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.write".into());
    let before = h.tokens.state.requests();
    let body = vec![b'x'; 3000];
    let r = h
        .client
        .post(h.url("/api/write"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "replayed with the broader token");
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["body_bytes"], 3000, "the body went again");
    assert_eq!(h.upstream.state.forbidden(), 1);
    assert_eq!(h.tokens.state.requests(), before + 1, "one token request");
    let form = h.tokens.state.last_form();
    let scope = form
        .iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone());
    assert_eq!(scope.as_deref(), Some("demo.read demo.write"), "the union");
    assert_eq!(h.get("/api/again").await.status(), 200);
    assert_eq!(h.upstream.state.forbidden(), 1, "later requests carry it");
    let status = h.status().await;
    assert_eq!(
        status["credentials"]["api"]["step_up_scopes"],
        serde_json::json!(["demo.write"])
    );

    // Outside step_up_scopes: the 403 reaches the app, and nothing is asked for.
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.admin".into());
    let r = h.get("/api/admin").await;
    assert_eq!(r.status(), 403);
    assert_eq!(h.tokens.state.requests(), before + 1);
    let m = h
        .metric_eventually(
            "bearerd_step_up_total{credential=\"api\",outcome=\"not_allowed\"}",
            1.0,
        )
        .await;
    assert_eq!(
        metric(
            &m,
            "bearerd_step_up_total{credential=\"api\",outcome=\"stepped_up\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            "bearerd_step_up_total{credential=\"api\",outcome=\"not_allowed\"}"
        ),
        Some(1.0)
    );
}

/// A step-up the authorization server refuses (`invalid_scope`, a permanent error for a
/// refresh) costs nothing else: the 403 passes through, the credential stays valid with its
/// token, later requests that need no more are served, and the set is not asked for again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_step_up_leaves_the_credential_as_it_was() {
    let h = Harness::start(Options {
        credential_extra: "step_up_scopes = [\"demo.write\"]".into(),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    h.tokens.state.refuse_scope("demo.write");
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.write".into());
    let before = h.tokens.state.requests();
    assert_eq!(h.get("/api/write").await.status(), 403);
    assert_eq!(h.tokens.state.requests(), before + 1, "asked once");
    assert_eq!(h.get("/api/write").await.status(), 403);
    assert_eq!(h.tokens.state.requests(), before + 1, "not asked again");
    *h.upstream.state.required_scope.lock().unwrap() = None;
    assert_eq!(
        h.get("/api/read").await.status(),
        200,
        "the token still serves"
    );
    let status = h.status().await;
    assert_eq!(status["credentials"]["api"]["state"], "valid", "{status}");
    assert!(
        status["credentials"]["api"].get("step_up_scopes").is_none(),
        "nothing added: {status}"
    );
    // The next refresh asks for what it asked before the step-up.
    let r = h.admin_post("/credentials/api/refresh").await;
    assert_eq!(r.status(), 200);
    let form = h.tokens.state.last_form();
    let scope = form
        .iter()
        .find(|(k, _)| k == "scope")
        .map(|(_, v)| v.clone());
    assert_eq!(scope.as_deref(), Some("demo.read"));
}

/// Without `step_up_scopes` (the default), a machine grant never widens its scopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_step_up_scopes_an_insufficient_scope_passes_through() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    *h.upstream.state.required_scope.lock().unwrap() = Some("demo.write".into());
    let before = h.tokens.state.requests();
    let r = h.get("/api/write").await;
    assert_eq!(r.status(), 403);
    assert!(r
        .headers()
        .get("www-authenticate")
        .is_some_and(|v| v.to_str().unwrap().contains("insufficient_scope")));
    assert_eq!(h.tokens.state.requests(), before);
}
