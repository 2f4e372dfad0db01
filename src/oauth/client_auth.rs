//! Client authentication at the token endpoint, one arm per `client_auth` method
//! (RFC 6749 §2.3.1, RFC 7523 §2.2, RFC 8705 §2.1). Secrets, keys and assertions are read
//! at each use, so a rotated file counts from the next request on.

use secrecy::ExposeSecret;

use super::error::{GrantError, GrantInput};
use crate::config::{ClientAuthMethod, SecretRef};
use crate::material::signing::{AssertionClaims, AssertionSigner};

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
        let with_id = |form: &mut Form| {
            if let Some(id) = client_id {
                form.push(("client_id", id.to_string()));
            }
        };
        match self {
            ClientAuthenticator::Basic(s) => {
                let secret = secret(s)?;
                // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
                use base64::Engine;
                let user = form_encode(client_id.unwrap_or_default());
                let pass = form_encode(secret.expose_secret());
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                let mut value =
                    http::HeaderValue::try_from(format!("Basic {b64}")).map_err(|_| {
                        GrantError::unavailable(
                            GrantInput::ClientSecret,
                            "the client secret cannot go in a header",
                        )
                    })?;
                value.set_sensitive(true);
                req = req.header("authorization", value);
            }
            ClientAuthenticator::Post(s) => {
                let secret = secret(s)?;
                with_id(form);
                form.push(("client_secret", secret.expose_secret().to_string()));
            }
            ClientAuthenticator::PrivateKeyJwt(signer) => {
                let id = client_id.unwrap_or_default();
                let key = signer.current_key().map_err(|e| {
                    GrantError::unavailable(
                        GrantInput::PrivateKey,
                        format!("{} {e}", signer.config().key.describe()),
                    )
                })?;
                let audience = signer
                    .config()
                    .audience
                    .as_deref()
                    .unwrap_or(token_endpoint);
                let claims = AssertionClaims {
                    issuer: id,
                    subject: id,
                    audience,
                    scope: None,
                };
                let assertion = signer
                    .sign(&key, &claims)
                    .map_err(|e| GrantError::unavailable(GrantInput::PrivateKey, e.to_string()))?;
                with_id(form);
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION.to_string()));
                form.push(("client_assertion", assertion.expose_secret().to_string()));
            }
            ClientAuthenticator::ClientAssertion(source) => {
                let assertion = read_jwt(source, GrantInput::ClientAssertion)?;
                with_id(form);
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION.to_string()));
                form.push(("client_assertion", assertion.expose_secret().to_string()));
            }
            ClientAuthenticator::TlsClientAuth | ClientAuthenticator::None => with_id(form),
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

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
