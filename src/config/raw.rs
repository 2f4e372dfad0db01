//! The user-facing TOML schema. Every table refuses unknown keys, so a typo is an error
//! rather than a silently ignored setting. These structs are only read by `lower`.
//!
//! Each grant kind has a strict table of its own, declared in its file of the `grant` room
//! with `credential_table!` (in `table.rs`): a key of another grant is refused with its line, never
//! ignored. serde's `flatten` would turn that strictness off, so the shared key groups are
//! pasted into each table by that macro, and [`parse`] reads each credential's `grant`
//! first and then deserializes the table strictly as that grant (through the registry it
//! is given), keeping every span.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::marker::PhantomData;
use std::path::PathBuf;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::grant::{GrantTables, LowerGrant};
use super::kinds::Kinds;
use super::store::{RawStore, StoreTables};
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
    #[serde(default)]
    pub events: RawEvents,
    #[serde(default)]
    pub telemetry: RawTelemetry,
}

/// `[telemetry]`: OpenTelemetry traces, off unless an endpoint is named.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub service_name: Option<String>,
}

/// `[events]` and its `[[events.webhook]]` entries.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    #[serde(default)]
    pub webhook: Vec<RawWebhook>,
    pub audit_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: String,
    /// Event kinds; every kind when absent.
    pub on: Option<Vec<String>>,
    /// `whsec_<base64>`, as Standard Webhooks gives it.
    pub secret: RawSecretRef,
    /// How many events may wait for delivery before new ones are dropped (and counted).
    pub queue: Option<usize>,
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
pub fn parse<K: Kinds>(text: &str) -> Result<RawConfig, toml::de::Error> {
    let mut config: RawConfig = toml::from_str(text)?;
    let grants: HashMap<String, Option<String>> = std::mem::take(&mut config.grants)
        .into_iter()
        .map(|(name, g)| (name, g.grant))
        .collect();
    config.credentials = TopLevel {
        key: "credentials",
        seed: EachCredential::<K::Grants>(&grants, PhantomData),
    }
    .deserialize(toml::Deserializer::new(text))?;
    let backend = config.store_backend.backend.take();
    config.store = TopLevel {
        key: "store",
        seed: StoreAs::<K::Stores>(backend.as_deref(), PhantomData),
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

/// A credential table, read strictly as the grant it names.
pub enum RawCredential {
    Table(Box<dyn LowerGrant>),
    /// A grant name this build does not know (the table is not read further).
    Unknown(String),
    /// No `grant` key at all.
    Missing,
}

impl RawCredential {
    /// Reads a credential's table as the grant it names.
    fn read<'de, G: GrantTables, A: MapAccess<'de>>(
        grant: Option<&str>,
        map: &mut A,
    ) -> Result<RawCredential, A::Error> {
        let Some(grant) = grant else {
            map.next_value::<IgnoredAny>()?;
            return Ok(RawCredential::Missing);
        };
        Ok(match G::read(grant, map)? {
            Some(table) => RawCredential::Table(table),
            None => {
                map.next_value::<IgnoredAny>()?;
                RawCredential::Unknown(grant.to_string())
            }
        })
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
struct EachCredential<'g, G>(&'g HashMap<String, Option<String>>, PhantomData<G>);

impl<'de, G: GrantTables> DeserializeSeed<'de> for EachCredential<'_, G> {
    type Value = BTreeMap<String, RawCredential>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, G: GrantTables> Visitor<'de> for EachCredential<'_, G> {
    type Value = BTreeMap<String, RawCredential>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a table of credentials")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut tables = BTreeMap::new();
        while let Some(name) = map.next_key::<String>()? {
            let grant = self.0.get(&name).cloned().flatten();
            let table = RawCredential::read::<G, _>(grant.as_deref(), &mut map)?;
            tables.insert(name, table);
        }
        Ok(tables)
    }
}

/// The second pass over `[store]`: the table read as the backend it names.
struct StoreAs<'b, S>(Option<&'b str>, PhantomData<S>);

impl<'de, S: StoreTables> DeserializeSeed<'de> for StoreAs<'_, S> {
    type Value = RawStore;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        RawStore::read::<S, D>(self.0, d)
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
    /// An MCP server: a user who must connect (or consent to more) is asked to with an MCP
    /// URL elicitation, which MCP clients show, instead of a problem+json answer.
    pub mcp: Option<bool>,
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
    /// MCP's stateless transport: a credential per tool, by the request's `Mcp-Name`
    /// header (`"create_issue" = "gh-write"`); other requests use `credential`.
    pub tools: Option<BTreeMap<String, String>>,
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
