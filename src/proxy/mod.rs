//! The data path: Pingora's `ProxyHttp` for bearerd. Route, take the token from the slot,
//! rewrite the request (with a DPoP proof for a bound token, `dpop`), replay once after a
//! 401 (and once for an upstream's DPoP nonce), stream the response back untouched. An MCP
//! client whose user must connect is asked to in MCP's own terms (`elicitation`).

mod arena;
pub mod boundary;
pub mod dpop;
pub mod elicitation;
pub mod problem;
pub mod resolve;
pub mod route;
pub mod target;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::protocols::tls::CaType;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType};

use crate::config::UpstreamConfig;
use crate::events::trace::{Span, SpanContext, SpanKind, Tracer};
use crate::metrics::{Listener, Metrics, Outcome401};
use crate::token::subject::{
    InvalidSubject, SubjectKey, SubjectRegistry, SubjectUnavailable, TooManyNewSubjects,
    UserJwtRejected,
};
use crate::token::{
    CredentialSlot, ReplayDecision, StepUpDecision, TokenSnapshot, TokenUnavailable,
};
use problem::Problem;
use resolve::ResolvedAddr;
use route::RouteTable;

/// The error type that asks Pingora to replay the request after a 401.
const REPLAY_AFTER_401: ErrorType = ErrorType::Custom("bearerd: replay after 401");
/// The error type for a user grant's 403 `insufficient_scope`: answered `insufficient-scope`.
const STEP_UP_LOGIN: ErrorType = ErrorType::Custom("bearerd: step-up needs a login");
/// The error type for requests bearerd answered itself (already written).
const ANSWERED: ErrorType = ErrorType::Custom("bearerd: answered");

/// One upstream with everything the data path needs, built once at startup.
pub struct Upstream {
    pub config: UpstreamConfig,
    pub name: Arc<str>,
    pub slot: Arc<CredentialSlot>,
    /// Set when the credential is per-subject: the request's subject header picks the slot.
    pub subjects: Option<Arc<SubjectRegistry>>,
    /// Shared with the tools' views of this upstream, which it keeps resolved.
    pub addr: Arc<ResolvedAddr>,
    /// Proofs for DPoP-bound tokens, and the upstream's nonce (shared with tool views).
    dpop: Arc<dpop::UpstreamDpop>,
    /// Tools with a credential of their own (MCP's `Mcp-Name`): the tool's name and this
    /// upstream with that credential. Empty for most upstreams, which then pay nothing.
    tools: Vec<(HeaderValue, Arc<Upstream>)>,
    ca: Option<Arc<CaType>>,
    authority: HeaderValue,
    pool_key: u64,
    /// Metric handles resolved once, so counting a request is an atomic add, not a
    /// label lookup.
    status_counters: Vec<std::sync::OnceLock<prometheus::IntCounter>>,
    requests_total: prometheus::IntCounterVec,
    duration: prometheus::Histogram,
}

/// An upstream of a config that cannot be set up, by name.
#[derive(Debug, thiserror::Error)]
#[error("upstream {name}: {source}")]
pub struct UpstreamBuildError {
    pub name: String,
    pub source: UpstreamError,
}

/// Each upstream of `config` with its credential's slot (and registry, when per-subject);
/// `credentials` are the config's, in its order.
pub fn build_upstreams(
    config: &crate::config::Config,
    credentials: &[crate::token::engine::CredentialParts],
    metrics: &Metrics,
) -> Result<Vec<Arc<Upstream>>, UpstreamBuildError> {
    config
        .upstreams
        .iter()
        .map(|u| {
            let credential = |index: usize| {
                let parts = &credentials[index];
                (Arc::clone(&parts.credential.slot), parts.registry.clone())
            };
            let failed = |source| UpstreamBuildError {
                name: u.name.clone(),
                source,
            };
            let (slot, registry) = credential(u.credential);
            metrics.add_upstream(&u.name);
            let mut upstream = Upstream::new(u.clone(), slot, registry, metrics).map_err(failed)?;
            let tools = u
                .tools
                .iter()
                .map(|(tool, index)| {
                    let (slot, registry) = credential(*index);
                    (tool.clone(), upstream.with_credential(slot, registry))
                })
                .collect();
            upstream.set_tools(tools).map_err(failed)?;
            Ok(Arc::new(upstream))
        })
        .collect()
}

/// Why an upstream cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    CaFile(#[from] crate::material::ca::CaFileError),
    #[error("{0:?} is not a valid Host header")]
    Authority(String),
    #[error("tool {0:?} cannot be an Mcp-Name header value")]
    Tool(String),
}

