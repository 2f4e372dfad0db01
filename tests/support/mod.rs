//! Black-box harness: a test token server and upstream (real sockets, counting, failing on
//! command), and the real sidecar between them, started through `Sidecar::start`.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bearerd::config::Config;
use bearerd::{Sidecar, SidecarHandle};
#[allow(unused_imports)]
pub use testkit::{token_server, FailMode, TokenServer, TokenServerState, Upstream, UpstreamState};

pub mod idp;
pub mod keys;
pub mod mtls;
pub mod pki;
pub mod redis_server;

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Two distinct free addresses. Both sockets stay bound until both are picked: two calls to
/// `free_addr` may get the same port back, since the first is free again when the second asks
/// (a CI run failed on exactly that).
pub fn free_addr_pair() -> (SocketAddr, SocketAddr) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (a.local_addr().unwrap(), b.local_addr().unwrap())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// `token_url` is configured.
    None,
    /// `issuer` is configured (RFC 8414 metadata).
    Issuer,
    /// The upstream has `discover = true` (RFC 9728 protected resource metadata).
    ProtectedResource,
}

/// Options for one harness; `credential_extra` and `upstream_extra` are TOML lines added to
/// the `[credentials.api]` and `[upstreams.api]` tables.
pub struct Options {
    pub lifetime: Duration,
    pub grant: &'static str,
    pub credential_extra: String,
    pub upstream_extra: String,
    pub server_extra: String,
    /// How the token endpoint is found.
    pub discovery: Discovery,
    /// The token endpoint fails this way from the start (before the sidecar's first refresh).
    pub fail: Option<FailMode>,
    /// Extra `[store]` lines (e.g. a file store).
    pub store: String,
    /// Replace the upstream URL (e.g. a TLS upstream); `{upstream}` is the plain one.
    pub upstream_url: Option<String>,
    pub token_delay: Duration,
    /// Replaces the `client_id` and `client_secret` lines (other client authentication).
    pub client: Option<String>,
    /// Replaces the token endpoint line.
    pub endpoint: Option<String>,
    /// Start from a config file (`Harness::config_path`), as `bearerd run` does, so it can
    /// be reloaded.
    pub from_file: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            lifetime: Duration::from_secs(60),
            grant: "client_credentials",
            credential_extra: String::new(),
            upstream_extra: String::new(),
            server_extra: String::new(),
            upstream_url: None,
            token_delay: Duration::ZERO,
            store: String::new(),
            discovery: Discovery::None,
            fail: None,
            client: None,
            endpoint: None,
            from_file: false,
        }
    }
}

pub struct Harness {
    pub tokens: TokenServer,
    pub upstream: Upstream,
    pub sidecar: Option<SidecarHandle>,
    pub client: reqwest::Client,
    pub config_text: String,
    /// The config file, when started from one (`Options::from_file`).
    pub config_path: Option<PathBuf>,
}

impl Harness {
    pub async fn start(opts: Options) -> Harness {
        let (tokens, upstream) = start_peers(opts.lifetime).await;
        tokens.state.set_delay(opts.token_delay);
        if let Some(mode) = opts.fail.clone() {
            tokens.state.set_fail(mode);
        }
        Harness::start_with(tokens, upstream, opts).await
    }

    pub async fn start_with(tokens: TokenServer, upstream: Upstream, opts: Options) -> Harness {
        let mut grant_lines = String::new();
        if opts.grant == "refresh_token" {
            let rt = tokens.state.seed_refresh_token();
            Harness::write_seed(&mut grant_lines, rt);
        }
        Harness::start_raw(tokens, upstream, opts, grant_lines).await
    }

