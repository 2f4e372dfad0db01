//! Speaking to authorization servers: what a token request and its answer are, and how
//! they travel. A token request goes through these steps:
//!
//! ```text
//!  grant (token/grant/*)        builds the grant's form fields
//!    └─ TokenEndpoint::exchange adds scope/resource/params, finds the endpoint (discovery)
//!         ├─ client_auth.rs     Basic | post | private_key_jwt | client_assertion | tls | none
//!         ├─ dpop.rs            a DPoP proof (`dpop = true`), once more on use_dpop_nonce
//!         ├─ transport.rs       direct (mTLS identity re-read) ─┐
//!         │  a Carrier          or carried by another (token/rotation's helper) ─┴─▶ RawResponse
//!         └─ response.rs        classify: IssuedToken | GrantError{GrantErrorKind, permanent}
//! ```
//!
//! It knows nothing of slots, stores or grants' lifecycles: the token engine calls it.

pub mod carrier;
pub mod client_auth;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod login;
pub mod registration;
pub mod response;
pub mod step_up;
pub mod transport;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::TokenRequestConfig;
use carrier::{Carrier, CarrierError};
use client_auth::{ClientAuthenticator, Form};
use discovery::ProviderEndpoints;
pub use error::{GrantError, GrantErrorKind, GrantInput, OAuthErrorCode};
use registration::ClientRegistration;
use transport::{error_chain, Transport};

/// A token as the authorization server issued it (or a grant produced it).
pub struct IssuedToken {
    pub access_token: SecretString,
    pub lifetime: Option<Duration>,
    pub scopes: Vec<String>,
    /// The refresh token the provider issued with it (a rotation), if any: the token
    /// endpoint hands it over here, and the refresh_token grant keeps it for next time.
    pub refresh_token: Option<SecretString>,
    /// The token must be replaced within this long whatever its own lifetime says (a token
    /// exchanged for a subject token is renewed before the subject token expires).
    pub lifetime_cap: Option<Duration>,
    /// RFC 8693 `issued_token_type`, when a token exchange said.
    pub issued_token_type: Option<String>,
    /// `token_type` DPoP: the token is bound to the key that proved possession of it.
    pub dpop_bound: bool,
    /// The key a DPoP-bound token is bound to (set by the endpoint that sent the proof):
    /// every request that carries the token proves possession of it.
    pub dpop_key: Option<std::sync::Arc<crate::material::dpop::DpopKey>>,
}

impl IssuedToken {
    /// The token without any refresh token: for grants that never use one (a provider
    /// that sends one anyway is ignored, as before).
    pub fn without_refresh_token(mut self) -> IssuedToken {
        self.refresh_token = None;
        self
    }

    /// The lifetime the schedule works with: the token's own (or the default when the
    /// provider gave none), never beyond the cap.
    pub fn effective_lifetime(&self, default: Duration) -> Duration {
        let own = self.lifetime.unwrap_or(default);
        self.lifetime_cap.map_or(own, |cap| own.min(cap))
    }
}

/// Form fields that carry a secret: never repeated in an error, log line or `/status`.
const SECRET_FIELDS: [&str; 9] = [
    "client_secret",
    "client_assertion",
    "refresh_token",
    "assertion",
    "subject_token",
    "actor_token",
    "code",
    "code_verifier",
    "device_code",
];

/// `message` with every secret that was sent (and any run of its first 12 characters, for a
/// provider that quotes it cut short) replaced.
fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 8) {
        out = out.replace(s.as_str(), "[redacted]");
        let head: String = s.chars().take(12).collect();
        out = out.replace(&head, "[redacted]");
        let encoded: String = url::form_urlencoded::byte_serialize(s.as_bytes()).collect();
        out = out.replace(&encoded, "[redacted]");
    }
    out
}

/// Why a revocation (RFC 7009) did not go through; reported in the logout's answer.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("{}", .0.message)]
    Endpoint(GrantError),
    #[error("the provider has no revocation endpoint (set revocation_url)")]
    NoEndpoint,
    #[error("revocation endpoint unreachable: {0}")]
    Unreachable(String),
    #[error("revocation endpoint answered {}", http::StatusCode::from_u16(*.0).map_or(.0.to_string(), |s| s.to_string()))]
    Answered(u16),
}

