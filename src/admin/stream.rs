//! The admin listener's connection handler: every request gets a request id (its events
//! carry it) and the app's answer, except `GET /events`, which streams.
//!
//! `/events` is Server-Sent Events: the ring's events after `Last-Event-ID` (header, or
//! `?last_event_id=` for a first connect), then each new one as it happens, with a comment
//! every 15 s so proxies and `kubectl port-forward` keep the connection. A reader too slow
//! for the live feed is cut off (counted in `bearerd_events_dropped_total{sink="stream"}`)
//! and, reconnecting with its last id, replays what it missed from the ring.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::http_app::ServeHttp;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tokio::sync::broadcast::error::RecvError;

use super::{AdminApp, AdminScope};
use crate::api::{AdminRoute, Event};
use crate::events::Sink;

const KEEPALIVE: Duration = Duration::from_secs(15);

/// The admin (or probes) listener's app: the view of the config in force, which a reload
/// swaps (a request keeps the view it started with).
pub struct AdminService(pub Arc<arc_swap::ArcSwap<AdminApp>>);

#[async_trait]
impl HttpServerApp for AdminService {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !matches!(session.read_request().await, Ok(true)) {
            return None;
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let app = self.0.load_full();
        let app = &*app;
        if wants_events(app, &session) {
            if let Some(refusal) = app.refusal(&session, &AdminRoute::Events) {
                write(&mut session, refusal).await;
                return None;
            }
            stream_events(app, session, shutdown.clone()).await;
            return None;
        }
        let rid = crate::proxy::new_request_id();
        let cause = rid.to_str().unwrap_or("-").to_string();
        let mut answer = crate::events::caused_by(cause, app.response(&mut session)).await;
        answer.headers_mut().entry("x-request-id").or_insert(rid);
        if !write(&mut session, answer).await {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(reusable) => reusable.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

fn wants_events(app: &AdminApp, session: &ServerSession) -> bool {
    let req = session.req_header();
    app.scope == AdminScope::Full
        && req.method == http::Method::GET
        && AdminRoute::parse(req.uri.path()) == Some(AdminRoute::Events)
}

/// Writes a whole answer; false when the connection failed.
async fn write(session: &mut ServerSession, answer: http::Response<Vec<u8>>) -> bool {
    let (parts, body) = answer.into_parts();
    let header: ResponseHeader = parts.into();
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return false;
    }
    body.is_empty() || session.write_response_body(body.into(), true).await.is_ok()
}

/// The id a reader last saw: `Last-Event-ID`, or `?last_event_id=` (an EventSource cannot
/// set headers on its first connect).
fn last_event_id(session: &ServerSession) -> Option<String> {
    let req = session.req_header();
    if let Some(v) = req
        .headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
    {
        return Some(v.to_string());
    }
    let query = req.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "last_event_id")
        .map(|(_, v)| v.into_owned())
}

fn frame(event: &Event) -> Bytes {
    let data = serde_json::to_string(event).unwrap_or_default();
    Bytes::from(format!(
        "id: {}\nevent: {}\ndata: {data}\n\n",
        event.id,
        event.kind.as_str()
    ))
}

async fn stream_events(app: &AdminApp, mut session: ServerSession, mut shutdown: ShutdownWatch) {
    let (replay, mut live) = app.events.subscribe(last_event_id(&session).as_deref());
    let Ok(mut header) = ResponseHeader::build(200, Some(4)) else {
        return;
    };
    for (k, v) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-store"),
        ("transfer-encoding", "chunked"),
        ("x-accel-buffering", "no"),
    ] {
        let _ = header.insert_header(k, v);
    }
    session.set_keepalive(None);
    if session
        .write_response_header(Box::new(header))
        .await
        .is_err()
    {
        return;
    }
    // A retry hint, then the replay: one write, so the reader sees it at once.
    let mut first = b"retry: 2000\n\n".to_vec();
    for e in &replay {
        first.extend_from_slice(&frame(e));
    }
    if session
        .write_response_body(first.into(), false)
        .await
        .is_err()
    {
        return;
    }
    loop {
        let chunk = tokio::select! {
            r = live.recv() => match r {
                Ok(e) => frame(&e),
                Err(RecvError::Lagged(_)) => {
                    app.events.count_dropped(Sink::Stream);
                    break;
                }
                Err(RecvError::Closed) => break,
            },
            _ = tokio::time::sleep(KEEPALIVE) => Bytes::from_static(b": keepalive\n\n"),
            _ = shutdown.changed() => break,
        };
        if session.write_response_body(chunk, false).await.is_err() {
            return;
        }
    }
    let _ = session.write_response_body(Bytes::new(), true).await;
    let _ = session.finish().await;
}
