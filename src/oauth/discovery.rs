//! Finding a provider's endpoints: authorization server metadata (RFC 8414, then OpenID
//! Connect discovery) from an issuer, and the issuer itself from a protected resource's
//! metadata (RFC 9728), as MCP servers advertise it in a 401's `WWW-Authenticate`.

use serde::Deserialize;
use url::Url;

/// The endpoints bearerd may use. Explicit config values take precedence over these.
#[derive(Debug, Clone, Default)]
pub struct ProviderEndpoints {
    pub token: Option<Url>,
    pub revocation: Option<Url>,
    pub authorization: Option<Url>,
    pub device_authorization: Option<Url>,
    /// RFC 8707 resource from the protected resource's metadata.
    pub resource: Option<String>,
    /// RFC 8705 §5 `mtls_endpoint_aliases`: where a client authenticating with a certificate
    /// must send its token and revocation requests.
    pub mtls_token: Option<Url>,
    pub mtls_revocation: Option<Url>,
    /// The issuer the metadata named (discovery only).
    pub issuer: Option<String>,
    /// RFC 9207 `authorization_response_iss_parameter_supported`: every authorization
    /// response carries `iss`, which must then be this issuer.
    pub iss_in_authorization_responses: bool,
    /// RFC 7591 `registration_endpoint`.
    pub registration: Option<Url>,
    /// `client_id_metadata_document_supported`: a client's id may be its document's URL.
    pub client_id_metadata_documents: bool,
    /// `token_endpoint_auth_methods_supported`.
    pub token_auth_methods: Vec<String>,
    /// The scopes the protected resource asks for: its challenge's `scope`, else its
    /// metadata's `scopes_supported` (used when the credential configures none).
    pub resource_scopes: Vec<String>,
    /// The authorization server's `scopes_supported` (whether it offers `offline_access`).
    pub server_scopes: Vec<String>,
}

/// Why an authorization response is refused by RFC 9207: it may come from another
/// authorization server than the one the flow was started with (a mix-up).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseIssuerError {
    #[error("the authorization response carries no `iss`, and the authorization server's metadata says every response does (RFC 9207): it may come from another server")]
    Missing,
    #[error("the authorization response names issuer {got:?}, not {expected:?} (RFC 9207): it comes from another authorization server")]
    Different { got: String, expected: String },
}

impl ProviderEndpoints {
    /// Fills what `self` lacks from `other`.
    pub fn or(self, other: ProviderEndpoints) -> ProviderEndpoints {
        ProviderEndpoints {
            token: self.token.or(other.token),
            revocation: self.revocation.or(other.revocation),
            authorization: self.authorization.or(other.authorization),
            device_authorization: self.device_authorization.or(other.device_authorization),
            resource: self.resource.or(other.resource),
            mtls_token: self.mtls_token.or(other.mtls_token),
            mtls_revocation: self.mtls_revocation.or(other.mtls_revocation),
            issuer: self.issuer.or(other.issuer),
            iss_in_authorization_responses: self.iss_in_authorization_responses
                || other.iss_in_authorization_responses,
            registration: self.registration.or(other.registration),
            client_id_metadata_documents: self.client_id_metadata_documents
                || other.client_id_metadata_documents,
            token_auth_methods: or_list(self.token_auth_methods, other.token_auth_methods),
            resource_scopes: or_list(self.resource_scopes, other.resource_scopes),
            server_scopes: or_list(self.server_scopes, other.server_scopes),
        }
    }

    /// RFC 9207: the `iss` of an authorization response (success or error) against the
    /// issuer discovery found. Required when the metadata says responses carry it; checked
    /// whenever it is there and the issuer is known.
    pub fn check_response_issuer(&self, iss: Option<&str>) -> Result<(), ResponseIssuerError> {
        let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
        match (iss, &self.issuer) {
            (None, _) if self.iss_in_authorization_responses => Err(ResponseIssuerError::Missing),
            (Some(got), Some(expected)) if !same(got, expected) => {
                Err(ResponseIssuerError::Different {
                    got: got.chars().take(200).collect(),
                    expected: expected.clone(),
                })
            }
            _ => Ok(()),
        }
    }
}

