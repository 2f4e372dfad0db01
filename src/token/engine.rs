//! The token engine's background work, on the control runtime: one refresher per
//! credential that holds a token of its own, and for each per-subject credential the census
//! of its subjects at rest and the sweeps of idle subjects and stale connect flows. It
//! also builds what it runs from the config: grants (with the rotation helper where the
//! store journals rotations), slots, credentials and subject registries.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

use super::credential::Credential;
use super::rotation::{carry_rotations, RotationHelper};
use super::subject::connect::ConnectStates;
use super::subject::{SubjectRegistry, SubjectTagger};
use super::CredentialSlot;
use crate::config::{Config, CredentialConfig};
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

/// One credential's running parts: its credential (slot, grant, store) and, when it keeps
/// a token per subject, its registry.
#[derive(Clone)]
pub struct CredentialParts {
    pub credential: Arc<Credential>,
    pub registry: Option<Arc<SubjectRegistry>>,
}

impl CredentialParts {
    pub fn name(&self) -> &str {
        &self.credential.slot.name
    }
}

/// What every credential is built with, at startup and at each reload.
struct CredentialBuilder {
    store: Arc<dyn TokenStore>,
    metrics: Arc<Metrics>,
    events: Arc<EventBus>,
    tagger: SubjectTagger,
    /// One rotation helper serves every rotating exchange of this sidecar.
    rotation_helper: Option<Arc<RotationHelper>>,
}

impl CredentialBuilder {
    fn build(&self, c: &CredentialConfig) -> Result<CredentialParts, EngineError> {
        let failed = |reason: String| EngineError {
            name: c.name.clone(),
            reason,
        };
        let store = &self.store;
        let mut grant = Grant::new(&c.grant).map_err(|e| failed(e.to_string()))?;
        carry_rotations(&mut grant, &**store, self.rotation_helper.as_ref(), &c.name);
        let registry = SubjectRegistry::new(
            c,
            &grant,
            Arc::clone(store),
            Arc::clone(&self.metrics),
            self.rotation_helper.clone(),
            self.tagger.clone(),
        )
        .map_err(|e| failed(e.to_string()))?;
        self.metrics.add_credential(&c.name);
        let slot = CredentialSlot::new(c, Arc::clone(&self.metrics));
        slot.attach_events(EventTap {
            bus: Arc::clone(&self.events),
            subject_tag: None,
        });
        if let Some(endpoint) = grant.endpoint() {
            slot.attach_step_up(endpoint.step_up());
        }
        let credential = Credential::new(slot, grant, Arc::clone(store));
        if let Some(registry) = &registry {
            self.metrics.add_subject_credential(&c.name);
            registry.attach_events(Arc::clone(&self.events));
            registry.set_own(Arc::clone(&credential));
        }
        Ok(CredentialParts {
            credential,
            registry,
        })
    }
}

