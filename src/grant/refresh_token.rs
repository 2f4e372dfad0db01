//! `grant = "refresh_token"`: a delegated token kept fresh with a refresh token that comes
//! from the config (the seed), `bearerd login`, the admin API or the store. A refresh token
//! is used by one request at a time, and the seed is sent at most once, ever.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use std::time::Duration;

use super::{GrantBuildError, GrantError, GrantErrorKind, GrantKind, IssuedToken, Kind};
use crate::config::lowering::*;
use crate::config::TokenRequestConfig;
use crate::config::{ConfigError, GrantConfig, GrantSettings, LowerGrant, LoweredGrant};
use crate::config::{JwtSubjectConfig, SecretRef, SourceMap, SubjectConfig, SubjectKind};
use crate::config::{RegistrationConfig, StepUpRule};
use crate::oauth::carrier::Carrier;
use crate::oauth::{GrantInput, TokenEndpoint};
use crate::store::fingerprint;

pub struct RefreshTokenKind;

impl Kind for RefreshTokenKind {
    const NAME: &'static str = "refresh_token";
    type Table = RawRefreshTokenCredential;
    type Settings = RefreshTokenConfig;

    fn build(settings: &Self::Settings) -> Result<Box<dyn GrantKind>, GrantBuildError> {
        let endpoint = Arc::new(TokenEndpoint::new(&settings.request)?);
        Ok(Box::new(RefreshTokenGrant::new(
            endpoint,
            settings.seed.clone(),
        )))
    }
}

credential_table! {
    /// `grant = "refresh_token"`: a delegated token, kept fresh with a refresh token that
    /// comes from the config, `bearerd login` or the admin API.
    pub struct RawRefreshTokenCredential [token_request_keys, schedule_keys, wait_keys] {
        /// The seed refresh token.
        refresh_token: Option<crate::material::RawSecretRef>,
        /// Authorization endpoint for `bearerd login` (code + PKCE).
        authorization_url: Option<String>,
        /// Device authorization endpoint for `bearerd login --device` (RFC 8628).
        device_authorization_url: Option<String>,
        /// Loopback port for the login redirect (default: any free port, RFC 8252).
        redirect_port: Option<u16>,
        /// `"auto"`: no client_id; the sidecar registers a client (`oauth::registration`).
        registration: Option<String>,
        /// With `registration = "auto"`: the https URL of the client ID metadata document
        /// the operator hosts (`bearerd client-metadata`), used as the client_id where the
        /// authorization server accepts such documents.
        client_metadata_url: Option<String>,
        /// Send `scope` with refresh_token requests too (some providers, e.g. Microsoft's,
        /// require it); by default the refresh keeps the scope originally granted.
        scope_on_refresh: Option<bool>,
        /// Per-subject: the request header that names the end user; one token set each.
        subject_header: Option<String>,
        /// Per-subject, instead of `subject_header`: the subject from a verified JWT.
        subject_from: Option<RawSubjectFrom>,
        /// Per-subject: the redirect URI of connect flows (the app relays it to bearerd).
        redirect_uri: Option<String>,
        /// Per-subject: subjects unused this long leave memory (default 15m).
        subject_idle: Option<String>,
        /// Per-subject: the most subjects kept in memory at once.
        max_subjects_in_memory: Option<usize>,
        /// Per-subject: how long a connect flow's state is accepted (default 10m).
        connect_lifetime: Option<String>,
    }
}

