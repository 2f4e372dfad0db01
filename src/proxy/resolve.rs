//! Upstream name resolution, done asynchronously and off the request path: Pingora's own
//! resolution blocks and panics on failure. Addresses are cached and re-resolved by the
//! control service; a request only resolves when nothing is cached yet.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use arc_swap::ArcSwapOption;

pub const RERESOLVE_EVERY: Duration = Duration::from_secs(30);

/// Why an upstream's name gave no address.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {host}: {source}")]
    Lookup {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
}

pub struct ResolvedAddr {
    host: String,
    port: u16,
    literal: bool,
    addr: ArcSwapOption<SocketAddr>,
}

impl ResolvedAddr {
    /// Takes over `old`'s resolved address when it names the same host and port (a reload
    /// rebuilds upstreams: their names stay resolved, off the request path).
    pub fn carry_over(&self, old: &ResolvedAddr) {
        if !self.literal && self.host == old.host && self.port == old.port {
            if let Some(a) = old.addr.load_full() {
                self.addr.store(Some(a));
            }
        }
    }

    pub fn new(host: &str, port: u16) -> Self {
        let literal = host.parse::<IpAddr>().ok();
        ResolvedAddr {
            host: host.to_string(),
            port,
            literal: literal.is_some(),
            addr: ArcSwapOption::from(
                literal.map(|ip| std::sync::Arc::new(SocketAddr::new(ip, port))),
            ),
        }
    }

    pub fn needs_resolution(&self) -> bool {
        !self.literal
    }

    /// The cached address, or a fresh resolution when none is cached.
    pub async fn get(&self) -> Result<SocketAddr, ResolveError> {
        if let Some(a) = self.addr.load().as_ref() {
            return Ok(**a);
        }
        self.resolve().await
    }

    /// Resolves now and caches the answer; IPv4 first, as loopback services usually bind it.
    pub async fn resolve(&self) -> Result<SocketAddr, ResolveError> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|source| ResolveError::Lookup {
                host: self.host.clone(),
                source,
            })?
            .collect();
        let pick = addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| ResolveError::NoAddress {
                host: self.host.clone(),
            })?;
        self.addr.store(Some(std::sync::Arc::new(pick)));
        Ok(pick)
    }
}
