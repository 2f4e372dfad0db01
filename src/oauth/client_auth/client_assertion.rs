//! `client_auth = "client_assertion"`: a JWT minted elsewhere (a projected service-account
//! token), from a file read again at every use and checked to be an unexpired JWT before
//! it is sent; the check step reads it once.

use super::{read_jwt, with_assertion, Authenticate, Form};
use crate::config::lowering::file_only;
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, ConfigError};
use crate::config::{Material, Needed, SecretRef};
use crate::oauth::error::{GrantError, GrantInput};

pub struct ClientAssertion;

impl ClientAuthKind for ClientAssertion {
    fn name(&self) -> &'static str {
        "client_assertion"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["client_assertion"]
    }

    /// The assertion says who the client is.
    fn names_the_client(&self) -> bool {
        false
    }

    fn implied_by(&self, present: &dyn Fn(&str) -> bool, _grant_signs: bool) -> bool {
        present("client_assertion")
    }

    fn lower(&self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
        let key = needed.key("client_assertion");
        let raw = needed.required("client_assertion", &needed.rc.client_assertion)?;
        let source = SecretRef::File(file_only(needed.map, &key, &raw)?);
        needed.map.check_later(&key, Material::Jwt(source.clone()));
        Ok(ClientAuthMethod::new(AssertionFile(source)))
    }
}

/// Where the assertion is written.
#[derive(Debug, Clone)]
pub struct AssertionFile(pub SecretRef);

impl ClientAuthSettings for AssertionFile {
    super::settings_of!(ClientAssertion);
}

super::applies_its_settings!(ClientAssertion, AssertionFile);

impl Authenticate for AssertionFile {
    fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        _token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let assertion = read_jwt(&self.0, GrantInput::ClientAssertion)?;
        with_assertion(form, client_id, &assertion);
        Ok(req)
    }
}