/// A `refresh_token` credential: the token request, the login endpoints, the seed, and the
/// subjects when it keeps one refresh token per user.
impl LowerGrant for RawRefreshTokenCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let t = self;
        // The schedule first, as for every grant: its errors are reported before the others.
        let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
        let key = |k: &str| format!("credentials.{name}.{k}");
        let registration = lower_registration(map, name, t)?;
        let mut request = lower_token_request(
            map,
            name,
            &t.grant,
            &t.token_request(),
            match registration {
                Some(_) => ClientIdRule::Optional,
                None => ClientIdRule::Required,
            },
            false,
        )?;
        request.registration = registration;
        if t.step_up_scopes.is_some() {
            return Err(map.error_at(
                &key("step_up_scopes"),
                "a person consents to more scopes at the next login, which asks for whatever the upstream asked: step_up_scopes is for machine grants",
            ));
        }
        request.step_up = StepUpRule::User;
        let optional_url = |field: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| private_url(map, &key(field), v, t.insecure_http))
                .transpose()
        };
        // The device endpoint takes the client's credentials; the authorization endpoint,
        // the user's.
        request.authorization_url = optional_url("authorization_url", &t.authorization_url)?;
        request.device_authorization_url =
            optional_url("device_authorization_url", &t.device_authorization_url)?;
        request.redirect_port = t.redirect_port;
        request.scope_on_refresh = t.scope_on_refresh.unwrap_or(false);
        // Without a seed the credential waits for `bearerd login`.
        let seed = t
            .refresh_token
            .as_ref()
            .map(|r| map.lower_secret(&key("refresh_token"), r))
            .transpose()?;
        let subjects = lower_subjects(map, name, t)?;
        if subjects.is_some() && seed.is_some() {
            return Err(map.error_at(
                &key("refresh_token"),
                "a per-subject credential (subject_header) gets a refresh token per subject (connect flow, login, or the admin API), not one configured seed",
            ));
        }
        Ok(LoweredGrant {
            grant: GrantConfig::new(RefreshTokenConfig { request, seed }),
            policy,
            subjects,
        })
    }
}

/// `registration = "auto"` and `client_metadata_url`: a client the sidecar registers,
/// which the config then may not name or authenticate.
fn lower_registration(
    map: &SourceMap,
    name: &str,
    t: &RawRefreshTokenCredential,
) -> Result<Option<RegistrationConfig>, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let Some(mode) = &t.registration else {
        if t.client_metadata_url.is_some() {
            return Err(map.error_at(
                &key("client_metadata_url"),
                "client_metadata_url is the client_id of a registered client: it needs registration = \"auto\"",
            ));
        }
        return Ok(None);
    };
    if mode != "auto" {
        return Err(map.error_at(
            &key("registration"),
            format!(
                "registration must be \"auto\" (got {mode:?}); without it, configure client_id"
            ),
        ));
    }
    let rc = t.token_request();
    let configured_client = [
        ("client_id", rc.client_id.is_some()),
        ("client_auth", rc.client_auth.is_some()),
        ("client_secret", rc.client_secret.is_some()),
        ("private_key", rc.private_key.is_some()),
        ("client_assertion", rc.client_assertion.is_some()),
        ("client_cert", rc.client_cert.is_some()),
    ];
    if let Some((k, _)) = configured_client.iter().find(|(_, given)| *given) {
        return Err(map.error_at(
            &key(k),
            format!("registration = \"auto\" registers the client, and its registration says how it authenticates: remove {k} (or registration, to use a client registered by hand)"),
        ));
    }
    if t.refresh_token.is_some() {
        return Err(map.error_at(
            &key("refresh_token"),
            "a configured refresh token belongs to a client registered by hand: with registration = \"auto\", `bearerd login` gets one",
        ));
    }
    // A per-subject credential's users connect through the app's redirect_uri: the client
    // is a web one, registered with it.
    let per_subject = t.subject_header.is_some() || t.subject_from.is_some();
    let web_redirect = match (&t.redirect_uri, per_subject) {
        (Some(uri), true) => Some(private_url(map, &key("redirect_uri"), uri, t.insecure_http)?),
        (None, true) => {
            return Err(map.error_at(
                &key("registration"),
                "a per-subject credential registers a web client with its connect flows' redirect_uri: set redirect_uri",
            ))
        }
        _ => None,
    };
    let client_metadata_url = t
        .client_metadata_url
        .as_deref()
        .map(|u| client_metadata_url(map, &key("client_metadata_url"), u))
        .transpose()?;
    Ok(Some(RegistrationConfig {
        client_metadata_url,
        client_name: format!("bearerd ({name})"),
        web_redirect,
    }))
}

