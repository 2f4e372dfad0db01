//! Events: the `/events` stream (live, with `Last-Event-ID` replay), signed webhooks
//! (retried, and dropped and counted when a receiver falls behind) and the audit file.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;

use super::support::{self, Harness, Options};

macro_rules! eventually {
    ($what:expr, $check:expr) => {{
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if $check {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "never: {}", $what);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// An SSE reader: each event as (id, kind, data).
struct EventReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
    /// Everything read, to look for secrets in.
    pub raw: String,
}

impl EventReader {
    async fn open(h: &Harness, last_event_id: Option<&str>) -> EventReader {
        let mut req = h.client.get(h.admin("/events"));
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        EventReader {
            body: r.bytes_stream().boxed(),
            buffer: String::new(),
            raw: String::new(),
        }
    }

    /// The next event (comments and the retry hint skipped), or none within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(String, String, serde_json::Value)> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                        .map(str::to_string)
                };
                if let (Some(id), Some(kind), Some(data)) =
                    (field("id"), field("event"), field("data"))
                {
                    return Some((id, kind, serde_json::from_str(&data).unwrap()));
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await;
            let text = String::from_utf8(chunk.ok()??.ok()?.to_vec()).unwrap();
            self.raw.push_str(&text);
            self.buffer.push_str(&text);
        }
    }

    /// The next event of `kind`, skipping others.
    async fn next_of(&mut self, kind: &str) -> (String, serde_json::Value) {
        loop {
            let (id, k, data) = self
                .next(Duration::from_secs(20))
                .await
                .unwrap_or_else(|| panic!("no {kind} event"));
            if k == kind {
                return (id, data);
            }
        }
    }
}

