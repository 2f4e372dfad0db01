//! `client_auth = "none"`: a public client, which sends its `client_id` only.

use super::tls_client_auth::NamesTheClient;
use super::{Authenticate, Method};
use crate::config::Needed;
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, ConfigError};

pub struct Public;

impl ClientAuthKind for Public {
    fn name(&self) -> &'static str {
        "none"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }

    fn names_the_client(&self) -> bool {
        false
    }

    /// What is left when no other method's keys are given (last in the registry).
    fn implied_by(&self, _present: &dyn Fn(&str) -> bool, _grant_signs: bool) -> bool {
        true
    }

    fn lower(&self, _needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
        Ok(ClientAuthMethod::new(PublicClient))
    }
}

/// A public client has nothing to prove.
#[derive(Debug, Clone)]
pub struct PublicClient;

impl ClientAuthSettings for PublicClient {
    super::settings_of!(Public);
}

impl Method for Public {
    type Settings = PublicClient;

    fn authenticator(_settings: &PublicClient) -> Box<dyn Authenticate> {
        Box::new(NamesTheClient)
    }
}
