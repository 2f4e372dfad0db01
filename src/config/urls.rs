//! The URLs a config gives: http(s) endpoints and the Redis url. Lowering checks the ones
//! written in the text; the check step, the Redis url (which may come from a secret).

/// Why a URL cannot be an http(s) endpoint.
#[derive(Debug, thiserror::Error)]
pub(in crate::config) enum HttpUrlError {
    #[error("invalid URL {0:?}: {1}")]
    Invalid(String, url::ParseError),
    #[error("URL {0:?} must use http or https")]
    Scheme(String),
    #[error("URL {0:?} has no host")]
    NoHost(String),
    #[error("URL {0:?} may not carry a query or fragment")]
    QueryOrFragment(String),
}

/// An http(s) URL with a host, and no query or fragment.
pub(in crate::config) fn parse_http_url(value: &str) -> Result<url::Url, HttpUrlError> {
    let url = url::Url::parse(value).map_err(|e| HttpUrlError::Invalid(value.into(), e))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpUrlError::Scheme(value.into()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(HttpUrlError::NoHost(value.into()));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(HttpUrlError::QueryOrFragment(value.into()));
    }
    Ok(url)
}

/// Why a Redis URL cannot be used. Never quotes the URL: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub(in crate::config) enum RedisUrlError {
    #[error("the redis url does not parse ({0}); expected redis://[user:pass@]host:port/db or rediss://…")]
    Unparsable(url::ParseError),
    #[error("the redis url's scheme is {0:?}; expected redis:// or rediss:// (TLS)")]
    Scheme(String),
    #[error("the redis url has no host")]
    NoHost,
    #[error("the redis url's path must be a database number, e.g. /0")]
    Database,
    #[error("the redis url may not have a #fragment (certificate checks cannot be turned off; trust a private CA with ca_file)")]
    Fragment,
}

/// A Redis URL bearerd can use; true when it asks for TLS (`rediss://`). The message never
/// quotes the URL: it may hold a password.
pub(in crate::config) fn check_redis_url(text: &str) -> Result<bool, RedisUrlError> {
    let url = url::Url::parse(text.trim()).map_err(RedisUrlError::Unparsable)?;
    if !matches!(url.scheme(), "redis" | "rediss") {
        return Err(RedisUrlError::Scheme(url.scheme().to_string()));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(RedisUrlError::NoHost);
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(RedisUrlError::Database);
    }
    // The Redis client reads `#insecure` as "skip certificate checks", which this build
    // refuses at every connection; any other fragment makes the url unusable.
    if url.fragment().is_some() {
        return Err(RedisUrlError::Fragment);
    }
    Ok(url.scheme() == "rediss")
}

/// https, or plain http to a loopback host (this machine, where nobody can listen in).
pub fn secure_or_loopback(url: &url::Url) -> bool {
    url.scheme() == "https"
        || match url.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        }
}
