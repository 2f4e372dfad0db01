//! `grant = "jwt_bearer"` (RFC 7523 §2.1): an assertion traded for a token. Where the
//! assertion comes from is one file each, and one line of [`assertion_sources!`]:
//! - `signed.rs`: bearerd signs it (`private_key`, or a Google service-account key, whose
//!   file also names the account and the token endpoint);
//! - `platform.rs`: `assertion = { file = … }`, a JWT the platform writes (SEP-1933
//!   workload identity), read again at every exchange;
//! - `id_jag.rs`: `assertion = { id_jag = { … } }`, enterprise-managed authorization: the
//!   user's ID token exchanged at the enterprise IdP for an ID-JAG first.

mod id_jag;
mod platform;
mod signed;

use secrecy::SecretString;

use super::{GrantBuildError, GrantError, GrantKind, IssuedToken, Kind};
use crate::config::lowering::*;
use crate::config::{ConfigError, GrantConfig, GrantSettings, LowerGrant, LoweredGrant};
use crate::config::{SecretRef, SourceMap, TokenRequestConfig};
use crate::oauth::TokenEndpoint;
pub use signed::{token_request, ServiceAccountEndpointError};

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
        )?))
    }
}

credential_table! {
    /// `grant = "jwt_bearer"` (RFC 7523 §2.1): an assertion signed with `private_key` or a
    /// Google service-account key, or one from elsewhere (`assertion`).
    pub struct RawJwtBearerCredential [token_request_keys, schedule_keys, wait_keys] {
        /// `iss` (default: the service account's email, else client_id).
        assertion_issuer: Option<String>,
        /// `sub` (default: the issuer).
        assertion_subject: Option<String>,
        /// A Google service-account JSON key: key, key id, issuer and token endpoint.
        service_account_key: Option<crate::material::RawSecretRef>,
        /// An assertion bearerd does not sign: `{ file = … }` or `{ id_jag = { … } }`.
        assertion: Option<RawAssertion>,
    }
}

/// `assertion = { file = "…" }` or `assertion = { id_jag = { … } }`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAssertion {
    file: Option<std::path::PathBuf>,
    id_jag: Option<id_jag::RawIdJag>,
}

impl LowerGrant for RawJwtBearerCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let policy = lower_policy(map, name, &self.schedule(), &self.wait())?;
        let key = |k: &str| format!("credentials.{name}.{k}");
        let source = match &self.assertion {
            None => AssertionConfig::Signed(signed::lower(map, name, self)?),
            Some(raw) => {
                // An assertion from elsewhere is not signed here: the signing keys would
                // say nothing.
                let rc = self.token_request();
                let signing_keys = [
                    ("service_account_key", self.service_account_key.is_some()),
                    ("assertion_issuer", self.assertion_issuer.is_some()),
                    ("assertion_subject", self.assertion_subject.is_some()),
                    ("key_id", rc.key_id.is_some() && rc.private_key.is_none()),
                ];
                if let Some((k, _)) = signing_keys.iter().find(|(_, given)| *given) {
                    return Err(map.error_at(
                        &key(k),
                        format!("{k} is for an assertion bearerd signs; `assertion` brings one from elsewhere"),
                    ));
                }
                match (&raw.file, &raw.id_jag) {
                    (Some(file), None) => AssertionConfig::File(platform::lower(file)),
                    (None, Some(jag)) => AssertionConfig::IdJag(Box::new(id_jag::lower(map, name, jag)?)),
                    _ => {
                        return Err(map.error_at(
                            &key("assertion"),
                            "assertion takes `file = \"…\"` (a platform-issued JWT) or `id_jag = { … }` (enterprise-managed authorization), one of them",
                        ))
                    }
                }
            }
        };
        let rc = self.token_request();
        // A signed assertion's key is the grant's; otherwise a key authenticates the client.
        let grant_signs = matches!(source, AssertionConfig::Signed(_));
        let request = lower_token_request(
            map,
            name,
            &self.grant,
            &rc,
            ClientIdRule::Optional,
            grant_signs,
        )?;
        Ok(LoweredGrant {
            grant: GrantConfig::new(JwtBearerConfig { request, source }),
            policy,
            subjects: None,
        })
    }
}

/// `grant = "jwt_bearer"` (RFC 7523 §2.1).
#[derive(Debug, Clone)]
pub struct JwtBearerConfig {
    pub request: TokenRequestConfig,
    pub source: AssertionConfig,
}

/// Where the assertion comes from, one variant per source file.
#[derive(Debug, Clone)]
pub enum AssertionConfig {
    Signed(signed::SignedConfig),
    File(platform::FileConfig),
    IdJag(Box<id_jag::IdJagConfig>),
}

/// The registry: which source builds each variant.
macro_rules! assertion_sources {
    ($($variant:ident => $build:path,)*) => {
        fn build_source(
            config: &AssertionConfig,
        ) -> Result<Box<dyn AssertionSource>, GrantBuildError> {
            match config {
                $(AssertionConfig::$variant(c) => $build(c),)*
            }
        }
    };
}

assertion_sources! {
    Signed => signed::build,
    File => platform::build,
    IdJag => id_jag::build,
}

impl GrantSettings for JwtBearerConfig {
    super::settings_of!(JwtBearerKind, request);

    /// Where the assertion comes from, and (signed) its issuer and subject.
    fn identity(&self) -> (Option<&str>, String) {
        let identity = match &self.source {
            AssertionConfig::Signed(s) => s.identity(),
            AssertionConfig::File(f) => f.identity(),
            AssertionConfig::IdJag(j) => j.identity(),
        };
        (None, identity)
    }

    fn service_account_key(&self) -> Option<&SecretRef> {
        match &self.source {
            AssertionConfig::Signed(s) => s.service_account_key(),
            _ => None,
        }
    }
}

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An assertion, and whether the scopes are inside it (Google's service accounts): then
/// the request carries no `scope` of its own.
pub struct Assertion {
    pub jwt: SecretString,
    pub scopes_inside: bool,
}

/// One source of assertions.
#[async_trait::async_trait]
trait AssertionSource: Send + Sync {
    /// A fresh assertion for a token request at `endpoint`.
    async fn assertion(&self, endpoint: &TokenEndpoint) -> Result<Assertion, GrantError>;
}

pub struct JwtBearer {
    /// Boxed: an endpoint is large, and a grant is built once per credential.
    endpoint: Box<TokenEndpoint>,
    source: Box<dyn AssertionSource>,
}

impl JwtBearer {
    pub fn new(endpoint: TokenEndpoint, config: &JwtBearerConfig) -> Result<Self, GrantBuildError> {
        Ok(JwtBearer {
            endpoint: Box::new(endpoint),
            source: build_source(&config.source)?,
        })
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    pub async fn obtain(&self) -> Result<IssuedToken, GrantError> {
        use secrecy::ExposeSecret;
        let Assertion { jwt, scopes_inside } = self.source.assertion(&self.endpoint).await?;
        let form = vec![
            ("grant_type", GRANT_TYPE.to_string()),
            ("assertion", jwt.expose_secret().to_string()),
        ];
        let token = if scopes_inside {
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
