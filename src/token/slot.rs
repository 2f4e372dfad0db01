//! `CredentialSlot`: one credential's token as the proxy reads it (lock-free, ArcSwap) and
//! its control state as `/status` reports it. Requests read it and register demands; only
//! the refresher and the credential's logout and login change it, and only through the
//! write API at the bottom of this file.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};

use super::schedule;
use super::GrantErrorKind;
use super::{LastError, ReplayDecision, StepUpDecision, TokenSnapshot, TokenUnavailable};
use super::{Trigger, Unavailability};
use crate::api::{DrillFailure, DrillView};
use crate::config::{CredentialConfig, RefreshPolicy};
use crate::events::{EventKind, EventTap, Happened};
use crate::metrics::Metrics;
use crate::metrics::StepUpOutcome;
use crate::oauth::step_up::{StepUp, StepUpPlan};

/// A pending request for a refresh: refresh unless the slot already holds a generation
/// above `below_generation` (so a 401 on an old token does not refresh again).
#[derive(Debug, Clone, Copy)]
struct Demand {
    trigger: Trigger,
    below_generation: u64,
}

/// The control-path state: written by the refresher and by demands, read by `/status`.
#[derive(Default)]
struct Control {
    in_flight: bool,
    demand: Option<Demand>,
    last_request_attempt: Option<Instant>,
    attempts_completed: u64,
    consecutive_failures: u32,
    /// When the first of the consecutive failures happened (wall clock, for alerts).
    failing_since: Option<SystemTime>,
    permanent_failure: bool,
    last_error: Option<LastError>,
    next_refresh_at: Option<Instant>,
    refreshes: u64,
    /// Logged out by an operator: no automatic refresh until a login or manual refresh.
    logged_out: bool,
    /// The token in use came with no refresh token (a login at a provider without
    /// offline access): it cannot be renewed without another login.
    no_refresh_token: bool,
    /// The last generation published. It never goes back, not even when the token is
    /// dropped (a logout, a dead token), so a 401 on an old token is never taken for one
    /// on a token published since.
    last_generation: u64,
    /// A failure drill that runs, and what it put back when it ends.
    drill: Option<Drill>,
}

/// A failure drill: token requests fail as `fail` says until `until`, without being sent.
struct Drill {
    fail: DrillFailure,
    until: Instant,
    /// Tells this drill from one started after it (its end timer checks it).
    id: u64,
    /// The failure state before the drill, which comes back when it ends.
    before: FailureState,
}

/// What a drill changes and puts back.
struct FailureState {
    consecutive_failures: u32,
    failing_since: Option<SystemTime>,
    permanent_failure: bool,
    last_error: Option<LastError>,
    next_refresh_at: Option<Instant>,
}

impl Control {
    /// The attempt in flight is over and went well: any failure is over too. During a
    /// drill (a real attempt that was in flight when it began, or a login), that is what
    /// the drill's end puts back.
    fn end_in_success(&mut self, next_refresh_at: Option<Instant>) {
        self.in_flight = false;
        self.attempts_completed += 1;
        self.consecutive_failures = 0;
        self.failing_since = None;
        self.permanent_failure = false;
        self.next_refresh_at = next_refresh_at;
        if let Some(d) = &mut self.drill {
            d.before = FailureState {
                consecutive_failures: 0,
                failing_since: None,
                permanent_failure: false,
                last_error: None,
                next_refresh_at,
            };
        }
    }
}

pub struct CredentialSlot {
    pub name: Arc<str>,
    pub grant_kind: &'static str,
    /// The `client_auth` method (none for a static token): shown, never the credential.
    pub client_auth: Option<&'static str>,
    pub has_refresh_token: bool,
    pub policy: RefreshPolicy,
    /// What its tokens are obtained for: stamped on every record it saves.
    pub binding: crate::store::RecordBinding,
    token: ArcSwapOption<TokenSnapshot>,
    control: Mutex<Control>,
    /// Wakes the refresher when a demand is registered.
    wake: Notify,
    /// Bumped on every change of token or state; waiters re-check on each bump.
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
    /// The scopes a 403 `insufficient_scope` may add (the grant's token endpoint's), for
    /// the credentials that have one.
    step_up: std::sync::OnceLock<Arc<StepUp>>,
    /// Where its events go (none in unit tests).
    events: std::sync::OnceLock<EventTap>,
}

