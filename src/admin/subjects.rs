//! The admin endpoints of per-subject credentials: list and show subjects, refresh, log
//! out, hand over a refresh token, start a connect flow; and `GET /connect/callback`, where
//! the app relays the provider's redirect. All but the callback need the admin token (when
//! one is set); the callback is protected by its single-use `state`.

use crate::events::{EventKind, Happened};
use std::sync::Arc;

use http::Response;
use pingora::protocols::http::ServerSession;
use tracing::Instrument;

use super::{error_response, json_response, no_credential, read_login, refresh_slot, AdminApp};
use crate::api::{self, AdminRoute, ErrorBody, SubjectOp};
use crate::token::subject::connect::ConnectRefused;
use crate::token::subject::{SubjectKey, SubjectRegistry};
use crate::token::{CredentialSlot, CredentialState};

/// The most subjects one page lists.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// `/status` of a per-subject credential: what it is and how many subjects are in each
/// state (in memory and at rest in the store), never which subjects.
pub(super) fn credential_status(
    registry: &SubjectRegistry,
    slot: &CredentialSlot,
) -> api::PerSubjectStatus {
    let subjects = CredentialState::ALL
        .iter()
        .zip(registry.counts())
        .map(|(state, n)| (*state, n as u64))
        .collect();
    api::PerSubjectStatus {
        per_subject: true,
        grant: slot.grant_kind.to_string(),
        client_auth: slot.client_auth.map(str::to_string),
        subject_header: registry.config.header.as_str().to_string(),
        on_behalf_of: registry.config.on_behalf_of(),
        subjects_in_memory: registry.in_memory() as u64,
        subjects_at_rest: registry.at_rest() as u64,
        subjects,
    }
}

fn not_found(what: String) -> Response<Vec<u8>> {
    error_response(404, what)
}

/// The authorization response's parameters that must appear once (RFC 6749 §3.1): with
/// first-wins, a `subject=` or `iss=` smuggled into the provider's redirect would beat the
/// one the app appends.
const ONCE: [&str; 5] = ["state", "code", "iss", "error", "subject"];

/// The first of `ONCE` that the query repeats.
pub(super) fn repeated_param(session: &ServerSession) -> Option<&'static str> {
    let query = session.req_header().uri.query()?;
    ONCE.into_iter().find(|name| {
        url::form_urlencoded::parse(query.as_bytes())
            .filter(|(k, _)| k == name)
            .count()
            > 1
    })
}

