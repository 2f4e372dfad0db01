//! The connect flow of per-subject credentials: `POST …/subjects/{s}/connect` starts an
//! authorization code + PKCE flow whose `state` is bound to the credential and the subject,
//! valid for `connect_lifetime` (10 minutes by default) and good for one callback; `GET /connect/callback` (relayed by the
//! app from its redirect URI) redeems the code and stores the subject's tokens.
//!
//! On a shared store (Redis), a flow is also kept there, sealed and named by a hash of its
//! state: the app's replicas each have a sidecar, and the user's browser may come back to
//! another replica than the one that started the flow. The store is then the one place a
//! state is used up, so it is good for one callback across every replica.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::{live_status, SubjectKey, SubjectStatus};
use crate::store::{FlowStore, TokenStore};

/// How long a shared flow outlives its lifetime in the store, so a late callback is told
/// it expired rather than that its state is unknown.
const EXPIRED_GRACE: Duration = Duration::from_secs(60);

/// The longest a connect flow's `state` can be accepted (`connect_lifetime` is at most this).
const LONGEST: Duration = Duration::from_secs(3600);

/// At most this many flows wait for their callback at once: a caller that starts flows in a
/// loop cannot fill memory (the oldest expired ones go first, then new ones are refused).
const MAX_PENDING: usize = 100_000;

/// A connect flow waiting for its callback.
pub struct PendingConnect {
    pub credential: String,
    pub subject: SubjectKey,
    pub redirect_uri: String,
    pub verifier: SecretString,
    expires: Instant,
}

/// A flow as the shared store keeps it (sealed by the store).
#[derive(Serialize, Deserialize)]
struct SharedFlow {
    credential: String,
    subject: String,
    redirect_uri: String,
    verifier: String,
    expires_at_ms: u64,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What names a flow in the shared store: never the state itself, which finishes the flow.
fn shared_id(state: &str) -> String {
    let mut id = crate::store::fingerprint(&SecretString::from(state.to_string()));
    id.truncate(32);
    id
}

/// Why a callback was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectRefused {
    #[error("the state is unknown: forged, already used, or from before a restart")]
    UnknownState,
    #[error("the connect flow expired (connect_lifetime); start it again")]
    Expired,
    #[error("the connect flow was started for another subject")]
    OtherSubject,
    /// The app must say whom it relays for (`subject=`, from its own session): otherwise
    /// whoever brings the code back finishes a flow someone else started.
    #[error("the callback names no subject: the app relays the provider's redirect with &subject=… (the user of its own session)")]
    NoSubject,
    #[error("too many connect flows are waiting for their callback")]
    TooMany,
    /// The shared store did not answer: a shared flow is never finished without it, or a
    /// state could be used on two replicas.
    #[error("the token store does not answer; try again")]
    StoreUnavailable,
}

/// Why a connect flow could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ConnectStartError {
    #[error("credential {0:?} has no redirect_uri: connect flows need one")]
    NoRedirectUri(String),
    /// The authorization server's endpoints could not be found.
    #[error("{0}")]
    Discovery(String),
    #[error("no authorization endpoint: set authorization_url or issuer")]
    NoAuthorizationEndpoint,
    #[error("{0}")]
    Request(String),
    /// No client could be registered for the connect flow (`registration = "auto"`).
    #[error("{0}")]
    Registration(String),
    #[error(transparent)]
    Refused(#[from] ConnectRefused),
}

impl ConnectStartError {
    /// The admin API's status for it.
    pub fn status(&self) -> u16 {
        match self {
            ConnectStartError::NoRedirectUri(_) | ConnectStartError::NoAuthorizationEndpoint => 409,
            ConnectStartError::Discovery(_) | ConnectStartError::Registration(_) => 502,
            ConnectStartError::Request(_) => 500,
            ConnectStartError::Refused(_) => 503,
        }
    }
}

