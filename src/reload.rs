//! Hot reload: a changed config file (seen within a second, a ConfigMap's symlink swap
//! included), SIGHUP or the handle's `reload` reads the config again, checks it in full with
//! every file it names, and applies it whole, or not at all.
//!
//! ```text
//!  file changed / SIGHUP / handle ─▶ read + check ──invalid──▶ refused (event, metric, log)
//!                                        │
//!          listeners, threads, [store], [events], [telemetry] changed ──▶ restart_required (nothing applied)
//!                                        │
//!      each credential: table unchanged ──▶ kept: its token, lease and refresher
//!                       changed or new  ──▶ built (a failure refuses the whole reload)
//!                                        │
//!      upstreams built ──▶ commit: stop the removed and changed credentials' refreshers
//!                          (and wait for them), start the new ones, swap routes and views
//! ```
//!
//! A request in flight keeps the upstream (and slot) it was routed to: the swap changes what
//! the next request sees. A changed credential starts fresh; it takes over its stored token
//! set only when that set was obtained for the same binding (the store's rule), so a
//! credential that now points elsewhere never sends its old token there.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};

use crate::admin::AdminApp;
use crate::config::{Config, RouteConfig};
use crate::events::{EventBus, EventKind, Happened};
use crate::metrics::{Metrics, ReloadResult};
use crate::proxy::{LiveRoutes, Upstream};
use crate::token::engine::{CredentialParts, TokenEngine};

/// How often the config file is read to see whether it changed: a ConfigMap changes by a
/// symlink swap, which a watch on the file itself would not see.
const POLL: Duration = Duration::from_secs(1);

/// `[server]` keys a reload applies; any other `[server]` change needs a restart.
const LIVE_SERVER_KEYS: [&str; 4] = [
    "admin_token",
    "allowed_hosts",
    "allowed_origins",
    "allow_remote_clients",
];

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Applied; what changed.
    Applied(String),
    /// The file says what runs already.
    Unchanged,
    /// Not applied: the config is invalid, or a part of it could not be built.
    Refused(String),
    /// Not applied: it changes what only a restart can.
    RestartRequired(String),
}

/// Requests for a reload from the handle, each answered with its outcome.
pub type ReloadRequests = mpsc::Receiver<oneshot::Sender<ReloadOutcome>>;

/// The parts a reload swaps, shared with the services that read them.
pub struct Swappable {
    pub routes: Arc<ArcSwap<LiveRoutes>>,
    pub admin: Arc<ArcSwap<AdminApp>>,
    pub probes: Option<Arc<ArcSwap<AdminApp>>>,
}

/// What runs now, as the last applied config built it.
struct Running {
    config: Arc<Config>,
    text: String,
    /// In the config's order.
    credentials: Vec<CredentialParts>,
    upstreams: Arc<Vec<Arc<Upstream>>>,
    /// Stops the running upstreams' name re-resolution.
    resolving: watch::Sender<bool>,
}

pub struct Reloader {
    engine: Arc<TokenEngine>,
    swap: Swappable,
    metrics: Arc<Metrics>,
    events: Arc<EventBus>,
    running: tokio::sync::Mutex<Running>,
    /// The text the last look at the file found, so an edit is taken up once, not every
    /// second (a refused one too).
    seen: Mutex<Option<String>>,
    /// The file was there at start: it is watched. A config built from text (an
    /// embedder's, the demo's) names no file to watch, and one of that name found later is
    /// not taken for it.
    watching: bool,
}

