//! Reading a token endpoint's answer: a token only from a well-formed 2xx, everything else
//! a classified [`GrantError`] (DESIGN §4). Total: no status, header or body panics it.

use std::time::{Duration, SystemTime};

use secrecy::SecretString;
use serde::Deserialize;

use super::error::{GrantError, GrantErrorKind, OAuthErrorCode};
use super::transport::RawResponse;
use super::IssuedToken;

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
    /// RFC 8693 §2.2.1: what a token exchange issued.
    issued_token_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

fn parse_retry_after(v: &http::HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_parse(s)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 6 {
            return None;
        }
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == parts[2])? + 1;
        let iso = format!("{}-{:02}-{:0>2}T{}Z", parts[3], month, parts[1], parts[4]);
        humantime::parse_rfc3339(&iso).ok()
    })
}

/// What a token endpoint's answer means: a token (only from a well-formed 2xx), or a
/// classified error. Total: no status, header or body makes it panic.
pub fn classify_response(raw: &RawResponse) -> Result<IssuedToken, GrantError> {
    if (200..300).contains(&raw.status) {
        return parse_success(&raw.body);
    }
    let retry_after = raw.retry_after.as_ref().and_then(parse_retry_after);
    Err(classify_failure(raw.status, &raw.body, retry_after))
}

/// Parses a 2xx token response. A body that is not a usable bearer token is a transient
/// error: the provider glitched, and the next attempt may well succeed. A refresh token in
/// such a body is still handed back (in the error): the provider has rotated, and the old
/// one must never be sent again.
pub fn parse_success(body: &[u8]) -> Result<IssuedToken, GrantError> {
    let r: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        GrantError::transient(
            GrantErrorKind::MalformedResponse,
            // Only the position: serde's message could quote a token.
            format!(
                "token response is not a JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let rotated = r
        .refresh_token
        .clone()
        .filter(|t| !t.is_empty())
        .map(SecretString::from);
    let with_rotated = |mut e: GrantError| {
        e.rotated_refresh_token = rotated.clone();
        e
    };
    let access = r.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        with_rotated(GrantError::transient(
            GrantErrorKind::MalformedResponse,
            "token response has no access_token",
        ))
    })?;
    if access.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(with_rotated(GrantError::transient(
            GrantErrorKind::MalformedResponse,
            "access_token holds characters that cannot go in an Authorization header",
        )));
    }
    // RFC 9449 §5: a token bound to the DPoP key that proved possession of it.
    let dpop_bound = r
        .token_type
        .as_deref()
        .is_some_and(|tt| tt.eq_ignore_ascii_case("dpop"));
    if let Some(tt) = &r.token_type {
        // RFC 8693 §2.2.1: "N_A" when an exchange issues something other than an access
        // token (a JWT, say), which the upstream still takes as a bearer credential.
        if !tt.eq_ignore_ascii_case("bearer") && tt != "N_A" && !dpop_bound {
            return Err(with_rotated(GrantError::permanent(
                GrantErrorKind::UnsupportedTokenType,
                format!("token_type {tt:?} is neither Bearer nor DPoP"),
            )));
        }
    }
    let seconds = match &r.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_f64().unwrap_or(-1.0)),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<f64>().unwrap_or(-1.0)),
        Some(_) => Some(-1.0),
    };
    let lifetime = match seconds {
        None => None,
        // Clamped to a year so instant arithmetic can never overflow on a silly value.
        Some(s) if s > 0.0 && s.is_finite() => {
            Some(Duration::from_secs_f64(s.min(MAX_LIFETIME_SECS)))
        }
        Some(_) => {
            return Err(with_rotated(GrantError::transient(
                GrantErrorKind::MalformedResponse,
                "expires_in is not a positive number",
            )))
        }
    };
    let scopes = r
        .scope
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Ok(IssuedToken {
        access_token: SecretString::from(access),
        lifetime,
        scopes,
        refresh_token: rotated,
        lifetime_cap: None,
        issued_token_type: r.issued_token_type,
        dpop_bound,
        dpop_key: None,
    })
}

const MAX_LIFETIME_SECS: f64 = 365.0 * 86400.0;

