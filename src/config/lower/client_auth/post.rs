//! `client_auth = "post"`: `client_id` and `client_secret` in the form (RFC 6749 §2.3.1).

use super::*;

pub(super) const KEYS: &[&str] = &["client_secret"];
pub(super) const NAMES_THE_CLIENT: bool = true;

pub(super) fn lower(needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
    Ok(ClientAuthMethod::Post(needed.client_secret()?))
}
