//! `client_auth = "none"`: a public client, which sends its `client_id` only.

use super::*;

pub(super) const KEYS: &[&str] = &[];
pub(super) const NAMES_THE_CLIENT: bool = false;

pub(super) fn lower(_needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
    Ok(ClientAuthMethod::None)
}
