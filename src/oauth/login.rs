//! `bearerd login`: one-time user authorization that yields a refresh token.
//! - Authorization code + PKCE (S256) on a loopback redirect (RFC 8252, RFC 7636), with a
//!   `state` bound to this attempt that expires after 10 minutes.
//! - The device grant (RFC 8628), polling at the server's `interval` and slowing down on
//!   `slow_down`.
//!
//! The refresh token is then handed to the running sidecar through the admin API.

use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::discovery::ProviderEndpoints;
use super::{GrantError, IssuedToken, OAuthErrorCode, TokenEndpoint};

/// How long a login attempt (its `state`, or its device code) stays valid.
pub const ATTEMPT_LIFETIME: Duration = Duration::from_secs(600);

/// What the user must do, for the CLI to print.
pub trait LoginPrompt {
    fn open_url(&self, url: &str);
    fn enter_code(&self, verification_uri: &str, user_code: &str, complete: Option<&str>);
}

/// Why a login ended without a refresh token. The CLI prints it.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The endpoints could not be found, or the client not built.
    #[error("{}", .0.message)]
    Endpoint(GrantError),
    /// The token endpoint refused the code (or the device code).
    #[error("{}: {}", .0.kind, .0.message)]
    Token(GrantError),
    #[error("{0}")]
    NoEndpoint(&'static str),
    #[error("cannot listen for the redirect on 127.0.0.1:{port}: {source}")]
    Listen { port: u16, source: std::io::Error },
    /// The redirect URI (or the authorization URL) cannot be built.
    #[error("{0}")]
    BadRedirect(String),
    /// The authorization server, or the redirect, said no.
    #[error("{0}")]
    Refused(String),
    /// The device authorization request failed.
    #[error("{0}")]
    Device(String),
    #[error("the login expired after 10 minutes")]
    Expired,
    #[error("the device code expired before the login was completed{}", .last_error.as_ref().map_or(String::new(), |e| format!(" (last error: {e})")))]
    DeviceCodeExpired { last_error: Option<String> },
}

/// What the loopback redirect brought: the code, or why the login ended.
/// The redirect's code and its `iss` (RFC 9207), or why there is no code.
type Redirect = Result<(String, Option<String>), LoginError>;

/// The loopback redirect handler's state: the `state` of this attempt, and where the
/// outcome goes.
#[derive(Clone)]
struct Callback {
    state: String,
    outcome: tokio::sync::mpsc::Sender<Redirect>,
}

/// `GET /callback?…`: a redirect for another attempt is answered and ignored; this
/// attempt's ends the wait with its code or its error.
async fn callback(
    axum::extract::State(cb): axum::extract::State<Callback>,
    axum::extract::Query(params): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Html<String> {
    let (reply, outcome) = if params.get("state") != Some(&cb.state) {
        ("This login link is not for the current attempt.", None)
    } else if let Some(err) = params.get("error") {
        (
            "The authorization server refused the login.",
            Some(Err(LoginError::Refused(format!(
                "authorization failed: {}",
                err.chars().take(100).collect::<String>()
            )))),
        )
    } else if let Some(code) = params.get("code") {
        (
            "Logged in. You can close this window.",
            Some(Ok((code.clone(), params.get("iss").cloned()))),
        )
    } else {
        (
            "The redirect carried no code.",
            Some(Err(LoginError::Refused(
                "the redirect carried no code".to_string(),
            ))),
        )
    };
    if let Some(outcome) = outcome {
        let _ = cb.outcome.try_send(outcome);
    }
    axum::response::Html(format!(
        "<!doctype html><title>bearerd</title><p>{reply}</p>"
    ))
}

/// Authorization code + PKCE. Listens on 127.0.0.1 (`port` 0 picks a free one), shows the
/// authorization URL, waits for the redirect, checks `state`, and exchanges the code.
///
/// The `oauth2` crate builds the authorization URL with its PKCE challenge and `state`;
/// the code is exchanged by bearerd's own token client, which authenticates the client the
/// configured way (a secret, a signed assertion, mTLS) and classifies the answer like any
/// other token request.
pub async fn authorization_code(
    endpoint: &TokenEndpoint,
    port: u16,
    prompt: &dyn LoginPrompt,
) -> Result<IssuedToken, LoginError> {
    let grant = authorize(endpoint, port, prompt).await?;
    endpoint
        .exchange(grant.form())
        .await
        .map_err(LoginError::Token)
}

/// An authorization code, with what redeeming it takes.
pub struct CodeGrant {
    pub code: SecretString,
    pub code_verifier: SecretString,
    pub redirect_uri: String,
}

impl CodeGrant {
    /// The token request's grant fields (RFC 6749 §4.1.3, RFC 7636 §4.5).
    pub fn form(&self) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", self.code.expose_secret().to_string()),
            ("redirect_uri", self.redirect_uri.clone()),
            (
                "code_verifier",
                self.code_verifier.expose_secret().to_string(),
            ),
        ]
    }
}

