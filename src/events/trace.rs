//! OpenTelemetry traces, behind `[telemetry] otlp_endpoint` (off by default): a span per
//! proxied request, per wait on a credential's single-flight refresh, per 401 replay and
//! per token request, exported as OTLP/HTTP JSON (`POST {endpoint}/v1/traces`).
//!
//! - **Joined, not rewritten.** A request's W3C `traceparent` makes its span a child of the
//!   app's, and goes upstream unchanged; a request without one starts a trace, and the
//!   upstream gets bearerd's span as its parent.
//! - **Off costs one branch.** With no endpoint there is no tracer: the proxy checks one
//!   `Option` per request and creates nothing.
//! - **On never waits.** A finished span goes into a buffer the exporter takes every
//!   second, or as soon as a batch of 512 is in it (one wake per batch, never one per
//!   request); a full buffer drops new spans and counts them
//!   (`bearerd_spans_total{result="dropped"}`).
//!
//! Its own small exporter rather than the `opentelemetry` SDK: four span kinds, one
//! propagation format and one protocol, on the reqwest client bearerd already has.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::IntCounterVec;
use rand::RngCore;
#[cfg(test)]
use serde_json::Value;
use tokio::sync::watch;

use crate::config::TelemetryConfig;
use crate::metrics::SpanResult;

/// Spans waiting for the exporter; beyond this, new ones are dropped (and counted).
const MAX_QUEUED: usize = 16384;
/// Spans per export request.
const BATCH: usize = 512;
const EVERY: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// A span's place in a trace (W3C Trace Context).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

