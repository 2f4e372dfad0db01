//! The admin endpoints of per-subject credentials: list and show subjects, refresh, log
//! out, hand over a refresh token, start a connect flow; and `GET /connect/callback`, where
//! the app relays the provider's redirect. All but the callback need the admin token (when
//! one is set); the callback is protected by its single-use `state`.

use std::sync::Arc;

use http::Response;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora::protocols::http::ServerSession;
use serde_json::json;
use tracing::Instrument;

use super::{json_response, read_login, refresh_slot, AdminApp};
use crate::token::subject::connect::ConnectRefused;
use crate::token::subject::{SubjectKey, SubjectRegistry};
use crate::token::{CredentialSlot, CredentialState};

/// Everything but RFC 3986's unreserved characters is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment for a credential name or a subject.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The most subjects one page lists.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// `/status` of a per-subject credential: what it is and how many subjects are in each
/// state (in memory and at rest in the store), never which subjects.
pub(super) fn credential_status(
    registry: &SubjectRegistry,
    slot: &CredentialSlot,
) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = crate::metrics::STATES
        .iter()
        .zip(registry.counts())
        .map(|(state, n)| (state.to_string(), json!(n)))
        .collect();
    json!({
        "per_subject": true,
        "grant": slot.grant_kind,
        "client_auth": slot.client_auth,
        "subject_header": registry.config.header.as_str(),
        "on_behalf_of": registry.config.on_behalf_of(),
        "subjects_in_memory": registry.in_memory(),
        "subjects_at_rest": registry.at_rest(),
        "subjects": counts,
    })
}

fn not_found(what: String) -> Response<Vec<u8>> {
    json_response(404, json!({ "error": what }))
}

