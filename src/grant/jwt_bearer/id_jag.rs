//! `assertion = { id_jag = { … } }`: enterprise-managed authorization, as the MCP
//! authorization spec has it (draft-ietf-oauth-identity-assertion-authz-grant). The user's
//! ID token is exchanged at the enterprise IdP (RFC 8693) for an Identity Assertion JWT
//! Authorization Grant (ID-JAG) addressed to the MCP server's authorization server, which
//! then takes it as a jwt-bearer assertion (RFC 7523). A new ID-JAG is fetched for every
//! token request: each is short-lived and meant for one.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Assertion, AssertionSource};
use crate::config::lowering::*;
use crate::config::TokenRequestConfig;
use crate::config::{ClientAuth, ConfigError, SecretRef, SourceMap, StepUpRule};
use crate::grant::GrantBuildError;
use crate::oauth::client_auth::{read_token, registered};
use crate::oauth::{GrantError, GrantInput, TokenEndpoint};

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_JAG: &str = "urn:ietf:params:oauth:token-type:id-jag";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// `id_jag = { token_url, client_id, client_secret, subject_token, … }`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdJag {
    /// The enterprise IdP's token endpoint.
    token_url: String,
    /// bearerd's client at the IdP, and its secret (none: a public client).
    client_id: String,
    client_secret: Option<crate::material::RawSecretRef>,
    /// The user's ID token (a file the platform or a login writes), read at every exchange.
    subject_token: crate::material::RawSecretRef,
    /// Default `urn:ietf:params:oauth:token-type:id_token`.
    subject_token_type: Option<String>,
    /// The authorization server the ID-JAG is for (default: the discovered issuer).
    audience: Option<String>,
    /// The MCP server (default: the credential's `resource`, or the discovered one).
    resource: Option<String>,
    /// Scopes asked for in the ID-JAG (default: the credential's).
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct IdJagConfig {
    idp: TokenRequestConfig,
    subject_token: SecretRef,
    subject_token_type: String,
    audience: Option<String>,
    resource: Option<String>,
    scopes: Option<Vec<String>>,
}

impl IdJagConfig {
    pub fn identity(&self) -> String {
        format!(
            "id-jag {} {}|{}",
            self.idp.token_url.as_ref().map_or("", url::Url::as_str),
            self.idp.client.client_id.as_deref().unwrap_or(""),
            self.subject_token.describe()
        )
    }
}

pub(super) fn lower(
    map: &SourceMap,
    name: &str,
    raw: &RawIdJag,
) -> Result<IdJagConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.assertion.id_jag.{k}");
    let token_url = private_url(map, &key("token_url"), &raw.token_url, None)?;
    let client_id = Some(raw.client_id.clone())
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| map.error_at(&key("client_id"), "client_id must not be empty"))?;
    let method = match &raw.client_secret {
        Some(s) => registered::basic(map.lower_secret(&key("client_secret"), s)?),
        None => registered::public(),
    };
    Ok(IdJagConfig {
        idp: TokenRequestConfig {
            token_url: Some(token_url),
            revocation_url: None,
            authorization_url: None,
            device_authorization_url: None,
            issuer: None,
            protected_resource: None,
            resource_speaks_mcp: false,
            redirect_port: None,
            scope_on_refresh: false,
            dpop: false,
            client: ClientAuth {
                client_id: Some(client_id),
                method,
            },
            scopes: Vec::new(),
            resource: None,
            params: Default::default(),
            timeout: Duration::from_secs(10),
            ca_file: None,
            allowed_authorization_servers: Vec::new(),
            insecure_http: false,
            registration: None,
            step_up: StepUpRule::Machine {
                allowed: Vec::new(),
            },
        },
        subject_token: map.lower_secret(&key("subject_token"), &raw.subject_token)?,
        subject_token_type: raw
            .subject_token_type
            .clone()
            .unwrap_or_else(|| ID_TOKEN.to_string()),
        audience: raw.audience.clone(),
        resource: raw.resource.clone(),
        scopes: raw.scopes.clone(),
    })
}

struct IdJag {
    idp: TokenEndpoint,
    config: IdJagConfig,
}

pub(super) fn build(config: &IdJagConfig) -> Result<Box<dyn AssertionSource>, GrantBuildError> {
    Ok(Box::new(IdJag {
        idp: TokenEndpoint::new(&config.idp)?,
        config: config.clone(),
    }))
}

#[async_trait::async_trait]
impl AssertionSource for IdJag {
    async fn assertion(&self, endpoint: &TokenEndpoint) -> Result<Assertion, GrantError> {
        let c = &self.config;
        let (id_token, _) = read_token(&c.subject_token, GrantInput::SubjectToken, true)?;
        let server = endpoint.endpoints().await?;
        let audience = c
            .audience
            .clone()
            .or_else(|| crate::oauth::registration::issuer_of(&server));
        let resource = c
            .resource
            .clone()
            .or_else(|| endpoint.config().resource.clone())
            .or(server.resource.clone());
        let scopes = c.scopes.clone().unwrap_or_else(|| endpoint.scopes(&server));
        let mut form = vec![
            ("grant_type", TOKEN_EXCHANGE.to_string()),
            ("requested_token_type", ID_JAG.to_string()),
            ("subject_token", id_token.expose_secret().to_string()),
            ("subject_token_type", c.subject_token_type.clone()),
        ];
        if let Some(a) = audience {
            form.push(("audience", a));
        }
        if let Some(r) = resource {
            form.push(("resource", r));
        }
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
        let issued = self.idp.exchange(form).await.map_err(|mut e| {
            e.message = format!("the enterprise IdP's ID-JAG exchange: {}", e.message);
            e
        })?;
        // Only an ID-JAG goes on to the other authorization server: an IdP that issued
        // something else (the user's own access token) is not taken at its word.
        if issued.issued_token_type.as_deref() != Some(ID_JAG) {
            return Err(GrantError::permanent(
                crate::oauth::GrantErrorKind::MalformedResponse,
                format!(
                    "the enterprise IdP issued {:?}, not an ID-JAG ({ID_JAG}): nothing was sent on",
                    issued
                        .issued_token_type
                        .as_deref()
                        .unwrap_or("no issued_token_type")
                ),
            ));
        }
        Ok(Assertion {
            jwt: issued.access_token,
            scopes_inside: false,
        })
    }
}
