//! An API server for the demo and the tests. It accepts only tokens the token server issued
//! and still considers valid, records every request (headers and body), can reject every
//! token on command, and serves a slow SSE stream at `/sse`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::json;

use crate::token_server::TokenServerState;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The token's serial at the token server, when it was valid.
    pub token_serial: Option<u64>,
    /// The end user the token was issued for (per-subject tokens).
    pub token_subject: Option<String>,
}

pub struct UpstreamState {
    tokens: Arc<TokenServerState>,
    requests: AtomicUsize,
    unauthorized: AtomicUsize,
    reject_all: AtomicBool,
    /// Answer 401 to every token of this subject.
    reject_subject: Mutex<Option<String>>,
    seen: Mutex<Vec<SeenRequest>>,
    /// Delay between SSE events.
    pub sse_gap: Mutex<Duration>,
    /// When set, the upstream is an RFC 9728 protected resource of this authorization
    /// server: its 401s name the metadata, served at /.well-known/oauth-protected-resource.
    pub authorization_server: Mutex<Option<String>>,
    /// Answer 403 `insufficient_scope` naming this scope to tokens without it.
    pub required_scope: Mutex<Option<String>>,
    forbidden: AtomicUsize,
    /// DPoP-bound tokens (RFC 9449 §7): the proofs that come with them, and the nonce
    /// this resource asks for (`require_dpop_nonce`).
    dpop: Mutex<crate::dpop::DpopVerifier>,
}

pub struct Upstream {
    pub addr: SocketAddr,
    pub state: Arc<UpstreamState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    /// Starts on 127.0.0.1 with a random port; must be called inside a Tokio runtime.
    pub async fn start(tokens: Arc<TokenServerState>) -> std::io::Result<Upstream> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(UpstreamState::new(tokens));
        let app = Upstream::router(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Upstream { addr, state, task })
    }

    /// The router alone, for callers that serve it themselves (e.g. over TLS).
    pub fn router(state: Arc<UpstreamState>) -> Router {
        Router::new().fallback(handle).with_state(state)
    }
}