fn query_param(session: &ServerSession, name: &str) -> Option<String> {
    let query = session.req_header().uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

impl AdminApp {
    /// `…/credentials/{name}/subjects[/{subject}[/op]]`.
    pub(super) async fn subjects(
        &self,
        method: &http::Method,
        name: &str,
        rest: &[&str],
        session: &mut ServerSession,
    ) -> Response<Vec<u8>> {
        // `name` is decoded already (by the router).
        let Some(registry) = self.registry(name).cloned() else {
            return match self.credential(name) {
                Some(_) => json_response(
                    400,
                    json!({"error": format!("credential {name:?} has no subjects (it has no subject_header)")}),
                ),
                None => not_found(format!("no credential named {name:?}")),
            };
        };
        let subject = match rest.first() {
            None => None,
            Some(raw) => {
                let decoded = percent_decode_str(raw).collect::<Vec<u8>>();
                match SubjectKey::parse(&decoded) {
                    Ok(s) => Some(s),
                    Err(e) => return json_response(400, json!({"error": format!("{e}")})),
                }
            }
        };
        match (method.as_str(), subject, &rest[rest.len().min(1)..]) {
            ("GET", None, []) => self.list_subjects(&registry, session).await,
            ("GET", Some(s), []) => match registry.status_of(&s).await {
                Ok(Some(status)) => json_response(200, json!(status)),
                Ok(None) => not_found(format!(
                    "credential {name:?} has no subject {:?}",
                    s.as_str()
                )),
                Err(e) => json_response(503, json!({"error": e.to_string()})),
            },
            ("POST", Some(s), [op @ ("refresh" | "logout" | "login" | "connect")]) => {
                let span = tracing::info_span!("subject", subject = %registry.tagger.tag(&s));
                self.subject_op(&registry, s, op, session)
                    .instrument(span)
                    .await
            }
            (_, _, [] | ["refresh" | "logout" | "login" | "connect"]) => {
                json_response(405, json!({"error": "method not allowed"}))
            }
            _ => not_found("no such subject endpoint".to_string()),
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
                return json_response(
                    400,
                    json!({"error": format!("limit must be a number from 1 to {MAX_PAGE}")}),
                )
            }
        };
        let after = match query_param(session, "after") {
            None => None,
            Some(a) => match SubjectKey::parse(a.as_bytes()) {
                Ok(s) => Some(s),
                Err(e) => return json_response(400, json!({"error": format!("after: {e}")})),
            },
        };
        match registry.list(after.as_ref(), limit).await {
            Ok((subjects, next)) => json_response(200, json!({"subjects": subjects, "next": next})),
            Err(e) => json_response(503, json!({"error": e.to_string()})),
        }
    }

    async fn subject_op(
        &self,
        registry: &Arc<SubjectRegistry>,
        subject: SubjectKey,
        op: &str,
        session: &mut ServerSession,
    ) -> Response<Vec<u8>> {
        let about = json!({"credential": &*registry.credential, "subject": subject.as_str()});
        match op {
            "login" | "connect" if registry.config.on_behalf_of() => json_response(
                400,
                json!({"error": "an on-behalf-of credential takes each user's token from the request; there is nothing to log in or connect"}),
            ),
            "login" => {
                let refresh_token = match read_login(session).await {
                    Ok(rt) => rt,
                    Err(response) => return response,
                };
                let live = match registry.hand_over(&subject, refresh_token).await {
                    Ok(live) => live,
                    Err(e) => return json_response(400, json!({ "error": e })),
                };
                let status = live.credential.slot.status();
                let ok = status.generation > 0 && status.state == CredentialState::Valid;
                let mut body = json!({
                    "outcome": if ok { "success" } else { "failed" },
                    "generation": status.generation,
                    "status": status,
                });
                if let (Some(body), Some(about)) = (body.as_object_mut(), about.as_object()) {
                    body.extend(about.clone());
                }
                json_response(if ok { 200 } else { 502 }, body)
            }
            "connect" => self.connect(registry, &subject).await,
            _ => {
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
                    Err(e) => return json_response(503, json!({"error": e.to_string()})),
                }
                let live = registry.admit(&subject);
                if op == "logout" {
                    let mut report = json!(live.credential.logout().await);
                    if let Some(r) = report.as_object_mut() {
                        r.insert("subject".into(), json!(subject.as_str()));
                    }
                    json_response(200, report)
                } else {
                    refresh_slot(&live.credential.slot, about).await
                }
            }
        }
    }

    /// Starts a connect flow: the authorization URL the app sends the user to.
    async fn connect(&self, registry: &SubjectRegistry, subject: &SubjectKey) -> Response<Vec<u8>> {
        let Some(redirect_uri) = registry.config.redirect_uri() else {
            return json_response(
                409,
                json!({"error": format!("credential {:?} has no redirect_uri: connect flows need one", &*registry.credential)}),
            );
        };
        let endpoints = match registry.endpoint().endpoints().await {
            Ok(e) => e,
            Err(e) => return json_response(502, json!({"error": e.message})),
        };
        let Some(authorize) = endpoints.authorization else {
            return json_response(
                409,
                json!({"error": "no authorization endpoint: set authorization_url or issuer"}),
            );
        };
        let request = match crate::token::login::authorization_request(
            registry.endpoint().config(),
            authorize,
            endpoints.resource.clone(),
            redirect_uri.as_str(),
        ) {
            Ok(r) => r,
            Err(e) => return json_response(500, json!({ "error": e })),
        };
        if let Err(e) = self
            .connects
            .begin(
                &registry.credential,
                subject,
                redirect_uri.as_str(),
                request.state,
                request.verifier,
                registry.config.connect_lifetime,
            )
            .await
        {
            return json_response(503, json!({"error": e.to_string()}));
        }
        tracing::info!(credential = &*registry.credential, "connect flow started");
        json_response(
            200,
            json!({
                "authorize_url": request.url.as_str(),
                "expires_in_s": registry.config.connect_lifetime.as_secs(),
            }),
        )
    }

    /// `GET /connect/callback?code=…&state=…[&subject=…]`: the provider's redirect, relayed
    /// by the app. The state is used up whatever happens next.
    pub(super) async fn connect_callback(&self, session: &ServerSession) -> Response<Vec<u8>> {
        let Some(state) = query_param(session, "state") else {
            return json_response(400, json!({"error": "the callback has no state"}));
        };
        let subject = query_param(session, "subject");
        let flow = match self.connects.take(&state, subject.as_deref()).await {
            Ok(flow) => flow,
            Err(refused) => {
                tracing::warn!(reason = %refused, "connect callback refused");
                let status = match refused {
                    ConnectRefused::StoreUnavailable => 503,
                    _ => 400,
                };
                return json_response(status, json!({"error": refused.to_string()}));
            }
        };
        let Some(registry) = self.registry(&flow.credential).cloned() else {
            return json_response(400, json!({"error": "the flow's credential is gone"}));
        };
        if let Some(error) = query_param(session, "error") {
            let error: String = error.chars().take(100).collect();
            return json_response(
                400,
                json!({"error": format!("the authorization server refused: {error}"), "credential": &*registry.credential, "subject": flow.subject.as_str()}),
            );
        }
        let Some(code) = query_param(session, "code") else {
            return json_response(400, json!({"error": "the callback has no code"}));
        };
        let subject = flow.subject.clone();
        match registry.redeem(flow, code).await {
            Ok(status) => json_response(
                200,
                json!({"credential": &*registry.credential, "connected": true, "subject": status.subject, "status": status.status}),
            ),
            Err(e) => json_response(
                502,
                json!({
                    "credential": &*registry.credential,
                    "subject": subject.as_str(),
                    "connected": false,
                    "error": {"kind": e.kind, "message": e.message},
                }),
            ),
        }
    }
}
