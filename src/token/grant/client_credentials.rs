//! `grant = "client_credentials"` (RFC 6749 §4.4): the client's own token.

use super::{GrantError, IssuedToken};
use crate::oauth::TokenEndpoint;

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
impl super::GrantKind for ClientCredentials {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        ClientCredentials::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }
}
