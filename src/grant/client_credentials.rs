//! `grant = "client_credentials"` (RFC 6749 §4.4): the client's own token.

use super::{GrantBuildError, GrantError, GrantKind, IssuedToken, Kind};
use crate::config::lowering::*;
use crate::config::{ConfigError, GrantConfig, GrantSettings, LowerGrant, LoweredGrant};
use crate::config::{SourceMap, TokenRequestConfig};
use crate::oauth::TokenEndpoint;

pub struct ClientCredentialsKind;

impl Kind for ClientCredentialsKind {
    const NAME: &'static str = "client_credentials";
    type Table = RawClientCredentials;
    type Settings = ClientCredentialsConfig;

    fn build(settings: &Self::Settings) -> Result<Box<dyn GrantKind>, GrantBuildError> {
        let endpoint = TokenEndpoint::new(&settings.request)?;
        Ok(Box::new(ClientCredentials::new(endpoint)))
    }
}

credential_table! {
    /// `grant = "client_credentials"`: the client's own token (RFC 6749 §4.4).
    pub struct RawClientCredentials [token_request_keys, schedule_keys, wait_keys] {}
}

impl LowerGrant for RawClientCredentials {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let policy = lower_policy(map, name, &self.schedule(), &self.wait())?;
        let request = lower_token_request(
            map,
            name,
            &self.grant,
            &self.token_request(),
            ClientIdRule::Required,
            false,
        )?;
        Ok(LoweredGrant {
            grant: GrantConfig::new(ClientCredentialsConfig { request }),
            policy,
            subjects: None,
        })
    }
}

/// A `client_credentials` credential's settings: its token request alone.
#[derive(Debug, Clone)]
pub struct ClientCredentialsConfig {
    pub request: TokenRequestConfig,
}

impl GrantSettings for ClientCredentialsConfig {
    super::settings_of!(ClientCredentialsKind, request);
}

pub struct ClientCredentials {
    /// Boxed: an endpoint is large, and a grant is built once per credential.
    endpoint: Box<TokenEndpoint>,
}

impl ClientCredentials {
    pub fn new(endpoint: TokenEndpoint) -> Self {
        ClientCredentials {
            endpoint: Box::new(endpoint),
        }
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    pub async fn obtain(&self) -> Result<IssuedToken, GrantError> {
        let form = vec![("grant_type", "client_credentials".to_string())];
        self.endpoint
            .request(form)
            .await
            .map(IssuedToken::without_refresh_token)
    }
}

#[async_trait::async_trait]
impl GrantKind for ClientCredentials {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        ClientCredentials::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }
}
