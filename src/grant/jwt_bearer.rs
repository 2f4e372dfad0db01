//! `grant = "jwt_bearer"` (RFC 7523 §2.1): the client signs an assertion about a subject
//! and trades it for a token. A Google service-account key file supplies the key, its id
//! and the account; Google then wants the scopes inside the assertion.

use secrecy::ExposeSecret;

use super::{GrantBuildError, GrantError, GrantKind, IssuedToken, Kind};
use crate::config::lowering::*;
use crate::config::{ConfigError, GrantConfig, GrantSettings, LowerGrant, LoweredGrant};
use crate::config::{KeySource, SecretRef, SigningConfig, SourceMap, TokenRequestConfig};
use crate::material::signing::{
    service_account_token_uri, AssertionClaims, AssertionSigner, KeyError,
};
use crate::oauth::{GrantErrorKind, GrantInput, TokenEndpoint};

pub struct JwtBearerKind;

impl Kind for JwtBearerKind {
    const NAME: &'static str = "jwt_bearer";
    type Table = RawJwtBearerCredential;
    type Settings = JwtBearerConfig;

    fn build(settings: &Self::Settings) -> Result<Box<dyn GrantKind>, GrantBuildError> {
        let request = token_request(settings)?;
        Ok(Box::new(JwtBearer::new(
            TokenEndpoint::new(&request)?,
            settings,
        )))
    }
}

credential_table! {
    /// `grant = "jwt_bearer"` (RFC 7523 §2.1): an assertion signed with `private_key` or a
    /// Google service-account key.
    pub struct RawJwtBearerCredential [token_request_keys, schedule_keys, wait_keys] {
        /// `iss` (default: the service account's email, else client_id).
        assertion_issuer: Option<String>,
        /// `sub` (default: the issuer).
        assertion_subject: Option<String>,
        /// A Google service-account JSON key: key, key id, issuer and token endpoint.
        service_account_key: Option<crate::material::RawSecretRef>,
    }
}

impl LowerGrant for RawJwtBearerCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let policy = lower_policy(map, name, &self.schedule(), &self.wait())?;
        Ok(LoweredGrant {
            grant: lower_jwt_bearer(map, name, self)?,
            policy,
            subjects: None,
        })
    }
}

/// A `jwt_bearer` credential (RFC 7523): a signing key (PEM or a service-account file),
/// the assertion's issuer and subject.
fn lower_jwt_bearer(
    map: &SourceMap,
    name: &str,
    t: &RawJwtBearerCredential,
) -> Result<GrantConfig, ConfigError> {
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
                "grant \"jwt_bearer\" needs `private_key = { file = \"…\" }` or `service_account_key = { file = \"…\" }`",
            ))
        }
    };
    let (source_key, source) = source;
    // Google refuses a service-account assertion without a scope; said once the key has
    // been read (a file that is no service-account key is the first thing to fix).
    let service_account = matches!(source, KeySource::ServiceAccount(_));
    let scopes_missing = service_account && rc.scopes.as_ref().is_none_or(Vec::is_empty);
    let signing = lower_signing(map, name, &rc, (source, source_key), scopes_missing)?;
    let request = lower_token_request(map, name, &t.grant, &rc, ClientIdRule::Optional, true)?;
    // A service-account key names the assertion's issuer (its account) and may name the
    // token endpoint (read when the grant is built).
    let issuer = non_empty(map, &key("assertion_issuer"), &t.assertion_issuer)?;
    if issuer.is_none() && !service_account && request.client.client_id.is_none() {
        return Err(map.error_at(
            &key("grant"),
            "grant \"jwt_bearer\" needs `client_id` or `assertion_issuer` (the assertion's issuer)",
        ));
    }
    let jwt = JwtBearerConfig {
        request,
        signing,
        issuer,
        subject: non_empty(map, &key("assertion_subject"), &t.assertion_subject)?,
    };
    Ok(GrantConfig::new(jwt))
}

/// `grant = "jwt_bearer"` (RFC 7523 §2.1).
#[derive(Debug, Clone)]
pub struct JwtBearerConfig {
    pub request: TokenRequestConfig,
    pub signing: SigningConfig,
    /// `iss`; `None`: the service account's email, else the client id.
    pub issuer: Option<String>,
    /// `sub`; `None`: the issuer.
    pub subject: Option<String>,
}

impl GrantSettings for JwtBearerConfig {
    super::settings_of!(JwtBearerKind, request);

    /// The assertion's key source, issuer and subject.
    fn identity(&self) -> (Option<&str>, String) {
        let identity = format!(
            "{}|{}|{}",
            self.signing.key.describe(),
            self.issuer.as_deref().unwrap_or(""),
            self.subject.as_deref().unwrap_or("")
        );
        (None, identity)
    }

    fn service_account_key(&self) -> Option<&SecretRef> {
        match &self.signing.key {
            KeySource::ServiceAccount(sa) => Some(sa),
            KeySource::Pem(_) => None,
        }
    }
}

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
impl GrantKind for JwtBearer {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        JwtBearer::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }
}
