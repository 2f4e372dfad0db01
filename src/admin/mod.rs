//! The admin listener: health, readiness, status, metrics, refresh, logout and login; and
//! (in `client`) the CLI that talks to it.

pub mod client;
mod subjects;

pub use subjects::encode_segment;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::metrics::Metrics;
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

fn json_response(status: u16, value: serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(&value).unwrap_or_default();
    body.push(b'\n');
    respond(status, "application/json", body)
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
            self.registry(&c.name).is_none()
                && self.upstreams.iter().any(|u| Arc::ptr_eq(&u.slot, c))
        })
    }

    fn registry(&self, name: &str) -> Option<&Arc<crate::token::subject::SubjectRegistry>> {
        self.subjects.iter().find(|r| &*r.credential == name)
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        let not_ready: BTreeMap<&str, serde_json::Value> = self
            .used_credentials()
            .filter(|c| !c.is_ready())
            .map(|c| {
                let s = c.status();
                // The probes listener is often off loopback (the kubelet, Prometheus): it
                // says states only. A provider's error text stays on the admin listener.
                let about = match self.scope {
                    AdminScope::Probes => json!({"state": s.state}),
                    _ => json!({"state": s.state, "last_error": s.last_error}),
                };
                (&*c.name, about)
            })
            .collect();
        if not_ready.is_empty() {
            json_response(200, json!({"ready": true}))
        } else {
            json_response(
                503,
                json!({"ready": false, "reason": "credentials without a valid token", "credentials": not_ready}),
            )
        }
    }

    fn status(&self) -> Response<Vec<u8>> {
        let credentials: BTreeMap<&str, serde_json::Value> = self
            .slots()
            .map(|c| {
                let status = match self.registry(&c.name) {
                    Some(r) => subjects::credential_status(r, c),
                    None => json!(c.status()),
                };
                (&*c.name, status)
            })
            .collect();
        let upstreams: BTreeMap<&str, _> = self
            .upstreams
            .iter()
            .map(|u| {
                let route = match &u.config.route {
                    crate::config::RouteConfig::Prefix(p) => json!({"path_prefix": p}),
                    crate::config::RouteConfig::Listen(a) => json!({"listen": a.to_string()}),
                };
                (
                    &*u.name,
                    json!({
                        "url": u.config.url.as_str(),
                        "credential": &*u.slot.name,
                        "route": route,
                        "ready": u.subjects.is_some() || u.slot.is_ready(),
                        "per_subject": u.subjects.is_some(),
                    }),
                )
            })
            .collect();
        json_response(
            200,
            json!({"credentials": credentials, "upstreams": upstreams, "store": self.store.health()}),
        )
    }

    async fn refresh(&self, name: &str) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return json_response(
                404,
                json!({"error": format!("no credential named {name:?}")}),
            );
        };
        if self.registry(name).is_some() {
            return json_response(
                400,
                json!({"error": format!("credential {name:?} keeps a token per subject: refresh a subject (…/subjects/{{subject}}/refresh)")}),
            );
        }
        refresh_slot(&cred.slot, json!({"credential": name})).await
    }
}

/// Forces a refresh of `slot` and answers how it went; `about` names what was refreshed.
async fn refresh_slot(slot: &CredentialSlot, about: serde_json::Value) -> Response<Vec<u8>> {
    let before = slot.current().map_or(0, |t| t.generation);
    let started = Instant::now();
    let target = slot.demand_manual();
    let finished = slot.wait_attempts(target, Duration::from_secs(60)).await;
    let status = slot.status();
    let ok = finished && status.generation > before;
    let mut body = json!({
        "outcome": if ok { "success" } else if finished { "failed" } else { "timeout" },
        "duration_ms": started.elapsed().as_millis() as u64,
        "generation": status.generation,
        "previous_generation": before,
        "status": status,
    });
    if let (Some(body), Some(about)) = (body.as_object_mut(), about.as_object()) {
        body.extend(about.clone());
    }
    json_response(
        if ok {
            200
        } else if finished {
            502
        } else {
            504
        },
        body,
    )
}

