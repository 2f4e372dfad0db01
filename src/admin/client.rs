//! The operator CLI's side of the admin API: `bearerd status`, `refresh`, `logout`, `login`.
//! It prints what the sidecar reports; no token ever reaches it except the one a login
//! hands over.

use std::path::PathBuf;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::config::Config;

pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// The admin URL: `--admin`, else `BEARERD_ADMIN`, else the config's `admin_listen`
    /// (from `-c`, `BEARERD_CONFIG` or ./bearerd.toml), else 127.0.0.1:14090. The admin token
    /// comes from `BEARERD_ADMIN_TOKEN`, else the config.
    pub fn resolve(admin: Option<String>, config: Option<PathBuf>) -> Result<AdminClient, String> {
        let explicit = config.is_some();
        let path = config
            .or_else(|| std::env::var_os("BEARERD_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("bearerd.toml"));
        let loaded = if explicit || path.exists() {
            match Config::load(&path) {
                Ok(c) => Some(c),
                Err(e) if explicit => return Err(e.to_string()),
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
            .unwrap_or_else(|| format!("http://{}", crate::config::DEFAULT_ADMIN_LISTEN));
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
            .map_err(|e| e.to_string())?;
        Ok(AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
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

    pub async fn get(&self, path: &str) -> Result<Value, String> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .map_err(|e| format!("cannot reach the bearerd admin API at {}: {e}", self.base))?;
        resp.json()
            .await
            .map_err(|e| format!("unexpected answer from {}: {e}", self.base))
    }

    /// A GET that carries the admin token (the subject endpoints need it), with the status.
    pub async fn get_with_token(&self, path: &str) -> Result<(u16, Value), String> {
        self.send(http::Method::GET, path, None).await
    }

    /// Refuses, before anything is sent, to carry `what` to an admin URL where it would
    /// travel in clear off this host.
    pub fn ensure_private(&self, what: &str) -> Result<(), String> {
        if self.channel_is_private() {
            return Ok(());
        }
        Err(format!(
            "refusing to send {what} in clear to {}: plain http is only for loopback. Reach the admin API on its host, through `kubectl port-forward` (then --admin http://127.0.0.1:PORT), or over https",
            self.base
        ))
    }

    /// POSTs and returns the status code and the JSON answer.
    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
        self.send(http::Method::POST, path, body).await
    }

    /// A request with the admin token, which, when there is one, goes only over a private
    /// channel; the status code and the JSON answer.
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        if self.token.is_some() {
            self.ensure_private("the admin token")?;
        }
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("cannot reach the bearerd admin API at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let value = resp.json().await.unwrap_or(Value::Null);
        Ok((status, value))
    }
}

fn seconds(v: &Value) -> String {
    match v.as_f64() {
        None => "-".into(),
        Some(s) if s >= 3600.0 => format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        ),
        Some(s) if s >= 60.0 => format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64),
        Some(s) => format!("{s:.1}s"),
    }
}

fn yes_no(v: &Value) -> String {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
    .to_string()
}

fn last_error(v: &Value) -> String {
    match v.get("kind").and_then(Value::as_str) {
        Some(kind) => format!("{kind}: {}", v["message"].as_str().unwrap_or("")),
        None => "-".into(),
    }
}

/// One row per credential.
pub fn status_table(status: &Value) -> String {
    let mut rows = vec![[
        "CREDENTIAL",
        "STATE",
        "CLIENT AUTH",
        "EXPIRES IN",
        "AGE",
        "NEXT REFRESH",
        "SCOPES",
        "REFRESH TOKEN",
        "LAST ERROR",
    ]
    .map(String::from)];
    if let Some(creds) = status["credentials"].as_object() {
        for (name, c) in creds {
            let scopes: Vec<&str> = c["scopes"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if c["per_subject"].as_bool() == Some(true) {
                rows.push(per_subject_row(name, c));
                continue;
            }
            rows.push([
                name.clone(),
                c["state"].as_str().unwrap_or("?").to_string(),
                c["client_auth"].as_str().unwrap_or("-").to_string(),
                seconds(&c["expires_in_s"]),
                seconds(&c["token_age_s"]),
                seconds(&c["next_refresh_in_s"]),
                if scopes.is_empty() {
                    "-".into()
                } else {
                    scopes.join(",")
                },
                yes_no(&c["has_refresh_token"]),
                last_error(&c["last_error"]),
            ]);
        }
    }
    let mut out = render_table(&rows);
    // Where the tokens are kept, and whether that store answers (a shared one may not).
    if let Some(backend) = status["store"]["backend"].as_str() {
        let store = &status["store"];
        match (store["up"].as_bool(), store["last_error"].as_str()) {
            (Some(false), error) => out.push_str(&format!(
                "\nstore: {backend}, DOWN ({})\n",
                error.unwrap_or("no answer")
            )),
            _ => out.push_str(&format!("\nstore: {backend}, up\n")),
        }
    }
    out
}

/// A per-subject credential's row: the counts of its subjects per state.
fn per_subject_row(name: &str, c: &Value) -> [String; 9] {
    let counts: Vec<String> = c["subjects"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(state, n)| format!("{n} {state}"))
                .collect()
        })
        .unwrap_or_default();
    let dash = || "-".to_string();
    [
        name.to_string(),
        "per-subject".into(),
        c["client_auth"].as_str().unwrap_or("-").to_string(),
        dash(),
        dash(),
        dash(),
        dash(),
        dash(),
        if counts.is_empty() {
            "no subjects in memory".into()
        } else {
            format!("subjects in memory: {}", counts.join(", "))
        },
    ]
}

