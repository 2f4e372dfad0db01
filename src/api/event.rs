//! What the operator is told: events (the `/events` stream, webhooks) and drills, as the
//! server writes them and the CLI and the console read them.

use serde::{Deserialize, Serialize};

/// What happened. Webhooks' `on` takes these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Refreshed,
    /// A refresh failed and will be retried (a transient error).
    Retrying,
    /// A refresh failed for good: retries stop until re-authorization.
    Failed,
    LoggedOut,
    LoginCompleted,
    SubjectConnected,
    SubjectDisconnected,
    StoreDown,
    StoreUp,
    ConfigReloaded,
    ConfigRefused,
    DrillStarted,
    DrillEnded,
    StepUp,
}

impl EventKind {
    pub const ALL: [EventKind; 14] = [
        Self::Refreshed,
        Self::Retrying,
        Self::Failed,
        Self::LoggedOut,
        Self::LoginCompleted,
        Self::SubjectConnected,
        Self::SubjectDisconnected,
        Self::StoreDown,
        Self::StoreUp,
        Self::ConfigReloaded,
        Self::ConfigRefused,
        Self::DrillStarted,
        Self::DrillEnded,
        Self::StepUp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refreshed => "refreshed",
            Self::Retrying => "retrying",
            Self::Failed => "failed",
            Self::LoggedOut => "logged_out",
            Self::LoginCompleted => "login_completed",
            Self::SubjectConnected => "subject_connected",
            Self::SubjectDisconnected => "subject_disconnected",
            Self::StoreDown => "store_down",
            Self::StoreUp => "store_up",
            Self::ConfigReloaded => "config_reloaded",
            Self::ConfigRefused => "config_refused",
            Self::DrillStarted => "drill_started",
            Self::DrillEnded => "drill_ended",
            Self::StepUp => "step_up",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// One event. Never a token, a secret or a subject in clear: a subject is its tag.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique across restarts (`{boot}.{sequence}`): the SSE id and the webhook's id.
    pub id: String,
    pub kind: EventKind,
    /// RFC 3339, milliseconds.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_tag: Option<String>,
    /// `success`, `transient_error`, `permanent_error`, a step-up's outcome, a drill's
    /// failure…: what the kind ended in.
    pub outcome: String,
    /// The admin request that caused it, or an id of its own (logs carry the same).
    pub request_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// A sentence for people (an error's message, why a reload was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The failures a drill injects into a credential's token requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DrillFailure {
    #[serde(rename = "401")]
    Unauthorized,
    #[serde(rename = "500")]
    ServerError,
    #[serde(rename = "timeout")]
    Timeout,
    #[serde(rename = "invalid_grant")]
    InvalidGrant,
}

impl DrillFailure {
    pub const ALL: [DrillFailure; 4] = [
        Self::Unauthorized,
        Self::ServerError,
        Self::Timeout,
        Self::InvalidGrant,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "401",
            Self::ServerError => "500",
            Self::Timeout => "timeout",
            Self::InvalidGrant => "invalid_grant",
        }
    }

    pub fn parse(name: &str) -> Option<DrillFailure> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// `POST /credentials/{name}/drill`: `{"fail": "500", "for": "60s"}`; `{"stop": true}`
/// ends a running drill early.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<DrillFailure>,
    /// A duration (`"60s"`, `"5m"`); 60 s when absent, at most an hour.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stop: bool,
}

/// A drill that runs, in `/status` and in the drill's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillView {
    pub fail: DrillFailure,
    pub ends_in_s: f64,
}

/// The answer to a drill request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub credential: String,
    /// The drill now running; none once stopped.
    pub drill: Option<DrillView>,
}

/// `GET /credentials/{name}/claims`: what the current access token says of itself,
/// decoded without checking its signature. Never the token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub credential: String,
    pub generation: u64,
    /// `jwt`, or `opaque` (nothing to decode: only what the token response said).
    pub format: String,
    /// `Bearer` or `DPoP`.
    pub scheme: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audience: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// The token's `sub`, as a tag (the same hash logs use), never in clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<f64>,
    /// The first 12 hex digits of the token's SHA-256: tells two tokens apart, and reveals
    /// nothing of either.
    pub sha256_prefix: String,
}