/// A client for one OAuth token endpoint.
pub struct TokenEndpoint {
    transport: Transport,
    client_auth: ClientAuthenticator,
    config: TokenRequestConfig,
    /// Endpoints found by discovery, once it has succeeded.
    discovered: tokio::sync::OnceCell<ProviderEndpoints>,
    /// The client the sidecar registered (`registration = "auto"`), once there is one.
    registered: arc_swap::ArcSwapOption<RegisteredClient>,
    /// Scopes added after an upstream's 403 `insufficient_scope`.
    step_up: std::sync::Arc<step_up::StepUp>,
    /// `dpop = true`: the key tokens are bound to, and the server's nonce.
    dpop: Option<dpop::DpopProver>,
}

/// A registered client, ready to authenticate.
struct RegisteredClient {
    registration: ClientRegistration,
    auth: ClientAuthenticator,
}

/// Why a credential with `registration = "auto"` cannot send a token request.
fn registration_required(message: String) -> GrantError {
    GrantError::permanent(GrantErrorKind::RegistrationRequired, message)
}

impl TokenEndpoint {
    pub fn new(config: &TokenRequestConfig) -> Result<Self, transport::ClientError> {
        let identity = config.client.method.identity();
        let transport = Transport::new(config.timeout, config.ca_file.as_deref(), identity)?;
        let dpop = match config.dpop {
            true => Some(dpop::DpopProver::new().map_err(transport::ClientError::DpopKey)?),
            false => None,
        };
        Ok(TokenEndpoint {
            transport,
            client_auth: ClientAuthenticator::new(&config.client.method),
            config: config.clone(),
            discovered: tokio::sync::OnceCell::new(),
            registered: arc_swap::ArcSwapOption::empty(),
            step_up: std::sync::Arc::new(step_up::StepUp::new(config.step_up.clone())),
            dpop,
        })
    }

    /// The client registered for this credential, if any.
    pub fn registration(&self) -> Option<ClientRegistration> {
        self.registered
            .load()
            .as_ref()
            .map(|r| r.registration.clone())
    }

    /// Uses this registered client from now on (from the store, or a new registration).
    pub fn use_registration(&self, registration: ClientRegistration) {
        let auth = ClientAuthenticator::new(&registration.method());
        self.registered
            .store(Some(std::sync::Arc::new(RegisteredClient {
                registration,
                auth,
            })));
    }

    /// The DPoP key tokens are bound to (`dpop = true`), as the store keeps it.
    pub fn dpop_record(&self) -> Option<SecretString> {
        Some(self.dpop.as_ref()?.key().to_record())
    }

    /// The key DPoP proofs are signed with now (`dpop = true`).
    pub fn dpop_key(&self) -> Option<std::sync::Arc<crate::material::dpop::DpopKey>> {
        Some(self.dpop.as_ref()?.key())
    }

    /// The stored DPoP key, if any, is taken: token requests may be sent.
    pub fn settle_dpop_key(&self) {
        if let Some(d) = &self.dpop {
            d.settle();
        }
    }

    /// Uses the DPoP key a stored record carries: the tokens in it are bound to it.
    pub fn take_dpop_record(&self, record: &SecretString) {
        if let Some(d) = &self.dpop {
            d.take_record(record);
        }
    }

    /// The client id requests name: the registered one, else the configured one.
    pub fn client_id(&self) -> Option<String> {
        match self.registered.load().as_ref() {
            Some(r) => Some(r.registration.client_id.clone()),
            None => self.config.client.client_id.clone(),
        }
    }

    /// Applies the client's authentication: the configured client's, or for a credential
    /// that registers its own, the registered client's, and only at the issuer it was
    /// registered at (its secret and its grant are never sent elsewhere).
    fn apply_client(
        &self,
        endpoints: &ProviderEndpoints,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        audience: &str,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        if self.config.registration.is_none() {
            return self.client_auth.apply(
                req,
                form,
                self.config.client.client_id.as_deref(),
                audience,
            );
        }
        let registered = self.registered.load();
        let Some(client) = registered.as_ref() else {
            return Err(registration_required(
                "no client is registered yet: `bearerd login` registers one".into(),
            ));
        };
        let now = registration::issuer_of(endpoints).unwrap_or_default();
        if !client.registration.is_for(&now) && self.discovered.get().is_none() {
            // Discovery failed and the configured endpoints stand in: the issuer is not
            // known, so this may well be the same server. Tried again at the next attempt.
            return Err(GrantError::transient(
                GrantErrorKind::DiscoveryFailed,
                "the authorization server's metadata could not be read: the registered client waits for it",
            ));
        }
        if !client.registration.is_for(&now) {
            return Err(registration_required(format!(
                "the client was registered at {}, and the authorization server is now {now}: nothing is sent there with it; `bearerd login` registers again (the old grant is dropped)",
                client.registration.issuer
            )));
        }
        client.auth.apply(
            req,
            form,
            Some(client.registration.client_id.as_str()),
            audience,
        )
    }