/// Classifies a non-2xx token response per DESIGN §4.
pub fn classify_failure(status: u16, body: &[u8], retry_after: Option<Duration>) -> GrantError {
    let parsed: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let mut err = match (status, parsed) {
        (429, _) => {
            GrantError::transient(GrantErrorKind::Http(429), "token endpoint is rate limiting")
        }
        (500..=599, p) => GrantError::transient(
            GrantErrorKind::Http(status),
            match p {
                Some(p) => describe(&p),
                None => format!("token endpoint answered {status}"),
            },
        ),
        (_, Some(p)) => {
            let code = OAuthErrorCode::parse(&p.error);
            let permanent = !code.is_transient();
            GrantError {
                kind: GrantErrorKind::OAuth(code),
                message: describe(&p),
                permanent,
                retry_after: None,
                rotated_refresh_token: None,
            }
        }
        (408, None) => GrantError::transient(
            GrantErrorKind::Http(408),
            "token endpoint timed out the request",
        ),
        (_, None) => GrantError::permanent(
            GrantErrorKind::Http(status),
            format!("token endpoint answered {status} without an OAuth error body"),
        ),
    };
    err.retry_after = retry_after;
    err
}

fn describe(p: &ErrorResponse) -> String {
    match &p.error_description {
        Some(d) => format!("{}: {}", p.error, d.chars().take(200).collect::<String>()),
        None => p.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_normal_response() {
        let t = parse_success(br#"{"access_token":"abc","token_type":"bearer","expires_in":"30","refresh_token":"r2","scope":"a b"}"#).unwrap();
        assert_eq!(t.lifetime, Some(Duration::from_secs(30)));
        assert_eq!(t.scopes, vec!["a", "b"]);
        assert!(t.refresh_token.is_some());
    }

    #[test]
    fn rejects_bad_success_bodies_as_transient() {
        for body in [
            &b"not json"[..],
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"a","expires_in":-3}"#,
        ] {
            let e = parse_success(body).err().expect("must fail");
            assert!(!e.permanent, "{}", e.message);
            assert_eq!(e.kind, GrantErrorKind::MalformedResponse);
        }
        let e = parse_success(br#"{"access_token":"a","token_type":"mac"}"#)
            .err()
            .unwrap();
        assert!(e.permanent);
    }

    #[test]
    fn classifies_failures() {
        for code in [
            "invalid_grant",
            "invalid_client",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
        ] {
            let body = format!(r#"{{"error":"{code}"}}"#);
            assert!(
                classify_failure(400, body.as_bytes(), None).permanent,
                "{code}"
            );
        }
        assert!(classify_failure(400, b"", None).permanent);
        assert!(classify_failure(401, b"", None).permanent);
        assert!(!classify_failure(503, b"", None).permanent);
        assert!(!classify_failure(429, b"", None).permanent);
        assert!(!classify_failure(400, br#"{"error":"temporarily_unavailable"}"#, None).permanent);
        let e = classify_failure(503, b"", Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }

    /// Any answer a token endpoint can give, broken ones above all.
    mod answers {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        /// One field of a token response: absent, or one of these values.
        fn field(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
            prop_oneof![1 => Just(None), 3 => prop::sample::select(values).prop_map(Some)]
        }

        fn token_json() -> impl Strategy<Value = Value> {
            let access = field(vec![
                json!("tok_AbC.123-_~+/="),
                json!(""),
                json!("has space"),
                json!("tök"),
                json!(null),
                json!(42),
                json!(["a"]),
            ]);
            let token_type = field(vec![
                json!("Bearer"),
                json!("bearer"),
                json!("BEARER"),
                json!("mac"),
                json!("DPoP"),
                json!(null),
                json!(7),
            ]);
            let expires_in = field(vec![
                json!(3600),
                json!(1),
                json!(0),
                json!(-5),
                json!(0.5),
                json!(1e300),
                json!(u64::MAX),
                json!(i64::MIN),
                json!("30"),
                json!(" 30 "),
                json!("abc"),
                json!("inf"),
                json!("NaN"),
                json!("-1"),
                json!(true),
                json!(null),
                json!({"s": 1}),
            ]);
            let refresh = field(vec![json!("rt_next"), json!(""), json!(null), json!(9)]);
            let scope = field(vec![json!("a b"), json!(""), json!(null), json!(["a"])]);
            let error = field(vec![
                json!("invalid_grant"),
                json!("invalid_client"),
                json!("server_error"),
                json!("slow_down"),
                json!("temporarily_unavailable"),
                json!("weird\u{0}code\u{7f}"),
                json!(3),
            ]);
            (access, token_type, expires_in, refresh, scope, error).prop_map(
                |(a, t, e, r, s, err)| {
                    let mut m = serde_json::Map::new();
                    for (k, v) in [
                        ("access_token", a),
                        ("token_type", t),
                        ("expires_in", e),
                        ("refresh_token", r),
                        ("scope", s),
                        ("error", err),
                    ] {
                        if let Some(v) = v {
                            m.insert(k.into(), v);
                        }
                    }
                    Value::Object(m)
                },
            )
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                4 => token_json().prop_map(|v| v.to_string().into_bytes()),
                // Truncated JSON.
                2 => (token_json(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
                    let text = v.to_string().into_bytes();
                    text[..i.index(text.len() + 1)].to_vec()
                }),
                1 => prop::collection::vec(any::<u8>(), 0..64),
                1 => Just(b"[1,2]".to_vec()),
                1 => Just(b"\"just a string\"".to_vec()),
                1 => Just(b"{\"access_token\":\"a\",\"expires_in\":1e400}".to_vec()),
            ]
        }

        fn retry_after() -> impl Strategy<Value = Option<http::HeaderValue>> {
            let forms = prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                Just("Sun, 06 Nov 1994 08:49:37 GMT".to_string()),
                Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
                Just("Mon, 99 Foo 2024 99:99:99 GMT".to_string()),
                Just("-1".to_string()),
                Just("1.5".to_string()),
                "[ -~]{0,40}",
            ];
            proptest::option::of(forms.prop_filter_map("not a header value", |s| {
                http::HeaderValue::from_str(&s).ok()
            }))
        }

        fn status() -> impl Strategy<Value = u16> {
            prop_oneof![3 => 200u16..300, 1 => Just(200u16), 4 => 100u16..600]
        }

        /// The oracle: a success that may be published, read independently of the parser.
        fn well_formed_success(status: u16, body: &[u8]) -> Option<String> {
            if !(200..300).contains(&status) {
                return None;
            }
            let Value::Object(m) = serde_json::from_slice::<Value>(body).ok()? else {
                return None;
            };
            let string_or_absent =
                |k: &str| matches!(m.get(k), None | Some(Value::Null) | Some(Value::String(_)));
            // Other members (`error` among them) are not read from a success.
            if !["token_type", "refresh_token", "scope"]
                .iter()
                .all(|k| string_or_absent(k))
            {
                return None;
            }
            let access = m.get("access_token")?.as_str()?;
            if access.is_empty() || !access.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return None;
            }
            if let Some(Value::String(t)) = m.get("token_type") {
                // DPoP-bound tokens are read here; the endpoint refuses one it did not ask for.
                if !t.eq_ignore_ascii_case("bearer")
                    && !t.eq_ignore_ascii_case("dpop")
                    && t != "N_A"
                {
                    return None;
                }
            }
            let positive = |x: f64| x.is_finite() && x > 0.0;
            match m.get("expires_in") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(positive) => {}
                Some(Value::String(s)) if s.trim().parse().is_ok_and(positive) => {}
                Some(_) => return None,
            }
            Some(access.to_string())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000),
                ..ProptestConfig::default()
            })]

            #[test]
            fn every_answer_is_classified_and_only_a_well_formed_success_gives_a_token(
                status in status(),
                retry_after in retry_after(),
                body in body(),
            ) {
                let raw = super::RawResponse { status, retry_after: retry_after.clone(), body: body.clone(), dpop_nonce: None };
                let outcome = super::classify_response(&raw);
                let oracle = well_formed_success(status, &body);
                match (&outcome, &oracle) {
                    (Ok(token), Some(access)) => {
                        prop_assert_eq!(secrecy::ExposeSecret::expose_secret(&token.access_token), access.as_str());
                        prop_assert!(token.lifetime.is_none_or(|l| !l.is_zero()));
                    }
                    (Ok(_), None) => prop_assert!(false, "published a token from {status} {:?}", String::from_utf8_lossy(&body)),
                    (Err(e), Some(_)) => prop_assert!(false, "refused a well-formed success: {} {}", e.kind, e.message),
                    (Err(e), None) => {
                        let label = e.kind.to_string();
                        prop_assert!(!label.is_empty());
                        prop_assert!(label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "kind {:?}", label);
                        if status == 429 || (500..600).contains(&status) {
                            prop_assert!(!e.permanent, "{status} must be transient");
                        }
                        if !(200..300).contains(&status) {
                            if let Some(secs) = retry_after.as_ref().and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                                prop_assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(secs)));
                            }
                        }
                        // Nothing the body carried as a token reaches the error text.
                        prop_assert!(!e.message.contains("tok_AbC"), "{}", e.message);
                        prop_assert!(!e.message.contains("rt_next"), "{}", e.message);
                    }
                }
            }
        }
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static("12")),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static(
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )),
            Some(Duration::ZERO)
        );
    }
}