    /// Writes a seed refresh token to a file and sets the config lines that point at it.
    pub fn write_seed(grant_lines: &mut String, rt: String) {
        let dir = std::env::temp_dir().join(format!("bearerd-test-{}", rand_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("refresh_token");
        std::fs::write(&path, rt).unwrap();
        *grant_lines = format!(
            "refresh_token = {{ file = {:?} }}\n",
            path.display().to_string()
        );
    }

    /// Starts with the given grant lines (e.g. a seed that was already used).
    pub async fn start_raw(
        tokens: TokenServer,
        upstream: Upstream,
        opts: Options,
        grant_lines: String,
    ) -> Harness {
        let upstream_url = opts
            .upstream_url
            .clone()
            .unwrap_or_else(|| format!("http://{}/base", upstream.addr));
        let template = format!(
            r#"
[server]
proxy_listen = "{{proxy}}"
admin_listen = "{{admin}}"
{server_extra}

[store]
{store}

[credentials.api]
grant = "{grant}"
{endpoint}
{client}
scopes = ["demo.read"]
backoff_base = "200ms"
backoff_cap = "2s"
{grant_lines}{credential_extra}

[upstreams.api]
url = "{upstream_url}"
path_prefix = "/api"
credential = "api"
{discover}
{upstream_extra}
"#,
            server_extra = opts.server_extra,
            store = opts.store,
            grant = opts.grant,
            endpoint = match (&opts.endpoint, &opts.discovery) {
                (Some(line), _) => line.clone(),
                (None, d) => match d {
                    Discovery::None => format!("token_url = \"{}\"", tokens.token_url()),
                    Discovery::Issuer => format!("issuer = \"{}\"", tokens.issuer()),
                    // discover = true is pinned to the one authorization server it may use.
                    Discovery::ProtectedResource =>
                        format!("allowed_authorization_servers = [\"{}\"]", tokens.issuer()),
                },
            },
            discover = if opts.discovery == Discovery::ProtectedResource {
                *upstream.state.authorization_server.lock().unwrap() = Some(tokens.issuer());
                "discover = true"
            } else {
                ""
            },
            client = opts.client.clone().unwrap_or_else(|| format!(
                "client_id = \"{}\"\nclient_secret = \"{}\"",
                token_server::CLIENT_ID,
                token_server::CLIENT_SECRET
            )),
            credential_extra = opts.credential_extra,
            upstream_extra = opts.upstream_extra,
        );
        if std::env::var_os("BEARERD_LOG").is_some() {
            bearerd::logging::init(bearerd::config::LogFormat::Pretty);
        }
        // Ports picked here can be taken by another test before the sidecar binds them:
        // try again with new ones.
        let mut attempt = 0;
        let (sidecar, text, config_path) = loop {
            let (proxy, admin) = free_addr_pair();
            // A test's own extra listener or dead address (picked before) may be handed out
            // again here.
            if [proxy, admin].iter().any(|a| {
                let port = format!(":{}", a.port());
                template.contains(&format!("{port}\"")) || template.contains(&format!("{port}/"))
            }) {
                continue;
            }
            let text = template
                .replace("{proxy}", &proxy.to_string())
                .replace("{admin}", &admin.to_string());
            let config = match opts.from_file {
                true => {
                    let dir =
                        std::env::temp_dir().join(format!("bearerd-reload-{}", rand_suffix()));
                    std::fs::create_dir_all(&dir).unwrap();
                    let path = dir.join("bearerd.toml");
                    std::fs::write(&path, &text).unwrap();
                    let mut c = Config::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
                    c.server.rotation_helper = Some(env!("CARGO_BIN_EXE_bearerd").into());
                    c
                }
                false => sidecar_config(&text),
            };
            let path = opts.from_file.then(|| config.source.clone());
            match tokio::task::spawn_blocking(move || Sidecar::start(config))
                .await
                .unwrap()
            {
                Ok(s) => break (s, text, path),
                Err(e) if attempt < 3 => {
                    eprintln!("sidecar did not start ({e}); trying other ports");
                    attempt += 1;
                }
                Err(e) => panic!("sidecar did not start: {e}"),
            }
        };
        Harness {
            tokens,
            upstream,
            sidecar: Some(sidecar),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .unwrap(),
            config_text: text,
            config_path,
        }
    }

    pub fn sidecar(&self) -> &SidecarHandle {
        self.sidecar.as_ref().unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar().proxy_addr, path)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}{}", self.sidecar().admin_addr, path)
    }