/// Columns padded to their widest cell, two spaces apart.
fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One row per subject (`bearerd status NAME --subjects`).
pub fn subjects_table(subjects: &[Value]) -> String {
    let mut rows =
        vec![["SUBJECT", "STATE", "EXPIRES IN", "IN MEMORY", "LAST ERROR"].map(String::from)];
    for s in subjects {
        rows.push([
            s["subject"].as_str().unwrap_or("?").to_string(),
            s["state"].as_str().unwrap_or("?").to_string(),
            seconds(&s["expires_in_s"]),
            yes_no(&s["in_memory"]),
            last_error(&s["last_error"]),
        ]);
    }
    let mut out = render_table(&rows);
    out.push_str(&format!("\n{} subjects\n", subjects.len()));
    out
}

/// The admin path of a credential's operation, or of one of its subject's.
pub fn operation_path(name: &str, subject: Option<&str>, op: &str) -> String {
    let name = super::encode_segment(name);
    match subject {
        Some(s) => format!(
            "/credentials/{name}/subjects/{}{op}",
            super::encode_segment(s)
        ),
        None => format!("/credentials/{name}{op}"),
    }
}

/// Everything `/status` says about one credential, one field a line.
pub fn credential_detail(name: &str, c: &Value) -> String {
    let mut out = format!("credential     {name}\n");
    let fields = [
        ("state", c["state"].as_str().unwrap_or("?").to_string()),
        ("grant", c["grant"].as_str().unwrap_or("?").to_string()),
        (
            "client auth",
            c["client_auth"].as_str().unwrap_or("-").to_string(),
        ),
        ("expires in", seconds(&c["expires_in_s"])),
        ("token age", seconds(&c["token_age_s"])),
        ("next refresh", seconds(&c["next_refresh_in_s"])),
        ("generation", c["generation"].to_string()),
        ("refreshes", c["refreshes"].to_string()),
        ("failures", c["consecutive_failures"].to_string()),
        (
            "scopes",
            c["scopes"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        ),
        ("refresh token", yes_no(&c["has_refresh_token"])),
        ("last error", last_error(&c["last_error"])),
        (
            "last error at",
            c["last_error"]["at"].as_str().unwrap_or("-").to_string(),
        ),
    ];
    for (k, v) in fields {
        out.push_str(&format!("{k:<15}{v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_says_where_tokens_are_kept_and_whether_that_store_answers() {
        let status = |store: Value| serde_json::json!({"credentials": {}, "store": store});
        let up = status_table(&status(serde_json::json!({"backend": "redis", "up": true})));
        assert!(up.ends_with("store: redis, up\n"), "{up}");
        let down = status_table(&status(
            serde_json::json!({"backend": "redis", "up": false, "last_error": "connection refused"}),
        ));
        assert!(
            down.ends_with("store: redis, DOWN (connection refused)\n"),
            "{down}"
        );
    }

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
