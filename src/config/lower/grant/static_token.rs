//! `grant = "static"`: a token given as it is (a file is watched for changes).

use super::super::credential::*;
use super::super::*;
use crate::config::raw::{LowerGrant, LoweredGrant};
use raw::{RawSchedule, RawStaticCredential};

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
            grant: GrantConfig::Static { token },
            policy,
            subjects: None,
        })
    }
}