/// A client ID metadata document's URL: https with a path (it is the client_id).
fn client_metadata_url(map: &SourceMap, key: &str, value: &str) -> Result<url::Url, ConfigError> {
    let url = url::Url::parse(value)
        .map_err(|e| map.error_at(key, format!("{value:?} is not a URL: {e}")))?;
    if url.scheme() != "https" || url.path() == "/" || url.fragment().is_some() {
        return Err(map.error_at(
            key,
            format!("{value:?}: a client ID metadata document's URL is https, with a path and no fragment (e.g. \"https://app.example.com/bearerd-client.json\")"),
        ));
    }
    Ok(url)
}

/// `subject_header` and its companions (which mean nothing without it).
fn lower_subjects(
    map: &SourceMap,
    name: &str,
    t: &RawRefreshTokenCredential,
) -> Result<Option<SubjectConfig>, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    if let (Some(_), Some(_)) = (&t.subject_header, &t.subject_from) {
        return Err(map.error_at(
            &key("subject_from"),
            "subject_header and subject_from both name the subject: keep one",
        ));
    }
    let from_jwt = t
        .subject_from
        .as_ref()
        .map(|f| lower_subject_jwt(map, name, &f.jwt, t.insecure_http.unwrap_or(false)))
        .transpose()?
        .map(|(header, mut jwt)| {
            jwt.ca_file = t.ca_file.clone();
            (header, jwt)
        });
    let header = match (&t.subject_header, &from_jwt) {
        (Some(header), _) => Some(subject_header_name(map, &key("subject_header"), header)?),
        (None, Some((header, _))) => Some(header.clone()),
        (None, None) => None,
    };
    let Some(parsed) = header else {
        for (field, set) in [
            ("redirect_uri", t.redirect_uri.is_some()),
            ("subject_idle", t.subject_idle.is_some()),
            ("max_subjects_in_memory", t.max_subjects_in_memory.is_some()),
            ("connect_lifetime", t.connect_lifetime.is_some()),
        ] {
            if set {
                return Err(map.error_at(
                    &key(field),
                    format!("{field} belongs to per-subject credentials: set subject_header too"),
                ));
            }
        }
        return Ok(None);
    };
    let redirect_uri = t
        .redirect_uri
        .as_deref()
        .map(|v| private_url(map, &key("redirect_uri"), v, t.insecure_http))
        .transpose()?;
    let (idle, max_in_memory) =
        subjects_in_memory(map, name, &t.subject_idle, t.max_subjects_in_memory)?;
    let connect_lifetime = bounded_duration(
        map,
        &key("connect_lifetime"),
        &t.connect_lifetime,
        SubjectConfig::DEFAULT_CONNECT_LIFETIME,
        Duration::from_secs(1),
    )?;
    if connect_lifetime > Duration::from_secs(3600) {
        return Err(map.error_at(
            &key("connect_lifetime"),
            "connect_lifetime may be at most 1h: a state is a key to the subject's account",
        ));
    }
    Ok(Some(SubjectConfig {
        header: parsed,
        kind: SubjectKind::Delegated { redirect_uri },
        idle,
        max_in_memory,
        connect_lifetime,
        from_jwt: from_jwt.map(|(_, jwt)| jwt),
    }))
}

