//! `client_auth = "tls_client_auth"` (RFC 8705 §2.1): a client certificate and its key,
//! files the platform may renew, which the check step reads together.

use super::*;

pub(super) const KEYS: &[&str] = &["client_cert", "client_key"];
pub(super) const NAMES_THE_CLIENT: bool = true;

pub(super) fn lower(needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
    let file = |k: &str, raw: &Option<RawSecretRef>| {
        file_only(needed.map, &needed.key(k), &needed.required(k, raw)?)
    };
    let identity = ClientIdentity {
        cert: file("client_cert", &needed.rc.client_cert)?,
        key: file("client_key", &needed.rc.client_key)?,
    };
    let table = format!("credentials.{}", needed.name);
    needed.map.check_identity_later(&table, &identity);
    Ok(ClientAuthMethod::TlsClientAuth(identity))
}
