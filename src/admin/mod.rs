//! The admin listener: health, readiness, status, metrics, and on-demand refresh.

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
use crate::token::CredentialSlot;

pub struct AdminApp {
    pub credentials: Vec<Arc<CredentialSlot>>,
    pub upstreams: Arc<Vec<Arc<Upstream>>>,
    pub metrics: Arc<Metrics>,
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
    fn slot(&self, name: &str) -> Option<&Arc<CredentialSlot>> {
        self.credentials.iter().find(|c| &*c.name == name)
    }

    /// Credentials that some upstream uses: readiness depends only on those.
    fn used_credentials(&self) -> impl Iterator<Item = &Arc<CredentialSlot>> {
        self.credentials
            .iter()
            .filter(|c| self.upstreams.iter().any(|u| Arc::ptr_eq(&u.slot, c)))
    }

    fn readyz(&self) -> Response<Vec<u8>> {
        let not_ready: BTreeMap<&str, serde_json::Value> = self
            .used_credentials()
            .filter(|c| !c.is_ready())
            .map(|c| {
                let s = c.status();
                (
                    &*c.name,
                    json!({"state": s.state, "last_error": s.last_error}),
                )
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
        let credentials: BTreeMap<&str, _> = self
            .credentials
            .iter()
            .map(|c| (&*c.name, c.status()))
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
                        "ready": u.slot.is_ready(),
                    }),
                )
            })
            .collect();
        json_response(
            200,
            json!({"credentials": credentials, "upstreams": upstreams}),
        )
    }

    async fn refresh(&self, name: &str) -> Response<Vec<u8>> {
        let Some(slot) = self.slot(name) else {
            return json_response(
                404,
                json!({"error": format!("no credential named {name:?}")}),
            );
        };
        let before = slot.current().map_or(0, |t| t.generation);
        let started = Instant::now();
        let target = slot.demand_manual();
        let finished = slot.wait_attempts(target, Duration::from_secs(60)).await;
        let status = slot.status();
        let ok = finished && status.generation > before;
        json_response(
            if ok {
                200
            } else if finished {
                502
            } else {
                504
            },
            json!({
                "credential": name,
                "outcome": if ok { "success" } else if finished { "failed" } else { "timeout" },
                "duration_ms": started.elapsed().as_millis() as u64,
                "generation": status.generation,
                "previous_generation": before,
                "status": status,
            }),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method.as_str(), segments.as_slice()) {
            ("GET", ["healthz"]) => respond(200, "text/plain", b"ok\n".to_vec()),
            ("GET", ["readyz"]) => self.readyz(),
            ("GET", ["status"]) => self.status(),
            ("GET", ["metrics"]) => {
                for c in &self.credentials {
                    c.update_gauges();
                }
                respond(
                    200,
                    "text/plain; version=0.0.4",
                    self.metrics.render().into_bytes(),
                )
            }
            ("POST", ["credentials", name, "refresh"]) => self.refresh(name).await,
            (_, ["healthz" | "readyz" | "status" | "metrics"])
            | (_, ["credentials", _, "refresh"]) => {
                json_response(405, json!({"error": "method not allowed"}))
            }
            _ => json_response(404, json!({"error": format!("no admin endpoint {path:?}")})),
        }
    }
}
