//! `basic`: HTTP Basic with the client secret (RFC 6749 §2.3.1).

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};

use super::form_encode;
use crate::oauth::error::{GrantError, GrantInput};

pub(super) fn apply(
    req: reqwest::RequestBuilder,
    secret: SecretString,
    client_id: Option<&str>,
) -> Result<reqwest::RequestBuilder, GrantError> {
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