impl Reloader {
    pub fn new(
        config: Arc<Config>,
        engine: Arc<TokenEngine>,
        swap: Swappable,
        (metrics, events): (Arc<Metrics>, Arc<EventBus>),
        upstreams: Arc<Vec<Arc<Upstream>>>,
    ) -> Reloader {
        // The text the running config came from: a config built from text alone (an
        // embedder's, a test's) has no file, and a reload then says so.
        // The text the running config was built from, not the file now: an edit made
        // while it started is an edit to take up.
        let text = config.text.0.to_string();
        let watching = config.source.is_file();
        let credentials = engine.credentials.clone();
        Reloader {
            engine,
            swap,
            metrics,
            events,
            running: tokio::sync::Mutex::new(Running {
                config,
                text: text.clone(),
                credentials,
                upstreams,
                resolving: watch::channel(false).0,
            }),
            seen: Mutex::new(Some(text)),
            watching,
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the file holds other text than the last look found.
    fn file_changed(&self, path: &Path) -> bool {
        match std::fs::read_to_string(path) {
            Ok(text) => self.seen().as_deref() != Some(text.as_str()),
            // Mid-swap, or gone: looked at again next time.
            Err(_) => false,
        }
    }

    /// Reads, checks and applies the config file; says how it went (and tells the
    /// operator: a log line, an event, a metric).
    pub async fn reload(&self) -> ReloadOutcome {
        let mut running = self.running.lock().await;
        let mut public = None;
        let outcome = self.reload_file(&mut running, &mut public).await;
        self.report(&outcome, public);
        outcome
    }

    /// `public`: what the event says instead of the outcome's words, when those may quote
    /// the file (a config error's message can hold a value written in it).
    async fn reload_file(
        &self,
        running: &mut Running,
        public: &mut Option<String>,
    ) -> ReloadOutcome {
        let path = running.config.source.clone();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) => {
                return ReloadOutcome::Refused(format!("cannot read {}: {e}", path.display()))
            }
        };
        *self.seen() = Some(text.clone());
        if text == running.text {
            return ReloadOutcome::Unchanged;
        }
        let mut config = match Config::parse(&path, &text) {
            Ok(config) => config,
            Err(e) => {
                *public = Some(format!(
                    "{}:{}:{}: invalid config at `{}` (the log and `bearerd check` say why)",
                    e.file.display(),
                    e.line,
                    e.column,
                    e.key.as_deref().unwrap_or("-")
                ));
                return ReloadOutcome::Refused(e.to_string());
            }
        };
        // Not a config key: what `bearerd run` set at start stands.
        config.server.rotation_helper = running.config.server.rotation_helper.clone();
        if let Some(why) = needs_restart(running, &config, &text) {
            return ReloadOutcome::RestartRequired(why);
        }
        let plan = match self.build(running, &config, &text) {
            Ok(plan) => plan,
            Err(why) => return ReloadOutcome::Refused(why.to_string()),
        };
        let summary = plan.summary();
        self.commit(running, config, text, plan).await;
        ReloadOutcome::Applied(summary)
    }

    /// Builds what changed, starting nothing: a failure here leaves all as it runs.
    fn build(&self, running: &Running, config: &Config, text: &str) -> Result<Plan, BuildError> {
        let (old, new) = (tables(&running.text), tables(text));
        let table =
            |t: &toml::Table, name: &str| t.get("credentials").and_then(|c| c.get(name)).cloned();
        let mut plan = Plan::default();
        for c in &config.credentials {
            let before = running.credentials.iter().find(|p| p.name() == c.name);
            // Unchanged: the same table, and the same config once lowered (an upstream with
            // `discover = true` lends its URL to its credential's).
            let same = |p: &CredentialParts| {
                table(&old, &c.name) == table(&new, &c.name)
                    && running
                        .config
                        .credential(p.name())
                        .is_some_and(|o| format!("{o:?}") == format!("{c:?}"))
            };
            match before {
                Some(p) if same(p) => plan.credentials.push(p.clone()),
                _ => {
                    let parts = self.engine.build_credential(c)?;
                    match before {
                        Some(_) => plan.changed.push(c.name.clone()),
                        None => plan.added.push(c.name.clone()),
                    }
                    plan.started.push(parts.clone());
                    plan.credentials.push(parts);
                }
            }
        }
        plan.removed = running
            .credentials
            .iter()
            .map(|p| p.name().to_string())
            .filter(|n| config.credential(n).is_none())
            .collect();
        let upstreams = crate::proxy::build_upstreams(config, &plan.credentials, &self.metrics)?;
        for u in &upstreams {
            if let Some(old) = running.upstreams.iter().find(|o| o.name == u.name) {
                u.addr.carry_over(&old.addr);
            }
        }
        plan.upstreams = Arc::new(upstreams);
        let names = |u: &[Arc<Upstream>]| -> BTreeSet<String> {
            u.iter().map(|u| u.name.to_string()).collect()
        };
        plan.upstream_changes = (
            names(&plan.upstreams)
                .difference(&names(&running.upstreams))
                .count(),
            names(&running.upstreams)
                .difference(&names(&plan.upstreams))
                .count(),
        );
        Ok(plan)
    }

