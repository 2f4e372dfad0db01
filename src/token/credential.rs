//! A credential as the control path sees it: its slot, its grant and the store, and the
//! operations that change it as a whole (refresh, logout, login). One lock serialises them,
//! so a logout can never be undone by a refresh that was in flight.

use std::sync::Arc;

use secrecy::SecretString;

use super::CredentialSlot;
use crate::grant::Grant;
use crate::store::{DpopRecord, SaveOutcome, StoreError, StoredSet, StoredToken, TokenStore};

pub struct Credential {
    pub slot: Arc<CredentialSlot>,
    /// The record's key in the store: the credential's name, or for a subject of a
    /// per-subject credential its [`super::subject::SubjectKey::store_key`].
    pub(super) store_key: Arc<str>,
    pub(super) grant: Grant,
    pub(super) store: Arc<dyn TokenStore>,
    /// Held for a whole refresh (obtain, persist, publish), logout or login.
    pub(super) op: tokio::sync::Mutex<()>,
    /// The store generation of the set this process last loaded, adopted or saved: a set
    /// in the store with a higher one was written by someone else.
    stored: std::sync::Mutex<Option<u64>>,
    /// The set held here is newer than `stored`: its save failed (the store was down), so
    /// it goes back with the generation after `stored` when the store answers again.
    unsaved: std::sync::atomic::AtomicBool,
    /// A subject's generation when it last left memory (0: none). Until this process holds
    /// a set of its own, a stored set older than that is refused wherever it is read: it
    /// was put back by someone with write access to the store (issue 20, hole 6).
    floor: std::sync::atomic::AtomicU64,
}

