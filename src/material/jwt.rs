//! A look inside a JWT bearerd did not sign (a projected service-account token, a client
//! assertion): is it shaped like a JWT, and when does it expire. Nothing is verified here;
//! the provider that receives the token verifies it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

/// Why a value is not a JWT. Never quotes the value.
#[derive(Debug, thiserror::Error)]
pub enum NotAJwt {
    #[error("is not a JWT (expected three base64url parts separated by dots)")]
    Shape,
    #[error("is not a JWT (its {0} is not base64url-encoded JSON)")]
    Part(&'static str),
}

/// What bearerd reads from a JWT it passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwtFacts {
    /// `exp`, when the token has one.
    pub expires_at: Option<SystemTime>,
}

impl JwtFacts {
    /// Time left until `exp` (zero once it has passed); `None` without an `exp`.
    pub fn time_left(&self) -> Option<Duration> {
        self.expires_at.map(|at| {
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        })
    }
}

/// Checks the shape of a compact JWS and reads its `exp`.
pub fn peek(token: &str) -> Result<JwtFacts, NotAJwt> {
    let claims = claims(token)?;
    let expires_at = claims
        .get("exp")
        .and_then(serde_json::Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| UNIX_EPOCH + Duration::from_secs_f64(s.min(1e11)));
    Ok(JwtFacts { expires_at })
}

/// The claims of a compact JWS, decoded without checking its signature.
pub fn claims(token: &str) -> Result<serde_json::Map<String, serde_json::Value>, NotAJwt> {
    let parts: Vec<&str> = token.trim().split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(NotAJwt::Shape);
    };
    if signature.is_empty() {
        return Err(NotAJwt::Shape);
    }
    let decode = |part: &str, what: &'static str| -> Result<serde_json::Value, NotAJwt> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| NotAJwt::Part(what))?;
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| NotAJwt::Part(what))?;
        value
            .is_object()
            .then_some(value)
            .ok_or(NotAJwt::Part(what))
    };
    decode(header, "header")?;
    match decode(claims, "claims")? {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err(NotAJwt::Part("claims")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn reads_exp_and_refuses_what_is_not_a_jwt() {
        let jwt = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(r#"{"sub":"x","exp":4000000000}"#)
        );
        let facts = peek(&jwt).unwrap();
        assert_eq!(
            facts.expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(4_000_000_000))
        );
        let no_exp = format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"x"}"#));
        assert_eq!(peek(&no_exp).unwrap().expires_at, None);
        for bad in ["", "abc", "a.b", "a.b.c", &format!("{}.e30.", b64("{}"))] {
            assert!(peek(bad).is_err(), "{bad}");
        }
    }
}
