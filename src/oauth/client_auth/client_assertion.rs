//! `client_assertion`: a JWT minted elsewhere (a projected service-account token), read
//! again at every use and checked to be an unexpired JWT before it is sent.

use super::{read_jwt, with_assertion, Form};
use crate::config::SecretRef;
use crate::oauth::error::{GrantError, GrantInput};

pub(super) fn apply(
    form: &mut Form,
    source: &SecretRef,
    client_id: Option<&str>,
) -> Result<(), GrantError> {
    let assertion = read_jwt(source, GrantInput::ClientAssertion)?;
    with_assertion(form, client_id, &assertion);
    Ok(())
}
