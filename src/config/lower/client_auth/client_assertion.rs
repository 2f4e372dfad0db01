//! `client_auth = "client_assertion"`: a JWT minted elsewhere (a projected service-account
//! token), from a file read again at every use; the check step reads it once.

use super::*;

pub(super) const KEYS: &[&str] = &["client_assertion"];
/// The assertion says who the client is.
pub(super) const NAMES_THE_CLIENT: bool = false;

pub(super) fn lower(needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
    let key = needed.key("client_assertion");
    let raw = needed.required("client_assertion", &needed.rc.client_assertion)?;
    let source = SecretRef::File(file_only(needed.map, &key, &raw)?);
    needed.map.check_later(&key, Material::Jwt(source.clone()));
    Ok(ClientAuthMethod::ClientAssertion(source))
}
