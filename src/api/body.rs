//! One type per body of the admin API. The wire names are the contract (DESIGN §3): a
//! field renamed here is renamed for every user of `/status`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The state names of `/status` and `bearerd_credential_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    Valid,
    Refreshing,
    Retrying,
    Expired,
    Failed,
    LoggedOut,
}

impl CredentialState {
    pub const ALL: [CredentialState; 6] = [
        Self::Valid,
        Self::Refreshing,
        Self::Retrying,
        Self::Expired,
        Self::Failed,
        Self::LoggedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Refreshing => "refreshing",
            Self::Retrying => "retrying",
            Self::Expired => "expired",
            Self::Failed => "failed",
            Self::LoggedOut => "logged_out",
        }
    }
}

/// The last failed attempt: `kind` is a label such as `oauth_invalid_grant` or `http_503`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    pub kind: String,
    pub message: String,
    /// RFC 3339.
    pub at: String,
}

/// One credential that holds one token (or one subject's token). Never holds a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CredentialStatus {
    pub state: CredentialState,
    pub grant: String,
    pub client_auth: Option<String>,
    pub expires_in_s: Option<f64>,
    pub token_age_s: Option<f64>,
    pub generation: u64,
    pub refreshes: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    pub next_refresh_in_s: Option<f64>,
    pub scopes: Vec<String>,
    pub has_refresh_token: bool,
    /// Scopes added after upstreams' 403 `insufficient_scope`: a machine grant asks for
    /// them already; a user grant's next login asks for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub step_up_scopes: Vec<String>,
    /// A failure drill that runs now: what the state shows is rehearsed, not real.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<super::DrillView>,
}

/// A per-subject credential in `/status`: what it is and how many subjects are in each
/// state, never which subjects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerSubjectStatus {
    /// Always true: what tells this shape apart.
    pub per_subject: bool,
    pub grant: String,
    pub client_auth: Option<String>,
    pub subject_header: String,
    pub on_behalf_of: bool,
    pub subjects_in_memory: u64,
    pub subjects_at_rest: u64,
    pub subjects: BTreeMap<CredentialState, u64>,
}

/// A credential in `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CredentialView {
    PerSubject(PerSubjectStatus),
    Single(CredentialStatus),
}

/// How requests reach an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamRoute {
    PathPrefix(String),
    Listen(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamStatus {
    pub url: String,
    pub credential: String,
    pub route: UpstreamRoute,
    pub ready: bool,
    pub per_subject: bool,
}

/// Where tokens are kept, and whether that store answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `memory`, `file` or `redis`.
    pub backend: String,
    /// Whether the last operation reached the store.
    pub up: bool,
    pub last_error: Option<String>,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub credentials: BTreeMap<String, CredentialView>,
    pub upstreams: BTreeMap<String, UpstreamStatus>,
    pub store: StoreHealth,
    /// The relaxations of the trust boundary in force (`allow_remote_clients`,
    /// `insecure_http`, `allowed_hosts`, `allowed_origins`), one line each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relaxations: Vec<String>,
}

/// `GET /readyz`, 200 or 503.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The credentials that hold readiness back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub credentials: BTreeMap<String, NotReady>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotReady {
    pub state: CredentialState,
    /// Only on the admin listener: the probes listener says states only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<LastError>,
}

/// Every refusal of the admin API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: error.into(),
            credential: None,
            subject: None,
        }
    }
}

/// How a forced refresh (or a login) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failed,
    /// Still running when the server stopped waiting for it.
    Timeout,
}

/// `POST …/refresh` (and a credential's login, which ends in a refresh).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefreshReport {
    pub outcome: Outcome,
    pub duration_ms: u64,
    pub generation: u64,
    pub previous_generation: u64,
    pub status: CredentialStatus,
    pub credential: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// `POST …/login`'s body: what a login obtained, or a refresh token the caller already
/// holds. A provider that issues no refresh token (one that does not offer
/// `offline_access`) leaves only the access token: it serves until it expires, and then the
/// credential asks for a login again.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct LoginRequest {
    #[serde(
        default,
        serialize_with = "expose",
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token: Option<secrecy::SecretString>,
    /// Only without `refresh_token`.
    #[serde(
        default,
        serialize_with = "expose",
        skip_serializing_if = "Option::is_none"
    )]
    pub access_token: Option<secrecy::SecretString>,
    /// The access token's `expires_in`, in seconds, as the provider gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// The scopes the provider granted (space-separated, as in a token response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Instead of tokens: an authorization code (with its PKCE verifier and redirect URI)
    /// for the sidecar to redeem, for a client it registered (whose secret stays there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<CodeGrant>,
}

