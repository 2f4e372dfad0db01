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
pub mod connect;
mod key;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::watch;
use tracing::Instrument;

pub use key::{InvalidSubject, SubjectKey, SubjectTagger};

use super::credential::Credential;
use super::grant::{Grant, TokenExchange};
use super::rotation::{DurableRotation, RotationHelper};
use super::slot::{CredentialState, CredentialStatus};
use super::CredentialSlot;
use crate::config::{
    CredentialConfig, GrantConfig, SubjectConfig, SubjectKind, TokenExchangeConfig,
};
use crate::metrics::Metrics;
use crate::oauth::TokenEndpoint;
use crate::store::StoredToken;
use crate::store::{MemoryStore, StoreError, StoredSet, TokenStore};
use census::RestingCensus;

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
}

pub struct SubjectRegistry {
    pub credential: Arc<str>,
    pub config: SubjectConfig,
    credential_config: CredentialConfig,
    /// The client and discovery every subject shares.
    endpoint: Arc<TokenEndpoint>,
    /// On behalf of: the exchange each subject's grant runs with its user's token.
    exchange: Option<TokenExchangeConfig>,
    store: Arc<dyn TokenStore>,
    metrics: Arc<Metrics>,
    rotation_helper: Option<Arc<RotationHelper>>,
    live: DashMap<SubjectKey, Arc<LiveSubject>>,
    /// The subjects at rest in the store, per state.
    census: RestingCensus,
    census_running: tokio::sync::Mutex<()>,
    pub tagger: SubjectTagger,
    /// The control runtime, where subjects' refreshers run (set when it starts).
    runtime: OnceLock<tokio::runtime::Handle>,
    epoch: Instant,
    stopped: AtomicBool,
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
        let exchange = match (&subjects.kind, &config.grant) {
            (SubjectKind::OnBehalfOf, GrantConfig::TokenExchange(x)) => Some(x.clone()),
            (SubjectKind::OnBehalfOf, _) => {
                return Err(RegistryError::OnBehalfOfNeedsTokenExchange)
            }
            (SubjectKind::Delegated { .. }, _) => None,
        };
        Ok(Some(Arc::new(SubjectRegistry {
            credential: Arc::from(config.name.as_str()),
            config: subjects.clone(),
            credential_config: config.clone(),
            endpoint,
            exchange,
            store,
            metrics,
            rotation_helper,
            live: DashMap::new(),
            census: RestingCensus::default(),
            census_running: tokio::sync::Mutex::new(()),
            tagger,
            runtime: OnceLock::new(),
            epoch: Instant::now(),
            stopped: AtomicBool::new(false),
        })))
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    /// Runs subjects' refreshers on this runtime from now on.
    pub fn attach(&self, runtime: tokio::runtime::Handle) {
        let _ = self.runtime.set(runtime);
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
        if self.exchange.is_some() {
            // On behalf of: known only while in memory (by a request's token).
            return Err(SubjectUnavailable::NotConnected);
        }
        let set = self
            .store
            .load(&subject.store_key(&self.credential))
            .await
            .map_err(|e| SubjectUnavailable::Store(e.to_string()))?;
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

    /// On behalf of: the slot of the user whose token a request carries; a token not seen
    /// before (or no longer in memory) is exchanged on the first request that needs it.
    pub fn slot_for_subject_token(
        &self,
        token: &secrecy::SecretString,
    ) -> (SubjectKey, Arc<CredentialSlot>) {
        let subject = SubjectKey::of_token(token);
        let mut live = self.admit_with(&subject, Some(token));
        if self.may_exchange_again(&live) {
            if let Some((subject, gone)) =
                self.live.remove_if(&subject, |_, l| Arc::ptr_eq(l, &live))
            {
                self.leave_memory(&subject, &gone);
            }
            live = self.admit_with(&subject, Some(token));
        }
        (subject, Arc::clone(&live.credential.slot))
    }

    /// With an actor token, a refused exchange may be the actor's fault (revoked, or renewed
    /// late), not the user's: a failed user is exchanged again on a request once
    /// `min_refresh_interval` has passed since the failed attempt began, rather than staying
    /// refused for as long as the app sends that user token. Without an actor the refusal
    /// is the user token's, and final for it.
    fn may_exchange_again(&self, live: &LiveSubject) -> bool {
        let with_actor = self.exchange.as_ref().is_some_and(|x| x.actor.is_some());
        with_actor
            && live.slot.state() == CredentialState::Failed
            && self.now_ms().saturating_sub(live.admitted_ms)
                >= self.credential_config.policy.min_interval.as_millis() as u64
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

    /// A subject's credential and its refresher task.
    fn start(
        &self,
        subject: &SubjectKey,
        subject_token: Option<&secrecy::SecretString>,
    ) -> Arc<LiveSubject> {
        let store_key = subject.store_key(&self.credential);
        let (mut grant, store) = match (&self.exchange, subject_token) {
            // An exchanged token is kept in memory only: it is worth nothing without the
            // user's token, which bearerd never stores.
            (Some(exchange), Some(token)) => (
                Grant::TokenExchange(TokenExchange::on_behalf_of(
                    Arc::clone(&self.endpoint),
                    exchange,
                    token.clone(),
                )),
                Arc::new(MemoryStore::new()) as Arc<dyn TokenStore>,
            ),
            _ => (
                Grant::for_subject(Arc::clone(&self.endpoint)),
                Arc::clone(&self.store),
            ),
        };
        if let (Some(journal), Some(helper)) =
            (store.helper_journal(&store_key), &self.rotation_helper)
        {
            grant.make_rotation_durable(DurableRotation {
                helper: Arc::clone(helper),
                journal,
                credential: store_key.clone(),
            });
        }
        self.census.wake(subject.as_str());
        let slot = CredentialSlot::new(&self.credential_config, Arc::clone(&self.metrics));
        let credential = Credential::with_store_key(slot, grant, store, Arc::from(store_key));
        let (stop, stopped) = watch::channel(self.stopped.load(Ordering::SeqCst));
        let span = tracing::info_span!("subject", subject = %self.tagger.tag(subject));
        let task = super::refresher::run(Arc::clone(&credential), stopped).instrument(span);
        match self
            .runtime
            .get()
            .cloned()
            .or_else(|| tokio::runtime::Handle::try_current().ok())
        {
            Some(rt) => {
                rt.spawn(task);
            }
            None => tracing::error!(
                credential = &*self.credential,
                "no runtime for a subject's refresher; it is served without refreshes"
            ),
        }
        Arc::new(LiveSubject {
            slot: Arc::clone(&credential.slot),
            credential,
            last_used_ms: AtomicU64::new(self.now_ms()),
            admitted_ms: self.now_ms(),
            stop,
        })
    }

    /// Takes subjects out of memory: those idle for `subject_idle`, then the least recently
    /// used beyond `max_subjects_in_memory`. Their refreshers stop; their records stay.
    pub fn sweep(&self) {
        let now = self.now_ms();
        let idle = self.config.idle.as_millis() as u64;
        let mut evicted = 0usize;
        self.live.retain(|subject, live| {
            let keep = now.saturating_sub(live.last_used_ms.load(Ordering::Relaxed)) < idle;
            if !keep {
                self.leave_memory(subject, live);
                evicted += 1;
            }
            keep
        });
        let over = self.live.len().saturating_sub(self.config.max_in_memory);
        if over > 0 {
            self.evict_least_recent(over, None);
        }
        if evicted > 0 {
            tracing::debug!(
                credential = &*self.credential,
                evicted,
                in_memory = self.live.len(),
                "idle subjects left memory"
            );
        }
    }

    /// Takes the least recently used subjects out of memory: `count`, or a 64th of the cap
    /// if that is more, so that at the cap the scan of every subject is paid once per
    /// many admissions rather than once per admission.
    fn evict_least_recent(&self, count: usize, keep: Option<&SubjectKey>) {
        let mut by_age: Vec<(u64, SubjectKey)> = self
            .live
            .iter()
            .filter(|e| Some(e.key()) != keep)
            .map(|e| (e.last_used_ms.load(Ordering::Relaxed), e.key().clone()))
            .collect();
        let count = count.max(self.config.max_in_memory / 64).min(by_age.len());
        if count == 0 {
            return;
        }
        if count < by_age.len() {
            by_age.select_nth_unstable_by_key(count, |(at, _)| *at);
        }
        for (_, subject) in by_age.into_iter().take(count) {
            if let Some((subject, live)) = self.live.remove(&subject) {
                self.leave_memory(&subject, &live);
            }
        }
    }

    /// Stops a subject's refresher as it leaves memory; its record rests in the store
    /// (on behalf of, there is none: its token leaves with it).
    fn leave_memory(&self, subject: &SubjectKey, live: &LiveSubject) {
        let _ = live.stop.send(true);
        if self.config.on_behalf_of() {
            return;
        }
        // Counted as its record will read (see `stored_state`); a subject that never held a
        // token (a refused hand-over) has none, and the next census finds whatever it has.
        let token = live.slot.current();
        let state = match live.slot.state() {
            CredentialState::LoggedOut => CredentialState::LoggedOut,
            _ if token.is_none() => return,
            CredentialState::Failed => CredentialState::Failed,
            _ if token.is_some_and(|t| t.is_usable(Instant::now())) => CredentialState::Valid,
            _ => CredentialState::Expired,
        };
        self.census.rest(subject.as_str(), state);
    }

    /// Counts the subjects at rest in the store by state, a page at a time (see
    /// [`census`]); answers how many it found.
    pub async fn take_census(&self) -> Result<usize, StoreError> {
        const PAGE: usize = 500;
        if self.config.on_behalf_of() {
            return Ok(0); // nothing of theirs is stored
        }
        // One census at a time: the moves noted during one belong to it alone.
        let _one_at_a_time = self.census_running.lock().await;
        let prefix = SubjectKey::store_prefix(&self.credential);
        let mut count = self.census.begin();
        let mut found = 0;
        let mut after: Option<String> = None;
        loop {
            let keys = match self.store.list(&prefix, after.as_deref(), PAGE).await {
                Ok(keys) => keys,
                Err(e) => {
                    self.census.abandon();
                    return Err(e);
                }
            };
            let resting: Vec<(SubjectKey, String)> = keys
                .iter()
                .filter_map(|k| {
                    SubjectKey::from_store_key(&self.credential, k).map(|s| (s, k.clone()))
                })
                .filter(|(s, _)| !self.live.contains_key(s))
                .collect();
            let store_keys: Vec<String> = resting.iter().map(|(_, k)| k.clone()).collect();
            let sets = match self.store.load_many(&store_keys).await {
                Ok(sets) => sets,
                // One record that does not open must not stop the count: the page again,
                // record by record, leaving out those that fail.
                Err(_) => {
                    let mut sets = Vec::with_capacity(store_keys.len());
                    for key in &store_keys {
                        sets.push(self.store.load(key).await.ok().flatten());
                    }
                    sets
                }
            };
            let now = SystemTime::now();
            for ((subject, _), set) in resting.iter().zip(sets) {
                if let Some(set) = set {
                    self.census
                        .found(&mut count, subject.as_str(), stored_state(&set.token, now));
                    found += 1;
                }
            }
            if keys.len() < PAGE {
                break;
            }
            after = keys.last().cloned();
            // A large store is counted in slices, between the runtime's other work.
            tokio::task::yield_now().await;
        }
        self.census.finish(count);
        Ok(found)
    }

    /// Stops every subject's refresher (shutdown).
    pub fn stop_all(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        for live in self.live.iter() {
            let _ = live.stop.send(true);
        }
    }

    /// How often the sweep runs: often enough that `subject_idle` is kept to within a
    /// quarter of it.
    pub fn sweep_interval(&self) -> Duration {
        (self.config.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Subjects per state, in memory and at rest in the store (never which subjects).
    pub fn counts(&self) -> StateCounts {
        let mut counts = self.census.counts();
        for live in self.live.iter() {
            counts[census::state_index(live.credential.slot.state())] += 1;
        }
        counts
    }

    /// How many subjects rest in the store, as the census counts them.
    pub fn at_rest(&self) -> usize {
        self.census.counts().iter().sum()
    }

    /// Sets `bearerd_subjects{credential,state}`.
    pub fn update_gauges(&self) {
        for (state, n) in CredentialState::ALL.iter().zip(self.counts()) {
            self.metrics
                .subjects
                .with_label_values(&[&*self.credential, state.as_str()])
                .set(n as i64);
        }
    }

    /// One subject's status: from memory, else from its record; `None` when unknown.
    pub async fn status_of(
        &self,
        subject: &SubjectKey,
    ) -> Result<Option<SubjectStatus>, StoreError> {
        if let Some(live) = self.get(subject) {
            let mut status = live_status(subject, &live);
            if status.status.state == CredentialState::LoggedOut {
                // The tombstone's details are in the record.
                let set = self
                    .store
                    .load(&subject.store_key(&self.credential))
                    .await?;
                status.logout = set.and_then(|s| s.token.logout).map(logout_view);
            }
            return Ok(Some(status));
        }
        let set = self
            .store
            .load(&subject.store_key(&self.credential))
            .await?;
        Ok(set.map(|set| self.stored_status(subject, &set)))
    }

    /// A page of subjects in order (`after` excluded), with the next page's start.
    pub async fn list(
        &self,
        after: Option<&SubjectKey>,
        limit: usize,
    ) -> Result<(Vec<SubjectStatus>, Option<String>), StoreError> {
        let prefix = SubjectKey::store_prefix(&self.credential);
        let after_key = after.map(|a| a.store_key(&self.credential));
        let stored = self
            .store
            .list(&prefix, after_key.as_deref(), limit)
            .await?;
        // Subjects in memory whose record the store has no listing of (on behalf of: in
        // memory only), merged in the store's order.
        let order = |k: &SubjectKey| self.store.list_order(&k.store_key(&self.credential));
        let after_order = after.map(order);
        let mut subjects: Vec<(String, SubjectKey)> = stored
            .iter()
            .filter_map(|k| SubjectKey::from_store_key(&self.credential, k))
            .chain(self.live.iter().map(|e| e.key().clone()))
            .map(|k| (order(&k), k))
            .filter(|(o, _)| after_order.as_ref().is_none_or(|a| o > a))
            .collect();
        subjects.sort_unstable();
        subjects.dedup();
        subjects.truncate(limit);
        // One batch for the subjects not in memory (one round trip on Redis).
        let in_memory: Vec<bool> = subjects
            .iter()
            .map(|(_, k)| self.live.contains_key(k))
            .collect();
        let stored_keys: Vec<String> = subjects
            .iter()
            .zip(&in_memory)
            .filter(|(_, live)| !**live)
            .map(|((_, k), _)| k.store_key(&self.credential))
            .collect();
        let mut stored_sets = self.store.load_many(&stored_keys).await?.into_iter();
        let mut page = Vec::with_capacity(subjects.len());
        for ((_, subject), live) in subjects.iter().zip(in_memory) {
            let status = if live {
                self.status_of(subject).await?
            } else {
                stored_sets
                    .next()
                    .flatten()
                    .map(|set| self.stored_status(subject, &set))
            };
            page.extend(status);
        }
        let next = (subjects.len() == limit)
            .then(|| subjects.last().map(|(_, s)| s.as_str().to_string()))
            .flatten();
        Ok((page, next))
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

    /// Ends a connect flow: redeems the code (with the flow's PKCE verifier and redirect
    /// URI), then stores and publishes the subject's tokens. Nothing is stored when the
    /// provider refuses.
    pub async fn redeem(
        &self,
        flow: connect::PendingConnect,
        code: String,
    ) -> Result<SubjectStatus, crate::oauth::GrantError> {
        use secrecy::ExposeSecret;
        let started = (Instant::now(), SystemTime::now());
        let (mut token, refresh_token) = self
            .endpoint
            .exchange(vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code),
                ("redirect_uri", flow.redirect_uri.clone()),
                ("code_verifier", flow.verifier.expose_secret().to_string()),
            ])
            .await?;
        token.refresh_token = refresh_token.or(token.refresh_token);
        let live = self.admit(&flow.subject);
        let span = tracing::info_span!("subject", subject = %self.tagger.tag(&flow.subject));
        async {
            if token.refresh_token.is_none() {
                tracing::warn!(
                    credential = &*self.credential,
                    "the provider issued no refresh token: the subject is served until its access token expires (does the client need the offline_access scope?)"
                );
            }
            super::refresher::take_connected(&live.credential, token, started).await;
            tracing::info!(credential = &*self.credential, "subject connected");
        }
        .instrument(span)
        .await;
        Ok(live_status(&flow.subject, &live))
    }

    /// The status of a subject that is not in memory, as its record gives it.
    fn stored_status(&self, subject: &SubjectKey, set: &StoredSet) -> SubjectStatus {
        let t = &set.token;
        let now = SystemTime::now();
        let remaining = t.expires_at.and_then(|e| e.duration_since(now).ok());
        let state = stored_state(t, now);
        SubjectStatus {
            subject: subject.as_str().to_string(),
            in_memory: false,
            logout: t.logout.clone().map(logout_view),
            status: CredentialStatus {
                state,
                grant: self.credential_config.grant.kind().to_string(),
                client_auth: Some(self.endpoint.config().client.method.name().to_string()),
                expires_in_s: remaining.map(|r| super::slot::round(r.as_secs_f64())),
                token_age_s: (!t.logged_out && t.issued_at > SystemTime::UNIX_EPOCH)
                    .then(|| now.duration_since(t.issued_at).ok())
                    .flatten()
                    .map(|a| super::slot::round(a.as_secs_f64())),
                generation: 0,
                refreshes: 0,
                consecutive_failures: 0,
                last_error: None,
                next_refresh_in_s: None,
                scopes: t.scopes.clone(),
                has_refresh_token: t.refresh_token.is_some(),
            },
        }
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

/// A stored logout as the admin API shows it (the record's format is the store's own).
fn logout_view(l: crate::store::LogoutRecord) -> crate::api::LogoutRecord {
    crate::api::LogoutRecord {
        at: l.at,
        revocation: l.revocation,
    }
}

fn live_status(subject: &SubjectKey, live: &LiveSubject) -> SubjectStatus {
    SubjectStatus {
        subject: subject.as_str().to_string(),
        in_memory: true,
        logout: None,
        status: live.credential.slot.status(),
    }
}

/// The state of a subject at rest, from its record.
fn stored_state(t: &StoredToken, now: SystemTime) -> CredentialState {
    let remaining = t.expires_at.and_then(|e| e.duration_since(now).ok());
    if t.logged_out {
        CredentialState::LoggedOut
    } else if remaining.is_some_and(|r| !r.is_zero()) {
        CredentialState::Valid
    } else if t.refresh_token.is_some() {
        // Refreshed on its next request.
        CredentialState::Expired
    } else {
        CredentialState::Failed
    }
}
