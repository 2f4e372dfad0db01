//! Signed JWT assertions: `private_key_jwt` client authentication (RFC 7523 §2.2) and the
//! `jwt_bearer` grant (§2.1). The key comes from a PEM file (RSA, EC P-256/P-384, Ed25519)
//! or a Google service-account JSON key, is read again when its file changes, and signs
//! through `jsonwebtoken` (aws-lc-rs underneath); nothing here hand-rolls JWS.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
    ECDSA_P384_SHA384_FIXED_SIGNING,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls_pemfile::Item;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::secret::SecretRef;
use super::watched::{fingerprint, Seen, Watched};

/// JWS algorithms bearerd signs assertions with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    RS256,
    PS256,
    ES256,
    ES384,
    EdDSA,
}

impl SigningAlg {
    pub const ALL: [SigningAlg; 5] = [
        SigningAlg::RS256,
        SigningAlg::PS256,
        SigningAlg::ES256,
        SigningAlg::ES384,
        SigningAlg::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlg::RS256 => "RS256",
            SigningAlg::PS256 => "PS256",
            SigningAlg::ES256 => "ES256",
            SigningAlg::ES384 => "ES384",
            SigningAlg::EdDSA => "EdDSA",
        }
    }

    pub fn parse(s: &str) -> Option<SigningAlg> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Where a signing key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A PEM private key.
    Pem(SecretRef),
    /// A Google service-account JSON key: key, key id and account in one file.
    ServiceAccount(SecretRef),
}

impl KeySource {
    pub fn source(&self) -> &SecretRef {
        match self {
            KeySource::Pem(s) | KeySource::ServiceAccount(s) => s,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            KeySource::Pem(s) => format!("private key ({})", s.describe()),
            KeySource::ServiceAccount(s) => format!("service-account key ({})", s.describe()),
        }
    }
}

/// A key that signs assertions, and the header and audience they carry.
#[derive(Debug, Clone)]
pub struct SigningConfig {
    pub key: KeySource,
    pub key_id: Option<String>,
    /// `None`: the key's own default (RS256, ES256, ES384 or EdDSA).
    pub alg: Option<SigningAlg>,
    /// `aud` of the assertion; `None`: the token endpoint URL.
    pub audience: Option<String>,
}

/// How long an assertion is valid: short, so a captured one is soon worthless.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60);

/// The kind of a private key, which fixes the algorithms it can sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyFamily {
    pub fn describe(self) -> &'static str {
        match self {
            KeyFamily::Rsa => "an RSA key",
            KeyFamily::EcP256 => "an EC P-256 key",
            KeyFamily::EcP384 => "an EC P-384 key",
            KeyFamily::Ed25519 => "an Ed25519 key",
        }
    }

    /// The algorithm a key of this kind signs with unless `signing_alg` says otherwise.
    pub fn default_alg(self) -> SigningAlg {
        match self {
            KeyFamily::Rsa => SigningAlg::RS256,
            KeyFamily::EcP256 => SigningAlg::ES256,
            KeyFamily::EcP384 => SigningAlg::ES384,
            KeyFamily::Ed25519 => SigningAlg::EdDSA,
        }
    }
}

impl SigningAlg {
    /// The key kind this algorithm needs.
    pub fn family(self) -> KeyFamily {
        match self {
            SigningAlg::RS256 | SigningAlg::PS256 => KeyFamily::Rsa,
            SigningAlg::ES256 => KeyFamily::EcP256,
            SigningAlg::ES384 => KeyFamily::EcP384,
            SigningAlg::EdDSA => KeyFamily::Ed25519,
        }
    }

    fn jwt(self) -> Algorithm {
        match self {
            SigningAlg::RS256 => Algorithm::RS256,
            SigningAlg::PS256 => Algorithm::PS256,
            SigningAlg::ES256 => Algorithm::ES256,
            SigningAlg::ES384 => Algorithm::ES384,
            SigningAlg::EdDSA => Algorithm::EdDSA,
        }
    }
}

/// Why a key cannot be used. The messages name the file's problem, never its content.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Unreadable(#[from] super::secret::SecretError),
    #[error("cannot sign with the key: {0}")]
    Signing(jsonwebtoken::errors::Error),
    #[error(
        "holds no PEM private key (expected BEGIN PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    NoPrivateKey,
    #[error("holds an encrypted private key; bearerd needs it unencrypted (mount it as a secret)")]
    Encrypted,
    #[error("is not an RSA, EC P-256, EC P-384 or Ed25519 private key")]
    Unsupported,
    #[error("holds {}, and signing_alg {} needs {}", .family.describe(), .alg.as_str(), .alg.family().describe())]
    WrongAlgorithm { alg: SigningAlg, family: KeyFamily },
    #[error("is not a Google service-account key: {0}")]
    NotServiceAccount(String),
    #[error("is an RSA key of {0} bits; at least 2048 are needed")]
    WeakRsa(usize),
}