/// The state names of `/status` and `bearerd_credential_state`: the admin API's own.
pub use crate::api::CredentialState;

/// The `/status` view of one credential (never a token): the admin API's body.
pub use crate::api::CredentialStatus;

pub(super) fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl CredentialSlot {
    pub fn new(config: &CredentialConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(CredentialSlot {
            name: Arc::from(config.name.as_str()),
            grant_kind: config.grant.kind(),
            client_auth: config.grant.request().map(|r| r.client.method.name()),
            has_refresh_token: config
                .grant
                .settings::<crate::grant::RefreshTokenConfig>()
                .is_some(),
            policy: config.policy.clone(),
            binding: crate::store::RecordBinding::of(config),
            token: ArcSwapOption::empty(),
            control: Mutex::new(Control::default()),
            wake: Notify::new(),
            changed: watch::channel(0).0,
            metrics,
            step_up: std::sync::OnceLock::new(),
            events: std::sync::OnceLock::new(),
        })
    }

    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        // A panic while holding this lock would be a bug; the state stays usable.
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The current token, if any (usable or not). Lock-free.
    pub fn current(&self) -> Option<Arc<TokenSnapshot>> {
        self.token.load_full()
    }

    /// A usable token for a request: at once from the slot, or after waiting (up to the wait
    /// budget) for the refresh that this call demands.
    /// Where spans go, when tracing is on (through the events this slot is attached to).
    pub(crate) fn tracer(&self) -> Option<&Arc<crate::events::trace::Tracer>> {
        self.events.get().and_then(|tap| tap.bus.tracer())
    }

    /// Whether a request would get a token now, without waiting.
    pub fn has_usable_token(&self) -> bool {
        self.token
            .load()
            .as_ref()
            .is_some_and(|t| t.is_usable(Instant::now()))
    }

    pub async fn token_for_request(&self) -> Result<Arc<TokenSnapshot>, TokenUnavailable> {
        if let Some(t) = self.token.load().as_ref() {
            if t.is_usable(Instant::now()) {
                return Ok(Arc::clone(t));
            }
        }
        let started = Instant::now();
        let result = self.wait_for_usable().await;
        self.metrics
            .token_wait_seconds
            .with_label_values(&[&self.name])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn wait_for_usable(&self) -> Result<Arc<TokenSnapshot>, TokenUnavailable> {
        let deadline = tokio::time::Instant::now() + self.policy.wait_budget;
        let mut rx = self.changed.subscribe();
        let mut demanded_at_attempt = None;
        loop {
            let now = Instant::now();
            if let Some(t) = self.current().filter(|t| t.is_usable(now)) {
                return Ok(t);
            }
            {
                let mut c = self.control();
                if c.permanent_failure || c.logged_out {
                    return Err(self.permanent_error(&c));
                }
                // Demand again after each finished attempt, so a request that keeps waiting
                // keeps the refresher trying at the request-triggered interval.
                if demanded_at_attempt != Some(c.attempts_completed) {
                    demanded_at_attempt = Some(c.attempts_completed);
                    let below = self.current().map_or(0, |t| t.generation);
                    Self::merge_demand(&mut c, Trigger::OnDemand, below);
                    drop(c);
                    self.wake.notify_one();
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        let c = self.control();
        let message = match &c.last_error {
            Some(e) => format!(
                "no valid token within {:?}: last error {}: {}",
                self.policy.wait_budget, e.kind, e.message
            ),
            None => format!("no valid token within {:?}", self.policy.wait_budget),
        };
        let reason = if c.permanent_failure {
            Unavailability::NeedsReauth
        } else if c.last_error.as_ref().is_some_and(|e| {
            matches!(
                e.kind,
                GrantErrorKind::StoreUnavailable | GrantErrorKind::StoreSettling
            )
        }) {
            Unavailability::StoreUnavailable
        } else {
            Unavailability::NoValidToken
        };
        Err(TokenUnavailable { reason, message })
    }

    fn permanent_error(&self, c: &Control) -> TokenUnavailable {
        if c.logged_out {
            return TokenUnavailable {
                reason: Unavailability::NeedsReauth,
                message: format!("credential {} is logged out; log in again", self.name),
            };
        }
        let detail = c
            .last_error
            .as_ref()
            .map_or(String::new(), |e| format!(": {}: {}", e.kind, e.message));
        TokenUnavailable {
            reason: Unavailability::NeedsReauth,
            message: format!(
                "credential {} failed permanently and needs re-authorization{detail}",
                self.name
            ),
        }
    }

    /// The upstream rejected generation `rejected` and no newer token can be had (the
    /// credential failed permanently, or was logged out): that token is dead, so it is not
    /// served again, even before its expiry. Requests then get the permanently failed
    /// credential's answer. Called under the control lock, which publishing also holds, so
    /// a token published meanwhile is never the one retired.
    fn retire_rejected(&self, _held: &Control, rejected: u64) {
        if self.current().is_some_and(|t| t.generation == rejected) {
            self.token.store(None);
            tracing::warn!(
                credential = &*self.name,
                generation = rejected,
                "the upstream rejected the token and no new one can be had: it is not served again"
            );
        }
    }

    fn merge_demand(c: &mut Control, trigger: Trigger, below_generation: u64) {
        c.demand = Some(match c.demand {
            Some(d) => Demand {
                trigger: d.trigger.max(trigger),
                below_generation: d.below_generation.max(below_generation),
            },
            None => Demand {
                trigger,
                below_generation,
            },
        });
    }

    fn usable_newer_than(&self, rejected: u64) -> Option<Arc<TokenSnapshot>> {
        self.current()
            .filter(|t| t.generation > rejected && t.is_usable(Instant::now()))
    }

    /// After an upstream rejected generation `rejected`: replay with a newer token when one
    /// exists or a refresh can get one; refresh at most once per request-triggered interval.
    pub async fn refresh_if_generation(&self, rejected: u64) -> ReplayDecision {
        self.refresh_past(rejected, Trigger::On401, None).await
    }

    /// After an upstream's 403 `insufficient_scope` naming `challenged`, for `rejected`: a
    /// machine grant gets a token for the union of scopes (once per scope set, single-flight
    /// like every refresh) to replay with; a user grant's next login asks for the union.
    pub async fn step_up(&self, challenged: &[String], rejected: &TokenSnapshot) -> StepUpDecision {
        let Some(step_up) = self.step_up.get() else {
            return StepUpDecision::PassThrough;
        };
        let (decision, outcome) = match step_up.plan(&rejected.scopes, challenged) {
            StepUpPlan::NotAllowed => (StepUpDecision::PassThrough, StepUpOutcome::NotAllowed),
            StepUpPlan::AlreadyTried => (StepUpDecision::PassThrough, StepUpOutcome::AlreadyTried),
            StepUpPlan::Login { scopes } => (
                StepUpDecision::Login { scopes },
                StepUpOutcome::RequiresReauth,
            ),
            StepUpPlan::Refresh { wanted } => {
                // The refresher's step-up attempt asks for them, and keeps them or not.
                let fresh = self
                    .refresh_past(rejected.generation, Trigger::StepUp, Some(&wanted))
                    .await;
                match fresh {
                    ReplayDecision::Replay(t) => {
                        (StepUpDecision::Replay(t), StepUpOutcome::SteppedUp)
                    }
                    _ => (StepUpDecision::PassThrough, StepUpOutcome::Failed),
                }
            }
        };
        self.count_step_up(outcome);
        decision
    }

    /// Counts a step-up that went no further than `outcome` (the body could not be sent
    /// again, say).
    pub fn count_step_up(&self, outcome: StepUpOutcome) {
        self.metrics
            .step_up_total
            .with_label_values(&[&self.name, outcome.as_str()])
            .inc();
        self.emit(Happened::new(EventKind::StepUp, outcome.as_str()));
    }

    /// Gives the slot its way to the event bus.
    pub fn attach_events(&self, tap: EventTap) {
        let _ = self.events.set(tap);
    }

    fn emit(&self, h: Happened) {
        if let Some(tap) = self.events.get() {
            tap.emit(&self.name, h);
        }
    }

    /// Gives the slot the scopes a step-up may add (its grant's token endpoint's).
    pub(crate) fn attach_step_up(&self, step_up: Arc<StepUp>) {
        let _ = self.step_up.set(step_up);
    }

    /// A refresh for a token newer than `rejected`, waited for. A 401's is rate-limited (at
    /// most once per request-triggered interval); a step-up's (`covers`: the scopes it
    /// added) is not, waits out an attempt that began before it asked, and takes only a
    /// token that has those scopes (or names none).
    async fn refresh_past(
        &self,
        rejected: u64,
        trigger: Trigger,
        covers: Option<&[String]>,
    ) -> ReplayDecision {
        let fits = |t: &Arc<TokenSnapshot>| {
            covers.is_none_or(|wanted| {
                t.scopes.is_empty() || wanted.iter().all(|s| t.scopes.contains(s))
            })
        };
        let newer = || self.usable_newer_than(rejected).filter(fits);
        let mut rx = self.changed.subscribe();
        let target_attempts = {
            if let Some(t) = newer() {
                return ReplayDecision::Replay(t);
            }
            let mut c = self.control();
            // Looked at again under the lock: the refresher publishes while holding it, so a
            // refresh that ended just now is seen here, not taken for a rate-limited one.
            if let Some(t) = newer() {
                return ReplayDecision::Replay(t);
            }
            if c.permanent_failure || c.logged_out {
                // Only a 401 says the token is dead; a step-up's 403 does not.
                if covers.is_none() {
                    self.retire_rejected(&c, rejected);
                }
                return ReplayDecision::NoNewerToken;
            }
            if !c.in_flight && covers.is_none() {
                let lifetime = self.current().and_then(|t| t.lifetime);
                let interval = schedule::min_interval(&self.policy, lifetime);
                if c.last_request_attempt
                    .is_some_and(|at| at.elapsed() < interval)
                {
                    return ReplayDecision::RateLimited;
                }
            }
            Self::merge_demand(&mut c, trigger, rejected);
            // Whatever attempt finishes next either publishes a newer generation or fails;
            // either way this request has waited long enough. A step-up's scopes are in
            // the attempt after one under way.
            let target = c.attempts_completed + 1 + u64::from(covers.is_some() && c.in_flight);
            drop(c);
            self.wake.notify_one();
            target
        };
        let deadline = tokio::time::Instant::now() + self.policy.wait_budget;
        loop {
            {
                // Under the lock, so the token and the attempt count are of the same moment.
                let c = self.control();
                if let Some(t) = newer() {
                    return ReplayDecision::Replay(t);
                }
                if c.permanent_failure || c.logged_out {
                    if covers.is_none() {
                        self.retire_rejected(&c, rejected);
                    }
                    return ReplayDecision::NoNewerToken;
                }
                if c.attempts_completed >= target_attempts {
                    return ReplayDecision::NoNewerToken;
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return ReplayDecision::NoNewerToken },
                _ = tokio::time::sleep_until(deadline) => return ReplayDecision::NoNewerToken,
            }
        }
    }

    /// Starts a 401-triggered refresh without waiting for it (the request could not be
    /// replayed, but the next one should get a fresh token).
    pub fn refresh_in_background(&self, rejected: u64) -> bool {
        let mut c = self.control();
        if c.permanent_failure || c.logged_out {
            self.retire_rejected(&c, rejected);
            return false;
        }
        if self.current().is_some_and(|t| t.generation > rejected) {
            return false;
        }
        if !c.in_flight {
            let interval =
                schedule::min_interval(&self.policy, self.current().and_then(|t| t.lifetime));
            if c.last_request_attempt
                .is_some_and(|at| at.elapsed() < interval)
            {
                return false;
            }
        }
        Self::merge_demand(&mut c, Trigger::On401, rejected);
        drop(c);
        self.wake.notify_one();
        true
    }

    /// Requests a refresh now (admin API). Returns the attempt count to wait for.
    pub fn demand_manual(&self) -> u64 {
        let mut c = self.control();
        Self::merge_demand(&mut c, Trigger::Manual, u64::MAX);
        let target = c.attempts_completed + if c.in_flight { 2 } else { 1 };
        drop(c);
        self.wake.notify_one();
        target
    }

    /// Waits until `attempts` attempts have completed, or the timeout passes.
    pub async fn wait_attempts(&self, attempts: u64, timeout: Duration) -> bool {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.control().attempts_completed >= attempts {
                return true;
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() { return false },
                _ = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    pub fn state(&self) -> CredentialState {
        let c = self.control();
        self.state_of(&c)
    }

    /// `expired` means requests get 503 now: no usable token, and not merely the first
    /// attempt (or a refresh at the last moment) under way. It stays `expired` through the
    /// retries of an outage, so an alert on it does not flap with each attempt.
    fn state_of(&self, c: &Control) -> CredentialState {
        let usable = self.current().is_some_and(|t| t.is_usable(Instant::now()));
        if c.logged_out {
            CredentialState::LoggedOut
        } else if c.permanent_failure {
            // A manual refresh of a failed credential shows as under way.
            if c.in_flight {
                CredentialState::Refreshing
            } else {
                CredentialState::Failed
            }
        } else if !usable && (c.consecutive_failures > 0 || !c.in_flight) {
            CredentialState::Expired
        } else if c.in_flight {
            CredentialState::Refreshing
        } else if c.consecutive_failures > 0 {
            CredentialState::Retrying
        } else {
            CredentialState::Valid
        }
    }

    /// The current access token as a secret (for revocation at logout).
    pub fn access_token(&self) -> Option<secrecy::SecretString> {
        let t = self.current()?;
        let header = t.header.to_str().ok()?;
        let value = match &t.dpop {
            Some(_) => header.strip_prefix("DPoP ")?,
            None => header.strip_prefix("Bearer ")?,
        };
        let value = value.to_string();
        Some(secrecy::SecretString::from(value))
    }

    /// Whether requests can be served now (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        self.current().is_some_and(|t| t.is_usable(Instant::now()))
    }

    pub fn status(&self) -> CredentialStatus {
        let c = self.control();
        let now = Instant::now();
        let token = self.current();
        CredentialStatus {
            state: self.state_of(&c),
            grant: self.grant_kind.to_string(),
            client_auth: self.client_auth.map(str::to_string),
            expires_in_s: token
                .as_ref()
                .and_then(|t| t.expires_at())
                .map(|e| round(e.saturating_duration_since(now).as_secs_f64())),
            token_age_s: token
                .as_ref()
                .map(|t| round(now.duration_since(t.issued_at).as_secs_f64())),
            generation: token.as_ref().map_or(0, |t| t.generation),
            refreshes: c.refreshes,
            consecutive_failures: c.consecutive_failures,
            last_error: c.last_error.as_ref().map(LastError::view),
            next_refresh_in_s: c
                .next_refresh_at
                .map(|n| round(n.saturating_duration_since(now).as_secs_f64())),
            scopes: token.as_ref().map(|t| t.scopes.clone()).unwrap_or_default(),
            step_up_scopes: self.step_up.get().map(|s| s.recorded()).unwrap_or_default(),
            has_refresh_token: self.has_refresh_token
                && !c.no_refresh_token
                && !c.permanent_failure
                && !c.logged_out,
            drill: c.drill.as_ref().map(|d| DrillView {
                fail: d.fail,
                ends_in_s: round(d.until.saturating_duration_since(now).as_secs_f64()),
            }),
        }
    }

    /// Refreshes the gauges that depend on time (called before each scrape).
    pub fn update_gauges(&self) {
        let state = self.state();
        for s in CredentialState::ALL {
            self.metrics
                .credential_state
                .with_label_values(&[&self.name, s.as_str()])
                .set(i64::from(s == state));
        }
        let expires_in = self
            .current()
            .and_then(|t| t.expires_at())
            .map_or(0.0, |e| {
                e.saturating_duration_since(Instant::now()).as_secs_f64()
            });
        self.metrics
            .token_expires_in_seconds
            .with_label_values(&[&self.name])
            .set(expires_in);
        let lifetime = self
            .current()
            .and_then(|t| t.lifetime)
            .map_or(0.0, |l| l.as_secs_f64());
        self.metrics
            .token_lifetime_seconds
            .with_label_values(&[&self.name])
            .set(lifetime);
        let since = self.control().failing_since.map_or(0.0, |t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64().floor())
        });
        self.metrics
            .refresh_failing_since
            .with_label_values(&[&self.name])
            .set(since);
    }
}

/// To a tenth: what `/status` shows of durations.
pub(super) fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Why an attempt failed, as the slot records it.
pub(super) struct AttemptFailure<'a> {
    pub kind: &'a GrantErrorKind,
    pub message: &'a str,
    pub permanent: bool,
}

/// What recording a failure did, for the refresher's log line.
pub(super) struct FailureRecord {
    pub consecutive_failures: u32,
    /// The same kind of error as the failure before it.
    pub repeated: bool,
    pub next_refresh_at: Option<Instant>,
}

/// The write API: the only ways the slot changes. Each method takes the control lock once,
/// and every change of token or state wakes the waiters.
impl CredentialSlot {
    /// Resolves when a request or an operator registers a demand.
    pub(super) fn demanded(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    pub(super) fn next_refresh_at(&self) -> Option<Instant> {
        self.control().next_refresh_at
    }

    pub(super) fn is_logged_out(&self) -> bool {
        self.control().logged_out
    }

    /// Whether anything happened to the slot yet (an attempt, a token, a logout): a
    /// subject's refresher that starts after a hand-over or a connect finds it so.
    pub(super) fn has_history(&self) -> bool {
        let c = self.control();
        c.attempts_completed > 0 || c.logged_out || self.current().is_some()
    }

    /// Takes the pending demand if it still needs a refresh: `Ok(trigger)` to refresh now,
    /// `Err(wait)` while a request-triggered one waits out the rate limit, `None` when
    /// there is nothing to do.
    pub(super) fn take_demand(&self) -> Option<Result<Trigger, Duration>> {
        let mut c = self.control();
        let d = c.demand?;
        if (c.permanent_failure || c.logged_out) && d.trigger != Trigger::Manual {
            // Automatic retries stop after a permanent failure; only an operator restarts them.
            c.demand = None;
            return None;
        }
        let current = self.current();
        if current
            .as_ref()
            .is_some_and(|t| t.generation > d.below_generation && t.is_usable(Instant::now()))
        {
            // A refresh since the demand already produced a newer token.
            c.demand = None;
            return None;
        }
        let interval = schedule::min_interval(&self.policy, current.and_then(|t| t.lifetime));
        match c.last_request_attempt {
            Some(at) if d.trigger.is_request_triggered() && at.elapsed() < interval => {
                Some(Err(interval.saturating_sub(at.elapsed())))
            }
            _ => {
                c.demand = None;
                Some(Ok(d.trigger))
            }
        }
    }

    pub(super) fn begin_attempt(&self, trigger: Trigger, started: Instant) {
        {
            let mut c = self.control();
            c.in_flight = true;
            if trigger.is_request_triggered() {
                c.last_request_attempt = Some(started);
            }
        }
        self.bump();
    }

    /// Ends an attempt with a new token: publishes it under the next generation (under the
    /// control lock, so a 401 that looks for a newer token sees this one or its attempt
    /// still in flight) and returns the generation and how many attempts it took.
    /// Publishes a token; `refresh_token_held`: it came with a refresh token (or its grant
    /// needs none).
    pub(super) fn publish(
        &self,
        mut token: TokenSnapshot,
        next_refresh_at: Option<Instant>,
        refresh_token_held: bool,
    ) -> (u64, u32) {
        let mut c = self.control();
        c.no_refresh_token = !refresh_token_held;
        c.last_generation += 1;
        token.generation = c.last_generation;
        let generation = token.generation;
        self.token.store(Some(Arc::new(token)));
        let attempts = c.consecutive_failures + 1;
        c.end_in_success(next_refresh_at);
        c.logged_out = false;
        c.refreshes += 1;
        drop(c);
        self.bump();
        let mut h = Happened::new(EventKind::Refreshed, "success");
        h.generation = Some(generation);
        self.emit(h);
        (generation, attempts)
    }

    /// Ends an attempt that found the token's source unchanged (a watched static file): the
    /// token in use stands, and any failure is over.
    /// Ends an attempt that changed nothing and says nothing of the credential's health (a
    /// step-up the server refused): its failures and schedule stay as they were.
    pub(super) fn end_attempt_as_it_was(&self) {
        let mut c = self.control();
        c.in_flight = false;
        c.attempts_completed += 1;
        drop(c);
        self.bump();
    }

    pub(super) fn finish_unchanged(&self, next_refresh_at: Option<Instant>) {
        self.control().end_in_success(next_refresh_at);
        self.bump();
    }

    /// Ends an attempt that failed. `next` gets the count of consecutive failures and
    /// gives the time of the next attempt (the backoff), or none.
    pub(super) fn record_failure(
        &self,
        failure: &AttemptFailure,
        next: impl FnOnce(u32) -> Option<Instant>,
    ) -> FailureRecord {
        let mut c = self.control();
        let repeated = c.consecutive_failures > 0
            && c.last_error
                .as_ref()
                .is_some_and(|l| l.kind == *failure.kind);
        c.in_flight = false;
        c.attempts_completed += 1;
        c.consecutive_failures += 1;
        c.failing_since.get_or_insert_with(SystemTime::now);
        c.last_error = Some(LastError {
            kind: failure.kind.clone(),
            message: failure.message.to_string(),
            at: rfc3339_now(),
        });
        c.permanent_failure = failure.permanent;
        c.next_refresh_at = next(c.consecutive_failures);
        let record = FailureRecord {
            consecutive_failures: c.consecutive_failures,
            repeated,
            next_refresh_at: c.next_refresh_at,
        };
        drop(c);
        self.bump();
        let (kind, outcome) = match failure.permanent {
            true => (EventKind::Failed, "permanent_error"),
            false => (EventKind::Retrying, "transient_error"),
        };
        let mut h = Happened::new(kind, outcome).detail(failure.message);
        h.error_kind = Some(failure.kind.to_string());
        self.emit(h);
        record
    }

    /// Publishes a token restored from the store at startup (generation 1: nothing was
    /// published before it).
    pub(super) fn restore(
        &self,
        mut token: TokenSnapshot,
        next_refresh_at: Instant,
        refresh_token_held: bool,
    ) {
        let mut c = self.control();
        c.last_generation += 1;
        token.generation = c.last_generation;
        c.no_refresh_token = !refresh_token_held;
        self.token.store(Some(Arc::new(token)));
        c.next_refresh_at = Some(next_refresh_at);
        drop(c);
        self.bump();
    }

    /// A token set that could not be persisted: it is kept in memory, and `/status` says so.
    pub(super) fn record_store_error(&self, message: String) {
        self.control().last_error = Some(LastError {
            kind: GrantErrorKind::StoreWriteFailed,
            message,
            at: rfc3339_now(),
        });
        self.bump();
    }

    /// A logout begins: no automatic refresh from now on (one in flight still finishes).
    pub(super) fn stop_refreshing(&self) {
        self.control().logged_out = true;
    }

    /// Logged out: the token and every pending refresh are dropped; requests get 503 with
    /// `requires_reauth` until a login or a manual refresh.
    pub(super) fn mark_logged_out(&self) {
        {
            let mut c = self.control();
            c.logged_out = true;
            // Not failing: an operator chose this (the refresh alerts stay quiet).
            c.failing_since = None;
            c.demand = None;
            c.next_refresh_at = None;
        }
        self.token.store(None);
        self.bump();
        // Disarm the refresher's timer: it re-reads the (now empty) schedule.
        self.wake.notify_one();
        self.emit(Happened::new(EventKind::LoggedOut, "logged_out"));
    }

    /// A login handed over a refresh token: automatic refreshes may run again.
    pub(super) fn accept_login(&self) {
        let mut c = self.control();
        c.logged_out = false;
        c.permanent_failure = false;
        if let Some(d) = &mut c.drill {
            d.before.permanent_failure = false;
        }
        drop(c);
        self.bump();
    }

    /// Starts (or extends, or changes) a failure drill until `until`: token requests fail
    /// as `fail` says, without being sent, and an attempt runs now to show it. Returns the
    /// drill's id, for its end.
    pub fn start_drill(&self, fail: DrillFailure, until: Instant) -> u64 {
        let id = {
            let mut c = self.control();
            let before = match c.drill.take() {
                Some(running) => running.before,
                None => FailureState {
                    consecutive_failures: c.consecutive_failures,
                    failing_since: c.failing_since,
                    permanent_failure: c.permanent_failure,
                    last_error: c.last_error.clone(),
                    next_refresh_at: c.next_refresh_at,
                },
            };
            let id = rand::random();
            c.drill = Some(Drill {
                fail,
                until,
                id,
                before,
            });
            id
        };
        self.metrics
            .drill_active
            .with_label_values(&[&self.name])
            .set(1);
        self.emit(Happened::new(EventKind::DrillStarted, fail.as_str()));
        self.demand_manual();
        id
    }

    /// The failure a running drill injects, if one runs.
    pub(super) fn drilled_failure(&self) -> Option<DrillFailure> {
        let c = self.control();
        c.drill
            .as_ref()
            .filter(|d| d.until > Instant::now())
            .map(|d| d.fail)
    }

    /// Ends the drill `id` (any drill when none) and puts back the state from before it;
    /// answers whether one ended.
    pub fn end_drill(&self, id: Option<u64>) -> bool {
        let drill = {
            let mut c = self.control();
            let this_one = |d: &Drill| id.is_none_or(|id| d.id == id);
            let Some(drill) = c.drill.take_if(|d| this_one(d)) else {
                return false;
            };
            let b = &drill.before;
            c.consecutive_failures = b.consecutive_failures;
            c.failing_since = b.failing_since;
            c.permanent_failure = b.permanent_failure;
            c.last_error = b.last_error.clone();
            // A refresh that fell due during the drill runs now.
            c.next_refresh_at = b.next_refresh_at;
            drill
        };
        self.metrics
            .drill_active
            .with_label_values(&[&self.name])
            .set(0);
        self.bump();
        self.wake.notify_one();
        self.emit(Happened::new(EventKind::DrillEnded, drill.fail.as_str()));
        true
    }

    /// Counts a token set adopted from the store (`bearerd_token_adopted_total`).
    pub(super) fn count_adoption(&self) {
        self.metrics
            .token_adopted_total
            .with_label_values(&[&self.name])
            .inc();
    }

    /// Counts a finished attempt in `bearerd_token_refresh_total` and its duration.
    pub(super) fn count_attempt(
        &self,
        trigger: Trigger,
        result: crate::metrics::RefreshResult,
        took: Duration,
    ) {
        self.metrics
            .token_refresh_total
            .with_label_values(&[&self.name, trigger.as_str(), result.as_str()])
            .inc();
        self.metrics
            .token_refresh_duration_seconds
            .with_label_values(&[&self.name])
            .observe(took.as_secs_f64());
    }
}
