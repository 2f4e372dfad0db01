//! `client_auth = "basic"`: HTTP Basic with the client secret (RFC 6749 §2.3.1).

use base64::Engine;
use secrecy::ExposeSecret;

use super::{form_encode, secret, Authenticate, Form};
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, ConfigError};
use crate::config::{Needed, SecretRef};
use crate::oauth::error::{GrantError, GrantInput};

pub struct Basic;

impl ClientAuthKind for Basic {
    fn name(&self) -> &'static str {
        "basic"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["client_secret"]
    }

    fn names_the_client(&self) -> bool {
        true
    }

    fn implied_by(&self, present: &dyn Fn(&str) -> bool, _grant_signs: bool) -> bool {
        present("client_secret")
    }

    fn lower(&self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
        Ok(ClientAuthMethod::new(BasicSecret(needed.client_secret()?)))
    }
}

/// The client secret, sent in the `Authorization` header.
#[derive(Debug, Clone)]
pub struct BasicSecret(pub SecretRef);

impl ClientAuthSettings for BasicSecret {
    super::settings_of!(Basic);
}

super::applies_its_settings!(Basic, BasicSecret);

impl Authenticate for BasicSecret {
    fn apply(
        &self,
        req: reqwest::RequestBuilder,
        _form: &mut Form,
        client_id: Option<&str>,
        _token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let secret = secret(&self.0)?;
        // Both parts are form-urlencoded before base64.
        let user = form_encode(client_id.unwrap_or_default());
        let pass = form_encode(secret.expose_secret());
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let mut value = http::HeaderValue::try_from(format!("Basic {b64}")).map_err(|_| {
            GrantError::unavailable(
                GrantInput::ClientSecret,
                "the client secret cannot go in a header",
            )
        })?;
        value.set_sensitive(true);
        Ok(req.header("authorization", value))
    }
}
