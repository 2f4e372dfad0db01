//! `grant = "jwt_bearer"` (RFC 7523 §2.1): the client signs an assertion about a subject
//! and trades it for a token. A Google service-account key file supplies the key, its id
//! and the account; Google then wants the scopes inside the assertion.

use secrecy::ExposeSecret;

use super::{GrantError, IssuedToken};
use crate::config::{JwtBearerConfig, KeySource, TokenRequestConfig};
use crate::material::signing::{
    service_account_token_uri, AssertionClaims, AssertionSigner, KeyError,
};
use crate::oauth::{GrantErrorKind, GrantInput, TokenEndpoint};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

pub struct JwtBearer {
    /// Boxed: an endpoint is large, and a grant is built once per credential.
    endpoint: Box<TokenEndpoint>,
    signer: AssertionSigner,
    issuer: Option<String>,
    subject: Option<String>,
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
    if let (KeySource::ServiceAccount(sa), None, None) =
        (&config.signing.key, &request.token_url, &request.issuer)
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

impl JwtBearer {
    pub fn new(endpoint: TokenEndpoint, config: &JwtBearerConfig) -> Self {
        JwtBearer {
            endpoint: Box::new(endpoint),
            signer: AssertionSigner::new(config.signing.clone()),
            issuer: config.issuer.clone(),
            subject: config.subject.clone(),
        }
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    fn service_account(&self) -> bool {
        match self.signer.config().key {
            KeySource::ServiceAccount(_) => true,
            KeySource::Pem(_) => false,
        }
    }

    pub async fn obtain(&self) -> Result<IssuedToken, GrantError> {
        let key = self.signer.current_key().map_err(|e| {
            GrantError::unavailable(
                GrantInput::PrivateKey,
                format!("{} {e}", self.signer.config().key.describe()),
            )
        })?;
        let token_url = self.endpoint.endpoints().await?.token.ok_or_else(|| {
            GrantError::permanent(
                GrantErrorKind::NoTokenEndpoint,
                "discovery found no token_endpoint",
            )
        })?;
        let client_id = self.endpoint.config().client.client_id.as_deref();
        let issuer = self
            .issuer
            .as_deref()
            .or(key.account.as_deref())
            .or(client_id)
            .unwrap_or_default();
        let subject = self.subject.as_deref().unwrap_or(issuer);
        let audience = self
            .signer
            .config()
            .audience
            .as_deref()
            .unwrap_or(token_url.as_str());
        let scopes = &self.endpoint.config().scopes;
        let in_assertion = self.service_account() && !scopes.is_empty();
        let claims = AssertionClaims {
            issuer,
            subject,
            audience,
            scope: in_assertion.then(|| scopes.join(" ")),
        };
        let assertion = self
            .signer
            .sign(&key, &claims)
            .map_err(|e| GrantError::unavailable(GrantInput::PrivateKey, e.to_string()))?;
        let form = vec![
            ("grant_type", GRANT_TYPE.to_string()),
            ("assertion", assertion.expose_secret().to_string()),
        ];
        let token = if in_assertion {
            self.endpoint.exchange(form).await?
        } else {
            self.endpoint.request(form).await?
        };
        Ok(token.without_refresh_token())
    }
}

#[async_trait::async_trait]
impl super::GrantKind for JwtBearer {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        JwtBearer::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }
}