/// Starts a connect flow for `subject`: the authorization URL to send the user to (code +
/// PKCE, the credential's client and login scopes), with its `state` kept here (and in a
/// shared store). Used by `POST …/subjects/{s}/connect` and by MCP URL elicitations.
pub async fn start(
    states: &ConnectStates,
    registry: &super::SubjectRegistry,
    subject: &SubjectKey,
) -> Result<ConnectStart, ConnectStartError> {
    let Some(redirect_uri) = registry.config.redirect_uri() else {
        return Err(ConnectStartError::NoRedirectUri(
            registry.credential.to_string(),
        ));
    };
    // A credential that registers its own client has one before its first user connects.
    if registry.endpoint().config().registration.is_some() {
        if let Some(own) = registry.own() {
            own.register_client()
                .await
                .map_err(|e| ConnectStartError::Registration(e.to_string()))?;
        }
    }
    let endpoints = registry
        .endpoint()
        .endpoints()
        .await
        .map_err(|e| ConnectStartError::Discovery(e.message))?;
    let authorize = endpoints
        .authorization
        .clone()
        .ok_or(ConnectStartError::NoAuthorizationEndpoint)?;
    let request = crate::oauth::login::authorization_request(
        registry.endpoint(),
        authorize,
        &endpoints,
        redirect_uri.as_str(),
    )
    .map_err(|e| ConnectStartError::Request(e.to_string()))?;
    let state = request.state.expose_secret().to_string();
    states
        .begin(
            &registry.credential,
            subject,
            redirect_uri.as_str(),
            request.state,
            request.verifier,
            registry.config.connect_lifetime,
        )
        .await?;
    tracing::info!(credential = &*registry.credential, "connect flow started");
    let started = ConnectStart {
        authorize_url: request.url.to_string(),
        lifetime: registry.config.connect_lifetime,
    };
    let key = (
        registry.credential.to_string(),
        subject.as_str().to_string(),
    );
    if states.latest.len() >= MAX_PENDING {
        states.latest.clear();
    }
    states.latest.insert(
        key,
        (
            state,
            started.authorize_url.clone(),
            Instant::now() + started.lifetime,
        ),
    );
    Ok(started)
}

/// Flows started by requests (MCP URL elicitations) at most this many a second: whoever
/// can send requests cannot fill the flows waiting for a callback, which every user's
/// connect needs.
const REQUEST_FLOWS_PER_SECOND: u32 = 20;

/// A connect flow for a request that found `subject` not connected: the subject's flow
/// still waiting for its callback when there is one (a client that calls again gets the same
/// URL), else a new one within the requests' budget.
pub async fn start_for_request(
    states: &ConnectStates,
    registry: &super::SubjectRegistry,
    subject: &SubjectKey,
) -> Result<ConnectStart, ConnectStartError> {
    let key = (
        registry.credential.to_string(),
        subject.as_str().to_string(),
    );
    let reusable = states.latest.get(&key).and_then(|entry| {
        let (state, url, until) = entry.value();
        let left = until.saturating_duration_since(Instant::now());
        (states.pending.contains_key(state) && left > Duration::from_secs(30)).then(|| {
            ConnectStart {
                authorize_url: url.clone(),
                lifetime: left,
            }
        })
    });
    if let Some(started) = reusable {
        return Ok(started);
    }
    if !states.take_request_budget() {
        return Err(ConnectStartError::Refused(ConnectRefused::TooMany));
    }
    start(states, registry, subject).await
}

/// A connect flow just started: where to send the user, and for how long it is good.
pub struct ConnectStart {
    pub authorize_url: String,
    pub lifetime: Duration,
}

#[derive(Default)]
pub struct ConnectStates {
    /// The latest flow of each (credential, subject): its state, URL and end.
    latest: DashMap<(String, String), (String, String, Instant)>,
    /// This second's count of flows started by requests.
    request_budget: std::sync::Mutex<Option<(Instant, u32)>>,
    pending: DashMap<String, PendingConnect>,
    /// Where flows are shared, when replicas share the store.
    shared: Option<Arc<dyn FlowStore>>,
}

