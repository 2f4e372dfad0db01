//! The console: `GET /` on the admin listener, a page built into the binary that shows
//! `/status` live (over `/events`) and drives the admin API.
//!
//! - **Reading** needs nothing more than `/status` does.
//! - **Acting** needs a console session: the page asks for the admin token once
//!   (`POST /console/session`) and gets an HttpOnly, `SameSite=Strict` cookie
//!   (`bearerd_console`) and a CSRF token it keeps in `sessionStorage` and sends back as
//!   `x-bearerd-csrf`. The CSRF token is handed out by that answer only: a browser sends the
//!   cookie to every port of the host, so another local server could read a token that a
//!   cookie alone fetched. A session also dies when the admin token changes.
//! - **Logging in** (`POST /console/login/{name}`): the browser goes to the provider and
//!   comes back to `GET /console/callback`, whose `state` is bound to the attempt and to the
//!   browser that started it (a `SameSite=Lax` cookie scoped to the callback), good once and
//!   for 10 minutes; the code is redeemed here, where the client's secret is.
//! - **Assets** are `include_bytes!`: no file is read, nothing is fetched from elsewhere,
//!   and a strict Content-Security-Policy says so to the browser.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::{HeaderMap, Response};
use pingora::protocols::http::ServerSession;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use super::{error_response, json_response, no_credential, AdminApp};
use crate::api::{self, ConsolePath};
use crate::events::{EventKind, Happened};

use crate::api::CONSOLE_COOKIE as COOKIE;
/// The header that carries a session's CSRF token.
const CSRF_HEADER: &str = "x-bearerd-csrf";
/// Binds a console login's `state` to the browser that started it. `Lax`: it must come
/// back on the provider's top-level redirect.
const LOGIN_COOKIE: &str = "bearerd_console_login";
const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// Sessions and logins waiting for their callback are bounded: signing in or starting
/// logins in a loop cannot fill memory.
const MAX_SESSIONS: usize = 1000;
const MAX_LOGINS: usize = 100;

/// No inline script or style, and nothing from anywhere but the admin listener.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

static PAGE: &[u8] = include_bytes!("console/index.html");
static SCRIPT: &[u8] = include_bytes!("console/app.js");
static STYLE: &[u8] = include_bytes!("console/app.css");
static ICON: &[u8] = include_bytes!("console/icon.svg");

/// The console's sessions and the logins it started; kept across reloads.
#[derive(Default)]
pub struct ConsoleState {
    sessions: DashMap<String, Session>,
    logins: DashMap<String, PendingLogin>,
}

struct Session {
    csrf: String,
    /// The admin token it was opened with (hashed): a changed token ends it.
    token: Option<String>,
    expires: Instant,
}

struct PendingLogin {
    credential: String,
    /// The value of the browser's `bearerd_console_login` cookie.
    browser: String,
    verifier: SecretString,
    redirect_uri: String,
    expires: Instant,
}

fn random_id() -> String {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A cookie's value among the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The listener's own origin as the browser sees it (`http://` + Host): through
/// `kubectl port-forward` that is `http://localhost:PORT`.
fn own_origin(headers: &HeaderMap) -> Option<String> {
    header(headers, "host").map(|h| format!("http://{h}"))
}

/// Whether `origin` is the page's own: its Host, over http, or https behind a TLS proxy.
fn is_own_origin(headers: &HeaderMap, origin: &str) -> bool {
    header(headers, "host").is_some_and(|h| {
        origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            == Some(h)
    })
}

fn with_headers(mut response: Response<Vec<u8>>, extra: &[(&str, &str)]) -> Response<Vec<u8>> {
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::try_from(*k),
            http::HeaderValue::from_str(v),
        ) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}

