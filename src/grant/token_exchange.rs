//! `grant = "token_exchange"` (RFC 8693): trades a subject token the platform writes (a
//! projected service-account token, say) for a token of the API. The subject token is read
//! at every exchange, so the platform's rotation is picked up; the issued token is replaced
//! before the subject token's own `exp`, since the provider may tie the two together.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{GrantBuildError, GrantError, GrantKind, IssuedToken, Kind};
use crate::config::lowering::*;
use crate::config::TokenRequestConfig;
use crate::config::{ConfigError, GrantConfig, GrantSettings, LowerGrant, LoweredGrant};
use crate::config::{Material, SecretRef, SourceMap, SubjectConfig, SubjectKind};
use crate::material::RawSecretRef;
use crate::oauth::client_auth;
use crate::oauth::{GrantInput, TokenEndpoint};

pub struct TokenExchangeKind;

impl Kind for TokenExchangeKind {
    const NAME: &'static str = "token_exchange";
    type Table = RawTokenExchangeCredential;
    type Settings = TokenExchangeConfig;

    fn build(settings: &Self::Settings) -> Result<Box<dyn GrantKind>, GrantBuildError> {
        let endpoint = Arc::new(TokenEndpoint::new(&settings.request)?);
        Ok(Box::new(TokenExchange::new(endpoint, settings)))
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

/// A `token_exchange` credential (RFC 8693): a subject token from a file, or from each
/// request's header (on behalf of its user), and an optional actor token.
impl LowerGrant for RawTokenExchangeCredential {
    fn lower(&self, map: &SourceMap, name: &str) -> Result<LoweredGrant, ConfigError> {
        let t = self;
        // The schedule first, as for every grant: its errors are reported before the others.
        let policy = lower_policy(map, name, &t.schedule(), &t.wait())?;
        let key = |k: &str| format!("credentials.{name}.{k}");
        let mut subjects = None;
        let request = lower_token_request(
            map,
            name,
            &t.grant,
            &t.token_request(),
            ClientIdRule::Optional,
            false,
        )?;
        let Some(subject) = &t.subject_token else {
            return Err(map.error_at(
                &key("grant"),
                "grant \"token_exchange\" needs `subject_token = { file = \"…\" }` (or `{ header = \"…\" }` on behalf of each request's user)",
            ));
        };
        let subject = match subject {
            RawSecretRef::Header { header } => {
                subjects = Some(lower_on_behalf_of(map, name, header, t)?);
                TypedToken {
                    // Never sent: each subject's grant takes the request's token.
                    token: SecretRef::Value(secrecy::SecretString::from(String::new())),
                    token_type: match &t.subject_token_type {
                        Some(ty) => token_type_uri(map, &key("subject_token_type"), ty)?,
                        None => TOKEN_TYPE_JWT.to_string(),
                    },
                }
            }
            _ => {
                for (field, set) in [
                    ("subject_idle", t.subject_idle.is_some()),
                    ("max_subjects_in_memory", t.max_subjects_in_memory.is_some()),
                    (
                        "new_subjects_per_second",
                        t.new_subjects_per_second.is_some(),
                    ),
                    ("opaque_token_lifetime", t.opaque_token_lifetime.is_some()),
                ] {
                    if set {
                        return Err(map.error_at(
                            &key(field),
                            format!("{field} belongs to on-behalf-of exchanges: subject_token = {{ header = \"…\" }}"),
                        ));
                    }
                }
                lower_typed_token(
                    map,
                    name,
                    ("subject_token", subject),
                    ("subject_token_type", &t.subject_token_type),
                )?
            }
        };
        let actor = match (&t.actor_token, &t.actor_token_type) {
            (Some(actor), ty) => Some(lower_typed_token(
                map,
                name,
                ("actor_token", actor),
                ("actor_token_type", ty),
            )?),
            (None, Some(_)) => {
                return Err(map.error_at(
                    &key("actor_token_type"),
                    "actor_token_type needs `actor_token`",
                ))
            }
            (None, None) => None,
        };
        let requested_token_type = t
            .requested_token_type
            .as_deref()
            .map(|v| token_type_uri(map, &key("requested_token_type"), v))
            .transpose()?;
        let audience = non_empty(map, &key("audience"), &t.audience)?;
        if request.params.contains_key("audience") {
            return Err(map.error_at(
                &key("params"),
                "a token_exchange credential sets `audience` as a key of its own, not in params",
            ));
        }
        let exchange = TokenExchangeConfig {
            request,
            subject,
            actor,
            audience,
            requested_token_type,
        };
        Ok(LoweredGrant {
            grant: GrantConfig::new(exchange),
            policy,
            subjects,
        })
    }
}

/// `subject_token = { header = "…" }`: each request carries its user's token, exchanged
/// (and cached under a hash of it) on that user's behalf.
fn lower_on_behalf_of(
    map: &SourceMap,
    name: &str,
    header: &str,
    t: &RawTokenExchangeCredential,
) -> Result<SubjectConfig, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    // An `actor_token` (the agent's own token, from a file) goes with every user's
    // exchange, lowered with the other grant keys.
    let header = subject_header_name(map, &key("subject_token"), header)?;
    let (idle, max_in_memory) =
        subjects_in_memory(map, name, &t.subject_idle, t.max_subjects_in_memory)?;
    let new_per_second = t
        .new_subjects_per_second
        .unwrap_or(SubjectConfig::DEFAULT_NEW_PER_SECOND);
    if new_per_second == 0 {
        return Err(map.error_at(
            &key("new_subjects_per_second"),
            "new_subjects_per_second must be at least 1",
        ));
    }
    let opaque_lifetime = bounded_duration(
        map,
        &key("opaque_token_lifetime"),
        &t.opaque_token_lifetime,
        SubjectConfig::DEFAULT_OPAQUE_LIFETIME,
        Duration::from_secs(1),
    )?;
    Ok(SubjectConfig {
        header,
        kind: SubjectKind::OnBehalfOf {
            new_per_second,
            opaque_lifetime,
        },
        idle,
        max_in_memory,
        connect_lifetime: SubjectConfig::DEFAULT_CONNECT_LIFETIME,
        from_jwt: None,
    })
}

/// A token read at every use, with its RFC 8693 type (a JWT unless said otherwise; one
/// declared as a JWT must be one already).
fn lower_typed_token(
    map: &SourceMap,
    name: &str,
    (token_key, raw): (&str, &RawSecretRef),
    (type_key, token_type): (&str, &Option<String>),
) -> Result<TypedToken, ConfigError> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    let token = SecretRef::File(file_only(map, &key(token_key), raw)?);
    let token_type = match token_type {
        Some(t) => token_type_uri(map, &key(type_key), t)?,
        None => TOKEN_TYPE_JWT.to_string(),
    };
    let check = if token_type == TOKEN_TYPE_JWT || token_type == TOKEN_TYPE_ID_TOKEN {
        Material::Jwt(token.clone())
    } else {
        Material::Secret(token.clone())
    };
    map.check_later(&key(token_key), check);
    Ok(TypedToken { token, token_type })
}

