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
//!   second (the audit file's hand-off, with no wake per request); a full buffer drops new
//!   spans and counts them (`bearerd_spans_total{result="dropped"}`).
//!
//! Its own small exporter rather than the `opentelemetry` SDK: four span kinds, one
//! propagation format and one protocol, on the reqwest client bearerd already has.

use std::borrow::Cow;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::IntCounterVec;
use rand::RngCore;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::TelemetryConfig;
use crate::metrics::SpanResult;

/// Spans waiting for the exporter; beyond this, new ones are dropped (and counted).
const MAX_QUEUED: usize = 8192;
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
        AttrValue::Str(Cow::Owned(s.to_string()))
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

    fn to_otlp(&self) -> Value {
        let nanos = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
                .to_string()
        };
        let attributes: Vec<Value> = self
            .attributes
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Str(s) => json!({ "stringValue": s }),
                    // OTLP/JSON writes 64-bit integers as strings.
                    AttrValue::Int(n) => json!({ "intValue": n.to_string() }),
                    AttrValue::Bool(b) => json!({ "boolValue": b }),
                };
                json!({ "key": k, "value": value })
            })
            .collect();
        let mut span = json!({
            "traceId": hex(&self.context.trace_id),
            "spanId": hex(&self.context.span_id),
            "name": self.name,
            "kind": self.kind.otlp(),
            "startTimeUnixNano": nanos(self.start),
            "endTimeUnixNano": nanos(self.end.unwrap_or(self.start)),
            "attributes": attributes,
            "status": match &self.error {
                Some(m) => json!({ "code": 2, "message": m }),
                None => json!({ "code": 0 }),
            },
        });
        if let Some(p) = self.parent {
            span["parentSpanId"] = Value::String(hex(&p));
        }
        span
    }
}

/// Makes spans and hands finished ones to the exporter.
pub struct Tracer {
    queue: Mutex<Vec<Span>>,
    results: IntCounterVec,
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

    fn body(&self, spans: &[Span]) -> Value {
        json!({ "resourceSpans": [{
            "resource": { "attributes": [
                { "key": "service.name", "value": { "stringValue": self.service_name } },
            ]},
            "scopeSpans": [{
                "scope": { "name": "bearerd", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans.iter().map(Span::to_otlp).collect::<Vec<_>>(),
            }],
        }]})
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
                _ = shutdown.changed() => true,
            };
            let spans = self.tracer.take();
            for batch in spans.chunks(BATCH) {
                let body = self.body(batch);
                let mut sent = false;
                for _ in 0..2 {
                    let r = client.post(self.url.clone()).json(&body).send().await;
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
        let otlp = child.to_otlp();
        assert_eq!(otlp["parentSpanId"], hex(&root.context().span_id));
        assert_eq!(otlp["kind"], 1);
    }
}