/// A credential's background tasks, stopped together.
struct Tasks {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

/// The longest a stopped credential's tasks are waited for (an attempt in flight ends
/// first: its token request has a timeout of its own).
const STOP_WAIT: Duration = Duration::from_secs(60);

/// Every credential's parts, built at startup, and their background tasks, which a reload
/// stops and starts one credential at a time.
pub struct TokenEngine {
    /// One per configured credential at startup, in config order.
    pub credentials: Vec<CredentialParts>,
    /// Connect flows waiting for their callback.
    pub connects: Arc<ConnectStates>,
    /// Names subjects in logs and events.
    pub tagger: SubjectTagger,
    builder: CredentialBuilder,
    /// The control runtime, once the engine runs there.
    runtime: OnceLock<tokio::runtime::Handle>,
    tasks: Mutex<HashMap<String, Tasks>>,
    /// Set (under the `tasks` lock) once shutdown began: a reload then starts nothing
    /// that the shutdown would not stop.
    stopping: std::sync::atomic::AtomicBool,
}

impl TokenEngine {
    pub fn build(
        config: &Config,
        store: &Arc<dyn TokenStore>,
        metrics: &Arc<Metrics>,
        events: &Arc<EventBus>,
    ) -> Result<TokenEngine, EngineError> {
        let tagger = SubjectTagger::new(crate::store::sealing_key(&config.store).as_ref());
        let builder = CredentialBuilder {
            store: Arc::clone(store),
            metrics: Arc::clone(metrics),
            events: Arc::clone(events),
            tagger: tagger.clone(),
            rotation_helper: config
                .server
                .rotation_helper
                .clone()
                .map(RotationHelper::new),
        };
        let credentials = config
            .credentials
            .iter()
            .map(|c| builder.build(c))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenEngine {
            credentials,
            connects: Arc::new(ConnectStates::new(Arc::clone(store))),
            tagger,
            builder,
            runtime: OnceLock::new(),
            tasks: Mutex::new(HashMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A credential's parts for a reload, not started yet.
    pub fn build_credential(&self, c: &CredentialConfig) -> Result<CredentialParts, EngineError> {
        self.builder.build(c)
    }

    /// The registries of the credentials built at startup.
    pub fn registries(&self) -> Vec<Arc<SubjectRegistry>> {
        self.credentials
            .iter()
            .filter_map(|p| p.registry.clone())
            .collect()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tasks>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a credential's background work on the control runtime: its refresher, or for
    /// a per-subject credential its census and sweeps.
    fn start(&self, parts: &CredentialParts, runtime: &tokio::runtime::Handle) {
        let mut tasks = self.tasks();
        if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let cred = Arc::clone(&parts.credential);
        let handles = match &parts.registry {
            // A per-subject credential has no token of its own: its subjects refresh. Its
            // record keeps the client it registered, which they use: taken before they start.
            Some(registry) => {
                // Subjects admitted from now on refresh on the control runtime.
                registry.attach(runtime.clone());
                let (registry, connects) = (Arc::clone(registry), Arc::clone(&self.connects));
                let census_stop = stopped.clone();
                vec![runtime.spawn(async move {
                    cred.take_stored_registration().await;
                    cred.settle_dpop_key();
                    tokio::join!(
                        census_loop(Arc::clone(&registry), census_stop),
                        sweep_loop(registry, connects, stopped)
                    );
                })]
            }
            None => vec![runtime.spawn(super::refresher::run(cred, stopped))],
        };
        tasks.insert(parts.name().to_string(), Tasks { stop, handles });
    }

    /// Stops a credential's background work and waits for it (an attempt in flight ends
    /// first), so a credential that replaces it never refreshes alongside it.
    async fn stop(&self, name: &str) {
        let Some(tasks) = self.tasks().remove(name) else {
            return;
        };
        let _ = tasks.stop.send(true);
        for handle in tasks.handles {
            match tokio::time::timeout(STOP_WAIT, handle).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(
                    credential = name,
                    "a token engine task ended abnormally: {e}"
                ),
                Err(_) => tracing::warn!(
                    credential = name,
                    "a stopped credential's task is still running after a minute"
                ),
            }
        }
    }

    /// A reload's change: stops `stopped` (removed or replaced credentials) and then starts
    /// `started`. Needs the engine to run.
    pub async fn replace(&self, stopped: &[String], started: &[CredentialParts]) {
        for name in stopped {
            self.stop(name).await;
        }
        let Some(runtime) = self.runtime.get() else {
            return;
        };
        for parts in started {
            self.start(parts, runtime);
        }
    }

    /// Runs the background work until `shutdown` changes; must run on the control runtime.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let runtime = self
            .runtime
            .get_or_init(tokio::runtime::Handle::current)
            .clone();
        for parts in &self.credentials {
            self.start(parts, &runtime);
        }
        let _ = shutdown.changed().await;
        let names: Vec<String> = {
            let tasks = self.tasks();
            self.stopping
                .store(true, std::sync::atomic::Ordering::SeqCst);
            for t in tasks.values() {
                let _ = t.stop.send(true);
            }
            tasks.keys().cloned().collect()
        };
        for name in names {
            self.stop(&name).await;
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