    async fn commit(&self, running: &mut Running, config: Config, text: String, plan: Plan) {
        let stopped: Vec<String> = plan.removed.iter().chain(&plan.changed).cloned().collect();
        self.engine.replace(&stopped, &plan.started).await;
        for name in &stopped {
            // A connect flow started for what changed is not finished by what replaced it.
            self.engine.connects.forget_credential(name);
        }
        for name in &plan.removed {
            self.metrics.remove_credential(name);
        }
        for u in running.upstreams.iter() {
            if !plan.upstreams.iter().any(|n| n.name == u.name) {
                self.metrics.remove_upstream(&u.name);
            }
        }
        self.swap.routes.store(Arc::new(LiveRoutes::new(
            &config,
            Arc::clone(&plan.upstreams),
        )));
        let view = |old: &AdminApp| AdminApp {
            credentials: plan
                .credentials
                .iter()
                .map(|p| Arc::clone(&p.credential))
                .collect(),
            subjects: plan
                .credentials
                .iter()
                .filter_map(|p| p.registry.clone())
                .collect(),
            upstreams: Arc::clone(&plan.upstreams),
            admin_token: config.server.admin_token.clone(),
            boundary: crate::proxy::boundary::Boundary::of(&config.server),
            relaxations: config.relaxations(),
            ..old.clone()
        };
        for swap in std::iter::once(&self.swap.admin).chain(&self.swap.probes) {
            let old = swap.load_full();
            swap.store(Arc::new(view(&old)));
        }
        let _ = running.resolving.send(true);
        let resolving = keep_resolved(&plan.upstreams);
        *running = Running {
            config: Arc::new(config),
            text,
            credentials: plan.credentials,
            upstreams: plan.upstreams,
            resolving,
        };
    }

    fn report(&self, outcome: &ReloadOutcome, public: Option<String>) {
        let (result, happened) = match outcome {
            ReloadOutcome::Unchanged => return,
            ReloadOutcome::Applied(what) => {
                tracing::info!(changes = %what, "config reloaded");
                let h = Happened::new(EventKind::ConfigReloaded, "applied").detail(what);
                (ReloadResult::Applied, h)
            }
            ReloadOutcome::Refused(why) => {
                tracing::error!(error = %why, "config reload refused; the running config stays");
                let h = Happened::new(EventKind::ConfigRefused, "refused")
                    .detail(public.unwrap_or_else(|| why.clone()));
                (ReloadResult::Refused, h)
            }
            ReloadOutcome::RestartRequired(why) => {
                tracing::warn!(reason = %why, "config change needs a restart; nothing of it was applied");
                let h = Happened::new(EventKind::ConfigRefused, "restart_required").detail(why);
                (ReloadResult::RestartRequired, h)
            }
        };
        self.metrics
            .config_reloads_total
            .with_label_values(&[result.as_str()])
            .inc();
        self.events.emit(happened);
    }
}

