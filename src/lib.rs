//! bearerd: a sidecar reverse proxy that injects fresh OAuth2 bearer tokens.
//!
//! [`Sidecar::start`] builds the whole thing from a validated [`config::Config`]: the proxy
//! listeners (Pingora), the admin listener and the control service that runs one refresher
//! per credential. The binary and the black-box tests both start it this way.

pub mod admin;
pub mod allocator;
pub mod api;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod inject;
pub mod logging;
pub mod material;
pub mod metrics;
pub mod oauth;
pub mod proxy;
pub mod store;
pub mod token;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use config::{Config, RouteConfig};
use metrics::Metrics;
use proxy::{BearerProxy, Routing, Upstream};
use token::credential::Credential;
use token::grant::Grant;
use token::subject::connect::ConnectStates;
use token::subject::SubjectRegistry;
use token::CredentialSlot;

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
}

/// The running parts shared by the services, and by tests through the handle.
pub struct Shared {
    pub credentials: Vec<Arc<CredentialSlot>>,
    /// The registries of per-subject credentials.
    pub subjects: Vec<Arc<SubjectRegistry>>,
    pub upstreams: Arc<Vec<Arc<Upstream>>>,
    pub metrics: Arc<Metrics>,
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
    pub fn credential(&self, name: &str) -> Option<&Arc<CredentialSlot>> {
        self.shared.credentials.iter().find(|c| &*c.name == name)
    }