impl Upstream {
    /// Resolves the upstream's name again every [`resolve::RERESOLVE_EVERY`] until
    /// `shutdown` changes (on the control runtime, never on a request).
    pub async fn keep_resolved(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.addr.resolve().await {
                tracing::warn!(upstream = &*self.name, "{e}");
            }
            tokio::select! {
                _ = tokio::time::sleep(resolve::RERESOLVE_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    fn count(&self, status: u16, elapsed: Duration) {
        match self.status_counters.get(usize::from(status)) {
            Some(cell) => cell
                .get_or_init(|| {
                    self.requests_total
                        .with_label_values(&[&self.name, status_label(status)])
                })
                .inc(),
            None => self
                .requests_total
                .with_label_values(&[&self.name, "other"])
                .inc(),
        }
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn new(
        config: UpstreamConfig,
        slot: Arc<CredentialSlot>,
        subjects: Option<Arc<SubjectRegistry>>,
        metrics: &Metrics,
    ) -> Result<Self, UpstreamError> {
        let ca = match &config.ca_file {
            Some(path) => {
                let certs = crate::material::load_ca_file(path)?;
                let wrapped: Vec<_> = certs
                    .into_iter()
                    .map(|der| {
                        pingora::utils::tls::WrappedX509::new(der, pingora::utils::tls::parse_x509)
                    })
                    .collect();
                Some(Arc::from(wrapped.into_boxed_slice()))
            }
            None => None,
        };
        let authority = HeaderValue::from_str(&config.authority)
            .map_err(|_| UpstreamError::Authority(config.authority.clone()))?;
        let pool_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            config.name.hash(&mut h);
            config.ca_file.hash(&mut h);
            h.finish()
        };
        Ok(Upstream {
            status_counters: (0..600).map(|_| std::sync::OnceLock::new()).collect(),
            duration: metrics
                .request_duration_seconds
                .with_label_values(&[&config.name]),
            requests_total: metrics.requests_total.clone(),
            pool_key,
            name: Arc::from(config.name.as_str()),
            addr: Arc::new(ResolvedAddr::new(&config.host, config.port)),
            dpop: Arc::new(dpop::UpstreamDpop::new(&config)),
            tools: Vec::new(),
            slot,
            subjects,
            ca,
            authority,
            config,
        })
    }

    /// This upstream with a tool's credential: the same address, pool and metrics.
    pub fn with_credential(
        &self,
        slot: Arc<CredentialSlot>,
        subjects: Option<Arc<SubjectRegistry>>,
    ) -> Upstream {
        Upstream {
            config: self.config.clone(),
            name: Arc::clone(&self.name),
            slot,
            subjects,
            addr: Arc::clone(&self.addr),
            dpop: Arc::clone(&self.dpop),
            tools: Vec::new(),
            ca: self.ca.clone(),
            authority: self.authority.clone(),
            pool_key: self.pool_key,
            status_counters: (0..600).map(|_| std::sync::OnceLock::new()).collect(),
            requests_total: self.requests_total.clone(),
            duration: self.duration.clone(),
        }
    }

    /// Whether requests to this upstream may spend `slot`'s token: its own, or a tool's.
    pub fn uses(&self, slot: &Arc<CredentialSlot>) -> bool {
        Arc::ptr_eq(&self.slot, slot) || self.tools.iter().any(|(_, t)| Arc::ptr_eq(&t.slot, slot))
    }

    /// Gives tools credentials of their own (`[upstreams.X.tools]`).
    pub fn set_tools(&mut self, tools: Vec<(String, Upstream)>) -> Result<(), UpstreamError> {
        self.tools = tools
            .into_iter()
            .map(|(name, view)| {
                let value = HeaderValue::from_str(&name).map_err(|_| UpstreamError::Tool(name))?;
                Ok((value, Arc::new(view)))
            })
            .collect::<Result<_, UpstreamError>>()?;
        Ok(())
    }

    /// The upstream a request goes to: the view of the tool its `Mcp-Name` names, when that
    /// tool has a credential of its own; else this one.
    fn for_request(self: Arc<Self>, req: &RequestHeader) -> Arc<Upstream> {
        if self.tools.is_empty() {
            return self;
        }
        let tool = req.headers.get(&MCP_NAME);
        match self.tools.iter().find(|(name, _)| Some(name) == tool) {
            Some((_, view)) => Arc::clone(view),
            None => self,
        }
    }
}

/// The header in which MCP's stateless transport names the tool (or resource, or prompt)
/// of a request.
static MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");

/// The upstream request: target, `Host`, the token (with its DPoP proof, when it is bound
/// to a key), and a request id that bearerd generated (one the app sent is in the request
/// already). `insert`, not `append`: this runs again on a replay. Answers the DPoP nonce
/// the proof carries.
pub fn rewrite_request(
    req: &mut RequestHeader,
    up: &Upstream,
    token: &TokenSnapshot,
    target: Option<&http::Uri>,
    request_id: Option<&HeaderValue>,
) -> pingora::Result<Option<Arc<String>>> {
    if let Some(target) = target {
        req.set_uri(target.clone());
    }
    req.insert_header(http::header::HOST, up.authority.clone())?;
    // The name in its title case, given as static bytes: from a `HeaderName`, Pingora's case
    // map would copy "authorization" into a new buffer on every request.
    let name = bytes::Bytes::from_static(b"Authorization");
    req.insert_header(name, token.header.clone())?;
    let nonce = up.dpop.add_proof(req, token)?;
    if let Some(id) = request_id {
        req.insert_header("x-request-id", id.clone())?;
    }
    Ok(nonce)
}

/// Drops the console's session cookie (the admin listener's) from a request: a browser
/// sends it to every port of the host, and an upstream must never get it.
fn strip_console_cookie(req: &mut RequestHeader) {
    let marker = crate::api::CONSOLE_COOKIE.as_bytes();
    let cookies = req.headers.get_all(http::header::COOKIE);
    if !cookies
        .iter()
        .any(|v| v.as_bytes().windows(marker.len()).any(|w| w == marker))
    {
        return;
    }
    // Bytes, not strings: another cookie's value may hold any octet and must pass as is.
    let kept: Vec<&[u8]> = cookies
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .map(<[u8]>::trim_ascii)
        .filter(|pair| {
            let name = pair
                .split(|b| *b == b'=')
                .next()
                .unwrap_or(pair)
                .trim_ascii();
            !pair.is_empty() && name != marker
        })
        .collect();
    let joined = kept.join(&b"; "[..]);
    req.remove_header(&http::header::COOKIE);
    if let (false, Ok(v)) = (joined.is_empty(), HeaderValue::from_bytes(&joined)) {
        let _ = req.insert_header(http::header::COOKIE, v);
    }
}

/// The span of a proxied request: a child of the app's `traceparent`, if it sent one.
fn request_span(tracer: &Tracer, req: &RequestHeader) -> Span {
    let parent = req
        .headers
        .get("traceparent")
        .and_then(|v| SpanContext::parse(v.as_bytes()));
    let mut span = tracer.start("proxy request", SpanKind::Server, parent.as_ref());
    // The common methods as static names: no allocation for them per span.
    let method = &req.method;
    match [
        http::Method::GET,
        http::Method::POST,
        http::Method::PUT,
        http::Method::DELETE,
        http::Method::PATCH,
        http::Method::HEAD,
        http::Method::OPTIONS,
    ]
    .iter()
    .position(|m| m == method)
    {
        Some(i) => span.set(
            "http.request.method",
            ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"][i],
        ),
        None => span.set("http.request.method", method.to_string()),
    }
    span.set("url.path", req.uri.path().to_string());
    span
}

/// Ends the request's spans (the replay's first) with what became of it.
fn end_request_spans(tracer: &Tracer, ctx: &mut RequestCtx, status: u16) {
    if let Some(mut s) = ctx.replay_span.take() {
        s.set("http.response.status_code", status);
        if status == 401 {
            s.fail("the upstream refused the newer token too");
        }
        tracer.end(s);
    }
    let Some(mut span) = ctx.span.take() else {
        return;
    };
    if let Some(u) = &ctx.upstream {
        span.set("bearerd.upstream", &u.name);
    }
    if let Some(slot) = &ctx.slot {
        span.set("bearerd.credential", &slot.name);
    }
    if let Some(t) = &ctx.token {
        span.set("bearerd.generation", t.generation);
    }
    span.set("bearerd.replayed", ctx.replayed);
    span.set("http.response.status_code", status);
    if status >= 500 || status == 0 {
        span.fail(format!("status {status}"));
    }
    tracer.end(span);
}

/// An upstream may not set the console's session cookie (it would plant a session of its
/// choosing in the operator's browser, which sends one cookie jar to every port).
fn drop_console_set_cookie(resp: &mut ResponseHeader) {
    let marker = crate::api::CONSOLE_COOKIE.as_bytes();
    let names_console = |v: &HeaderValue| {
        let name = v
            .as_bytes()
            .split(|b| *b == b'=')
            .next()
            .unwrap_or_default();
        name.trim_ascii().starts_with(marker)
    };
    let set = resp.headers.get_all(http::header::SET_COOKIE);
    if !set.iter().any(names_console) {
        return;
    }
    let kept: Vec<HeaderValue> = set.iter().filter(|v| !names_console(v)).cloned().collect();
    resp.remove_header(&http::header::SET_COOKIE);
    for v in kept {
        let _ = resp.append_header(http::header::SET_COOKIE, v);
    }
}

/// How a listener picks the upstream: by path prefix (the main listener), or the one upstream
/// it is for (an upstream's own `listen`).
pub enum Routing {
    Prefix,
    Dedicated(Arc<str>),
}

/// What a config's upstreams are, as requests see them: swapped whole by a reload. A
/// request keeps the upstream it was routed to until it ends.
pub struct LiveRoutes {
    /// In the config's order.
    pub upstreams: Arc<Vec<Arc<Upstream>>>,
    table: RouteTable,
    /// Who may spend a credential: the app, not a web page (`boundary`).
    pub boundary: boundary::Boundary,
    /// Every header that names a subject or carries a user's token, of any per-subject
    /// credential: stripped from every forwarded request, whatever its route.
    subject_headers: Arc<[HeaderName]>,
}

impl LiveRoutes {
    pub fn new(config: &crate::config::Config, upstreams: Arc<Vec<Arc<Upstream>>>) -> LiveRoutes {
        let prefixes = config
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| match &u.route {
                crate::config::RouteConfig::Prefix(p) => Some((p.clone(), i)),
                crate::config::RouteConfig::Listen(_) => None,
            })
            .collect();
        LiveRoutes {
            upstreams,
            table: RouteTable::new(prefixes),
            boundary: boundary::Boundary::of(&config.server),
            subject_headers: config
                .credentials
                .iter()
                .filter_map(|c| c.subjects.as_ref().map(|s| s.header.clone()))
                .collect(),
        }
    }
}

/// Requests between their first phase and their end, for a shutdown that waits for them
/// and for nothing else.
/// Relaxed: the count is polled by the shutdown and orders nothing else, so the per-request
/// cost is one uncontended add and one subtract.
#[derive(Clone, Default)]
pub struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn enter(&self) -> InFlightGuard {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        InFlightGuard(Arc::clone(&self.0))
    }
}

/// Counts one request as in flight until the request's context is dropped, whichever way
/// the request ends.
pub struct InFlightGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

pub struct BearerProxy {
    pub routing: Routing,
    pub in_flight: InFlight,
    /// The routes of the config in force (a reload swaps them).
    pub live: Arc<arc_swap::ArcSwap<LiveRoutes>>,
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
    /// Requests whose head (request line and headers) is larger get 431.
    pub max_request_header_bytes: usize,
    /// Connect flows, which an MCP URL elicitation starts (shared with the admin API,
    /// where their callback arrives).
    pub connects: Arc<crate::token::subject::connect::ConnectStates>,
    /// `[events] audit_file`: one record per request a credential was used for.
    pub audit: Option<crate::events::audit::AuditLog>,
    /// `[telemetry] otlp_endpoint`: spans; none, and no span is made.
    pub tracer: Option<Arc<Tracer>>,
}

#[derive(Default)]
pub struct RequestCtx {
    started: Option<Instant>,
    in_flight: Option<InFlightGuard>,
    request_id: Option<HeaderValue>,
    /// The app sent the id: it is in the upstream request already.
    request_id_from_app: bool,
    upstream: Option<Arc<Upstream>>,
    /// The routes the request was checked and routed with: a reload in the meantime does
    /// not change what it strips or where it goes.
    routes: Option<Arc<LiveRoutes>>,
    /// The slot the token comes from: the upstream's, or its subject's.
    slot: Option<Arc<CredentialSlot>>,
    /// The subject the request named (per-subject credentials).
    subject: Option<SubjectKey>,
    /// `None`: the incoming target goes upstream unchanged.
    target: Option<http::Uri>,
    token: Option<Arc<TokenSnapshot>>,
    /// Why no token could be had when the request was about to leave (its own ran out).
    token_unavailable: Option<TokenUnavailable>,
    replayed: bool,
    /// The DPoP nonce the upstream request's proof carried, and whether the request was
    /// replayed for the upstream's nonce (once, apart from a token's 401 replay).
    dpop_nonce_sent: Option<Arc<String>>,
    nonce_replayed: bool,
    outcome_401: Option<Outcome401>,
    /// The replay is a step-up's (not a 401's), or the scopes a login must ask for.
    step_up: Option<StepUpReplay>,
    /// The request's span and, after a 401, the replay's (tracing on).
    span: Option<Span>,
    replay_span: Option<Span>,
}

/// What a step-up did to the request.
enum StepUpReplay {
    Replayed,
    NeedsLogin(Vec<String>),
}

impl RequestCtx {
    fn request_id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }
}