    /// The configured endpoints, completed by discovery (from the issuer, or from the
    /// protected resource) when something is missing. Discovery runs once; a failure is
    /// transient and tried again at the next attempt.
    pub async fn endpoints(&self) -> Result<ProviderEndpoints, GrantError> {
        let c = &self.config;
        let explicit = ProviderEndpoints {
            token: c.token_url.clone(),
            revocation: c.revocation_url.clone(),
            authorization: c.authorization_url.clone(),
            device_authorization: c.device_authorization_url.clone(),
            resource: None,
            mtls_token: None,
            mtls_revocation: None,
            // The configured issuer is what an authorization response must name, even
            // while its metadata cannot be fetched.
            issuer: c.issuer.as_ref().map(|u| u.to_string()),
            iss_in_authorization_responses: false,
            ..ProviderEndpoints::default()
        };
        if c.issuer.is_none() && c.protected_resource.is_none() {
            return Ok(explicit);
        }
        let http = self.http()?;
        let discovered = self
            .discovered
            .get_or_try_init(|| async {
                let found = match (&c.issuer, &c.protected_resource) {
                    (Some(issuer), _) => discovery::from_issuer(&http, issuer).await,
                    (None, Some(resource)) => {
                        discovery::from_protected_resource(
                            &http,
                            resource,
                            &c.allowed_authorization_servers,
                            c.resource_speaks_mcp,
                        )
                        .await
                    }
                    (None, None) => Ok(ProviderEndpoints::default()),
                };
                match &found {
                    Ok(e) => tracing::info!(
                        token_endpoint = e.token.as_ref().map(|u| u.as_str()),
                        revocation_endpoint = e.revocation.as_ref().map(|u| u.as_str()),
                        resource = e.resource.as_deref(),
                        "discovered the authorization server"
                    ),
                    Err(m) => tracing::warn!(error = %m, "discovery failed"),
                }
                found
            })
            .await;
        match discovered {
            Ok(d) => Ok(self.with_mtls_aliases(explicit.or(d.clone()))),
            // An explicit token endpoint keeps working while discovery is down.
            Err(_) if explicit.token.is_some() => Ok(explicit),
            // A server the credential does not allow stays so until the config changes.
            Err(m @ discovery::DiscoveryError::NotAllowed { .. }) => Err(GrantError::permanent(
                GrantErrorKind::DiscoveryFailed,
                m.to_string(),
            )),
            Err(m) => Err(GrantError::transient(
                GrantErrorKind::DiscoveryFailed,
                m.to_string(),
            )),
        }
    }

    /// RFC 8705 §5: a client that authenticates with its certificate uses the provider's
    /// mTLS aliases (a configured `token_url` or `revocation_url` still wins).
    fn with_mtls_aliases(&self, mut e: ProviderEndpoints) -> ProviderEndpoints {
        if self.transport.identity().is_some() {
            let c = &self.config;
            if c.token_url.is_none() {
                e.token = e.mtls_token.clone().or(e.token);
            }
            if c.revocation_url.is_none() {
                e.revocation = e.mtls_revocation.clone().or(e.revocation);
            }
        }
        e
    }

    /// Whom a signed client assertion is addressed to (unless `assertion_audience` says):
    /// the token endpoint (RFC 7523), or for an authorization server an upstream names, its
    /// issuer identifier, as the MCP authorization spec asks (RFC 7523bis).
    fn audience(&self, endpoints: &ProviderEndpoints, token_url: &url::Url) -> String {
        match (&self.config.protected_resource, &endpoints.issuer) {
            (Some(_), Some(issuer)) => issuer.clone(),
            _ => token_url.as_str().to_string(),
        }
    }

    /// The HTTP client of this endpoint (with the client certificate, when there is one).
    pub fn http(&self) -> Result<reqwest::Client, GrantError> {
        self.transport.client()
    }

    pub fn config(&self) -> &TokenRequestConfig {
        &self.config
    }

    /// Adds client authentication to a request for `url` (one of this provider's
    /// endpoints); assertions are addressed to the token endpoint, or to `url` without one.
    pub async fn authenticate(
        &self,
        req: reqwest::RequestBuilder,
        form: &mut Form,
        url: &url::Url,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let endpoints = self.endpoints().await.unwrap_or_default();
        let audience = self.audience(&endpoints, endpoints.token.as_ref().unwrap_or(url));
        self.apply_client(&endpoints, req, form, &audience)
    }

