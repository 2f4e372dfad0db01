//! The trust boundary at the proxy and admin listeners: only the app beside bearerd spends
//! a credential, never a web page open in a browser on the same host.
//!
//! Browsers mark what a page sends. A cross-origin request carries the page's `Origin`
//! (except a GET or HEAD without CORS: a navigation, an `<img>`, a no-cors fetch), and
//! `Sec-Fetch-Site` (every request of a current browser) says how the page relates to the
//! target. A browser without Fetch Metadata (Safari before 16.4) can still make such a
//! GET reach an upstream blind; it cannot read the answer. A DNS-rebinding page reaches loopback under a name of its own, which arrives
//! in `Host`. The app's requests carry none of that, or loopback values. So:
//!
//! - `Host` must be an IP literal, a loopback name (`localhost`, `*.localhost`), or listed
//!   in `server.allowed_hosts` (rebinding needs a name, and that name is not listed);
//! - an `Origin` must be a loopback origin or listed in `server.allowed_origins`;
//! - without one, `Sec-Fetch-Site: cross-site | same-site` is refused.
//!
//! A refusal is 403 `cross-origin-refused`; nothing is forwarded. bearerd never adds a
//! CORS header, so no preflight is ever answered with permission by bearerd itself.

use std::net::Ipv4Addr;

use http::HeaderMap;

use super::problem::Problem;
pub use crate::metrics::RefusalReason;
use crate::metrics::{Listener, Metrics};

/// Where requests may come from, besides loopback: the configured exceptions.
#[derive(Debug, Clone, Default)]
pub struct Boundary {
    /// Host names (lowercase, without a port).
    allowed_hosts: Vec<String>,
    /// Origins as browsers send them (`scheme://host[:port]`, lowercase).
    allowed_origins: Vec<String>,
}

/// Why a request was refused, in words for the caller (the header values are quoted as
/// they came, escaped by the JSON they are written into).
#[derive(Debug)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub detail: String,
}

/// Whether a request is a top-level navigation (`GET`, `Sec-Fetch-Mode: navigate`) to a
/// path that `state` protects (a callback): such a request comes from wherever the
/// provider sent the browser, so its site is not held against it. Its `Host` still is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Navigation {
    Exempt,
    NotExempt,
}

impl Boundary {
    /// The boundary a config's `[server]` draws: loopback, and its allowed hosts and origins.
    pub fn of(server: &crate::config::ServerConfig) -> Boundary {
        Boundary::new(&server.allowed_hosts, &server.allowed_origins)
    }
}

impl Boundary {
    /// The boundary with these exceptions (already validated by the config).
    pub fn new(allowed_hosts: &[String], allowed_origins: &[String]) -> Self {
        Boundary {
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks a request's head: `Ok` when the app (or an allowed origin) sent it.
    pub fn check(&self, headers: &HeaderMap, navigation: Navigation) -> Result<(), Refusal> {
        self.check_host(headers)?;
        if navigation == Navigation::Exempt {
            return Ok(());
        }
        if let Some(origin) = headers.get(http::header::ORIGIN) {
            return self.check_origin(origin.as_bytes());
        }
        match headers.get("sec-fetch-site").map(|v| v.as_bytes()) {
            Some(b"cross-site") | Some(b"same-site") => Err(Refusal {
                reason: RefusalReason::SecFetchSite,
                detail: "a request from another site (Sec-Fetch-Site) may not use bearerd's credentials; a page that should, needs its origin in server.allowed_origins".to_string(),
            }),
            _ => Ok(()),
        }
    }

    fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        // HTTP/1.0 clients may send no Host; a browser always sends one.
        let Some(value) = headers.get(http::header::HOST) else {
            return Ok(());
        };
        let refuse = |shown: &str| {
            Refusal {
            reason: RefusalReason::Host,
            detail: format!(
                "Host {shown:?} is neither an IP address nor a loopback name, and not in server.allowed_hosts"
            ),
        }
        };
        let Ok(text) = value.to_str() else {
            return Err(refuse(&String::from_utf8_lossy(value.as_bytes())));
        };
        let host = host_of(text);
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        if host.starts_with('[')
            || host.parse::<Ipv4Addr>().is_ok()
            || is_loopback_name(&name)
            || self.allowed_hosts.contains(&name)
        {
            Ok(())
        } else {
            Err(refuse(text))
        }
    }

    fn check_origin(&self, origin: &[u8]) -> Result<(), Refusal> {
        let text = String::from_utf8_lossy(origin);
        let allowed = url::Url::parse(&text).ok().is_some_and(|url| {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => is_loopback_name(&d.to_ascii_lowercase()),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            let web = matches!(url.scheme(), "http" | "https");
            (web && loopback)
                || self
                    .allowed_origins
                    .contains(&url.origin().ascii_serialization())
        });
        if allowed {
            Ok(())
        } else {
            Err(Refusal {
                reason: RefusalReason::Origin,
                detail: format!(
                    "Origin {text:?} may not use bearerd's credentials: only loopback origins and those in server.allowed_origins may"
                ),
            })
        }
    }
}

/// The answer to a refused request: 403 `cross-origin-refused`, counted by listener and
/// reason.
pub fn refused<'a>(
    metrics: &Metrics,
    listener: Listener,
    refusal: Refusal,
    request_id: &'a str,
) -> Problem<'a> {
    metrics
        .requests_refused_total
        .with_label_values(&[listener.as_str(), refusal.reason.as_str()])
        .inc();
    tracing::warn!(
        listener = listener.as_str(),
        reason = refusal.reason.as_str(),
        request_id,
        "refused a request from a web page: {}",
        refusal.detail
    );
    Problem::new(
        "cross-origin-refused",
        "Cross-origin request refused",
        403,
        refusal.detail,
        request_id,
    )
}

