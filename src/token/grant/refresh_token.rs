//! `grant = "refresh_token"`: a delegated token kept fresh with a refresh token that comes
//! from the config (the seed), `bearerd login`, the admin API or the store. A refresh token
//! is used by one request at a time, and the seed is sent at most once, ever.

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use super::{GrantError, GrantErrorKind, IssuedToken};
use crate::config::SecretRef;
use crate::oauth::carrier::Carrier;
use crate::oauth::{GrantInput, TokenEndpoint};
use crate::store::fingerprint;
use crate::token::rotation::DurableRotation;

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
    durable: Option<Box<DurableRotation>>,
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

    pub fn make_durable(&mut self, rotation: DurableRotation) {
        self.durable = Some(Box::new(rotation));
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
            match durable.before_send(&rt).await {
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
            self.endpoint.add_scope(&mut form);
        }
        let via = self
            .durable
            .as_deref()
            .map(|d| (d as &dyn Carrier, fingerprint(&rt)));
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
impl super::GrantKind for RefreshTokenGrant {
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

    fn make_rotation_durable(&mut self, rotation: DurableRotation) {
        self.make_durable(rotation);
    }
}
