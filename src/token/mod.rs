//! The token engine: one [`CredentialSlot`] per credential. The proxy reads the slot
//! lock-free (ArcSwap); only the refresher writes it. Requests that need a new token (none
//! yet, or a 401) register a demand and wait; the refresher serves demands and the schedule
//! through one loop, so there is exactly one refresh in flight per credential.

pub mod credential;
pub mod discovery;
pub mod grant;
pub mod login;
pub mod refresher;
pub mod rotation;
pub mod schedule;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{watch, Notify};

use crate::config::{CredentialConfig, RefreshPolicy};
use crate::metrics::Metrics;

/// What started a refresh; also the `trigger` label of `bearerd_token_refresh_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    Startup,
    Scheduled,
    OnDemand,
    On401,
    Manual,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Scheduled => "scheduled",
            Trigger::OnDemand => "on_demand",
            Trigger::On401 => "on_401",
            Trigger::Manual => "manual",
        }
    }

    /// Triggered by traffic, and so subject to the rate limit.
    fn is_request_triggered(self) -> bool {
        matches!(self, Trigger::OnDemand | Trigger::On401)
    }
}

/// A published token: the ready-made header value and what the engine knows about it.
pub struct TokenSnapshot {
    /// `Bearer …`, marked sensitive so HTTP libraries never print it.
    pub header: HeaderValue,
    pub generation: u64,
    pub issued_at: Instant,
    pub issued_wall: SystemTime,
    /// `None` for tokens that do not expire (static tokens).
    pub lifetime: Option<Duration>,
    /// After this instant the token is not handed out (expiry minus a small floor).
    pub usable_until: Option<Instant>,
    pub scopes: Vec<String>,
}

impl TokenSnapshot {
    pub fn is_usable(&self, now: Instant) -> bool {
        self.usable_until.is_none_or(|u| now < u)
    }

    pub fn expires_at(&self) -> Option<Instant> {
        self.lifetime.map(|l| self.issued_at + l)
    }
}

/// Why a request could not get a token.
#[derive(Debug, Clone)]
pub struct TokenUnavailable {
    /// Only a new login or secret can fix it (`requires_reauth`).
    pub permanent: bool,
    pub message: String,
}

/// What a request should do after its upstream answered 401.
pub enum ReplayDecision {
    /// Replay with this (newer) token.
    Replay(Arc<TokenSnapshot>),
    /// A request-triggered refresh ran too recently: pass the 401 through.
    RateLimited,
    /// No newer token could be had: pass the 401 through.
    NoNewerToken,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LastError {
    pub kind: String,
    pub message: String,
    /// RFC 3339.
    pub at: String,
}

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
    permanent_failure: bool,
    last_error: Option<LastError>,
    next_refresh_at: Option<Instant>,
    refreshes: u64,
    /// Logged out by an operator: no automatic refresh until a login or manual refresh.
    logged_out: bool,
}

pub struct CredentialSlot {
    pub name: Arc<str>,
    pub grant_kind: &'static str,
    pub has_refresh_token: bool,
    pub policy: RefreshPolicy,
    token: ArcSwapOption<TokenSnapshot>,
    control: Mutex<Control>,
    /// Wakes the refresher when a demand is registered.
    wake: Notify,
    /// Bumped on every change of token or state; waiters re-check on each bump.
    changed: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

/// The state names of `/status` and `bearerd_credential_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialState {
    Valid,
    Refreshing,
    Retrying,
    Expired,
    Failed,
    LoggedOut,
}

impl CredentialState {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialState::Valid => "valid",
            CredentialState::Refreshing => "refreshing",
            CredentialState::Retrying => "retrying",
            CredentialState::Expired => "expired",
            CredentialState::Failed => "failed",
            CredentialState::LoggedOut => "logged_out",
        }
    }
}

/// The `/status` view of one credential. Never holds a token.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CredentialStatus {
    pub state: CredentialState,
    pub grant: &'static str,
    pub expires_in_s: Option<f64>,
    pub token_age_s: Option<f64>,
    pub generation: u64,
    pub refreshes: u64,
    pub consecutive_failures: u32,
    pub last_error: Option<LastError>,
    pub next_refresh_in_s: Option<f64>,
    pub scopes: Vec<String>,
    pub has_refresh_token: bool,
}

fn rfc3339_now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