fn hex_into(out: &mut [u8], text: &[u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    for (i, pair) in text.chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SpanContext {
    /// A `traceparent` header (`00-<trace-id>-<parent-id>-<flags>`); none when malformed or
    /// all-zero, as the spec says a receiver must then start a new trace.
    pub fn parse(traceparent: &[u8]) -> Option<SpanContext> {
        let parts: Vec<&[u8]> = traceparent.split(|b| *b == b'-').collect();
        let [version, trace, span, flags, rest @ ..] = parts.as_slice() else {
            return None;
        };
        // Version 00 has exactly four fields; a later version may add more after them.
        let mut v = [0u8; 1];
        hex_into(&mut v, version)?;
        if v[0] == 0xff || (v[0] == 0 && !rest.is_empty()) {
            return None;
        }
        let mut c = SpanContext {
            trace_id: [0; 16],
            span_id: [0; 8],
            sampled: false,
        };
        hex_into(&mut c.trace_id, trace)?;
        hex_into(&mut c.span_id, span)?;
        let mut f = [0u8; 1];
        hex_into(&mut f, flags)?;
        c.sampled = f[0] & 1 == 1;
        let zero = c.trace_id == [0; 16] || c.span_id == [0; 8];
        (!zero).then_some(c)
    }

    /// The `traceparent` that makes a request a child of this span.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

/// `kind` of an OTLP span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    /// The request bearerd received.
    Server,
    /// A request bearerd made (a token request).
    Client,
}

impl SpanKind {
    fn otlp(self) -> u8 {
        match self {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
        }
    }
}

#[derive(Debug, Clone)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    /// A name bearerd holds already (an upstream's, a credential's): no copy per span.
    Shared(Arc<str>),
    Int(i64),
    Bool(bool),
}

impl From<&'static str> for AttrValue {
    fn from(s: &'static str) -> Self {
        AttrValue::Str(Cow::Borrowed(s))
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Cow::Owned(s))
    }
}
impl From<&Arc<str>> for AttrValue {
    fn from(s: &Arc<str>) -> Self {
        AttrValue::Shared(Arc::clone(s))
    }
}
impl From<u64> for AttrValue {
    fn from(n: u64) -> Self {
        AttrValue::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<u16> for AttrValue {
    fn from(n: u16) -> Self {
        AttrValue::Int(i64::from(n))
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

/// A span being timed; [`Tracer::end`] records it.
#[derive(Debug)]
pub struct Span {
    context: SpanContext,
    parent: Option<[u8; 8]>,
    name: &'static str,
    kind: SpanKind,
    start: SystemTime,
    end: Option<SystemTime>,
    attributes: Vec<(&'static str, AttrValue)>,
    error: Option<String>,
}

impl Span {
    pub fn context(&self) -> SpanContext {
        self.context
    }

    /// It started its trace (no valid parent came with the request).
    pub fn is_root(&self) -> bool {
        self.parent.is_none()
    }

    pub fn set(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        self.attributes.push((key, value.into()));
    }

    /// Marks it failed (status ERROR) with why.
    pub fn fail(&mut self, message: impl Into<String>) {
        self.error = Some(message.into());
    }

    /// Appends the span as OTLP/JSON: written straight into the batch's buffer (a tree of
    /// `serde_json::Value`s per span cost more than the request it describes).
    fn write_otlp(&self, out: &mut String) {
        use std::fmt::Write;
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        };
        out.push_str("{\"traceId\":\"");
        push_hex(out, &self.context.trace_id);
        out.push_str("\",\"spanId\":\"");
        push_hex(out, &self.context.span_id);
        out.push('"');
        if let Some(p) = self.parent {
            out.push_str(",\"parentSpanId\":\"");
            push_hex(out, &p);
            out.push('"');
        }
        out.push_str(",\"name\":");
        push_json_str(out, self.name);
        // OTLP/JSON writes 64-bit integers as strings.
        let _ = write!(
            out,
            ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
            self.kind.otlp(),
            nanos(self.start),
            nanos(self.end.unwrap_or(self.start))
        );
        for (i, (k, v)) in self.attributes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str("{\"key\":");
            push_json_str(out, k);
            out.push_str(",\"value\":");
            match v {
                AttrValue::Str(s) => {
                    out.push_str("{\"stringValue\":");
                    push_json_str(out, s);
                    out.push('}');
                }
                AttrValue::Shared(s) => {
                    out.push_str("{\"stringValue\":");
                    push_json_str(out, s);
                    out.push('}');
                }
                AttrValue::Int(n) => {
                    let _ = write!(out, "{{\"intValue\":\"{n}\"}}");
                }
                AttrValue::Bool(b) => {
                    let _ = write!(out, "{{\"boolValue\":{b}}}");
                }
            }
            out.push('}');
        }
        out.push_str("],\"status\":");
        match &self.error {
            Some(m) => {
                out.push_str("{\"code\":2,\"message\":");
                push_json_str(out, m);
                out.push('}');
            }
            None => out.push_str("{\"code\":0}"),
        }
        out.push('}');
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
}

/// A JSON string literal (RFC 8259 escapes).
fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Makes spans and hands finished ones to the exporter.
pub struct Tracer {
    queue: Mutex<Vec<Span>>,
    results: IntCounterVec,
    /// Wakes the exporter when a whole batch waits.
    batch_ready: tokio::sync::Notify,
}

/// Sends the tracer's spans to the collector; run on the control runtime.
pub struct Exporter {
    tracer: Arc<Tracer>,
    url: url::Url,
    service_name: String,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // Never all zero: that id means "none".
    while b.iter().all(|x| *x == 0) {
        rand::thread_rng().fill_bytes(&mut b);
    }
    b
}

impl Tracer {
    /// The tracer and its exporter, when `[telemetry]` names an endpoint.
    pub fn exporter(config: &TelemetryConfig, results: IntCounterVec) -> Option<Exporter> {
        let endpoint = config.otlp_endpoint.clone()?;
        for r in SpanResult::ALL {
            results.with_label_values(&[r.as_str()]);
        }
        let url = if endpoint.path().ends_with("/v1/traces") {
            endpoint
        } else {
            let mut u = endpoint;
            let path = format!("{}/v1/traces", u.path().trim_end_matches('/'));
            u.set_path(&path);
            u
        };
        Some(Exporter {
            tracer: Arc::new(Tracer {
                queue: Mutex::new(Vec::new()),
                results,
                batch_ready: tokio::sync::Notify::new(),
            }),
            url,
            service_name: config.service_name.clone(),
        })
    }

    /// A span starting now: a child of `parent`, or the root of a new trace.
    pub fn start(&self, name: &'static str, kind: SpanKind, parent: Option<&SpanContext>) -> Span {
        let context = SpanContext {
            trace_id: parent.map_or_else(random_bytes, |p| p.trace_id),
            span_id: random_bytes(),
            sampled: parent.is_none_or(|p| p.sampled),
        };
        Span {
            context,
            parent: parent.map(|p| p.span_id),
            name,
            kind,
            start: SystemTime::now(),
            end: None,
            attributes: Vec::new(),
            error: None,
        }
    }

    /// Ends the span now and queues it (a span of an unsampled trace is not kept).
    pub fn end(&self, mut span: Span) {
        if !span.context.sampled {
            return;
        }
        span.end = Some(SystemTime::now());
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED {
            drop(q);
            self.count(SpanResult::Dropped, 1);
            return;
        }
        q.push(span);
        let full_batch = q.len().is_multiple_of(BATCH);
        drop(q);
        if full_batch {
            self.batch_ready.notify_one();
        }
    }

    fn count(&self, result: SpanResult, n: usize) {
        self.results
            .with_label_values(&[result.as_str()])
            .inc_by(n as u64);
    }

    fn take(&self) -> Vec<Span> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Exporter {
    pub fn tracer(&self) -> Arc<Tracer> {
        Arc::clone(&self.tracer)
    }

    /// One export request's body (OTLP/JSON `ExportTraceServiceRequest`).
    fn body(&self, spans: &[Span]) -> String {
        let mut out = String::with_capacity(256 + spans.len() * 512);
        out.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":");
        push_json_str(&mut out, &self.service_name);
        out.push_str("}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"bearerd\",\"version\":\"");
        out.push_str(env!("CARGO_PKG_VERSION"));
        out.push_str("\"},\"spans\":[");
        for (i, span) in spans.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            span.write_otlp(&mut out);
        }
        out.push_str("]}]}]}");
        out
    }

    /// Every second (and once more at shutdown), sends what was queued; a batch the
    /// collector refuses is tried once more, then counted as failed.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .build()
            .unwrap_or_default();
        loop {
            let stopping = tokio::select! {
                _ = tokio::time::sleep(EVERY) => false,
                _ = self.tracer.batch_ready.notified() => false,
                _ = shutdown.changed() => true,
            };
            let spans = self.tracer.take();
            for batch in spans.chunks(BATCH) {
                let body = bytes::Bytes::from(self.body(batch));
                let mut sent = false;
                for _ in 0..2 {
                    let r = client
                        .post(self.url.clone())
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status().is_success()) {
                        sent = true;
                        break;
                    }
                }
                let result = if sent {
                    SpanResult::Exported
                } else {
                    tracing::debug!(spans = batch.len(), "the OTLP collector did not take spans");
                    SpanResult::Failed
                };
                self.tracer.count(result, batch.len());
            }
            if stopping || *shutdown.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_is_read_and_written_as_w3c_says() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(tp).unwrap();
        assert!(c.sampled);
        assert_eq!(c.traceparent().as_bytes(), tp);
        for bad in [
            &b"00-00000000000000000000000000000000-00f067aa0ba902b7-01"[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            b"00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            b"garbage",
            b"zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                SpanContext::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields: its first four are read.
        assert!(
            SpanContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x")
                .is_some_and(|c| !c.sampled)
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_names_its_parent() {
        let exporter = Tracer::exporter(
            &TelemetryConfig {
                otlp_endpoint: Some("http://127.0.0.1:4318".parse().unwrap()),
                service_name: "bearerd".into(),
            },
            IntCounterVec::new(prometheus::Opts::new("x", "x"), &["result"]).unwrap(),
        )
        .unwrap();
        assert_eq!(exporter.url.as_str(), "http://127.0.0.1:4318/v1/traces");
        let t = exporter.tracer();
        let root = t.start("proxy request", SpanKind::Server, None);
        let child = t.start("401 replay", SpanKind::Internal, Some(&root.context()));
        assert_eq!(child.context().trace_id, root.context().trace_id);
        assert_ne!(child.context().span_id, root.context().span_id);
        let mut child = child;
        child.set("url.path", "/a \"quoted\" \\ path\n".to_string());
        child.set("bearerd.generation", 7u64);
        child.fail("status 502");
        let body: Value = serde_json::from_str(&exporter.body(&[child])).unwrap();
        assert_eq!(
            body["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "bearerd"
        );
        let otlp = &body["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(otlp["parentSpanId"], hex(&root.context().span_id));
        assert_eq!(otlp["traceId"], hex(&root.context().trace_id));
        assert_eq!(otlp["kind"], 1);
        assert_eq!(
            otlp["attributes"][0]["value"]["stringValue"],
            "/a \"quoted\" \\ path\n"
        );
        assert_eq!(otlp["attributes"][1]["value"]["intValue"], "7");
        assert_eq!(otlp["status"]["code"], 2);
    }
}
