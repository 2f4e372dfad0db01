//! An OAuth2 token endpoint for the demo and the tests: short-lived tokens, rotating refresh
//! tokens with reuse detection (a reused refresh token revokes the whole grant, as real
//! providers do), and failures on command. It counts every request.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::json;

use crate::assertions::{AssertionPolicy, TrustedSigner, Use};

/// How the token endpoint misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub enum FailMode {
    None,
    /// Answer with this status and no body.
    Status(u16),
    /// Answer with this status, a `Retry-After` in seconds, and no body.
    StatusRetryAfter(u16, u64),
    /// Answer 400 with this OAuth error code.
    OAuthError(String),
    /// Answer 200 with a body that is not a token response.
    Malformed,
    /// Answer 400 `invalid_request` with the request's form in `error_description`, as a
    /// careless provider might.
    EchoForm,
}

struct Issued {
    serial: u64,
    expires: Instant,
}

#[derive(Default)]
struct RefreshTokens {
    active: HashSet<String>,
    /// Spent refresh token → when it was spent, and the one that replaced it.
    spent: HashMap<String, (Instant, String)>,
}

/// An authorization code: (PKCE challenge, redirect_uri, the user who consented).
type PendingCode = (String, String, Option<String>);

pub struct TokenServerState {
    requests: AtomicUsize,
    serial: AtomicU64,
    lifetime_ms: AtomicU64,
    delay_ms: AtomicU64,
    /// Delay after a rotation is committed, before the answer goes out: the crash window.
    answer_delay_ms: AtomicU64,
    rotations: AtomicUsize,
    fail: Mutex<FailMode>,
    send_expires_in: std::sync::atomic::AtomicBool,
    /// Access tokens are JWTs (with a signature nobody checks), for `bearerd inspect`.
    jwt_access_tokens: std::sync::atomic::AtomicBool,
    /// Logins (authorization code) get a refresh token (no offline access when false).
    login_refresh_tokens: std::sync::atomic::AtomicBool,
    issued: Mutex<HashMap<String, Issued>>,
    refresh: Mutex<RefreshTokens>,
    reuse_detected: AtomicUsize,
    /// Reuse of a spent refresh token is forgiven for this long (0: never).
    reuse_grace_ms: AtomicU64,
    grace_reuses: AtomicUsize,
    revocations: AtomicUsize,
    client_id: String,
    /// The secrets the client may present (two while one is being rotated).
    client_secrets: Mutex<Vec<String>>,
    last_form: Mutex<Vec<(String, String)>>,
    /// Every access and refresh token ever issued, for leak checks.
    every_issued: Mutex<Vec<String>>,
    codes: Mutex<HashMap<String, PendingCode>>,
    /// Access and refresh tokens issued for an end user → that user.
    owners: Mutex<HashMap<String, String>>,
    /// The user at the browser when the authorization endpoint is visited.
    authorizing_user: Mutex<Option<String>>,
    /// Device codes: device_code → (approved, polls so far).
    devices: Mutex<HashMap<String, (bool, u32)>>,
    /// Keys trusted for signed assertions and subject tokens.
    assertions: Mutex<AssertionPolicy>,
    /// Opaque subject tokens a token exchange accepts, and the user each stands for.
    opaque_subjects: Mutex<HashMap<String, String>>,
    /// Accept the client by its `client_id` alone (behind a mutual-TLS front, or public).
    public_client: std::sync::atomic::AtomicBool,
    /// RFC 8705 `mtls_endpoint_aliases.token_endpoint` in the metadata, when set.
    mtls_token_alias: Mutex<Option<String>>,
    /// RFC 9207: when set, the metadata says authorization responses carry `iss`, and the
    /// redirect carries this value (the real issuer, or another for a mix-up).
    response_issuer: Mutex<Option<String>>,
    /// Client registration (RFC 7591, client ID metadata documents).
    registration: Mutex<Registration>,
    /// The scopes of client_credentials tokens issued for a requested `scope`.
    scopes: Mutex<HashMap<String, Vec<String>>>,
    /// Scopes this client may not have: a request for one gets `invalid_scope`.
    refused_scopes: Mutex<Vec<String>>,
    /// An enterprise IdP: token exchanges for an ID-JAG are answered with a JWT signed
    /// with this key, as this issuer.
    id_jags: Mutex<Option<IdJagSigner>>,
    /// DPoP (RFC 9449): what proofs must be, and what they proved.
    dpop: Mutex<crate::dpop::DpopVerifier>,
    /// DPoP-bound access and refresh tokens → the thumbprint of their key.
    bound: Mutex<HashMap<String, String>>,
}

/// The key and issuer of the ID-JAGs an enterprise IdP signs.
struct IdJagSigner {
    key: jsonwebtoken::EncodingKey,
    alg: jsonwebtoken::Algorithm,
    issuer: String,
}

