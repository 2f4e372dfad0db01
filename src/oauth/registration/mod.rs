//! Client registration, for a credential with `registration = "auto"` (no `client_id` in
//! its config). When a login first needs a client, the sidecar gets one from the
//! authorization server by the first mode of [`registration_modes!`] that the server's
//! metadata offers: a client ID metadata document, else RFC 7591 dynamic registration. A
//! new mode is its file plus one line there.
//!
//! A registration is kept sealed in the store with the credential's record
//! (`StoredToken::registration`), bound to the issuer it was made at: a token request
//! never goes to another issuer with it, and a login there registers again and drops the
//! old grant.

mod dynamic;
mod metadata_document;

use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::discovery::ProviderEndpoints;
use crate::config::{ClientAuthMethod, RegistrationConfig, SecretRef};

pub use metadata_document::document as client_metadata_document;

/// How a registered client authenticates at the token endpoint (RFC 7591
/// `token_endpoint_auth_method`): only the methods a registration can give bearerd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisteredAuth {
    /// A public client (PKCE protects its code).
    None,
    ClientSecretBasic,
    ClientSecretPost,
}

impl RegisteredAuth {
    pub const ALL: [RegisteredAuth; 3] =
        [Self::None, Self::ClientSecretBasic, Self::ClientSecretPost];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        }
    }

    pub fn named(name: &str) -> Option<RegisteredAuth> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// What a native client asks for: none (a public client) where the server takes it,
    /// else a secret in the header, else in the form (RFC 8414's default is basic).
    fn preferred(supported: &[String]) -> RegisteredAuth {
        if supported.is_empty() {
            return Self::ClientSecretBasic;
        }
        Self::ALL
            .into_iter()
            .find(|m| supported.iter().any(|s| s == m.as_str()))
            .unwrap_or(Self::ClientSecretBasic)
    }
}

/// A client the sidecar registered, and the issuer it belongs to.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientRegistration {
    /// The authorization server's issuer (or, without metadata, its token endpoint's
    /// origin): the only one this client is used with.
    pub issuer: String,
    pub client_id: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_secret"
    )]
    pub client_secret: Option<SecretString>,
    pub auth: RegisteredAuth,
    /// The mode that made it (`client_id_metadata_document`, `dynamic`).
    pub mode: String,
    /// RFC 3339.
    pub registered_at: String,
    /// The redirect URIs it was registered with (a login on another port needs another).
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// RFC 7591 `client_secret_expires_at` (seconds since the epoch; none or 0: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<u64>,
}

impl std::fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("auth", &self.auth)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

mod optional_secret {
    use secrecy::{ExposeSecret, SecretString};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(secret) => s.serialize_some(secret.expose_secret()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.map(SecretString::from))
    }
}

impl ClientRegistration {
    /// Whether this client was registered at `issuer`.
    pub fn is_for(&self, issuer: &str) -> bool {
        same_issuer(&self.issuer, issuer)
    }

    /// Why this client cannot serve a login at `issuer` with `config` any more, if so: another
    /// issuer, another document URL or redirect, or a secret past its expiry.
    pub fn unfit_for(
        &self,
        issuer: &str,
        config: &RegistrationConfig,
        redirect_uris: &[String],
    ) -> Option<&'static str> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if !self.is_for(issuer) {
            Some("it was registered at another authorization server")
        } else if self.mode == metadata_document::MetadataDocument.name() {
            let url = config.client_metadata_url.as_ref().map(|u| u.as_str());
            (url != Some(self.client_id.as_str())).then_some("client_metadata_url changed")
        } else if !self.redirect_uris.is_empty() && self.redirect_uris != redirect_uris {
            Some("its redirect URIs are not the login's (redirect_port changed)")
        } else if self
            .client_secret_expires_at
            .is_some_and(|at| at != 0 && at <= now)
        {
            Some("its client secret expired")
        } else {
            None
        }
    }

    /// How the client authenticates, as a configured one would.
    pub fn method(&self) -> ClientAuthMethod {
        use crate::oauth::client_auth::registered;
        let secret = || SecretRef::Value(self.client_secret.clone().unwrap_or_default());
        match self.auth {
            RegisteredAuth::None => registered::public(),
            RegisteredAuth::ClientSecretBasic => registered::basic(secret()),
            RegisteredAuth::ClientSecretPost => registered::post(secret()),
        }
    }
}

/// A registration as the store keeps it (sealed with the credential's record).
impl ClientRegistration {
    pub fn to_record(&self) -> SecretString {
        SecretString::from(serde_json::to_string(self).unwrap_or_default())
    }

    /// `None` for a record this build cannot read (it is registered again).
    pub fn from_record(record: &SecretString) -> Option<ClientRegistration> {
        use secrecy::ExposeSecret;
        serde_json::from_str(record.expose_secret()).ok()
    }
}

fn same_issuer(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// The issuer a registration is bound to: the metadata's, or without metadata the token
/// endpoint's origin (the 2025-03-26 fallback).
pub fn issuer_of(endpoints: &ProviderEndpoints) -> Option<String> {
    endpoints.issuer.clone().or_else(|| {
        endpoints
            .token
            .as_ref()
            .map(|u| u.origin().ascii_serialization())
    })
}

/// What a mode needs to register the credential's client.
pub struct RegistrationRequest<'a> {
    pub config: &'a RegistrationConfig,
    pub endpoints: &'a ProviderEndpoints,
    pub issuer: &'a str,
    pub scopes: &'a [String],
    /// The loopback redirect of `bearerd login` (RFC 8252 §7.3: any port), or the connect
    /// flows' redirect_uri.
    pub redirect_uris: Vec<String>,
    /// "native" or "web" (see [`redirect_uris`]).
    pub application_type: &'static str,
    /// Whether the client will also use the device grant (the server has the endpoint).
    pub device: bool,
    pub timeout: Duration,
}

