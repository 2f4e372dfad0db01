//! The admin listener: health, readiness, status, metrics, refresh, logout and login; and
//! (in `client`) the CLI that talks to it.

mod console;
mod operate;
mod stream;
mod subjects;
mod view;

pub use console::ConsoleState;
pub use stream::AdminService;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde::Serialize;

use crate::api::{self, AdminRoute, CredentialOp, ErrorBody};
use crate::events::{EventKind, Happened};
use crate::metrics::{Listener, Metrics};
use crate::proxy::boundary::{self, Boundary, Navigation, Refusal};
use crate::proxy::Upstream;
use crate::token::credential::Credential;
use crate::token::CredentialSlot;

/// What a listener of the admin app serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdminScope {
    /// Everything: health, readiness, status, metrics and the POST endpoints.
    Full,
    /// `metrics_listen`: health, readiness and metrics only, for the kubelet and Prometheus;
    /// status (names, scopes, provider errors) and the operations stay on the admin listener.
    Probes,
}

#[derive(Clone)]
pub struct AdminApp {
    pub scope: AdminScope,
    pub credentials: Vec<Arc<Credential>>,
    /// Required (as a bearer token) by the POST endpoints when set.
    pub admin_token: Option<crate::config::SecretRef>,
    pub upstreams: Arc<Vec<Arc<Upstream>>>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn crate::store::TokenStore>,
    /// The registries of per-subject credentials.
    pub subjects: Vec<Arc<crate::token::subject::SubjectRegistry>>,
    /// Connect flows waiting for their callback.
    pub connects: Arc<crate::token::subject::connect::ConnectStates>,
    /// Who may use the admin listener: the operator's tools, not a web page.
    pub boundary: Boundary,
    /// The config's relaxations of the trust boundary, shown in `/status`.
    pub relaxations: Vec<String>,
    /// Where events go, and where `/events` reads them.
    pub events: Arc<crate::events::EventBus>,
    /// Names subjects (a token's `sub`) by tag.
    pub tagger: crate::token::subject::SubjectTagger,
    /// The console's sessions and the logins it started.
    pub console: Arc<ConsoleState>,
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: u16, value: &impl Serialize) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
}

/// A refusal: `{"error": "…"}`.
fn error_response(status: u16, error: impl Into<String>) -> Response<Vec<u8>> {
    json_response(status, &ErrorBody::new(error))
}

fn no_credential(name: &str) -> Response<Vec<u8>> {
    error_response(404, format!("no credential named {name:?}"))
}

impl AdminApp {
    fn credential(&self, name: &str) -> Option<&Arc<Credential>> {
        self.credentials.iter().find(|c| &*c.slot.name == name)
    }

    fn slots(&self) -> impl Iterator<Item = &Arc<CredentialSlot>> {
        self.credentials.iter().map(|c| &c.slot)
    }

    /// Whether the request carries the admin token (always true when none is configured).
    fn authorized(&self, session: &ServerSession) -> bool {
        // The console's page: its session cookie, CSRF token and own origin.
        if self.console_authorizes(&session.req_header().headers) {
            return true;
        }
        // Browsers send Origin on every cross-site POST; the CLI never does. Refusing it
        // keeps a web page from driving the admin API on loopback (a forged login or logout).
        if session.req_header().headers.contains_key("origin") {
            return false;
        }
        let Some(expected) = &self.admin_token else {
            return true;
        };
        let Ok(expected) = expected.resolve() else {
            return false;
        };
        let presented = session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        constant_time_eq(
            presented.as_bytes(),
            secrecy::ExposeSecret::expose_secret(&expected).as_bytes(),
        )
    }

    /// Credentials that some upstream uses: readiness depends only on those.
    fn used_credentials(&self) -> impl Iterator<Item = &Arc<CredentialSlot>> {
        // A per-subject credential has no token of its own: it never holds readiness back.
        self.slots().filter(|c| {
            self.registry(&c.name).is_none() && self.upstreams.iter().any(|u| u.uses(c))
        })
    }

    fn registry(&self, name: &str) -> Option<&Arc<crate::token::subject::SubjectRegistry>> {
        self.subjects.iter().find(|r| &*r.credential == name)
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        let not_ready: BTreeMap<String, api::NotReady> = self
            .used_credentials()
            .filter(|c| !c.is_ready())
            .map(|c| {
                let s = c.status();
                // The probes listener is often off loopback (the kubelet, Prometheus): it
                // says states only. A provider's error text stays on the admin listener.
                let last_error = match self.scope {
                    AdminScope::Probes => None,
                    AdminScope::Full => s.last_error,
                };
                let about = api::NotReady {
                    state: s.state,
                    last_error,
                };
                (c.name.to_string(), about)
            })
            .collect();
        let ready = not_ready.is_empty();
        let body = api::Readiness {
            ready,
            reason: (!ready).then(|| "credentials without a valid token".to_string()),
            credentials: not_ready,
        };
        json_response(if ready { 200 } else { 503 }, &body)
    }

