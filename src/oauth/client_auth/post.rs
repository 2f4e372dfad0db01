//! `client_auth = "post"`: `client_id` and `client_secret` in the form (RFC 6749 §2.3.1).

use secrecy::ExposeSecret;

use super::{secret, with_client_id, Authenticate, Form};
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, ConfigError};
use crate::config::{Needed, SecretRef};
use crate::oauth::error::GrantError;

pub struct Post;

impl ClientAuthKind for Post {
    fn name(&self) -> &'static str {
        "post"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["client_secret"]
    }

    fn names_the_client(&self) -> bool {
        true
    }

    /// Never implied: a client secret alone means `basic`.
    fn implied_by(&self, _present: &dyn Fn(&str) -> bool, _grant_signs: bool) -> bool {
        false
    }

    fn lower(&self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
        Ok(ClientAuthMethod::new(PostSecret(needed.client_secret()?)))
    }
}

/// The client secret, sent in the form.
#[derive(Debug, Clone)]
pub struct PostSecret(pub SecretRef);

impl ClientAuthSettings for PostSecret {
    super::settings_of!(Post);
}

super::applies_its_settings!(Post, PostSecret);

impl Authenticate for PostSecret {
    fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        _token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let secret = secret(&self.0)?;
        with_client_id(form, client_id);
        form.push(("client_secret", secret.expose_secret().to_string()));
        Ok(req)
    }
}