/// The request id header. A `HeaderName` made once: looking a `&str` up parses it each time.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

thread_local! {
    /// Per thread: a random 64-bit prefix and a counter. Ids must be unique, not secret, so
    /// this replaces a 128-bit draw from the thread's CSPRNG per request.
    static REQUEST_ID_SEQUENCE: std::cell::Cell<(u64, u64)> =
        std::cell::Cell::new((rand::random(), rand::random()));
}

/// 32 hex digits, cut from the arena: always a valid header value. The first 16 are the
/// thread's random prefix, the last 16 its counter scrambled by a bijection (so ids in a
/// row do not look alike, and never repeat within a thread).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let (prefix, count) = REQUEST_ID_SEQUENCE.with(|s| {
        let (prefix, count) = s.get();
        s.set((prefix, count.wrapping_add(1)));
        (prefix, count)
    });
    let n = (u128::from(prefix) << 64) | u128::from(scramble(count));
    // Formatted on the stack, then one copy into the arena.
    let mut hex = [0u8; 32];
    for (i, b) in hex.iter_mut().enumerate() {
        *b = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
    }
    let id = arena::cut(hex.len(), |buf| buf.extend_from_slice(&hex));
    HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

/// splitmix64's finaliser: a bijection on u64, so distinct counters give distinct ids.
fn scramble(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The size of a request head as HTTP/1.1 frames it: the request line, each header line
/// and the blank line. HTTP/2 heads are counted the same way once decoded, so one limit
/// means the same for both.
pub fn request_head_bytes(req: &RequestHeader) -> usize {
    const LINE_ENDS: usize = " HTTP/1.1\r\n".len() + "\r\n".len();
    let headers: usize = req
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + ": ".len() + value.len() + "\r\n".len())
        .sum();
    req.method.as_str().len() + 1 + req.raw_path().len() + LINE_ENDS + headers
}