    fn status(&self) -> Response<Vec<u8>> {
        let credentials = self
            .slots()
            .map(|c| {
                let status = match self.registry(&c.name) {
                    Some(r) => api::CredentialView::PerSubject(subjects::credential_status(r, c)),
                    None => api::CredentialView::Single(c.status()),
                };
                (c.name.to_string(), status)
            })
            .collect();
        let upstreams = self
            .upstreams
            .iter()
            .map(|u| {
                let route = match &u.config.route {
                    crate::config::RouteConfig::Prefix(p) => {
                        api::UpstreamRoute::PathPrefix(p.clone())
                    }
                    crate::config::RouteConfig::Listen(a) => {
                        api::UpstreamRoute::Listen(a.to_string())
                    }
                };
                let status = api::UpstreamStatus {
                    url: u.config.url.to_string(),
                    credential: u.slot.name.to_string(),
                    route,
                    ready: u.subjects.is_some() || u.slot.is_ready(),
                    per_subject: u.subjects.is_some(),
                };
                (u.name.to_string(), status)
            })
            .collect();
        let status = api::Status {
            credentials,
            upstreams,
            store: view::store_health(self.store.health()),
            relaxations: self.relaxations.clone(),
        };
        json_response(200, &status)
    }

    async fn refresh(&self, name: &str) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return no_credential(name);
        };
        if self.registry(name).is_some() {
            return error_response(
                400,
                format!("credential {name:?} keeps a token per subject: refresh a subject (…/subjects/{{subject}}/refresh)"),
            );
        }
        refresh_slot(&cred.slot, name, None).await
    }
}

/// Forces a refresh of `slot` (a credential's, or a subject's) and answers how it went.
async fn refresh_slot(
    slot: &CredentialSlot,
    credential: &str,
    subject: Option<&str>,
) -> Response<Vec<u8>> {
    let before = slot.current().map_or(0, |t| t.generation);
    let started = Instant::now();
    let target = slot.demand_manual();
    let finished = slot.wait_attempts(target, Duration::from_secs(60)).await;
    let status = slot.status();
    let ok = finished && status.generation > before;
    let (outcome, code) = match (ok, finished) {
        (true, _) => (api::Outcome::Success, 200),
        (false, true) => (api::Outcome::Failed, 502),
        (false, false) => (api::Outcome::Timeout, 504),
    };
    let report = api::RefreshReport {
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        generation: status.generation,
        previous_generation: before,
        status,
        credential: credential.to_string(),
        subject: subject.map(str::to_string),
    };
    json_response(code, &report)
}

impl AdminApp {
    /// Takes `{"refresh_token": "…"}` from `bearerd login` and refreshes with it.
    async fn login(&self, name: &str, session: &mut ServerSession) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return no_credential(name);
        };
        if self.registry(name).is_some() {
            return error_response(
                400,
                format!("credential {name:?} keeps a token per subject: log a subject in (…/subjects/{{subject}}/login)"),
            );
        }
        let login = match read_login(session).await {
            Ok(login) => login,
            Err(response) => return response,
        };
        let access_token = match login {
            api::LoginRequest {
                refresh_token: Some(refresh_token),
                ..
            } => {
                if let Err(e) = cred.login(refresh_token).await {
                    return error_response(400, e.to_string());
                }
                return self.refresh(name).await;
            }
            api::LoginRequest {
                access_token: Some(_),
                ..
            } if cred.uses_dpop() => {
                return error_response(
                    400,
                    "dpop = true: an access token obtained elsewhere is not bound to the sidecar's key; hand over the login's code",
                );
            }
            api::LoginRequest {
                access_token: Some(access_token),
                expires_in,
                scope,
                ..
            } => match handed_over_token(access_token, expires_in, scope) {
                Ok(token) => token,
                Err(why) => return error_response(400, why),
            },
            api::LoginRequest {
                code: Some(grant), ..
            } => match cred
                .redeem_code(crate::oauth::login::CodeGrant {
                    code: grant.code,
                    code_verifier: grant.code_verifier,
                    redirect_uri: grant.redirect_uri,
                })
                .await
            {
                Ok(issued) => issued,
                Err(e) => {
                    return error_response(
                        502,
                        format!(
                            "the token endpoint refused the code: {}: {}",
                            e.kind, e.message
                        ),
                    )
                }
            },
            api::LoginRequest { .. } => {
                return error_response(
                    400,
                    "a login carries `refresh_token`, `access_token` or `code`",
                )
            }
        };
        let before = cred.slot.current().map_or(0, |t| t.generation);
        let started = Instant::now();
        let published = match crate::token::refresher::login_access_token(cred, access_token).await
        {
            Ok(published) => published,
            Err(e) => return error_response(400, e.to_string()),
        };
        let status = cred.slot.status();
        let report = api::RefreshReport {
            outcome: if published {
                api::Outcome::Success
            } else {
                api::Outcome::Failed
            },
            duration_ms: started.elapsed().as_millis() as u64,
            generation: status.generation,
            previous_generation: before,
            status,
            credential: name.to_string(),
            subject: None,
        };
        json_response(if published { 200 } else { 502 }, &report)
    }
}

