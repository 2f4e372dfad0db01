//! Grants: how a token is obtained. The OAuth grants POST to a token endpoint and classify
//! the answer; the static grant reads a file. Nothing here knows about schedules or slots.

use std::time::{Duration, SystemTime};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

use super::discovery::{self, ProviderEndpoints};
use super::rotation::{HelperError, RawResponse};
use crate::config::{same_secret, ClientAuthMethod, GrantConfig, SecretRef, TokenRequestConfig};
use crate::store::fingerprint;

/// A token as the grant produced it.
pub struct IssuedToken {
    pub access_token: SecretString,
    pub lifetime: Option<Duration>,
    pub scopes: Vec<String>,
    /// The refresh token to use next (after rotation), for grants that have one.
    pub refresh_token: Option<SecretString>,
}

/// Why a grant failed, classified per DESIGN §4.
#[derive(Debug, Clone)]
pub struct GrantError {
    /// Short machine-readable kind: an OAuth error code, `http_503`, `timeout`, `network`, …
    pub kind: String,
    pub message: String,
    pub permanent: bool,
    pub retry_after: Option<Duration>,
    /// A refresh token the provider rotated to even though the rest of its answer was
    /// unusable: it replaces the one that was sent.
    pub rotated_refresh_token: Option<SecretString>,
}

impl GrantError {
    /// Only the provider's verdict on the refresh token itself makes it worthless; a missing
    /// client secret or an unreachable endpoint leaves it as good as it was.
    pub fn drops_refresh_token(&self) -> bool {
        self.kind == "invalid_grant"
    }

    fn transient(kind: impl Into<String>, message: impl Into<String>) -> Self {
        GrantError {
            kind: kind.into(),
            message: message.into(),
            permanent: false,
            retry_after: None,
            rotated_refresh_token: None,
        }
    }
    fn permanent(kind: impl Into<String>, message: impl Into<String>) -> Self {
        GrantError {
            kind: kind.into(),
            message: message.into(),
            permanent: true,
            retry_after: None,
            rotated_refresh_token: None,
        }
    }
}

/// What one grant attempt gave.
pub enum GrantOutcome {
    Issued(IssuedToken),
    /// The static token file did not change since the last read.
    Unchanged,
}

pub enum Grant {
    ClientCredentials(TokenEndpoint),
    RefreshToken {
        endpoint: TokenEndpoint,
        seed: Option<SecretRef>,
        /// The refresh token to use next: rotated ones, or one restored from the store.
        current: Mutex<Option<SecretString>>,
        /// A fingerprint of the seed once it has been sent (kept in the store too), so the
        /// same seed is never sent twice, not even after a restart.
        spent_seed: Mutex<Option<String>>,
        /// Exchanges run through the rotation helper, so a rotated token survives a kill.
        durable: Option<Box<super::rotation::DurableRotation>>,
    },
    Static {
        token: SecretRef,
        last: Mutex<Option<SecretString>>,
    },
}

impl Grant {
    pub fn new(config: &GrantConfig) -> Result<Grant, String> {
        Ok(match config {
            GrantConfig::ClientCredentials(req) => {
                Grant::ClientCredentials(TokenEndpoint::new(req)?)
            }
            GrantConfig::RefreshToken { request, seed } => Grant::RefreshToken {
                endpoint: TokenEndpoint::new(request)?,
                seed: seed.clone(),
                current: Mutex::new(None),
                spent_seed: Mutex::new(None),
                durable: None,
            },
            GrantConfig::Static { token } => Grant::Static {
                token: token.clone(),
                last: Mutex::new(None),
            },
        })
    }

    /// Runs this grant's rotating exchanges through the rotation helper (refresh-token grants
    /// with a file store; other grants have nothing to lose).
    pub fn make_rotation_durable(&mut self, rotation: super::rotation::DurableRotation) {
        if let Grant::RefreshToken { durable, .. } = self {
            *durable = Some(Box::new(rotation));
        }
    }

