//! The token engine's background work, on the control runtime: one refresher per
//! credential that holds a token of its own, and for each per-subject credential the census
//! of its subjects at rest and the sweeps of idle subjects and stale connect flows. It
//! also builds what it runs from the config: grants (with the rotation helper where the
//! store journals rotations), slots, credentials and subject registries.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::credential::Credential;
use super::rotation::{carry_rotations, RotationHelper};
use super::subject::connect::ConnectStates;
use super::subject::{SubjectRegistry, SubjectTagger};
use super::CredentialSlot;
use crate::config::Config;
use crate::events::{EventBus, EventTap};
use crate::grant::Grant;
use crate::metrics::Metrics;
use crate::store::TokenStore;

/// Why a credential could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("credential {name}: {reason}")]
pub struct EngineError {
    pub name: String,
    reason: String,
}

impl EngineError {
    /// What is wrong, without the name.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Every credential's parts, built once at startup.
pub struct TokenEngine {
    /// One per configured credential, in config order (upstreams refer to them by index).
    pub credentials: Vec<Arc<Credential>>,
    /// The registries of per-subject credentials.
    pub subjects: Vec<Arc<SubjectRegistry>>,
    /// Connect flows waiting for their callback.
    pub connects: Arc<ConnectStates>,
    /// Names subjects in logs and events.
    pub tagger: SubjectTagger,
}

impl TokenEngine {
    pub fn build(
        config: &Config,
        store: &Arc<dyn TokenStore>,
        metrics: &Arc<Metrics>,
        events: &Arc<EventBus>,
    ) -> Result<TokenEngine, EngineError> {
        let tagger = SubjectTagger::new(crate::store::sealing_key(&config.store).as_ref());
        // One rotation helper serves every rotating exchange of this sidecar.
        let rotation_helper = config
            .server
            .rotation_helper
            .clone()
            .map(RotationHelper::new);
        let mut credentials = Vec::new();
        let mut subjects = Vec::new();
        for c in &config.credentials {
            let failed = |reason: String| EngineError {
                name: c.name.clone(),
                reason,
            };
            let mut grant = Grant::new(&c.grant).map_err(|e| failed(e.to_string()))?;
            carry_rotations(&mut grant, &**store, rotation_helper.as_ref(), &c.name);
            let registry = SubjectRegistry::new(
                c,
                &grant,
                Arc::clone(store),
                Arc::clone(metrics),
                rotation_helper.clone(),
                tagger.clone(),
            )
            .map_err(|e| failed(e.to_string()))?;
            let slot = CredentialSlot::new(c, Arc::clone(metrics));
            slot.attach_events(EventTap {
                bus: Arc::clone(events),
                subject_tag: None,
            });
            if let Some(endpoint) = grant.endpoint() {
                slot.attach_step_up(endpoint.step_up());
            }
            let credential = Credential::new(slot, grant, Arc::clone(store));
            if let Some(registry) = registry {
                metrics.add_subject_credential(&c.name);
                registry.attach_events(Arc::clone(events));
                registry.set_own(Arc::clone(&credential));
                subjects.push(registry);
            }
            credentials.push(credential);
        }
        Ok(TokenEngine {
            credentials,
            subjects,
            connects: Arc::new(ConnectStates::new(Arc::clone(store))),
            tagger,
        })
    }

    /// The slots, in config order.
    pub fn slots(&self) -> Vec<Arc<CredentialSlot>> {
        self.credentials
            .iter()
            .map(|c| Arc::clone(&c.slot))
            .collect()
    }

    /// The registry of the credential named `name`, if it keeps tokens per subject.
    pub fn registry(&self, name: &str) -> Option<&Arc<SubjectRegistry>> {
        self.subjects.iter().find(|r| &*r.credential == name)
    }

    /// Runs the background work until `shutdown` changes; must run on the control runtime.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for cred in &self.credentials {
            // A per-subject credential has no token of its own: its subjects refresh. Its
            // record keeps the client it registered, which they use: taken before they start.
            if self.registry(&cred.slot.name).is_some() {
                cred.take_stored_registration().await;
                cred.settle_dpop_key();
                continue;
            }
            tasks.push(tokio::spawn(super::refresher::run(
                Arc::clone(cred),
                shutdown.clone(),
            )));
        }
        for registry in &self.subjects {
            registry.attach(tokio::runtime::Handle::current());
            tasks.push(tokio::spawn(census_loop(
                Arc::clone(registry),
                shutdown.clone(),
            )));
            tasks.push(tokio::spawn(sweep_loop(
                Arc::clone(registry),
                Arc::clone(&self.connects),
                shutdown.clone(),
            )));
        }
        for t in tasks {
            if let Err(e) = t.await {
                // A refresher that panicked is a bug; say so loudly rather than go quiet.
                tracing::error!("a token engine task ended abnormally: {e}");
            }
        }
    }
}

/// Counts a per-subject credential's subjects at rest in the store: at start, then every
/// minute, or less often when a census takes long (at most 1 % of the time on it).
async fn census_loop(registry: Arc<SubjectRegistry>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = registry.take_census().await {
            tracing::warn!(credential = &*registry.credential, error = %e, "counting the subjects in the store failed; the counts stay as they were");
        }
        let pause = (started.elapsed() * 100).max(Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Evicts idle subjects and forgets expired connect flows; stops every subject's refresher
/// at shutdown.
async fn sweep_loop(
    registry: Arc<SubjectRegistry>,
    connects: Arc<ConnectStates>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(registry.sweep_interval()) => {
                registry.sweep();
                connects.sweep();
            }
            _ = shutdown.changed() => {
                registry.stop_all();
                return;
            }
        }
    }
}