/// What the server offers for client registration, and who registered.
#[derive(Default)]
struct Registration {
    /// `registration_endpoint` is in the metadata and `/register` answers.
    dynamic: bool,
    /// `client_id_metadata_document_supported`: an https client_id is taken as it is.
    documents: bool,
    /// Registered clients get a secret (client_secret_basic) even when they ask for none.
    confidential: bool,
    /// Registered clients: client_id → secret (none for a public client).
    clients: HashMap<String, Option<String>>,
    /// Every registration request's body.
    requests: Vec<serde_json::Value>,
}

pub struct TokenServer {
    pub addr: SocketAddr,
    pub state: Arc<TokenServerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const CLIENT_ID: &str = "demo-client";
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const CLIENT_SECRET: &str = "demo-client-secret-9f3a";

fn random_hex() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl TokenServer {
    /// Starts on 127.0.0.1 with a random port; must be called inside a Tokio runtime.
    pub async fn start(lifetime: Duration) -> std::io::Result<TokenServer> {
        let state = Arc::new(TokenServerState {
            requests: AtomicUsize::new(0),
            serial: AtomicU64::new(0),
            lifetime_ms: AtomicU64::new(lifetime.as_millis() as u64),
            delay_ms: AtomicU64::new(0),
            answer_delay_ms: AtomicU64::new(0),
            rotations: AtomicUsize::new(0),
            fail: Mutex::new(FailMode::None),
            send_expires_in: std::sync::atomic::AtomicBool::new(true),
            jwt_access_tokens: std::sync::atomic::AtomicBool::new(false),
            login_refresh_tokens: std::sync::atomic::AtomicBool::new(true),
            issued: Mutex::new(HashMap::new()),
            refresh: Mutex::new(RefreshTokens::default()),
            reuse_detected: AtomicUsize::new(0),
            reuse_grace_ms: AtomicU64::new(0),
            grace_reuses: AtomicUsize::new(0),
            revocations: AtomicUsize::new(0),
            client_id: CLIENT_ID.to_string(),
            client_secrets: Mutex::new(vec![CLIENT_SECRET.to_string()]),
            last_form: Mutex::new(Vec::new()),
            every_issued: Mutex::new(Vec::new()),
            codes: Mutex::new(HashMap::new()),
            owners: Mutex::new(HashMap::new()),
            authorizing_user: Mutex::new(None),
            devices: Mutex::new(HashMap::new()),
            assertions: Mutex::new(AssertionPolicy::default()),
            opaque_subjects: Mutex::new(HashMap::new()),
            public_client: std::sync::atomic::AtomicBool::new(false),
            mtls_token_alias: Mutex::new(None),
            response_issuer: Mutex::new(None),
            registration: Mutex::new(Registration::default()),
            scopes: Mutex::new(HashMap::new()),
            refused_scopes: Mutex::new(Vec::new()),
            id_jags: Mutex::new(None),
            dpop: Mutex::new(crate::dpop::DpopVerifier::default()),
            bound: Mutex::new(HashMap::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let issuer = format!("http://{addr}");
        let metadata = json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/token"),
            "revocation_endpoint": format!("{issuer}/revoke"),
            "authorization_endpoint": format!("{issuer}/authorize"),
            "device_authorization_endpoint": format!("{issuer}/device"),
        });
        let metadata_state = Arc::clone(&state);
        let app = Router::new()
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/authorize", axum::routing::get(authorize))
            .route("/device", post(device_authorization))
            .route("/register", post(register))
            .route(
                "/.well-known/oauth-authorization-server",
                axum::routing::get(move || async move {
                    let mut metadata = metadata.clone();
                    let alias = metadata_state.mtls_token_alias.lock().unwrap().clone();
                    if let Some(alias) = alias {
                        metadata["mtls_endpoint_aliases"] = json!({ "token_endpoint": alias });
                    }
                    if metadata_state.response_issuer.lock().unwrap().is_some() {
                        metadata["authorization_response_iss_parameter_supported"] = json!(true);
                    }
                    let reg = metadata_state.registration.lock().unwrap();
                    if reg.dynamic {
                        metadata["registration_endpoint"] = json!(format!(
                            "{}/register",
                            metadata["issuer"].as_str().unwrap_or("")
                        ));
                        metadata["token_endpoint_auth_methods_supported"] = match reg.confidential {
                            true => json!(["client_secret_basic"]),
                            false => json!(["none", "client_secret_basic"]),
                        };
                    }
                    if reg.documents {
                        metadata["client_id_metadata_document_supported"] = json!(true);
                    }
                    drop(reg);
                    Json(metadata)
                }),
            )
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(TokenServer { addr, state, task })
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The issuer identifier; its RFC 8414 metadata is served.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn revocation_url(&self) -> String {
        format!("http://{}/revoke", self.addr)
    }
}

impl TokenServerState {
    /// Token requests received so far (all of them, failed ones included).
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn set_lifetime(&self, d: Duration) {
        self.lifetime_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Holds each refresh-token answer this long after the rotation is committed.
    pub fn set_answer_delay(&self, d: Duration) {
        self.answer_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Refresh-token rotations committed so far.
    pub fn rotations(&self) -> usize {
        self.rotations.load(Ordering::SeqCst)
    }
    pub fn set_fail(&self, mode: FailMode) {
        *self.fail.lock().unwrap() = mode;
    }
    /// Leave `expires_in` out of token responses.
    pub fn omit_expires_in(&self, omit: bool) {
        self.send_expires_in.store(!omit, Ordering::SeqCst);
    }
    /// Logins by authorization code get no refresh token (a provider without offline
    /// access, as MCP authorization servers often are).
    pub fn no_refresh_token_on_login(&self) {
        self.login_refresh_tokens.store(false, Ordering::SeqCst);
    }
    /// Revokes every access token issued so far (an upstream-side revocation).
    pub fn revoke_access_tokens(&self) {
        self.issued.lock().unwrap().clear();
    }
    /// The serial number of a valid access token, or None when it is unknown, expired or revoked.
    pub fn validate(&self, token: &str) -> Option<u64> {
        let issued = self.issued.lock().unwrap();
        issued
            .get(token)
            .filter(|i| Instant::now() < i.expires)
            .map(|i| i.serial)
    }
    /// Issues a refresh token as a login would.
    pub fn seed_refresh_token(&self) -> String {
        let rt = format!("rt_{}", random_hex());
        self.refresh.lock().unwrap().active.insert(rt.clone());
        self.every_issued.lock().unwrap().push(rt.clone());
        rt
    }
    /// Issues a refresh token for an end user, as that user's login would.
    pub fn seed_refresh_token_for(&self, subject: &str) -> String {
        let rt = self.seed_refresh_token();
        self.owners
            .lock()
            .unwrap()
            .insert(rt.clone(), subject.to_string());
        rt
    }
    /// An access and a refresh token for an end user, as a login would give (for tests that
    /// fill a store with many users' tokens at once).
    pub fn tokens_for(&self, subject: &str) -> (String, String) {
        let body = self.issue_for(true, Some(subject));
        let field = |k: &str| body[k].as_str().unwrap_or_default().to_string();
        (field("access_token"), field("refresh_token"))
    }
    /// The end user an access or refresh token was issued for.
    pub fn subject_of(&self, token: &str) -> Option<String> {
        self.owners.lock().unwrap().get(token).cloned()
    }
    /// Revokes every refresh token of this end user (the user disconnected the app).
    pub fn revoke_subject(&self, subject: &str) {
        let owners = self.owners.lock().unwrap();
        let mut r = self.refresh.lock().unwrap();
        r.active
            .retain(|rt| owners.get(rt).map(String::as_str) != Some(subject));
    }
    /// Revokes every access and refresh token of this end user.
    fn revoke_grant_of(&self, subject: &str) {
        self.revoke_subject(subject);
        let owners = self.owners.lock().unwrap();
        self.issued
            .lock()
            .unwrap()
            .retain(|t, _| owners.get(t).map(String::as_str) != Some(subject));
    }
    /// Who logs in at the authorization endpoint from now on (none: an anonymous user).
    pub fn set_authorizing_user(&self, subject: Option<&str>) {
        *self.authorizing_user.lock().unwrap() = subject.map(str::to_string);
    }
    /// Approves every pending device code (the user entered it and consented).
    pub fn approve_devices(&self) {
        for d in self.devices.lock().unwrap().values_mut() {
            d.0 = true;
        }
    }
    /// Device codes issued so far.
    pub fn device_codes(&self) -> usize {
        self.devices.lock().unwrap().len()
    }
    /// Tokens revoked through the revocation endpoint (RFC 7009).
    pub fn revocations(&self) -> usize {
        self.revocations.load(Ordering::SeqCst)
    }
    /// Whether a refresh token is still usable (what introspection would say).
    pub fn refresh_token_active(&self, rt: &str) -> bool {
        self.refresh.lock().unwrap().active.contains(rt)
    }
    /// Forgives the reuse of a spent refresh token for this long after it was spent, as
    /// Okta's grace period and Auth0's reuse interval do. Zero (the default) is strict.
    pub fn set_reuse_grace(&self, d: Duration) {
        self.reuse_grace_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
    /// Reuses forgiven by the grace period.
    pub fn grace_reuses(&self) -> usize {
        self.grace_reuses.load(Ordering::SeqCst)
    }
    /// How often a spent refresh token was presented again (each time revoked the grant).
    pub fn reuse_detected(&self) -> usize {
        self.reuse_detected.load(Ordering::SeqCst)
    }
    /// The refresh tokens still usable.
    pub fn active_refresh_tokens(&self) -> usize {
        self.refresh.lock().unwrap().active.len()
    }
    /// Every access and refresh token issued so far.
    pub fn every_issued(&self) -> Vec<String> {
        self.every_issued.lock().unwrap().clone()
    }
    /// Trusts these keys for `client_assertion` (replacing the ones trusted before).
    pub fn trust_client_assertions(&self, signers: Vec<TrustedSigner>) {
        self.assertions.lock().unwrap().client = signers;
    }
    /// Trusts these keys for jwt_bearer assertions and token-exchange subject tokens.
    pub fn trust_grant_assertions(&self, signers: Vec<TrustedSigner>) {
        self.assertions.lock().unwrap().grant = signers;
    }
    /// Accepts `token`, an opaque (not a JWT) token of `user`, as a token-exchange subject
    /// token, as a provider that introspects its own tokens does.
    pub fn accept_opaque_subject_token(&self, token: &str, user: &str) {
        self.opaque_subjects
            .lock()
            .unwrap()
            .insert(token.to_string(), user.to_string());
    }
    /// The client secrets accepted from now on (a rotation accepts the old and the new).
    pub fn set_client_secrets(&self, secrets: &[&str]) {
        *self.client_secrets.lock().unwrap() = secrets.iter().map(|s| s.to_string()).collect();
    }
    /// Advertises this mTLS token endpoint alias in the metadata (RFC 8705 §5).
    /// RFC 9207: authorization responses carry `iss = issuer` (and the metadata says so).
    pub fn set_response_issuer(&self, issuer: Option<&str>) {
        *self.response_issuer.lock().unwrap() = issuer.map(str::to_string);
    }
    pub fn set_mtls_token_alias(&self, url: &str) {
        *self.mtls_token_alias.lock().unwrap() = Some(url.to_string());
    }
    /// Accepts the registered client by its `client_id` alone.
    /// Offers RFC 7591 dynamic registration; `confidential`: registered clients get a
    /// secret whatever they ask for.
    pub fn offer_registration(&self, confidential: bool) {
        let mut r = self.registration.lock().unwrap();
        r.dynamic = true;
        r.confidential = confidential;
    }

    /// Offers client ID metadata documents (an https client_id is taken as it is).
    pub fn offer_client_metadata_documents(&self) {
        self.registration.lock().unwrap().documents = true;
    }

    /// Forgets every registered client, as a server that keeps them in memory does when it
    /// restarts.
    pub fn forget_registered_clients(&self) {
        self.registration.lock().unwrap().clients.clear();
    }

    /// The bodies of the registration requests so far.
    pub fn registrations(&self) -> Vec<serde_json::Value> {
        self.registration.lock().unwrap().requests.clone()
    }

    /// Whether `client_id` is one this server knows: its own, a registered one, or a
    /// metadata document's URL when it takes those.
    fn knows_client(&self, client_id: &str) -> bool {
        let r = self.registration.lock().unwrap();
        client_id == self.client_id
            || r.clients.contains_key(client_id)
            || (r.documents && client_id.starts_with("https://"))
    }

    /// A registered (or document) client's authentication: `Some(true)` when it proves
    /// who it is, `None` when the client is not one of those.
    fn registered_client_ok(&self, client_id: &str, secret: Option<&str>) -> Option<bool> {
        let r = self.registration.lock().unwrap();
        if r.documents && client_id.starts_with("https://") {
            return Some(secret.is_none());
        }
        let registered = r.clients.get(client_id)?;
        Some(registered.as_deref() == secret)
    }

    /// The scopes a token was issued with (`demo.read` unless a client_credentials
    /// request asked for others).
    pub fn scopes_of(&self, token: &str) -> Vec<String> {
        self.scopes
            .lock()
            .unwrap()
            .get(token)
            .cloned()
            .unwrap_or_else(|| vec!["demo.read".to_string()])
    }

    /// Refuses client_credentials requests that ask for this scope (`invalid_scope`).
    pub fn refuse_scope(&self, scope: &str) {
        self.refused_scopes.lock().unwrap().push(scope.to_string());
    }

    /// Plays an enterprise IdP: a token exchange of a trusted ID token for
    /// `urn:ietf:params:oauth:token-type:id-jag` gets a JWT signed with this EC P-256 key
    /// (PEM), as `issuer`, for the requested audience.
    pub fn issue_id_jags(&self, private_pem: &str, issuer: &str) {
        let key = jsonwebtoken::EncodingKey::from_ec_pem(private_pem.as_bytes())
            .expect("an EC private key");
        *self.id_jags.lock().unwrap() = Some(IdJagSigner {
            key,
            alg: jsonwebtoken::Algorithm::ES256,
            issuer: issuer.to_string(),
        });
    }

    /// An ID-JAG for the verified ID token's subject, or `None` when this is no IdP.
    fn id_jag(&self, claims: &serde_json::Value, form: &HashMap<String, String>) -> Option<String> {
        let signer = self.id_jags.lock().unwrap();
        let signer = signer.as_ref()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let jag = json!({
            "iss": signer.issuer,
            "sub": claims["sub"],
            "aud": form.get("audience"),
            "client_id": form.get("client_id"),
            "resource": form.get("resource"),
            "scope": form.get("scope"),
            "jti": random_hex(),
            "iat": now,
            "exp": now + 300,
        });
        let mut header = jsonwebtoken::Header::new(signer.alg);
        header.typ = Some("oauth-id-jag+jwt".to_string());
        jsonwebtoken::encode(&header, &jag, &signer.key).ok()
    }

    /// Requires a DPoP proof on every token request and binds what it issues to the
    /// proof's key (`token_type` DPoP); with a nonce, proofs must carry it (a proof
    /// without it gets 400 `use_dpop_nonce` and the nonce).
    pub fn require_dpop(&self, nonce: Option<&str>) {
        let mut d = self.dpop.lock().unwrap();
        d.required = true;
        d.nonce = nonce.map(str::to_string);
    }
    /// DPoP proofs accepted, refused, and answered with the nonce; the last refusal.
    pub fn dpop_counts(&self) -> (usize, usize, usize, Option<String>) {
        self.dpop.lock().unwrap().counts()
    }
    /// The thumbprint of the key a token is bound to (RFC 9449 `cnf.jkt`).
    pub fn jkt_of(&self, token: &str) -> Option<String> {
        self.bound.lock().unwrap().get(token).cloned()
    }

    pub fn allow_public_client(&self, allow: bool) {
        self.public_client.store(allow, Ordering::SeqCst);
    }
    /// Signed tokens accepted and refused so far, and the last refusal's reason.
    pub fn assertion_counts(&self) -> (usize, usize, Option<String>) {
        let a = self.assertions.lock().unwrap();
        (a.accepted, a.refused, a.last_refusal.clone())
    }
    /// The claims of the last signed token accepted.
    pub fn last_assertion_claims(&self) -> Option<serde_json::Value> {
        self.assertions.lock().unwrap().last_claims.clone()
    }
    /// The header `kid` of the last signed token accepted.
    pub fn last_assertion_kid(&self) -> Option<String> {
        self.assertions.lock().unwrap().last_kid.clone()
    }
    /// The form fields of the last token request, secrets included (tests only read it).
    pub fn last_form(&self) -> Vec<(String, String)> {
        self.last_form.lock().unwrap().clone()
    }

    /// From now on, access tokens are JWTs: issuer, audience `https://api.example`, subject
    /// `svc-reports`, scope, client_id, iat and exp.
    pub fn issue_jwt_access_tokens(&self) {
        self.jwt_access_tokens.store(true, Ordering::SeqCst);
    }

    fn jwt_access_token(&self, lifetime: Duration) -> String {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = json!({
            "iss": "https://issuer.testkit.example",
            "aud": ["https://api.example"],
            "sub": "svc-reports",
            "scope": "demo.read",
            "client_id": CLIENT_ID,
            "iat": now,
            "exp": now + lifetime.as_secs().max(1),
            "jti": random_hex(),
        });
        format!(
            "{}.{}.{}",
            b64(json!({"alg": "RS256", "typ": "at+jwt"})),
            b64(claims),
            random_hex()
        )
    }

    fn issue(&self, with_refresh: bool) -> serde_json::Value {
        self.issue_for(with_refresh, None)
    }

    /// A token answer for `subject` (the tokens are recorded as that user's).
    fn issue_for(&self, with_refresh: bool, subject: Option<&str>) -> serde_json::Value {
        let body = self.issue_unowned(with_refresh);
        if let Some(subject) = subject {
            let mut owners = self.owners.lock().unwrap();
            for field in ["access_token", "refresh_token"] {
                if let Some(t) = body[field].as_str() {
                    owners.insert(t.to_string(), subject.to_string());
                }
            }
        }
        body
    }

    fn issue_unowned(&self, with_refresh: bool) -> serde_json::Value {
        let lifetime = Duration::from_millis(self.lifetime_ms.load(Ordering::SeqCst));
        let serial = self.serial.fetch_add(1, Ordering::SeqCst) + 1;
        let token = match self.jwt_access_tokens.load(Ordering::SeqCst) {
            true => self.jwt_access_token(lifetime),
            false => format!("tok_{}", random_hex()),
        };
        self.every_issued.lock().unwrap().push(token.clone());
        self.issued.lock().unwrap().insert(
            token.clone(),
            Issued {
                serial,
                expires: Instant::now() + lifetime,
            },
        );
        let mut body = json!({"access_token": token, "token_type": "Bearer", "scope": "demo.read"});
        if self.send_expires_in.load(Ordering::SeqCst) {
            body["expires_in"] = json!(lifetime.as_secs_f64());
        }
        if with_refresh {
            let rt = self.seed_refresh_token();
            body["refresh_token"] = json!(rt);
        }
        body
    }
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": format!("test token server says {code}")})),
    )
        .into_response()
}

fn client_authenticated(
    state: &TokenServerState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> bool {
    if let Some(assertion) = form.get("client_assertion") {
        return form.get("client_assertion_type").map(String::as_str) == Some(JWT_BEARER_ASSERTION)
            && state
                .assertions
                .lock()
                .unwrap()
                .verify(assertion, false, Use::Assertion)
                .is_ok();
    }
    if state.public_client.load(Ordering::SeqCst)
        && form.get("client_id") == Some(&state.client_id)
        && !form.contains_key("client_secret")
    {
        return true;
    }
    let basic_pair = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| {
            d.split_once(':')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        });
    let (id, secret) = match &basic_pair {
        Some((id, secret)) => (Some(id.as_str()), Some(secret.as_str())),
        None => (
            form.get("client_id").map(String::as_str),
            form.get("client_secret").map(String::as_str),
        ),
    };
    if let Some(ok) = id.and_then(|id| state.registered_client_ok(id, secret)) {
        return ok;
    }
    if let Some(basic) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic) else {
            return false;
        };
        let decoded = String::from_utf8_lossy(&decoded).to_string();
        return state
            .client_secrets
            .lock()
            .unwrap()
            .iter()
            .any(|s| decoded == format!("{}:{}", state.client_id, s));
    }
    form.get("client_id") == Some(&state.client_id)
        && form
            .get("client_secret")
            .is_some_and(|s| state.client_secrets.lock().unwrap().contains(s))
}

/// The token endpoint: DPoP (when proofs are required or sent) around the grants.
async fn token(
    State(state): State<Arc<TokenServerState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let proof = headers
        .get("dpop")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let required = state.dpop.lock().unwrap().required;
    let Some(proof) = proof.filter(|_| required) else {
        if required {
            state.requests.fetch_add(1, Ordering::SeqCst);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof");
        }
        return token_grant(State(state), headers, body).await;
    };
    let host = headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let htu = format!("http://{host}/token");
    let verified = state
        .dpop
        .lock()
        .unwrap()
        .verify(&proof, "POST", &htu, None);
    let jkt = match verified {
        Ok(jkt) => jkt,
        Err(refused) => {
            state.requests.fetch_add(1, Ordering::SeqCst);
            return match refused {
                crate::dpop::ProofRefused::NeedsNonce(nonce) => {
                    let mut r = oauth_error(StatusCode::BAD_REQUEST, "use_dpop_nonce");
                    r.headers_mut()
                        .insert("dpop-nonce", nonce.parse().expect("a header value"));
                    r
                }
                crate::dpop::ProofRefused::Invalid(_) => {
                    oauth_error(StatusCode::BAD_REQUEST, "invalid_dpop_proof")
                }
            };
        }
    };
    // A refresh token bound to a key is used only with a proof of that key.
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    if let Some(rt) = form.get("refresh_token") {
        if state.jkt_of(rt).is_some_and(|k| k != jkt) {
            state.requests.fetch_add(1, Ordering::SeqCst);
            return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
        }
    }
    let resp = token_grant(State(Arc::clone(&state)), headers, body).await;
    if resp.status() != StatusCode::OK {
        return resp;
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    let mut answer: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    answer["token_type"] = json!("DPoP");
    let mut bound = state.bound.lock().unwrap();
    for field in ["access_token", "refresh_token"] {
        if let Some(t) = answer[field].as_str() {
            bound.insert(t.to_string(), jkt.clone());
        }
    }
    Json(answer).into_response()
}

async fn token_grant(
    State(state): State<Arc<TokenServerState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    *state.last_form.lock().unwrap() = pairs.clone();
    let form: HashMap<String, String> = pairs.into_iter().collect();
    let delay = state.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let fail = state.fail.lock().unwrap().clone();
    match fail {
        FailMode::None => {}
        FailMode::Status(s) => {
            return StatusCode::from_u16(s)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response()
        }
        FailMode::StatusRetryAfter(s, secs) => {
            let status = StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            return (status, [("retry-after", secs.to_string())]).into_response();
        }
        FailMode::OAuthError(code) => {
            let status = if code == "invalid_client" {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::BAD_REQUEST
            };
            return oauth_error(status, &code);
        }
        FailMode::Malformed => return (StatusCode::OK, "<html>surprise</html>").into_response(),
        FailMode::EchoForm => {
            let body = json!({"error": "invalid_request", "error_description": format!("bad request: {body}")});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    }
    // The assertion grants may come without client authentication; presented, it counts.
    let anonymous = !headers.contains_key("authorization")
        && !form.contains_key("client_secret")
        && !form.contains_key("client_assertion");
    let assertion_grant = matches!(
        form.get("grant_type").map(String::as_str),
        Some(JWT_BEARER_GRANT | TOKEN_EXCHANGE_GRANT)
    );
    let may_go_unauthenticated = assertion_grant && anonymous;
    if !may_go_unauthenticated && !client_authenticated(&state, &headers, &form) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            let refused = state.refused_scopes.lock().unwrap().clone();
            if form
                .get("scope")
                .is_some_and(|s| s.split_whitespace().any(|x| refused.iter().any(|r| r == x)))
            {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope");
            }
            let mut body = state.issue(false);
            // The scopes asked for are granted (the tests' upstream may require one).
            if let (Some(scope), Some(token)) = (form.get("scope"), body["access_token"].as_str()) {
                let scopes: Vec<String> = scope.split_whitespace().map(str::to_string).collect();
                state
                    .scopes
                    .lock()
                    .unwrap()
                    .insert(token.to_string(), scopes);
                body["scope"] = json!(scope);
            }
            Json(body).into_response()
        }
        Some(JWT_BEARER_GRANT) => {
            let Some(assertion) = form.get("assertion") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            issue_if_verified(&state, assertion, Use::Assertion, |_| {})
        }
        Some(TOKEN_EXCHANGE_GRANT) => {
            let (Some(subject), Some(_)) =
                (form.get("subject_token"), form.get("subject_token_type"))
            else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            if form.get("requested_token_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:token-type:id-jag")
            {
                let verified =
                    state
                        .assertions
                        .lock()
                        .unwrap()
                        .verify(subject, true, Use::Reusable);
                let jag = verified
                    .ok()
                    .and_then(|claims| state.id_jag(&claims, &form));
                return match jag {
                    Some(jag) => Json(json!({
                        "access_token": jag,
                        "issued_token_type": "urn:ietf:params:oauth:token-type:id-jag",
                        "token_type": "N_A",
                        "expires_in": 300,
                    }))
                    .into_response(),
                    None => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
                };
            }
            let opaque_user = state.opaque_subjects.lock().unwrap().get(subject).cloned();
            if let Some(user) = opaque_user {
                let mut body = state.issue_for(false, Some(&user));
                body["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
                return Json(body).into_response();
            }
            issue_if_verified(&state, subject, Use::Reusable, |body| {
                body["issued_token_type"] = json!("urn:ietf:params:oauth:token-type:access_token");
            })
        }
        Some("authorization_code") => {
            let (Some(code), Some(verifier), Some(redirect)) = (
                form.get("code"),
                form.get("code_verifier"),
                form.get("redirect_uri"),
            ) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            let Some((challenge, expected_redirect, user)) =
                state.codes.lock().unwrap().remove(code)
            else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            use sha2::Digest;
            let computed = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sha2::Sha256::digest(verifier.as_bytes()));
            if computed != challenge || redirect != &expected_redirect {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            let with_refresh = state.login_refresh_tokens.load(Ordering::SeqCst);
            Json(state.issue_for(with_refresh, user.as_deref())).into_response()
        }
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            let Some(device_code) = form.get("device_code") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            let mut devices = state.devices.lock().unwrap();
            let Some(d) = devices.get_mut(device_code) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            d.1 += 1;
            // The first poll is told to slow down, to exercise the client's handling.
            if d.1 == 1 {
                return oauth_error(StatusCode::BAD_REQUEST, "slow_down");
            }
            if !d.0 {
                return oauth_error(StatusCode::BAD_REQUEST, "authorization_pending");
            }
            devices.remove(device_code);
            drop(devices);
            Json(state.issue(true)).into_response()
        }
        Some("refresh_token") => {
            let Some(rt) = form.get("refresh_token") else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
            };
            // Committed in a block of its own: no lock guard lives across the answer delay.
            let body = {
                let grace = Duration::from_millis(state.reuse_grace_ms.load(Ordering::SeqCst));
                let mut r = state.refresh.lock().unwrap();
                if let Some((spent_at, successor)) = r.spent.get(rt).cloned() {
                    if spent_at.elapsed() >= grace {
                        // Reuse: assume theft and revoke the whole grant (the user's, when
                        // the token was issued for one).
                        state.reuse_detected.fetch_add(1, Ordering::SeqCst);
                        drop(r);
                        match state.subject_of(rt) {
                            Some(user) => state.revoke_grant_of(&user),
                            None => {
                                state.refresh.lock().unwrap().active.clear();
                                state.revoke_access_tokens();
                            }
                        }
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                    }
                    // Inside the grace period (as Okta and Auth0 offer): the client evidently
                    // never received the successor, which is replaced.
                    state.grace_reuses.fetch_add(1, Ordering::SeqCst);
                    r.active.remove(&successor);
                } else if !r.active.remove(rt) {
                    return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
                }
                drop(r);
                let user = state.subject_of(rt);
                let body = state.issue_for(true, user.as_deref());
                let successor = body["refresh_token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut r = state.refresh.lock().unwrap();
                let spent_at = r.spent.get(rt).map_or_else(Instant::now, |s| s.0);
                r.spent.insert(rt.clone(), (spent_at, successor));
                drop(r);
                body
            };
            state.rotations.fetch_add(1, Ordering::SeqCst);
            let delay = state.answer_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            Json(body).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

/// A token for a verified grant assertion or subject token (`finish` adds to the answer);
/// `invalid_grant` for one the server does not trust.
fn issue_if_verified(
    state: &TokenServerState,
    token: &str,
    usage: Use,
    finish: impl FnOnce(&mut serde_json::Value),
) -> Response {
    let verified = state.assertions.lock().unwrap().verify(token, true, usage);
    match verified {
        Ok(claims) => {
            // The token stands for the signed token's subject (an end user, on behalf of).
            let mut body = state.issue_for(false, claims["sub"].as_str());
            finish(&mut body);
            Json(body).into_response()
        }
        Err(_) => oauth_error(StatusCode::BAD_REQUEST, "invalid_grant"),
    }
}

/// The form of a request from the registered client; `None` for any other sender.
fn authenticated_form(
    state: &TokenServerState,
    headers: &HeaderMap,
    body: &str,
) -> Option<HashMap<String, String>> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    client_authenticated(state, headers, &form).then_some(form)
}

/// RFC 7009: revokes an access or refresh token; answers 200 whatever the token was.
async fn revoke(
    State(state): State<Arc<TokenServerState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let Some(form) = authenticated_form(&state, &headers, &body) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    if let Some(token) = form.get("token") {
        let was_access = state.issued.lock().unwrap().remove(token).is_some();
        let was_refresh = state.refresh.lock().unwrap().active.remove(token);
        if was_access || was_refresh {
            state.revocations.fetch_add(1, Ordering::SeqCst);
        }
    }
    StatusCode::OK.into_response()
}

/// Auto-approving authorization endpoint: records the PKCE challenge and redirects back with
/// a code, as if the user had logged in and consented.
async fn authorize(
    State(state): State<Arc<TokenServerState>>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let (Some(redirect), Some(challenge), Some(st)) = (
        q.get("redirect_uri"),
        q.get("code_challenge"),
        q.get("state"),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "missing redirect_uri, code_challenge or state",
        )
            .into_response();
    };
    if q.get("code_challenge_method").map(String::as_str) != Some("S256")
        || !q.get("client_id").is_some_and(|c| state.knows_client(c))
    {
        return (
            StatusCode::BAD_REQUEST,
            "S256 and the known client are required",
        )
            .into_response();
    }
    let code = format!("code_{}", random_hex());
    let user = state.authorizing_user.lock().unwrap().clone();
    state
        .codes
        .lock()
        .unwrap()
        .insert(code.clone(), (challenge.clone(), redirect.clone(), user));
    let encode = |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let mut location = format!("{redirect}?code={code}&state={}", encode(st));
    if let Some(iss) = state.response_issuer.lock().unwrap().as_deref() {
        location.push_str(&format!("&iss={}", encode(iss)));
    }
    (StatusCode::FOUND, [("location", location)]).into_response()
}

/// RFC 7591 dynamic registration: a public client when it asks for one (and the server
/// allows it), else a confidential one with a secret.
async fn register(
    State(state): State<Arc<TokenServerState>>,
    Json(body): Json<serde_json::Value>,
) -> Response {
    let mut r = state.registration.lock().unwrap();
    if !r.dynamic {
        return StatusCode::NOT_FOUND.into_response();
    }
    r.requests.push(body.clone());
    if !body["redirect_uris"].is_array() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_redirect_uri", "error_description": "redirect_uris is required"})),
        )
            .into_response();
    }
    let client_id = format!("reg-{}", random_hex());
    let public = !r.confidential && body["token_endpoint_auth_method"] == "none";
    let secret = (!public).then(|| format!("regsecret-{}", random_hex()));
    r.clients.insert(client_id.clone(), secret.clone());
    let mut answer = json!({
        "client_id": client_id,
        "client_name": body["client_name"],
        "redirect_uris": body["redirect_uris"],
        "token_endpoint_auth_method": if public { "none" } else { "client_secret_basic" },
    });
    if let Some(secret) = secret {
        answer["client_secret"] = json!(secret);
    }
    (StatusCode::CREATED, Json(answer)).into_response()
}

/// RFC 8628 device authorization: the test approves with `approve_devices`.
async fn device_authorization(
    State(state): State<Arc<TokenServerState>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if authenticated_form(&state, &headers, &body).is_none() {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let device_code = format!("dc_{}", random_hex());
    state
        .devices
        .lock()
        .unwrap()
        .insert(device_code.clone(), (false, 0));
    Json(json!({
        "device_code": device_code,
        "user_code": "WDJB-MJHT",
        "verification_uri": "http://127.0.0.1/device",
        "expires_in": 600,
        "interval": 1,
    }))
    .into_response()
}