/// `subject_from = { jwt = … }`: the header that carries the user's JWT (`authorization`
/// by default, which bearerd replaces before forwarding) and what the JWT must say.
fn lower_subject_jwt(
    map: &SourceMap,
    name: &str,
    raw: &RawSubjectJwt,
    insecure_http: bool,
) -> Result<(http::HeaderName, JwtSubjectConfig), ConfigError> {
    let key = |k: &str| format!("credentials.{name}.subject_from.jwt.{k}");
    let header = match raw.header.as_deref().map(str::trim) {
        None => http::header::AUTHORIZATION,
        Some(h) if h.eq_ignore_ascii_case("authorization") => http::header::AUTHORIZATION,
        Some(h) => subject_header_name(map, &key("header"), h)?,
    };
    let insecure = Some(insecure_http);
    // The issuer is compared with `iss` as written, and its metadata is fetched from it.
    private_url(map, &key("issuer"), &raw.issuer, insecure)?;
    let jwks_url = raw
        .jwks_url
        .as_deref()
        .map(|v| private_url(map, &key("jwks_url"), v, insecure))
        .transpose()?;
    let audience = raw.audience.trim();
    if audience.is_empty() {
        return Err(map.error_at(&key("audience"), "audience may not be empty"));
    }
    let claim = raw.claim.as_deref().unwrap_or("sub").trim();
    if claim.is_empty() {
        return Err(map.error_at(&key("claim"), "claim may not be empty"));
    }
    Ok((
        header,
        JwtSubjectConfig {
            issuer: raw.issuer.clone(),
            audience: audience.to_string(),
            claim: claim.to_string(),
            jwks_url,
            insecure_http,
            ca_file: None,
        },
    ))
}

/// A `refresh_token` credential's settings.
#[derive(Debug, Clone)]
pub struct RefreshTokenConfig {
    pub request: TokenRequestConfig,
    /// The configured refresh token; none when it comes from `bearerd login`.
    pub seed: Option<SecretRef>,
}

impl GrantSettings for RefreshTokenConfig {
    super::settings_of!(RefreshTokenKind, request);
}

pub struct RefreshTokenGrant {
    /// Shared by the subjects of a per-subject credential (one client, one discovery).
    endpoint: Arc<TokenEndpoint>,
    seed: Option<SecretRef>,
    /// The refresh token to use next: rotated ones, or one restored from the store.
    current: Mutex<Option<SecretString>>,
    /// A fingerprint of the seed once it has been sent (kept in the store too), so the
    /// same seed is never sent twice, not even after a restart.
    spent_seed: Mutex<Option<String>>,
    /// Exchanges run through the rotation helper, so a rotated token survives a kill.
    durable: Option<Box<dyn Carrier>>,
    /// Why a stored refresh token was not taken (it belongs to another issuer): said when
    /// a login is asked for.
    refused_stored: std::sync::Mutex<Option<String>>,
}

impl RefreshTokenGrant {
    pub fn new(endpoint: Arc<TokenEndpoint>, seed: Option<SecretRef>) -> Self {
        RefreshTokenGrant {
            endpoint,
            seed,
            current: Mutex::new(None),
            spent_seed: Mutex::new(None),
            durable: None,
            refused_stored: std::sync::Mutex::new(None),
        }
    }

