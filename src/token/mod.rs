//! The token engine: one [`CredentialSlot`] per credential. The proxy reads the slot
//! lock-free (ArcSwap); only the refresher writes it. Requests that need a new token (none
//! yet, or a 401) register a demand and wait; the refresher serves demands and the schedule
//! through one loop, so there is exactly one refresh in flight per credential.

pub mod credential;
pub mod engine;
pub mod refresher;
pub mod rotation;
pub mod schedule;
pub mod slot;
pub mod subject;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

/// Grants live in their own room; the old path stays for users of the library.
pub use crate::grant;
pub use crate::oauth::GrantErrorKind;
pub use slot::{CredentialSlot, CredentialState, CredentialStatus};

/// What started a refresh (a label of `bearerd_token_refresh_total`).
pub use crate::metrics::Trigger;

impl Trigger {
    /// Triggered by traffic, and so subject to the rate limit.
    fn is_request_triggered(self) -> bool {
        matches!(self, Trigger::OnDemand | Trigger::On401)
    }
}

/// A published token: the ready-made header value and what the engine knows about it.
pub struct TokenSnapshot {
    /// `Bearer …` (or `DPoP …`), marked sensitive so HTTP libraries never print it.
    pub header: HeaderValue,
    /// A DPoP-bound token: the key every request proves possession of.
    pub dpop: Option<DpopBinding>,
    pub generation: u64,
    pub issued_at: Instant,
    pub issued_wall: SystemTime,
    /// `None` for tokens that do not expire (static tokens).
    pub lifetime: Option<Duration>,
    /// After this instant the token is not handed out (expiry minus a small floor).
    pub usable_until: Option<Instant>,
    pub scopes: Vec<String>,
}

/// What a request with a DPoP-bound token needs besides the token: the key, and the
/// token's hash (`ath`), computed once per token rather than per request.
pub struct DpopBinding {
    pub key: Arc<crate::material::dpop::DpopKey>,
    pub ath: String,
}

impl DpopBinding {
    pub fn new(key: Arc<crate::material::dpop::DpopKey>, token: &secrecy::SecretString) -> Self {
        use secrecy::ExposeSecret;
        let ath = crate::material::dpop::access_token_hash(token.expose_secret());
        DpopBinding { key, ath }
    }
}

impl TokenSnapshot {
    /// The `DPoP` header for one request with this token (RFC 9449 §7): `None` for a
    /// bearer token, or when the proof cannot be made (the request is then not sent).
    pub fn dpop_proof(
        &self,
        method: &str,
        htu: &str,
        nonce: Option<&str>,
    ) -> Option<Result<HeaderValue, crate::material::dpop::DpopKeyError>> {
        let binding = self.dpop.as_ref()?;
        let proof = binding
            .key
            .proof(method, htu, Some(&binding.ath), nonce)
            .and_then(|p| {
                HeaderValue::try_from(p).map_err(|_| crate::material::dpop::DpopKeyError::Sign)
            });
        Some(proof)
    }

    pub fn is_usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|u| now < u)
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.lifetime.map(|l| self.issued_at + l)
    }
}

/// Why a request could not get a token.
#[derive(Debug, Clone)]
pub struct TokenUnavailable {
    pub reason: Unavailability,
    pub message: String,
}

/// The kinds of "no token", each with its problem+json slug and title.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailability {
    /// None could be had within the wait budget; retries go on.
    NoValidToken,
    /// Only a new login or secret can fix it (`requires_reauth`).
    NeedsReauth,
    /// A rotating refresh token is only sent under the shared store's lease, and the store
    /// is unreachable.
    StoreUnavailable,
}

impl Unavailability {
    pub fn slug(self) -> &'static str {
        match self {
            Unavailability::NoValidToken => "token-unavailable",
            Unavailability::NeedsReauth => "credential-failed",
            Unavailability::StoreUnavailable => "store-unavailable",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Unavailability::NoValidToken => "No valid token",
            Unavailability::NeedsReauth => "Credential needs re-authorization",
            Unavailability::StoreUnavailable => "Token store unavailable",
        }
    }
}

impl TokenUnavailable {
    /// Only a new login or secret can fix it (`requires_reauth`).
    pub fn requires_reauth(&self) -> bool {
        self.reason == Unavailability::NeedsReauth
    }
}

/// The scopes a `WWW-Authenticate` challenge with `error="insufficient_scope"` asks for
/// (RFC 6750 §3.1); `None` for any other challenge.
/// The `Bearer` challenge's, else the `DPoP` one's (RFC 9449 §7.1, for DPoP-bound tokens).
pub fn insufficient_scope(challenge: &str) -> Option<Vec<String>> {
    use crate::oauth::discovery::scheme_param;
    let scheme = ["bearer", "dpop"]
        .into_iter()
        .find(|s| scheme_param(challenge, s, "error").as_deref() == Some("insufficient_scope"))?;
    let scope = scheme_param(challenge, scheme, "scope").unwrap_or_default();
    Some(scope.split_whitespace().map(str::to_string).collect())
}

/// A `DPoP` challenge's `error` (RFC 9449 §7.1): `use_dpop_nonce`, `invalid_dpop_proof`, …
pub fn dpop_challenge_error(challenge: &str) -> Option<String> {
    crate::oauth::discovery::scheme_param(challenge, "dpop", "error")
}

/// What a request should do after its upstream answered 403 `insufficient_scope`.
pub enum StepUpDecision {
    /// Replay with this token, obtained for the union of scopes.
    Replay(Arc<TokenSnapshot>),
    /// A person must log in again for these scopes (a user grant).
    Login { scopes: Vec<String> },
    /// Pass the 403 through.
    PassThrough,
}

/// What a request should do after its upstream answered 401.
pub enum ReplayDecision {
    /// Replay with this (newer) token.
    Replay(Arc<TokenSnapshot>),
    /// A request-triggered refresh ran too recently: pass the 401 through.
    RateLimited,
    /// No newer token could be had: pass the 401 through.
    NoNewerToken,
}

#[derive(Debug, Clone)]
pub struct LastError {
    pub kind: GrantErrorKind,
    pub message: String,
    /// RFC 3339.
    pub at: String,
}

impl LastError {
    /// As `/status` shows it: the kind as its label.
    pub fn view(&self) -> crate::api::LastError {
        crate::api::LastError {
            kind: self.kind.label().into_owned(),
            message: self.message.clone(),
            at: self.at.clone(),
        }
    }
}

/// The `Authorization` value for a token, marked sensitive: `Bearer`, or `DPoP` for a
/// token bound to a key (RFC 9449 §7.1).
pub fn authorization_header(token: &secrecy::SecretString, dpop: bool) -> Option<HeaderValue> {
    use secrecy::ExposeSecret;
    let scheme = if dpop { "DPoP" } else { "Bearer" };
    let mut v = HeaderValue::try_from(format!("{scheme} {}", token.expose_secret())).ok()?;
    v.set_sensitive(true);
    Some(v)
}
