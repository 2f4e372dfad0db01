//! What the test token server trusts in signed JWTs: client assertions (`private_key_jwt`,
//! a federated workload token), `jwt_bearer` assertions and token-exchange subject tokens.
//! Each is verified as a real provider would: signature, `iss`, `sub`, `aud`, `exp`, and
//! for client and grant assertions a `jti` that was never seen before.

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// One key the server trusts, and what its tokens must say.
#[derive(Clone)]
pub struct TrustedSigner {
    /// The public key as PEM (`BEGIN PUBLIC KEY`).
    pub public_pem: String,
    pub alg: Algorithm,
    pub issuer: String,
    /// `None`: any subject.
    pub subject: Option<String>,
    pub audience: String,
    /// Each token is minted for one request (`private_key_jwt`, `jwt_bearer`): a `jti` seen
    /// before is refused. Federated workload tokens are reused until they expire.
    pub single_use: bool,
}

/// The trust of the server, and what it has seen.
#[derive(Default)]
pub struct AssertionPolicy {
    /// Keys for `client_assertion`.
    pub client: Vec<TrustedSigner>,
    /// Keys for `jwt_bearer` assertions and token-exchange subject tokens.
    pub grant: Vec<TrustedSigner>,
    pub seen_jti: HashSet<String>,
    /// Claims and header `kid` of the last token verified, for tests to look at.
    pub last_claims: Option<serde_json::Value>,
    pub last_kid: Option<String>,
    pub accepted: usize,
    pub refused: usize,
    /// The last reason a token was refused.
    pub last_refusal: Option<String>,
}

/// How strictly a token is looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// An assertion minted for this request: short-lived, `jti` never reused.
    Assertion,
    /// A token reused across requests (a subject token).
    Reusable,
}

impl AssertionPolicy {
    /// Verifies `token` against `signers`; the reason when refused.
    /// Checks a signed token; answers its claims.
    pub fn verify(
        &mut self,
        token: &str,
        grant: bool,
        usage: Use,
    ) -> Result<serde_json::Value, String> {
        let signers = if grant { &self.grant } else { &self.client };
        let result = verify_with(token, signers, usage).and_then(|(claims, single_use)| {
            if usage == Use::Assertion && single_use {
                let jti = claims["jti"].as_str().unwrap_or_default().to_string();
                if jti.is_empty() {
                    return Err("no jti".to_string());
                }
                if !self.seen_jti.insert(jti) {
                    return Err("jti reused".to_string());
                }
            }
            Ok(claims)
        });
        match result {
            Ok(claims) => {
                self.last_claims = Some(claims.clone());
                self.last_kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
                self.accepted += 1;
                Ok(claims)
            }
            Err(why) => {
                self.refused += 1;
                self.last_refusal = Some(why.clone());
                Err(why)
            }
        }
    }
}

fn decoding_key(signer: &TrustedSigner) -> Result<DecodingKey, String> {
    let pem = signer.public_pem.as_bytes();
    match signer.alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(pem),
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
        Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
        // HMAC (and whatever the crate adds later) is never a client's key here.
        _ => return Err(format!("{:?} keys are not trusted", signer.alg)),
    }
    .map_err(|e| format!("bad trusted key: {e}"))
}

fn verify_with(
    token: &str,
    signers: &[TrustedSigner],
    usage: Use,
) -> Result<(serde_json::Value, bool), String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| format!("not a JWT: {e}"))?;
    let mut last = "no trusted key for this algorithm".to_string();
    for signer in signers.iter().filter(|s| s.alg == header.alg) {
        let mut v = Validation::new(signer.alg);
        v.leeway = 5;
        v.set_audience(&[&signer.audience]);
        v.set_issuer(&[&signer.issuer]);
        v.sub = signer.subject.clone();
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let key = decoding_key(signer)?;
        match jsonwebtoken::decode::<serde_json::Value>(token, &key, &v) {
            Ok(data) => {
                let claims = data.claims;
                if usage == Use::Assertion && signer.single_use {
                    let exp = claims["exp"].as_u64().unwrap_or(0);
                    let iat = claims["iat"].as_u64().unwrap_or(0);
                    if exp.saturating_sub(iat) > 300 {
                        return Err("assertion lives longer than 5 minutes".into());
                    }
                }
                return Ok((claims, signer.single_use));
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}
