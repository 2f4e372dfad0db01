//! `grant = "static"`: a token given as it is; a file is polled for changes.

use std::time::Duration;

use tokio::sync::Mutex;

use super::{GrantError, GrantOutcome, IssuedToken};
use crate::config::{same_secret, SecretRef};
use crate::oauth::GrantInput;

pub struct StaticToken {
    token: SecretRef,
    last: Mutex<Option<secrecy::SecretString>>,
}

impl StaticToken {
    pub fn new(token: SecretRef) -> Self {
        StaticToken {
            token,
            last: Mutex::new(None),
        }
    }

    pub fn poll_interval(&self) -> Option<Duration> {
        match self.token {
            SecretRef::File(_) => Some(Duration::from_secs(1)),
            SecretRef::Value(_) | SecretRef::Env(_) => None,
        }
    }

    pub async fn obtain(&self) -> Result<GrantOutcome, GrantError> {
        let value = self
            .token
            .resolve()
            .map_err(|m| GrantError::unavailable(GrantInput::StaticToken, m))?;
        let mut last = self.last.lock().await;
        if last.as_ref().is_some_and(|l| same_secret(l, &value)) {
            return Ok(GrantOutcome::Unchanged);
        }
        *last = Some(value.clone());
        Ok(GrantOutcome::Issued(IssuedToken {
            access_token: value,
            lifetime: None,
            scopes: Vec::new(),
            refresh_token: None,
            lifetime_cap: None,
        }))
    }
}

#[async_trait::async_trait]
impl super::GrantKind for StaticToken {
    async fn obtain(&self) -> Result<GrantOutcome, GrantError> {
        StaticToken::obtain(self).await
    }

    fn endpoint(&self) -> Option<&crate::oauth::TokenEndpoint> {
        None
    }

    fn poll_interval(&self) -> Option<Duration> {
        StaticToken::poll_interval(self)
    }

    fn has_lifetime(&self) -> bool {
        false
    }
}
