//! The user-facing TOML schema. Every table refuses unknown keys, so a typo is an error
//! rather than a silently ignored setting. These structs are only read by `lower`.
//!
//! Each grant kind has a strict table of its own (`RawStaticCredential`, …): a key of another
//! grant is refused with its line, never ignored. serde's `flatten` would turn that
//! strictness off, so the shared key groups are pasted into each table by
//! [`credential_table!`], and [`parse`] reads each credential's `grant` first and then
//! deserializes the table strictly as that grant, keeping every span.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::error::SourceMap;
use super::store::RawStore;
use super::{ConfigError, GrantConfig, RefreshPolicy, SubjectConfig};
use crate::material::RawSecretRef;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    /// Only the backend's name: the table itself is read strictly by [`parse`].
    #[serde(default, rename = "store")]
    store_backend: BackendName,
    #[serde(skip)]
    pub store: RawStore,
    /// Only the grant names: the tables themselves are read strictly by [`parse`].
    #[serde(default, rename = "credentials")]
    grants: BTreeMap<String, GrantName>,
    #[serde(skip)]
    pub credentials: BTreeMap<String, RawCredential>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
}

/// The first pass over the `[store]` table: which backend it names, nothing else.
#[derive(Deserialize, Default)]
struct BackendName {
    backend: Option<String>,
}

/// The first pass over a credential table: which grant it names, nothing else.
#[derive(Deserialize)]
struct GrantName {
    grant: Option<String>,
}

/// Parses config text: first the whole document with each credential's grant name, then
/// each credential table strictly as the grant it names.
pub fn parse(text: &str) -> Result<RawConfig, toml::de::Error> {
    let mut config: RawConfig = toml::from_str(text)?;
    let grants: HashMap<String, Option<String>> = std::mem::take(&mut config.grants)
        .into_iter()
        .map(|(name, g)| (name, g.grant))
        .collect();
    config.credentials = TopLevel {
        key: "credentials",
        seed: EachCredential(&grants),
    }
    .deserialize(toml::Deserializer::new(text))?;
    let backend = config.store_backend.backend.take();
    config.store = TopLevel {
        key: "store",
        seed: StoreAs(backend.as_deref()),
    }
    .deserialize(toml::Deserializer::new(text))?;
    Ok(config)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub proxy_listen: Option<String>,
    pub admin_listen: Option<String>,
    /// Only /healthz, /readyz and /metrics: for probes and Prometheus from outside the pod.
    pub metrics_listen: Option<String>,
    /// Required by the admin POST endpoints when set; required when admin_listen is not loopback.
    pub admin_token: Option<RawSecretRef>,
    pub threads: Option<usize>,
    /// Tokio work stealing between request threads (off by default: measured faster).
    pub work_stealing: Option<bool>,
    /// "pretty" | "json"
    pub log_format: Option<String>,
    /// One info line per proxied request (off by default: it costs CPU on the hot path).
    pub access_log: Option<bool>,
    /// How long in-flight requests may finish after SIGTERM.
    pub shutdown_grace: Option<String>,
    /// The largest request head (request line and headers) that is forwarded.
    pub max_request_header_bytes: Option<usize>,
    /// Host names accepted besides IP literals and loopback names (proxy and admin).
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins allowed besides loopback ones (proxy and admin).
    pub allowed_origins: Option<Vec<String>>,
    /// Accept a proxy_listen or upstream listen off loopback.
    pub allow_remote_clients: Option<bool>,
}

/// The registry of grant kinds: a grant's name, its variant and its strict table (declared
/// below with [`credential_table!`]). Its lowering is `lower/grant/<kind>.rs`'s
/// [`LowerGrant`] impl; a new grant is its table, that file and one line here.
macro_rules! grants {
    ($($name:literal => $variant:ident($raw:ident),)*) => {
        /// A credential table, strict for the grant it names.
        pub enum RawCredential {
            $($variant($raw),)*
            /// A grant name this build does not know (the table is not read further).
            Unknown(String),
            /// No `grant` key at all.
            Missing,
        }

        impl RawCredential {
            /// The keys a credential of this grant accepts, for the "belongs to another
            /// grant" hint.
            pub fn keys_of(grant: &str) -> Option<&'static [&'static str]> {
                match grant {
                    $($name => Some($raw::KEYS),)*
                    _ => None,
                }
            }

            /// Every grant kind this build reads, in the order error messages list them.
            pub const GRANTS: &'static [&'static str] = &[$($name),*];

            /// The table, as lowering reads it; `None` for an unknown or missing grant.
            pub fn table(&self) -> Option<&dyn LowerGrant> {
                match self {
                    $(RawCredential::$variant(t) => Some(t),)*
                    RawCredential::Unknown(_) | RawCredential::Missing => None,
                }
            }

            /// Reads a credential's table as the grant it names.
            fn read<'de, A: MapAccess<'de>>(
                grant: Option<&str>,
                map: &mut A,
            ) -> Result<RawCredential, A::Error> {
                Ok(match grant {
                    $(Some($name) => RawCredential::$variant(map.next_value()?),)*
                    Some(other) => {
                        map.next_value::<IgnoredAny>()?;
                        RawCredential::Unknown(other.to_string())
                    }
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        RawCredential::Missing
                    }
                })
            }
        }
    };
}

