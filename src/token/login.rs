//! `bearerd login`: one-time user authorization that yields a refresh token.
//! - Authorization code + PKCE (S256) on a loopback redirect (RFC 8252, RFC 7636), with a
//!   `state` bound to this attempt that expires after 10 minutes.
//! - The device grant (RFC 8628), polling at the server's `interval` and slowing down on
//!   `slow_down`.
//!
//! The refresh token is then handed to the running sidecar through the admin API.

use std::time::{Duration, Instant};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::endpoint::{OAuthErrorCode, TokenEndpoint};
use super::grant::IssuedToken;

/// How long a login attempt (its `state`, or its device code) stays valid.
pub const ATTEMPT_LIFETIME: Duration = Duration::from_secs(600);

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let verifier = b64url(&rand::random::<[u8; 32]>());
        let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier: SecretString::from(verifier),
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// What the user must do, for the CLI to print.
pub trait LoginPrompt {
    fn open_url(&self, url: &str);
    fn enter_code(&self, verification_uri: &str, user_code: &str, complete: Option<&str>);
}

/// Authorization code + PKCE. Listens on 127.0.0.1 (`port` 0 picks a free one), shows the
/// authorization URL, waits for the redirect, checks `state`, and exchanges the code.
pub async fn authorization_code(
    endpoint: &TokenEndpoint,
    port: u16,
    prompt: &dyn LoginPrompt,
) -> Result<(IssuedToken, Option<SecretString>), String> {
    let endpoints = endpoint.endpoints().await.map_err(|e| e.message)?;
    let authorize = endpoints
        .authorization
        .ok_or("no authorization endpoint: set authorization_url or issuer")?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("cannot listen for the redirect on 127.0.0.1:{port}: {e}"))?;
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr().map_err(|e| e.to_string())?.port()
    );
    let pkce = Pkce::new();
    let state = format!("{:032x}", rand::random::<u128>());
    let started = Instant::now();
    let c = endpoint.config();
    let mut url = authorize.clone();
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair(
                "client_id",
                c.client.client_id.as_deref().unwrap_or_default(),
            )
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("state", &state)
            .append_pair("code_challenge", &pkce.challenge)
            .append_pair("code_challenge_method", "S256");
        if !c.scopes.is_empty() {
            q.append_pair("scope", &c.scopes.join(" "));
        }
        // OpenID Connect §11: offline_access is ignored unless consent is prompted.
        if c.scopes.iter().any(|s| s == "offline_access") {
            q.append_pair("prompt", "consent");
        }
        if let Some(r) = c.resource.clone().or(endpoints.resource.clone()) {
            q.append_pair("resource", &r);
        }
    }
    prompt.open_url(url.as_str());

    let code = loop {
        let remaining = ATTEMPT_LIFETIME.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            return Err("the login expired after 10 minutes".into());
        }
        let (mut conn, _) = tokio::time::timeout(remaining, listener.accept())
            .await
            .map_err(|_| "the login expired after 10 minutes".to_string())?
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap_or(Ok(0))
            .unwrap_or(0);
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        let target = head
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/");
        let parsed =
            url::Url::parse(&format!("http://127.0.0.1{target}")).map_err(|e| e.to_string())?;
        if parsed.path() != "/callback" {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let params: std::collections::HashMap<String, String> =
            parsed.query_pairs().into_owned().collect();
        let (reply, outcome) = if params.get("state") != Some(&state) {
            // A redirect that is not for this attempt: ignore it, keep waiting.
            ("This login link is not for the current attempt.", None)
        } else if let Some(err) = params.get("error") {
            (
                "The authorization server refused the login.",
                Some(Err(format!("authorization failed: {err}"))),
            )
        } else if let Some(code) = params.get("code") {
            (
                "Logged in. You can close this window.",
                Some(Ok(code.clone())),
            )
        } else {
            (
                "The redirect carried no code.",
                Some(Err("the redirect carried no code".to_string())),
            )
        };
        let body = format!("<!doctype html><title>bearerd</title><p>{reply}</p>");
        let _ = conn
            .write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes())
            .await;
        match outcome {
            Some(result) => break result?,
            None => continue,
        }
    };
    endpoint
        .exchange(vec![
            ("grant_type", "authorization_code".to_string()),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", pkce.verifier.expose_secret().to_string()),
        ])
        .await
        .map_err(|e| format!("{}: {}", e.kind, e.message))
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
) -> Result<(IssuedToken, Option<SecretString>), String> {
    let endpoints = endpoint.endpoints().await.map_err(|e| e.message)?;
    let device_url = endpoints
        .device_authorization
        .ok_or("no device authorization endpoint: set device_authorization_url or issuer")?;
    let c = endpoint.config();
    let mut form: Vec<(&'static str, String)> = Vec::new();
    if !c.scopes.is_empty() {
        form.push(("scope", c.scopes.join(" ")));
    }
    if let Some(r) = c.resource.clone().or(endpoints.resource.clone()) {
        form.push(("resource", r));
    }
    let http = endpoint.http().map_err(|e| e.message)?;
    let req = endpoint
        .authenticate(http.post(device_url.clone()), &mut form, &device_url)
        .await
        .map_err(|e| e.message)?;
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| format!("device authorization failed: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "device authorization answered {status}: {}",
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(300)
                .collect::<String>()
        ));
    }
    let da: DeviceAuthorization =
        serde_json::from_slice(&bytes).map_err(|e| format!("device authorization answer: {e}"))?;
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
            let why = last_hiccup.map_or(String::new(), |e| format!(" (last error: {e})"));
            return Err(format!(
                "the device code expired before the login was completed{why}"
            ));
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
            Err(e) => return Err(format!("{}: {}", e.kind, e.message)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc_7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = b64url(&Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let p = Pkce::new();
        assert_eq!(p.verifier.expose_secret().len(), 43);
        assert_ne!(Pkce::new().challenge, p.challenge);
    }
}
