//! `post`: `client_id` and `client_secret` in the form (RFC 6749 §2.3.1).

use secrecy::{ExposeSecret, SecretString};

use super::{with_client_id, Form};

pub(super) fn apply(form: &mut Form, secret: SecretString, client_id: Option<&str>) {
    with_client_id(form, client_id);
    form.push(("client_secret", secret.expose_secret().to_string()));
}