impl ConnectStates {
    /// Flows kept in this process, and in `store` too when replicas share it.
    pub fn new(store: Arc<dyn TokenStore>) -> ConnectStates {
        ConnectStates {
            shared: store.flow_store(),
            ..ConnectStates::default()
        }
    }

    /// Takes one of this second's flows for requests; `false` when they are used up.
    fn take_request_budget(&self) -> bool {
        let mut budget = self
            .request_budget
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match budget.as_mut() {
            Some((since, used)) if now.duration_since(*since) < Duration::from_secs(1) => {
                *used += 1;
                *used <= REQUEST_FLOWS_PER_SECOND
            }
            _ => {
                *budget = Some((now, 1));
                true
            }
        }
    }

    /// Registers a flow under its `state`.
    pub async fn begin(
        &self,
        credential: &str,
        subject: &SubjectKey,
        redirect_uri: &str,
        state: SecretString,
        verifier: SecretString,
        lifetime: Duration,
    ) -> Result<(), ConnectRefused> {
        if self.pending.len() >= MAX_PENDING {
            self.sweep();
            if self.pending.len() >= MAX_PENDING {
                return Err(ConnectRefused::TooMany);
            }
        }
        let lifetime = lifetime.min(LONGEST);
        if let Some(store) = &self.shared {
            let flow = SharedFlow {
                credential: credential.to_string(),
                subject: subject.as_str().to_string(),
                redirect_uri: redirect_uri.to_string(),
                verifier: verifier.expose_secret().to_string(),
                expires_at_ms: unix_ms(SystemTime::now() + lifetime),
            };
            let flow = serde_json::to_vec(&flow).unwrap_or_default();
            let id = shared_id(state.expose_secret());
            // A flow the store may or may not have taken (a timeout) would be half shared:
            // refused instead.
            if let Err(e) = store
                .put_connect(&id, &flow, lifetime + EXPIRED_GRACE)
                .await
            {
                tracing::warn!(credential, error = %e, "the store did not take the connect flow");
                return Err(ConnectRefused::StoreUnavailable);
            }
        }
        self.pending.insert(
            state.expose_secret().to_string(),
            PendingConnect {
                credential: credential.to_string(),
                subject: subject.clone(),
                redirect_uri: redirect_uri.to_string(),
                verifier,
                expires: Instant::now() + lifetime,
            },
        );
        Ok(())
    }

    /// Takes the flow of `state`, once: a second callback with the same state finds
    /// nothing. `subject`, whom the app relays for, must be the flow's; a flow refused for
    /// its subject is used up all the same.
    pub async fn take(
        &self,
        state: &str,
        subject: Option<&str>,
    ) -> Result<PendingConnect, ConnectRefused> {
        let local = self.pending.remove(state).map(|(_, flow)| flow);
        let flow = match &self.shared {
            None => local,
            // The store decides: a flow it no longer has was used on another replica, and
            // without its answer nothing is finished (fail closed).
            Some(store) => match store.take_connect(&shared_id(state)).await {
                Ok(Some(bytes)) => from_shared(&bytes),
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "the store did not answer for a connect flow");
                    return Err(ConnectRefused::StoreUnavailable);
                }
            },
        };
        let flow = flow.ok_or(ConnectRefused::UnknownState)?;
        if Instant::now() >= flow.expires {
            return Err(ConnectRefused::Expired);
        }
        match subject {
            None => return Err(ConnectRefused::NoSubject),
            Some(s) if s != flow.subject.as_str() => return Err(ConnectRefused::OtherSubject),
            Some(_) => {}
        }
        Ok(flow)
    }

    /// Drops the flows of a credential a reload changed or removed: their code must not
    /// go to what replaced it. (A shared store's flows are refused by the callback's checks
    /// of the flow's own credential, and expire by their time to live.)
    pub fn forget_credential(&self, credential: &str) {
        self.pending.retain(|_, p| p.credential != credential);
    }

    /// Drops flows past their lifetime (called by the registry's sweep); the shared store
    /// drops its own by their time to live.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.pending.retain(|_, p| now < p.expires);
    }
}

