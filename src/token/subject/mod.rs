//! Per-subject credentials: one token set per end user of a multi-user app, named by the
//! app in the credential's `subject_header`.
//!
//! Each subject is a [`Credential`] of its own (slot, grant, refresher task, store record),
//! so single-flight, classification, backoff, the rate limit and persistence hold per
//! subject, and one subject's failure never touches another's token. The registry keeps
//! the subjects in use in a `DashMap`; those idle for `subject_idle`, or the least recently
//! used beyond `max_subjects_in_memory`, leave memory and come back from the store on their
//! next request.
//!
//! ```text
//! request ─▶ SubjectKey::parse(header) ─▶ registry.slot_for_request(subject)
//!              │ in memory: touch, its slot          │ not in memory: the store's record?
//!              │                                      ├ servable ─▶ admit (refresher task)
//!              ▼                                      └ none / logged out ─▶ 403 not connected
//!            slot.token_for_request()  (as for any credential)
//! ```

mod census;
mod eviction;
mod on_behalf_of;
mod starter;
mod user_jwt;
mod views;
use views::{live_status, stored_state};
pub mod connect;
mod key;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::watch;

pub use key::{InvalidSubject, SubjectKey, SubjectTagger};

use super::credential::Credential;
use super::rotation::RotationHelper;
use super::slot::{CredentialState, CredentialStatus};
use super::CredentialSlot;
use crate::config::{CredentialConfig, SubjectConfig, SubjectKind};
use crate::grant::Grant;
use crate::grant::TokenExchangeConfig;
use crate::metrics::Metrics;
use crate::oauth::TokenEndpoint;
use crate::store::StoredToken;
use crate::store::{StoreError, StoredSet, TokenStore};
use census::RestingCensus;
use on_behalf_of::NewSubjectRate;
pub use on_behalf_of::TooManyNewSubjects;
use starter::SubjectStarter;
pub use user_jwt::{UserJwtRejected, UserJwtVerifier};

/// Why a request's subject has no slot to take a token from.
#[derive(Debug)]
pub enum SubjectUnavailable {
    /// No token set, or one that only a new connect or login can revive.
    NotConnected,
    /// The store could not be read (its message).
    Store(String),
}

/// A subject held in memory.
pub struct LiveSubject {
    pub credential: Arc<Credential>,
    /// The credential's slot, one pointer nearer for the request path.
    slot: Arc<CredentialSlot>,
    /// Milliseconds since the registry's epoch.
    last_used_ms: AtomicU64,
    /// When it came into memory, in the same milliseconds.
    admitted_ms: u64,
    /// Stops the subject's refresher (after an attempt in flight has finished).
    stop: watch::Sender<bool>,
    /// On behalf of an opaque user token: when it must be exchanged again.
    serve_until_ms: Option<u64>,
}

pub struct SubjectRegistry {
    pub credential: Arc<str>,
    pub config: SubjectConfig,
    /// How a subject's credential is made and its refresher started.
    starter: SubjectStarter,
    /// The subjects in memory.
    live: DashMap<SubjectKey, Arc<LiveSubject>>,
    /// The subjects at rest in the store, per state.
    census: RestingCensus,
    pub tagger: SubjectTagger,
    /// The zero of `LiveSubject`'s milliseconds.
    epoch: Instant,
    /// Set at shutdown: subjects admitted afterwards start stopped.
    stopped: AtomicBool,
    /// On behalf of: the rate at which user tokens not seen before may be exchanged.
    new_subjects: Option<NewSubjectRate>,
    /// `subject_from = { jwt = … }`: verifies the user's JWT that names the subject.
    pub user_jwt: Option<Arc<UserJwtVerifier>>,
    /// The generation each subject's record had when it left memory, by a hash of the
    /// subject (issue 20, hole 6): a record brought back older than that was put back by
    /// someone with write access to the store (a logout undone, a spent refresh token
    /// revived) and is refused. In memory, the held generation does the same.
    left_at: DashMap<[u8; 16], u64>,
    /// The credential's own record: where a client it registers is kept (subjects are
    /// connected with that client).
    own: std::sync::OnceLock<Arc<crate::token::credential::Credential>>,
}

/// Counts of subjects per state, in [`CredentialState::ALL`] order.
pub type StateCounts = [usize; 6];