fn assert_no_token(h: &Harness, text: &str) {
    for t in h.tokens.state.every_issued() {
        assert!(!text.contains(&t), "a token in: {text}");
    }
    assert!(!text.contains(support::token_server::CLIENT_SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_event_stream_shows_rotation_live_and_replays_after_the_last_id() {
    // Two-second tokens: the sidecar rotates them while the test reads.
    let h = Harness::start(Options {
        lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let mut live = EventReader::open(&h, None).await;
    let (first_id, first) = live.next_of("refreshed").await;
    assert_eq!(first["credential"], "api");
    assert_eq!(first["outcome"], "success");
    let g1 = first["generation"].as_u64().unwrap();
    // The next rotation arrives while the stream is open, not at its end.
    let (second_id, second) = live.next_of("refreshed").await;
    assert!(second["generation"].as_u64().unwrap() > g1, "{second}");
    assert!(!second["request_id"].as_str().unwrap().is_empty());
    assert_no_token(&h, &live.raw);

    // A reader that reconnects with the last id it saw gets what came after it, first.
    let mut again = EventReader::open(&h, Some(&first_id)).await;
    let (id, _, replayed) = again.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(id, second_id, "{replayed}");

    // A web page cannot read it (the trust boundary's Origin rule).
    let r = h
        .client
        .get(h.admin("/events"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admin_action_emits_events_with_its_request_id() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    let mut live = EventReader::open(&h, None).await;
    let r = h
        .client
        .post(h.admin("/credentials/api/refresh"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let r = h
        .client
        .post(h.admin("/credentials/api/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let logout_rid = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(rid, logout_rid);
    let (_, out) = live.next_of("logged_out").await;
    assert_eq!(out["credential"], "api");
    assert_eq!(out["request_id"], logout_rid.as_str());
}

/// A webhook receiver: records each delivery; answers 500 to the first `fail_first`, and
/// holds every answer for `hold` (a receiver that fell behind).
#[derive(Clone, Default)]
struct Receiver {
    deliveries: Arc<Mutex<Vec<(http::HeaderMap, bytes::Bytes)>>>,
    fail_first: usize,
    hold: Duration,
}

impl Receiver {
    async fn start(self) -> (String, Receiver) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let r = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
                let r = r.clone();
                async move {
                    let n = {
                        let mut d = r.deliveries.lock().unwrap();
                        d.push((headers, body));
                        d.len()
                    };
                    tokio::time::sleep(r.hold).await;
                    if n <= r.fail_first {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        http::StatusCode::NO_CONTENT
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, self)
    }

    fn deliveries(&self) -> Vec<(http::HeaderMap, bytes::Bytes)> {
        self.deliveries.lock().unwrap().clone()
    }
}

/// The signature as the Standard Webhooks specification defines it, computed here.
fn expected_signature(key: &[u8], headers: &http::HeaderMap, body: &[u8]) -> String {
    let id = headers["webhook-id"].to_str().unwrap();
    let ts = headers["webhook-timestamp"].to_str().unwrap();
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key);
    let signed = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
    let tag = aws_lc_rs::hmac::sign(&key, &signed);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_signed_retried_and_dropped_when_their_receiver_falls_behind() {
    let key = b"a-webhook-signing-key-of-32-bytes";
    let secret = format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    );
    let (flaky_url, flaky) = Receiver {
        fail_first: 2,
        ..Default::default()
    }
    .start()
    .await;
    let (slow_url, slow) = Receiver {
        hold: Duration::from_secs(30),
        ..Default::default()
    }
    .start()
    .await;
    let h = Harness::start(Options {
        upstream_extra: format!(
            r#"
[[events.webhook]]
url = "{flaky_url}"
on = ["logged_out"]
secret = "{secret}"

[[events.webhook]]
url = "{slow_url}"
secret = "{secret}"
queue = 1
"#
        ),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let post = |path: &'static str| {
        let c = h.client.clone();
        let url = h.admin(path);
        async move { c.post(url).send().await.unwrap().status() }
    };
    assert_eq!(post("/credentials/api/logout").await, 200);

    // Delivered on the third attempt (two 500s first), each attempt signed, with one id.
    eventually!("three delivery attempts", flaky.deliveries().len() >= 3);
    let got = flaky.deliveries();
    let id = got[0].0["webhook-id"].clone();
    for (headers, body) in &got {
        assert_eq!(headers["webhook-id"], id);
        assert_eq!(
            headers["webhook-signature"].to_str().unwrap(),
            expected_signature(key, headers, body)
        );
        let payload: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(payload["type"], "logged_out", "only the kinds in `on`");
        assert_eq!(payload["data"]["credential"], "api");
    }
    let text = h.metrics().await;
    assert_eq!(
        support::metric(
            &text,
            "bearerd_webhook_deliveries_total{result=\"retried\"}"
        ),
        Some(2.0),
        "{text}"
    );
    eventually!("the delivery counted", {
        let text = h.metrics().await;
        support::metric(
            &text,
            "bearerd_webhook_deliveries_total{result=\"delivered\"}",
        ) == Some(1.0)
    });

    // The slow receiver holds its first delivery; its queue of one fills, and the rest
    // are dropped and counted, while requests go on being served.
    for _ in 0..5 {
        assert_eq!(post("/credentials/api/refresh").await, 200);
        assert_eq!(h.get("/api/x").await.status(), 200);
    }
    let text = h.metrics().await;
    let dropped = support::metric(&text, "bearerd_events_dropped_total{sink=\"webhook\"}").unwrap();
    assert!(dropped >= 3.0, "{text}");
    assert!(slow.deliveries().len() <= 2);
    for (_, body) in flaky.deliveries().iter().chain(slow.deliveries().iter()) {
        assert_no_token(&h, &String::from_utf8_lossy(body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_audit_file_records_each_use_of_a_credential_without_the_token() {
    let dir = std::env::temp_dir().join(format!("bearerd-audit-{}", support::rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("audit.jsonl");
    let h = Harness::start(Options {
        upstream_extra: format!(
            "\n[events]\naudit_file = {:?}\n",
            path.display().to_string()
        ),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = h.get("/api/items").await;
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_string());
    }
    eventually!(
        "three audit records",
        std::fs::read_to_string(&path).is_ok_and(|t| t.lines().count() >= 3)
    );
    let text = std::fs::read_to_string(&path).unwrap();
    for (line, id) in text.lines().zip(&ids) {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(r["credential"], "api");
        assert_eq!(r["upstream"], "api");
        assert_eq!(r["status"], 200);
        assert_eq!(r["method"], "GET");
        assert_eq!(r["request_id"], id.as_str());
        assert!(r["at"].as_str().unwrap().ends_with('Z'));
    }
    assert_no_token(&h, &text);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "readable by its owner only");
}