grants! {
    "client_credentials" => ClientCredentials(RawClientCredentials),
    "refresh_token" => RefreshToken(RawRefreshTokenCredential),
    "token_exchange" => TokenExchange(RawTokenExchangeCredential),
    "jwt_bearer" => JwtBearer(RawJwtBearerCredential),
    "static" => Static(RawStaticCredential),
}

/// One grant's table lowered into the model: implemented once per grant, in
/// `lower/grant/<kind>.rs`.
pub trait LowerGrant {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError>;
}

/// What a grant's table lowers into.
pub struct LoweredGrant {
    pub grant: GrantConfig,
    pub policy: RefreshPolicy,
    /// Set for a per-subject credential.
    pub subjects: Option<SubjectConfig>,
}

/// Declares a strict credential table: `grant`, the keys of each named group, then its own.
/// Each group also gets an accessor that copies its keys into the group's view struct, so
/// lowering code shared by several grants reads one type.
macro_rules! credential_table {
    ($(#[$m:meta])* pub struct $name:ident [$($group:ident),*] { $($own:tt)* }) => {
        credential_table!(@munch [$(#[$m])* $name] [$($group),*] [$($own)*]);
    };
    (@munch $head:tt [$group:ident $(, $rest:ident)*] [$($fields:tt)*]) => {
        $group!(@into $head [$($rest),*] [$($fields)*]);
    };
    (@munch [$(#[$m:meta])* $name:ident] [] [$($(#[$fm:meta])* $field:ident : $ty:ty,)*]) => {
        $(#[$m])*
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub grant: String,
            $($(#[$fm])* pub $field: $ty,)*
        }

        impl $name {
            /// Every key this table accepts.
            pub const KEYS: &'static [&'static str] = &["grant", $(stringify!($field)),*];
        }
    };
}

/// Defines a group of keys: its view struct (`@view`), or its keys pasted into a table
/// plus the table's accessor (`@into`, called by [`credential_table!`]).
macro_rules! key_group {
    ($view:ident $accessor:ident { $($(#[$gm:meta])* $gfield:ident : $gty:ty,)* } @view) => {
        #[derive(Clone, Default)]
        pub struct $view {
            $($(#[$gm])* pub $gfield: $gty,)*
        }
    };
    (
        $view:ident $accessor:ident { $($(#[$gm:meta])* $gfield:ident : $gty:ty,)* }
        @into [$(#[$m:meta])* $name:ident] $groups:tt [$($fields:tt)*]
    ) => {
        impl $name {
            pub fn $accessor(&self) -> $view {
                $view { $($gfield: self.$gfield.clone(),)* }
            }
        }
        credential_table!(
            @munch [$(#[$m])* $name] $groups [$($fields)* $($(#[$gm])* $gfield: $gty,)*]
        );
    };
}

/// What a token request needs: the endpoint, the client and what it asks for.
macro_rules! token_request_keys {
    ($($args:tt)*) => { key_group!(RawTokenRequest token_request {
        token_url: Option<String>,
        /// RFC 8414 / OpenID Connect discovery instead of `token_url`.
        issuer: Option<String>,
        /// RFC 7009 revocation endpoint, used by logout.
        revocation_url: Option<String>,
        client_id: Option<String>,
        client_secret: Option<RawSecretRef>,
        /// basic | post | private_key_jwt | client_assertion | tls_client_auth | none
        client_auth: Option<String>,
        /// private_key_jwt (and jwt_bearer): a PEM private key, re-read when it changes.
        private_key: Option<RawSecretRef>,
        /// The JWT header `kid`.
        key_id: Option<String>,
        /// RS256 | PS256 | ES256 | ES384 | EdDSA (default: follows the key).
        signing_alg: Option<String>,
        /// The assertion's `aud` (default: the token endpoint URL).
        assertion_audience: Option<String>,
        /// client_assertion: a JWT minted elsewhere, read at every use.
        client_assertion: Option<RawSecretRef>,
        /// tls_client_auth: the client certificate (chain) and its key, PEM files.
        client_cert: Option<RawSecretRef>,
        client_key: Option<RawSecretRef>,
        scopes: Option<Vec<String>>,
        resource: Option<String>,
        params: Option<BTreeMap<String, String>>,
        /// Timeout of one token request.
        token_timeout: Option<String>,
        /// A PEM bundle trusted for the token endpoint instead of the system roots.
        ca_file: Option<PathBuf>,
        /// `discover = true`: the authorization servers (issuers, or hosts) an upstream's
        /// metadata may name; any other is refused before anything is sent to it.
        allowed_authorization_servers: Option<Vec<String>>,
        /// Accept plain http to a host that is not this machine for this credential's
        /// endpoints (token_url, issuer, revocation_url, redirect_uri).
        insecure_http: Option<bool>,
    } $($args)*); };
}

/// When a token that expires is refreshed, and how failures back off.
macro_rules! schedule_keys {
    ($($args:tt)*) => { key_group!(RawSchedule schedule {
        refresh_ratio: Option<f64>,
        refresh_margin: Option<String>,
        /// Lifetime assumed when the token response has no `expires_in`.
        default_lifetime: Option<String>,
        backoff_base: Option<String>,
        backoff_cap: Option<String>,
    } $($args)*); };
}

/// How requests wait for a token, and how often they may trigger a new one: every grant.
macro_rules! wait_keys {
    ($($args:tt)*) => { key_group!(RawWait wait {
        /// How long a request may wait for a token before it gets a 503.
        wait_budget: Option<String>,
        /// Least time between two refreshes triggered by requests (a 401 or no token).
        min_refresh_interval: Option<String>,
    } $($args)*); };
}

token_request_keys!(@view);
schedule_keys!(@view);
wait_keys!(@view);

credential_table! {
    /// `grant = "client_credentials"`: the client's own token (RFC 6749 §4.4).
    pub struct RawClientCredentials [token_request_keys, schedule_keys, wait_keys] {}
}

credential_table! {
    /// `grant = "refresh_token"`: a delegated token, kept fresh with a refresh token that
    /// comes from the config, `bearerd login` or the admin API.
    pub struct RawRefreshTokenCredential [token_request_keys, schedule_keys, wait_keys] {
        /// The seed refresh token.
        refresh_token: Option<RawSecretRef>,
        /// Authorization endpoint for `bearerd login` (code + PKCE).
        authorization_url: Option<String>,
        /// Device authorization endpoint for `bearerd login --device` (RFC 8628).
        device_authorization_url: Option<String>,
        /// Loopback port for the login redirect (default: any free port, RFC 8252).
        redirect_port: Option<u16>,
        /// Send `scope` with refresh_token requests too (some providers, e.g. Microsoft's,
        /// require it); by default the refresh keeps the scope originally granted.
        scope_on_refresh: Option<bool>,
        /// Per-subject: the request header that names the end user; one token set each.
        subject_header: Option<String>,
        /// Per-subject, instead of `subject_header`: the subject from a verified JWT.
        subject_from: Option<RawSubjectFrom>,
        /// Per-subject: the redirect URI of connect flows (the app relays it to bearerd).
        redirect_uri: Option<String>,
        /// Per-subject: subjects unused this long leave memory (default 15m).
        subject_idle: Option<String>,
        /// Per-subject: the most subjects kept in memory at once.
        max_subjects_in_memory: Option<usize>,
        /// Per-subject: how long a connect flow's state is accepted (default 10m).
        connect_lifetime: Option<String>,
    }
}

credential_table! {
    /// `grant = "static"`: a token given as it is (a file is watched for changes).
    pub struct RawStaticCredential [wait_keys] {
        token: Option<RawSecretRef>,
    }
}

credential_table! {
    /// `grant = "token_exchange"` (RFC 8693): a token obtained for a subject token, such as
    /// the pod's service-account token, exchanged again before it expires.
    pub struct RawTokenExchangeCredential [token_request_keys, schedule_keys, wait_keys] {
        /// Read at every exchange; `{ header = "…" }`: each request's user's token.
        subject_token: Option<RawSecretRef>,
        subject_token_type: Option<String>,
        actor_token: Option<RawSecretRef>,
        actor_token_type: Option<String>,
        audience: Option<String>,
        requested_token_type: Option<String>,
        /// On-behalf-of (`subject_token = { header = … }`): idle subjects leave memory.
        subject_idle: Option<String>,
        /// On-behalf-of: the most subject tokens' exchanges kept in memory.
        max_subjects_in_memory: Option<usize>,
        /// On-behalf-of: how many user tokens not seen before may be exchanged per second
        /// (and at once); beyond it a request gets 429.
        new_subjects_per_second: Option<u32>,
        /// On-behalf-of: how long an opaque user token (not a JWT, so with no `exp`) is
        /// served before it is exchanged again.
        opaque_token_lifetime: Option<String>,
    }
}

credential_table! {
    /// `grant = "jwt_bearer"` (RFC 7523 §2.1): an assertion signed with `private_key` or a
    /// Google service-account key.
    pub struct RawJwtBearerCredential [token_request_keys, schedule_keys, wait_keys] {
        /// `iss` (default: the service account's email, else client_id).
        assertion_issuer: Option<String>,
        /// `sub` (default: the issuer).
        assertion_subject: Option<String>,
        /// A Google service-account JSON key: key, key id, issuer and token endpoint.
        service_account_key: Option<RawSecretRef>,
    }
}

/// A second pass over one top-level table of the document: `seed` reads it (its default
/// when the document has none), and every other key is skipped.
struct TopLevel<S> {
    key: &'static str,
    seed: S,
}

impl<'de, S> DeserializeSeed<'de> for TopLevel<S>
where
    S: DeserializeSeed<'de>,
    S::Value: Default,
{
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S> Visitor<'de> for TopLevel<S>
where
    S: DeserializeSeed<'de>,
    S::Value: Default,
{
    type Value = S::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a config document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut seed, mut value) = (Some(self.seed), None);
        while let Some(key) = map.next_key::<String>()? {
            match seed.take() {
                Some(s) if key == self.key => value = Some(map.next_value_seed(s)?),
                other => {
                    seed = other;
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(value.unwrap_or_default())
    }
}

/// The second pass over `credentials`: each entry read as the grant it names.
struct EachCredential<'g>(&'g HashMap<String, Option<String>>);

impl<'de> DeserializeSeed<'de> for EachCredential<'_> {
    type Value = BTreeMap<String, RawCredential>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EachCredential<'_> {
    type Value = BTreeMap<String, RawCredential>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of credentials")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tables = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let grant = self.0.get(&name).cloned().flatten();
            let table = RawCredential::read(grant.as_deref(), &mut map)?;
            tables.insert(name, table);
        }
        Ok(tables)
    }
}

/// The second pass over `[store]`: the table read as the backend it names.
struct StoreAs<'b>(Option<&'b str>);

impl<'de> DeserializeSeed<'de> for StoreAs<'_> {
    type Value = RawStore;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        RawStore::read(self.0, d)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    pub path_prefix: Option<String>,
    pub listen: Option<String>,
    pub credential: String,
    /// Find the credential's authorization server from this upstream's protected resource
    /// metadata (RFC 9728), as MCP servers advertise it.
    pub discover: Option<bool>,
    /// A PEM bundle trusted for this upstream instead of the system roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Option<String>,
    /// Pooled upstream connections idle longer than this are closed. Keep it below the
    /// upstream's own keep-alive timeout (Node's default is 5 s).
    pub idle_timeout: Option<String>,
    /// Each read from the upstream may wait this long: a late response head is a 504, a late
    /// body read cuts the response off. Unset by default: SSE streams, long polls and
    /// websockets may idle longer.
    pub read_timeout: Option<String>,
    /// Accept a plain http url to a host that is not this machine.
    pub insecure_http: Option<bool>,
}

/// `subject_from = { jwt = { … } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubjectFrom {
    pub jwt: RawSubjectJwt,
}

/// The user's JWT a per-subject credential takes its subject from.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubjectJwt {
    /// The request header that carries it (default `authorization`).
    pub header: Option<String>,
    /// Its `iss`, and where its keys are discovered (OpenID or RFC 8414 metadata).
    pub issuer: String,
    /// Its `aud` must name this.
    pub audience: String,
    /// The claim that names the subject (default `sub`).
    pub claim: Option<String>,
    /// The JWK set, when it is not the one the issuer's metadata names.
    pub jwks_url: Option<String>,
}
