//! `bearerd demo`: an embedded token server issuing short-lived tokens, an echo upstream
//! that only accepts valid tokens, and the real sidecar between them. It prints each
//! refresh (the sidecar's own log lines) and one request a second with the generation of
//! the token that was injected, never the token itself.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::{Config, LogFormat};
use crate::{logging, Sidecar};
use testkit::{token_server, TokenServer, Upstream};

/// The demo's config; `{…}` placeholders are filled in at startup.
pub const DEMO_CONFIG: &str = r#"
[server]
proxy_listen = "{proxy}"
admin_listen = "{admin}"

[credentials.demo]
grant = "client_credentials"
token_url = "{token_url}"
client_id = "{client_id}"
client_secret = "{client_secret}"
scopes = ["demo.read"]

[upstreams.echo]
url = "http://{upstream}/api"
path_prefix = "/echo"
credential = "demo"
"#;

/// The preferred address, or a free one when it is taken.
fn free_or(preferred: &str) -> SocketAddr {
    let preferred: SocketAddr = preferred.parse().expect("valid literal");
    if TcpListener::bind(preferred).is_ok() {
        return preferred;
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or(preferred)
}

/// Why the demo stopped short.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the demo's {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("the demo's config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the sidecar: {0}")]
    Sidecar(String),
    #[error("{0} demo requests failed")]
    Failed(u32),
}

pub fn run(duration: Option<Duration>, token_lifetime: Duration) -> Result<(), DemoError> {
    logging::init(LogFormat::Pretty);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|source| DemoError::Start {
            what: "runtime",
            source,
        })?;
    rt.block_on(async move {
        let tokens = TokenServer::start(token_lifetime)
            .await
            .map_err(|source| DemoError::Start {
                what: "token server",
                source,
            })?;
        let upstream = Upstream::start(tokens.state.clone())
            .await
            .map_err(|source| DemoError::Start {
                what: "upstream",
                source,
            })?;
        let proxy = free_or(crate::config::DEFAULT_PROXY_LISTEN);
        let admin = free_or(crate::config::DEFAULT_ADMIN_LISTEN);
        let text = DEMO_CONFIG
            .replace("{proxy}", &proxy.to_string())
            .replace("{admin}", &admin.to_string())
            .replace("{token_url}", &tokens.token_url())
            .replace("{client_id}", token_server::CLIENT_ID)
            .replace("{client_secret}", token_server::CLIENT_SECRET)
            .replace("{upstream}", &upstream.addr.to_string());
        let config = Config::parse(Path::new("<demo>"), &text)?;
        println!("bearerd demo: tokens live {}; Ctrl-C stops it", humantime::format_duration(token_lifetime));
        println!("  token server  http://{}/token", tokens.addr);
        println!("  upstream      http://{}/api (accepts only valid tokens)", upstream.addr);
        println!("  sidecar       http://{proxy}/echo/…  → upstream, admin http://{admin}/status");
        let sidecar = tokio::task::spawn_blocking(move || Sidecar::start(config))
            .await
            .map_err(|e| DemoError::Sidecar(e.to_string()))?
            .map_err(|e| DemoError::Sidecar(e.to_string()))?;

        let client = reqwest::Client::new();
        let started = Instant::now();
        let mut ok = 0u32;
        let mut failed = 0u32;
        let mut n = 0u32;
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        // SIGTERM (`timeout`, `docker stop`, a pod's end) stops the demo as Ctrl-C does: the
        // sidecar shuts down on it, and a loop left running would only print failures.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .map_err(|source| DemoError::Start {
                    what: "SIGTERM handler",
                    source,
                })?;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = tokio::signal::ctrl_c() => break,
                _ = terminate.recv() => break,
            }
            if duration.is_some_and(|d| started.elapsed() >= d) {
                break;
            }
            n += 1;
            let url = format!("http://{proxy}/echo/hello?n={n}");
            match client.get(&url).send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body: serde_json::Value = resp.json().await.unwrap_or_default();
                    let status_line = sidecar.credential("demo").map(|c| c.status());
                    if status.is_success() { ok += 1 } else { failed += 1 }
                    println!(
                        "request {n:>3}: {status} via bearerd, upstream saw token generation {} (expires in {:.1}s, {} refreshes so far)",
                        body["token_serial"],
                        status_line.as_ref().and_then(|s| s.expires_in_s).unwrap_or(0.0),
                        status_line.as_ref().map_or(0, |s| s.refreshes),
                    );
                }
                Err(e) => {
                    failed += 1;
                    println!("request {n:>3}: failed: {e}");
                }
            }
        }
        println!(
            "demo done: {ok} requests succeeded, {failed} failed, {} token requests in {:.0}s",
            tokens.state.requests(),
            started.elapsed().as_secs_f64()
        );
        tokio::task::spawn_blocking(move || sidecar.shutdown())
            .await
            .map_err(|e| DemoError::Sidecar(e.to_string()))?;
        if failed > 0 {
            return Err(DemoError::Failed(failed));
        }
        Ok(())
    })
}