/// What every console answer carries: the policy, and no sniffing, framing or referrer.
fn hardened(response: Response<Vec<u8>>) -> Response<Vec<u8>> {
    with_headers(
        response,
        &[
            ("content-security-policy", CSP),
            ("x-content-type-options", "nosniff"),
            ("x-frame-options", "DENY"),
            ("referrer-policy", "no-referrer"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
        ],
    )
}

/// A 303 back to the page, with what happened in the fragment (never sent to a server).
fn back_to_page(fragment: &str) -> Response<Vec<u8>> {
    let location = format!("/#{fragment}");
    hardened(with_headers(
        super::respond(303, "text/plain", b"back to the console\n".to_vec()),
        &[("location", &location)],
    ))
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

impl ConsoleState {
    fn token_hash(token: Option<&SecretString>) -> Option<String> {
        token.map(crate::store::fingerprint)
    }

    fn prune(&self) {
        let now = Instant::now();
        self.sessions.retain(|_, s| s.expires > now);
        self.logins.retain(|_, l| l.expires > now);
    }

    /// Room for one more session: the oldest goes when the table is full, so nobody can
    /// lock the operator out by opening sessions in a loop.
    fn make_room(&self) {
        self.prune();
        while self.sessions.len() >= MAX_SESSIONS {
            let oldest = self
                .sessions
                .iter()
                .min_by_key(|s| s.expires)
                .map(|s| s.key().clone());
            match oldest {
                Some(id) => self.sessions.remove(&id),
                None => break,
            };
        }
    }

    /// Whether the request belongs to a live session opened with the current admin token,
    /// carries its CSRF token and comes from the page's own origin.
    fn authorizes(&self, headers: &HeaderMap, admin_token: Option<&SecretString>) -> bool {
        let Some(id) = cookie(headers, COOKIE) else {
            return false;
        };
        let Some(session) = self.sessions.get(id) else {
            return false;
        };
        let csrf = header(headers, CSRF_HEADER).unwrap_or("");
        let origin_ok = header(headers, "origin").is_none_or(|o| is_own_origin(headers, o));
        let site_ok = header(headers, "sec-fetch-site").is_none_or(|s| s == "same-origin");
        session.expires > Instant::now()
            && session.token == Self::token_hash(admin_token)
            && super::constant_time_eq(csrf.as_bytes(), session.csrf.as_bytes())
            && origin_ok
            && site_ok
    }

    /// Whether the cookie names a live session (its CSRF token is not handed out again).
    fn current(&self, headers: &HeaderMap, admin_token: Option<&SecretString>) -> bool {
        cookie(headers, COOKIE)
            .and_then(|id| self.sessions.get(id))
            .is_some_and(|s| s.expires > Instant::now() && s.token == Self::token_hash(admin_token))
    }
}

impl AdminApp {
    fn resolved_admin_token(
        &self,
    ) -> Result<Option<SecretString>, crate::material::secret::SecretError> {
        self.admin_token.as_ref().map(|t| t.resolve()).transpose()
    }

    /// Whether a console session authorizes this request (an action from the page).
    pub(super) fn console_authorizes(&self, headers: &HeaderMap) -> bool {
        match self.resolved_admin_token() {
            Ok(token) => self.console.authorizes(headers, token.as_ref()),
            Err(_) => false,
        }
    }

    /// The console's page, assets, session and callback.
    pub(super) async fn console(
        &self,
        path: ConsolePath,
        session: &mut ServerSession,
    ) -> Response<Vec<u8>> {
        let method = session.req_header().method.clone();
        let get = method == http::Method::GET;
        let (content_type, body) = match path {
            ConsolePath::Page if get => ("text/html; charset=utf-8", PAGE),
            ConsolePath::Script if get => ("text/javascript; charset=utf-8", SCRIPT),
            ConsolePath::Style if get => ("text/css; charset=utf-8", STYLE),
            ConsolePath::Icon if get => ("image/svg+xml", ICON),
            ConsolePath::Session => return hardened(self.console_session(&method, session).await),
            ConsolePath::Callback if get => return self.console_callback(session).await,
            _ => return error_response(405, "method not allowed"),
        };
        hardened(super::respond(200, content_type, body.to_vec()))
    }

    /// `GET` the session (its CSRF token), `POST` the admin token to open one, `DELETE` to
    /// sign out.
    async fn console_session(
        &self,
        method: &http::Method,
        session: &mut ServerSession,
    ) -> Response<Vec<u8>> {
        let Ok(token) = self.resolved_admin_token() else {
            return error_response(503, "the admin token cannot be read");
        };
        let required = token.is_some();
        let headers = &session.req_header().headers;
        let view = |signed_in: bool, csrf: Option<String>| api::ConsoleSession {
            signed_in,
            admin_token_required: required,
            csrf,
        };
        match *method {
            http::Method::GET => match self.console.current(headers, token.as_ref()) {
                true => json_response(200, &view(true, None)),
                false => json_response(401, &view(false, None)),
            },
            http::Method::DELETE => {
                if !self.console.authorizes(headers, token.as_ref()) {
                    return error_response(401, "no console session");
                }
                if let Some(id) = cookie(headers, COOKIE) {
                    self.console.sessions.remove(id);
                }
                let cleared = format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
                with_headers(
                    json_response(200, &view(false, None)),
                    &[("set-cookie", &cleared)],
                )
            }
            http::Method::POST => {
                // A web page of another origin never opens a session, even with the token.
                if header(headers, "origin").is_some_and(|o| !is_own_origin(headers, o)) {
                    return error_response(403, "a console session is opened from the console");
                }
                let sign_in: api::ConsoleSignIn =
                    match super::read_json(session, r#"{"admin_token": "…"}"#).await {
                        Ok(s) => s,
                        Err(response) => return response,
                    };
                if let Some(expected) = &token {
                    let presented = sign_in
                        .admin_token
                        .as_ref()
                        .map_or("", |t| t.expose_secret());
                    if !super::constant_time_eq(
                        presented.as_bytes(),
                        expected.expose_secret().as_bytes(),
                    ) {
                        tracing::warn!("console sign-in refused: wrong admin token");
                        return error_response(401, "the admin token is wrong");
                    }
                }
                // Signing in again replaces the browser's session.
                if let Some(old) = cookie(&session.req_header().headers, COOKIE) {
                    self.console.sessions.remove(old);
                }
                self.console.make_room();
                let (id, csrf) = (random_id(), random_id());
                self.console.sessions.insert(
                    id.clone(),
                    Session {
                        csrf: csrf.clone(),
                        token: ConsoleState::token_hash(token.as_ref()),
                        expires: Instant::now() + SESSION_LIFETIME,
                    },
                );
                let set = format!(
                    "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
                    SESSION_LIFETIME.as_secs()
                );
                with_headers(
                    json_response(200, &view(true, Some(csrf))),
                    &[("set-cookie", &set)],
                )
            }
            _ => error_response(405, "method not allowed"),
        }
    }

    /// `POST /console/login/{name}`: starts a login whose browser comes back to this
    /// listener's `/console/callback`; answers the authorization URL.
    pub(super) async fn console_login(&self, name: &str, headers: &HeaderMap) -> Response<Vec<u8>> {
        let Some(cred) = self.credential(name) else {
            return no_credential(name);
        };
        if self.registry(name).is_some() {
            return error_response(
                400,
                format!("credential {name:?} keeps a token per subject: connect a subject"),
            );
        }
        let Some(origin) = own_origin(headers) else {
            return error_response(400, "the request has no Host");
        };
        let redirect_uri = format!("{origin}{}", ConsolePath::Callback.as_str());
        if cred.registers_its_client() {
            // Its registration names `bearerd login`'s redirect, not this one.
            return error_response(
                409,
                format!("credential {name:?} registers its own client (registration = \"auto\"): log in with `bearerd login {name}`"),
            );
        }
        let request = match cred.authorization_request(&redirect_uri).await {
            Ok(r) => r,
            Err(e) => return error_response(409, e.to_string()),
        };
        self.console.prune();
        if self.console.logins.len() >= MAX_LOGINS {
            return error_response(
                503,
                "too many console logins are waiting for their callback",
            );
        }
        let browser = random_id();
        self.console.logins.insert(
            request.state.expose_secret().to_string(),
            PendingLogin {
                credential: name.to_string(),
                browser: browser.clone(),
                verifier: request.verifier,
                redirect_uri,
                expires: Instant::now() + crate::oauth::login::ATTEMPT_LIFETIME,
            },
        );
        tracing::info!(credential = name, "console login started");
        let bound = format!(
            "{LOGIN_COOKIE}={browser}; Path={}; HttpOnly; SameSite=Lax; Max-Age={}",
            ConsolePath::Callback.as_str(),
            crate::oauth::login::ATTEMPT_LIFETIME.as_secs()
        );
        with_headers(
            json_response(
                200,
                &api::ConnectStarted {
                    authorize_url: request.url.to_string(),
                    expires_in_s: crate::oauth::login::ATTEMPT_LIFETIME.as_secs(),
                },
            ),
            &[("set-cookie", &bound)],
        )
    }

    /// `GET /console/callback?code=…&state=…`: the state is used up whatever happens; the
    /// browser goes back to the page, told how it went.
    async fn console_callback(&self, session: &ServerSession) -> Response<Vec<u8>> {
        if let Some(name) = super::subjects::repeated_param(session) {
            return error_response(400, format!("the callback repeats `{name}`"));
        }
        let param = |k| super::subjects::query_param(session, k);
        let Some(state) = param("state") else {
            return error_response(400, "the callback has no state");
        };
        let Some((_, login)) = self.console.logins.remove(&state) else {
            return back_to_page("login-error=the+login+is+unknown%2C+used+or+expired");
        };
        let name = login.credential.clone();
        let fail = |why: &str| {
            tracing::warn!(credential = &*name, reason = why, "console login failed");
            back_to_page(&format!(
                "login={}&login-error={}",
                encode(&name),
                encode(why)
            ))
        };
        if login.expires <= Instant::now() {
            return fail("the login expired; start it again");
        }
        // Finished by the browser that started it, or not at all: a leaked authorization
        // URL cannot log the credential in as someone else.
        let browser = cookie(&session.req_header().headers, LOGIN_COOKIE).unwrap_or("");
        if !super::constant_time_eq(browser.as_bytes(), login.browser.as_bytes()) {
            return fail("this login was started in another browser");
        }
        let Some(cred) = self.credential(&name).cloned() else {
            return fail("the credential is gone");
        };
        if let Err(e) = cred.check_response_issuer(param("iss").as_deref()).await {
            return fail(&e.to_string());
        }
        if let Some(error) = param("error") {
            let error: String = error.chars().take(100).collect();
            return fail(&format!("the authorization server refused: {error}"));
        }
        let Some(code) = param("code") else {
            return fail("the callback has no code");
        };
        let issued = match cred
            .redeem_code(crate::oauth::login::CodeGrant {
                code: SecretString::from(code),
                code_verifier: login.verifier,
                redirect_uri: login.redirect_uri,
            })
            .await
        {
            Ok(issued) => issued,
            Err(e) => {
                return fail(&format!(
                    "the token endpoint refused the code: {}",
                    e.message
                ))
            }
        };
        match crate::token::refresher::login_access_token(&cred, issued).await {
            Ok(true) => {
                let h = Happened::new(EventKind::LoginCompleted, "success");
                self.events.emit(h.credential(&name));
                back_to_page(&format!("login={}", encode(&name)))
            }
            Ok(false) => fail("the token could not be published"),
            Err(e) => fail(&e.to_string()),
        }
    }
}