fn valid_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= 200 && b.iter().all(|c| c.is_ascii_graphic())
}

impl BearerProxy {
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        problem: Problem<'_>,
    ) -> pingora::Result<bool> {
        if let Err(e) = problem.send(session).await {
            tracing::debug!(
                request_id = ctx.request_id(),
                "could not write the error response: {e}"
            );
        }
        Ok(true)
    }

    /// Answers with an MCP URL elicitation that starts the subject's connect flow, when the
    /// request is a JSON-RPC request (its `id` from `body`, or read now) and the flow can
    /// be started; `false` when it was not answered.
    async fn elicit(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        upstream: &Upstream,
        body: Option<bytes::Bytes>,
        message: &str,
    ) -> bool {
        let (Some(registry), Some(subject)) = (&upstream.subjects, &ctx.subject) else {
            return false;
        };
        if registry.config.on_behalf_of() {
            return false;
        }
        let request = match body {
            Some(b) => elicitation::request(&b),
            None => elicitation::read_request(session).await,
        };
        let Some(request) = request else {
            return false;
        };
        // A client older than the URL elicitation (MCP 2025-11-25) gets the problem+json.
        let version = session
            .req_header()
            .headers
            .get("mcp-protocol-version")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if version
            .as_deref()
            .and_then(elicitation::revision)
            .is_some_and(|v| v < elicitation::FIRST_VERSION)
        {
            return false;
        }
        // An answer without a URL (a client without the capability, a declined retry)
        // starts no connect flow.
        let url = match elicitation::needs_url(&request, version.as_deref()) {
            true => match crate::token::subject::connect::start_for_request(
                &self.connects,
                registry,
                subject,
            )
            .await
            {
                Ok(started) => started.authorize_url,
                Err(e) => {
                    tracing::warn!(request_id = ctx.request_id(), error = %e, "could not start a connect flow for an MCP elicitation");
                    return false;
                }
            },
            false => String::new(),
        };
        let answer = elicitation::answer_for(request, version.as_deref(), &url, message);
        if let Err(e) = elicitation::send(session, answer, ctx.request_id()).await {
            tracing::debug!(
                request_id = ctx.request_id(),
                "could not write the elicitation: {e}"
            );
        }
        true
    }

    /// An upstream's 403: with `error="insufficient_scope"`, a machine grant steps up and
    /// replays once, a user grant's answer asks for a login with the union of scopes.
    async fn insufficient_scope(
        &self,
        session: &mut Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(challenged) = resp
            .headers
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(crate::token::insufficient_scope)
        else {
            return Ok(());
        };
        let (Some(slot), Some(token)) = (&ctx.slot, &ctx.token) else {
            return Ok(());
        };
        match slot.step_up(&challenged, token).await {
            StepUpDecision::Replay(fresh) if !session.as_ref().retry_buffer_truncated() => {
                tracing::info!(
                    request_id = ctx.request_id(),
                    credential = &*slot.name,
                    scopes = %challenged.join(" "),
                    "upstream answered 403 insufficient_scope; replaying with a token for more scopes"
                );
                ctx.token = Some(fresh);
                ctx.replayed = true;
                ctx.step_up = Some(StepUpReplay::Replayed);
                let mut e = Error::new(REPLAY_AFTER_401);
                e.set_retry(true);
                Err(e)
            }
            // Too large to send again: the next request carries the broader token.
            StepUpDecision::Replay(_) | StepUpDecision::PassThrough => Ok(()),
            StepUpDecision::Login { scopes } => {
                ctx.step_up = Some(StepUpReplay::NeedsLogin(scopes));
                Err(Error::new(STEP_UP_LOGIN))
            }
        }
    }

    /// RFC 9449 §9: a DPoP request's answer may carry the upstream's next nonce. A 401
    /// `use_dpop_nonce`: `Some(true)` replays it once with the same token and a proof with
    /// the new nonce (apart from the one replay after a token's 401); `Some(false)` passes
    /// it through. `None`: not such an answer.
    fn dpop_nonce_step(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Option<bool> {
        let (Some(up), Some(token)) = (&ctx.upstream, &ctx.token) else {
            return None;
        };
        token.dpop.as_ref()?;
        let dpop::NonceChallenge::UseNonce { fresh } =
            up.dpop.nonce_challenge(resp, ctx.dpop_nonce_sent.as_ref())
        else {
            return None;
        };
        if !fresh || ctx.nonce_replayed || session.as_ref().retry_buffer_truncated() {
            return Some(false);
        }
        tracing::debug!(
            request_id = ctx.request_id(),
            upstream = &*up.name,
            "upstream asked for a DPoP nonce; replaying with it"
        );
        ctx.nonce_replayed = true;
        Some(true)
    }

    /// 403 `subject-not-connected`: what the app turns into a "connect your account" prompt,
    /// with the admin path that starts the connect flow.
    async fn not_connected(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        upstream: &Upstream,
        rid: &str,
        detail: String,
    ) -> pingora::Result<bool> {
        if upstream.config.mcp {
            let message = format!(
                "Connect your account for {} to go on ({detail})",
                upstream.name
            );
            if self.elicit(session, ctx, upstream, None, &message).await {
                return Ok(true);
            }
        }
        let subject = ctx.subject.as_ref().map_or("", |s| s.as_str());
        // On behalf of, the app needs a fresh token of the user, not a connect flow.
        let connect = (!upstream
            .subjects
            .as_ref()
            .is_some_and(|r| r.config.on_behalf_of()))
        .then(|| {
            crate::api::AdminRoute::SubjectOp {
                name: upstream.slot.name.to_string(),
                subject: subject.to_string(),
                op: crate::api::SubjectOp::Connect,
            }
            .to_string()
        });
        let mut p = Problem::new(
            "subject-not-connected",
            "Subject not connected",
            403,
            detail,
            rid,
        );
        p.credential = Some(&upstream.slot.name);
        p.upstream = Some(&upstream.name);
        p.requires_reauth = true;
        p.subject = Some(subject);
        p.connect = connect;
        self.answer(session, ctx, p).await
    }

    /// Takes the request's token from `slot` (waiting within the budget), or answers why
    /// there is none.
    async fn take_token(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &Upstream,
        slot: Arc<CredentialSlot>,
        rid: &str,
    ) -> pingora::Result<bool> {
        ctx.slot = Some(Arc::clone(&slot));
        // A span for the wait on the single-flight refresh, when there is one to wait for.
        let wait = match (&self.tracer, &ctx.span) {
            (Some(t), Some(parent)) if !slot.has_usable_token() => {
                let mut s = t.start(
                    "single-flight wait",
                    SpanKind::Internal,
                    Some(&parent.context()),
                );
                s.set("bearerd.credential", &slot.name);
                Some((t, s))
            }
            _ => None,
        };
        let taken = slot.token_for_request().await;
        if let Some((tracer, mut span)) = wait {
            match &taken {
                Ok(t) => span.set("bearerd.generation", t.generation),
                Err(e) => span.fail(e.message.clone()),
            }
            tracer.end(span);
        }
        match taken {
            Ok(t) => {
                ctx.token = Some(t);
                Ok(false)
            }
            Err(e) if ctx.subject.is_some() && e.requires_reauth() => {
                self.not_connected(session, ctx, upstream, rid, e.message)
                    .await
            }
            Err(e) => {
                let requires_reauth = e.requires_reauth();
                let mut p = Problem::new(e.reason.slug(), e.reason.title(), 503, e.message, rid);
                p.credential = Some(&upstream.slot.name);
                p.upstream = Some(&upstream.name);
                p.requires_reauth = requires_reauth;
                // A credential a person logs in to: where the login goes (`bearerd login`).
                if requires_reauth && slot.has_refresh_token {
                    p.login = Some(
                        crate::api::AdminRoute::Credential {
                            name: slot.name.to_string(),
                            op: crate::api::CredentialOp::Login,
                        }
                        .to_string(),
                    );
                }
                self.answer(session, ctx, p).await
            }
        }
    }

    fn route<'a>(
        live: &LiveRoutes,
        routing: &Routing,
        path: &'a str,
    ) -> Option<(Arc<Upstream>, &'a str)> {
        match routing {
            Routing::Prefix => live
                .table
                .lookup(path)
                .map(|(i, rest)| (Arc::clone(&live.upstreams[i]), rest)),
            Routing::Dedicated(name) => live
                .upstreams
                .iter()
                .find(|u| u.name == *name)
                .map(|u| (Arc::clone(u), path)),
        }
    }
}