/// Why a credential's subjects cannot be kept.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("per-subject credentials need grant = \"refresh_token\" (subject_header) or \"token_exchange\" (subject_token = {{ header = … }})")]
    UnsupportedGrant,
    #[error("on-behalf-of needs grant = \"token_exchange\"")]
    OnBehalfOfNeedsTokenExchange,
    #[error("subject_from: {0}")]
    UserJwtClient(#[from] crate::oauth::transport::ClientError),
}

impl SubjectRegistry {
    /// The registry of a per-subject credential; `None` when `config` is not one.
    pub fn new(
        config: &CredentialConfig,
        grant: &Grant,
        store: Arc<dyn TokenStore>,
        metrics: Arc<Metrics>,
        rotation_helper: Option<Arc<RotationHelper>>,
        tagger: SubjectTagger,
    ) -> Result<Option<Arc<SubjectRegistry>>, RegistryError> {
        let Some(subjects) = &config.subjects else {
            return Ok(None);
        };
        let endpoint = grant
            .subject_endpoint()
            .ok_or(RegistryError::UnsupportedGrant)?;
        let exchange = config.grant.settings::<TokenExchangeConfig>();
        let exchange = match (&subjects.kind, exchange) {
            (SubjectKind::OnBehalfOf { .. }, Some(x)) => Some(x.clone()),
            (SubjectKind::OnBehalfOf { .. }, None) => {
                return Err(RegistryError::OnBehalfOfNeedsTokenExchange)
            }
            (SubjectKind::Delegated { .. }, _) => None,
        };
        let credential: Arc<str> = Arc::from(config.name.as_str());
        Ok(Some(Arc::new(SubjectRegistry {
            starter: SubjectStarter {
                credential: Arc::clone(&credential),
                credential_config: config.clone(),
                endpoint,
                exchange,
                store,
                metrics,
                rotation_helper,
                runtime: OnceLock::new(),
                events: OnceLock::new(),
            },
            credential,
            config: subjects.clone(),
            live: DashMap::new(),
            census: RestingCensus::default(),
            tagger,
            epoch: Instant::now(),
            stopped: AtomicBool::new(false),
            new_subjects: match subjects.kind {
                SubjectKind::OnBehalfOf { new_per_second, .. } => {
                    Some(NewSubjectRate::new(new_per_second))
                }
                SubjectKind::Delegated { .. } => None,
            },
            left_at: DashMap::new(),
            own: std::sync::OnceLock::new(),
            user_jwt: subjects
                .from_jwt
                .clone()
                .map(|jwt| UserJwtVerifier::new(subjects.header.clone(), jwt))
                .transpose()?,
        })))
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.starter.endpoint
    }

    /// Ties the registry to the credential's own record (set once, when it is built).
    pub(crate) fn set_own(&self, credential: Arc<crate::token::credential::Credential>) {
        let _ = self.own.set(credential);
    }

    /// The credential's own record, which registers its client (`registration = "auto"`).
    pub fn own(&self) -> Option<&Arc<crate::token::credential::Credential>> {
        self.own.get()
    }

    /// Runs subjects' refreshers on this runtime from now on.
    pub fn attach(&self, runtime: tokio::runtime::Handle) {
        let _ = self.starter.runtime.set(runtime);
    }

