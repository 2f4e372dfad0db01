//! The admin API as the server, the CLI and the console speak it: its paths (one encoder
//! for the names in them) and one Serialize + Deserialize type per body.
//!
//! A leaf: it imports nothing of bearerd. The server converts its own views into these
//! types, and the CLI reads its answers back into them, so a renamed field fails to build
//! (or fails the round-trip test) instead of breaking the CLI silently.

mod body;
mod event;
mod path;

pub use body::*;
pub use event::*;
pub use path::{
    decode_segment, encode_segment, AdminRoute, ConsolePath, CredentialOp, SubjectOp,
    CONSOLE_COOKIE,
};

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use super::*;

    /// What the server writes, the CLI and the console read back unchanged.
    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: T) {
        let text = serde_json::to_string_pretty(&value).expect("serializes");
        let back: T = serde_json::from_str(&text).expect(&text);
        assert_eq!(back, value, "{text}");
    }

    fn status(state: CredentialState, last_error: Option<LastError>) -> CredentialStatus {
        CredentialStatus {
            state,
            grant: "refresh_token".into(),
            client_auth: Some("client_secret_basic".into()),
            expires_in_s: Some(59.5),
            token_age_s: Some(0.5),
            generation: 7,
            refreshes: 6,
            consecutive_failures: 1,
            last_error,
            next_refresh_in_s: None,
            scopes: vec!["read".into(), "write".into()],
            has_refresh_token: true,
            step_up_scopes: Vec::new(),
            drill: None,
        }
    }

    fn error() -> LastError {
        LastError {
            kind: "oauth_invalid_grant".into(),
            message: "the refresh token was revoked".into(),
            at: "2026-12-06T04:00:00Z".into(),
        }
    }

    fn subject(name: &str) -> SubjectStatus {
        SubjectStatus {
            subject: name.into(),
            tag: None,
            in_memory: false,
            logout: Some(LogoutRecord {
                at: "2026-12-06T04:00:00Z".into(),
                revocation: vec!["refresh_token: revoked".into()],
            }),
            status: status(CredentialState::LoggedOut, None),
        }
    }

    #[test]
    fn every_route_parses_back_from_its_path_with_names_that_need_encoding() {
        let names = ["crm", "crm:eu", "a b/c?d#e%f", "ünï"];
        let mut routes = vec![
            AdminRoute::Healthz,
            AdminRoute::Readyz,
            AdminRoute::Status,
            AdminRoute::Metrics,
            AdminRoute::Events,
            AdminRoute::ConnectCallback,
        ];
        routes.extend(ConsolePath::ALL.map(AdminRoute::Console));
        for name in names {
            let name = name.to_string();
            routes.extend(CredentialOp::ALL.map(|op| AdminRoute::Credential {
                name: name.clone(),
                op,
            }));
            routes.push(AdminRoute::Subjects { name: name.clone() });
            routes.push(AdminRoute::ConsoleLogin { name: name.clone() });
            for subject in ["alice@example.com", "bob/../x", "sha256:00ff"] {
                let subject = subject.to_string();
                routes.push(AdminRoute::Subject {
                    name: name.clone(),
                    subject: subject.clone(),
                });
                routes.extend(SubjectOp::ALL.map(|op| AdminRoute::SubjectOp {
                    name: name.clone(),
                    subject: subject.clone(),
                    op,
                }));
            }
        }
        for route in routes {
            let path = route.to_string();
            assert_eq!(AdminRoute::parse(&path), Some(route.clone()), "{path}");
            assert_eq!(
                route.credential().is_some(),
                path.starts_with("/credentials/") || path.starts_with("/console/login/")
            );
        }
        for unknown in [
            "//",
            "/console",
            "/console/app.js/x",
            "/credentials/x",
            "/credentials/x/rotate",
            "/status/x",
        ] {
            assert_eq!(AdminRoute::parse(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn every_body_survives_the_round_trip() {
        round_trip(status(CredentialState::Valid, None));
        round_trip(ErrorBody::new("no credential named \"x\""));
        round_trip(ErrorBody {
            error: "the authorization server refused: access_denied".into(),
            credential: Some("crm".into()),
            subject: Some("alice".into()),
        });
        let per_subject = PerSubjectStatus {
            per_subject: true,
            grant: "refresh_token".into(),
            client_auth: None,
            subject_header: "x-bearerd-subject".into(),
            on_behalf_of: false,
            subjects_in_memory: 2,
            subjects_at_rest: 5,
            subjects: CredentialState::ALL.iter().map(|s| (*s, 1)).collect(),
        };
        let mut credentials = BTreeMap::new();
        credentials.insert(
            "crm".to_string(),
            CredentialView::Single(status(CredentialState::Retrying, Some(error()))),
        );
        credentials.insert("users".to_string(), CredentialView::PerSubject(per_subject));
        let mut upstreams = BTreeMap::new();
        for (name, route) in [
            ("api", UpstreamRoute::PathPrefix("/api".into())),
            ("mcp", UpstreamRoute::Listen("127.0.0.1:9101".into())),
        ] {
            let up = UpstreamStatus {
                url: "https://api.example.com/".into(),
                credential: "crm".into(),
                route,
                ready: true,
                per_subject: false,
            };
            upstreams.insert(name.to_string(), up);
        }
        round_trip(Status {
            credentials,
            upstreams,
            store: StoreHealth {
                backend: "redis".into(),
                up: false,
                last_error: Some("connection refused".into()),
            },
            relaxations: vec!["server.allow_remote_clients: …".into()],
        });
        let mut not_ready = BTreeMap::new();
        for (name, last_error) in [("crm", Some(error())), ("erp", None)] {
            let state = CredentialState::Failed;
            not_ready.insert(name.to_string(), NotReady { state, last_error });
        }
        round_trip(Readiness {
            ready: false,
            reason: Some("credentials without a valid token".into()),
            credentials: not_ready,
        });
        round_trip(Readiness {
            ready: true,
            reason: None,
            credentials: BTreeMap::new(),
        });
        for (outcome, subject) in [
            (Outcome::Success, None),
            (Outcome::Failed, Some("alice".to_string())),
            (Outcome::Timeout, None),
        ] {
            round_trip(RefreshReport {
                outcome,
                duration_ms: 12,
                generation: 8,
                previous_generation: 7,
                status: status(CredentialState::Valid, None),
                credential: "crm".into(),
                subject,
            });
        }
        round_trip(LoginReport {
            outcome: Outcome::Success,
            generation: 1,
            status: status(CredentialState::Valid, None),
            credential: "users".into(),
            subject: "alice".into(),
        });
        round_trip(LogoutReport {
            credential: "crm".into(),
            revocation: vec![Revocation {
                token: "refresh_token".into(),
                outcome: "revoked".into(),
            }],
            forgotten: true,
            subject: Some("alice".into()),
        });
        round_trip(subject("alice"));
        round_trip(SubjectPage {
            subjects: vec![subject("alice"), subject("bob")],
            next: Some("bob".into()),
        });
        round_trip(SubjectPage {
            subjects: Vec::new(),
            next: None,
        });
        round_trip(ConnectStarted {
            authorize_url: "https://as.example.com/authorize?state=s".into(),
            expires_in_s: 600,
        });
        round_trip(ConnectResult {
            credential: "users".into(),
            subject: "alice".into(),
            connected: true,
            status: Some(status(CredentialState::Valid, None)),
            error: None,
        });
        round_trip(ConnectResult {
            credential: "users".into(),
            subject: "alice".into(),
            connected: false,
            status: None,
            error: Some(ConnectFailure {
                kind: "oauth_invalid_grant".into(),
                message: "code expired".into(),
            }),
        });
    }

    #[test]
    fn a_login_body_carries_its_refresh_token_there_and_back() {
        use secrecy::ExposeSecret;
        let login = LoginRequest::refresh_token("rt-1".to_string().into());
        let text = serde_json::to_string(&login).expect("serializes");
        assert_eq!(text, r#"{"refresh_token":"rt-1"}"#);
        let back: LoginRequest = serde_json::from_str(&text).expect("parses");
        let rt = back.refresh_token.as_ref().expect("a refresh token");
        assert_eq!(rt.expose_secret(), "rt-1");
        // Debug, which ends up in logs by accident, never shows it.
        assert!(!format!("{back:?}").contains("rt-1"));
        // A login without a refresh token carries its access token and what it is for.
        let text = r#"{"access_token":"at-1","expires_in":30,"scope":"a b"}"#;
        let back: LoginRequest = serde_json::from_str(text).expect("parses");
        assert!(back.refresh_token.is_none());
        assert_eq!(back.access_token.as_ref().unwrap().expose_secret(), "at-1");
        assert_eq!(
            (back.expires_in, back.scope.as_deref()),
            (Some(30), Some("a b"))
        );
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert!(!format!("{back:?}").contains("at-1"));
    }
}
