//! A DPoP key (RFC 9449): the EC P-256 key a sender-constrained token is bound to, and the
//! proofs it signs, one per request. The key is made here, kept as PKCS#8 (sealed in the
//! store with the token it binds), and never leaves the sidecar.
//!
//! The proof is a compact JWS signed with aws-lc-rs directly: its header (with the public
//! key) is fixed per key and encoded once, so a proof costs one claims encoding and one
//! ECDSA signature.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

/// Why a DPoP key cannot be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum DpopKeyError {
    #[error("cannot make a DPoP key")]
    Generate,
    #[error("the stored DPoP key is not an EC P-256 PKCS#8 key")]
    Unreadable,
    #[error("cannot sign a DPoP proof")]
    Sign,
}

/// The key a credential's DPoP-bound tokens are bound to.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    /// The key as the store keeps it: base64url of its PKCS#8 document.
    record: SecretString,
    /// The proof's JWS header (`typ`, `alg`, the public `jwk`), base64url-encoded.
    header_b64: String,
    /// RFC 7638 thumbprint of the public key: the `cnf.jkt` of the tokens bound to it.
    thumbprint: String,
    rng: SystemRandom,
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DpopKey(jkt {}, [REDACTED])", self.thumbprint)
    }
}

#[derive(Serialize)]
struct ProofClaims<'a> {
    jti: String,
    htm: &'a str,
    htu: &'a str,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    ath: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce: Option<&'a str>,
}

impl DpopKey {
    /// A new random key.
    pub fn generate() -> Result<DpopKey, DpopKeyError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| DpopKeyError::Generate)?;
        DpopKey::from_pair(pair)
    }

    /// The key a store record holds (see [`DpopKey::to_record`]).
    pub fn from_record(record: &SecretString) -> Result<DpopKey, DpopKeyError> {
        let der = zeroize::Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(record.expose_secret().trim())
                .map_err(|_| DpopKeyError::Unreadable)?,
        );
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|_| DpopKeyError::Unreadable)?;
        DpopKey::from_pair(pair)
    }

    fn from_pair(pair: EcdsaKeyPair) -> Result<DpopKey, DpopKeyError> {
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| DpopKeyError::Generate)?;
        let record = SecretString::from(URL_SAFE_NO_PAD.encode(pkcs8.as_ref()));
        // The uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        if point.len() != 65 || point[0] != 4 {
            return Err(DpopKeyError::Unreadable);
        }
        let (x, y) = (
            URL_SAFE_NO_PAD.encode(&point[1..33]),
            URL_SAFE_NO_PAD.encode(&point[33..65]),
        );
        // RFC 7638: the required members, in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes()));
        let header = format!(
            r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}"}}}}"#
        );
        Ok(DpopKey {
            pair,
            record,
            header_b64: URL_SAFE_NO_PAD.encode(header),
            thumbprint,
            rng: SystemRandom::new(),
        })
    }

    /// The key as the store keeps it (sealed with the rest of the record).
    pub fn to_record(&self) -> SecretString {
        self.record.clone()
    }

    /// The JWK thumbprint (`cnf.jkt`) of the tokens bound to this key. Public.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// A proof for one request: `htm` the method, `htu` the URL without query and
    /// fragment, `ath` the access token's hash when one is sent with it, and the server's
    /// nonce when it gave one.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, DpopKeyError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = ProofClaims {
            jti: format!("{:032x}", rand::random::<u128>()),
            htm,
            htu,
            iat,
            ath,
            nonce,
        };
        let claims = serde_json::to_vec(&claims).map_err(|_| DpopKeyError::Sign)?;
        let mut jws = String::with_capacity(self.header_b64.len() + claims.len() * 4 / 3 + 92);
        jws.push_str(&self.header_b64);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims, &mut jws);
        let signature = self
            .pair
            .sign(&self.rng, jws.as_bytes())
            .map_err(|_| DpopKeyError::Sign)?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }
}

/// `ath`: base64url of the SHA-256 of the access token, as a proof sent with it carries.
pub fn access_token_hash(access_token: &str) -> String {
    URL_SAFE_NO_PAD.encode(digest(&SHA256, access_token.as_bytes()))
}

/// A server's `DPoP-Nonce` as it may go into a proof (RFC 9449 §8: NQCHAR, so no quote or
/// backslash), and not huge; `None` otherwise.
pub fn valid_nonce(nonce: &str) -> Option<String> {
    let nonce = nonce.trim();
    let fits = nonce
        .bytes()
        .all(|b| b != b'"' && b != b'\\' && (0x21..=0x7e).contains(&b));
    (!nonce.is_empty() && nonce.len() <= 512 && fits).then(|| nonce.to_string())
}

/// `htu` for a URL: without its query and fragment (RFC 9449 §4.2).
pub fn htu_of(url: &url::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(jws: &str, i: usize) -> serde_json::Value {
        let p = jws.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
    }

    #[test]
    fn a_proof_carries_the_public_key_and_verifies_with_it() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof("POST", "https://as.example/token", Some("abc"), Some("n1"))
            .unwrap();
        let (header, claims) = (part(&proof, 0), part(&proof, 1));
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["crv"], "P-256");
        assert!(header["jwk"].get("d").is_none(), "never the private key");
        assert_eq!(claims["htm"], "POST");
        assert_eq!(claims["htu"], "https://as.example/token");
        assert_eq!(claims["ath"], "abc");
        assert_eq!(claims["nonce"], "n1");
        let (signed, sig) = proof.rsplit_once('.').unwrap();
        let point = key.pair.public_key().as_ref().to_vec();
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        );
        public
            .verify(signed.as_bytes(), &URL_SAFE_NO_PAD.decode(sig).unwrap())
            .unwrap();
        let other = key
            .proof("GET", "https://api.example/x", None, None)
            .unwrap();
        assert_ne!(part(&other, 1)["jti"], claims["jti"], "a new jti each time");
        assert!(part(&other, 1).get("ath").is_none());
    }

    #[test]
    fn the_key_survives_its_record_and_the_thumbprint_is_rfc_7638() {
        let key = DpopKey::generate().unwrap();
        let again = DpopKey::from_record(&key.to_record()).unwrap();
        assert_eq!(key.thumbprint(), again.thumbprint());
        assert_eq!(key.thumbprint().len(), 43);
        assert!(DpopKey::from_record(&SecretString::from("bm90IGEga2V5".to_string())).is_err());
        // RFC 9449 §6.1's example: the hash of the access token "Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU".
        assert_eq!(
            access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU"),
            "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
        );
        let url = url::Url::parse("https://api.example/a/b?q=1#f").unwrap();
        assert_eq!(htu_of(&url), "https://api.example/a/b");
    }
}
