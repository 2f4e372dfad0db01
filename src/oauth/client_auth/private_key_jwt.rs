//! `private_key_jwt` (RFC 7523 §2.2): a JWT signed with the client's key, for the token
//! endpoint (its URL is the default audience), the client as issuer and subject.

use super::{with_assertion, Form};
use crate::material::signing::{AssertionClaims, AssertionSigner};
use crate::oauth::error::{GrantError, GrantInput};

pub(super) fn apply(
    form: &mut Form,
    signer: &AssertionSigner,
    client_id: Option<&str>,
    token_endpoint: &str,
) -> Result<(), GrantError> {
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
    with_assertion(form, client_id, &assertion);
    Ok(())
}
