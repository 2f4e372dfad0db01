//! `client_auth = "private_key_jwt"` (RFC 7523 §2.2): a JWT signed with the client's key,
//! which is read from a file or the environment, never written into the config.

use super::*;

pub(super) const KEYS: &[&str] = &SIGNING_KEYS;
pub(super) const NAMES_THE_CLIENT: bool = true;

pub(super) fn lower(needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
    let raw = needed.required("private_key", &needed.rc.private_key)?;
    let pem = key_source(needed.map, &needed.key("private_key"), &raw)?;
    let source = (KeySource::Pem(pem), "private_key");
    let signing = lower_signing(needed.map, needed.name, needed.rc, source, false)?;
    Ok(ClientAuthMethod::PrivateKeyJwt(signing))
}