    /// A GET through the proxy.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.admin(path)).send().await.unwrap()
    }

    /// A POST without a body to the admin API, as the CLI's refresh and logout send.
    pub async fn admin_post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.admin(path)).send().await.unwrap()
    }

    pub async fn status(&self) -> serde_json::Value {
        self.admin_get("/status").await.json().await.unwrap()
    }

    /// The `api` credential's state, as /status reports it.
    pub async fn state(&self) -> String {
        let status = self.status().await;
        status["credentials"]["api"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The metrics once `series` reads `want`. Per-request series are recorded when the
    /// response is done, which can be just after the client has read it.
    pub async fn metric_eventually(&self, series: &str, want: f64) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let m = self.metrics().await;
            if metric(&m, series) == Some(want) || std::time::Instant::now() > deadline {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// Waits (bounded) until the credential has a token, so a test starts from steady state.
    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.admin_get("/readyz").await.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sidecar never became ready: {}", self.status().await);
    }

    /// Stops the sidecar off the async runtime (its shutdown joins threads).
    pub async fn stop(mut self) {
        if let Some(s) = self.sidecar.take() {
            tokio::task::spawn_blocking(move || s.shutdown())
                .await
                .unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(s) = self.sidecar.take() {
            // Dropping joins the server thread; do it off the runtime thread.
            std::thread::spawn(move || drop(s));
        }
    }
}

/// A token server issuing tokens of this lifetime, and an upstream that checks them.
/// Stops the harness's sidecar and starts a new one from the same config (same store).
pub async fn restart(h: &mut Harness) {
    let old = h.sidecar.take().unwrap();
    tokio::task::spawn_blocking(move || old.shutdown())
        .await
        .unwrap();
    // The same ports again: the old listeners can take a moment to be released (one CI run
    // met "address in use" here), so a failed bind is tried again for up to 2 s.
    for attempt in 0.. {
        let config = sidecar_config(&h.config_text);
        match tokio::task::spawn_blocking(move || Sidecar::start(config))
            .await
            .unwrap()
        {
            Ok(s) => {
                h.sidecar = Some(s);
                return;
            }
            Err(bearerd::StartError::Listen { .. }) if attempt < 20 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            // The old sidecar's last task may still hold the file store's lock for a moment.
            Err(e) if attempt < 20 && e.to_string().contains("Cannot acquire lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the sidecar did not restart: {e}"),
        }
    }
}

pub async fn start_peers(lifetime: Duration) -> (TokenServer, Upstream) {
    let tokens = TokenServer::start(lifetime).await.unwrap();
    let upstream = Upstream::start(Arc::clone(&tokens.state)).await.unwrap();
    (tokens, upstream)
}

/// A test config as `bearerd run` would start it: with the binary as its rotation helper.
pub fn sidecar_config(text: &str) -> Config {
    let mut config =
        Config::parse(Path::new("test.toml"), text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    config.server.rotation_helper = Some(env!("CARGO_BIN_EXE_bearerd").into());
    config
}

pub fn rand_suffix() -> String {
    format!("{}-{:x}", std::process::id(), rand::random::<u64>())
}

/// The value of one sample line of the Prometheus text, e.g.
/// `bearerd_upstream_401_total{upstream="api",outcome="rate_limited"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Every answer a load loop recorded was 2xx (`bad` holds the others; 0: no answer at all).
pub fn assert_all_2xx(bad: &[u16]) {
    assert!(
        bad.is_empty(),
        "{} answers were not 2xx, the first {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
}
