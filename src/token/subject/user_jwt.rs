//! The subject from the user's own JWT (`subject_from = { jwt = … }`), verified against the
//! issuer's JWKS: signature, `iss`, `aud`, `exp` and `nbf`. A subject header is only as
//! trustworthy as every process on the pod's loopback; a verified token's subject is
//! whoever its issuer says (issue 20, hole 11).
//!
//! The keys are fetched on first use, again when a token names a key the set lacks (at
//! most every [`MIN_REFETCH`]), and when they are older than [`MAX_AGE`]; a failed refetch
//! keeps the keys there are. Fetches are single-flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::HeaderMap;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{InvalidSubject, SubjectKey};
use crate::config::{secure_or_loopback, JwtSubjectConfig};
use crate::oauth::transport::{token_http_client, ClientError};

/// A token naming an unknown key refetches the set at most this often: soon enough for a
/// key the issuer signs with as soon as it publishes it, and a flood of made-up key ids
/// costs the issuer one fetch per interval.
const MIN_REFETCH: Duration = Duration::from_secs(5);
/// Keys older than this are fetched again (an issuer rotates its keys through its JWKS).
const MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// The most a JWKS or metadata document may weigh.
const MAX_DOCUMENT: usize = 1 << 20;
/// Clock skew allowed on `exp` and `nbf`.
const LEEWAY_S: u64 = 30;

/// Asymmetric signatures only: a JWKS is public, so a MAC key in it would let anyone sign.
const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a request's user token gives no subject.
#[derive(Debug, thiserror::Error)]
pub enum UserJwtRejected {
    #[error("the request carries no user token in {0}")]
    Missing(String),
    #[error("{0} appears more than once")]
    Repeated(String),
    #[error("the user token is not a JWT")]
    NotAJwt,
    #[error("the user token is signed with {0:?}: only asymmetric signatures are accepted")]
    Algorithm(Algorithm),
    #[error("no key of the issuer's JWKS verifies the user token")]
    UnknownKey,
    #[error("the user token is invalid: {0}")]
    Invalid(String),
    #[error("the user token has no string claim {0:?}")]
    NoClaim(String),
    #[error("the user token's subject is not usable: {0}")]
    Subject(InvalidSubject),
    /// Not the user's fault: answered 503, not 401.
    #[error("the issuer's keys cannot be fetched: {0}")]
    KeysUnavailable(Arc<KeysFetchError>),
}

/// The keys, when they were fetched (`None`: never), and the last failure to fetch them.
struct Keys {
    set: JwkSet,
    fetched: Option<Instant>,
    failed: Option<(Instant, Arc<KeysFetchError>)>,
}

pub struct UserJwtVerifier {
    config: JwtSubjectConfig,
    header: http::HeaderName,
    keys: ArcSwap<Keys>,
    /// Held while fetching: one fetch at a time.
    fetching: tokio::sync::Mutex<()>,
    http: reqwest::Client,
}