    /// Revokes one token (RFC 7009). Best effort: the outcome is reported, never retried.
    pub async fn revoke(
        &self,
        token: &SecretString,
        hint: &'static str,
    ) -> Result<(), RevocationError> {
        let endpoints = self.endpoints().await.map_err(RevocationError::Endpoint)?;
        let Some(url) = &endpoints.revocation else {
            return Err(RevocationError::NoEndpoint);
        };
        let mut form = vec![
            ("token", token.expose_secret().to_string()),
            ("token_type_hint", hint.to_string()),
        ];
        let http = self.http().map_err(RevocationError::Endpoint)?;
        let req = http.post(url.clone());
        let req = self
            .authenticate(req, &mut form, url)
            .await
            .map_err(RevocationError::Endpoint)?;
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| RevocationError::Unreachable(error_chain(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(RevocationError::Answered(resp.status().as_u16()))
        }
    }

    /// Sends one token request with `scope` added.
    pub async fn request(&self, mut form: Form) -> Result<IssuedToken, GrantError> {
        self.add_scope(&mut form).await;
        self.exchange(form).await
    }

    pub async fn add_scope(&self, form: &mut Form) {
        let scopes = self.scopes(&self.endpoints().await.unwrap_or_default());
        if !scopes.is_empty() {
            form.push(("scope", scopes.join(" ")));
        }
    }

    /// The scopes to ask for: the configured ones, else what the protected resource asks
    /// for (its challenge's `scope`, else its metadata's `scopes_supported`), else none;
    /// with those a step-up added.
    pub fn scopes(&self, endpoints: &ProviderEndpoints) -> Vec<String> {
        let mut scopes = if self.config.scopes.is_empty() {
            endpoints.resource_scopes.clone()
        } else {
            self.config.scopes.clone()
        };
        for s in self.step_up.request_scopes() {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        scopes
    }

    /// The scopes step-ups added, shared with the credential's slot (which plans them).
    pub fn step_up(&self) -> std::sync::Arc<step_up::StepUp> {
        std::sync::Arc::clone(&self.step_up)
    }

    /// The scopes a login asks for: [`Self::scopes`], with `offline_access` when the
    /// authorization server offers it (a login is for a refresh token), never otherwise.
    pub fn login_scopes(&self, endpoints: &ProviderEndpoints) -> Vec<String> {
        let mut scopes = self.scopes(endpoints);
        for s in self.step_up.recorded() {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let offline = "offline_access";
        if endpoints.server_scopes.iter().any(|s| s == offline)
            && !scopes.iter().any(|s| s == offline)
        {
            scopes.push(offline.to_string());
        }
        scopes
    }

    /// Sends a token request with exactly these grant fields (plus client authentication,
    /// `resource` and `params`). Used by the grants and by `bearerd login`.
    pub async fn exchange(&self, form: Form) -> Result<IssuedToken, GrantError> {
        self.exchange_via(form, None).await
    }

    /// `exchange`, through the rotation helper when `via` names one (with the fingerprint of
    /// the refresh token in the form). With DPoP, a `use_dpop_nonce` answer is tried once
    /// more with the server's nonce (RFC 9449 §8); the grant was not spent by it.
    pub async fn exchange_via(
        &self,
        mut form: Form,
        via: Option<(&dyn Carrier, String)>,
    ) -> Result<IssuedToken, GrantError> {
        let endpoints = self.endpoints().await?;
        let token_url = endpoints.token.clone().ok_or_else(|| {
            GrantError::permanent(
                GrantErrorKind::NoTokenEndpoint,
                "discovery found no token_endpoint",
            )
        })?;
        if let Some(r) = self.config.resource.clone().or(endpoints.resource.clone()) {
            form.push(("resource", r));
        }
        if let Some(d) = &self.dpop {
            d.settled().await;
        }
        let key = self.dpop.as_ref().map(|d| d.key());
        let mut retried = false;
        loop {
            let (proof, sent_nonce) = match (&self.dpop, &key) {
                (Some(d), Some(k)) => {
                    let (proof, nonce) = d.proof(k, &token_url)?;
                    (Some(proof), nonce)
                }
                _ => (None, None),
            };
            let (request, sent_secrets) =
                self.token_request(&endpoints, &token_url, form.clone(), proof)?;
            let via = via.as_ref().map(|(h, r)| (*h, r.clone()));
            let raw = self.carry(request, via).await?;
            if let Some(d) = &self.dpop {
                d.remember_nonce(raw.dpop_nonce.as_ref());
            }
            // Another nonce than the proof carried: a try with it may succeed.
            let new_nonce = raw.dpop_nonce.is_some() && raw.dpop_nonce != sent_nonce;
            let result = response::classify_response(&raw).map_err(|mut e| {
                e.message = scrub(&e.message, &sent_secrets);
                e
            });
            match result {
                Err(e) if !retried && new_nonce && use_dpop_nonce(&e) => retried = true,
                result => return self.bind_to_key(result, key),
            }
        }
    }

    /// The token request as it goes out: client authentication, `params`, the DPoP proof;
    /// with the secrets it carries, which the answer may not quote back.
    fn token_request(
        &self,
        endpoints: &ProviderEndpoints,
        token_url: &url::Url,
        mut form: Form,
        proof: Option<String>,
    ) -> Result<(reqwest::Request, Vec<String>), GrantError> {
        let http = self.http()?;
        let mut req = http
            .post(token_url.clone())
            .header("accept", "application/json");
        if let Some(proof) = proof {
            req = req.header(dpop::DPOP, proof);
        }
        let audience = self.audience(endpoints, token_url);
        let req = self.apply_client(endpoints, req, &mut form, &audience)?;
        let mut body: Vec<(String, String)> =
            form.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in &self.config.params {
            body.push((k.clone(), v.clone()));
        }
        let request = req.form(&body).build().map_err(|e| {
            let message = format!("cannot build the token request: {}", error_chain(&e));
            self.transport.transport_failure(false, message)
        })?;
        // A provider's error_description sometimes echoes the request.
        let sent_secrets: Vec<String> = body
            .iter()
            .filter(|(k, _)| SECRET_FIELDS.contains(&k.as_str()))
            .map(|(_, v)| v.clone())
            .collect();
        Ok((request, sent_secrets))
    }

    /// Sends a token request: directly, or through the rotation helper when `via` names one.
    async fn carry(
        &self,
        request: reqwest::Request,
        via: Option<(&dyn Carrier, String)>,
    ) -> Result<transport::RawResponse, GrantError> {
        let c = &self.config;
        let Some((helper, replaces)) = via else {
            return self.transport.send(&self.http()?, request).await;
        };
        let sent = helper
            .send(
                &request,
                c.timeout,
                c.ca_file.clone(),
                self.transport.identity().cloned(),
                replaces.clone(),
            )
            .await;
        match sent {
            Ok(raw) => Ok(raw),
            Err(CarrierError::NotStarted(why)) => {
                // Nothing was sent: send it here, without the journal.
                tracing::warn!("{why}; sending the token request directly");
                self.transport.send(&self.http()?, request).await
            }
            Err(CarrierError::Failed { timeout, message }) => {
                let mut e = self.transport.transport_failure(timeout, message);
                // The provider may have rotated and the helper journaled it.
                e.rotated_refresh_token = helper.journaled_successor(&replaces).await;
                Err(e)
            }
            Err(CarrierError::NotSent(message)) => Err(GrantError::transient(
                GrantErrorKind::StoreUnavailable,
                message,
            )),
        }
    }

    /// A DPoP-bound token gets the key that proved possession. One the credential did not
    /// ask to bind is refused (it could not be used as a bearer token), and so is a bearer
    /// token for a credential that asked for bound ones.
    fn bind_to_key(
        &self,
        result: Result<IssuedToken, GrantError>,
        key: Option<std::sync::Arc<crate::material::dpop::DpopKey>>,
    ) -> Result<IssuedToken, GrantError> {
        let mut token = result?;
        match (token.dpop_bound, key) {
            (true, Some(key)) => token.dpop_key = Some(key),
            (true, None) => {
                let mut e = GrantError::permanent(
                    GrantErrorKind::UnsupportedTokenType,
                    "the token endpoint issued a DPoP-bound token to a request without a proof (token_type DPoP)",
                );
                // The provider rotated all the same: the old refresh token is spent.
                e.rotated_refresh_token = token.refresh_token.take();
                return Err(e);
            }
            (false, Some(_)) => {
                // The operator asked for bound tokens: a bearer one is not used in their place.
                let mut e = GrantError::permanent(
                    GrantErrorKind::UnsupportedTokenType,
                    "dpop = true, and the authorization server issued a token that is not DPoP-bound (it does not support DPoP?)",
                );
                e.rotated_refresh_token = token.refresh_token.take();
                return Err(e);
            }
            (false, None) => {}
        }
        Ok(token)
    }
}

/// RFC 9449 §8: the server wants the nonce it sent in the proof.
fn use_dpop_nonce(e: &GrantError) -> bool {
    e.kind.is_oauth(error::OAuthErrorCode::UseDpopNonce)
}