impl AdminApp {
    /// `POST /credentials/{name}/register`: the client a `registration = "auto"`
    /// credential logs in with, registered first when it has none at its issuer.
    async fn register(&self, name: &str) -> Response<Vec<u8>> {
        use crate::token::credential::RegisterError;
        let Some(cred) = self.credential(name) else {
            return no_credential(name);
        };
        match cred.register_client().await {
            Ok(r) => json_response(
                200,
                &api::RegistrationReport {
                    credential: name.to_string(),
                    issuer: r.issuer,
                    client_id: r.client_id,
                    token_endpoint_auth_method: r.auth.as_str().to_string(),
                    mode: r.mode,
                    registered_at: r.registered_at,
                },
            ),
            Err(e @ RegisterError::NotRegistering(_)) => error_response(409, e.to_string()),
            Err(e @ RegisterError::Store(_)) => error_response(503, e.to_string()),
            Err(e) if e.is_transient() => error_response(503, e.to_string()),
            Err(e) => error_response(502, e.to_string()),
        }
    }
}

/// A login's access token, checked, as a token response's would be; why not (a 400).
fn handed_over_token(
    access_token: secrecy::SecretString,
    expires_in: Option<u64>,
    scope: Option<String>,
) -> Result<crate::oauth::IssuedToken, &'static str> {
    let Some(access_token) = usable_access_token(access_token) else {
        return Err("access_token must be a token: printable characters, no spaces");
    };
    Ok(crate::oauth::IssuedToken {
        access_token,
        // As a token response's: at least a second, at most a year, so instant arithmetic
        // can never overflow on a silly value.
        lifetime: match expires_in {
            Some(0) => return Err("expires_in must be at least 1"),
            other => other.map(|s| Duration::from_secs(s.min(MAX_LOGIN_LIFETIME_SECS))),
        },
        scopes: scope
            .map(|s| s.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
        refresh_token: None,
        lifetime_cap: None,
        issued_token_type: None,
        dpop_bound: false,
        dpop_key: None,
    })
}

/// The longest lifetime a login's access token is taken for (a year, as a token response's).
const MAX_LOGIN_LIFETIME_SECS: u64 = 365 * 86400;

/// A login's access token when it can go in a header: not empty, printable, no spaces.
fn usable_access_token(token: secrecy::SecretString) -> Option<secrecy::SecretString> {
    use secrecy::ExposeSecret;
    let t = token.expose_secret();
    (!t.is_empty() && t.bytes().all(|b| (0x21..=0x7e).contains(&b))).then_some(token)
}

