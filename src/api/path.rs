//! The admin API's paths: parsed by the server, built by the CLI and the proxy (the connect
//! path of a `subject-not-connected` problem), with one percent-encoding for names.

use std::fmt;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Everything but RFC 3986's unreserved characters is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment for a credential name or a subject.
pub fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// A segment as the client meant it. Bytes that are not UTF-8 become U+FFFD, which no
/// credential name or subject holds, so such a name is simply not found (or refused).
pub fn decode_segment(raw: &str) -> String {
    percent_decode_str(raw).decode_utf8_lossy().into_owned()
}

/// What can be done to a credential that holds one token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialOp {
    Refresh,
    Logout,
    Login,
    /// The client a credential with `registration = "auto"` logs in with.
    Register,
    /// Rehearse a failure of its token requests (`POST`).
    Drill,
    /// What its current token says of itself (`GET`, admin token).
    Claims,
}

impl CredentialOp {
    pub const ALL: [CredentialOp; 6] = [
        Self::Refresh,
        Self::Logout,
        Self::Login,
        Self::Register,
        Self::Drill,
        Self::Claims,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refresh => "refresh",
            Self::Logout => "logout",
            Self::Login => "login",
            Self::Register => "register",
            Self::Drill => "drill",
            Self::Claims => "claims",
        }
    }
}

/// What can be done to one subject of a per-subject credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectOp {
    Refresh,
    Logout,
    Login,
    Connect,
}

impl SubjectOp {
    pub const ALL: [SubjectOp; 4] = [Self::Refresh, Self::Logout, Self::Login, Self::Connect];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refresh => "refresh",
            Self::Logout => "logout",
            Self::Login => "login",
            Self::Connect => "connect",
        }
    }
}

/// The console's session cookie on the admin listener; the proxy strips it from whatever it
/// forwards (cookies ignore ports: an app on the same host would send it along).
pub const CONSOLE_COOKIE: &str = "bearerd_console";

/// The console's own paths on the admin listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsolePath {
    /// `GET /`: the page.
    Page,
    /// `GET /console/app.js`.
    Script,
    /// `GET /console/app.css`.
    Style,
    /// `GET /console/icon.svg`.
    Icon,
    /// `GET|POST|DELETE /console/session`: the page's session (cookie + CSRF token).
    Session,
    /// `GET /console/callback?code=…&state=…`: where a login started by the console returns.
    Callback,
}

impl ConsolePath {
    pub const ALL: [ConsolePath; 6] = [
        Self::Page,
        Self::Script,
        Self::Style,
        Self::Icon,
        Self::Session,
        Self::Callback,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Page => "/",
            Self::Script => "/console/app.js",
            Self::Style => "/console/app.css",
            Self::Icon => "/console/icon.svg",
            Self::Session => "/console/session",
            Self::Callback => "/console/callback",
        }
    }
}

fn op_named<T: Copy>(all: &[T], name: &str, as_str: fn(T) -> &'static str) -> Option<T> {
    all.iter().copied().find(|op| as_str(*op) == name)
}

/// Every path the admin API serves (the method is the server's to check). Names and
/// subjects are held decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRoute {
    Healthz,
    Readyz,
    Status,
    Metrics,
    /// `GET /events`: the event stream (SSE).
    Events,
    /// `GET /connect/callback?code=…&state=…&subject=…`, relayed by the app.
    ConnectCallback,
    /// The console: its page, assets, session and login callback.
    Console(ConsolePath),
    /// `POST /console/login/{name}`: the authorization URL of a login the console starts.
    ConsoleLogin {
        name: String,
    },
    /// `POST /credentials/{name}/{op}`.
    Credential {
        name: String,
        op: CredentialOp,
    },
    /// `GET /credentials/{name}/subjects?after=…&limit=…`.
    Subjects {
        name: String,
    },
    /// `GET /credentials/{name}/subjects/{subject}`.
    Subject {
        name: String,
        subject: String,
    },
    /// `POST /credentials/{name}/subjects/{subject}/{op}`.
    SubjectOp {
        name: String,
        subject: String,
        op: SubjectOp,
    },
}

impl AdminRoute {
    /// The route of a request path (without its query), if it is one.
    pub fn parse(path: &str) -> Option<AdminRoute> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        Some(match segments.as_slice() {
            ["healthz"] => AdminRoute::Healthz,
            ["readyz"] => AdminRoute::Readyz,
            ["status"] => AdminRoute::Status,
            ["metrics"] => AdminRoute::Metrics,
            ["events"] => AdminRoute::Events,
            ["connect", "callback"] => AdminRoute::ConnectCallback,
            ["console", "login", name] => AdminRoute::ConsoleLogin {
                name: decode_segment(name),
            },
            ["credentials", name, "subjects"] => AdminRoute::Subjects {
                name: decode_segment(name),
            },
            ["credentials", name, "subjects", subject] => AdminRoute::Subject {
                name: decode_segment(name),
                subject: decode_segment(subject),
            },
            ["credentials", name, "subjects", subject, op] => AdminRoute::SubjectOp {
                name: decode_segment(name),
                subject: decode_segment(subject),
                op: op_named(&SubjectOp::ALL, op, SubjectOp::as_str)?,
            },
            ["credentials", name, op] => AdminRoute::Credential {
                name: decode_segment(name),
                op: op_named(&CredentialOp::ALL, op, CredentialOp::as_str)?,
            },
            _ => AdminRoute::Console(op_named(&ConsolePath::ALL, path, ConsolePath::as_str)?),
        })
    }

    /// The credential a route names, if any.
    pub fn credential(&self) -> Option<&str> {
        match self {
            AdminRoute::Credential { name, .. }
            | AdminRoute::ConsoleLogin { name }
            | AdminRoute::Subjects { name }
            | AdminRoute::Subject { name, .. }
            | AdminRoute::SubjectOp { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// The path, names encoded.
impl fmt::Display for AdminRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let e = encode_segment;
        match self {
            AdminRoute::Healthz => f.write_str("/healthz"),
            AdminRoute::Readyz => f.write_str("/readyz"),
            AdminRoute::Status => f.write_str("/status"),
            AdminRoute::Metrics => f.write_str("/metrics"),
            AdminRoute::Events => f.write_str("/events"),
            AdminRoute::ConnectCallback => f.write_str("/connect/callback"),
            AdminRoute::Console(c) => f.write_str(c.as_str()),
            AdminRoute::ConsoleLogin { name } => write!(f, "/console/login/{}", e(name)),
            AdminRoute::Credential { name, op } => {
                write!(f, "/credentials/{}/{}", e(name), op.as_str())
            }
            AdminRoute::Subjects { name } => write!(f, "/credentials/{}/subjects", e(name)),
            AdminRoute::Subject { name, subject } => {
                write!(f, "/credentials/{}/subjects/{}", e(name), e(subject))
            }
            AdminRoute::SubjectOp { name, subject, op } => write!(
                f,
                "/credentials/{}/subjects/{}/{}",
                e(name),
                e(subject),
                op.as_str()
            ),
        }
    }
}
