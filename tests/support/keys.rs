//! Key pairs made fresh for each test (nothing secret is checked in): PEM private keys in
//! the forms bearerd reads, the public halves the test token server trusts, and a JWT
//! minter standing in for a cluster that issues service-account tokens.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub use testkit::TrustedSigner;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    /// P-256 written as SEC1 (`BEGIN EC PRIVATE KEY`), as `openssl ecparam -genkey` does.
    EcP256Sec1,
    EcP384,
    Ed25519,
}

pub struct TestKey {
    pub kind: KeyKind,
    pub private_pem: String,
    pub public_pem: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public key as the algorithm writes it (an EC point, an Ed25519 key), for its JWK.
    public_raw: Vec<u8>,
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl TestKey {
    pub fn generate(kind: KeyKind) -> TestKey {
        let mut public_raw = Vec::new();
        let (private_pem, public_der, alg) = match kind {
            KeyKind::Rsa => {
                let pair = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
                let private: aws_lc_rs::encoding::Pkcs8V1Der = pair.as_der().unwrap();
                let public: aws_lc_rs::encoding::PublicKeyX509Der =
                    pair.public_key().as_der().unwrap();
                (
                    pem("PRIVATE KEY", private.as_ref()),
                    public.as_ref().to_vec(),
                    Algorithm::RS256,
                )
            }
            KeyKind::EcP256 | KeyKind::EcP256Sec1 | KeyKind::EcP384 => {
                let (alg, jwt) = if kind == KeyKind::EcP384 {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, Algorithm::ES384)
                } else {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, Algorithm::ES256)
                };
                let pair = EcdsaKeyPair::generate(alg).unwrap();
                public_raw = pair.public_key().as_ref().to_vec();
                let public: aws_lc_rs::encoding::PublicKeyX509Der =
                    pair.public_key().as_der().unwrap();
                let private = if kind == KeyKind::EcP256Sec1 {
                    let sec1: aws_lc_rs::encoding::EcPrivateKeyRfc5915Der =
                        pair.private_key().as_der().unwrap();
                    pem("EC PRIVATE KEY", sec1.as_ref())
                } else {
                    pem("PRIVATE KEY", pair.to_pkcs8v1().unwrap().as_ref())
                };
                (private, public.as_ref().to_vec(), jwt)
            }
            KeyKind::Ed25519 => {
                let pair = Ed25519KeyPair::generate().unwrap();
                public_raw = pair.public_key().as_ref().to_vec();
                let public: aws_lc_rs::encoding::PublicKeyX509Der =
                    pair.public_key().as_der().unwrap();
                (
                    pem("PRIVATE KEY", pair.to_pkcs8v1().unwrap().as_ref()),
                    public.as_ref().to_vec(),
                    Algorithm::EdDSA,
                )
            }
        };
        let encoding = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(private_pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(private_pem.as_bytes()),
            _ if kind == KeyKind::EcP256Sec1 => Ok(EncodingKey::from_ec_der(
                EcdsaKeyPair::from_private_key_der(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &pem_der(&private_pem),
                )
                .unwrap()
                .to_pkcs8v1()
                .unwrap()
                .as_ref(),
            )),
            _ => EncodingKey::from_ec_pem(private_pem.as_bytes()),
        }
        .unwrap();
        TestKey {
            kind,
            private_pem,
            public_pem: pem("PUBLIC KEY", &public_der),
            alg,
            encoding,
            public_raw,
        }
    }

    /// The public key as a JWK named `kid` (EC and Ed25519 keys).
    pub fn jwk(&self, kid: &str) -> serde_json::Value {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let raw = &self.public_raw;
        match self.kind {
            KeyKind::Ed25519 => serde_json::json!({
                "kty": "OKP", "crv": "Ed25519", "x": b64(raw), "kid": kid, "use": "sig", "alg": "EdDSA"
            }),
            KeyKind::Rsa => panic!("no JWK for test RSA keys"),
            _ => {
                // An uncompressed point: 0x04, then x and y.
                let half = (raw.len() - 1) / 2;
                let (crv, alg) = if self.kind == KeyKind::EcP384 {
                    ("P-384", "ES384")
                } else {
                    ("P-256", "ES256")
                };
                serde_json::json!({
                    "kty": "EC", "crv": crv, "x": b64(&raw[1..1 + half]), "y": b64(&raw[1 + half..]),
                    "kid": kid, "use": "sig", "alg": alg
                })
            }
        }
    }

    /// A JWT signed with this key, its header naming `kid`.
    pub fn mint_with_kid(&self, kid: &str, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    /// Trust for tokens this key signs, with these claims.
    pub fn signer(&self, issuer: &str, subject: Option<&str>, audience: &str) -> TrustedSigner {
        TrustedSigner {
            public_pem: self.public_pem.clone(),
            alg: self.alg,
            issuer: issuer.to_string(),
            subject: subject.map(str::to_string),
            audience: audience.to_string(),
            single_use: true,
        }
    }

    /// A JWT signed with this key, as a cluster signs a projected service-account token.
    pub fn mint(&self, claims: &serde_json::Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some("cluster-key".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
