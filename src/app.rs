//! The composition root: [`Sidecar::start`] wires the rooms into Pingora services (the
//! proxy listeners, the admin and probes listeners, the control service that runs the token
//! engine) and waits until they listen. Nothing else lives here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config::{Config, RouteConfig};
use crate::metrics::Metrics;
use crate::proxy::{self, BearerProxy, Routing};
use crate::token::engine::TokenEngine;
use crate::token::subject::SubjectRegistry;
use crate::token::CredentialSlot;
use crate::{admin, events, reload, store};
use arc_swap::ArcSwap;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        addr: SocketAddr,
        what: String,
        source: std::io::Error,
    },
    #[error("credential {name}: {message}")]
    Credential { name: String, message: String },
    #[error("upstream {name}: {message}")]
    Upstream { name: String, message: String },
    #[error("{0}")]
    Store(#[from] store::StoreError),
    #[error("the proxy did not start listening within 10 s")]
    NotListening,
    #[error("{0}")]
    Webhook(#[from] events::webhook::WebhookError),
    #[error("{0}")]
    Audit(#[from] events::audit::AuditError),
}

/// The running parts shared by the services, and by tests through the handle.
pub struct Shared {
    /// The admin listener's view of the config in force (a reload swaps it).
    pub admin: Arc<ArcSwap<admin::AdminApp>>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<events::EventBus>,
    /// Asks the control service to reload the config file now.
    reload: tokio::sync::mpsc::Sender<tokio::sync::oneshot::Sender<reload::ReloadOutcome>>,
}

pub struct Sidecar;

/// A running sidecar. Dropping it shuts the sidecar down (fast).
pub struct SidecarHandle {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<ShutdownSignal>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SidecarHandle {
    pub fn credential(&self, name: &str) -> Option<Arc<CredentialSlot>> {
        let admin = self.shared.admin.load();
        admin
            .credentials
            .iter()
            .find(|c| &*c.slot.name == name)
            .map(|c| Arc::clone(&c.slot))
    }

    /// The subject registry of a per-subject credential.
    pub fn subjects(&self, name: &str) -> Option<Arc<SubjectRegistry>> {
        let admin = self.shared.admin.load();
        admin
            .subjects
            .iter()
            .find(|r| &*r.credential == name)
            .cloned()
    }

    /// Reloads the config file now, as SIGHUP does, and says how it went.
    pub async fn reload(&self) -> reload::ReloadOutcome {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.shared.reload.send(tx).await.is_err() {
            return reload::ReloadOutcome::Refused("the sidecar is stopping".into());
        }
        rx.await
            .unwrap_or_else(|_| reload::ReloadOutcome::Refused("the sidecar is stopping".into()))
    }

    /// Stops the sidecar and waits for its threads.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(ShutdownSignal::FastShutdown);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Blocks until the server exits (for the binary).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stop.take();
    }
}

impl Drop for SidecarHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Shutdown from the handle, or from Unix signals for the binary. A graceful stop
/// (SIGTERM) waits here for the requests in flight, at most `grace`, and then lets Pingora
/// stop at once: Pingora's own grace period is a fixed sleep, which an idle sidecar (the
/// app has exited before it) would pay on every pod termination.
struct HandleShutdown {
    stop: tokio::sync::Mutex<Option<tokio::sync::oneshot::Receiver<ShutdownSignal>>>,
    in_flight: proxy::InFlight,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for HandleShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let signal = self.first_signal().await;
        if matches!(signal, ShutdownSignal::GracefulTerminate) {
            let deadline = Instant::now() + self.grace;
            let waiting = self.in_flight.count();
            tracing::info!(
                in_flight = waiting,
                grace_s = self.grace.as_secs_f64(),
                "stopping: waiting for the requests in flight"
            );
            // A second signal (SIGINT, or another SIGTERM) stops at once.
            let second = pingora::server::UnixShutdownSignalWatch.recv();
            tokio::pin!(second);
            while self.in_flight.count() > 0 && Instant::now() < deadline {
                tokio::select! {
                    _ = &mut second => {
                        tracing::warn!("stopping now: a second signal arrived while requests were in flight");
                        return ShutdownSignal::FastShutdown;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            let left = self.in_flight.count();
            if left > 0 {
                tracing::warn!(
                    in_flight = left,
                    "stopping: the grace period ended with requests in flight"
                );
            }
        }
        signal
    }
}

impl HandleShutdown {
    async fn first_signal(&self) -> ShutdownSignal {
        let rx = self.stop.lock().await.take();
        let from_handle = async {
            match rx {
                Some(rx) => rx.await.unwrap_or(ShutdownSignal::FastShutdown),
                None => std::future::pending().await,
            }
        };
        let from_signals = pingora::server::UnixShutdownSignalWatch.recv();
        tokio::select! {
            s = from_handle => s,
            s = from_signals => s,
        }
    }
}

/// The control service: the token engine, upstream re-resolution and the event sinks
/// (webhook deliveries, the audit writer, the store's health watch), on their own runtime
/// so token traffic never competes with request threads.
struct ControlService {
    engine: Arc<TokenEngine>,
    reloader: Arc<reload::Reloader>,
    reloads: std::sync::Mutex<Option<reload::ReloadRequests>>,
    events: Arc<events::EventBus>,
    store: Arc<dyn store::TokenStore>,
    /// Taken when the service starts (it starts once).
    sinks: std::sync::Mutex<EventSinks>,
}

#[derive(Default)]
struct EventSinks {
    deliveries: Vec<events::webhook::Delivery>,
    audit: Option<events::audit::AuditWriter>,
    traces: Option<events::trace::Exporter>,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut resolving = Vec::new();
        let reloads = self
            .reloads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(reloads) = reloads {
            resolving.push(tokio::spawn(reload::watch(
                Arc::clone(&self.reloader),
                reloads,
                shutdown.clone(),
            )));
        }
        let sinks = std::mem::take(&mut *self.sinks.lock().unwrap_or_else(|p| p.into_inner()));
        for d in sinks.deliveries {
            resolving.push(tokio::spawn(d.run(shutdown.clone())));
        }
        if let Some(w) = sinks.audit {
            resolving.push(tokio::spawn(w.run(shutdown.clone())));
        }
        if let Some(t) = sinks.traces {
            resolving.push(tokio::spawn(t.run(shutdown.clone())));
        }
        let store = Arc::clone(&self.store);
        resolving.push(tokio::spawn(events::watch_store(
            Arc::clone(&self.events),
            move || {
                let h = store.health();
                (h.up, h.last_error)
            },
            shutdown.clone(),
        )));
        self.engine.run(shutdown).await;
        for t in resolving {
            let _ = t.await;
        }
    }
}

impl Sidecar {
    /// Starts every service and returns once the proxy accepts connections.
    pub fn start(config: Config) -> Result<SidecarHandle, StartError> {
        check_listeners(&config)?;
        let metrics = Arc::new(Metrics::new(
            config.credentials.iter().map(|c| c.name.as_str()),
            config.upstreams.iter().map(|u| u.name.as_str()),
        ));
        let store = open_store(&config, &metrics)?;
        let (events, sinks, audit) = event_sinks(&config, &metrics)?;
        let engine = TokenEngine::build(&config, &store, &metrics, &events).map_err(|e| {
            StartError::Credential {
                name: e.name.clone(),
                message: e.reason().to_string(),
            }
        })?;
        let engine = Arc::new(engine);
        let upstreams =
            proxy::build_upstreams(&config, &engine.credentials, &metrics).map_err(|e| {
                StartError::Upstream {
                    name: e.name.clone(),
                    message: e.source.to_string(),
                }
            })?;
        let upstreams = Arc::new(upstreams);
        let routes = Arc::new(ArcSwap::from_pointee(proxy::LiveRoutes::new(
            &config,
            Arc::clone(&upstreams),
        )));
        let mut server = Server::new_with_opt_and_conf(None, server_conf(&config));
        server.bootstrap();
        let in_flight = proxy::InFlight::default();
        add_proxies(
            &mut server,
            &config,
            (&routes, &metrics, &in_flight),
            (&engine.connects, audit, events.tracer().cloned()),
        );
        let admin_app = admin::AdminApp {
            scope: admin::AdminScope::Full,
            credentials: engine
                .credentials
                .iter()
                .map(|p| Arc::clone(&p.credential))
                .collect(),
            admin_token: config.server.admin_token.clone(),
            upstreams: Arc::clone(&upstreams),
            metrics: Arc::clone(&metrics),
            store: Arc::clone(&store),
            subjects: engine.registries(),
            connects: Arc::clone(&engine.connects),
            boundary: proxy::boundary::Boundary::of(&config.server),
            relaxations: config.relaxations(),
            events: Arc::clone(&events),
            tagger: engine.tagger.clone(),
            console: Arc::default(),
        };
        let swap = add_admin(&mut server, &config, admin_app, routes);
        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        let shared = Arc::new(Shared {
            admin: Arc::clone(&swap.admin),
            metrics: Arc::clone(&metrics),
            events: Arc::clone(&events),
            reload: reload_tx,
        });
        let reloader = Arc::new(reload::Reloader::new(
            Arc::new(config.clone()),
            Arc::clone(&engine),
            swap,
            (Arc::clone(&metrics), Arc::clone(&events)),
            upstreams,
        ));
        let control = ControlService {
            engine,
            reloader,
            reloads: std::sync::Mutex::new(Some(reload_rx)),
            events,
            store,
            sinks: std::sync::Mutex::new(sinks),
        };
        let mut control = background_service("control", control);
        // Token requests are few; one thread keeps them off the request threads.
        control.threads = Some(1);
        server.add_service(control);
        run(server, &config, shared, in_flight)
    }
}

/// The token store, with the rotations a helper of the previous run journaled applied.
fn open_store(
    config: &Config,
    metrics: &Metrics,
) -> Result<Arc<dyn store::TokenStore>, StartError> {
    let bindings: Vec<(&str, String)> = config
        .credentials
        .iter()
        .map(|c| (c.name.as_str(), c.binding()))
        .collect();
    let opened = store::open(&config.store, &bindings)?;
    // Before anything reads the store: rotations a helper of the previous run journaled.
    let names: Vec<&str> = bindings.iter().map(|(name, _)| *name).collect();
    for record in opened.recover_journals(&names, crate::token::rotation::policy::after_journal)? {
        tracing::info!(
            record = %store::RecordKey::parse(&record).describe(),
            "applied a refresh token rotated by the previous run's helper"
        );
    }
    Ok(Arc::new(store::metered::MeteredStore::new(
        opened,
        metrics.store_operations_total.clone(),
    )))
}

/// The event bus and its sinks (webhooks, the audit file), ready to run; the audit log's
/// end the proxy writes to.
fn event_sinks(
    config: &Config,
    metrics: &Metrics,
) -> Result<
    (
        Arc<events::EventBus>,
        EventSinks,
        Option<events::audit::AuditLog>,
    ),
    StartError,
> {
    let events = events::EventBus::new(metrics.events_dropped_total.clone());
    let mut sinks = EventSinks::default();
    for w in &config.events.webhooks {
        let results = metrics.webhook_deliveries_total.clone();
        sinks
            .deliveries
            .push(events::webhook::attach(&events, w, results)?);
    }
    let audit = match &config.events.audit_file {
        Some(path) => {
            let (log, writer) = events::audit::open(path, Arc::clone(&events))?;
            sinks.audit = Some(writer);
            Some(log)
        }
        None => None,
    };
    if let Some(exporter) =
        events::trace::Tracer::exporter(&config.telemetry, metrics.spans_total.clone())
    {
        events.attach_tracer(exporter.tracer());
        sinks.traces = Some(exporter);
    }
    Ok((events, sinks, audit))
}

/// Bind-tests every address first: Pingora exits the process on a bind failure, and this
/// gives the user a clear message instead.
fn check_listeners(config: &Config) -> Result<(), StartError> {
    let mut addrs = vec![
        (
            config.server.proxy_listen,
            "server.proxy_listen".to_string(),
        ),
        (
            config.server.admin_listen,
            "server.admin_listen".to_string(),
        ),
    ];
    if let Some(a) = config.server.metrics_listen {
        addrs.push((a, "server.metrics_listen".to_string()));
    }
    for u in &config.upstreams {
        if let RouteConfig::Listen(a) = u.route {
            addrs.push((a, format!("upstreams.{}.listen", u.name)));
        }
    }
    for (addr, what) in addrs {
        TcpListener::bind(addr).map_err(|source| StartError::Listen { addr, what, source })?;
    }
    Ok(())
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        // The wait for requests in flight is bearerd's (HandleShutdown): Pingora's grace
        // period would be a fixed sleep.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// The main proxy listener (prefix routes) and one listener per upstream with its own port.
fn add_proxies(
    server: &mut Server,
    config: &Config,
    (routes, metrics, in_flight): (
        &Arc<ArcSwap<proxy::LiveRoutes>>,
        &Arc<Metrics>,
        &proxy::InFlight,
    ),
    (connects, audit, tracer): (
        &Arc<crate::token::subject::connect::ConnectStates>,
        Option<events::audit::AuditLog>,
        Option<Arc<events::trace::Tracer>>,
    ),
) {
    let server_conf = Arc::clone(&server.configuration);
    let proxy_for = |routing: Routing| BearerProxy {
        routing,
        in_flight: in_flight.clone(),
        live: Arc::clone(routes),
        metrics: Arc::clone(metrics),
        access_log: config.server.access_log,
        max_request_header_bytes: config.server.max_request_header_bytes,
        connects: Arc::clone(connects),
        audit: audit.clone(),
        tracer: tracer.clone(),
    };
    let mut main = pingora::proxy::http_proxy_service_with_name(
        &server_conf,
        proxy_for(Routing::Prefix),
        "proxy",
    );
    main.add_tcp(&config.server.proxy_listen.to_string());
    server.add_service(main);
    for u in &config.upstreams {
        if let RouteConfig::Listen(a) = u.route {
            let mut svc = pingora::proxy::http_proxy_service_with_name(
                &server_conf,
                proxy_for(Routing::Dedicated(Arc::from(u.name.as_str()))),
                &format!("proxy {}", u.name),
            );
            svc.add_tcp(&a.to_string());
            server.add_service(svc);
        }
    }
}

/// The admin listener, and the probes listener (`metrics_listen`) when there is one; what a
/// reload swaps.
fn add_admin(
    server: &mut Server,
    config: &Config,
    admin_app: admin::AdminApp,
    routes: Arc<ArcSwap<proxy::LiveRoutes>>,
) -> reload::Swappable {
    let probes = config.server.metrics_listen.map(|addr| {
        let probes = Arc::new(ArcSwap::from_pointee(admin::AdminApp {
            scope: admin::AdminScope::Probes,
            ..admin_app.clone()
        }));
        let mut svc = Service::new(
            "metrics".to_string(),
            admin::AdminService(Arc::clone(&probes)),
        );
        svc.add_tcp(&addr.to_string());
        server.add_service(svc);
        probes
    });
    let admin_app = Arc::new(ArcSwap::from_pointee(admin_app));
    let mut admin = Service::new(
        "admin".to_string(),
        admin::AdminService(Arc::clone(&admin_app)),
    );
    admin.add_tcp(&config.server.admin_listen.to_string());
    server.add_service(admin);
    reload::Swappable {
        routes,
        admin: admin_app,
        probes,
    }
}

/// Runs the server on its own thread and returns once the proxy and admin listeners accept
/// connections.
fn run(
    server: Server,
    config: &Config,
    shared: Arc<Shared>,
    in_flight: proxy::InFlight,
) -> Result<SidecarHandle, StartError> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let watch = HandleShutdown {
        stop: tokio::sync::Mutex::new(Some(stop_rx)),
        in_flight,
        grace: config.server.shutdown_grace,
    };
    let thread = std::thread::Builder::new()
        .name("bearerd-server".into())
        .spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(watch),
            })
        })
        .map_err(|source| StartError::Listen {
            addr: config.server.proxy_listen,
            what: "server thread".into(),
            source,
        })?;
    let handle = SidecarHandle {
        proxy_addr: config.server.proxy_listen,
        admin_addr: config.server.admin_listen,
        shared,
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let listening = |addr| TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_ok();
    while !listening(&config.server.proxy_listen) || !listening(&config.server.admin_listen) {
        if Instant::now() > deadline {
            return Err(StartError::NotListening);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(handle)
}
