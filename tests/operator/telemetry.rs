//! Traces (`[telemetry] otlp_endpoint`) against a collector stand-in that keeps every span:
//! the app's trace is joined and its `traceparent` forwarded unchanged, and a request's
//! wait on the single-flight refresh, its 401 replay and the token requests are spans.

use std::time::{Duration, Instant};

use testkit::otlp::{attribute, Collector};

use super::support::{Harness, Options};

const APP_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const APP_SPAN: &str = "00f067aa0ba902b7";

/// Waits (up to 20 s) for the collector to hold a span `find` picks.
async fn span_eventually(
    collector: &Collector,
    what: &str,
    find: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = collector.state.spans().into_iter().find(|s| find(s)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "no span {what}; the collector has {:#?}",
            collector.state.spans()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn telemetry(collector: &Collector) -> String {
    format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nservice_name = \"bearerd-under-test\"\n",
        collector.endpoint()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn spans_join_the_apps_trace_and_show_the_wait_the_replay_and_the_token_requests() {
    let collector = Collector::start().await.unwrap();
    let h = Harness::start(Options {
        // The first request comes while the first token request is still out: it waits.
        token_delay: Duration::from_millis(400),
        upstream_extra: telemetry(&collector),
        ..Default::default()
    })
    .await;

    // Joined: the request's span is a child of the app's, which goes upstream unchanged.
    let traceparent = format!("00-{APP_TRACE}-{APP_SPAN}-01");
    let r = h
        .client
        .get(h.url("/api/first"))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = h.upstream.state.seen();
    assert_eq!(seen.last().unwrap().headers["traceparent"], traceparent);
    let request = span_eventually(&collector, "for the app's request", |s| {
        s["name"] == "proxy request" && s["traceId"] == APP_TRACE
    })
    .await;
    assert_eq!(request["parentSpanId"], APP_SPAN);
    assert_eq!(request["kind"], 2);
    assert_eq!(
        attribute(&request, "url.path").as_deref(),
        Some("/api/first")
    );
    assert_eq!(
        attribute(&request, "bearerd.upstream").as_deref(),
        Some("api")
    );
    assert_eq!(
        attribute(&request, "http.response.status_code").as_deref(),
        Some("200")
    );
    let wait = span_eventually(&collector, "for the wait on the first token", |s| {
        s["name"] == "single-flight wait" && s["traceId"] == APP_TRACE
    })
    .await;
    assert_eq!(wait["parentSpanId"], request["spanId"]);
    span_eventually(&collector, "for the first token request", |s| {
        s["name"] == "token request"
            && attribute(s, "bearerd.result").as_deref() == Some("success")
            && attribute(s, "bearerd.credential").as_deref() == Some("api")
    })
    .await;

    // Without a traceparent, bearerd starts the trace and the upstream joins it.
    let r = h.get("/api/second").await;
    assert_eq!(r.status(), 200);
    let sent = h.upstream.state.seen().last().unwrap().headers["traceparent"]
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts.len(), 4, "{sent}");
    assert_ne!(parts[1], APP_TRACE);
    let second = span_eventually(&collector, "for the request without a traceparent", |s| {
        s["name"] == "proxy request" && s["traceId"] == parts[1]
    })
    .await;
    assert_eq!(second["spanId"], parts[2]);
    assert!(second.get("parentSpanId").is_none(), "{second}");

    // A 401: the replay is a span of the request, and a token request says why it ran.
    h.tokens.state.revoke_access_tokens();
    let r = h.get("/api/third").await;
    assert_eq!(r.status(), 200);
    let third = span_eventually(&collector, "for the replayed request", |s| {
        s["name"] == "proxy request" && attribute(s, "url.path").as_deref() == Some("/api/third")
    })
    .await;
    assert_eq!(
        attribute(&third, "bearerd.replayed").as_deref(),
        Some("true")
    );
    let replay = span_eventually(&collector, "for the 401 replay", |s| {
        s["name"] == "401 replay" && s["parentSpanId"] == third["spanId"]
    })
    .await;
    assert_eq!(replay["traceId"], third["traceId"]);
    assert_eq!(
        attribute(&replay, "http.response.status_code").as_deref(),
        Some("200")
    );
    span_eventually(&collector, "for the token request after the 401", |s| {
        s["name"] == "token request" && attribute(s, "bearerd.trigger").as_deref() == Some("on_401")
    })
    .await;
    assert!(collector
        .state
        .services()
        .iter()
        .all(|s| s == "bearerd-under-test"));
    // No span holds a token.
    let all = serde_json::to_string(&collector.state.spans()).unwrap();
    assert!(!all.contains("Bearer") && !all.contains(testkit::token_server::CLIENT_SECRET));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_collector_that_refuses_loses_spans_but_never_a_request() {
    let collector = Collector::start().await.unwrap();
    collector.state.refuse_next(1000);
    let h = Harness::start(Options {
        upstream_extra: telemetry(&collector),
        ..Default::default()
    })
    .await;
    h.wait_ready().await;
    for _ in 0..20 {
        assert_eq!(h.get("/api/items").await.status(), 200);
    }
    // Refused batches are tried once more, then counted; nothing else happens.
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = r#"bearerd_spans_total{result="failed"}"#;
    while super::support::metric(&h.metrics().await, failed).unwrap_or(0.0) < 20.0 {
        assert!(Instant::now() < deadline, "{}", h.metrics().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Once it takes them again, new spans arrive.
    collector.state.refuse_next(0);
    assert_eq!(h.get("/api/after").await.status(), 200);
    span_eventually(&collector, "after the collector came back", |s| {
        attribute(s, "url.path").as_deref() == Some("/api/after")
    })
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_telemetry_nothing_is_traced_and_no_traceparent_is_added() {
    let h = Harness::start(Options::default()).await;
    h.wait_ready().await;
    assert_eq!(h.get("/api/items").await.status(), 200);
    let seen = h.upstream.state.seen();
    assert!(!seen.last().unwrap().headers.contains_key("traceparent"));
    assert!(!h.metrics().await.contains("bearerd_spans_total{"));
    h.stop().await;
}