pub(super) fn query_param(session: &ServerSession, name: &str) -> Option<String> {
    let query = session.req_header().uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Names each subject's tag, as events do.
fn tag_all(registry: &SubjectRegistry, subjects: &mut [api::SubjectStatus]) {
    for s in subjects {
        if let Ok(key) = SubjectKey::parse(s.subject.as_bytes()) {
            s.tag = Some(registry.tagger.tag(&key).to_string());
        }
    }
}

impl AdminApp {
    /// `…/credentials/{name}/subjects[/{subject}[/op]]`.
    pub(super) async fn subjects(
        &self,
        method: &http::Method,
        route: AdminRoute,
        session: &mut ServerSession,
    ) -> Response<Vec<u8>> {
        let name = route.credential().unwrap_or_default().to_string();
        let name = name.as_str();
        let Some(registry) = self.registry(name).cloned() else {
            return match self.credential(name) {
                Some(_) => error_response(
                    400,
                    format!("credential {name:?} has no subjects (it has no subject_header)"),
                ),
                None => no_credential(name),
            };
        };
        let subject = match &route {
            AdminRoute::Subject { subject, .. } | AdminRoute::SubjectOp { subject, .. } => {
                match SubjectKey::parse(subject.as_bytes()) {
                    Ok(s) => Some(s),
                    Err(e) => return error_response(400, e.to_string()),
                }
            }
            _ => None,
        };
        let get = method == http::Method::GET;
        let post = method == http::Method::POST;
        match (route, subject) {
            (AdminRoute::Subjects { .. }, _) if get => self.list_subjects(&registry, session).await,
            (AdminRoute::Subject { .. }, Some(s)) if get => match registry.status_of(&s).await {
                Ok(Some(mut status)) => {
                    status.tag = Some(registry.tagger.tag(&s).to_string());
                    json_response(200, &status)
                }
                Ok(None) => not_found(format!(
                    "credential {name:?} has no subject {:?}",
                    s.as_str()
                )),
                Err(e) => error_response(503, e.to_string()),
            },
            (AdminRoute::SubjectOp { op, .. }, Some(s)) if post => {
                let span = tracing::info_span!("subject", subject = %registry.tagger.tag(&s));
                self.subject_op(&registry, s, op, session)
                    .instrument(span)
                    .await
            }
            _ => error_response(405, "method not allowed"),
        }
    }

    async fn list_subjects(
        &self,
        registry: &SubjectRegistry,
        session: &ServerSession,
    ) -> Response<Vec<u8>> {
        let limit = match query_param(session, "limit").map(|l| l.parse::<usize>()) {
            None => DEFAULT_PAGE,
            Some(Ok(l)) if (1..=MAX_PAGE).contains(&l) => l,
            Some(_) => {
                return error_response(400, format!("limit must be a number from 1 to {MAX_PAGE}"))
            }
        };
        let after = match query_param(session, "after") {
            None => None,
            Some(a) => match SubjectKey::parse(a.as_bytes()) {
                Ok(s) => Some(s),
                Err(e) => return error_response(400, format!("after: {e}")),
            },
        };
        if let Some(tag) = query_param(session, "tag") {
            return self.find_tag(registry, &tag).await;
        }
        match registry.list(after.as_ref(), limit).await {
            Ok((mut subjects, next)) => {
                tag_all(registry, &mut subjects);
                let page = api::SubjectPage { subjects, next };
                json_response(200, &page)
            }
            Err(e) => error_response(503, e.to_string()),
        }
    }

    /// `?tag=…`: the subject an event or the audit file named by its tag (a scan of every
    /// subject: the tag is a keyed hash, not an index).
    async fn find_tag(&self, registry: &SubjectRegistry, tag: &str) -> Response<Vec<u8>> {
        let mut found = Vec::new();
        let mut after: Option<SubjectKey> = None;
        loop {
            let (mut subjects, next) = match registry.list(after.as_ref(), MAX_PAGE).await {
                Ok(page) => page,
                Err(e) => return error_response(503, e.to_string()),
            };
            tag_all(registry, &mut subjects);
            found.extend(
                subjects
                    .into_iter()
                    .filter(|s| s.tag.as_deref() == Some(tag)),
            );
            after = next.and_then(|n| SubjectKey::parse(n.as_bytes()).ok());
            if after.is_none() || !found.is_empty() {
                break;
            }
        }
        json_response(
            200,
            &api::SubjectPage {
                subjects: found,
                next: None,
            },
        )
    }

    async fn subject_op(
        &self,
        registry: &Arc<SubjectRegistry>,
        subject: SubjectKey,
        op: SubjectOp,
        session: &mut ServerSession,
    ) -> Response<Vec<u8>> {
        match op {
            SubjectOp::Login | SubjectOp::Connect if registry.config.on_behalf_of() => error_response(
                400,
                "an on-behalf-of credential takes each user's token from the request; there is nothing to log in or connect",
            ),
            SubjectOp::Login => {
                let login = match read_login(session).await {
                    Ok(login) => login,
                    Err(response) => return response,
                };
                // A subject has no login of its own that could give an access token alone.
                let Some(refresh_token) = login.refresh_token else {
                    return error_response(
                        400,
                        "a subject's login hands over a refresh token: {\"refresh_token\": \"…\"}",
                    );
                };
                let live = match registry.hand_over(&subject, refresh_token).await {
                    Ok(live) => live,
                    Err(e) => return error_response(400, e.to_string()),
                };
                let status = live.credential.slot.status();
                let ok = status.generation > 0 && status.state == CredentialState::Valid;
                if ok {
                    self.subject_event(registry, &subject, EventKind::SubjectConnected, "login");
                }
                let report = api::LoginReport {
                    outcome: if ok { api::Outcome::Success } else { api::Outcome::Failed },
                    generation: status.generation,
                    status,
                    credential: registry.credential.to_string(),
                    subject: subject.as_str().to_string(),
                };
                json_response(if ok { 200 } else { 502 }, &report)
            }
            SubjectOp::Connect => self.connect(registry, &subject).await,
            SubjectOp::Refresh | SubjectOp::Logout => {
                // Refresh and logout act on a subject bearerd knows.
                match registry.status_of(&subject).await {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        return not_found(format!(
                            "credential {:?} has no subject {:?}",
                            &*registry.credential,
                            subject.as_str()
                        ))
                    }
                    Err(e) => return error_response(503, e.to_string()),
                }
                let live = registry.admit(&subject);
                if op == SubjectOp::Logout {
                    let mut report = live.credential.logout().await;
                    report.subject = Some(subject.as_str().to_string());
                    self.subject_event(registry, &subject, EventKind::SubjectDisconnected, "logout");
                    json_response(200, &report)
                } else {
                    refresh_slot(&live.credential.slot, &registry.credential, Some(subject.as_str())).await
                }
            }
        }
    }

    /// Tells the operator a subject connected or left (by its tag, never in clear).
    fn subject_event(
        &self,
        registry: &SubjectRegistry,
        subject: &SubjectKey,
        kind: EventKind,
        outcome: &str,
    ) {
        let mut h = Happened::new(kind, outcome).credential(&registry.credential);
        h.subject_tag = Some(registry.tagger.tag(subject));
        self.events.emit(h);
    }

    /// Starts a connect flow: the authorization URL the app sends the user to.
    async fn connect(&self, registry: &SubjectRegistry, subject: &SubjectKey) -> Response<Vec<u8>> {
        match crate::token::subject::connect::start(&self.connects, registry, subject).await {
            Ok(started) => json_response(
                200,
                &api::ConnectStarted {
                    authorize_url: started.authorize_url,
                    expires_in_s: started.lifetime.as_secs(),
                },
            ),
            Err(e) => error_response(e.status(), e.to_string()),
        }
    }

    /// `GET /connect/callback?code=…&state=…[&subject=…]`: the provider's redirect, relayed
    /// by the app. The state is used up whatever happens next.
    pub(super) async fn connect_callback(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if let Some(name) = repeated_param(session) {
            return error_response(400, format!("the callback repeats `{name}`"));
        }
        let Some(state) = query_param(session, "state") else {
            return error_response(400, "the callback has no state");
        };
        let subject = query_param(session, "subject");
        let flow = match self.connects.take(&state, subject.as_deref()).await {
            Ok(flow) => flow,
            Err(refused) => {
                tracing::warn!(reason = %refused, "connect callback refused");
                let status = match refused {
                    ConnectRefused::StoreUnavailable => 503,
                    ConnectRefused::OtherSubject | ConnectRefused::NoSubject => 403,
                    ConnectRefused::UnknownState
                    | ConnectRefused::Expired
                    | ConnectRefused::TooMany => 400,
                };
                return error_response(status, refused.to_string());
            }
        };
        let Some(registry) = self.registry(&flow.credential).cloned() else {
            return error_response(400, "the flow's credential is gone");
        };
        // RFC 9207: a response from another authorization server than the flow's (a
        // mix-up) is refused before its code or error is looked at; the state is used up.
        let iss = query_param(session, "iss");
        match registry.endpoint().endpoints().await {
            Ok(endpoints) => {
                if let Err(e) = endpoints.check_response_issuer(iss.as_deref()) {
                    tracing::warn!(credential = &*registry.credential, reason = %e, "connect callback refused");
                    return error_response(403, e.to_string());
                }
            }
            Err(e) => {
                return error_response(
                    502,
                    format!("cannot check the authorization response against the authorization server's metadata: {}", e.message),
                )
            }
        }
        if let Some(error) = query_param(session, "error") {
            let error: String = error.chars().take(100).collect();
            let body = ErrorBody {
                error: format!("the authorization server refused: {error}"),
                credential: Some(registry.credential.to_string()),
                subject: Some(flow.subject.as_str().to_string()),
            };
            return json_response(400, &body);
        }
        let Some(code) = query_param(session, "code") else {
            return error_response(400, "the callback has no code");
        };
        let subject = flow.subject.clone();
        let (code, result) = match registry.redeem(flow, code).await {
            Ok(status) => {
                self.subject_event(&registry, &subject, EventKind::SubjectConnected, "connect");
                (
                    200,
                    api::ConnectResult {
                        credential: registry.credential.to_string(),
                        subject: status.subject,
                        connected: true,
                        status: Some(status.status),
                        error: None,
                    },
                )
            }
            Err(e) => (
                502,
                api::ConnectResult {
                    credential: registry.credential.to_string(),
                    subject: subject.as_str().to_string(),
                    connected: false,
                    status: None,
                    error: Some(api::ConnectFailure {
                        kind: e.kind.label().into_owned(),
                        message: e.message,
                    }),
                },
            ),
        };
        json_response(code, &result)
    }
}
