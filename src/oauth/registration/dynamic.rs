//! RFC 7591 dynamic client registration: a native client (`application_type = "native"`)
//! with the loopback redirect of `bearerd login`, or a web one with a per-subject
//! credential's redirect_uri, asking to be public where the server allows it.

use serde::Deserialize;

use super::{
    now, ClientRegistration, Mode, RegisteredAuth, RegistrationError, RegistrationRequest,
};
use crate::oauth::transport::error_chain;

pub struct Dynamic;

/// RFC 7591 §3.2.1, what bearerd reads of it.
#[derive(Deserialize)]
struct Registered {
    client_id: Option<String>,
    client_secret: Option<String>,
    token_endpoint_auth_method: Option<String>,
    client_secret_expires_at: Option<u64>,
}

#[derive(Deserialize)]
struct Refusal {
    error: Option<String>,
    error_description: Option<String>,
}

#[async_trait::async_trait]
impl Mode for Dynamic {
    fn name(&self) -> &'static str {
        "dynamic"
    }

    fn offered(&self, request: &RegistrationRequest<'_>) -> bool {
        request.endpoints.registration.is_some()
    }

    async fn register(
        &self,
        http: &reqwest::Client,
        request: &RegistrationRequest<'_>,
    ) -> Result<ClientRegistration, RegistrationError> {
        let Some(url) = &request.endpoints.registration else {
            return Err(RegistrationError::Malformed(
                "no registration_endpoint".into(),
            ));
        };
        let asked = RegisteredAuth::preferred(&request.endpoints.token_auth_methods);
        let mut body = serde_json::json!({
            "client_name": request.config.client_name,
            "application_type": request.application_type,
            "redirect_uris": request.redirect_uris,
            "grant_types": super::grant_types(request.device),
            "response_types": ["code"],
            "token_endpoint_auth_method": asked.as_str(),
            "software_id": "bearerd",
            "software_version": env!("CARGO_PKG_VERSION"),
        });
        if !request.scopes.is_empty() {
            body["scope"] = serde_json::json!(request.scopes.join(" "));
        }
        let resp = http
            .post(url.clone())
            .header("accept", "application/json")
            .timeout(request.timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| RegistrationError::Unavailable(format!("{url}: {}", error_chain(&e))))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| RegistrationError::Unavailable(format!("{url}: {}", error_chain(&e))))?;
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(RegistrationError::Unavailable(format!(
                "{url} answered {status}"
            )));
        }
        if !status.is_success() {
            // RFC 7591 §3.2.2: an error code and a description, quoted short.
            let message = serde_json::from_slice::<Refusal>(&bytes)
                .ok()
                .and_then(|r| {
                    let code = r.error?;
                    Some(match r.error_description {
                        Some(d) => format!("{code}: {}", d.chars().take(300).collect::<String>()),
                        None => code,
                    })
                })
                .unwrap_or_else(|| "no OAuth error in the answer".to_string());
            return Err(RegistrationError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let answer: Registered = serde_json::from_slice(&bytes)
            .map_err(|e| RegistrationError::Malformed(format!("not JSON ({e})")))?;
        let client_id = answer
            .client_id
            .filter(|c| !c.trim().is_empty())
            .ok_or_else(|| RegistrationError::Malformed("no client_id".into()))?;
        // The server has the last word on the method (RFC 7591 §3.2.1).
        let auth = match answer.token_endpoint_auth_method.as_deref() {
            None => asked,
            Some(m) => RegisteredAuth::named(m).ok_or_else(|| {
                RegistrationError::Malformed(format!(
                    "token_endpoint_auth_method {:?} is not one bearerd can use ({})",
                    m.chars().take(60).collect::<String>(),
                    RegisteredAuth::ALL.map(RegisteredAuth::as_str).join(", ")
                ))
            })?,
        };
        let client_secret = answer.client_secret.filter(|s| !s.is_empty());
        if auth != RegisteredAuth::None && client_secret.is_none() {
            return Err(RegistrationError::Malformed(format!(
                "token_endpoint_auth_method {} without a client_secret",
                auth.as_str()
            )));
        }
        Ok(ClientRegistration {
            issuer: request.issuer.to_string(),
            client_id,
            // A public client has no use for a secret the server sent anyway.
            client_secret: client_secret
                .filter(|_| auth != RegisteredAuth::None)
                .map(secrecy::SecretString::from),
            auth,
            mode: self.name().to_string(),
            registered_at: now(),
            redirect_uris: request.redirect_uris.clone(),
            client_secret_expires_at: answer.client_secret_expires_at,
        })
    }
}
