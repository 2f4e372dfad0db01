//! Client authentication at the token endpoint: one file per `client_auth` method that
//! puts something in the request (RFC 6749 §2.3.1, RFC 7523 §2.2), and an arm each here;
//! `tls_client_auth` (RFC 8705 §2.1) is the transport's, `none` names the client only.
//! Secrets, keys and assertions are read at each use, so a rotated file counts from the
//! next request on.

mod basic;
mod client_assertion;
mod post;
mod private_key_jwt;

use secrecy::ExposeSecret;

use super::error::{GrantError, GrantInput};
use crate::config::{ClientAuthMethod, SecretRef};
use crate::material::signing::AssertionSigner;

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT assertion.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A form being built for the token endpoint.
pub type Form = Vec<(&'static str, String)>;

pub enum ClientAuthenticator {
    Basic(SecretRef),
    Post(SecretRef),
    PrivateKeyJwt(AssertionSigner),
    ClientAssertion(SecretRef),
    /// The certificate is presented by the transport; the form names the client.
    TlsClientAuth,
    None,
}

impl ClientAuthenticator {
    pub fn new(method: &ClientAuthMethod) -> ClientAuthenticator {
        match method {
            ClientAuthMethod::Basic(s) => ClientAuthenticator::Basic(s.clone()),
            ClientAuthMethod::Post(s) => ClientAuthenticator::Post(s.clone()),
            ClientAuthMethod::PrivateKeyJwt(signing) => {
                ClientAuthenticator::PrivateKeyJwt(AssertionSigner::new(signing.clone()))
            }
            ClientAuthMethod::ClientAssertion(s) => ClientAuthenticator::ClientAssertion(s.clone()),
            ClientAuthMethod::TlsClientAuth(_) => ClientAuthenticator::TlsClientAuth,
            ClientAuthMethod::None => ClientAuthenticator::None,
        }
    }

    /// Adds the client's credentials to a request for `endpoint` (the token endpoint's URL
    /// is the default audience of a signed assertion).
    pub fn apply(
        &self,
        mut req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let secret = |s: &SecretRef| {
            s.resolve()
                .map_err(|m| GrantError::unavailable(GrantInput::ClientSecret, m))
        };
        match self {
            ClientAuthenticator::Basic(s) => req = basic::apply(req, secret(s)?, client_id)?,
            ClientAuthenticator::Post(s) => post::apply(form, secret(s)?, client_id),
            ClientAuthenticator::PrivateKeyJwt(signer) => {
                private_key_jwt::apply(form, signer, client_id, token_endpoint)?
            }
            ClientAuthenticator::ClientAssertion(source) => {
                client_assertion::apply(form, source, client_id)?
            }
            ClientAuthenticator::TlsClientAuth | ClientAuthenticator::None => {
                with_client_id(form, client_id)
            }
        }
        Ok(req)
    }
}

/// Reads a JWT from its source (again at every call) and checks that it is one, and not
/// expired. The value itself never reaches a message.
pub fn read_jwt(
    source: &SecretRef,
    input: GrantInput,
) -> Result<secrecy::SecretString, GrantError> {
    read_token(source, input, true).map(|(value, _)| value)
}

/// Reads a token bearerd passes on (again at every call), with the time its `exp` leaves
/// when it is a JWT. `must_be_jwt`: one that is not is refused before anything is sent. An
/// expired one is refused too: the platform is about to write a new one.
pub fn read_token(
    source: &SecretRef,
    input: GrantInput,
    must_be_jwt: bool,
) -> Result<(secrecy::SecretString, Option<std::time::Duration>), GrantError> {
    let value = source
        .resolve()
        .map_err(|m| GrantError::unavailable(input, m))?;
    let left = match crate::material::jwt::peek(value.expose_secret()) {
        Ok(facts) => facts.time_left(),
        Err(e) if must_be_jwt => {
            return Err(GrantError::unavailable(
                input,
                format!("{} ({}) {e}", input.as_str(), source.describe()),
            ))
        }
        // An opaque token: nothing says when it expires.
        Err(_) => None,
    };
    if left == Some(std::time::Duration::ZERO) {
        return Err(GrantError::transient(
            match input {
                GrantInput::SubjectToken => super::error::GrantErrorKind::SubjectTokenExpired,
                _ => super::error::GrantErrorKind::Unavailable(input),
            },
            format!(
                "{} ({}) has expired; waiting for a new one to be written",
                input.as_str(),
                source.describe()
            ),
        ));
    }
    Ok((value, left))
}

/// The form names the client, when it has an id.
fn with_client_id(form: &mut Form, client_id: Option<&str>) {
    if let Some(id) = client_id {
        form.push(("client_id", id.to_string()));
    }
}

/// A JWT assertion in the form, as RFC 7523 §2.2 carries it.
fn with_assertion(form: &mut Form, client_id: Option<&str>, assertion: &secrecy::SecretString) {
    with_client_id(form, client_id);
    form.push(("client_assertion_type", JWT_BEARER_ASSERTION.to_string()));
    form.push(("client_assertion", assertion.expose_secret().to_string()));
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
