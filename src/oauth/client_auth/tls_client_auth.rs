//! `client_auth = "tls_client_auth"` (RFC 8705 §2.1): a client certificate and its key,
//! files the platform may renew, which the check step reads together. The transport
//! presents the certificate; the form only names the client.

use super::{with_client_id, Authenticate, Form, Method};
use crate::config::lowering::file_only;
use crate::config::{ClientAuthKind, ClientAuthMethod, ClientAuthSettings, ConfigError};
use crate::config::{ClientIdentity, Needed};
use crate::material::RawSecretRef;
use crate::oauth::error::GrantError;

pub struct TlsClientAuth;

impl ClientAuthKind for TlsClientAuth {
    fn name(&self) -> &'static str {
        "tls_client_auth"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["client_cert", "client_key"]
    }

    fn names_the_client(&self) -> bool {
        true
    }

    fn implied_by(&self, present: &dyn Fn(&str) -> bool, _grant_signs: bool) -> bool {
        present("client_cert") || present("client_key")
    }

    fn lower(&self, needed: &Needed) -> Result<ClientAuthMethod, ConfigError> {
        let file = |k: &str, raw: &Option<RawSecretRef>| {
            file_only(needed.map, &needed.key(k), &needed.required(k, raw)?)
        };
        let identity = ClientIdentity {
            cert: file("client_cert", &needed.rc.client_cert)?,
            key: file("client_key", &needed.rc.client_key)?,
        };
        let table = format!("credentials.{}", needed.name);
        needed.map.check_identity_later(&table, &identity);
        Ok(ClientAuthMethod::new(ClientCertificate(identity)))
    }
}

/// The client certificate and its key.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub ClientIdentity);

impl ClientAuthSettings for ClientCertificate {
    super::settings_of!(TlsClientAuth);

    fn identity(&self) -> Option<&ClientIdentity> {
        Some(&self.0)
    }
}

impl Method for TlsClientAuth {
    type Settings = ClientCertificate;

    fn authenticator(_settings: &ClientCertificate) -> Box<dyn Authenticate> {
        Box::new(NamesTheClient)
    }
}

/// Puts only the client's id in the form (its proof travels elsewhere, or there is none).
pub struct NamesTheClient;

impl Authenticate for NamesTheClient {
    fn apply(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        client_id: Option<&str>,
        _token_endpoint: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        with_client_id(form, client_id);
        Ok(req)
    }
}