fn token_type_uri(map: &SourceMap, key: &str, value: &str) -> Result<String, ConfigError> {
    if value.contains(':') && !value.chars().any(char::is_whitespace) {
        Ok(value.to_string())
    } else {
        Err(map.error_at(
            key,
            format!("{value:?} is not a token type URI (such as {TOKEN_TYPE_JWT})"),
        ))
    }
}

/// A token (read at every exchange) and its RFC 8693 type URI.
#[derive(Debug, Clone)]
pub struct TypedToken {
    pub token: SecretRef,
    pub token_type: String,
}

/// `grant = "token_exchange"` (RFC 8693).
#[derive(Debug, Clone)]
pub struct TokenExchangeConfig {
    pub request: TokenRequestConfig,
    pub subject: TypedToken,
    pub actor: Option<TypedToken>,
    pub audience: Option<String>,
    pub requested_token_type: Option<String>,
}

/// RFC 8693's default subject token type (a JWT, such as a service-account token).
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// An OpenID Connect ID token as the subject: also a JWT.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

impl GrantSettings for TokenExchangeConfig {
    super::settings_of!(TokenExchangeKind, request);

    /// The subject and actor tokens' sources and types, and the requested type.
    fn identity(&self) -> (Option<&str>, String) {
        let actor = self.actor.as_ref().map_or(String::new(), |a| {
            format!("{} {}", a.token.describe(), a.token_type)
        });
        let identity = format!(
            "{} {}|{}|{}",
            self.subject.token.describe(),
            self.subject.token_type,
            actor,
            self.requested_token_type.as_deref().unwrap_or("")
        );
        (self.audience.as_deref(), identity)
    }
}

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