    pub fn make_durable(&mut self, carrier: Box<dyn Carrier>) {
        self.durable = Some(carrier);
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    pub fn shared_endpoint(&self) -> Arc<TokenEndpoint> {
        Arc::clone(&self.endpoint)
    }

    pub async fn refresh_token(&self) -> Option<SecretString> {
        let current = self.current.lock().await.clone();
        match current {
            Some(rt) => Some(rt),
            // The seed counts only until it has been sent.
            None => self.seed.as_ref()?.resolve().ok().filter(|s| {
                !self
                    .spent_seed
                    .try_lock()
                    .is_ok_and(|spent| spent.as_deref() == Some(fingerprint(s).as_str()))
            }),
        }
    }

    pub async fn forget(&self) {
        *self.current.lock().await = None;
        if let Some(s) = self.seed.as_ref().and_then(|s| s.resolve().ok()) {
            *self.spent_seed.lock().await = Some(fingerprint(&s));
        }
    }

    pub async fn spent_seed(&self) -> Option<String> {
        self.spent_seed.lock().await.clone()
    }

    pub async fn restore_spent_seed(&self, fp: String) {
        *self.spent_seed.lock().await = Some(fp);
    }

    pub async fn take_stored(&self, rt: Option<SecretString>) {
        *self.current.lock().await = rt;
    }

    /// Leaves a stored refresh token unused, and says why when a login is asked for.
    pub async fn refuse_stored(&self, why: String) {
        *self.current.lock().await = None;
        *self
            .refused_stored
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(why);
    }

    pub async fn obtain(&self) -> Result<IssuedToken, GrantError> {
        // Held across the request: one use of a refresh token at a time, ever.
        let mut current = self.current.lock().await;
        let mut rt = match current.as_ref() {
            Some(rt) => rt.clone(),
            None => {
                // Why the store's refresh token was left unused, said with the error.
                let why = self
                    .refused_stored
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .map(|why| format!("{why}; "))
                    .unwrap_or_default();
                let Some(seed) = &self.seed else {
                    return Err(GrantError::permanent(
                        GrantErrorKind::LoginRequired,
                        format!("{why}no refresh token yet: log in (`bearerd login`, or the connect flow for a subject)"),
                    ));
                };
                let fresh = seed
                    .resolve()
                    .map_err(|m| GrantError::unavailable(GrantInput::RefreshToken, m))?;
                let mut spent = self.spent_seed.lock().await;
                let fp = fingerprint(&fresh);
                if spent.as_deref() == Some(fp.as_str()) {
                    // Sending a refresh token twice makes providers revoke the grant.
                    return Err(GrantError::permanent(
                        GrantErrorKind::RefreshTokenSpent,
                        format!("{why}the configured refresh token was already used; provide a new one (log in again)"),
                    ));
                }
                *spent = Some(fp);
                // From now on the seed is the current refresh token: a transient
                // failure retries with it, and only the provider can declare it dead.
                *current = Some(fresh.clone());
                fresh
            }
        };
        // A holder that died may have rotated this token (on a shared store): its helper's
        // journal has the successor, which is what must be sent now.
        if let Some(durable) = &self.durable {
            match durable.successor_before_send(&rt).await {
                Ok(Some(successor)) => {
                    *current = Some(successor.clone());
                    rt = successor;
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(GrantError::transient(
                        GrantErrorKind::StoreUnavailable,
                        format!("cannot tell whether a rotation of the refresh token is under way, so it is not sent: {e}"),
                    ))
                }
            }
        }
        let mut form = vec![
            ("grant_type", "refresh_token".to_string()),
            ("refresh_token", rt.expose_secret().to_string()),
        ];
        // RFC 6749 §6: without `scope` the refresh keeps the scope originally granted;
        // asking again for one the grant lacks (say, a dropped offline_access) fails.
        if self.endpoint.config().scope_on_refresh {
            self.endpoint.add_scope(&mut form).await;
        }
        let via = self.durable.as_deref().map(|d| (d, fingerprint(&rt)));
        match self.endpoint.exchange_via(form, via).await {
            Ok(mut token) => {
                // Keep the old one when the provider does not rotate.
                let next = token.refresh_token.take().unwrap_or(rt);
                *current = Some(next.clone());
                token.refresh_token = Some(next);
                Ok(token)
            }
            Err(e) => {
                if let Some(rotated) = &e.rotated_refresh_token {
                    *current = Some(rotated.clone());
                } else if e.drops_refresh_token() {
                    // The provider dropped the grant: forget the refresh token so it is
                    // never sent again; a new seed or login is needed.
                    *current = None;
                }
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl GrantKind for RefreshTokenGrant {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        RefreshTokenGrant::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }

    fn subject_endpoint(&self) -> Option<Arc<TokenEndpoint>> {
        Some(self.shared_endpoint())
    }

    fn refresh_grant(&self) -> Option<&RefreshTokenGrant> {
        Some(self)
    }

    fn make_rotation_durable(&mut self, carrier: Box<dyn Carrier>) {
        self.make_durable(carrier);
    }
}