/// Why a login's refresh token was not taken.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("credential {0} does not use the refresh_token grant")]
    NotRefreshToken(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a logout did, for the admin API and the CLI.
pub use crate::api::LogoutReport;

impl Credential {
    pub fn new(slot: Arc<CredentialSlot>, grant: Grant, store: Arc<dyn TokenStore>) -> Arc<Self> {
        let store_key = Arc::clone(&slot.name);
        Self::with_store_key(slot, grant, store, store_key)
    }

    /// A credential whose record lives under `store_key` (a subject's).
    pub fn with_store_key(
        slot: Arc<CredentialSlot>,
        grant: Grant,
        store: Arc<dyn TokenStore>,
        store_key: Arc<str>,
    ) -> Arc<Self> {
        Arc::new(Credential {
            store_key,
            slot,
            grant,
            store,
            op: tokio::sync::Mutex::new(()),
            stored: std::sync::Mutex::new(None),
            unsaved: std::sync::atomic::AtomicBool::new(false),
            floor: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Refuses stored sets older than `generation` (see `floor`).
    pub(super) fn refuse_older_than(&self, generation: u64) {
        self.floor
            .store(generation, std::sync::atomic::Ordering::SeqCst);
    }

    /// The generation a stored set must reach to be believed: the floor, or the set held.
    pub(super) fn generation_seen(&self) -> u64 {
        let floor = self.floor.load(std::sync::atomic::Ordering::SeqCst);
        floor.max(self.stored_generation().unwrap_or(0))
    }

    /// One subject of a per-subject credential (its record is not the credential's own).
    pub fn is_subject(&self) -> bool {
        *self.store_key != *self.slot.name
    }

    /// The generation of the set this process holds, as the store numbered it.
    pub(super) fn stored_generation(&self) -> Option<u64> {
        *self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that this process now holds the store's set of this generation.
    pub(super) fn hold_generation(&self, generation: u64) {
        // From the first set held here on, the held generation guards what is adopted.
        self.floor.store(0, std::sync::atomic::Ordering::SeqCst);
        self.set_held(Some(generation));
        self.unsaved
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// The generation the set held here deserves in the store: the one it was saved as, or
    /// the next when its save failed. `None` when this process holds no set of the store's.
    pub(super) fn generation_to_write_back(&self) -> Option<u64> {
        let unsaved = self.unsaved.load(std::sync::atomic::Ordering::SeqCst);
        match self.stored_generation() {
            Some(g) => Some(g + u64::from(unsaved)),
            None => unsaved.then_some(1),
        }
    }

    /// Notes which generation the store has (`None`: no record), after a conflict.
    pub(super) fn set_held(&self, generation: Option<u64>) {
        *self.stored.lock().unwrap_or_else(|p| p.into_inner()) = generation;
    }

    /// The credential's set in the store; a store that cannot be read counts as empty
    /// (and is logged): the credential then works from what it has.
    pub(super) async fn load_set(&self) -> Option<StoredSet> {
        match self.store.load(&self.store_key).await {
            Ok(Some(set))
                if set.generation < self.floor.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                tracing::error!(
                    credential = &*self.slot.name,
                    found = set.generation,
                    seen = self.floor.load(std::sync::atomic::Ordering::SeqCst),
                    "a stored set is older than one this process held (put back by someone with write access to the store?): refused"
                );
                None
            }
            Ok(set) => set,
            Err(e) => {
                tracing::warn!(credential = &*self.slot.name, error = %e, "could not read the store");
                None
            }
        }
    }

    /// Saves `token` as the set after the one this process holds (compare-and-set): a set
    /// that someone else wrote in between is never overwritten, the conflict is returned.
    pub(super) async fn save_set(&self, token: &StoredToken) -> Result<SaveOutcome, StoreError> {
        let outcome = self
            .store
            .save(&self.store_key, token, self.stored_generation())
            .await;
        match &outcome {
            Ok(SaveOutcome::Saved { generation }) => self.hold_generation(*generation),
            Ok(SaveOutcome::Conflict { .. }) => {}
            Err(_) => self
                .unsaved
                .store(true, std::sync::atomic::Ordering::SeqCst),
        }
        outcome
    }

    /// Saves an operator's decision (a logout's tombstone, a login's refresh token): it
    /// replaces whatever set is there, still by compare-and-set so no write is torn.
    pub(super) async fn save_over(&self, token: &StoredToken) -> Result<(), StoreError> {
        for _ in 0..8 {
            match self.save_set(token).await? {
                SaveOutcome::Saved { .. } => return Ok(()),
                SaveOutcome::Conflict { current } => self.set_held(current.map(|c| c.generation)),
            }
        }
        Err(StoreError::Invalid(
            "the store record kept changing under the write".into(),
        ))
    }

    /// Revokes the refresh and access tokens at the provider (RFC 7009, best effort), then
    /// forgets them locally whatever the provider said. Requests then get 503 with
    /// `requires_reauth` until a login or a manual refresh.
    pub async fn logout(&self) -> LogoutReport {
        // Stop automatic refreshes first, then wait for any refresh in flight to finish.
        self.slot.stop_refreshing();
        let _op = self.op.lock().await;
        let mut revocation = Vec::new();
        if let Some(endpoint) = self.grant.endpoint() {
            let rt = self.grant.refresh_token().await;
            // The live token first: the stored one may be older (or empty after a login).
            let at = match self.slot.access_token() {
                Some(t) => Some(t),
                None => self.load_set().await.map(|s| s.token.access_token),
            };
            for (kind, token) in [("refresh_token", rt), ("access_token", at)] {
                if let Some(token) = token {
                    let outcome = match endpoint.revoke(&token, kind).await {
                        Ok(()) => "revoked".to_string(),
                        Err(e) => e.to_string(),
                    };
                    revocation.push(crate::api::Revocation {
                        token: kind.to_string(),
                        outcome,
                    });
                }
            }
        }
        self.grant.forget().await;
        // A tombstone, not a deletion: the logout (and the spent seed) must survive a restart.
        let tombstone = StoredToken {
            logged_out: true,
            spent_seed: self.grant.spent_seed().await,
            logout: Some(crate::store::LogoutRecord {
                at: super::slot::rfc3339_now(),
                revocation: revocation
                    .iter()
                    .map(|r| format!("{}: {}", r.token, r.outcome))
                    .collect(),
            }),
            bound_to: Some(self.slot.binding.clone()),
            registration: self.grant.registration_record(),
            dpop: dpop_record(&self.grant, None),
            ..StoredToken::empty()
        };
        let forgotten = self.save_over(&tombstone).await.is_ok();
        self.slot.mark_logged_out();
        tracing::warn!(
            credential = &*self.slot.name,
            revocation = ?revocation.iter().map(|r| format!("{}: {}", r.token, r.outcome)).collect::<Vec<_>>(),
            forgotten,
            "credential logged out"
        );
        LogoutReport {
            credential: self.slot.name.to_string(),
            revocation,
            forgotten,
            subject: None,
        }
    }

    /// Takes a refresh token obtained by a login, persists it, and refreshes with it.
    pub async fn login(&self, refresh_token: SecretString) -> Result<(), HandOverError> {
        let _op = self.op.lock().await;
        self.take_login(refresh_token).await
    }

    /// Takes a login's refresh token (the caller holds `op`): persists it and lets
    /// refreshes run again.
    pub(super) async fn take_login(
        &self,
        refresh_token: SecretString,
    ) -> Result<(), HandOverError> {
        if !self.grant.forgets_refresh_token_on_failure() {
            return Err(HandOverError::NotRefreshToken(self.slot.name.to_string()));
        }
        self.grant
            .restore_refresh_token(refresh_token.clone())
            .await;
        let record = StoredToken {
            refresh_token: Some(refresh_token),
            spent_seed: self.grant.spent_seed().await,
            bound_to: Some(self.slot.binding.clone()),
            registration: self.grant.registration_record(),
            dpop: dpop_record(&self.grant, None),
            ..StoredToken::empty()
        };
        self.save_over(&record).await?;
        self.slot.accept_login();
        tracing::info!(
            credential = &*self.slot.name,
            "refresh token received from a login"
        );
        Ok(())
    }
}

/// Why no registered client could be given to a login.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("credential {0} has no `registration = \"auto\"`: its client is the configured one")]
    NotRegistering(String),
    /// The authorization server's metadata could not be found.
    #[error("{}", .0.message)]
    Discovery(crate::oauth::GrantError),
    #[error("the authorization server's metadata names no issuer and no token endpoint")]
    NoIssuer,
    #[error(transparent)]
    Registration(#[from] crate::oauth::registration::RegistrationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            RegisterError::Registration(e) => e.is_transient(),
            RegisterError::Discovery(e) => !e.permanent,
            RegisterError::Store(_) => true,
            RegisterError::NotRegistering(_) | RegisterError::NoIssuer => false,
        }
    }
}

impl Credential {
    /// Redeems a login's authorization code at the token endpoint, with the client the
    /// sidecar holds (a registered client's secret never leaves it).
    pub async fn redeem_code(
        &self,
        code: crate::oauth::login::CodeGrant,
    ) -> Result<crate::oauth::IssuedToken, crate::oauth::GrantError> {
        let endpoint = self.grant.endpoint().ok_or_else(|| {
            crate::oauth::GrantError::permanent(
                crate::oauth::GrantErrorKind::LoginRequired,
                format!("credential {} has no token endpoint", self.slot.name),
            )
        })?;
        if !self.grant.forgets_refresh_token_on_failure() {
            // Checked before the code is spent: only a login grant takes its tokens.
            return Err(crate::oauth::GrantError::permanent(
                crate::oauth::GrantErrorKind::LoginRequired,
                format!(
                    "credential {} does not use the refresh_token grant",
                    self.slot.name
                ),
            ));
        }
        endpoint.exchange(code.form()).await
    }

    /// The authorization URL (code + PKCE) of a login whose browser returns to
    /// `redirect_uri` (the console's callback), registering the client first when the
    /// credential registers its own. Only a login grant (`refresh_token`) takes one.
    pub async fn authorization_request(
        &self,
        redirect_uri: &str,
    ) -> Result<crate::oauth::login::AuthorizationRequest, crate::oauth::login::LoginError> {
        use crate::oauth::login::LoginError;
        let Some(endpoint) = self.grant.endpoint() else {
            return Err(LoginError::NoEndpoint(
                "the credential has no token endpoint",
            ));
        };
        if !self.grant.forgets_refresh_token_on_failure() {
            return Err(LoginError::NoEndpoint(
                "only a refresh_token credential logs in",
            ));
        }
        if endpoint.config().registration.is_some() {
            self.register_client()
                .await
                .map_err(|e| LoginError::Refused(e.to_string()))?;
        }
        let (endpoints, authorize) = crate::oauth::login::authorization_endpoint(endpoint).await?;
        crate::oauth::login::authorization_request(endpoint, authorize, &endpoints, redirect_uri)
    }

    /// Whether it registers its own client (`registration = "auto"`).
    pub fn registers_its_client(&self) -> bool {
        self.grant
            .endpoint()
            .is_some_and(|e| e.config().registration.is_some())
    }

    /// Checks a login's redirect came from the credential's authorization server
    /// (RFC 9207 `iss`): a code from another (a mix-up) is never redeemed.
    pub async fn check_response_issuer(
        &self,
        iss: Option<&str>,
    ) -> Result<(), crate::oauth::login::LoginError> {
        use crate::oauth::login::LoginError;
        let Some(endpoint) = self.grant.endpoint() else {
            return Err(LoginError::NoEndpoint(
                "the credential has no token endpoint",
            ));
        };
        let endpoints = endpoint.endpoints().await.map_err(LoginError::Endpoint)?;
        endpoints
            .check_response_issuer(iss)
            .map_err(|e| LoginError::Refused(e.to_string()))
    }

    /// The stored DPoP key, if any, is taken: token requests may be sent.
    pub fn settle_dpop_key(&self) {
        self.grant.settle_dpop_key();
    }

    /// Its tokens are bound to a DPoP key the sidecar holds (`dpop = true`).
    pub fn uses_dpop(&self) -> bool {
        self.grant.dpop_key().is_some()
    }

    /// Uses the client registered before and the DPoP key, as the store keeps them (a
    /// per-subject credential at startup: its own record holds no token, and no refresher
    /// reads it). Its subjects share one DPoP key, kept in this record: made by the first
    /// process to start, taken by the others.
    pub async fn take_stored_registration(&self) {
        let held = self.load_set().await;
        if let Some(set) = &held {
            self.hold_generation(set.generation);
            self.take_client_material(&set.token);
        }
        if !self.uses_dpop() || held.as_ref().is_some_and(|s| s.token.dpop.is_some()) {
            return;
        }
        let mut record = held.map_or_else(
            || StoredToken {
                bound_to: Some(self.slot.binding.clone()),
                ..StoredToken::empty()
            },
            |s| s.token,
        );
        record.dpop = dpop_record(&self.grant, None);
        match self.save_set(&record).await {
            Ok(SaveOutcome::Saved { .. }) => {}
            Ok(SaveOutcome::Conflict {
                current: Some(current),
            }) => self.take_client_material(&current.token),
            Ok(SaveOutcome::Conflict { current: None }) => {}
            Err(e) => tracing::warn!(
                credential = &*self.slot.name,
                error = %e,
                "could not keep the DPoP key in the store: subjects connected now need a new connect after a restart"
            ),
        }
    }

    /// What a stored record says about the credential's client and key, taken into the
    /// grant: the client the sidecar registered, and the DPoP key the record's tokens are
    /// bound to. A subject's record never changes the key its credential's subjects share
    /// (the credential's own record holds that one).
    pub(super) fn take_client_material(&self, stored: &StoredToken) {
        self.grant.take_registration(stored.registration.as_ref());
        if !self.is_subject() {
            self.grant
                .take_dpop_key(stored.dpop.as_ref().map(|d| &d.key));
        }
    }

    /// The client this credential logs in with, registered now if it has none that fits
    /// the authorization server it is used with (see `ClientRegistration::unfit_for`, or
    /// the server no longer knows it: `invalid_client`). A client of another issuer is
    /// replaced, and its grant dropped: that issuer's refresh token is never sent to the
    /// new one.
    pub async fn register_client(
        &self,
    ) -> Result<crate::oauth::registration::ClientRegistration, RegisterError> {
        use crate::oauth::registration::{self, RegistrationRequest};
        let not_registering = || RegisterError::NotRegistering(self.slot.name.to_string());
        let endpoint = self.grant.endpoint().ok_or_else(not_registering)?;
        let config = endpoint.config();
        let wanted = config.registration.as_ref().ok_or_else(not_registering)?;
        let _op = self.op.lock().await;
        // What the store holds first: another replica may have registered (and logged in).
        if let Some(set) = self.load_set().await {
            self.take_client_material(&set.token);
        }
        let endpoints = endpoint
            .endpoints()
            .await
            .map_err(RegisterError::Discovery)?;
        let issuer = registration::issuer_of(&endpoints).ok_or(RegisterError::NoIssuer)?;
        let (redirect_uris, application_type) =
            registration::redirect_uris(wanted, config.redirect_port);
        let held = endpoint.registration();
        // Only the credential's state now: an old invalid_client since recovered from says
        // nothing about the client held.
        let status = self.slot.status();
        let forgotten = status.state == crate::api::CredentialState::Failed
            && status
                .last_error
                .is_some_and(|e| e.kind == "invalid_client");
        let why_new = match &held {
            None => None,
            Some(_) if forgotten => Some("the authorization server answered invalid_client"),
            Some(r) => r.unfit_for(&issuer, wanted, &redirect_uris),
        };
        if let (Some(r), None) = (&held, why_new) {
            return Ok(r.clone());
        }
        let request = RegistrationRequest {
            config: wanted,
            endpoints: &endpoints,
            issuer: &issuer,
            scopes: &endpoint.login_scopes(&endpoints),
            redirect_uris,
            application_type,
            device: endpoints.device_authorization.is_some() && wanted.web_redirect.is_none(),
            timeout: config.timeout,
        };
        let http = endpoint.http().map_err(RegisterError::Discovery)?;
        let registered = registration::register(&http, &request).await?;
        endpoint.use_registration(registered.clone());
        // Whatever refresh token is held was issued to another client.
        self.grant.forget().await;
        let record = StoredToken {
            spent_seed: self.grant.spent_seed().await,
            bound_to: Some(self.slot.binding.clone()),
            registration: Some(registered.to_record()),
            dpop: dpop_record(&self.grant, None),
            ..StoredToken::empty()
        };
        self.save_over(&record).await?;
        if let (Some(old), Some(why)) = (held, why_new) {
            // The old client's tokens are not served any more: a login with the new one.
            self.slot.mark_logged_out();
            tracing::warn!(
                credential = &*self.slot.name,
                was = old.issuer,
                now = issuer,
                why,
                "registered a new client, and dropped the old one's grant"
            );
        }
        Ok(registered)
    }
}

/// The DPoP key a record carries: the key `bound` tokens are bound to, else the
/// credential's own (so a restart or another replica signs with the same key).
pub(super) fn dpop_record(
    grant: &Grant,
    bound: Option<&crate::material::dpop::DpopKey>,
) -> Option<DpopRecord> {
    match bound {
        Some(key) => Some(DpopRecord {
            key: key.to_record(),
            bound: true,
        }),
        None => Some(DpopRecord {
            key: grant.dpop_key_record()?,
            bound: false,
        }),
    }
}
