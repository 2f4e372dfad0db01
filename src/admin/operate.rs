//! The operator's rehearsal and look inside: `POST /credentials/{name}/drill` (inject a
//! failure into a credential's token requests for a while) and `GET
//! /credentials/{name}/claims` (what its current token says of itself, never the token).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::Response;
use pingora::protocols::http::ServerSession;
use sha2::{Digest, Sha256};

use super::{error_response, json_response, no_credential, read_json, AdminApp};
use crate::api::{self, DrillRequest};
use crate::token::subject::SubjectKey;

/// The longest drill: a forgotten one must not stay for a day.
const MAX_DRILL: Duration = Duration::from_secs(3600);
const DEFAULT_DRILL: Duration = Duration::from_secs(60);

impl AdminApp {
    pub(super) async fn drill(&self, name: &str, session: &mut ServerSession) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return no_credential(name);
        };
        if self.registry(name).is_some() {
            return error_response(
                400,
                format!("credential {name:?} keeps a token per subject: a drill acts on credentials that hold one token"),
            );
        }
        let request: DrillRequest =
            match read_json(session, r#"{"fail": "500", "for": "60s"}"#).await {
                Ok(r) => r,
                Err(response) => return response,
            };
        let slot = Arc::clone(&cred.slot);
        if request.stop {
            slot.end_drill(None);
            return json_response(
                200,
                &api::DrillReport {
                    credential: name.to_string(),
                    drill: None,
                },
            );
        }
        let Some(fail) = request.fail else {
            return error_response(
                400,
                "a drill names its failure: {\"fail\": \"401\" | \"500\" | \"timeout\" | \"invalid_grant\", \"for\": \"60s\"}, or {\"stop\": true}",
            );
        };
        let length = match request
            .duration
            .as_deref()
            .map(|d| humantime::parse_duration(d.trim()))
        {
            None => DEFAULT_DRILL,
            Some(Ok(d)) if !d.is_zero() && d <= MAX_DRILL => d,
            Some(_) => {
                return error_response(400, "`for` is a duration between 1s and 1h, e.g. \"60s\"")
            }
        };
        let id = slot.start_drill(fail, Instant::now() + length);
        // The drill ends by itself, on the admin listener's runtime (a restart ends it too:
        // it lives only in memory).
        let ending = Arc::clone(&slot);
        tokio::spawn(async move {
            tokio::time::sleep(length).await;
            ending.end_drill(Some(id));
        });
        tracing::warn!(
            credential = name,
            fail = fail.as_str(),
            for_s = length.as_secs_f64(),
            "failure drill started: token requests fail as rehearsed, none is sent"
        );
        json_response(
            200,
            &api::DrillReport {
                credential: name.to_string(),
                drill: slot.status().drill,
            },
        )
    }

    pub(super) fn claims(&self, name: &str) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return no_credential(name);
        };
        if self.registry(name).is_some() {
            return error_response(
                400,
                format!("credential {name:?} keeps a token per subject: its subjects' tokens are not shown"),
            );
        }
        let (Some(snapshot), Some(token)) = (cred.slot.current(), cred.slot.access_token()) else {
            return error_response(404, format!("credential {name:?} holds no token now"));
        };
        let token = secrecy::ExposeSecret::expose_secret(&token);
        let digest = Sha256::digest(token.as_bytes());
        let sha256_prefix: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let status = cred.slot.status();
        let mut claims = api::TokenClaims {
            credential: name.to_string(),
            generation: snapshot.generation,
            format: "opaque".into(),
            scheme: if snapshot.dpop.is_some() {
                "DPoP"
            } else {
                "Bearer"
            }
            .into(),
            issuer: None,
            audience: Vec::new(),
            scopes: snapshot.scopes.clone(),
            subject_tag: None,
            client_id: None,
            issued_at: Some(rfc3339(snapshot.issued_wall)),
            expires_at: snapshot.lifetime.map(|l| rfc3339(snapshot.issued_wall + l)),
            expires_in_s: status.expires_in_s,
            sha256_prefix,
        };
        if let Ok(jwt) = crate::material::jwt::claims(token) {
            claims.format = "jwt".into();
            let text = |k: &str| jwt.get(k).and_then(|v| v.as_str()).map(str::to_string);
            claims.issuer = text("iss");
            claims.client_id = text("client_id").or_else(|| text("azp"));
            claims.audience = strings(jwt.get("aud"));
            let scopes = match text("scope") {
                Some(s) => s.split_whitespace().map(str::to_string).collect(),
                None => strings(jwt.get("scp")),
            };
            if !scopes.is_empty() {
                claims.scopes = scopes;
            }
            claims.subject_tag = text("sub")
                .and_then(|s| SubjectKey::parse(s.as_bytes()).ok())
                .map(|s| self.tagger.tag(&s));
            let time = |k: &str| {
                jwt.get(k)
                    .and_then(|v| v.as_f64())
                    .filter(|s| s.is_finite() && (0.0..1e11).contains(s))
                    .map(|s| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(s)))
            };
            claims.issued_at = time("iat").or(claims.issued_at);
            claims.expires_at = time("exp").or(claims.expires_at);
        }
        json_response(200, &claims)
    }
}

/// A claim that is a string or a list of strings.
fn strings(value: Option<&serde_json::Value>) -> Vec<String> {
    match value {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