/// Why a valid config could not be built (nothing of it started).
#[derive(Debug, thiserror::Error)]
enum BuildError {
    #[error(transparent)]
    Credential(#[from] crate::token::engine::EngineError),
    #[error(transparent)]
    Upstream(#[from] crate::proxy::UpstreamBuildError),
}

/// What a reload changes, built and not yet started.
#[derive(Default)]
struct Plan {
    /// Every credential of the new config, in its order: kept or new.
    credentials: Vec<CredentialParts>,
    /// The new ones, to start.
    started: Vec<CredentialParts>,
    added: Vec<String>,
    changed: Vec<String>,
    removed: Vec<String>,
    upstreams: Arc<Vec<Arc<Upstream>>>,
    /// Upstreams added and removed.
    upstream_changes: (usize, usize),
}

impl Plan {
    fn summary(&self) -> String {
        let list = |v: &[String]| match v.is_empty() {
            true => "none".to_string(),
            false => v.join(", "),
        };
        format!(
            "credentials added: {}; changed: {}; removed: {}; upstreams: {} ({} added, {} removed)",
            list(&self.added),
            list(&self.changed),
            list(&self.removed),
            self.upstreams.len(),
            self.upstream_changes.0,
            self.upstream_changes.1
        )
    }
}

/// The text as a TOML table (it parsed as a config already; an empty one otherwise).
fn tables(text: &str) -> toml::Table {
    text.parse().unwrap_or_default()
}

/// What of an edit only a restart can apply, if anything: the listeners and threads, the
/// store, the event sinks, and which upstreams have listeners of their own.
fn needs_restart(running: &Running, config: &Config, text: &str) -> Option<String> {
    let (old, new) = (tables(&running.text), tables(text));
    let section = |t: &toml::Table, key: &str| t.get(key).cloned();
    let mut why = Vec::new();
    let server = |t: &toml::Table| {
        let mut s = t
            .get("server")
            .and_then(|s| s.as_table())
            .cloned()
            .unwrap_or_default();
        s.retain(|k, _| !LIVE_SERVER_KEYS.contains(&k));
        s
    };
    let (old_server, new_server) = (server(&old), server(&new));
    let keys: BTreeSet<&String> = old_server.keys().chain(new_server.keys()).collect();
    for k in keys {
        if old_server.get(k) != new_server.get(k) {
            why.push(format!("[server] {k}"));
        }
    }
    for key in ["store", "events", "telemetry"] {
        if section(&old, key) != section(&new, key) {
            why.push(format!("[{key}]"));
        }
    }
    let listeners = |c: &Config| -> BTreeSet<(String, String)> {
        c.upstreams
            .iter()
            .filter_map(|u| match u.route {
                RouteConfig::Listen(a) => Some((u.name.clone(), a.to_string())),
                RouteConfig::Prefix(_) => None,
            })
            .collect()
    };
    if listeners(&running.config) != listeners(config) {
        why.push("an upstream's own `listen`".to_string());
    }
    (!why.is_empty()).then(|| format!("restart required: {} changed", why.join(", ")))
}

/// Re-resolves the upstreams that name a host, until the returned sender says stop.
fn keep_resolved(upstreams: &[Arc<Upstream>]) -> watch::Sender<bool> {
    let (stop, stopped) = watch::channel(false);
    for u in upstreams.iter().filter(|u| u.addr.needs_resolution()) {
        tokio::spawn(Arc::clone(u).keep_resolved(stopped.clone()));
    }
    stop
}

/// Reloads on a change of the config file, on SIGHUP and on the handle's requests, until
/// `shutdown` changes; keeps the upstreams' names resolved meanwhile.
pub async fn watch(
    reloader: Arc<Reloader>,
    mut requests: ReloadRequests,
    mut shutdown: watch::Receiver<bool>,
) {
    let path = {
        let mut running = reloader.running.lock().await;
        running.resolving = keep_resolved(&running.upstreams);
        running.config.source.clone()
    };
    // SIGHUP would otherwise end the process (its default): taken for a reload instead.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut handle_open = true;
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick(), if reloader.watching => {
                if reloader.file_changed(&path) {
                    reloader.reload().await;
                }
            }
            Some(()) = hup => {
                tracing::info!("SIGHUP: reloading the config");
                reloader.reload().await;
            }
            r = requests.recv(), if handle_open => match r {
                Some(reply) => {
                    let _ = reply.send(reloader.reload().await);
                }
                None => handle_open = false,
            },
            _ = shutdown.changed() => {
                let _ = reloader.running.lock().await.resolving.send(true);
                return;
            }
        }
    }
}
