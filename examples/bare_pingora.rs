//! The floor Pingora itself sets, for the load benchmark: a proxy that inserts a static
//! Authorization header and forwards to one upstream, with nothing else. Same runtime
//! settings as bearerd, so the difference is bearerd's own work.
//!
//! Usage: bare_pingora LISTEN UPSTREAM [THREADS] [WORK_STEALING: 0|1] [POOL_SIZE] [ALT_TIMER: 0|1]
//!        [REQUEST_ID: 0|1]
//! POOL_SIZE and ALT_TIMER are levers the load benchmark tries: Pingora's upstream keep-alive
//! pool size, default 128, and its alternative timer. REQUEST_ID=1 adds bearerd's request-id
//! work and nothing more (take the app's `x-request-id` or generate one with bearerd's own
//! generator, send it upstream, return it to the app), so that bearerd against this floor
//! measures the token handling alone: routing, the token, `Host`, the peer, metrics and log.

use async_trait::async_trait;
use bearerd::proxy::{new_request_id, X_REQUEST_ID};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: std::net::SocketAddr,
    auth: http::HeaderValue,
    request_id: bool,
}

#[async_trait]
impl ProxyHttp for Bare {
    /// The request id, and whether the app sent it (then it is in the upstream request already).
    type CTX = Option<(http::HeaderValue, bool)>;
    fn new_ctx(&self) -> Self::CTX {
        None
    }

    async fn request_filter(&self, s: &mut Session, id: &mut Self::CTX) -> Result<bool> {
        if self.request_id {
            *id = Some(match s.req_header().headers.get(&X_REQUEST_ID) {
                Some(v) => (v.clone(), true),
                None => (new_request_id(), false),
            });
        }
        Ok(false)
    }

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut Self::CTX) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        peer.options.idle_timeout = Some(std::time::Duration::from_secs(4));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        id: &mut Self::CTX,
    ) -> Result<()> {
        // Static title-case bytes, as bearerd does: no copy of the name per request.
        let name = bytes::Bytes::from_static(b"Authorization");
        req.insert_header(name, self.auth.clone())?;
        if let Some((id, false)) = id {
            req.insert_header("x-request-id", id.clone())?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        id: &mut Self::CTX,
    ) -> Result<()> {
        if let Some((id, _)) = id {
            resp.insert_header("x-request-id", id.clone())?;
        }
        Ok(())
    }
}

fn main() {
    // The same allocator settings as bearerd, so the difference is bearerd's own work.
    bearerd::allocator::tune();
    let args: Vec<String> = std::env::args().collect();
    let listen = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:6190".into());
    let upstream = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:6191".parse().unwrap());
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let work_stealing = args.get(4).is_some_and(|w| w == "1");
    let defaults = ServerConf::default();
    let upstream_keepalive_pool_size = args
        .get(5)
        .and_then(|p| p.parse().ok())
        .unwrap_or(defaults.upstream_keepalive_pool_size);
    let runtime_enable_alt_timer = args.get(6).is_some_and(|a| a == "1");
    let request_id = args.get(7).is_some_and(|a| a == "1");
    let conf = ServerConf {
        threads,
        work_stealing,
        upstream_keepalive_pool_size,
        runtime_enable_alt_timer,
        grace_period_seconds: Some(0),
        ..defaults
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream,
            auth: http::HeaderValue::from_static("Bearer static-benchmark-token"),
            request_id,
        },
    );
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
