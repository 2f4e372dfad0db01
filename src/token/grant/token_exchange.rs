//! `grant = "token_exchange"` (RFC 8693): trades a subject token the platform writes (a
//! projected service-account token, say) for a token of the API. The subject token is read
//! at every exchange, so the platform's rotation is picked up; the issued token is replaced
//! before the subject token's own `exp`, since the provider may tie the two together.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{GrantError, IssuedToken};
use crate::config::{TokenExchangeConfig, TypedToken, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT};
use crate::oauth::client_auth;
use crate::oauth::{GrantInput, TokenEndpoint};

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub struct TokenExchange {
    /// Shared by the subjects of an on-behalf-of credential.
    endpoint: Arc<TokenEndpoint>,
    subject: TypedToken,
    actor: Option<TypedToken>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    /// On behalf of: the subject token came with a request and never changes, so a subject
    /// token that is expired or malformed is final for this subject (the app must send a
    /// new one), not something to wait for.
    fixed_subject: bool,
}

impl TokenExchange {
    pub fn new(endpoint: Arc<TokenEndpoint>, config: &TokenExchangeConfig) -> Self {
        TokenExchange {
            endpoint,
            subject: config.subject.clone(),
            actor: config.actor.clone(),
            audience: config.audience.clone(),
            requested_token_type: config.requested_token_type.clone(),
            fixed_subject: false,
        }
    }

    /// On behalf of one user: the exchange sends this token (from the user's request).
    pub fn on_behalf_of(
        endpoint: Arc<TokenEndpoint>,
        config: &TokenExchangeConfig,
        subject_token: secrecy::SecretString,
    ) -> Self {
        let mut exchange = Self::new(endpoint, config);
        exchange.subject.token = crate::config::SecretRef::Value(subject_token);
        exchange.fixed_subject = true;
        exchange
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    pub fn shared_endpoint(&self) -> Arc<TokenEndpoint> {
        Arc::clone(&self.endpoint)
    }

    pub async fn obtain(&self) -> Result<IssuedToken, GrantError> {
        let (subject, subject_left) =
            read_token(&self.subject, GrantInput::SubjectToken).map_err(|mut e| {
                e.permanent |= self.fixed_subject;
                e
            })?;
        let mut form = vec![
            ("grant_type", GRANT_TYPE.to_string()),
            ("subject_token", subject),
            ("subject_token_type", self.subject.token_type.clone()),
        ];
        let mut cap = subject_left;
        if let Some(actor) = &self.actor {
            let (token, left) = read_token(actor, GrantInput::ActorToken)?;
            form.push(("actor_token", token));
            form.push(("actor_token_type", actor.token_type.clone()));
            cap = match (cap, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if let Some(a) = &self.audience {
            form.push(("audience", a.clone()));
        }
        if let Some(t) = &self.requested_token_type {
            form.push(("requested_token_type", t.clone()));
        }
        let mut token = self.endpoint.request(form).await?.without_refresh_token();
        token.lifetime_cap = cap;
        Ok(token)
    }
}

/// Reads a subject or actor token. A JWT's `exp` bounds the issued token's lifetime; a
/// token declared as a JWT that is not one is refused before anything is sent.
fn read_token(
    token: &TypedToken,
    input: GrantInput,
) -> Result<(String, Option<Duration>), GrantError> {
    let declared_jwt = matches!(
        token.token_type.as_str(),
        TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN
    );
    let (value, left) = client_auth::read_token(&token.token, input, declared_jwt)?;
    Ok((value.expose_secret().to_string(), left))
}

#[async_trait::async_trait]
impl super::GrantKind for TokenExchange {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        TokenExchange::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }

    fn subject_endpoint(&self) -> Option<Arc<TokenEndpoint>> {
        Some(self.shared_endpoint())
    }
}