/// The browser half of [`authorization_code`]: the code the redirect brought, checked
/// (`state`, RFC 9207 `iss`), not yet redeemed. A client registered by the sidecar has
/// it redeemed there, where its secret stays.
pub async fn authorize(
    endpoint: &TokenEndpoint,
    port: u16,
    prompt: &dyn LoginPrompt,
) -> Result<CodeGrant, LoginError> {
    let (endpoints, authorize) = authorization_endpoint(endpoint).await?;
    let listen = |source| LoginError::Listen { port, source };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(listen)?;
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr().map_err(listen)?.port()
    );
    let AuthorizationRequest {
        url,
        state,
        verifier,
    } = authorization_request(endpoint, authorize, &endpoints, &redirect_uri)?;

    let (outcome, mut redirected) = tokio::sync::mpsc::channel::<Redirect>(1);
    let app = axum::Router::new()
        .route("/callback", axum::routing::get(callback))
        .with_state(Callback {
            state: state.expose_secret().to_string(),
            outcome,
        });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    prompt.open_url(url.as_str());
    let waited = tokio::time::timeout(ATTEMPT_LIFETIME, redirected.recv()).await;
    // The page for the redirect is answered before the server stops.
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    let (code, iss) = match waited {
        Ok(Some(result)) => result?,
        Ok(None) | Err(_) => return Err(LoginError::Expired),
    };
    // RFC 9207: a code from another authorization server (a mix-up) is never redeemed.
    endpoints
        .check_response_issuer(iss.as_deref())
        .map_err(|e| LoginError::Refused(e.to_string()))?;
    Ok(CodeGrant {
        code: SecretString::from(code),
        code_verifier: verifier,
        redirect_uri,
    })
}

/// The provider's endpoints, and the authorization endpoint among them.
pub async fn authorization_endpoint(
    endpoint: &TokenEndpoint,
) -> Result<(ProviderEndpoints, url::Url), LoginError> {
    let endpoints = endpoint.endpoints().await.map_err(LoginError::Endpoint)?;
    let authorize = endpoints
        .authorization
        .clone()
        .ok_or(LoginError::NoEndpoint(
            "no authorization endpoint: set authorization_url or issuer",
        ))?;
    Ok((endpoints, authorize))
}

/// An authorization URL with its `state` and PKCE verifier.
pub struct AuthorizationRequest {
    pub url: url::Url,
    pub state: SecretString,
    pub verifier: SecretString,
}

/// Builds the authorization URL (code + PKCE S256, a random `state`) for the credential's
/// client and scopes, with `prompt=consent` when offline_access is asked for (OpenID
/// Connect §11 ignores it otherwise) and RFC 8707's `resource`.
pub fn authorization_request(
    endpoint: &TokenEndpoint,
    authorize: url::Url,
    discovered: &ProviderEndpoints,
    redirect_uri: &str,
) -> Result<AuthorizationRequest, LoginError> {
    use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, Scope};

    let c = endpoint.config();
    // The registered client's id, for a credential that registers its own.
    let client =
        oauth2::basic::BasicClient::new(ClientId::new(endpoint.client_id().unwrap_or_default()))
            .set_auth_uri(AuthUrl::from_url(authorize))
            .set_redirect_uri(
                RedirectUrl::new(redirect_uri.to_string())
                    .map_err(|e| LoginError::BadRedirect(e.to_string()))?,
            );
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let scopes = endpoint.login_scopes(discovered);
    let mut request = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(scopes.iter().cloned().map(Scope::new))
        .set_pkce_challenge(challenge);
    if scopes.iter().any(|s| s == "offline_access") {
        request = request.add_extra_param("prompt", "consent");
    }
    if let Some(r) = c.resource.clone().or(discovered.resource.clone()) {
        request = request.add_extra_param("resource", r);
    }
    let (url, state) = request.url();
    Ok(AuthorizationRequest {
        url,
        state: SecretString::from(state.secret().clone()),
        verifier: SecretString::from(verifier.secret().clone()),
    })
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Option<u64>,
    interval: Option<u64>,
}

