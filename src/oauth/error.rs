//! Why a token request failed: a closed list of kinds (no strings to mistype), each with
//! the label `/status`, the refresh log and `bearerd status` show.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use secrecy::SecretString;

/// An OAuth error code from the provider (RFC 6749 §5.2, RFC 8628 §3.5, RFC 8707 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    AuthorizationPending,
    SlowDown,
    ExpiredToken,
    TemporarilyUnavailable,
    ServerError,
    /// RFC 9449 §8: the server wants a DPoP proof with the nonce it sent.
    UseDpopNonce,
    /// RFC 9449 §5: the proof was refused (most often a clock skew in its `iat`).
    InvalidDpopProof,
    /// A code no RFC above defines, reduced to `[A-Za-z0-9_]`, at most 64 characters.
    Other(String),
}

impl OAuthErrorCode {
    const KNOWN: [OAuthErrorCode; 15] = [
        OAuthErrorCode::InvalidRequest,
        OAuthErrorCode::InvalidClient,
        OAuthErrorCode::InvalidGrant,
        OAuthErrorCode::UnauthorizedClient,
        OAuthErrorCode::UnsupportedGrantType,
        OAuthErrorCode::InvalidScope,
        OAuthErrorCode::InvalidTarget,
        OAuthErrorCode::AccessDenied,
        OAuthErrorCode::AuthorizationPending,
        OAuthErrorCode::SlowDown,
        OAuthErrorCode::ExpiredToken,
        OAuthErrorCode::TemporarilyUnavailable,
        OAuthErrorCode::ServerError,
        OAuthErrorCode::UseDpopNonce,
        OAuthErrorCode::InvalidDpopProof,
    ];

    pub fn parse(code: &str) -> OAuthErrorCode {
        Self::KNOWN
            .into_iter()
            .find(|k| k.as_str() == code)
            .unwrap_or_else(|| {
                // Codes end up in logs and status fields: keep them short and printable.
                OAuthErrorCode::Other(
                    code.chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .take(64)
                        .collect(),
                )
            })
    }

    pub fn as_str(&self) -> &str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::InvalidTarget => "invalid_target",
            OAuthErrorCode::AccessDenied => "access_denied",
            OAuthErrorCode::AuthorizationPending => "authorization_pending",
            OAuthErrorCode::SlowDown => "slow_down",
            OAuthErrorCode::ExpiredToken => "expired_token",
            OAuthErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthErrorCode::ServerError => "server_error",
            OAuthErrorCode::UseDpopNonce => "use_dpop_nonce",
            OAuthErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            OAuthErrorCode::Other(code) => code,
        }
    }

    /// DESIGN §4: the provider's "try again later" codes are transient; every other code
    /// (the RFC 6749 ones and anything unknown) needs a person before retrying helps.
    pub fn is_transient(&self) -> bool {
        match self {
            OAuthErrorCode::TemporarilyUnavailable
            | OAuthErrorCode::ServerError
            | OAuthErrorCode::SlowDown
            // Answered once with the nonce; asked again, the next attempt brings it.
            | OAuthErrorCode::UseDpopNonce => true,
            OAuthErrorCode::InvalidRequest
            | OAuthErrorCode::InvalidClient
            | OAuthErrorCode::InvalidGrant
            | OAuthErrorCode::UnauthorizedClient
            | OAuthErrorCode::UnsupportedGrantType
            | OAuthErrorCode::InvalidScope
            | OAuthErrorCode::InvalidTarget
            | OAuthErrorCode::AccessDenied
            | OAuthErrorCode::AuthorizationPending
            | OAuthErrorCode::ExpiredToken
            // A proof the server will not take (an algorithm or URL it does not accept)
            // needs the config looked at; a skewed clock is caught by the nonce.
            | OAuthErrorCode::InvalidDpopProof
            | OAuthErrorCode::Other(_) => false,
        }
    }
}

/// A local input a grant or client authentication reads at each use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantInput {
    ClientSecret,
    RefreshToken,
    StaticToken,
    PrivateKey,
    ClientAssertion,
    ClientCertificate,
    SubjectToken,
    ActorToken,
    /// jwt_bearer's `assertion = { file = … }`.
    Assertion,
    /// The DPoP key (`dpop = true`) that signs proofs.
    DpopKey,
}

impl GrantInput {
    pub const ALL: [GrantInput; 10] = [
        GrantInput::ClientSecret,
        GrantInput::RefreshToken,
        GrantInput::StaticToken,
        GrantInput::PrivateKey,
        GrantInput::ClientAssertion,
        GrantInput::ClientCertificate,
        GrantInput::SubjectToken,
        GrantInput::ActorToken,
        GrantInput::Assertion,
        GrantInput::DpopKey,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantInput::ClientSecret => "client_secret",
            GrantInput::RefreshToken => "refresh_token",
            GrantInput::StaticToken => "static_token",
            GrantInput::PrivateKey => "private_key",
            GrantInput::ClientAssertion => "client_assertion",
            GrantInput::ClientCertificate => "client_certificate",
            GrantInput::SubjectToken => "subject_token",
            GrantInput::ActorToken => "actor_token",
            GrantInput::Assertion => "assertion",
            GrantInput::DpopKey => "dpop_key",
        }
    }
}