impl BearerProxy {
    /// Checks the request head and finds its upstream (and the path to send there), or the
    /// problem to answer: a head too large, a forward-proxy request, a dot segment, no
    /// route, a path that cannot be forwarded.
    fn route_request<'r>(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        rid: &'r str,
    ) -> Result<Arc<Upstream>, Box<Problem<'r>>> {
        // Pingora reads heads of up to 1 MiB; bearerd forwards only what an upstream (and
        // the memory of a thousand connections) can be expected to take.
        let head = request_head_bytes(req);
        if head > self.max_request_header_bytes {
            return Err(Box::new(Problem::new(
                "request-header-too-large",
                "Request header fields too large",
                431,
                format!(
                    "the request line and headers are {head} bytes; bearerd forwards at most {} (server.max_request_header_bytes)",
                    self.max_request_header_bytes
                ),
                rid,
            )));
        }
        // Never an open proxy: absolute-form targets and CONNECT are refused outright, so
        // no request can name a host that is not a configured upstream.
        if !req.raw_path().starts_with(b"/")
            || req.uri.authority().is_some()
            || req.method == http::Method::CONNECT
        {
            return Err(Box::new(Problem::new(
                "no-route",
                "No route",
                404,
                "bearerd forwards only origin-form requests to configured upstreams; it is not a forward proxy",
                rid,
            )));
        }
        let path = req.uri.path();
        if route::has_dot_segment(path) {
            // `/a/../b` would leave the upstream's base path, and with it its credential.
            return Err(Box::new(Problem::new(
                "bad-path",
                "Bad request",
                400,
                "paths with dot segments are not forwarded",
                rid,
            )));
        }
        let routed = match &ctx.routes {
            Some(routes) => Self::route(routes, &self.routing, path),
            None => Self::route(&self.live.load(), &self.routing, path),
        };
        let Some((upstream, rest)) = routed else {
            let detail = format!("no upstream is configured for path {path:?}");
            return Err(Box::new(Problem::new(
                "no-route", "No route", 404, detail, rid,
            )));
        };
        match target::upstream_target(&upstream.config.base_path, path, rest, req.uri.query()) {
            None => ctx.target = None,
            Some(Ok(uri)) => ctx.target = Some(uri),
            Some(Err(_)) => {
                return Err(Box::new(Problem::new(
                    "bad-request",
                    "Bad request",
                    400,
                    "the request path cannot be forwarded",
                    rid,
                )))
            }
        }
        let upstream = upstream.for_request(req);
        ctx.upstream = Some(Arc::clone(&upstream));
        Ok(upstream)
    }

    /// A request to a delegated per-subject credential: the subject header picks the
    /// subject's slot (in memory, or loaded from the store), then its token is taken.
    async fn serve_subject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &Arc<Upstream>,
        registry: &SubjectRegistry,
        rid: &str,
    ) -> pingora::Result<bool> {
        if let Some(verifier) = &registry.user_jwt {
            return match verifier.subject(&session.req_header().headers).await {
                Ok(subject) => {
                    self.serve_subject_key(session, ctx, upstream, registry, subject, rid)
                        .await
                }
                Err(why) => {
                    let p = user_token_refused(upstream, why, rid);
                    self.answer(session, ctx, p).await
                }
            };
        }
        let subject = match subject_of(session.req_header(), registry) {
            Ok(s) => s,
            Err(why) => {
                let p = subject_required(upstream, registry, why, rid);
                return self.answer(session, ctx, p).await;
            }
        };
        // In memory (the common case): no allocation, no await.
        if let Some((key, slot)) = registry.live_slot(subject) {
            ctx.subject = Some(key);
            return self.take_token(session, ctx, upstream, slot, rid).await;
        }
        let subject = match SubjectKey::parse(subject.as_bytes()) {
            Ok(s) => s,
            Err(why) => {
                let p = subject_required(upstream, registry, why, rid);
                return self.answer(session, ctx, p).await;
            }
        };
        self.serve_subject_key(session, ctx, upstream, registry, subject, rid)
            .await
    }

    /// A request whose subject is known (and not found in memory by the fast path).
    async fn serve_subject_key(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        upstream: &Arc<Upstream>,
        registry: &SubjectRegistry,
        subject: SubjectKey,
        rid: &str,
    ) -> pingora::Result<bool> {
        let found = registry.slot_for_request(&subject).await;
        ctx.subject = Some(subject);
        match found {
            Ok(slot) => self.take_token(session, ctx, upstream, slot, rid).await,
            Err(SubjectUnavailable::NotConnected) => {
                let detail = "the subject has no token: connect it (the connect flow, or a login that hands over a refresh token)";
                self.not_connected(session, ctx, upstream, rid, detail.into())
                    .await
            }
            Err(SubjectUnavailable::Store(message)) => {
                let mut p = Problem::new(
                    "store-unavailable",
                    "Token store unavailable",
                    503,
                    message,
                    rid,
                );
                p.credential = Some(&upstream.slot.name);
                p.upstream = Some(&upstream.name);
                self.answer(session, ctx, p).await
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for BearerProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.started = Some(Instant::now());
        ctx.in_flight = Some(self.in_flight.enter());
        if let Some(tracer) = &self.tracer {
            ctx.span = Some(request_span(tracer, session.req_header()));
        }
        let req = session.req_header();
        ctx.request_id = Some(match req.headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v) => {
                ctx.request_id_from_app = true;
                v.clone()
            }
            _ => new_request_id(),
        });
        // A refcounted clone, not a String: the happy path formats nothing.
        let rid_value = ctx
            .request_id
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("-"));
        let rid = rid_value.to_str().unwrap_or("-");

        // One snapshot of the routes for the whole request.
        let routes = self.live.load_full();
        let refused = routes.boundary.check(
            &session.req_header().headers,
            boundary::Navigation::NotExempt,
        );
        ctx.routes = Some(routes);
        if let Err(refusal) = refused {
            let p = boundary::refused(&self.metrics, Listener::Proxy, refusal, rid);
            return self.answer(session, ctx, p).await;
        }
        let upstream = match self.route_request(session.req_header(), ctx, rid) {
            Ok(upstream) => upstream,
            Err(p) => return self.answer(session, ctx, *p).await,
        };
        let slot = match &upstream.subjects {
            None => Arc::clone(&upstream.slot),
            Some(registry) if registry.config.on_behalf_of() => {
                match subject_token_of(session.req_header(), registry) {
                    Ok(token) => match registry.slot_for_subject_token(&token) {
                        Ok((subject, slot)) => {
                            ctx.subject = Some(subject);
                            slot
                        }
                        Err(busy) => {
                            let p = too_many_new_subjects(&upstream, busy, rid);
                            return self.answer(session, ctx, p).await;
                        }
                    },
                    Err(why) => {
                        let p = subject_required(&upstream, registry, why, rid);
                        return self.answer(session, ctx, p).await;
                    }
                }
            }
            Some(registry) => {
                return self
                    .serve_subject(session, ctx, &upstream, registry, rid)
                    .await
            }
        };
        self.take_token(session, ctx, &upstream, slot, rid).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let up = ctx.upstream.as_ref().ok_or_else(|| Error::new(ANSWERED))?;
        let addr = up
            .addr
            .get()
            .await
            .map_err(|m| Error::explain(ErrorType::ConnectNoRoute, m.to_string()))?;
        // SNI only means something over TLS: for plain HTTP, no per-request String.
        let sni = if up.config.tls {
            up.config.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, up.config.tls, sni);
        peer.options.connection_timeout = Some(up.config.connect_timeout);
        peer.options.idle_timeout = Some(up.config.idle_timeout);
        peer.options.read_timeout = up.config.read_timeout;
        peer.options.ca = up.ca.clone();
        // Pingora's pool key ignores the CA: without a key of our own, a connection verified
        // for one upstream could be reused for another upstream at the same address that
        // trusts a different CA.
        peer.group_key = up.pool_key;
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The request may have waited (a slow body, a connect retry) since it took its
        // token: never forward one that is past its usable time. It waits for a fresh one
        // as a request without a token does (within the same budget).
        if let (Some(slot), Some(token)) = (&ctx.slot, &ctx.token) {
            if !token.is_usable(Instant::now()) {
                match slot.token_for_request().await {
                    Ok(fresh) => ctx.token = Some(fresh),
                    Err(e) => {
                        ctx.token_unavailable = Some(e);
                        return Error::e_explain(
                            ErrorType::HTTPStatus(503),
                            "the token expired before the request was sent, and no new one came in time",
                        );
                    }
                }
            }
        }
        let (Some(up), Some(token)) = (&ctx.upstream, &ctx.token) else {
            // Unreachable by construction: never forward without a token.
            return Error::e_explain(
                ErrorType::InternalError,
                "no token for the upstream request",
            );
        };
        // Whose token it is stays between the app and bearerd, on every route: an app
        // that sends its subject header everywhere must not tell other upstreams.
        let now;
        let routes: &LiveRoutes = match &ctx.routes {
            Some(routes) => routes,
            None => {
                now = self.live.load_full();
                &now
            }
        };
        for header in routes.subject_headers.iter() {
            req.remove_header(header);
        }
        // And the routed upstream's own subject header, whatever the routes say now.
        if let Some(r) = &up.subjects {
            req.remove_header(&r.config.header);
        }
        strip_console_cookie(req);
        // The app's traceparent goes on unchanged; a request without a valid one gets
        // bearerd's span as its parent (and loses the invalid one's tracestate), so the
        // upstream joins the trace.
        if let Some(span) = ctx.span.as_ref().filter(|s| s.is_root()) {
            if req.headers.contains_key("traceparent") {
                req.remove_header("tracestate");
            }
            req.insert_header("traceparent", span.context().traceparent())?;
        }
        let new_id = ctx.request_id.as_ref().filter(|_| !ctx.request_id_from_app);
        ctx.dpop_nonce_sent = rewrite_request(req, up, token, ctx.target.as_ref(), new_id)?;
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        match self.dpop_nonce_step(session, resp, ctx) {
            Some(true) => {
                let mut e = Error::new(REPLAY_AFTER_401);
                e.set_retry(true);
                return Err(e);
            }
            // The nonce, not the token, was refused: no refresh for it.
            Some(false) => return Ok(()),
            None => {}
        }
        if resp.status == http::StatusCode::FORBIDDEN && !ctx.replayed {
            return self.insufficient_scope(session, resp, ctx).await;
        }
        if resp.status != http::StatusCode::UNAUTHORIZED {
            if ctx.replayed && ctx.step_up.is_none() && !resp.status.is_informational() {
                ctx.outcome_401 = Some(Outcome401::ReplayedOk);
            }
            return Ok(());
        }
        let (Some(up), Some(slot), Some(token)) = (&ctx.upstream, &ctx.slot, &ctx.token) else {
            return Ok(());
        };
        if ctx.replayed {
            ctx.outcome_401 = Some(Outcome401::Replayed401);
            return Ok(());
        }
        let rejected = token.generation;
        if session.as_ref().retry_buffer_truncated() {
            // The body is too large to send again: pass the 401 through, but refresh now so
            // the next request carries a good token.
            slot.refresh_in_background(rejected);
            ctx.outcome_401 = Some(Outcome401::NotReplayable);
            return Ok(());
        }
        let mut replay_span = self
            .tracer
            .as_ref()
            .zip(ctx.span.as_ref())
            .map(|(t, parent)| {
                let mut s = t.start("401 replay", SpanKind::Internal, Some(&parent.context()));
                s.set("bearerd.credential", &slot.name);
                s.set("bearerd.rejected_generation", rejected);
                s
            });
        let decision = slot.refresh_if_generation(rejected).await;
        if let (Some(t), Some(mut s)) = (&self.tracer, replay_span.take()) {
            match &decision {
                ReplayDecision::Replay(fresh) => {
                    s.set("bearerd.replay_generation", fresh.generation);
                    // Ends with the request: the replay's answer is part of it.
                    ctx.replay_span = Some(s);
                }
                ReplayDecision::RateLimited | ReplayDecision::NoNewerToken => {
                    s.set("bearerd.replayed", false);
                    t.end(s);
                }
            }
        }
        match decision {
            ReplayDecision::Replay(fresh) => {
                tracing::info!(
                    request_id = ctx.request_id(),
                    upstream = &*up.name,
                    rejected_generation = rejected,
                    replay_generation = fresh.generation,
                    "upstream answered 401; replaying with a newer token"
                );
                ctx.token = Some(fresh);
                ctx.replayed = true;
                let mut e = Error::new(REPLAY_AFTER_401);
                e.set_retry(true);
                Err(e)
            }
            ReplayDecision::RateLimited => {
                ctx.outcome_401 = Some(Outcome401::RateLimited);
                Ok(())
            }
            ReplayDecision::NoNewerToken => {
                ctx.outcome_401 = Some(Outcome401::NotReplayable);
                Ok(())
            }
        }
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(id) = &ctx.request_id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        drop_console_set_cookie(resp);
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if e.etype() == &REPLAY_AFTER_401 {
            // Our own replay: safe for any method, the body comes from the retry buffer.
            return e;
        }
        // Pingora's default policy for everything else.
        let mut e = e.more_context(format!("Peer: {peer}"));
        if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated()
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (status, slug, title) = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                (504, "upstream-timeout", "Upstream timed out")
            }
            ErrorType::HTTPStatus(503) => (503, "token-unavailable", "No valid token"),
            t if t == &REPLAY_AFTER_401 => (503, "token-rejected", "Upstream rejected the token"),
            t if t == &STEP_UP_LOGIN => (403, "insufficient-scope", "Insufficient scope"),
            t if t == &ANSWERED => (0, "", ""),
            _ if e.esource() == &ErrorSource::Downstream => (0, "", ""),
            _ => (502, "upstream-unreachable", "Upstream unreachable"),
        };
        if let (Some(StepUpReplay::NeedsLogin(scopes)), Some(up)) = (&ctx.step_up, &ctx.upstream) {
            // An MCP client asks its user to consent, with the subject's connect flow.
            let up = Arc::clone(up);
            let message = format!("Consent to {} for {} to go on", scopes.join(" "), up.name);
            let body = session.as_ref().get_retry_buffer();
            if up.config.mcp && self.elicit(session, ctx, &up, body, &message).await {
                return FailToProxy {
                    error_code: 200,
                    can_reuse_downstream: false,
                };
            }
        }
        if status > 0 && session.response_written().is_none() {
            let rid = ctx.request_id().to_string();
            let mut p = match &ctx.token_unavailable {
                Some(u) => {
                    let mut p = Problem::new(
                        u.reason.slug(),
                        u.reason.title(),
                        status,
                        u.message.clone(),
                        &rid,
                    );
                    p.requires_reauth = u.requires_reauth();
                    p
                }
                None => Problem::new(slug, title, status, e.to_string(), &rid),
            };
            p.upstream = ctx.upstream.as_ref().map(|u| &*u.name);
            p.credential = ctx.upstream.as_ref().map(|u| &*u.slot.name);
            if let (Some(StepUpReplay::NeedsLogin(scopes)), Some(slot)) = (&ctx.step_up, &ctx.slot)
            {
                p.requires_reauth = true;
                p.credential = Some(&slot.name);
                p.detail = format!(
                    "the upstream needs scopes {} that the user has not consented to: the next login (or connect) of {} asks for them",
                    scopes.join(" "),
                    slot.name
                );
                p.scopes = Some(scopes.clone());
                // A subject consents through its connect flow; the credential's person
                // through a login.
                match &ctx.subject {
                    Some(subject) => {
                        p.subject = Some(subject.as_str());
                        p.connect = Some(
                            crate::api::AdminRoute::SubjectOp {
                                name: slot.name.to_string(),
                                subject: subject.as_str().to_string(),
                                op: crate::api::SubjectOp::Connect,
                            }
                            .to_string(),
                        );
                    }
                    None => {
                        p.login = Some(
                            crate::api::AdminRoute::Credential {
                                name: slot.name.to_string(),
                                op: crate::api::CredentialOp::Login,
                            }
                            .to_string(),
                        )
                    }
                }
            }
            let _ = p.send(session).await;
        }
        tracing::warn!(
            request_id = ctx.request_id(),
            upstream = ctx.upstream.as_ref().map(|u| &*u.name),
            status,
            "request failed: {e}"
        );
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let upstream = ctx.upstream.as_ref().map_or("unrouted", |u| &*u.name);
        let elapsed = ctx.started.map_or(Duration::ZERO, |s| s.elapsed());
        match &ctx.upstream {
            Some(u) => u.count(status, elapsed),
            None => {
                self.metrics
                    .requests_total
                    .with_label_values(&[upstream, status_label(status)])
                    .inc();
                self.metrics
                    .request_duration_seconds
                    .with_label_values(&[upstream])
                    .observe(elapsed.as_secs_f64());
            }
        }
        if let Some(outcome) = ctx.outcome_401 {
            self.metrics
                .upstream_401_total
                .with_label_values(&[upstream, outcome.as_str()])
                .inc();
        }

        if let (Some(audit), Some(token), Some(slot), Some(u)) =
            (&self.audit, &ctx.token, &ctx.slot, &ctx.upstream)
        {
            audit.record(crate::events::audit::AuditRecord {
                at: std::time::SystemTime::now(),
                credential: Arc::clone(&slot.name),
                upstream: Arc::clone(&u.name),
                subject_tag: ctx
                    .subject
                    .as_ref()
                    .zip(u_subjects(&ctx.upstream))
                    .map(|(s, r)| r.tagger.tag(s)),
                request_id: ctx
                    .request_id
                    .clone()
                    .unwrap_or_else(|| HeaderValue::from_static("-")),
                method: session.req_header().method.clone(),
                status,
                generation: token.generation,
            });
        }
        if self.access_log {
            let req = session.req_header();
            tracing::info!(
                request_id = ctx.request_id(),
                method = %req.method,
                path = req.uri.path(),
                upstream,
                status,
                subject = ctx.subject.as_ref().zip(u_subjects(&ctx.upstream)).map(|(s, r)| r.tagger.tag(s)),
                generation = ctx.token.as_ref().map(|t| t.generation),
                replayed = ctx.replayed,
                duration_ms = elapsed.as_secs_f64() * 1000.0,
                "request"
            );
        }
        if let Some(tracer) = &self.tracer {
            end_request_spans(tracer, ctx, status);
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, e: &Error) -> bool {
        // fail_to_proxy logs every failure with its request id; the replay is not an error.
        let _ = e;
        true
    }
}

