//! `client_auth = "private_key_jwt"` (RFC 7523 §2.2): a JWT signed with the client's key
//! (read from a file or the environment, never written into the config), for the token
//! endpoint (its URL is the default audience), the client as issuer and subject.

use super::{with_assertion, Authenticate, Form, Method};
use crate::config::lowering::{key_source, lower_signing, SIGNING_KEYS};
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, ConfigError};
use crate::config::{KeySource, Needed, SigningConfig};
use crate::material::signing::{AssertionClaims, AssertionSigner};
use crate::oauth::error::{GrantError, GrantInput};

pub struct PrivateKeyJwt;

impl ClientAuthKind for PrivateKeyJwt {
    fn name(&self) -> &'static str {
        "private_key_jwt"
    }

    fn keys(&self) -> &'static [&'static str] {
        &SIGNING_KEYS
    }

    fn names_the_client(&self) -> bool {
        true
    }

    /// A grant that signs its own assertion (jwt_bearer) owns `private_key`.
    fn implied_by(&self, present: &dyn Fn(&str) -> bool, grant_signs: bool) -> bool {
        present("private_key") && !grant_signs
    }

    fn lower(&self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
        let raw = needed.required("private_key", &needed.rc.private_key)?;
        let pem = key_source(needed.map, &needed.key("private_key"), &raw)?;
        let source = (KeySource::Pem(pem), "private_key");
        let signing = lower_signing(needed.map, needed.name, needed.rc, source, false)?;
        Ok(ClientAuthMethod::new(ClientSigningKey(signing)))
    }
}

/// The client's signing key and the assertion's header and audience.
#[derive(Debug, Clone)]
pub struct ClientSigningKey(pub SigningConfig);

impl ClientAuthSettings for ClientSigningKey {
    super::settings_of!(PrivateKeyJwt);
}

impl Method for PrivateKeyJwt {
    type Settings = ClientSigningKey;

    fn authenticator(settings: &ClientSigningKey) -> Box<dyn Authenticate> {
        Box::new(AssertionSigner::new(settings.0.clone()))
    }
}

impl Authenticate for AssertionSigner {
    fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let id = client_id.unwrap_or_default();
        let key = self.current_key().map_err(|e| {
            GrantError::unavailable(
                GrantInput::PrivateKey,
                format!("{} {e}", self.config().key.describe()),
            )
        })?;
        let audience = self.config().audience.as_deref().unwrap_or(token_endpoint);
        let claims = AssertionClaims {
            issuer: id,
            subject: id,
            audience,
            scope: None,
        };
        let assertion = self
            .sign(&key, &claims)
            .map_err(|e| GrantError::unavailable(GrantInput::PrivateKey, e.to_string()))?;
        with_assertion(form, client_id, &assertion);
        Ok(req)
    }
}
