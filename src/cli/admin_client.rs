//! The CLI's side of the admin API: requests built from `api`'s routes, answers read
//! back into `api`'s types. No token ever reaches it except the one a login hands over.

use std::path::PathBuf;
use std::time::Duration;

use bearerd::api::{self, AdminRoute, ErrorBody};
use bearerd::config::Config;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;

use super::CliError;

/// An answer of the admin API: the body the route promises, or a refusal.
pub enum Answer<T> {
    Body(u16, T),
    Refused(u16, ErrorBody),
}

impl<T> Answer<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Answer<U> {
        match self {
            Answer::Body(code, t) => Answer::Body(code, f(t)),
            Answer::Refused(code, e) => Answer::Refused(code, e),
        }
    }
}

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// The admin URL: `--admin`, else `BEARERD_ADMIN`, else the config's `admin_listen`
    /// (from `-c`, `BEARERD_CONFIG` or ./bearerd.toml), else 127.0.0.1:14090. The admin token
    /// comes from `BEARERD_ADMIN_TOKEN`, else the config.
    pub fn resolve(
        admin: Option<String>,
        config: Option<PathBuf>,
    ) -> Result<AdminClient, CliError> {
        let explicit = config.is_some();
        let path = config
            .or_else(|| std::env::var_os("BEARERD_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("bearerd.toml"));
        let loaded = if explicit || path.exists() {
            match Config::load(&path) {
                Ok(c) => Some(c),
                Err(e) if explicit => return Err(CliError::Config(e)),
                Err(_) => None,
            }
        } else {
            None
        };
        let base = admin
            .or_else(|| std::env::var("BEARERD_ADMIN").ok())
            .or_else(|| {
                loaded
                    .as_ref()
                    .map(|c| format!("http://{}", c.server.admin_listen))
            })
            .unwrap_or_else(|| format!("http://{}", bearerd::config::DEFAULT_ADMIN_LISTEN));
        let token = std::env::var("BEARERD_ADMIN_TOKEN").ok().or_else(|| {
            let secret = loaded
                .as_ref()?
                .server
                .admin_token
                .as_ref()?
                .resolve()
                .ok()?;
            Some(secret.expose_secret().to_string())
        });
        // Straight to the admin URL that was checked: no HTTP proxy from the environment
        // (it would see the admin token of a plain-http request) and no redirects (one could
        // carry the token or a refresh token elsewhere).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(90))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(CliError::Http)?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    /// Whether what is sent to the admin stays private: HTTPS, or plain HTTP that never
    /// leaves this host (a loopback or unspecified address, or `localhost`).
    pub fn channel_is_private(&self) -> bool {
        let Ok(url) = url::Url::parse(&self.base) else {
            return false;
        };
        match (url.scheme(), url.host()) {
            ("https", _) => true,
            ("http", Some(url::Host::Domain(d))) => d.eq_ignore_ascii_case("localhost"),
            ("http", Some(url::Host::Ipv4(ip))) => ip.is_loopback() || ip.is_unspecified(),
            ("http", Some(url::Host::Ipv6(ip))) => ip.is_loopback() || ip.is_unspecified(),
            _ => false,
        }
    }

    /// `GET /status` (no admin token needed).
    pub async fn status(&self) -> Result<api::Status, CliError> {
        let path = AdminRoute::Status.to_string();
        match self.send(http::Method::GET, &path, None, false).await? {
            (200, body) => serde_json::from_slice(&body).map_err(|e| self.unexpected(e)),
            (code, body) => Err(self.refusal(code, &body)),
        }
    }

    /// A GET that carries the admin token (the subject endpoints need it).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Answer<T>, CliError> {
        let (code, body) = self.send(http::Method::GET, path, None, true).await?;
        self.answer(code, &body)
    }

    /// A POST with the admin token and, for a login, its body.
    pub async fn post<T: DeserializeOwned>(
        &self,
        route: &AdminRoute,
        body: Option<&api::LoginRequest>,
    ) -> Result<Answer<T>, CliError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| self.unexpected(e)))
            .transpose()?;
        let (code, body) = self
            .send(http::Method::POST, &route.to_string(), body, true)
            .await?;
        self.answer(code, &body)
    }

    /// A POST with the admin token and a JSON body.
    pub async fn post_json<T: DeserializeOwned>(
        &self,
        route: &AdminRoute,
        body: &impl serde::Serialize,
    ) -> Result<Answer<T>, CliError> {
        let body = serde_json::to_vec(body).map_err(|e| self.unexpected(e))?;
        let (code, body) = self
            .send(http::Method::POST, &route.to_string(), Some(body), true)
            .await?;
        self.answer(code, &body)
    }

    /// Refuses, before anything is sent, to carry `what` to an admin URL where it would
    /// travel in clear off this host.
    pub fn ensure_private(&self, what: &'static str) -> Result<(), CliError> {
        if self.channel_is_private() {
            return Ok(());
        }
        Err(CliError::NotPrivate {
            what,
            base: self.base.clone(),
        })
    }

    fn unexpected(&self, e: serde_json::Error) -> CliError {
        CliError::Unexpected {
            base: self.base.clone(),
            error: e.to_string(),
        }
    }

    fn refusal(&self, code: u16, body: &[u8]) -> CliError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(e) => CliError::Refused(format!("{code}: {}", e.error)),
            Err(e) => self.unexpected(e),
        }
    }

    /// The promised body, else the refusal the server gave, else an unexpected answer.
    fn answer<T: DeserializeOwned>(&self, code: u16, body: &[u8]) -> Result<Answer<T>, CliError> {
        match serde_json::from_slice::<T>(body) {
            Ok(t) => Ok(Answer::Body(code, t)),
            Err(e) => match serde_json::from_slice::<ErrorBody>(body) {
                Ok(refused) => Ok(Answer::Refused(code, refused)),
                Err(_) => Err(self.unexpected(e)),
            },
        }
    }

    /// A request, with the admin token when `with_token`; the token goes only over a
    /// private channel. The status code and the body.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
        with_token: bool,
    ) -> Result<(u16, Vec<u8>), CliError> {
        let token = self.token.as_ref().filter(|_| with_token);
        if token.is_some() {
            self.ensure_private("the admin token")?;
        }
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let unreachable = |e: reqwest::Error| CliError::Unreachable {
            base: self.base.clone(),
            error: e,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(unreachable)?;
        Ok((status, body.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_this_host_is_a_private_channel() {
        let client = |base: &str| AdminClient::resolve(Some(base.into()), None).unwrap();
        for private in [
            "http://127.0.0.1:9090",
            "http://127.0.0.2:9090/",
            "http://[::1]:9090",
            "http://0.0.0.0:9090",
            "http://localhost:9090",
            "https://bearerd.example.com",
            "https://10.0.0.7:9090",
        ] {
            assert!(client(private).channel_is_private(), "{private}");
        }
        for open in [
            "http://10.0.0.7:9090",
            "http://[fd00::1]:9090",
            "http://orders.default.svc:9090",
            "ftp://127.0.0.1",
            "not a url",
        ] {
            assert!(!client(open).channel_is_private(), "{open}");
        }
    }
}