/// The device grant: shows the user code, then polls the token endpoint.
pub async fn device(
    endpoint: &TokenEndpoint,
    prompt: &dyn LoginPrompt,
) -> Result<IssuedToken, LoginError> {
    let endpoints = endpoint.endpoints().await.map_err(LoginError::Endpoint)?;
    let device_url = endpoints
        .device_authorization
        .clone()
        .ok_or(LoginError::NoEndpoint(
            "no device authorization endpoint: set device_authorization_url or issuer",
        ))?;
    let c = endpoint.config();
    let mut form: Vec<(&'static str, String)> = Vec::new();
    let scopes = endpoint.login_scopes(&endpoints);
    if !scopes.is_empty() {
        form.push(("scope", scopes.join(" ")));
    }
    if let Some(r) = c.resource.clone().or(endpoints.resource.clone()) {
        form.push(("resource", r));
    }
    let http = endpoint.http().map_err(LoginError::Endpoint)?;
    let req = endpoint
        .authenticate(http.post(device_url.clone()), &mut form, &device_url)
        .await
        .map_err(LoginError::Endpoint)?;
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| LoginError::Device(format!("device authorization failed: {e}")))?;
    let status = resp.status();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| LoginError::Device(e.to_string()))?;
    if !status.is_success() {
        return Err(LoginError::Device(format!(
            "device authorization answered {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(300)
                .collect::<String>()
        )));
    }
    let da: DeviceAuthorization = serde_json::from_slice(&bytes)
        .map_err(|e| LoginError::Device(format!("device authorization answer: {e}")))?;
    prompt.enter_code(
        &da.verification_uri,
        &da.user_code,
        da.verification_uri_complete.as_deref(),
    );
    let deadline =
        Instant::now() + Duration::from_secs(da.expires_in.unwrap_or(600)).min(ATTEMPT_LIFETIME);
    // RFC 8628 §3.5: 5 s when the server names no interval; slow_down adds 5 s.
    let mut interval = Duration::from_secs(da.interval.unwrap_or(5).max(1));
    let mut last_hiccup: Option<String> = None;
    // A provider's Retry-After stretches the next wait only, not the polling interval.
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        wait = interval;
        if Instant::now() > deadline {
            return Err(LoginError::DeviceCodeExpired {
                last_error: last_hiccup,
            });
        }
        let result = endpoint
            .exchange(vec![
                (
                    "grant_type",
                    "urn:ietf:params:oauth:grant-type:device_code".to_string(),
                ),
                ("device_code", da.device_code.clone()),
            ])
            .await;
        match result {
            Ok(t) => return Ok(t),
            Err(e) if e.kind.is_oauth(OAuthErrorCode::AuthorizationPending) => continue,
            Err(e) if e.kind.is_oauth(OAuthErrorCode::SlowDown) => {
                interval += Duration::from_secs(5);
                wait = interval;
            }
            // A provider or network hiccup (5xx, 429, a timeout) is not the user's answer:
            // keep polling until the code expires, no faster than the provider asks.
            Err(e) if !e.permanent => {
                if let Some(after) = e.retry_after {
                    wait = interval.max(after.min(Duration::from_secs(60)));
                }
                last_hiccup = Some(format!("{}: {}", e.kind, e.message));
            }
            Err(e) => return Err(LoginError::Token(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use sha2::{Digest, Sha256};

    #[test]
    fn the_pkce_challenge_is_s256_of_the_verifier() {
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        assert_eq!(challenge.method().as_str(), "S256");
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.secret().as_bytes()));
        assert_eq!(challenge.as_str(), expected);
        assert!(verifier.secret().len() >= 43, "RFC 7636 §4.1");
    }
}
