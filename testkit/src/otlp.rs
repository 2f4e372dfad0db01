//! An OTLP/HTTP collector stand-in: takes `POST /v1/traces` (JSON), keeps every span it was
//! sent, and refuses batches on command (503) to show what an exporter does then.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

#[derive(Default)]
pub struct CollectorState {
    spans: Mutex<Vec<Value>>,
    /// The next this many batches get 503.
    refuse: AtomicUsize,
    batches: AtomicUsize,
    /// Each batch's `service.name`.
    services: Mutex<Vec<String>>,
}

impl CollectorState {
    /// Every span received so far, as OTLP/JSON objects.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }
    /// The spans with this name.
    pub fn named(&self, name: &str) -> Vec<Value> {
        self.spans()
            .into_iter()
            .filter(|s| s["name"] == name)
            .collect()
    }
    pub fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }
    pub fn refuse_next(&self, n: usize) {
        self.refuse.store(n, Ordering::SeqCst);
    }
    pub fn services(&self) -> Vec<String> {
        self.services.lock().unwrap().clone()
    }
}

/// A span's attribute, as a string (string, int or bool values).
pub fn attribute(span: &Value, key: &str) -> Option<String> {
    let attrs = span["attributes"].as_array()?;
    let a = attrs.iter().find(|a| a["key"] == key)?;
    let v = &a["value"];
    v["stringValue"]
        .as_str()
        .map(str::to_string)
        .or_else(|| v["intValue"].as_str().map(str::to_string))
        .or_else(|| v["boolValue"].as_bool().map(|b| b.to_string()))
}

pub struct Collector {
    pub addr: SocketAddr,
    pub state: Arc<CollectorState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn traces(
    State(state): State<Arc<CollectorState>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let refused = state
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if refused {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let json = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    if !json {
        return StatusCode::UNSUPPORTED_MEDIA_TYPE;
    }
    state.batches.fetch_add(1, Ordering::SeqCst);
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        state.services.lock().unwrap().push(service);
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                state.spans.lock().unwrap().push(span.clone());
            }
        }
    }
    StatusCode::OK
}

impl Collector {
    /// Starts on 127.0.0.1 with a random port; must be called inside a Tokio runtime.
    pub async fn start() -> std::io::Result<Collector> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(CollectorState::default());
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Collector { addr, state, task })
    }

    /// The base URL to give `[telemetry] otlp_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}