impl CredentialSlot {
    pub fn new(config: &CredentialConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(CredentialSlot {
            name: Arc::from(config.name.as_str()),
            grant_kind: config.grant.kind(),
            has_refresh_token: matches!(
                config.grant,
                crate::config::GrantConfig::RefreshToken { .. }
            ),
            policy: config.policy.clone(),
            token: ArcSwapOption::empty(),
            control: Mutex::new(Control::default()),
            wake: Notify::new(),
            changed: watch::channel(0).0,
            metrics,
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
        Err(TokenUnavailable {
            permanent: c.permanent_failure,
            message,
        })
    }

    fn permanent_error(&self, c: &Control) -> TokenUnavailable {
        if c.logged_out {
            return TokenUnavailable {
                permanent: true,
                message: format!("credential {} is logged out; log in again", self.name),
            };
        }
        let detail = c
            .last_error
            .as_ref()
            .map_or(String::new(), |e| format!(": {}: {}", e.kind, e.message));
        TokenUnavailable {
            permanent: true,
            message: format!(
                "credential {} failed permanently and needs re-authorization{detail}",
                self.name
            ),
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
        let mut rx = self.changed.subscribe();
        let target_attempts = {
            if let Some(t) = self.usable_newer_than(rejected) {
                return ReplayDecision::Replay(t);
            }
            let mut c = self.control();
            // Looked at again under the lock: the refresher publishes while holding it, so a
            // refresh that ended just now is seen here, not taken for a rate-limited one.
            if let Some(t) = self.usable_newer_than(rejected) {
                return ReplayDecision::Replay(t);
            }
            if c.permanent_failure || c.logged_out {
                return ReplayDecision::NoNewerToken;
            }
            if !c.in_flight {
                let lifetime = self.current().and_then(|t| t.lifetime);
                let interval = schedule::min_interval(&self.policy, lifetime);
                if c.last_request_attempt
                    .is_some_and(|at| at.elapsed() < interval)
                {
                    return ReplayDecision::RateLimited;
                }
            }
            Self::merge_demand(&mut c, Trigger::On401, rejected);
            // Whatever attempt finishes next either publishes a newer generation or fails;
            // either way this request has waited long enough.
            let target = c.attempts_completed + 1;
            drop(c);
            self.wake.notify_one();
            target
        };
        let deadline = tokio::time::Instant::now() + self.policy.wait_budget;
        loop {
            {
                // Under the lock, so the token and the attempt count are of the same moment.
                let c = self.control();
                if let Some(t) = self.usable_newer_than(rejected) {
                    return ReplayDecision::Replay(t);
                }
                if c.permanent_failure || c.logged_out || c.attempts_completed >= target_attempts {
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
        if c.permanent_failure
            || c.logged_out
            || self.current().is_some_and(|t| t.generation > rejected)
        {
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
        let value = t.header.to_str().ok()?.strip_prefix("Bearer ")?.to_string();
        Some(secrecy::SecretString::from(value))
    }

    /// Drops the token and every pending refresh (logout).
    fn clear_for_logout(&self) {
        {
            let mut c = self.control();
            c.logged_out = true;
            c.demand = None;
            c.next_refresh_at = None;
        }
        self.token.store(None);
        self.bump();
        // Disarm the refresher's timer: it re-reads the (now empty) schedule.
        self.wake.notify_one();
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
            grant: self.grant_kind,
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
            last_error: c.last_error.clone(),
            next_refresh_in_s: c
                .next_refresh_at
                .map(|n| round(n.saturating_duration_since(now).as_secs_f64())),
            scopes: token.as_ref().map(|t| t.scopes.clone()).unwrap_or_default(),
            has_refresh_token: self.has_refresh_token && !c.permanent_failure && !c.logged_out,
        }
    }

    /// Refreshes the gauges that depend on time (called before each scrape).
    pub fn update_gauges(&self) {
        let state = self.state();
        for s in crate::metrics::STATES {
            self.metrics
                .credential_state
                .with_label_values(&[&self.name, s])
                .set(i64::from(s == state.as_str()));
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
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The HTTP header value for a token, marked sensitive.
pub fn bearer_header(token: &secrecy::SecretString) -> Option<HeaderValue> {
    use secrecy::ExposeSecret;
    let mut v = HeaderValue::try_from(format!("Bearer {}", token.expose_secret())).ok()?;
    v.set_sensitive(true);
    Some(v)
}