/// A flow from the shared store; `None` when it does not parse (then it is refused).
fn from_shared(bytes: &[u8]) -> Option<PendingConnect> {
    let flow: SharedFlow = serde_json::from_slice(bytes).ok()?;
    let left = Duration::from_millis(
        flow.expires_at_ms
            .saturating_sub(unix_ms(SystemTime::now())),
    );
    Some(PendingConnect {
        credential: flow.credential,
        subject: SubjectKey::parse(flow.subject.as_bytes()).ok()?,
        redirect_uri: flow.redirect_uri,
        verifier: SecretString::from(flow.verifier),
        expires: Instant::now() + left,
    })
}

impl super::SubjectRegistry {
    /// Ends a connect flow: redeems the code (with the flow's PKCE verifier and redirect
    /// URI), then stores and publishes the subject's tokens. Nothing is stored when the
    /// provider refuses.
    pub async fn redeem(
        &self,
        flow: PendingConnect,
        code: String,
    ) -> Result<SubjectStatus, crate::oauth::GrantError> {
        use secrecy::ExposeSecret;
        let started = (Instant::now(), SystemTime::now());
        let token = self
            .endpoint()
            .exchange(vec![
                ("grant_type", "authorization_code".to_string()),
                ("code", code),
                ("redirect_uri", flow.redirect_uri.clone()),
                ("code_verifier", flow.verifier.expose_secret().to_string()),
            ])
            .await?;
        let live = self.admit(&flow.subject);
        let span = tracing::info_span!("subject", subject = %self.tagger.tag(&flow.subject));
        async {
            if token.refresh_token.is_none() {
                tracing::warn!(
                    credential = &*self.credential,
                    "the provider issued no refresh token: the subject is served until its access token expires (does the client need the offline_access scope?)"
                );
            }
            crate::token::refresher::take_connected(&live.credential, token, started).await;
            tracing::info!(credential = &*self.credential, "subject connected");
        }
        .instrument(span)
        .await;
        Ok(live_status(&flow.subject, &live))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(states: &ConnectStates, subject: &str) -> String {
        start_for(states, subject, Duration::from_secs(600)).await
    }

    async fn start_for(states: &ConnectStates, subject: &str, lifetime: Duration) -> String {
        let state = format!("state-{subject}");
        let s = SubjectKey::parse(subject.as_bytes()).unwrap();
        states
            .begin(
                "gmail",
                &s,
                "https://app/cb",
                SecretString::from(state.clone()),
                SecretString::from("v".to_string()),
                lifetime,
            )
            .await
            .unwrap();
        state
    }

    #[tokio::test]
    async fn a_state_is_good_for_one_callback_of_its_own_subject_within_its_lifetime() {
        let states = ConnectStates::default();
        let a = start(&states, "alice").await;
        assert_eq!(
            states
                .take(&a, Some("alice"))
                .await
                .unwrap()
                .subject
                .as_str(),
            "alice"
        );
        assert_eq!(
            states.take(&a, None).await.err(),
            Some(ConnectRefused::UnknownState)
        );
        let b = start(&states, "bob").await;
        assert_eq!(
            states.take(&b, Some("alice")).await.err(),
            Some(ConnectRefused::OtherSubject)
        );
        // Refused for its subject, the state is used up all the same.
        assert_eq!(
            states.take(&b, Some("bob")).await.err(),
            Some(ConnectRefused::UnknownState)
        );
        let d = start(&states, "dave").await;
        assert_eq!(
            states.take(&d, None).await.err(),
            Some(ConnectRefused::NoSubject)
        );
        assert_eq!(
            states.take(&d, Some("dave")).await.err(),
            Some(ConnectRefused::UnknownState)
        );
        let c = start_for(&states, "carol", Duration::ZERO).await;
        assert_eq!(
            states.take(&c, None).await.err(),
            Some(ConnectRefused::Expired)
        );
        assert_eq!(
            states.take("forged", None).await.err(),
            Some(ConnectRefused::UnknownState)
        );
    }
}
