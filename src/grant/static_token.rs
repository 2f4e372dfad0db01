//! `grant = "static"`: a token given as it is; a file is polled for changes.

use std::time::Duration;

use tokio::sync::Mutex;

use super::{GrantBuildError, GrantError, GrantKind, GrantOutcome, IssuedToken, Kind};
use crate::config::lowering::*;
use crate::config::{same_secret, SecretRef, SourceMap};
use crate::config::{ConfigError, GrantConfig, GrantSettings, LowerGrant, LoweredGrant};
use crate::oauth::GrantInput;

pub struct StaticKind;

impl Kind for StaticKind {
    const NAME: &'static str = "static";
    type Table = RawStaticCredential;
    type Settings = StaticTokenConfig;

    fn build(settings: &Self::Settings) -> Result<Box<dyn GrantKind>, GrantBuildError> {
        Ok(Box::new(StaticToken::new(settings.token.clone())))
    }
}

credential_table! {
    /// `grant = "static"`: a token given as it is (a file is watched for changes).
    pub struct RawStaticCredential [wait_keys] {
        token: Option<crate::material::RawSecretRef>,
    }
}

impl LowerGrant for RawStaticCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let key = |k: &str| format!("credentials.{name}.{k}");
        // A static token has no lifetime of its own: nothing to schedule.
        let policy = lower_policy(map, name, &RawSchedule::default(), &self.wait())?;
        let Some(token) = &self.token else {
            return Err(map.error_at(
                &key("grant"),
                format!(
                    "grant {:?} needs `token = {{ file = \"…\" }}` (or {{ env = \"…\" }})",
                    self.grant
                ),
            ));
        };
        let token = map.lower_secret(&key("token"), token)?;
        Ok(LoweredGrant {
            grant: GrantConfig::new(StaticTokenConfig { token }),
            policy,
            subjects: None,
        })
    }
}

/// A `static` credential's settings: where its token is.
#[derive(Debug, Clone)]
pub struct StaticTokenConfig {
    pub token: SecretRef,
}

impl GrantSettings for StaticTokenConfig {
    super::settings_of!(StaticKind);
}

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
            issued_token_type: None,
            dpop_bound: false,
            dpop_key: None,
        }))
    }
}

#[async_trait::async_trait]
impl GrantKind for StaticToken {
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