/// Status codes as label strings, built once so counting a request does not format one.
/// 400 `subject-required`: the request names no subject (or a bad one).
fn subject_required<'a>(
    upstream: &'a Upstream,
    registry: &SubjectRegistry,
    why: InvalidSubject,
    rid: &'a str,
) -> Problem<'a> {
    let what = if registry.config.on_behalf_of() {
        "exchanges each user's own token: pass it"
    } else {
        "keeps a token per subject: name the end user"
    };
    let mut p = Problem::new(
        "subject-required",
        "Subject required",
        400,
        format!(
            "credential {} {what} in the {} header ({why})",
            upstream.slot.name, registry.config.header
        ),
        rid,
    );
    p.credential = Some(&upstream.slot.name);
    p.upstream = Some(&upstream.name);
    p
}

/// 401 `invalid-user-token`: the user's JWT that names the subject does not verify; 503
/// `user-token-keys-unavailable` when the issuer's keys cannot be fetched (not the user's
/// fault). The detail says why, never the token.
fn user_token_refused<'a>(
    upstream: &'a Upstream,
    why: UserJwtRejected,
    rid: &'a str,
) -> Problem<'a> {
    let mut p = match why {
        UserJwtRejected::KeysUnavailable(_) => Problem::new(
            "user-token-keys-unavailable",
            "User token keys unavailable",
            503,
            why.to_string(),
            rid,
        ),
        _ => {
            let mut p = Problem::new(
                "invalid-user-token",
                "Invalid user token",
                401,
                why.to_string(),
                rid,
            );
            p.www_authenticate = Some("Bearer error=\"invalid_token\"");
            p
        }
    };
    p.credential = Some(&upstream.slot.name);
    p.upstream = Some(&upstream.name);
    p
}

