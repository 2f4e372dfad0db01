//! `grant = "client_credentials"` (RFC 6749 §4.4): the client's own token.

use super::super::credential::*;
use super::super::token_request::lower_token_request;
use super::super::*;
use crate::config::raw::{LowerGrant, LoweredGrant};
use raw::RawClientCredentials;

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
            grant: GrantConfig::ClientCredentials(request),
            policy,
            subjects: None,
        })
    }
}