    /// The subject registry of a per-subject credential.
    pub fn subjects(&self, name: &str) -> Option<&Arc<SubjectRegistry>> {
        self.shared.subjects.iter().find(|r| &*r.credential == name)
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

/// The control service: the handles and upstream re-resolution, on their own runtime so
/// token traffic never competes with request threads.
struct ControlService {
    credentials: Vec<Arc<Credential>>,
    subjects: Vec<Arc<SubjectRegistry>>,
    connects: Arc<ConnectStates>,
    upstreams: Arc<Vec<Arc<Upstream>>>,
}

/// Counts a per-subject credential's subjects at rest in the store: at start, then every
/// minute, or less often when a census takes long (at most 1 % of the time on it).
async fn census_loop(registry: Arc<SubjectRegistry>, mut shutdown: ShutdownWatch) {
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = registry.take_census().await {
            tracing::warn!(credential = &*registry.credential, error = %e, "counting the subjects in the store failed; the counts stay as they were");
        }
        let pause = (started.elapsed() * 100).max(std::time::Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let mut tasks = Vec::new();
        for cred in self.credentials.iter() {
            // A per-subject credential has no token of its own: its subjects refresh.
            if self.subjects.iter().any(|r| r.credential == cred.slot.name) {
                continue;
            }
            tasks.push(tokio::spawn(token::refresher::run(
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
            let registry = Arc::clone(registry);
            let connects = Arc::clone(&self.connects);
            let mut shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
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
            }));
        }
        for up in self.upstreams.iter().filter(|u| u.addr.needs_resolution()) {
            let up = Arc::clone(up);
            let mut shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Err(e) = up.addr.resolve().await {
                        tracing::warn!(upstream = &*up.name, "{e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(proxy::resolve::RERESOLVE_EVERY) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }));
        }
        for t in tasks {
            if let Err(e) = t.await {
                // A refresher that panicked is a bug; say so loudly rather than go quiet.
                tracing::error!("a control task ended abnormally: {e}");
            }
        }
    }
}

impl Sidecar {
    /// Starts every service and returns once the proxy accepts connections.
    pub fn start(config: Config) -> Result<SidecarHandle, StartError> {
        // Bind-test every address first: Pingora exits the process on a bind failure, and
        // this gives the user a clear message instead.
        let mut addrs = vec![(
            config.server.proxy_listen,
            "server.proxy_listen".to_string(),
        )];
        addrs.push((
            config.server.admin_listen,
            "server.admin_listen".to_string(),
        ));
        if let Some(a) = config.server.metrics_listen {
            addrs.push((a, "server.metrics_listen".to_string()));
        }
        for u in &config.upstreams {
            if let RouteConfig::Listen(a) = u.route {
                addrs.push((a, format!("upstreams.{}.listen", u.name)));
            }
        }
        for (addr, what) in &addrs {
            TcpListener::bind(addr).map_err(|source| StartError::Listen {
                addr: *addr,
                what: what.clone(),
                source,
            })?;
        }

        let bindings: Vec<(&str, String)> = config
            .credentials
            .iter()
            .map(|c| (c.name.as_str(), c.binding()))
            .collect();
        let metrics = Arc::new(Metrics::new(
            config.credentials.iter().map(|c| c.name.as_str()),
            config.upstreams.iter().map(|u| u.name.as_str()),
        ));
        let store: Arc<dyn store::TokenStore> = Arc::new(store::metered::MeteredStore::new(
            store::open(&config.store, &bindings)?,
            metrics.store_operations_total.clone(),
        ));
        let mut handles = Vec::new();
        let mut credentials = Vec::new();
        let mut subjects = Vec::new();
        let tagger = token::subject::SubjectTagger::new(store::sealing_key(&config.store).as_ref());
        // One rotation helper serves every rotating exchange of this sidecar.
        let rotation_helper = config
            .server
            .rotation_helper
            .clone()
            .map(token::rotation::RotationHelper::new);
        for c in &config.credentials {
            let mut grant = Grant::new(&c.grant).map_err(|e| StartError::Credential {
                name: c.name.clone(),
                message: e.to_string(),
            })?;
            if let (Some(journal), Some(helper)) = (store.helper_journal(&c.name), &rotation_helper)
            {
                grant.make_rotation_durable(token::rotation::DurableRotation {
                    helper: Arc::clone(helper),
                    journal,
                    credential: c.name.clone(),
                });
            }
            let registry = SubjectRegistry::new(
                c,
                &grant,
                Arc::clone(&store),
                Arc::clone(&metrics),
                rotation_helper.clone(),
                tagger.clone(),
            )
            .map_err(|e| StartError::Credential {
                name: c.name.clone(),
                message: e.to_string(),
            })?;
            if let Some(registry) = registry {
                metrics.add_subject_credential(&c.name);
                subjects.push(registry);
            }
            let slot = CredentialSlot::new(c, Arc::clone(&metrics));
            credentials.push(Arc::clone(&slot));
            handles.push(Credential::new(slot, grant, Arc::clone(&store)));
        }
        let mut upstreams = Vec::new();
        for u in &config.upstreams {
            let slot = Arc::clone(&credentials[u.credential]);
            let registry = subjects.iter().find(|r| r.credential == slot.name).cloned();
            let up = Upstream::new(u.clone(), slot, registry, &metrics).map_err(|e| {
                StartError::Upstream {
                    name: u.name.clone(),
                    message: e.to_string(),
                }
            })?;
            upstreams.push(Arc::new(up));
        }
        let upstreams = Arc::new(upstreams);
        let shared = Arc::new(Shared {
            credentials,
            subjects: subjects.clone(),
            upstreams: Arc::clone(&upstreams),
            metrics: Arc::clone(&metrics),
        });

        let conf = ServerConf {
            threads: config.server.threads,
            work_stealing: config.server.work_stealing,
            // The wait for requests in flight is bearerd's (HandleShutdown): Pingora's grace
            // period would be a fixed sleep.
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(1),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let server_conf = Arc::clone(&server.configuration);

        let in_flight = proxy::InFlight::default();
        let proxy_for = |routing: Routing| BearerProxy {
            routing,
            in_flight: in_flight.clone(),
            upstreams: Arc::clone(&upstreams),
            metrics: Arc::clone(&metrics),
            access_log: config.server.access_log,
            max_request_header_bytes: config.server.max_request_header_bytes,
        };
        let prefixes: Vec<(String, usize)> = config
            .upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| match &u.route {
                RouteConfig::Prefix(p) => Some((p.clone(), i)),
                RouteConfig::Listen(_) => None,
            })
            .collect();
        let mut main = pingora::proxy::http_proxy_service_with_name(
            &server_conf,
            proxy_for(Routing::Prefix(proxy::route::RouteTable::new(prefixes))),
            "proxy",
        );
        main.add_tcp(&config.server.proxy_listen.to_string());
        server.add_service(main);
        for (i, u) in config.upstreams.iter().enumerate() {
            if let RouteConfig::Listen(a) = u.route {
                let mut svc = pingora::proxy::http_proxy_service_with_name(
                    &server_conf,
                    proxy_for(Routing::Dedicated(i)),
                    &format!("proxy {}", u.name),
                );
                svc.add_tcp(&a.to_string());
                server.add_service(svc);
            }
        }
        let connects = Arc::new(ConnectStates::new(Arc::clone(&store)));
        let admin_app = admin::AdminApp {
            scope: admin::AdminScope::Full,
            credentials: handles.clone(),
            admin_token: config.server.admin_token.clone(),
            upstreams: Arc::clone(&upstreams),
            metrics: Arc::clone(&metrics),
            store: Arc::clone(&store),
            subjects: subjects.clone(),
            connects: Arc::clone(&connects),
        };
        if let Some(addr) = config.server.metrics_listen {
            let probes = admin::AdminApp {
                scope: admin::AdminScope::Probes,
                ..admin_app.clone()
            };
            let mut svc = Service::new("metrics".to_string(), probes);
            svc.add_tcp(&addr.to_string());
            server.add_service(svc);
        }
        let mut admin = Service::new("admin".to_string(), admin_app);
        admin.add_tcp(&config.server.admin_listen.to_string());
        server.add_service(admin);
        let mut control = background_service(
            "control",
            ControlService {
                credentials: handles.clone(),
                subjects,
                connects,
                upstreams: Arc::clone(&upstreams),
            },
        );
        // Token requests are few; one thread keeps them off the request threads.
        control.threads = Some(1);
        server.add_service(control);

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
        while TcpStream::connect_timeout(&config.server.proxy_listen, Duration::from_millis(200))
            .is_err()
            || TcpStream::connect_timeout(&config.server.admin_listen, Duration::from_millis(200))
                .is_err()
        {
            if Instant::now() > deadline {
                return Err(StartError::NotListening);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(handle)
    }
}