impl UpstreamState {
    pub fn new(tokens: Arc<TokenServerState>) -> Self {
        UpstreamState {
            tokens,
            requests: AtomicUsize::new(0),
            unauthorized: AtomicUsize::new(0),
            reject_all: AtomicBool::new(false),
            reject_subject: Mutex::new(None),
            seen: Mutex::new(Vec::new()),
            sse_gap: Mutex::new(Duration::from_secs(3)),
            authorization_server: Mutex::new(None),
            required_scope: Mutex::new(None),
            forbidden: AtomicUsize::new(0),
            dpop: Mutex::new(crate::dpop::DpopVerifier::default()),
        }
    }
    /// How many requests got 403 `insufficient_scope`.
    pub fn forbidden(&self) -> usize {
        self.forbidden.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn unauthorized(&self) -> usize {
        self.unauthorized.load(Ordering::SeqCst)
    }
    /// Answer 401 to every request, whatever its token.
    pub fn reject_all(&self, on: bool) {
        self.reject_all.store(on, Ordering::SeqCst);
    }
    /// Answer 401 to every token issued for this subject (none: stop).
    pub fn reject_subject(&self, subject: Option<&str>) {
        *self.reject_subject.lock().unwrap() = subject.map(str::to_string);
    }
    /// Proofs for DPoP-bound tokens must carry this nonce (a 401 `use_dpop_nonce` with
    /// the nonce answers one without it).
    pub fn require_dpop_nonce(&self, nonce: &str) {
        self.dpop.lock().unwrap().nonce = Some(nonce.to_string());
    }
    /// DPoP proofs accepted, refused, and answered with the nonce; the last refusal.
    pub fn dpop_counts(&self) -> (usize, usize, usize, Option<String>) {
        self.dpop.lock().unwrap().counts()
    }
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

async fn handle(State(state): State<Arc<UpstreamState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let authorization_server = state.authorization_server.lock().unwrap().clone();
    if let Some(server) = &authorization_server {
        if parts.uri.path() == "/.well-known/oauth-protected-resource" {
            return Json(json!({
                "resource": format!("http://{host}/"),
                "authorization_servers": [server],
            }))
            .into_response();
        }
    }
    state.requests.fetch_add(1, Ordering::SeqCst);
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    let authorization = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (scheme, token) = match authorization.split_once(' ') {
        Some((scheme, token)) => (scheme, Some(token.to_string())),
        None => ("", None),
    };
    let bound_to = token.as_deref().and_then(|t| state.tokens.jkt_of(t));
    if let Some(rejection) =
        dpop_rejection(&state, &parts, &host, scheme, token.as_deref(), bound_to)
    {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        return rejection;
    }
    let serial = token.as_deref().and_then(|t| state.tokens.validate(t));
    let token_subject = token.as_deref().and_then(|t| state.tokens.subject_of(t));
    let subject_rejected =
        token_subject.is_some() && *state.reject_subject.lock().unwrap() == token_subject;
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    state.seen.lock().unwrap().push(SeenRequest {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
        token_serial: serial,
        token_subject: token_subject.clone(),
    });
    let Some(serial) =
        serial.filter(|_| !state.reject_all.load(Ordering::SeqCst) && !subject_rejected)
    else {
        state.unauthorized.fetch_add(1, Ordering::SeqCst);
        let challenge = match authorization_server {
            Some(_) => format!(
                "Bearer error=\"invalid_token\", resource_metadata=\"http://{host}/.well-known/oauth-protected-resource\""
            ),
            None => "Bearer error=\"invalid_token\"".to_string(),
        };
        return (
            StatusCode::UNAUTHORIZED,
            [("www-authenticate", challenge)],
            Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    };
    let required = state.required_scope.lock().unwrap().clone();
    if let (Some(scope), Some(token)) = (required, token.as_deref()) {
        if !state.tokens.scopes_of(token).contains(&scope) {
            state.forbidden.fetch_add(1, Ordering::SeqCst);
            let challenge =
                format!("Bearer error=\"insufficient_scope\", scope=\"demo.read {scope}\"");
            return (
                StatusCode::FORBIDDEN,
                [("www-authenticate", challenge)],
                Json(json!({"error": "insufficient_scope"})),
            )
                .into_response();
        }
    }
    if parts.uri.path().ends_with("/set-cookies") {
        // An upstream that sets cookies, one of them named like bearerd's console session.
        return Response::builder()
            .header("set-cookie", "bearerd_console=planted-by-upstream; Path=/")
            .header("set-cookie", "theme=dark; Path=/")
            .body(Body::from("{}"))
            .unwrap_or_default();
    }
    if parts.uri.path().ends_with("/sse") {
        let gap = *state.sse_gap.lock().unwrap();
        let events = futures::stream::unfold(0u32, move |n| async move {
            match n {
                0 => Some((Ok::<_, std::io::Error>(Bytes::from("data: first\n\n")), 1)),
                1 => {
                    tokio::time::sleep(gap).await;
                    Some((Ok(Bytes::from("data: second\n\n")), 2))
                }
                _ => None,
            }
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .header("cache-control", "no-cache")
            .body(Body::from_stream(events))
            .unwrap_or_default();
    }
    Json(json!({
        "method": parts.method.as_str(),
        "target": target,
        "host": parts.headers.get("host").and_then(|v| v.to_str().ok()),
        "token_serial": serial,
        "token_subject": token_subject,
        "body_bytes": body.len(),
    }))
    .into_response()
}

/// RFC 9449 §7: a DPoP-bound token only in the DPoP scheme, with a proof of its key for
/// this request (and the nonce, when one is asked for); a bearer token never in the DPoP
/// scheme. `None`: the request may go on.
fn dpop_rejection(
    state: &UpstreamState,
    parts: &axum::http::request::Parts,
    host: &str,
    scheme: &str,
    token: Option<&str>,
    bound_to: Option<String>,
) -> Option<Response> {
    let challenge = |error: &str| {
        (
            StatusCode::UNAUTHORIZED,
            [(
                "www-authenticate",
                format!("DPoP algs=\"ES256\", error=\"{error}\""),
            )],
            Json(json!({ "error": error })),
        )
            .into_response()
    };
    let Some(jkt) = bound_to else {
        return (scheme == "DPoP").then(|| challenge("invalid_token"));
    };
    if scheme != "DPoP" {
        return Some(challenge("invalid_token"));
    }
    let Some(proof) = parts.headers.get("dpop").and_then(|v| v.to_str().ok()) else {
        return Some(challenge("invalid_dpop_proof"));
    };
    let htu = format!("http://{host}{}", parts.uri.path());
    let verified = state
        .dpop
        .lock()
        .unwrap()
        .verify(proof, parts.method.as_str(), &htu, token);
    match verified {
        Ok(k) if k == jkt => None,
        Ok(_) => Some(challenge("invalid_token")),
        Err(crate::dpop::ProofRefused::NeedsNonce(nonce)) => {
            let mut r = challenge("use_dpop_nonce");
            r.headers_mut()
                .insert("dpop-nonce", nonce.parse().expect("a header value"));
            Some(r)
        }
        Err(crate::dpop::ProofRefused::Invalid(_)) => Some(challenge("invalid_dpop_proof")),
    }
}