/// What kind of failure a token attempt had. The label (`Display`) is what `last_error.kind`
/// holds; the OAuth codes appear as the provider sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantErrorKind {
    /// The provider refused with this OAuth error.
    OAuth(OAuthErrorCode),
    /// A non-2xx answer without an OAuth error body (`http_503`).
    Http(u16),
    /// The token endpoint did not answer in time.
    Timeout,
    /// No connection, or it broke off.
    Network,
    /// A 2xx answer that is not a usable bearer token.
    MalformedResponse,
    /// A token of another type than Bearer.
    UnsupportedTokenType,
    /// Discovery of the authorization server failed.
    DiscoveryFailed,
    /// Discovery found no token endpoint.
    NoTokenEndpoint,
    /// A refresh_token credential without a refresh token: `bearerd login` gives one.
    LoginRequired,
    /// The configured refresh token was already sent once.
    RefreshTokenSpent,
    /// A configured file or value could not be read, or is not what it must be.
    Unavailable(GrantInput),
    /// The subject token's own `exp` has passed: exchanging it again cannot work until the
    /// platform writes a new one.
    SubjectTokenExpired,
    /// A token that expired before it arrived.
    ExpiredOnArrival,
    /// The shared store could not be reached for the refresh lease.
    StoreUnavailable,
    /// Another replica holds the refresh lease and wrote nothing new in time.
    LeaseHeld,
    /// The shared store may have lost writes (it restarted or failed over) and settles: no
    /// replica sends a refresh token until every one has had time to write back its set.
    StoreSettling,
    /// The new token set could not be persisted (it is used from memory).
    StoreWriteFailed,
    /// A credential that registers its own client has none for the authorization server
    /// (not yet, or it was registered at another issuer): `bearerd login` registers one.
    RegistrationRequired,
}

impl GrantErrorKind {
    pub fn label(&self) -> Cow<'_, str> {
        match self {
            GrantErrorKind::OAuth(code) => Cow::Borrowed(code.as_str()),
            GrantErrorKind::Http(status) => Cow::Owned(format!("http_{status}")),
            GrantErrorKind::Timeout => Cow::Borrowed("timeout"),
            GrantErrorKind::Network => Cow::Borrowed("network"),
            GrantErrorKind::MalformedResponse => Cow::Borrowed("malformed_response"),
            GrantErrorKind::UnsupportedTokenType => Cow::Borrowed("unsupported_token_type"),
            GrantErrorKind::DiscoveryFailed => Cow::Borrowed("discovery_failed"),
            GrantErrorKind::NoTokenEndpoint => Cow::Borrowed("no_token_endpoint"),
            GrantErrorKind::LoginRequired => Cow::Borrowed("login_required"),
            GrantErrorKind::RefreshTokenSpent => Cow::Borrowed("refresh_token_spent"),
            GrantErrorKind::Unavailable(input) => {
                Cow::Owned(format!("{}_unavailable", input.as_str()))
            }
            GrantErrorKind::SubjectTokenExpired => Cow::Borrowed("subject_token_expired"),
            GrantErrorKind::ExpiredOnArrival => Cow::Borrowed("expired_on_arrival"),
            GrantErrorKind::StoreUnavailable => Cow::Borrowed("store_unavailable"),
            GrantErrorKind::LeaseHeld => Cow::Borrowed("lease_held"),
            GrantErrorKind::StoreSettling => Cow::Borrowed("store_settling"),
            GrantErrorKind::StoreWriteFailed => Cow::Borrowed("store_write_failed"),
            GrantErrorKind::RegistrationRequired => Cow::Borrowed("registration_required"),
        }
    }

    pub fn is_oauth(&self, code: OAuthErrorCode) -> bool {
        *self == GrantErrorKind::OAuth(code)
    }
}

impl fmt::Display for GrantErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

impl serde::Serialize for GrantErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.label())
    }
}

/// Why a grant failed, classified per DESIGN §4.
#[derive(Debug, Clone)]
pub struct GrantError {
    pub kind: GrantErrorKind,
    /// For people: never holds a secret (reqwest errors name the URL, never the form).
    pub message: String,
    pub permanent: bool,
    pub retry_after: Option<Duration>,
    /// A refresh token the provider rotated to even though the rest of its answer was
    /// unusable: it replaces the one that was sent.
    pub rotated_refresh_token: Option<SecretString>,
}

impl GrantError {
    /// Only the provider's verdict on the refresh token itself makes it worthless; a missing
    /// client secret or an unreachable endpoint leaves it as good as it was.
    pub fn drops_refresh_token(&self) -> bool {
        self.kind.is_oauth(OAuthErrorCode::InvalidGrant)
    }

    pub fn transient(kind: GrantErrorKind, message: impl Into<String>) -> Self {
        GrantError {
            kind,
            message: message.into(),
            permanent: false,
            retry_after: None,
            rotated_refresh_token: None,
        }
    }

    pub fn permanent(kind: GrantErrorKind, message: impl Into<String>) -> Self {
        GrantError {
            permanent: true,
            ..GrantError::transient(kind, message)
        }
    }

    /// A local input that cannot be used (missing, unreadable, not a key or a JWT). It is
    /// transient: the platform rewrites projected tokens and mounted secrets, and a fixed
    /// file must be picked up on the next attempt without a restart or a command.
    pub fn unavailable(input: GrantInput, message: impl std::fmt::Display) -> Self {
        GrantError::transient(GrantErrorKind::Unavailable(input), message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_codes_and_names_users_see() {
        assert_eq!(GrantErrorKind::Http(503).to_string(), "http_503");
        assert_eq!(
            GrantErrorKind::Unavailable(GrantInput::ClientSecret).to_string(),
            "client_secret_unavailable"
        );
        for code in OAuthErrorCode::KNOWN {
            assert_eq!(OAuthErrorCode::parse(code.as_str()), code);
        }
        assert_eq!(
            OAuthErrorCode::parse("weird code\n<x>"),
            OAuthErrorCode::Other("weirdcodex".into())
        );
        let labels: std::collections::HashSet<_> = GrantInput::ALL
            .iter()
            .map(|i| GrantErrorKind::Unavailable(*i).to_string())
            .collect();
        assert_eq!(labels.len(), GrantInput::ALL.len());
    }
}
