//! A DPoP verifier (RFC 9449) for the test peers: the proof's signature with the key in its
//! own header, its `typ`, `htm`, `htu`, `iat`, `jti` (never twice), the nonce the peer
//! asked for, and `ath` when an access token comes with it. Written from the RFC, with
//! jsonwebtoken for the signature, so it shares no code with the sidecar's signer.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// What one peer demands of proofs, and what it has seen.
#[derive(Default)]
pub struct DpopVerifier {
    /// Tokens are bound only when proofs are required (else a proof is checked if sent).
    pub required: bool,
    /// The nonce proofs must carry (RFC 9449 §8, §9), when the peer asks for one.
    pub nonce: Option<String>,
    jtis: HashSet<String>,
    pub accepted: usize,
    pub refused: usize,
    /// Answers that asked for the nonce.
    pub nonce_challenges: usize,
    pub last_refusal: Option<String>,
}

/// Why a proof is refused.
#[derive(Debug)]
pub enum ProofRefused {
    /// The proof lacks the nonce the peer asks for (answer `use_dpop_nonce`).
    NeedsNonce(String),
    Invalid(String),
}

fn b64json(part: &str) -> Result<Value, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| "a part is not base64url".to_string())?;
    serde_json::from_slice(&bytes).map_err(|_| "a part is not JSON".to_string())
}

/// RFC 7638 thumbprint of an EC public JWK.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let (crv, x, y) = (jwk["crv"].as_str()?, jwk["x"].as_str()?, jwk["y"].as_str()?);
    let canonical = format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#);
    Some(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
}

/// `ath` for an access token.
pub fn token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes()))
}

impl DpopVerifier {
    /// Verifies a proof for `htm` `htu`; answers the key's thumbprint (`jkt`).
    pub fn verify(
        &mut self,
        proof: &str,
        htm: &str,
        htu: &str,
        access_token: Option<&str>,
    ) -> Result<String, ProofRefused> {
        let result =
            check(proof, (htm, htu), access_token, self.nonce.as_deref()).and_then(|(jti, jkt)| {
                match self.jtis.insert(jti) {
                    true => Ok(jkt),
                    false => Err(ProofRefused::Invalid("jti seen before".into())),
                }
            });
        match &result {
            Ok(_) => self.accepted += 1,
            Err(ProofRefused::NeedsNonce(_)) => self.nonce_challenges += 1,
            Err(ProofRefused::Invalid(why)) => {
                self.refused += 1;
                self.last_refusal = Some(why.clone());
            }
        }
        result
    }

    /// Proofs accepted, refused, and answered with the nonce; the last refusal.
    pub fn counts(&self) -> (usize, usize, usize, Option<String>) {
        (
            self.accepted,
            self.refused,
            self.nonce_challenges,
            self.last_refusal.clone(),
        )
    }
}

/// Checks one proof for a request (`htm`, `htu`); answers its `jti` and its key's `jkt`.
fn check(
    proof: &str,
    (htm, htu): (&str, &str),
    access_token: Option<&str>,
    nonce: Option<&str>,
) -> Result<(String, String), ProofRefused> {
    let invalid = ProofRefused::Invalid;
    let parts: Vec<&str> = proof.split('.').collect();
    let [h, _, _] = parts[..] else {
        return Err(invalid("not a compact JWS".into()));
    };
    let header = b64json(h).map_err(invalid)?;
    if header["typ"] != "dpop+jwt" || header["alg"] != "ES256" {
        return Err(invalid(format!("header {header}")));
    }
    let jwk = &header["jwk"];
    if jwk.get("d").is_some() || jwk["kty"] != "EC" {
        return Err(invalid("the jwk is not a public EC key".into()));
    }
    let (Some(x), Some(y)) = (jwk["x"].as_str(), jwk["y"].as_str()) else {
        return Err(invalid("the jwk has no x or y".into()));
    };
    let key = jsonwebtoken::DecodingKey::from_ec_components(x, y)
        .map_err(|e| invalid(format!("jwk: {e}")))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims = HashSet::new();
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(proof, &key, &validation)
        .map_err(|e| invalid(format!("signature: {e}")))?
        .claims;
    if claims["htm"] != htm || claims["htu"] != htu {
        return Err(invalid(format!(
            "htm/htu {} {} for {htm} {htu}",
            claims["htm"], claims["htu"]
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs()) as i64;
    let iat = claims["iat"].as_i64().unwrap_or(0);
    if (now - iat).abs() > 60 {
        return Err(invalid(format!("iat {iat} is not now ({now})")));
    }
    if let Some(at) = access_token {
        if claims["ath"] != token_hash(at) {
            return Err(invalid("ath is not the token's hash".into()));
        }
    }
    if let Some(nonce) = nonce {
        if claims["nonce"] != nonce {
            return Err(ProofRefused::NeedsNonce(nonce.to_string()));
        }
    }
    let jti = claims["jti"].as_str().unwrap_or_default().to_string();
    if jti.len() < 16 {
        return Err(invalid("jti missing or short".into()));
    }
    let jkt = thumbprint(jwk).ok_or_else(|| invalid("no thumbprint".into()))?;
    Ok((jti, jkt))
}