/// Reads the body of a login: `{"refresh_token": "…"}`, or an access token alone.
async fn read_login(session: &mut ServerSession) -> Result<api::LoginRequest, Response<Vec<u8>>> {
    read_json(session, r#"{"refresh_token": "…"}"#).await
}

/// Reads a JSON body of at most 64 KiB; a refusal (413, or 400 naming `example`).
async fn read_json<T: serde::de::DeserializeOwned>(
    session: &mut ServerSession,
    example: &str,
) -> Result<T, Response<Vec<u8>>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            return Err(error_response(413, "body too large"));
        }
    }
    let is_json = session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    match serde_json::from_slice::<T>(&body) {
        Ok(value) if is_json => Ok(value),
        // The parser's message could quote the body, a token: give only the position.
        parsed => {
            let at = parsed
                .err()
                .map(|e| format!(" (line {}, column {})", e.line(), e.column()));
            Err(error_response(
                400,
                format!(
                    "expected application/json {example}{}",
                    at.unwrap_or_default()
                ),
            ))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        // Names in the path come percent-encoded (the CLI encodes every segment): the route
        // holds them decoded, once, for every endpoint that names one.
        let Some(route) = AdminRoute::parse(&path) else {
            return match self.scope {
                AdminScope::Probes => probes_only(),
                AdminScope::Full => error_response(404, format!("no admin endpoint {path:?}")),
            };
        };
        let probe = matches!(
            route,
            AdminRoute::Healthz | AdminRoute::Readyz | AdminRoute::Metrics
        );
        if self.scope == AdminScope::Probes && !probe {
            return probes_only();
        }
        if let Some(refusal) = self.refusal(session, &route) {
            return refusal;
        }
        let get = method == http::Method::GET;
        let post = method == http::Method::POST;
        let operation = matches!(
            route,
            AdminRoute::Subjects { .. } | AdminRoute::Subject { .. } | AdminRoute::SubjectOp { .. }
        ) || (post
            && matches!(
                route,
                AdminRoute::Credential { .. } | AdminRoute::ConsoleLogin { .. }
            ))
            || matches!(
                route,
                AdminRoute::Credential {
                    op: CredentialOp::Claims,
                    ..
                }
            );
        if operation && !self.authorized(session) {
            return error_response(401, "the admin token is missing or wrong");
        }
        match route {
            AdminRoute::Healthz if get => respond(200, "text/plain", b"ok\n".to_vec()),
            AdminRoute::Readyz if get => self.readyz(),
            AdminRoute::Status if get => self.status(),
            AdminRoute::Metrics if get => self.metrics(),
            AdminRoute::ConnectCallback if get => self.connect_callback(session).await,
            AdminRoute::ConnectCallback => {
                error_response(404, format!("no admin endpoint {path:?}"))
            }
            AdminRoute::Console(page) => self.console(page, session).await,
            AdminRoute::ConsoleLogin { name } if post => {
                self.console_login(&name, &session.req_header().headers.clone())
                    .await
            }
            AdminRoute::Credential {
                name,
                op: CredentialOp::Claims,
            } if get => self.claims(&name),
            AdminRoute::Credential { name, op } if post => match op {
                CredentialOp::Refresh => self.refresh(&name).await,
                CredentialOp::Login => {
                    let answer = self.login(&name, session).await;
                    if answer.status() == 200 {
                        let h = Happened::new(EventKind::LoginCompleted, "success");
                        self.events.emit(h.credential(&name));
                    }
                    answer
                }
                CredentialOp::Logout => match self.credential(&name) {
                    Some(c) => json_response(200, &c.logout().await),
                    None => no_credential(&name),
                },
                CredentialOp::Register => self.register(&name).await,
                CredentialOp::Drill => self.drill(&name, session).await,
                CredentialOp::Claims => error_response(405, "method not allowed"),
            },
            AdminRoute::Subjects { .. }
            | AdminRoute::Subject { .. }
            | AdminRoute::SubjectOp { .. } => self.subjects(&method, route, session).await,
            _ => error_response(405, "method not allowed"),
        }
    }
}

impl AdminApp {
    /// The trust boundary's 403 for a web page's request, if this is one. The probes
    /// listener serves the kubelet and Prometheus, which are no browsers.
    fn refusal(&self, session: &ServerSession, route: &AdminRoute) -> Option<Response<Vec<u8>>> {
        if self.scope != AdminScope::Full {
            return None;
        }
        self.boundary
            .check(&session.req_header().headers, navigation(session, route))
            .err()
            .map(|r| refused(&self.metrics, r))
    }
}

/// A callback is reached by a top-level navigation from the provider's site; its `state`
/// protects it, so its site is not held against it.
fn navigation(session: &ServerSession, route: &AdminRoute) -> Navigation {
    let req = session.req_header();
    let navigating = req.method == http::Method::GET
        && req
            .headers
            .get("sec-fetch-mode")
            .is_some_and(|v| v.as_bytes() == b"navigate");
    match route {
        AdminRoute::ConnectCallback
        | AdminRoute::Console(api::ConsolePath::Page | api::ConsolePath::Callback)
            if navigating =>
        {
            Navigation::Exempt
        }
        _ => Navigation::NotExempt,
    }
}

/// 403 `cross-origin-refused`, counted.
fn refused(metrics: &Metrics, refusal: Refusal) -> Response<Vec<u8>> {
    let rid = crate::proxy::new_request_id();
    let rid = rid.to_str().unwrap_or("-");
    let problem = boundary::refused(metrics, Listener::Admin, refusal, rid);
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    let mut response = respond(403, "application/problem+json", body);
    if let Ok(v) = http::HeaderValue::from_str(rid) {
        response.headers_mut().insert("x-request-id", v);
    }
    response
}

fn probes_only() -> Response<Vec<u8>> {
    error_response(
        404,
        "this listener serves /healthz, /readyz and /metrics only; the rest is on admin_listen",
    )
}

impl AdminApp {
    fn metrics(&self) -> Response<Vec<u8>> {
        for c in self.slots() {
            // A per-subject credential's own slot holds no token: its state is in
            // bearerd_subjects, so an alert on credential_state stays quiet.
            if self.registry(&c.name).is_none() {
                c.update_gauges();
            }
        }
        for r in &self.subjects {
            r.update_gauges();
        }
        self.metrics.store_up.set(i64::from(self.store.health().up));
        respond(
            200,
            "text/plain; version=0.0.4",
            self.metrics.render().into_bytes(),
        )
    }
}