fn or_list(a: Vec<String>, b: Vec<String>) -> Vec<String> {
    if a.is_empty() {
        b
    } else {
        a
    }
}

#[derive(Deserialize)]
struct AuthorizationServerMetadata {
    issuer: Option<String>,
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
    mtls_endpoint_aliases: Option<MtlsAliases>,
    #[serde(default)]
    authorization_response_iss_parameter_supported: bool,
    registration_endpoint: Option<String>,
    #[serde(default)]
    client_id_metadata_document_supported: bool,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    scopes_supported: Vec<String>,
}

#[derive(Deserialize)]
struct MtlsAliases {
    token_endpoint: Option<String>,
    revocation_endpoint: Option<String>,
}

#[derive(Deserialize)]
struct ProtectedResourceMetadata {
    resource: Option<String>,
    #[serde(default)]
    authorization_servers: Vec<String>,
    #[serde(default)]
    scopes_supported: Vec<String>,
}

/// Why discovery found no usable endpoints.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A document could not be fetched or read (often transient).
    #[error("{0}")]
    Fetch(String),
    /// There is no such document (404).
    #[error("{0} answered 404 Not Found")]
    Missing(Url),
    /// A document says something bearerd does not follow: plain http off this host, another
    /// issuer or resource, no authorization server.
    #[error("{0}")]
    Refused(String),
    /// The protected resource names no authorization server the credential allows: nothing
    /// was sent to any of them. Permanent: only a config change helps.
    #[error("the upstream names authorization server {named}, which is not in the credential's allowed_authorization_servers ({allowed}): nothing was sent to it")]
    NotAllowed { named: String, allowed: String },
    #[error("no authorization server metadata for {issuer}: {}", tried.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    NoMetadata {
        issuer: Url,
        tried: Vec<DiscoveryError>,
    },
}

fn parse_url(field: &str, value: Option<String>) -> Result<Option<Url>, DiscoveryError> {
    match value {
        None => Ok(None),
        Some(v) => {
            let url = Url::parse(&v).map_err(|e| {
                DiscoveryError::Refused(format!("metadata field {field} is not a URL ({v:?}): {e}"))
            })?;
            require_https(field, &url)?;
            Ok(Some(url))
        }
    }
}

/// Secrets only travel to https endpoints, or to plain http on this machine.
fn require_https(what: &str, url: &Url) -> Result<(), DiscoveryError> {
    if crate::config::secure_or_loopback(url) {
        Ok(())
    } else {
        Err(DiscoveryError::Refused(format!(
            "{what} {url} must use https"
        )))
    }
}

/// Whether `issuer` is one of `allowed`: an issuer URL (without its trailing slash) or a
/// host (`host`, or `host:port` with the URL's port or its scheme's default).
fn is_allowed(issuer: &Url, allowed: &[String]) -> bool {
    let url = issuer.as_str().trim_end_matches('/');
    let host = issuer.host_str().unwrap_or_default().to_ascii_lowercase();
    let port = issuer.port_or_known_default().unwrap_or(0);
    allowed.iter().any(|pin| {
        if pin.contains("://") {
            pin == url
        } else {
            *pin == host || *pin == format!("{host}:{port}")
        }
    })
}

/// `https://host/path` → `https://host/.well-known/{suffix}/path` (RFC 8414 §3, RFC 9728 §3).
fn well_known_inserted(base: &Url, suffix: &str) -> Url {
    let mut u = base.clone();
    let path = base.path().trim_end_matches('/');
    u.set_path(&format!("/.well-known/{suffix}{path}"));
    u.set_query(None);
    u
}

/// `https://host/path` → `https://host/path/.well-known/openid-configuration`.
fn well_known_appended(base: &Url, suffix: &str) -> Url {
    let mut u = base.clone();
    let path = base.path().trim_end_matches('/');
    u.set_path(&format!("{path}/.well-known/{suffix}"));
    u.set_query(None);
    u
}