/// Why no client was registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The server's metadata offers no mode this credential can use.
    #[error("the authorization server {issuer} offers {offered}: register a client there and set client_id, {hint}")]
    NoMode {
        issuer: String,
        offered: &'static str,
        hint: &'static str,
    },
    /// The registration endpoint refused (RFC 7591 §3.2.2), with its status.
    #[error("the registration endpoint answered {status}: {message}")]
    Refused { status: u16, message: String },
    /// It could not be reached, or answered 5xx: worth trying again later.
    #[error("the registration endpoint is unavailable: {0}")]
    Unavailable(String),
    /// A success that is not a usable registration.
    #[error("the registration endpoint's answer is not a usable registration: {0}")]
    Malformed(String),
}

impl RegistrationError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistrationError::Unavailable(_))
    }
}

/// One way of getting a client.
#[async_trait::async_trait]
trait Mode: Sync {
    fn name(&self) -> &'static str;

    /// Whether the server's metadata (and the credential's config) allow this mode.
    fn offered(&self, request: &RegistrationRequest<'_>) -> bool;

    async fn register(
        &self,
        http: &reqwest::Client,
        request: &RegistrationRequest<'_>,
    ) -> Result<ClientRegistration, RegistrationError>;
}

/// The registry: one line per mode, in the order they are preferred (the MCP
/// authorization spec's: metadata documents, then dynamic registration).
macro_rules! registration_modes {
    ($($mode:expr,)*) => {
        static MODES: &[&dyn Mode] = &[$(&$mode),*];
    };
}

registration_modes! {
    metadata_document::MetadataDocument,
    dynamic::Dynamic,
}

/// Registers a client by the first mode the server offers.
pub async fn register(
    http: &reqwest::Client,
    request: &RegistrationRequest<'_>,
) -> Result<ClientRegistration, RegistrationError> {
    let Some(mode) = MODES.iter().find(|m| m.offered(request)) else {
        let documents = request.endpoints.client_id_metadata_documents;
        return Err(RegistrationError::NoMode {
            issuer: request.issuer.to_string(),
            offered: if documents {
                "client ID metadata documents only"
            } else {
                "neither client ID metadata documents nor dynamic registration"
            },
            hint: if documents {
                "or host `bearerd client-metadata` and set client_metadata_url"
            } else {
                "without registration"
            },
        });
    };
    let registration = mode.register(http, request).await?;
    tracing::info!(
        issuer = request.issuer,
        client_id = registration.client_id,
        mode = mode.name(),
        auth = registration.auth.as_str(),
        "client registered"
    );
    Ok(registration)
}

/// The redirect URIs a credential's client registers, and its `application_type`: a
/// per-subject credential's connect flows' `redirect_uri` ("web"), else the loopback
/// callback of `bearerd login` ("native").
pub fn redirect_uris(
    config: &RegistrationConfig,
    port: Option<u16>,
) -> (Vec<String>, &'static str) {
    match &config.web_redirect {
        Some(uri) => (vec![uri.to_string()], "web"),
        None => (loopback_redirect_uris(port), "native"),
    }
}

/// The loopback callback of `bearerd login`, on its configured port or (RFC 8252 §7.3) any.
pub fn loopback_redirect_uris(port: Option<u16>) -> Vec<String> {
    match port {
        Some(p) => vec![format!("http://127.0.0.1:{p}/callback")],
        None => vec!["http://127.0.0.1/callback".to_string()],
    }
}

/// The grants a login's client uses: the code (and refresh), and the device grant when
/// `bearerd login --device` can use one.
fn grant_types(device: bool) -> Vec<&'static str> {
    let mut grants = vec!["authorization_code", "refresh_token"];
    if device {
        grants.push("urn:ietf:params:oauth:grant-type:device_code");
    }
    grants
}

/// The time now, RFC 3339.
fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_native_client_asks_to_be_public_where_it_may() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            RegisteredAuth::preferred(&s(&["client_secret_post", "none"])),
            RegisteredAuth::None
        );
        assert_eq!(
            RegisteredAuth::preferred(&s(&["client_secret_post"])),
            RegisteredAuth::ClientSecretPost
        );
        assert_eq!(
            RegisteredAuth::preferred(&s(&["private_key_jwt"])),
            RegisteredAuth::ClientSecretBasic
        );
        assert_eq!(
            RegisteredAuth::preferred(&[]),
            RegisteredAuth::ClientSecretBasic
        );
    }

    #[test]
    fn a_registration_is_bound_to_its_issuer() {
        let r = ClientRegistration {
            issuer: "https://as.example/".into(),
            client_id: "c".into(),
            client_secret: None,
            auth: RegisteredAuth::None,
            mode: "dynamic".into(),
            registered_at: now(),
            redirect_uris: loopback_redirect_uris(None),
            client_secret_expires_at: Some(1),
        };
        let config = RegistrationConfig {
            client_metadata_url: None,
            client_name: "bearerd (t)".into(),
            web_redirect: None,
        };
        let redirects = loopback_redirect_uris(None);
        assert!(
            r.unfit_for("https://as.example", &config, &redirects)
                .is_some(),
            "expired"
        );
        let r = ClientRegistration {
            client_secret_expires_at: Some(0),
            ..r
        };
        assert_eq!(r.unfit_for("https://as.example", &config, &redirects), None);
        assert!(r
            .unfit_for(
                "https://as.example",
                &config,
                &loopback_redirect_uris(Some(8765))
            )
            .is_some());
        assert!(r.is_for("https://as.example"));
        assert!(!r.is_for("https://other.example"));
    }
}