/// The host part of a `Host` value: without its port; an IPv6 literal keeps its brackets.
fn host_of(value: &str) -> &str {
    if value.starts_with('[') {
        return value.split_inclusive(']').next().unwrap_or(value);
    }
    match value.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => value,
    }
}

/// `localhost` and its subdomains, which resolve to loopback without DNS (RFC 6761 §6.3;
/// browsers never ask a resolver for them, so no page can rebind them).
fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    fn reason(b: &Boundary, pairs: &[(&'static str, &'static str)]) -> Option<RefusalReason> {
        b.check(&head(pairs), Navigation::NotExempt)
            .err()
            .map(|r| r.reason)
    }

    #[test]
    fn the_app_passes_and_browsers_elsewhere_do_not() {
        let b = Boundary::new(&["bearerd.local".into()], &["https://console.test".into()]);
        for host in [
            "127.0.0.1:14080",
            "localhost:14080",
            "LOCALHOST",
            "api.localhost:1",
            "[::1]:14080",
            "10.1.2.3",
            "bearerd.local:80",
        ] {
            let mut h = HeaderMap::new();
            h.insert("host", http::HeaderValue::from_str(host).unwrap());
            assert!(b.check(&h, Navigation::NotExempt).is_ok(), "{host}");
        }
        assert_eq!(reason(&b, &[]), None);
        let host = Some(RefusalReason::Host);
        assert_eq!(reason(&b, &[("host", "rebind.attacker.test:14080")]), host);
        assert_eq!(reason(&b, &[("host", "127.0.0.1.nip.io")]), host);
        assert_eq!(reason(&b, &[("host", "localhost.evil.test")]), host);

        let origin = Some(RefusalReason::Origin);
        assert_eq!(reason(&b, &[("origin", "http://localhost:3000")]), None);
        assert_eq!(reason(&b, &[("origin", "http://127.0.0.1:6274")]), None);
        assert_eq!(reason(&b, &[("origin", "http://[::1]")]), None);
        assert_eq!(reason(&b, &[("origin", "https://CONSOLE.test")]), None);
        assert_eq!(reason(&b, &[("origin", "https://evil.example")]), origin);
        assert_eq!(reason(&b, &[("origin", "null")]), origin);
        assert_eq!(reason(&b, &[("origin", "file://localhost")]), origin);
        assert_eq!(
            reason(&b, &[("origin", "https://console.test:8443")]),
            origin
        );
        // An allowed Origin stands whatever Sec-Fetch-Site says.
        assert_eq!(
            reason(
                &b,
                &[
                    ("origin", "https://console.test"),
                    ("sec-fetch-site", "cross-site")
                ]
            ),
            None
        );

        let site = Some(RefusalReason::SecFetchSite);
        assert_eq!(reason(&b, &[("sec-fetch-site", "cross-site")]), site);
        assert_eq!(reason(&b, &[("sec-fetch-site", "same-site")]), site);
        assert_eq!(reason(&b, &[("sec-fetch-site", "same-origin")]), None);
        assert_eq!(reason(&b, &[("sec-fetch-site", "none")]), None);
    }

    #[test]
    fn an_exempt_navigation_is_judged_by_its_host_alone() {
        let b = Boundary::default();
        let cross = head(&[("sec-fetch-site", "cross-site"), ("host", "127.0.0.1:1")]);
        assert!(b.check(&cross, Navigation::Exempt).is_ok());
        assert!(b.check(&cross, Navigation::NotExempt).is_err());
        let rebound = head(&[("host", "evil.test")]);
        assert!(b.check(&rebound, Navigation::Exempt).is_err());
    }
}