async fn get_json<T: for<'de> Deserialize<'de>>(
    http: &reqwest::Client,
    url: &Url,
) -> Result<T, DiscoveryError> {
    let fetch = |message: String| DiscoveryError::Fetch(message);
    let resp = http
        .get(url.clone())
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| fetch(format!("{url}: {e}")))?;
    if resp.status() == http::StatusCode::NOT_FOUND {
        return Err(DiscoveryError::Missing(url.clone()));
    }
    if !resp.status().is_success() {
        return Err(fetch(format!("{url} answered {}", resp.status())));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| fetch(format!("{url}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| fetch(format!("{url} is not valid metadata: {e}")))
}

/// The endpoints an authorization server's metadata names (its issuer already checked).
fn endpoints_from_metadata(
    m: AuthorizationServerMetadata,
) -> Result<ProviderEndpoints, DiscoveryError> {
    Ok(ProviderEndpoints {
        issuer: m.issuer.clone(),
        iss_in_authorization_responses: m.authorization_response_iss_parameter_supported,
        token: parse_url("token_endpoint", m.token_endpoint)?,
        revocation: parse_url("revocation_endpoint", m.revocation_endpoint)?,
        authorization: parse_url("authorization_endpoint", m.authorization_endpoint)?,
        device_authorization: parse_url(
            "device_authorization_endpoint",
            m.device_authorization_endpoint,
        )?,
        resource: None,
        registration: parse_url("registration_endpoint", m.registration_endpoint)?,
        client_id_metadata_documents: m.client_id_metadata_document_supported,
        token_auth_methods: m.token_endpoint_auth_methods_supported,
        server_scopes: m.scopes_supported,
        resource_scopes: Vec::new(),
        mtls_token: parse_url(
            "mtls_endpoint_aliases.token_endpoint",
            m.mtls_endpoint_aliases
                .as_ref()
                .and_then(|a| a.token_endpoint.clone()),
        )?,
        mtls_revocation: parse_url(
            "mtls_endpoint_aliases.revocation_endpoint",
            m.mtls_endpoint_aliases.and_then(|a| a.revocation_endpoint),
        )?,
    })
}

/// Authorization server metadata for `issuer`: RFC 8414 first, then OpenID Connect.
pub async fn from_issuer(
    http: &reqwest::Client,
    issuer: &Url,
) -> Result<ProviderEndpoints, DiscoveryError> {
    let candidates = [
        well_known_inserted(issuer, "oauth-authorization-server"),
        well_known_inserted(issuer, "openid-configuration"),
        well_known_appended(issuer, "openid-configuration"),
    ];
    let mut errors = Vec::new();
    for url in candidates {
        match get_json::<AuthorizationServerMetadata>(http, &url).await {
            Ok(m) => {
                // RFC 8414 §3.3: the metadata must name the issuer that was asked for.
                let found = m.issuer.as_deref().unwrap_or("");
                if found.trim_end_matches('/') != issuer.as_str().trim_end_matches('/') {
                    errors.push(DiscoveryError::Refused(format!(
                        "{url} names issuer {found:?}, not {issuer}"
                    )));
                    continue;
                }
                return endpoints_from_metadata(m);
            }
            Err(e) => errors.push(e),
        }
    }
    Err(DiscoveryError::NoMetadata {
        issuer: issuer.clone(),
        tried: errors,
    })
}

/// The `resource_metadata` parameter of a `WWW-Authenticate: Bearer …` challenge.
pub fn resource_metadata_param(header: &str) -> Option<String> {
    challenge_param(header, "resource_metadata")
}

/// A parameter of a `WWW-Authenticate` header (RFC 9110 §11.2: `name=token` or
/// `name="quoted"`, names case-insensitive, spaces around `=`), never found inside another
/// parameter's quoted value.
/// Only the `Bearer` challenge's: a header may carry others (`DPoP`, `Basic`), whose
/// parameters say nothing of a bearer token.
pub fn challenge_param(header: &str, name: &str) -> Option<String> {
    scheme_param(header, "bearer", name)
}

/// The parameter `name` of the challenge of `scheme` (`Bearer`, `DPoP`) in a
/// `WWW-Authenticate` header.
pub fn scheme_param(header: &str, scheme: &str, name: &str) -> Option<String> {
    challenge_params(header)
        .into_iter()
        .find(|(s, n, _)| s.eq_ignore_ascii_case(scheme) && n.eq_ignore_ascii_case(name))
        .map(|(_, _, v)| v)
}

/// Every `name=value` of a `WWW-Authenticate` header with the scheme of its challenge, in
/// order (token68s are skipped).
fn challenge_params(header: &str) -> Vec<(String, String, String)> {
    let c: Vec<char> = header.chars().collect();
    let skip_spaces = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut scheme = String::new();
    let mut i = 0;
    while i < c.len() {
        while i < c.len() && (c[i] == ',' || c[i].is_whitespace()) {
            i += 1;
        }
        let start = i;
        while i < c.len() && c[i] != '=' && c[i] != ',' && !c[i].is_whitespace() {
            i += 1;
        }
        let name: String = c[start..i].iter().collect();
        let mut j = skip_spaces(i);
        if name.is_empty() || j >= c.len() || c[j] != '=' {
            // A scheme starts a challenge (or a stray character): go on after it.
            if !name.is_empty() {
                scheme = name;
            }
            i = if i == start { i + 1 } else { i };
            continue;
        }
        j = skip_spaces(j + 1);
        let mut value = String::new();
        if j < c.len() && c[j] == '"' {
            j += 1;
            while j < c.len() && c[j] != '"' {
                if c[j] == '\\' && j + 1 < c.len() {
                    j += 1;
                }
                value.push(c[j]);
                j += 1;
            }
            j += 1;
        } else {
            while j < c.len() && c[j] != ',' && !c[j].is_whitespace() {
                value.push(c[j]);
                j += 1;
            }
        }
        out.push((scheme.clone(), name, value));
        i = j;
    }
    out
}

/// The `resource_metadata` of the protected resource's challenge to a request without a
/// token. A GET first; an MCP server that does not challenge it (it serves only POST) gets
/// a JSON-RPC `ping`, which a server that needs a token refuses unread. Any other upstream
/// is never sent a POST.
async fn challenge_metadata(
    http: &reqwest::Client,
    resource: &Url,
    speaks_mcp: bool,
) -> Result<Challenge, DiscoveryError> {
    let challenged = |resp: &reqwest::Response| {
        let values = || {
            resp.headers()
                .get_all("www-authenticate")
                .iter()
                .filter_map(|v| v.to_str().ok())
        };
        Challenge {
            metadata: values().find_map(resource_metadata_param),
            scope: values().find_map(|v| challenge_param(v, "scope")),
        }
    };
    let fetch = |e: reqwest::Error| DiscoveryError::Fetch(format!("{resource}: {e}"));
    let resp = http.get(resource.clone()).send().await.map_err(fetch)?;
    if !speaks_mcp
        || resp.status() == http::StatusCode::UNAUTHORIZED
        || resp.headers().contains_key("www-authenticate")
    {
        return Ok(challenged(&resp));
    }
    let resp = http
        .post(resource.clone())
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":"bearerd-discovery","method":"ping"}"#)
        .send()
        .await
        .map_err(fetch)?;
    Ok(challenged(&resp))
}

/// The 2025-03-26 MCP authorization: the server's origin is its authorization server,
/// with RFC 8414 metadata at the root, or else the default endpoints `/authorize`,
/// `/token` and `/register`. Pinned like any other server.
async fn server_on_the_resources_origin(
    http: &reqwest::Client,
    resource: &Url,
    allowed: &[String],
) -> Result<ProviderEndpoints, DiscoveryError> {
    let mut origin = resource.clone();
    origin.set_path("/");
    origin.set_query(None);
    if !is_allowed(&origin, allowed) {
        return Err(DiscoveryError::NotAllowed {
            named: origin.as_str().trim_end_matches('/').to_string(),
            allowed: allowed.join(", "),
        });
    }
    let base = origin.as_str().trim_end_matches('/').to_string();
    let metadata_url = well_known_inserted(&origin, "oauth-authorization-server");
    match get_json::<AuthorizationServerMetadata>(http, &metadata_url).await {
        // The metadata at the root names its issuer, which may have a path: on this origin
        // it is the server's own.
        Ok(m) => {
            let named = m.issuer.as_deref().and_then(|i| Url::parse(i).ok());
            match named {
                Some(issuer) if issuer.origin() == origin.origin() => endpoints_from_metadata(m),
                _ => Err(DiscoveryError::Refused(format!(
                    "{metadata_url} names issuer {:?}, which is not on {base}",
                    m.issuer.unwrap_or_default()
                ))),
            }
        }
        Err(DiscoveryError::Missing(_)) => {
            let at = |path: &str| Url::parse(&format!("{base}{path}")).ok();
            Ok(ProviderEndpoints {
                token: at("/token"),
                authorization: at("/authorize"),
                registration: at("/register"),
                ..ProviderEndpoints::default()
            })
        }
        Err(e) => Err(e),
    }
}

/// What a protected resource's challenge says.
struct Challenge {
    metadata: Option<String>,
    scope: Option<String>,
}

/// RFC 9728: asks the protected resource (without a token) where its authorization server
/// is, then discovers that server. Falls back to the well-known location when the 401 names
/// no metadata.
pub async fn from_protected_resource(
    http: &reqwest::Client,
    resource: &Url,
    allowed: &[String],
    speaks_mcp: bool,
) -> Result<ProviderEndpoints, DiscoveryError> {
    let refused = |message: String| DiscoveryError::Refused(message);
    let challenge = challenge_metadata(http, resource, speaks_mcp).await?;
    let advertised = challenge.metadata.is_some();
    let candidates = match challenge.metadata {
        Some(u) => vec![Url::parse(&u)
            .map_err(|e| refused(format!("resource_metadata {u:?} is not a URL: {e}")))?],
        // RFC 9728 §3.1: the path-suffixed well-known URI, then (as MCP clients do) the
        // root's.
        None => {
            let mut root = resource.clone();
            root.set_path("/");
            let mut c = vec![well_known_inserted(resource, "oauth-protected-resource")];
            c.push(well_known_inserted(&root, "oauth-protected-resource"));
            c.dedup();
            c
        }
    };
    let mut errors = Vec::new();
    let mut found = None;
    let mut all_missing = true;
    for metadata_url in candidates {
        require_https("resource_metadata", &metadata_url)?;
        if metadata_url.origin() != resource.origin() {
            return Err(refused(format!(
                "resource_metadata {metadata_url} is not on the upstream's origin {}",
                resource.origin().ascii_serialization()
            )));
        }
        match get_json::<ProtectedResourceMetadata>(http, &metadata_url).await {
            Ok(prm) => {
                found = Some((metadata_url, prm));
                break;
            }
            Err(e) => {
                all_missing &= matches!(e, DiscoveryError::Missing(_));
                errors.push(e.to_string());
            }
        }
    }
    let Some((metadata_url, prm)) = found else {
        if all_missing && !advertised {
            // No protected-resource metadata at all: the 2025-03-26 MCP servers, whose
            // own origin is their authorization server.
            return server_on_the_resources_origin(http, resource, allowed).await;
        }
        return Err(DiscoveryError::Fetch(errors.join("; ")));
    };
    // RFC 9728 §3.3: the metadata must describe this resource, not another one.
    if let Some(r) = &prm.resource {
        let same = Url::parse(r).is_ok_and(|u| u.origin() == resource.origin());
        if !same {
            return Err(refused(format!(
                "{metadata_url} describes resource {r:?}, not {resource}"
            )));
        }
    }
    if prm.authorization_servers.is_empty() {
        return Err(refused(format!(
            "{metadata_url} lists no authorization_servers"
        )));
    }
    // The first server the credential allows (and that is https, or http on loopback):
    // the upstream may not choose where the client's secrets go.
    let issuer = prm
        .authorization_servers
        .iter()
        .filter_map(|s| Url::parse(s).ok())
        .find(|u| crate::config::secure_or_loopback(u) && is_allowed(u, allowed))
        .ok_or_else(|| DiscoveryError::NotAllowed {
            named: prm.authorization_servers.join(", "),
            allowed: allowed.join(", "),
        })?;
    let mut endpoints = from_issuer(http, &issuer).await?;
    endpoints.resource = prm.resource;
    // The MCP authorization spec's order: the challenge's scope, else the metadata's.
    endpoints.resource_scopes = match challenge.scope {
        Some(s) => s.split_whitespace().map(str::to_string).collect(),
        None => prm.scopes_supported,
    };
    Ok(endpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        let u = Url::parse("https://idp.example.com/tenant1").unwrap();
        assert_eq!(
            well_known_inserted(&u, "oauth-authorization-server").as_str(),
            "https://idp.example.com/.well-known/oauth-authorization-server/tenant1"
        );
        assert_eq!(
            well_known_appended(&u, "openid-configuration").as_str(),
            "https://idp.example.com/tenant1/.well-known/openid-configuration"
        );
        let root = Url::parse("https://idp.example.com/").unwrap();
        assert_eq!(
            well_known_inserted(&root, "oauth-authorization-server").as_str(),
            "https://idp.example.com/.well-known/oauth-authorization-server"
        );
    }

    #[test]
    fn discovery_takes_only_a_pinned_authorization_server() {
        let pins = [
            "idp.example.com".to_string(),
            "127.0.0.1:9000".to_string(),
            "https://login.example.com/tenant".to_string(),
        ];
        let allowed = |u: &str| is_allowed(&Url::parse(u).unwrap(), &pins);
        assert!(allowed("https://idp.example.com"));
        assert!(allowed("https://IDP.example.com/any/path"));
        assert!(allowed("http://127.0.0.1:9000"));
        assert!(allowed("https://login.example.com/tenant/"));
        assert!(!allowed("https://login.example.com/other"));
        assert!(!allowed("https://idp.example.com.evil.test"));
        assert!(!allowed("http://127.0.0.1:9001"));
        assert!(!allowed("https://evil.example"));
    }

    #[test]
    fn an_authorization_response_must_come_from_the_discovered_issuer() {
        let mut e = ProviderEndpoints {
            issuer: Some("https://idp.example/".into()),
            ..Default::default()
        };
        // Not announced: checked when it is there, not required.
        assert_eq!(e.check_response_issuer(None), Ok(()));
        assert_eq!(e.check_response_issuer(Some("https://idp.example")), Ok(()));
        assert!(matches!(
            e.check_response_issuer(Some("https://evil.example")),
            Err(ResponseIssuerError::Different { .. })
        ));
        e.iss_in_authorization_responses = true;
        assert_eq!(
            e.check_response_issuer(None),
            Err(ResponseIssuerError::Missing)
        );
        assert_eq!(
            e.check_response_issuer(Some("https://idp.example/")),
            Ok(())
        );
        // Nothing discovered, nothing announced: nothing to check against.
        let plain = ProviderEndpoints::default();
        assert_eq!(
            plain.check_response_issuer(Some("https://any.example")),
            Ok(())
        );
    }

    #[test]
    fn parses_resource_metadata_from_challenges() {
        assert_eq!(
            resource_metadata_param(r#"Bearer error="invalid_token", resource_metadata="https://m.example/.well-known/oauth-protected-resource""#).as_deref(),
            Some("https://m.example/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            resource_metadata_param("Bearer resource_metadata=https://x/y, error=1").as_deref(),
            Some("https://x/y")
        );
        assert_eq!(resource_metadata_param("Bearer realm=\"x\""), None);
        let h = r#"Bearer error="insufficient_scope", scope="mcp:read mcp:write", resource_metadata="https://m/x""#;
        assert_eq!(
            challenge_param(h, "scope").as_deref(),
            Some("mcp:read mcp:write")
        );
        assert_eq!(challenge_param("Bearer xscope=\"a\"", "scope"), None);
        // Not inside another parameter's quoted value; names are case-insensitive.
        let tricky = r#"Bearer error_description="set scope=admin, please", SCOPE = "a \"b\"""#;
        assert_eq!(
            challenge_param(tricky, "scope").as_deref(),
            Some(r#"a "b""#)
        );
        assert_eq!(challenge_param("Bearer", "scope"), None);
        // Another scheme's parameters are not the bearer challenge's.
        let two = r#"DPoP error="use_dpop_nonce", scope="x", Bearer scope="y""#;
        assert_eq!(challenge_param(two, "scope").as_deref(), Some("y"));
        assert_eq!(challenge_param(two, "error"), None);
        assert_eq!(
            scheme_param(two, "dpop", "error").as_deref(),
            Some("use_dpop_nonce")
        );
        assert_eq!(challenge_param("==,,=", "scope"), None);
        assert_eq!(
            challenge_param("Bearer scope=\"unterminated", "scope").as_deref(),
            Some("unterminated")
        );
    }
}