/// An authorization code and what redeeming it takes (RFC 6749 §4.1.3, RFC 7636 §4.5).
#[derive(Debug, Deserialize, Serialize)]
pub struct CodeGrant {
    #[serde(serialize_with = "expose_one")]
    pub code: secrecy::SecretString,
    #[serde(serialize_with = "expose_one")]
    pub code_verifier: secrecy::SecretString,
    pub redirect_uri: String,
}

fn expose_one<S: serde::Serializer>(
    secret: &secrecy::SecretString,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(secrecy::ExposeSecret::expose_secret(secret))
}

impl LoginRequest {
    /// The body that hands over a refresh token.
    pub fn refresh_token(refresh_token: secrecy::SecretString) -> LoginRequest {
        LoginRequest {
            refresh_token: Some(refresh_token),
            access_token: None,
            expires_in: None,
            scope: None,
            code: None,
        }
    }
}

/// `POST /credentials/{name}/register`: the client the sidecar registered for a
/// credential with `registration = "auto"`, for `bearerd login` to log in with. Never its
/// secret: a confidential client's code is redeemed by the sidecar (`CodeGrant`).
#[derive(Debug, Deserialize, Serialize)]
pub struct RegistrationReport {
    pub credential: String,
    /// The issuer it was registered at, the only one it is used with.
    pub issuer: String,
    pub client_id: String,
    /// `none`, `client_secret_basic` or `client_secret_post`.
    pub token_endpoint_auth_method: String,
    /// `client_id_metadata_document` or `dynamic`.
    pub mode: String,
    /// RFC 3339.
    pub registered_at: String,
}

/// The one place a secret is written out: the login body (and a registration), sent to the admin API only over
/// a private channel (the CLI checks).
fn expose<S: serde::Serializer>(
    secret: &Option<secrecy::SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match secret {
        Some(secret) => s.serialize_str(secrecy::ExposeSecret::expose_secret(secret)),
        None => s.serialize_none(),
    }
}

/// `POST …/subjects/{subject}/login`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginReport {
    pub outcome: Outcome,
    pub generation: u64,
    pub status: CredentialStatus,
    pub credential: String,
    pub subject: String,
}

/// `POST …/logout`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutReport {
    pub credential: String,
    /// One entry per token sent to the revocation endpoint.
    pub revocation: Vec<Revocation>,
    pub forgotten: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// `refresh_token` or `access_token`.
    pub token: String,
    /// `revoked`, or what went wrong.
    pub outcome: String,
}

/// A subject's logout, remembered with its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogoutRecord {
    /// RFC 3339.
    pub at: String,
    /// `refresh_token: revoked`, `access_token: revocation endpoint answered 503`, …
    pub revocation: Vec<String>,
}

/// `GET …/subjects/{subject}`, and one entry of a page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectStatus {
    pub subject: String,
    /// The subject's tag, as events, logs and the audit file name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Held in memory (refreshed ahead of expiry), or only in the store.
    pub in_memory: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logout: Option<LogoutRecord>,
    #[serde(flatten)]
    pub status: CredentialStatus,
}

/// `GET …/subjects?after=…&limit=…`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubjectPage {
    pub subjects: Vec<SubjectStatus>,
    /// The `after` of the next page; none on the last.
    pub next: Option<String>,
}

/// `POST …/subjects/{subject}/connect`: where the app sends its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectStarted {
    pub authorize_url: String,
    pub expires_in_s: u64,
}

/// `GET /connect/callback` after the code was redeemed (or not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectResult {
    pub credential: String,
    pub subject: String,
    pub connected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<CredentialStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ConnectFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectFailure {
    pub kind: String,
    pub message: String,
}

/// `POST /console/session`: the admin token, once, for the console's session cookie.
#[derive(Debug, Default, Deserialize)]
pub struct ConsoleSignIn {
    #[serde(default)]
    pub admin_token: Option<secrecy::SecretString>,
}

/// `GET|POST /console/session`: the page's CSRF token (sent back as `x-bearerd-csrf` with
/// every action), or, without a session, whether the page must ask for the admin token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSession {
    pub signed_in: bool,
    pub admin_token_required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}
