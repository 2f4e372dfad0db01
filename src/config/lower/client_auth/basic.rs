//! `client_auth = "basic"`: HTTP Basic with the client secret (RFC 6749 §2.3.1).

use super::*;

pub(super) const KEYS: &[&str] = &["client_secret"];
pub(super) const NAMES_THE_CLIENT: bool = true;

pub(super) fn lower(needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
    Ok(ClientAuthMethod::Basic(needed.client_secret()?))
}