/// A usable private key: what jsonwebtoken signs with, its kind and its public half.
pub struct PrivateKey {
    pub family: KeyFamily,
    encoding: EncodingKey,
    /// The public key as a certificate's SubjectPublicKeyInfo carries it (the bit string).
    pub public_key: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, [REDACTED])", self.family.describe())
    }
}

/// A PEM block around `der`; it holds a private key, so it is wiped when dropped.
fn pem_block(label: &str, der: &[u8]) -> zeroize::Zeroizing<String> {
    use base64::Engine;
    let b64 = zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(der));
    // Sized up front: a reallocation would leave a copy of the key behind.
    let mut out = zeroize::Zeroizing::new(String::with_capacity(b64.len() * 66 / 64 + 80));
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads the first private key in a PEM text and finds out what kind it is.
pub fn parse_private_key(pem: &[u8]) -> Result<PrivateKey, KeyError> {
    let mut reader = pem;
    let mut found = None;
    for item in rustls_pemfile::read_all(&mut reader) {
        match item {
            Ok(Item::Pkcs1Key(k)) => {
                found = Some((1, k.secret_pkcs1_der().to_vec()));
                break;
            }
            Ok(Item::Sec1Key(k)) => {
                found = Some((2, k.secret_sec1_der().to_vec()));
                break;
            }
            Ok(Item::Pkcs8Key(k)) => {
                found = Some((8, k.secret_pkcs8_der().to_vec()));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    let Some((form, der)) = found else {
        let text = String::from_utf8_lossy(pem);
        return Err(if text.contains("ENCRYPTED PRIVATE KEY") {
            KeyError::Encrypted
        } else {
            KeyError::NoPrivateKey
        });
    };
    // Key bytes are wiped when dropped.
    let der = zeroize::Zeroizing::new(der);
    let rsa = |pair: RsaKeyPair, encoding: EncodingKey| {
        let bits = pair.public_modulus_len() * 8;
        if bits < 2048 {
            return Err(KeyError::WeakRsa(bits));
        }
        Ok(PrivateKey {
            family: KeyFamily::Rsa,
            encoding,
            public_key: pair.public_key().as_ref().to_vec(),
        })
    };
    if form == 1 {
        let pair = RsaKeyPair::from_der(&der).map_err(|_| KeyError::Unsupported)?;
        return rsa(pair, EncodingKey::from_rsa_der(&der));
    }
    if form == 8 {
        if let Ok(pair) = RsaKeyPair::from_pkcs8(&der) {
            let encoding = EncodingKey::from_rsa_pem(pem_block("PRIVATE KEY", &der).as_bytes())
                .map_err(|_| KeyError::Unsupported)?;
            return rsa(pair, encoding);
        }
        if let Ok(pair) = Ed25519KeyPair::from_pkcs8(&der) {
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| KeyError::Unsupported)?;
            return Ok(PrivateKey {
                family: KeyFamily::Ed25519,
                encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
                public_key: pair.public_key().as_ref().to_vec(),
            });
        }
    }
    // SEC1 or PKCS#8: the curve decides which one parses.
    for (family, alg) in [
        (KeyFamily::EcP256, &ECDSA_P256_SHA256_FIXED_SIGNING),
        (KeyFamily::EcP384, &ECDSA_P384_SHA384_FIXED_SIGNING),
    ] {
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(alg, &der) {
            // jsonwebtoken takes EC keys as PKCS#8 only.
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| KeyError::Unsupported)?;
            return Ok(PrivateKey {
                family,
                encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                public_key: pair.public_key().as_ref().to_vec(),
            });
        }
    }
    Err(KeyError::Unsupported)
}

/// The fields of a Google service-account JSON key that bearerd reads.
#[derive(Deserialize)]
pub struct ServiceAccountKey {
    #[serde(rename = "type")]
    pub kind: String,
    pub client_email: String,
    pub private_key_id: Option<String>,
    pub private_key: SecretString,
    pub token_uri: Option<String>,
}

impl ServiceAccountKey {
    pub fn parse(text: &str) -> Result<ServiceAccountKey, KeyError> {
        let key: ServiceAccountKey = serde_json::from_str(text).map_err(|e| {
            // Only the position: serde's message could quote the key.
            KeyError::NotServiceAccount(format!(
                "not the expected JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if key.kind != "service_account" {
            return Err(KeyError::NotServiceAccount(format!(
                "its type is {:?}, not \"service_account\"",
                key.kind
            )));
        }
        Ok(key)
    }
}

/// The token endpoint a service-account key file names, if it names one.
pub fn service_account_token_uri(source: &SecretRef) -> Result<Option<String>, KeyError> {
    let text = source.resolve()?;
    Ok(ServiceAccountKey::parse(text.expose_secret())?.token_uri)
}

/// A key as read from its source, with what a service-account file adds.
pub struct LoadedKey {
    pub key: PrivateKey,
    pub alg: SigningAlg,
    pub key_id: Option<String>,
    /// A service account's `client_email`: the assertion's issuer and subject.
    pub account: Option<String>,
}

/// Reads a key source once and checks it against the configured algorithm.
pub fn load_key(config: &SigningConfig) -> Result<LoadedKey, KeyError> {
    let text = config.key.source().resolve()?;
    key_from_text(config, &text)
}

/// The key in `text`, the content of the configured source.
fn key_from_text(config: &SigningConfig, text: &SecretString) -> Result<LoadedKey, KeyError> {
    let (pem, key_id, account) = match &config.key {
        KeySource::Pem(_) => (text.clone(), config.key_id.clone(), None),
        KeySource::ServiceAccount(_) => {
            let sa = ServiceAccountKey::parse(text.expose_secret())?;
            (sa.private_key, sa.private_key_id, Some(sa.client_email))
        }
    };
    let key = parse_private_key(pem.expose_secret().as_bytes())?;
    let alg = match config.alg {
        Some(alg) if alg.family() != key.family => {
            return Err(KeyError::WrongAlgorithm {
                alg,
                family: key.family,
            })
        }
        Some(alg) => alg,
        None => key.family.default_alg(),
    };
    Ok(LoadedKey {
        key,
        alg,
        key_id,
        account,
    })
}

/// What an assertion says: who issued it, about whom, for which audience.
pub struct AssertionClaims<'a> {
    pub issuer: &'a str,
    pub subject: &'a str,
    pub audience: &'a str,
    /// Google's service-account flow asks for scopes inside the assertion.
    pub scope: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Signs assertions with a key it reads again whenever its source changes.
pub struct AssertionSigner {
    config: SigningConfig,
    /// The last key read, by the SHA-256 of its source text.
    cached: Watched<LoadedKey>,
}

impl fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssertionSigner({})", self.config.key.describe())
    }
}

impl AssertionSigner {
    pub fn new(config: SigningConfig) -> AssertionSigner {
        AssertionSigner {
            config,
            cached: Watched::default(),
        }
    }

    pub fn config(&self) -> &SigningConfig {
        &self.config
    }

    /// The current key: the cached one while its source is unchanged, else read again. A
    /// changed source that does not give a usable key (a torn write) leaves the last good
    /// key in use.
    pub fn current_key(&self) -> Result<Arc<LoadedKey>, KeyError> {
        let seen = self.cached.look(
            self.config.key.source().resolve().map_err(KeyError::from),
            |text| fingerprint([text.expose_secret().as_bytes()]),
            |text| key_from_text(&self.config, &text),
        )?;
        let key = self.config.key.describe();
        match &seen {
            Seen::Renewed(_) => tracing::info!(%key, "signing key changed; using the new one"),
            Seen::Kept { why: Some(e), .. } => {
                tracing::warn!(%key, error = %e, "signing key unusable; keeping the previous one")
            }
            _ => {}
        }
        Ok(Arc::clone(seen.value()))
    }

    /// A fresh assertion: a new `jti`, issued now, valid for [`ASSERTION_LIFETIME`].
    pub fn sign(
        &self,
        key: &LoadedKey,
        claims: &AssertionClaims,
    ) -> Result<SecretString, KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut header = Header::new(key.alg.jwt());
        header.kid = key.key_id.clone();
        let body = Claims {
            iss: claims.issuer,
            sub: claims.subject,
            aud: claims.audience,
            jti: format!("{:032x}", rand::random::<u128>()),
            iat: now,
            exp: now + ASSERTION_LIFETIME.as_secs(),
            scope: claims.scope.clone(),
        };
        jsonwebtoken::encode(&header, &body, &key.key.encoding)
            .map(SecretString::from)
            .map_err(KeyError::Signing)
    }
}