/// 429 `too-many-new-subjects`: the rate of user tokens not seen before is spent; users
/// already exchanged are served meanwhile.
fn too_many_new_subjects<'a>(
    upstream: &'a Upstream,
    busy: TooManyNewSubjects,
    rid: &'a str,
) -> Problem<'a> {
    let mut p = Problem::new(
        "too-many-new-subjects",
        "Too many new users",
        429,
        "more user tokens not seen before than new_subjects_per_second allows; try again after Retry-After",
        rid,
    );
    p.credential = Some(&upstream.slot.name);
    p.upstream = Some(&upstream.name);
    p.retry_after = Some(busy.retry_after.as_secs().max(1));
    p
}

fn u_subjects(upstream: &Option<Arc<Upstream>>) -> Option<&SubjectRegistry> {
    upstream.as_ref()?.subjects.as_deref()
}

/// On behalf of: the user's token a request carries in the credential's header (exactly
/// one value; a `Bearer ` prefix is allowed).
fn subject_token_of(
    req: &RequestHeader,
    registry: &SubjectRegistry,
) -> Result<secrecy::SecretString, InvalidSubject> {
    let mut values = req.headers.get_all(&registry.config.header).iter();
    let value = values.next().ok_or(InvalidSubject::Missing)?;
    if values.next().is_some() {
        return Err(InvalidSubject::Repeated);
    }
    let bytes = value.as_bytes();
    let token = match bytes.get(..7) {
        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
        _ => bytes,
    };
    if token.is_empty() || token.len() > 16384 || !token.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(InvalidSubject::BadToken);
    }
    let text = std::str::from_utf8(token).map_err(|_| InvalidSubject::BadToken)?;
    Ok(secrecy::SecretString::from(text.to_string()))
}

