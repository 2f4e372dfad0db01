//! A jwt_bearer assertion bearerd signs: with `private_key` (PEM), or a Google
//! service-account key file, which also supplies the key id, the issuer (its account) and
//! the token endpoint; Google then wants the scopes inside the assertion.

use secrecy::SecretString;

use super::{Assertion, AssertionConfig, AssertionSource, JwtBearerConfig, RawJwtBearerCredential};
use crate::config::lowering::*;
use crate::config::TokenRequestConfig;
use crate::config::{ConfigError, KeySource, SecretRef, SigningConfig, SourceMap};
use crate::grant::GrantBuildError;
use crate::material::signing::{
    service_account_token_uri, AssertionClaims, AssertionSigner, KeyError,
};
use crate::oauth::{GrantError, GrantErrorKind, GrantInput, TokenEndpoint};

/// The key, and the assertion's issuer and subject.
#[derive(Debug, Clone)]
pub struct SignedConfig {
    pub signing: SigningConfig,
    /// `iss`; `None`: the service account's email, else the client id.
    pub issuer: Option<String>,
    /// `sub`; `None`: the issuer.
    pub subject: Option<String>,
    /// The client id (the default issuer).
    client_id: Option<String>,
    /// The scopes, carried inside a service account's assertion.
    scopes: Vec<String>,
}

impl SignedConfig {
    pub fn identity(&self) -> String {
        format!(
            "{}|{}|{}",
            self.signing.key.describe(),
            self.issuer.as_deref().unwrap_or(""),
            self.subject.as_deref().unwrap_or("")
        )
    }

    pub fn service_account_key(&self) -> Option<&SecretRef> {
        match &self.signing.key {
            KeySource::ServiceAccount(sa) => Some(sa),
            KeySource::Pem(_) => None,
        }
    }
}

/// The signing key (PEM or a service-account file), the assertion's issuer and subject.
pub(super) fn lower(
    map: &SourceMap,
    name: &str,
    t: &RawJwtBearerCredential,
) -> Result<SignedConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let rc = t.token_request();
    let source = match (&rc.private_key, &t.service_account_key) {
        (Some(_), Some(_)) => {
            return Err(map.error_at(
                &key("service_account_key"),
                "give `private_key` or `service_account_key`, not both",
            ))
        }
        (Some(pem), None) => (
            "private_key",
            KeySource::Pem(key_source(map, &key("private_key"), pem)?),
        ),
        (None, Some(sa)) => {
            if rc.key_id.is_some() {
                return Err(map.error_at(
                    &key("key_id"),
                    "key_id comes from the service-account key (private_key_id)",
                ));
            }
            (
                "service_account_key",
                KeySource::ServiceAccount(key_source(map, &key("service_account_key"), sa)?),
            )
        }
        (None, None) => {
            return Err(map.error_at(
                &key("grant"),
                "grant \"jwt_bearer\" needs `private_key = { file = \"…\" }`, `service_account_key = { file = \"…\" }` or `assertion = { … }`",
            ))
        }
    };
    let (source_key, source) = source;
    // Google refuses a service-account assertion without a scope; said once the key has
    // been read (a file that is no service-account key is the first thing to fix).
    let service_account = matches!(source, KeySource::ServiceAccount(_));
    let scopes_missing = service_account && rc.scopes.as_ref().is_none_or(Vec::is_empty);
    let signing = lower_signing(map, name, &rc, (source, source_key), scopes_missing)?;
    // A service-account key names the assertion's issuer (its account).
    let issuer = non_empty(map, &key("assertion_issuer"), &t.assertion_issuer)?;
    let client_id = rc.client_id.clone().filter(|c| !c.trim().is_empty());
    if issuer.is_none() && !service_account && client_id.is_none() {
        return Err(map.error_at(
            &key("grant"),
            "grant \"jwt_bearer\" needs `client_id` or `assertion_issuer` (the assertion's issuer)",
        ));
    }
    Ok(SignedConfig {
        signing,
        issuer,
        subject: non_empty(map, &key("assertion_subject"), &t.assertion_subject)?,
        client_id,
        scopes: rc.scopes.clone().unwrap_or_default(),
    })
}

/// Why the token endpoint a service-account key names cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountEndpointError {
    #[error("service_account_key ({source_name}) {error}")]
    Key {
        source_name: String,
        error: KeyError,
    },
    #[error("service_account_key's token_uri is not a URL: {0}")]
    Url(url::ParseError),
}

/// The credential's token request, with the endpoint its service-account key names when
/// the config names none (the check step has read the key and its URL already).
pub fn token_request(
    config: &JwtBearerConfig,
) -> Result<TokenRequestConfig, ServiceAccountEndpointError> {
    let mut request = config.request.clone();
    let AssertionConfig::Signed(signed) = &config.source else {
        return Ok(request);
    };
    if let (KeySource::ServiceAccount(sa), None, None) =
        (&signed.signing.key, &request.token_url, &request.issuer)
    {
        let uri =
            service_account_token_uri(sa).map_err(|error| ServiceAccountEndpointError::Key {
                source_name: sa.describe(),
                error,
            })?;
        if let Some(uri) = uri {
            request.token_url =
                Some(url::Url::parse(&uri).map_err(ServiceAccountEndpointError::Url)?);
        }
    }
    Ok(request)
}

struct Signed {
    signer: AssertionSigner,
    config: SignedConfig,
}

pub(super) fn build(config: &SignedConfig) -> Result<Box<dyn AssertionSource>, GrantBuildError> {
    Ok(Box::new(Signed {
        signer: AssertionSigner::new(config.signing.clone()),
        config: config.clone(),
    }))
}

#[async_trait::async_trait]
impl AssertionSource for Signed {
    async fn assertion(&self, endpoint: &TokenEndpoint) -> Result<Assertion, GrantError> {
        let key = self.signer.current_key().map_err(|e| {
            GrantError::unavailable(
                GrantInput::PrivateKey,
                format!("{} {e}", self.signer.config().key.describe()),
            )
        })?;
        let token_url = endpoint.endpoints().await?.token.ok_or_else(|| {
            GrantError::permanent(
                GrantErrorKind::NoTokenEndpoint,
                "discovery found no token_endpoint",
            )
        })?;
        let c = &self.config;
        let issuer = c
            .issuer
            .as_deref()
            .or(key.account.as_deref())
            .or(c.client_id.as_deref())
            .unwrap_or_default();
        let subject = c.subject.as_deref().unwrap_or(issuer);
        let audience = self
            .signer
            .config()
            .audience
            .as_deref()
            .unwrap_or(token_url.as_str());
        let service_account = c.service_account_key().is_some();
        let scopes_inside = service_account && !c.scopes.is_empty();
        let claims = AssertionClaims {
            issuer,
            subject,
            audience,
            scope: scopes_inside.then(|| c.scopes.join(" ")),
        };
        let jwt: SecretString = self
            .signer
            .sign(&key, &claims)
            .map_err(|e| GrantError::unavailable(GrantInput::PrivateKey, e.to_string()))?;
        Ok(Assertion { jwt, scopes_inside })
    }
}