impl AdminApp {
    /// Takes `{"refresh_token": "…"}` from `bearerd login` and refreshes with it.
    async fn login(&self, name: &str, session: &mut ServerSession) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return json_response(
                404,
                json!({"error": format!("no credential named {name:?}")}),
            );
        };
        if self.registry(name).is_some() {
            return json_response(
                400,
                json!({"error": format!("credential {name:?} keeps a token per subject: log a subject in (…/subjects/{{subject}}/login)")}),
            );
        }
        let refresh_token = match read_login(session).await {
            Ok(rt) => rt,
            Err(response) => return response,
        };
        if let Err(e) = cred.login(refresh_token).await {
            return json_response(400, json!({"error": e}));
        }
        self.refresh(name).await
    }
}

/// Reads `{"refresh_token": "…"}`, the body of a login.
async fn read_login(
    session: &mut ServerSession,
) -> Result<secrecy::SecretString, Response<Vec<u8>>> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = session.read_request_body().await {
        body.extend_from_slice(&chunk);
        if body.len() > 64 * 1024 {
            return Err(json_response(413, json!({"error": "body too large"})));
        }
    }
    #[derive(serde::Deserialize)]
    struct Login {
        refresh_token: secrecy::SecretString,
    }
    let is_json = session
        .req_header()
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let login: Login = match serde_json::from_slice(&body) {
        Ok(l) if is_json => l,
        // The parser's message could quote the body, a token: give only the position.
        Ok(_) | Err(_) => {
            let at = serde_json::from_slice::<Login>(&body)
                .err()
                .map(|e| format!(" (line {}, column {})", e.line(), e.column()));
            return Err(json_response(
                400,
                json!({"error": format!("expected application/json {{\"refresh_token\": \"…\"}}{}", at.unwrap_or_default())}),
            ));
        }
    };
    Ok(login.refresh_token)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let probe = matches!(segments.as_slice(), ["healthz" | "readyz" | "metrics"]);
        if self.scope == AdminScope::Probes && !probe {
            return json_response(
                404,
                json!({"error": "this listener serves /healthz, /readyz and /metrics only; the rest is on admin_listen"}),
            );
        }
        // A credential's name comes percent-encoded (the CLI encodes every segment): it is
        // decoded here, once, for every route that names one.
        let name = match segments.as_slice() {
            ["credentials", raw, ..] => percent_encoding::percent_decode_str(raw)
                .decode_utf8_lossy()
                .into_owned(),
            _ => String::new(),
        };
        let name = name.as_str();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["healthz"]) => respond(200, "text/plain", b"ok\n".to_vec()),
            ("GET", ["readyz"]) => self.readyz(),
            ("GET", ["status"]) => self.status(),
            ("GET", ["metrics"]) => {
                for c in self.slots() {
                    // A per-subject credential's own slot holds no token: its state is
                    // in bearerd_subjects, so an alert on credential_state stays quiet.
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
            ("GET", ["connect", "callback"]) => self.connect_callback(session).await,
            (_, ["credentials", _, "subjects", ..]) if !self.authorized(session) => {
                json_response(401, json!({"error": "the admin token is missing or wrong"}))
            }
            (_, ["credentials", _, "subjects", rest @ ..]) => {
                self.subjects(&method, name, rest, session).await
            }
            ("POST", ["credentials", _, "refresh" | "logout" | "login"])
                if !self.authorized(session) =>
            {
                json_response(401, json!({"error": "the admin token is missing or wrong"}))
            }
            ("POST", ["credentials", _, "refresh"]) => self.refresh(name).await,
            ("POST", ["credentials", _, "logout"]) => match self.credential(name) {
                Some(c) => json_response(200, json!(c.logout().await)),
                None => json_response(
                    404,
                    json!({"error": format!("no credential named {name:?}")}),
                ),
            },
            ("POST", ["credentials", _, "login"]) => self.login(name, session).await,
            (_, ["healthz" | "readyz" | "status" | "metrics"])
            | (_, ["credentials", _, "refresh" | "logout" | "login"]) => {
                json_response(405, json!({"error": "method not allowed"}))
            }
            _ => json_response(404, json!({"error": format!("no admin endpoint {path:?}")})),
        }
    }
}