pub struct TokenExchange {
    /// Shared by the subjects of an on-behalf-of credential.
    endpoint: Arc<TokenEndpoint>,
    subject: TypedToken,
    actor: Option<TypedToken>,
    audience: Option<String>,
    requested_token_type: Option<String>,
    /// On behalf of: the subject token came with a request and never changes, so a subject
    /// token that is expired or malformed is final for this subject (the app must send a
    /// new one), not something to wait for.
    fixed_subject: bool,
}

impl TokenExchange {
    pub fn new(endpoint: Arc<TokenEndpoint>, config: &TokenExchangeConfig) -> Self {
        TokenExchange {
            endpoint,
            subject: config.subject.clone(),
            actor: config.actor.clone(),
            audience: config.audience.clone(),
            requested_token_type: config.requested_token_type.clone(),
            fixed_subject: false,
        }
    }

    /// On behalf of one user: the exchange sends this token (from the user's request).
    pub fn on_behalf_of(
        endpoint: Arc<TokenEndpoint>,
        config: &TokenExchangeConfig,
        subject_token: secrecy::SecretString,
    ) -> Self {
        let mut exchange = Self::new(endpoint, config);
        exchange.subject.token = crate::config::SecretRef::Value(subject_token);
        exchange.fixed_subject = true;
        exchange
    }

    pub fn endpoint(&self) -> &TokenEndpoint {
        &self.endpoint
    }

    pub fn shared_endpoint(&self) -> Arc<TokenEndpoint> {
        Arc::clone(&self.endpoint)
    }

    pub async fn obtain(&self) -> Result<IssuedToken, GrantError> {
        let (subject, subject_left) =
            read_token(&self.subject, GrantInput::SubjectToken).map_err(|mut e| {
                e.permanent |= self.fixed_subject;
                e
            })?;
        let mut form = vec![
            ("grant_type", GRANT_TYPE.to_string()),
            ("subject_token", subject),
            ("subject_token_type", self.subject.token_type.clone()),
        ];
        let mut cap = subject_left;
        if let Some(actor) = &self.actor {
            let (token, left) = read_token(actor, GrantInput::ActorToken)?;
            form.push(("actor_token", token));
            form.push(("actor_token_type", actor.token_type.clone()));
            cap = match (cap, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if let Some(a) = &self.audience {
            form.push(("audience", a.clone()));
        }
        if let Some(t) = &self.requested_token_type {
            form.push(("requested_token_type", t.clone()));
        }
        let mut token = self.endpoint.request(form).await?.without_refresh_token();
        token.lifetime_cap = cap;
        Ok(token)
    }
}

/// Reads a subject or actor token. A JWT's `exp` bounds the issued token's lifetime; a
/// token declared as a JWT that is not one is refused before anything is sent.
fn read_token(
    token: &TypedToken,
    input: GrantInput,
) -> Result<(String, Option<Duration>), GrantError> {
    let declared_jwt = matches!(
        token.token_type.as_str(),
        TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN
    );
    let (value, left) = client_auth::read_token(&token.token, input, declared_jwt)?;
    Ok((value.expose_secret().to_string(), left))
}

#[async_trait::async_trait]
impl super::GrantKind for TokenExchange {
    async fn obtain(&self) -> Result<super::GrantOutcome, GrantError> {
        TokenExchange::obtain(self)
            .await
            .map(super::GrantOutcome::Issued)
    }

    fn endpoint(&self) -> Option<&TokenEndpoint> {
        Some(&self.endpoint)
    }

    fn subject_endpoint(&self) -> Option<Arc<TokenEndpoint>> {
        Some(self.shared_endpoint())
    }
}
