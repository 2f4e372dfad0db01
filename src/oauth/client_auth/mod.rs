//! Client authentication at the token endpoint (RFC 6749 §2.3.1, RFC 7523 §2.2, RFC 8705
//! §2.1): one file per `client_auth` method, holding all of it: the keys it reads and its
//! lowering (`config::ClientAuthKind`), its settings (`config::ClientAuthSettings`) and
//! what it puts in a request ([`Authenticate`]). A new method is its file plus one line of
//! [`client_auth_methods!`]. Secrets, keys and assertions are read at each use, so a
//! rotated file counts from the next request on.

mod basic;
mod client_assertion;
mod none;
mod post;
mod private_key_jwt;
mod tls_client_auth;

use secrecy::ExposeSecret;

use super::error::{GrantError, GrantInput};
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, SecretRef};

/// RFC 7523 §2.2: the `client_assertion_type` of a JWT assertion.
pub const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A form being built for the token endpoint.
pub type Form = Vec<(&'static str, String)>;

/// What a method puts in a token request.
pub trait Authenticate: Send + Sync {
    /// Adds the client's credentials to a request for `token_endpoint` (its URL is the
    /// default audience of a signed assertion).
    fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError>;
}

/// One method, as the registry builds it: its settings type and what they become.
trait Method: ClientAuthKind {
    type Settings: ClientAuthSettings;

    fn authenticator(settings: &Self::Settings) -> Box<dyn Authenticate>;
}

/// The registry: one line per method, in the order error messages list them (and, for a
/// credential without `client_auth`, the order in which its keys imply one).
macro_rules! client_auth_methods {
    ($($method:ty = $value:expr,)*) => {
        /// Every client authentication method of this build (config is read with them).
        pub static METHODS: &[&dyn ClientAuthKind] = &[$(&$value),*];

        /// What a method's settings put in a request, by the method that wrote them.
        fn authenticator(method: &ClientAuthMethod) -> Option<Box<dyn Authenticate>> {
            $(if let Some(settings) = method.settings::<<$method as Method>::Settings>() {
                return Some(<$method as Method>::authenticator(settings));
            })*
            None
        }
    };
}

client_auth_methods! {
    basic::Basic = basic::Basic,
    post::Post = post::Post,
    private_key_jwt::PrivateKeyJwt = private_key_jwt::PrivateKeyJwt,
    client_assertion::ClientAssertion = client_assertion::ClientAssertion,
    tls_client_auth::TlsClientAuth = tls_client_auth::TlsClientAuth,
    none::Public = none::Public,
}

/// Writes the `ClientAuthSettings` methods every method's settings write the same way.
macro_rules! settings_of {
    ($kind:expr) => {
        fn name(&self) -> &'static str {
            $crate::config::ClientAuthKind::name(&$kind)
        }

        fn clone_box(&self) -> Box<dyn $crate::config::ClientAuthSettings> {
            Box::new(self.clone())
        }

        fn as_any(&self) -> &dyn ::std::any::Any {
            self
        }
    };
}
use settings_of;

/// The `Method` impl of a method whose settings are all it applies (no state of its own).
macro_rules! applies_its_settings {
    ($method:ty, $settings:ty) => {
        impl super::Method for $method {
            type Settings = $settings;

            fn authenticator(settings: &$settings) -> Box<dyn super::Authenticate> {
                Box::new(settings.clone())
            }
        }
    };
}
use applies_its_settings;

/// The methods a registered client may use (`oauth::registration`), as its registration
/// names them.
pub mod registered {
    use crate::config::{ClientAuthMethod, SecretRef};

    pub fn public() -> ClientAuthMethod {
        ClientAuthMethod::new(super::none::PublicClient)
    }

    pub fn basic(secret: SecretRef) -> ClientAuthMethod {
        ClientAuthMethod::new(super::basic::BasicSecret(secret))
    }

    pub fn post(secret: SecretRef) -> ClientAuthMethod {
        ClientAuthMethod::new(super::post::PostSecret(secret))
    }
}

/// A credential's client authentication, ready to apply.
pub struct ClientAuthenticator(Box<dyn Authenticate>);

impl ClientAuthenticator {
    pub fn new(method: &ClientAuthMethod) -> ClientAuthenticator {
        // Settings written by no method of the registry (only a config built by hand)
        // name the client and prove nothing.
        ClientAuthenticator(
            authenticator(method).unwrap_or_else(|| Box::new(tls_client_auth::NamesTheClient)),
        )
    }

    /// Adds the client's credentials to a request for `token_endpoint`.
    pub fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        self.0.apply(req, form, client_id, token_endpoint)
    }
}

/// The current value of a secret, read again at every use.
fn secret(s: &SecretRef) -> Result<secrecy::SecretString, GrantError> {
    s.resolve()
        .map_err(|m| GrantError::unavailable(GrantInput::ClientSecret, m))
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
