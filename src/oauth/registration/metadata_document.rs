//! Client ID metadata documents (the MCP authorization spec's preferred registration):
//! the client's `client_id` is the https URL of a JSON document the operator hosts
//! (`bearerd client-metadata -c FILE` prints it). Nothing is sent to register: the server
//! fetches the document when the user logs in.

use super::{
    now, ClientRegistration, Mode, RegisteredAuth, RegistrationError, RegistrationRequest,
};
use crate::config::{RegistrationConfig, TokenRequestConfig};

pub struct MetadataDocument;

#[async_trait::async_trait]
impl Mode for MetadataDocument {
    fn name(&self) -> &'static str {
        "client_id_metadata_document"
    }

    fn offered(&self, request: &RegistrationRequest<'_>) -> bool {
        request.endpoints.client_id_metadata_documents
            && request.config.client_metadata_url.is_some()
    }

    async fn register(
        &self,
        _http: &reqwest::Client,
        request: &RegistrationRequest<'_>,
    ) -> Result<ClientRegistration, RegistrationError> {
        let url = request
            .config
            .client_metadata_url
            .as_ref()
            .ok_or_else(|| RegistrationError::Malformed("no client_metadata_url".into()))?;
        Ok(ClientRegistration {
            issuer: request.issuer.to_string(),
            client_id: url.to_string(),
            client_secret: None,
            auth: RegisteredAuth::None,
            mode: self.name().to_string(),
            registered_at: now(),
            redirect_uris: request.redirect_uris.clone(),
            client_secret_expires_at: None,
        })
    }
}

/// The document to host at `client_metadata_url`: a public native client with the
/// loopback redirect of `bearerd login`. `None` without registration or without the URL.
pub fn document(request: &TokenRequestConfig) -> Option<serde_json::Value> {
    let config = request.registration.as_ref()?;
    let RegistrationConfig {
        client_metadata_url: Some(url),
        client_name,
        ..
    } = config
    else {
        return None;
    };
    let (redirect_uris, application_type) = super::redirect_uris(config, request.redirect_port);
    let mut doc = serde_json::json!({
        "client_id": url.as_str(),
        "client_name": client_name,
        "application_type": application_type,
        "redirect_uris": redirect_uris,
        "grant_types": super::grant_types(request.device_authorization_url.is_some()),
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        "software_id": "bearerd",
        "software_version": env!("CARGO_PKG_VERSION"),
    });
    if !request.scopes.is_empty() {
        doc["scope"] = serde_json::json!(request.scopes.join(" "));
    }
    Some(doc)
}