/// The subject a request names in the credential's header: exactly one valid value.
fn subject_of<'r>(
    req: &'r RequestHeader,
    registry: &SubjectRegistry,
) -> Result<&'r str, InvalidSubject> {
    let mut values = req.headers.get_all(&registry.config.header).iter();
    let value = values.next().ok_or(InvalidSubject::Missing)?;
    if values.next().is_some() {
        return Err(InvalidSubject::Repeated);
    }
    SubjectKey::check(value.as_bytes())
}

fn status_label(status: u16) -> &'static str {
    static LABELS: std::sync::LazyLock<Vec<String>> =
        std::sync::LazyLock::new(|| (0..600).map(|s: u16| s.to_string()).collect());
    LABELS
        .get(usize::from(status))
        .map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_counted_as_http1_frames_it() {
        let mut req = RequestHeader::build("GET", b"/api/x?q=1", None).unwrap();
        req.insert_header("host", "example.com").unwrap();
        req.insert_header("x-big", "a".repeat(100)).unwrap();
        let wire = format!(
            "GET /api/x?q=1 HTTP/1.1\r\nhost: example.com\r\nx-big: {}\r\n\r\n",
            "a".repeat(100)
        );
        assert_eq!(request_head_bytes(&req), wire.len());
    }

    #[test]
    fn generated_request_ids_are_hex_and_never_repeat() {
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| new_request_id().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids
            .iter()
            .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        // Another thread draws its own prefix, so its ids do not collide with these.
        let other = std::thread::spawn(|| new_request_id().to_str().unwrap().to_owned())
            .join()
            .unwrap();
        assert!(!ids.contains(&other));
        assert!(ids.iter().all(|id| id[..16] != other[..16]));
    }
}