    /// Where its subjects' events go (set once, before any subject starts).
    pub fn attach_events(&self, bus: Arc<crate::events::EventBus>) {
        let _ = self.starter.events.set(bus);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// How many subjects are in memory.
    pub fn in_memory(&self) -> usize {
        self.live.len()
    }

    /// The slot of the subject a request names: from memory, or brought back from the
    /// store when its record can still give a token.
    pub async fn slot_for_request(
        &self,
        subject: &SubjectKey,
    ) -> Result<Arc<CredentialSlot>, SubjectUnavailable> {
        if let Some(live) = self.touch(subject.as_str()) {
            return Ok(Arc::clone(&live.credential.slot));
        }
        if self.starter.exchange.is_some() {
            // On behalf of: known only while in memory (by a request's token).
            return Err(SubjectUnavailable::NotConnected);
        }
        let set = self
            .starter
            .store
            .load(&subject.store_key(&self.credential))
            .await
            .map_err(|e| SubjectUnavailable::Store(e.to_string()))?;
        if let Some(set) = &set {
            if self.rolled_back(subject, set.generation) {
                // The subject must connect again, as after the logout a put-back undid.
                return Err(SubjectUnavailable::NotConnected);
            }
        }
        match set {
            Some(set) if can_serve(&set) => Ok(Arc::clone(&self.admit(subject).credential.slot)),
            _ => Err(SubjectUnavailable::NotConnected),
        }
    }

    /// The subject in memory, marked as used now.
    fn touch(&self, subject: &str) -> Option<Arc<LiveSubject>> {
        let live = self.live.get(subject)?;
        live.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        Some(Arc::clone(live.value()))
    }

    /// The request path's first step: the subject's key and slot when it is in memory (a
    /// lookup by the header's text, no allocation), marked as used.
    pub fn live_slot(&self, subject: &str) -> Option<(SubjectKey, Arc<CredentialSlot>)> {
        let live = self.live.get(subject)?;
        live.last_used_ms.store(self.now_ms(), Ordering::Relaxed);
        Some((live.key().clone(), Arc::clone(&live.slot)))
    }

    /// The subject in memory, if it is.
    pub fn get(&self, subject: &SubjectKey) -> Option<Arc<LiveSubject>> {
        self.live.get(subject).map(|l| Arc::clone(l.value()))
    }

    /// Brings a subject into memory (or finds it there) with its refresher running; the
    /// least recently used leave first when memory is full.
    pub fn admit(&self, subject: &SubjectKey) -> Arc<LiveSubject> {
        self.admit_with(subject, None)
    }

    fn admit_with(
        &self,
        subject: &SubjectKey,
        subject_token: Option<&secrecy::SecretString>,
    ) -> Arc<LiveSubject> {
        if let Some(live) = self.touch(subject.as_str()) {
            return live;
        }
        let live = {
            let entry = self
                .live
                .entry(subject.clone())
                .or_insert_with(|| self.start(subject, subject_token));
            Arc::clone(entry.value())
        };
        let over = self.live.len().saturating_sub(self.config.max_in_memory);
        if over > 0 {
            self.evict_least_recent(over, Some(subject));
        }
        live
    }

    /// A subject's credential with its refresher running, counted as in memory.
    fn start(
        &self,
        subject: &SubjectKey,
        subject_token: Option<&secrecy::SecretString>,
    ) -> Arc<LiveSubject> {
        self.census.wake(subject.as_str());
        let tag = self.tagger.tag(subject);
        let span = tracing::info_span!("subject", subject = %tag);
        let stopped = self.stopped.load(Ordering::SeqCst);
        // Handed to the credential, which refuses older sets wherever it reads them.
        let floor = self
            .left_at
            .remove(&eviction::rollback_id(subject))
            .map_or(0, |(_, g)| g);
        let (credential, stop) = self
            .starter
            .start(subject, subject_token, stopped, span, floor);
        if let Some(bus) = self.starter.events.get() {
            credential.slot.attach_events(crate::events::EventTap {
                bus: Arc::clone(bus),
                subject_tag: Some(Arc::from(tag)),
            });
        }
        Arc::new(LiveSubject {
            slot: Arc::clone(&credential.slot),
            credential,
            last_used_ms: AtomicU64::new(self.now_ms()),
            admitted_ms: self.now_ms(),
            stop,
            serve_until_ms: self.serve_until_ms(subject_token),
        })
    }

    /// Takes a refresh token the app already holds for `subject` and refreshes with it at
    /// once (the migration path from an app's own token table).
    pub async fn hand_over(
        &self,
        subject: &SubjectKey,
        refresh_token: secrecy::SecretString,
    ) -> Result<Arc<LiveSubject>, super::credential::HandOverError> {
        let live = self.admit(subject);
        super::refresher::hand_over(&live.credential, refresh_token).await?;
        Ok(live)
    }
}

/// Whether a stored record can still give a token: a usable access token, or a refresh
/// token; a logout or a dropped grant needs a new connect or login.
fn can_serve(set: &StoredSet) -> bool {
    let t = &set.token;
    if t.logged_out {
        return false;
    }
    let unexpired = t.expires_at.is_none_or(|e| e > SystemTime::now());
    t.refresh_token.is_some() || unexpired
}

/// One subject as the admin API shows it.
pub use crate::api::SubjectStatus;