    /// Static tokens are watched by polling; OAuth tokens are refreshed on a schedule.
    pub fn poll_interval(&self) -> Option<Duration> {
        match self {
            Grant::Static {
                token: SecretRef::File(_),
                ..
            } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// Tokens of this grant are worth persisting (static ones are re-read from their source).
    pub fn persists(&self) -> bool {
        !matches!(self, Grant::Static { .. })
    }

    pub fn forgets_refresh_token_on_failure(&self) -> bool {
        matches!(self, Grant::RefreshToken { .. })
    }

    /// The refresh token the grant would use next (none for other grants).
    pub async fn refresh_token(&self) -> Option<SecretString> {
        match self {
            Grant::RefreshToken {
                current,
                seed,
                spent_seed,
                ..
            } => {
                let current = current.lock().await.clone();
                match current {
                    Some(rt) => Some(rt),
                    // The seed counts only until it has been sent.
                    None => seed.as_ref()?.resolve().ok().filter(|s| {
                        !spent_seed
                            .try_lock()
                            .is_ok_and(|spent| spent.as_deref() == Some(fingerprint(s).as_str()))
                    }),
                }
            }
            _ => None,
        }
    }

    /// Forgets every refresh token, the seed included (logout): only a login brings one back.
    pub async fn forget(&self) {
        if let Grant::RefreshToken {
            current,
            seed,
            spent_seed,
            ..
        } = self
        {
            *current.lock().await = None;
            if let Some(s) = seed.as_ref().and_then(|s| s.resolve().ok()) {
                *spent_seed.lock().await = Some(fingerprint(&s));
            }
        }
    }

    /// The fingerprint of the seed if it has been sent (to persist it).
    pub async fn spent_seed(&self) -> Option<String> {
        match self {
            Grant::RefreshToken { spent_seed, .. } => spent_seed.lock().await.clone(),
            _ => None,
        }
    }

    /// Remembers a seed spent by an earlier run (from the store).
    pub async fn restore_spent_seed(&self, fp: String) {
        if let Grant::RefreshToken { spent_seed, .. } = self {
            *spent_seed.lock().await = Some(fp);
        }
    }

    pub fn endpoint(&self) -> Option<&TokenEndpoint> {
        match self {
            Grant::ClientCredentials(ep) => Some(ep),
            Grant::RefreshToken { endpoint, .. } => Some(endpoint),
            Grant::Static { .. } => None,
        }
    }

    /// Continues from a refresh token kept in the store (newer than the configured seed).
    pub async fn restore_refresh_token(&self, rt: SecretString) {
        self.take_stored_refresh_token(Some(rt)).await;
    }

    /// Takes the store's refresh token as the current one; `None` (another replica's
    /// provider dropped the grant) forgets the one held here, so it is never sent again.
    pub async fn take_stored_refresh_token(&self, rt: Option<SecretString>) {
        if let Grant::RefreshToken { current, .. } = self {
            *current.lock().await = rt;
        }
    }

    pub async fn obtain(&self) -> Result<GrantOutcome, GrantError> {
        match self {
            Grant::ClientCredentials(ep) => {
                let form = vec![("grant_type", "client_credentials".to_string())];
                ep.request(form).await.map(|(t, _)| GrantOutcome::Issued(t))
            }
            Grant::RefreshToken {
                endpoint,
                seed,
                current,
                spent_seed,
                durable,
            } => {
                // Held across the request: one use of a refresh token at a time, ever.
                let mut current = current.lock().await;
                let rt = match current.as_ref() {
                    Some(rt) => rt.clone(),
                    None => {
                        let Some(seed) = seed else {
                            return Err(GrantError::permanent(
                                "login_required",
                                "no refresh token yet: run `bearerd login` for this credential",
                            ));
                        };
                        let fresh = seed
                            .resolve()
                            .map_err(|m| GrantError::permanent("refresh_token_unavailable", m))?;
                        let mut spent = spent_seed.lock().await;
                        let fp = fingerprint(&fresh);
                        if spent.as_deref() == Some(fp.as_str()) {
                            // Sending a refresh token twice makes providers revoke the grant.
                            return Err(GrantError::permanent(
                                "refresh_token_spent",
                                "the configured refresh token was already used; provide a new one (log in again)",
                            ));
                        }
                        *spent = Some(fp);
                        // From now on the seed is the current refresh token: a transient
                        // failure retries with it, and only the provider can declare it dead.
                        *current = Some(fresh.clone());
                        fresh
                    }
                };
                let mut form = vec![
                    ("grant_type", "refresh_token".to_string()),
                    ("refresh_token", rt.expose_secret().to_string()),
                ];
                // RFC 6749 §6: without `scope` the refresh keeps the scope originally granted;
                // asking again for one the grant lacks (say, a dropped offline_access) fails.
                if endpoint.config().scope_on_refresh {
                    endpoint.add_scope(&mut form);
                }
                let via = durable.as_deref().map(|d| (d, fingerprint(&rt)));
                let result = endpoint.exchange_via(form, via).await;
                match result {
                    Ok((mut token, rotated)) => {
                        // Keep the old one when the provider does not rotate.
                        let next = rotated.unwrap_or(rt);
                        *current = Some(next.clone());
                        token.refresh_token = Some(next);
                        Ok(GrantOutcome::Issued(token))
                    }
                    Err(e) => {
                        if let Some(rotated) = &e.rotated_refresh_token {
                            *current = Some(rotated.clone());
                        } else if e.drops_refresh_token() {
                            // The provider dropped the grant: forget the refresh token so it
                            // is never sent again; a new seed or login is needed.
                            *current = None;
                        }
                        Err(e)
                    }
                }
            }
            Grant::Static { token, last } => {
                let value = token
                    .resolve()
                    .map_err(|m| GrantError::permanent("static_token_unavailable", m))?;
                let mut last = last.lock().await;
                if last.as_ref().is_some_and(|l| same_secret(l, &value)) {
                    return Ok(GrantOutcome::Unchanged);
                }
                *last = Some(value.clone());
                Ok(GrantOutcome::Issued(IssuedToken {
                    access_token: value,
                    lifetime: None,
                    scopes: Vec::new(),
                    refresh_token: None,
                }))
            }
        }
    }
}

/// A client for one OAuth token endpoint.
pub struct TokenEndpoint {
    http: reqwest::Client,
    config: TokenRequestConfig,
    /// Endpoints found by discovery, once it has succeeded.
    discovered: tokio::sync::OnceCell<ProviderEndpoints>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

const PERMANENT_CODES: [&str; 5] = [
    "invalid_grant",
    "invalid_client",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

/// The HTTP client for token requests: the request timeout, no redirects, and the
/// configured CA instead of the system roots when there is one. The rotation helper builds
/// the same one.
pub(crate) fn token_http_client(
    timeout: Duration,
    ca_file: Option<&std::path::Path>,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bearerd/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = ca_file {
        builder = builder.tls_built_in_root_certs(false);
        for der in crate::config::load_ca_file(ca)? {
            let cert = reqwest::Certificate::from_der(&der).map_err(|e| e.to_string())?;
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the token client: {e}"))
}

impl TokenEndpoint {
    pub fn new(config: &TokenRequestConfig) -> Result<Self, String> {
        let http = token_http_client(config.timeout, config.ca_file.as_deref())?;
        Ok(TokenEndpoint {
            http,
            config: config.clone(),
            discovered: tokio::sync::OnceCell::new(),
        })
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
        };
        if c.issuer.is_none() && c.protected_resource.is_none() {
            return Ok(explicit);
        }
        let discovered = self
            .discovered
            .get_or_try_init(|| async {
                let found = match (&c.issuer, &c.protected_resource) {
                    (Some(issuer), _) => discovery::from_issuer(&self.http, issuer).await,
                    (None, Some(resource)) => {
                        discovery::from_protected_resource(&self.http, resource).await
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
            Ok(d) => Ok(explicit.or(d.clone())),
            // An explicit token endpoint keeps working while discovery is down.
            Err(_) if explicit.token.is_some() => Ok(explicit),
            Err(m) => Err(GrantError::transient("discovery_failed", m)),
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn config(&self) -> &TokenRequestConfig {
        &self.config
    }

    /// Adds client authentication: a Basic header, or the client id (and secret) in the form.
    pub fn authenticate(
        &self,
        mut req: reqwest::RequestBuilder,
        form: &mut Vec<(&'static str, String)>,
    ) -> Result<reqwest::RequestBuilder, GrantError> {
        let c = &self.config;
        let secret = match &c.client.client_secret {
            Some(s) => Some(
                s.resolve()
                    .map_err(|m| GrantError::permanent("client_secret_unavailable", m))?,
            ),
            None => None,
        };
        match (c.client.method, &secret) {
            (ClientAuthMethod::Basic, Some(secret)) => {
                // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
                let user = form_encode(&c.client.client_id);
                let pass = form_encode(secret.expose_secret());
                let b64 =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                req = req.header("authorization", format!("Basic {b64}"));
            }
            (_, secret) => {
                form.push(("client_id", c.client.client_id.clone()));
                if let Some(s) = secret {
                    form.push(("client_secret", s.expose_secret().to_string()));
                }
            }
        }
        Ok(req)
    }

    /// Revokes one token (RFC 7009). Best effort: the outcome is reported, never retried.
    pub async fn revoke(&self, token: &SecretString, hint: &'static str) -> Result<(), String> {
        let endpoints = self.endpoints().await.map_err(|e| e.message)?;
        let Some(url) = &endpoints.revocation else {
            return Err("the provider has no revocation endpoint (set revocation_url)".into());
        };
        let mut form = vec![
            ("token", token.expose_secret().to_string()),
            ("token_type_hint", hint.to_string()),
        ];
        let req = self.http.post(url.clone());
        let req = self.authenticate(req, &mut form).map_err(|e| e.message)?;
        let resp = req
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("revocation endpoint unreachable: {}", error_chain(&e)))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("revocation endpoint answered {}", resp.status()))
        }
    }

    /// Sends one token request. Returns the token and, when the provider rotated it, the new
    /// refresh token.
    async fn request(
        &self,
        mut form: Vec<(&'static str, String)>,
    ) -> Result<(IssuedToken, Option<SecretString>), GrantError> {
        self.add_scope(&mut form);
        self.exchange(form).await
    }

    fn add_scope(&self, form: &mut Vec<(&'static str, String)>) {
        if !self.config.scopes.is_empty() {
            form.push(("scope", self.config.scopes.join(" ")));
        }
    }

    /// Sends a token request with exactly these grant fields (plus client authentication,
    /// `resource` and `params`). Used by the grants and by `bearerd login`.
    pub async fn exchange(
        &self,
        form: Vec<(&'static str, String)>,
    ) -> Result<(IssuedToken, Option<SecretString>), GrantError> {
        self.exchange_via(form, None).await
    }

    /// `exchange`, through the rotation helper when `via` names one (with the fingerprint of
    /// the refresh token in the form).
    async fn exchange_via(
        &self,
        mut form: Vec<(&'static str, String)>,
        via: Option<(&super::rotation::DurableRotation, String)>,
    ) -> Result<(IssuedToken, Option<SecretString>), GrantError> {
        let c = &self.config;
        let endpoints = self.endpoints().await?;
        let token_url = endpoints.token.ok_or_else(|| {
            GrantError::permanent("no_token_endpoint", "discovery found no token_endpoint")
        })?;
        if let Some(r) = c.resource.clone().or(endpoints.resource) {
            form.push(("resource", r));
        }
        let req = self
            .http
            .post(token_url)
            .header("accept", "application/json");
        let req = self.authenticate(req, &mut form)?;
        let mut body: Vec<(String, String)> =
            form.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (k, v) in &c.params {
            body.push((k.clone(), v.clone()));
        }
        let request = req.form(&body).build().map_err(|e| {
            let message = format!("cannot build the token request: {}", error_chain(&e));
            self.transport_failure(false, message)
        })?;
        let raw = match via {
            Some((helper, replaces)) => {
                let sent = helper
                    .send(&request, c.timeout, c.ca_file.clone(), replaces.clone())
                    .await;
                match sent {
                    Ok(raw) => raw,
                    Err(HelperError::NotStarted(why)) => {
                        // Nothing was sent: send it here, without the journal.
                        tracing::warn!("{why}; sending the token request directly");
                        self.send_direct(request).await?
                    }
                    Err(HelperError::Failed { timeout, message }) => {
                        let mut e = self.transport_failure(timeout, message);
                        // The provider may have rotated and the helper journaled it.
                        e.rotated_refresh_token = helper.journaled_successor(&replaces);
                        return Err(e);
                    }
                }
            }
            None => self.send_direct(request).await?,
        };
        classify_response(&raw)
    }

    fn transport_failure(&self, timeout: bool, message: String) -> GrantError {
        if timeout {
            GrantError::transient(
                "timeout",
                format!(
                    "token endpoint did not answer within {:?}",
                    self.config.timeout
                ),
            )
        } else {
            GrantError::transient("network", message)
        }
    }

    async fn send_direct(&self, request: reqwest::Request) -> Result<RawResponse, GrantError> {
        // reqwest errors name the URL but never the form body.
        let resp = self.http.execute(request).await.map_err(|e| {
            let message = format!("token endpoint unreachable: {}", error_chain(&e));
            self.transport_failure(e.is_timeout(), message)
        })?;
        let status = resp.status().as_u16();
        let retry_after = resp.headers().get("retry-after").cloned();
        let body = resp.bytes().await.map_err(|e| {
            GrantError::transient(
                "network",
                format!("token response broke off: {}", error_chain(&e)),
            )
        })?;
        Ok(RawResponse {
            status,
            retry_after,
            body: body.to_vec(),
        })
    }
}

pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    // The URL is the token endpoint's (no secret); the form body is never in the message.
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn parse_retry_after(v: &http::HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate_parse(s)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

fn httpdate_parse(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(s).ok().or_else(|| {
        // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
        let parts: Vec<&str> = s.split_whitespace().collect();
        if parts.len() != 6 {
            return None;
        }
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months.iter().position(|m| *m == parts[2])? + 1;
        let iso = format!("{}-{:02}-{:0>2}T{}Z", parts[3], month, parts[1], parts[4]);
        humantime::parse_rfc3339(&iso).ok()
    })
}

/// What a token endpoint's answer means: a token (only from a well-formed 2xx), or a
/// classified error. Total: no status, header or body makes it panic.
pub fn classify_response(
    raw: &RawResponse,
) -> Result<(IssuedToken, Option<SecretString>), GrantError> {
    if (200..300).contains(&raw.status) {
        return parse_success(&raw.body);
    }
    let retry_after = raw.retry_after.as_ref().and_then(parse_retry_after);
    Err(classify_failure(raw.status, &raw.body, retry_after))
}

/// Parses a 2xx token response. A body that is not a usable bearer token is a transient
/// error: the provider glitched, and the next attempt may well succeed. A refresh token in
/// such a body is still handed back (in the error): the provider has rotated, and the old
/// one must never be sent again.
pub fn parse_success(body: &[u8]) -> Result<(IssuedToken, Option<SecretString>), GrantError> {
    let r: TokenResponse = serde_json::from_slice(body).map_err(|e| {
        GrantError::transient(
            "malformed_response",
            // Only the position: serde's message could quote a token.
            format!(
                "token response is not a JSON object (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let rotated = r
        .refresh_token
        .clone()
        .filter(|t| !t.is_empty())
        .map(SecretString::from);
    let with_rotated = |mut e: GrantError| {
        e.rotated_refresh_token = rotated.clone();
        e
    };
    let access = r.access_token.filter(|t| !t.is_empty()).ok_or_else(|| {
        with_rotated(GrantError::transient(
            "malformed_response",
            "token response has no access_token",
        ))
    })?;
    if access.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
        return Err(with_rotated(GrantError::transient(
            "malformed_response",
            "access_token holds characters that cannot go in an Authorization header",
        )));
    }
    if let Some(tt) = &r.token_type {
        if !tt.eq_ignore_ascii_case("bearer") {
            return Err(with_rotated(GrantError::permanent(
                "unsupported_token_type",
                format!("token_type {tt:?} is not Bearer"),
            )));
        }
    }
    let seconds = match &r.expires_in {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(n.as_f64().unwrap_or(-1.0)),
        Some(serde_json::Value::String(s)) => Some(s.trim().parse::<f64>().unwrap_or(-1.0)),
        Some(_) => Some(-1.0),
    };
    let lifetime = match seconds {
        None => None,
        // Clamped to a year so instant arithmetic can never overflow on a silly value.
        Some(s) if s > 0.0 && s.is_finite() => {
            Some(Duration::from_secs_f64(s.min(MAX_LIFETIME_SECS)))
        }
        Some(_) => {
            return Err(with_rotated(GrantError::transient(
                "malformed_response",
                "expires_in is not a positive number",
            )))
        }
    };
    let scopes = r
        .scope
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Ok((
        IssuedToken {
            access_token: SecretString::from(access),
            lifetime,
            scopes,
            refresh_token: None,
        },
        rotated,
    ))
}

const MAX_LIFETIME_SECS: f64 = 365.0 * 86400.0;

/// Classifies a non-2xx token response per DESIGN §4.
pub fn classify_failure(status: u16, body: &[u8], retry_after: Option<Duration>) -> GrantError {
    let parsed: Option<ErrorResponse> = serde_json::from_slice(body).ok();
    let mut err = match (status, parsed) {
        (429, _) => GrantError::transient("http_429", "token endpoint is rate limiting"),
        (500..=599, p) => GrantError::transient(
            format!("http_{status}"),
            match p {
                Some(p) => describe(&p),
                None => format!("token endpoint answered {status}"),
            },
        ),
        (_, Some(p)) => {
            let permanent = PERMANENT_CODES.contains(&p.error.as_str())
                || !matches!(
                    p.error.as_str(),
                    "temporarily_unavailable" | "server_error" | "slow_down"
                );
            GrantError {
                kind: sanitize_kind(&p.error),
                message: describe(&p),
                permanent,
                retry_after: None,
                rotated_refresh_token: None,
            }
        }
        (408, None) => GrantError::transient("http_408", "token endpoint timed out the request"),
        (_, None) => GrantError::permanent(
            format!("http_{status}"),
            format!("token endpoint answered {status} without an OAuth error body"),
        ),
    };
    err.retry_after = retry_after;
    err
}

fn describe(p: &ErrorResponse) -> String {
    match &p.error_description {
        Some(d) => format!("{}: {}", p.error, d.chars().take(200).collect::<String>()),
        None => p.error.clone(),
    }
}

/// Error codes become metric-free log and status fields; keep them short and printable.
fn sanitize_kind(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_normal_response() {
        let (t, rt) = parse_success(br#"{"access_token":"abc","token_type":"bearer","expires_in":"30","refresh_token":"r2","scope":"a b"}"#).unwrap();
        assert_eq!(t.lifetime, Some(Duration::from_secs(30)));
        assert_eq!(t.scopes, vec!["a", "b"]);
        assert!(rt.is_some());
    }

    #[test]
    fn rejects_bad_success_bodies_as_transient() {
        for body in [
            &b"not json"[..],
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":"a b"}"#,
            br#"{"access_token":"a","expires_in":-3}"#,
        ] {
            let e = parse_success(body).err().expect("must fail");
            assert!(!e.permanent, "{}", e.message);
            assert_eq!(e.kind, "malformed_response");
        }
        let e = parse_success(br#"{"access_token":"a","token_type":"mac"}"#)
            .err()
            .unwrap();
        assert!(e.permanent);
    }

    #[test]
    fn classifies_failures() {
        for code in PERMANENT_CODES {
            let body = format!(r#"{{"error":"{code}"}}"#);
            assert!(
                classify_failure(400, body.as_bytes(), None).permanent,
                "{code}"
            );
        }
        assert!(classify_failure(400, b"", None).permanent);
        assert!(classify_failure(401, b"", None).permanent);
        assert!(!classify_failure(503, b"", None).permanent);
        assert!(!classify_failure(429, b"", None).permanent);
        assert!(!classify_failure(400, br#"{"error":"temporarily_unavailable"}"#, None).permanent);
        let e = classify_failure(503, b"", Some(Duration::from_secs(7)));
        assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    }

    /// Any answer a token endpoint can give, broken ones above all.
    mod answers {
        use proptest::prelude::*;
        use serde_json::{json, Value};

        /// One field of a token response: absent, or one of these values.
        fn field(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
            prop_oneof![1 => Just(None), 3 => prop::sample::select(values).prop_map(Some)]
        }

        fn token_json() -> impl Strategy<Value = Value> {
            let access = field(vec![
                json!("tok_AbC.123-_~+/="),
                json!(""),
                json!("has space"),
                json!("tök"),
                json!(null),
                json!(42),
                json!(["a"]),
            ]);
            let token_type = field(vec![
                json!("Bearer"),
                json!("bearer"),
                json!("BEARER"),
                json!("mac"),
                json!("DPoP"),
                json!(null),
                json!(7),
            ]);
            let expires_in = field(vec![
                json!(3600),
                json!(1),
                json!(0),
                json!(-5),
                json!(0.5),
                json!(1e300),
                json!(u64::MAX),
                json!(i64::MIN),
                json!("30"),
                json!(" 30 "),
                json!("abc"),
                json!("inf"),
                json!("NaN"),
                json!("-1"),
                json!(true),
                json!(null),
                json!({"s": 1}),
            ]);
            let refresh = field(vec![json!("rt_next"), json!(""), json!(null), json!(9)]);
            let scope = field(vec![json!("a b"), json!(""), json!(null), json!(["a"])]);
            let error = field(vec![
                json!("invalid_grant"),
                json!("invalid_client"),
                json!("server_error"),
                json!("slow_down"),
                json!("temporarily_unavailable"),
                json!("weird\u{0}code\u{7f}"),
                json!(3),
            ]);
            (access, token_type, expires_in, refresh, scope, error).prop_map(
                |(a, t, e, r, s, err)| {
                    let mut m = serde_json::Map::new();
                    for (k, v) in [
                        ("access_token", a),
                        ("token_type", t),
                        ("expires_in", e),
                        ("refresh_token", r),
                        ("scope", s),
                        ("error", err),
                    ] {
                        if let Some(v) = v {
                            m.insert(k.into(), v);
                        }
                    }
                    Value::Object(m)
                },
            )
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            prop_oneof![
                4 => token_json().prop_map(|v| v.to_string().into_bytes()),
                // Truncated JSON.
                2 => (token_json(), any::<prop::sample::Index>()).prop_map(|(v, i)| {
                    let text = v.to_string().into_bytes();
                    text[..i.index(text.len() + 1)].to_vec()
                }),
                1 => prop::collection::vec(any::<u8>(), 0..64),
                1 => Just(b"[1,2]".to_vec()),
                1 => Just(b"\"just a string\"".to_vec()),
                1 => Just(b"{\"access_token\":\"a\",\"expires_in\":1e400}".to_vec()),
            ]
        }

        fn retry_after() -> impl Strategy<Value = Option<http::HeaderValue>> {
            let forms = prop_oneof![
                any::<u64>().prop_map(|n| n.to_string()),
                Just("Sun, 06 Nov 1994 08:49:37 GMT".to_string()),
                Just("Fri, 31 Dec 9999 23:59:59 GMT".to_string()),
                Just("Mon, 99 Foo 2024 99:99:99 GMT".to_string()),
                Just("-1".to_string()),
                Just("1.5".to_string()),
                "[ -~]{0,40}",
            ];
            proptest::option::of(forms.prop_filter_map("not a header value", |s| {
                http::HeaderValue::from_str(&s).ok()
            }))
        }

        fn status() -> impl Strategy<Value = u16> {
            prop_oneof![3 => 200u16..300, 1 => Just(200u16), 4 => 100u16..600]
        }

        /// The oracle: a success that may be published, read independently of the parser.
        fn well_formed_success(status: u16, body: &[u8]) -> Option<String> {
            if !(200..300).contains(&status) {
                return None;
            }
            let Value::Object(m) = serde_json::from_slice::<Value>(body).ok()? else {
                return None;
            };
            let string_or_absent =
                |k: &str| matches!(m.get(k), None | Some(Value::Null) | Some(Value::String(_)));
            // Other members (`error` among them) are not read from a success.
            if !["token_type", "refresh_token", "scope"]
                .iter()
                .all(|k| string_or_absent(k))
            {
                return None;
            }
            let access = m.get("access_token")?.as_str()?;
            if access.is_empty() || !access.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
                return None;
            }
            if let Some(Value::String(t)) = m.get("token_type") {
                if !t.eq_ignore_ascii_case("bearer") {
                    return None;
                }
            }
            let positive = |x: f64| x.is_finite() && x > 0.0;
            match m.get("expires_in") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(positive) => {}
                Some(Value::String(s)) if s.trim().parse().is_ok_and(positive) => {}
                Some(_) => return None,
            }
            Some(access.to_string())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(2000),
                ..ProptestConfig::default()
            })]

            #[test]
            fn every_answer_is_classified_and_only_a_well_formed_success_gives_a_token(
                status in status(),
                retry_after in retry_after(),
                body in body(),
            ) {
                let raw = super::RawResponse { status, retry_after: retry_after.clone(), body: body.clone() };
                let outcome = super::classify_response(&raw);
                let oracle = well_formed_success(status, &body);
                match (&outcome, &oracle) {
                    (Ok((token, _)), Some(access)) => {
                        prop_assert_eq!(super::ExposeSecret::expose_secret(&token.access_token), access.as_str());
                        prop_assert!(token.lifetime.is_none_or(|l| !l.is_zero()));
                    }
                    (Ok(_), None) => prop_assert!(false, "published a token from {status} {:?}", String::from_utf8_lossy(&body)),
                    (Err(e), Some(_)) => prop_assert!(false, "refused a well-formed success: {} {}", e.kind, e.message),
                    (Err(e), None) => {
                        prop_assert!(!e.kind.is_empty());
                        prop_assert!(e.kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'), "kind {:?}", e.kind);
                        if status == 429 || (500..600).contains(&status) {
                            prop_assert!(!e.permanent, "{status} must be transient");
                        }
                        if !(200..300).contains(&status) {
                            if let Some(secs) = retry_after.as_ref().and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                                prop_assert_eq!(e.retry_after, Some(std::time::Duration::from_secs(secs)));
                            }
                        }
                        // Nothing the body carried as a token reaches the error text.
                        prop_assert!(!e.message.contains("tok_AbC"), "{}", e.message);
                        prop_assert!(!e.message.contains("rt_next"), "{}", e.message);
                    }
                }
            }
        }
    }

    #[test]
    fn parses_retry_after_forms() {
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static("12")),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after(&http::HeaderValue::from_static(
                "Sun, 06 Nov 1994 08:49:37 GMT"
            )),
            Some(Duration::ZERO)
        );
    }
}