impl UserJwtVerifier {
    pub fn new(
        header: http::HeaderName,
        config: JwtSubjectConfig,
    ) -> Result<Arc<UserJwtVerifier>, ClientError> {
        // The credential's `ca_file`, when it has one, is trusted here too.
        let http = token_http_client(Duration::from_secs(5), config.ca_file.as_deref(), None)?;
        Ok(Arc::new(UserJwtVerifier {
            config,
            header,
            keys: ArcSwap::from_pointee(Keys {
                set: JwkSet { keys: Vec::new() },
                fetched: None,
                failed: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
            http,
        }))
    }

    /// The subject of the request's user token, verified.
    pub async fn subject(
        self: &Arc<Self>,
        headers: &HeaderMap,
    ) -> Result<SubjectKey, UserJwtRejected> {
        let token = self.token_in(headers)?;
        let header = jsonwebtoken::decode_header(token).map_err(|_| UserJwtRejected::NotAJwt)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(UserJwtRejected::Algorithm(header.alg));
        }
        let kid = header.kid.as_deref();
        let keys = self.keys.load();
        match keys.fetched {
            None => {
                // Never fetched: a failure within MIN_REFETCH answers at once, so requests
                // do not queue behind fetches of an issuer that is down.
                if let Some((at, why)) = &keys.failed {
                    if at.elapsed() < MIN_REFETCH {
                        return Err(UserJwtRejected::KeysUnavailable(Arc::clone(why)));
                    }
                }
                self.refetch(|k| k.fetched.is_some()).await?;
            }
            // Old keys: fetched again in the background, requests go on with these.
            Some(at) if at.elapsed() > MAX_AGE => {
                let verifier = Arc::clone(self);
                tokio::spawn(async move {
                    let fresh = |k: &Keys| k.fetched.is_some_and(|at| at.elapsed() <= MAX_AGE);
                    let _ = verifier.refetch(fresh).await;
                });
            }
            Some(_) => {}
        }
        let claims = match self.verify(token, header.alg, kid)? {
            Some(claims) => claims,
            None => {
                // A key the set lacks: the issuer may have rotated since the last fetch.
                let recent = |k: &Keys| k.fetched.is_some_and(|at| at.elapsed() < MIN_REFETCH);
                self.refetch(recent).await?;
                self.verify(token, header.alg, kid)?
                    .ok_or(UserJwtRejected::UnknownKey)?
            }
        };
        let claim = &self.config.claim;
        let value = claims
            .get(claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| UserJwtRejected::NoClaim(claim.clone()))?;
        SubjectKey::parse(value.as_bytes()).map_err(UserJwtRejected::Subject)
    }

    /// The token in the configured header: one value, `Bearer ` optional.
    fn token_in<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, UserJwtRejected> {
        let name = || self.header.as_str().to_string();
        let mut values = headers.get_all(&self.header).iter();
        let value = values
            .next()
            .ok_or_else(|| UserJwtRejected::Missing(name()))?;
        if values.next().is_some() {
            return Err(UserJwtRejected::Repeated(name()));
        }
        let text = value.to_str().map_err(|_| UserJwtRejected::NotAJwt)?.trim();
        let token = match text.get(..7) {
            Some(p) if p.eq_ignore_ascii_case("bearer ") => text[7..].trim_start(),
            _ => text,
        };
        if token.is_empty() || token.len() > 16384 {
            return Err(UserJwtRejected::NotAJwt);
        }
        Ok(token)
    }

    /// The token's claims when a key of the set verifies it; `None` when no key of the set
    /// is one for it (by `kid`, or by type when the token names none).
    fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, UserJwtRejected> {
        let keys = self.keys.load();
        let candidates = keys
            .set
            .keys
            .iter()
            .filter(|k| kid.is_none() || k.common.key_id.as_deref() == kid)
            .filter(|k| usable_for(k, alg));
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_S;
        let mut last = None;
        for jwk in candidates.take(16) {
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &key,
                &validation,
            ) {
                Ok(data) => return Ok(Some(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        match last {
            Some(e) => Err(UserJwtRejected::Invalid(describe(&e))),
            None => Ok(None),
        }
    }

    /// Fetches the keys again, unless `fresh_enough` holds for the keys there are once this
    /// fetch's turn comes (another fetch may have just run).
    async fn refetch(&self, fresh_enough: impl Fn(&Keys) -> bool) -> Result<(), UserJwtRejected> {
        let _turn = self.fetching.lock().await;
        let current = self.keys.load_full();
        if fresh_enough(&current) {
            return Ok(());
        }
        match self.fetch().await {
            Ok(set) => {
                self.keys.store(Arc::new(Keys {
                    set,
                    fetched: Some(Instant::now()),
                    failed: None,
                }));
                Ok(())
            }
            Err(why) => {
                let why = Arc::new(why);
                tracing::warn!(issuer = %self.config.issuer, error = %why, "the user tokens' keys could not be fetched; keys fetched before stay in use");
                // Keys there are stay in use, and count as fetched MIN_REFETCH ago at most
                // so the next try is not before then.
                let fetched = current
                    .fetched
                    .map(|_| Instant::now() - MAX_AGE + MIN_REFETCH);
                self.keys.store(Arc::new(Keys {
                    set: current.set.clone(),
                    fetched,
                    failed: Some((Instant::now(), Arc::clone(&why))),
                }));
                match fetched {
                    Some(_) => Ok(()),
                    None => Err(UserJwtRejected::KeysUnavailable(why)),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<JwkSet, KeysFetchError> {
        let jwks_url = match &self.config.jwks_url {
            Some(url) => url.clone(),
            None => self.discover_jwks_url().await?,
        };
        let body = self.get(&jwks_url).await?;
        serde_json::from_slice(&body)
            .map_err(|e| KeysFetchError::at(&jwks_url, format!("not a JWK set: {e}")))
    }

    /// The issuer's `jwks_uri`, from its OpenID or RFC 8414 metadata, which must name the
    /// configured issuer.
    async fn discover_jwks_url(&self) -> Result<url::Url, KeysFetchError> {
        let base = self.config.issuer.trim_end_matches('/');
        let issuer = url::Url::parse(base).map_err(|e| KeysFetchError::at(base, e.to_string()))?;
        let origin = issuer.origin().ascii_serialization();
        let path = issuer.path().trim_end_matches('/');
        let mut last = None;
        // OpenID Connect appends its suffix to the issuer; RFC 8414 inserts its prefix
        // between the host and the issuer's path.
        for candidate in [
            format!("{base}/.well-known/openid-configuration"),
            format!("{origin}/.well-known/oauth-authorization-server{path}"),
        ] {
            let url = url::Url::parse(&candidate)
                .map_err(|e| KeysFetchError::at(&candidate, e.to_string()))?;
            let body = match self.get(&url).await {
                Ok(b) => b,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let fail = |why: String| KeysFetchError::at(&url, why);
            let meta: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| fail(e.to_string()))?;
            if meta["issuer"].as_str() != Some(self.config.issuer.as_str()) {
                return Err(fail(format!("names another issuer: {}", meta["issuer"])));
            }
            let jwks = meta["jwks_uri"]
                .as_str()
                .ok_or_else(|| fail("has no jwks_uri".into()))?;
            let jwks = url::Url::parse(jwks).map_err(|e| fail(format!("jwks_uri: {e}")))?;
            if !self.config.insecure_http && !secure_or_loopback(&jwks) {
                return Err(fail(format!(
                    "jwks_uri {jwks} is plain http to another host"
                )));
            }
            return Ok(jwks);
        }
        Err(last.unwrap_or_else(|| KeysFetchError::at(base, "no metadata".into())))
    }

    async fn get(&self, url: &url::Url) -> Result<bytes::Bytes, KeysFetchError> {
        let fail = |why: String| KeysFetchError::at(url, why);
        let response = self
            .http
            .get(url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("answered {}", response.status())));
        }
        let too_large = || fail(format!("larger than {MAX_DOCUMENT} bytes"));
        if response
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT as u64)
        {
            return Err(too_large());
        }
        let body = response.bytes().await.map_err(|e| fail(e.to_string()))?;
        if body.len() > MAX_DOCUMENT {
            return Err(too_large());
        }
        Ok(body)
    }
}

/// Why the issuer's keys could not be fetched: the document, and what went wrong with it.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {why}")]
pub struct KeysFetchError {
    url: String,
    why: String,
}

impl KeysFetchError {
    fn at(url: impl std::fmt::Display, why: String) -> KeysFetchError {
        KeysFetchError {
            url: url.to_string(),
            why,
        }
    }
}

/// Whether `jwk` may verify a token signed with `alg`: a public key of the right type,
/// meant for signatures, and for this algorithm when it names one.
fn usable_for(jwk: &Jwk, alg: Algorithm) -> bool {
    let kind_fits = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => matches!(
            alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        AlgorithmParameters::EllipticCurve(_) => {
            matches!(alg, Algorithm::ES256 | Algorithm::ES384)
        }
        AlgorithmParameters::OctetKeyPair(_) => alg == Algorithm::EdDSA,
        // A symmetric key in a public document is never a signer to trust.
        _ => false,
    };
    let use_fits = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    let alg_fits = jwk
        .common
        .key_algorithm
        .is_none_or(|a| key_algorithm_is(a, alg));
    kind_fits && use_fits && alg_fits
}

fn key_algorithm_is(declared: KeyAlgorithm, alg: Algorithm) -> bool {
    format!("{declared:?}") == format!("{alg:?}")
}

/// What a failed verification says, without the token.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidSignature => "its signature does not verify".into(),
        ErrorKind::ExpiredSignature => "it has expired".into(),
        ErrorKind::ImmatureSignature => "it is not valid yet (nbf)".into(),
        ErrorKind::InvalidIssuer => "it was issued by another issuer".into(),
        ErrorKind::InvalidAudience => "it is meant for another audience".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("it has no {c:?} claim"),
        _ => "it does not verify".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_signing_keys_of_the_tokens_type_verify() {
        let ec: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "a"
        }))
        .unwrap();
        assert!(usable_for(&ec, Algorithm::ES256));
        assert!(!usable_for(&ec, Algorithm::RS256));
        let mac: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "k": "c2VjcmV0", "kid": "m"
        }))
        .unwrap();
        for alg in ACCEPTED {
            assert!(!usable_for(&mac, alg), "{alg:?}");
        }
        let pinned: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "alg": "ES384"
        }))
        .unwrap();
        assert!(!usable_for(&pinned, Algorithm::ES256));
        assert!(!ACCEPTED.contains(&Algorithm::HS256));
    }
}
