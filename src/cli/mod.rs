//! The commands of the `bearerd` binary: each parses nothing (clap did), calls the library
//! or the admin API through `api`, and prints.

mod admin_client;
mod live;
mod print;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bearerd::api::{self, AdminRoute, CredentialOp, SubjectOp};
use bearerd::config::{Config, ConfigError};

use admin_client::{AdminClient, Answer};

/// Why a command failed; printed as `error: …`.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Config(ConfigError),
    #[error("cannot reach the bearerd admin API at {base}: {error}")]
    Unreachable { base: String, error: reqwest::Error },
    #[error("unexpected answer from {base}: {error}")]
    Unexpected { base: String, error: String },
    #[error("refusing to send {what} in clear to {base}: plain http is only for loopback. Reach the admin API on its host, through `kubectl port-forward` (then --admin http://127.0.0.1:PORT), or over https")]
    NotPrivate { what: &'static str, base: String },
    #[error("cannot start the admin client: {0}")]
    Http(reqwest::Error),
    #[error("cannot start a runtime: {0}")]
    Runtime(std::io::Error),
    /// What the sidecar (or the provider) refused, in its words.
    #[error("{0}")]
    Refused(String),
}

/// Where the admin API is: `--admin` (or `BEARERD_ADMIN`) and `-c`.
pub struct AdminTarget {
    pub admin: Option<String>,
    pub config: Option<PathBuf>,
}

/// Runs one admin-API command on a small runtime; prints errors and maps them to exit 1.
fn with_admin<F, Fut>(target: AdminTarget, f: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<bool, CliError>>,
{
    let run = || -> Result<bool, CliError> {
        let client = AdminClient::resolve(target.admin, target.config)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CliError::Runtime)?;
        rt.block_on(f(client))
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `NAME`, or `NAME [subject]`, for messages.
fn who(name: &str, subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!("{name} [{s}]"),
        None => name.to_string(),
    }
}

/// The route of a credential's operation, or of one of its subject's.
fn operation(name: &str, subject: Option<&str>, op: CredentialOp) -> AdminRoute {
    let name = name.to_string();
    let subject_op = match op {
        CredentialOp::Refresh => Some(SubjectOp::Refresh),
        CredentialOp::Logout => Some(SubjectOp::Logout),
        CredentialOp::Login => Some(SubjectOp::Login),
        // Subjects log in with their credential's client; drills and claims are the
        // credential's.
        CredentialOp::Register | CredentialOp::Drill | CredentialOp::Claims => None,
    };
    match (subject, subject_op) {
        (Some(s), Some(op)) => AdminRoute::SubjectOp {
            name,
            subject: s.to_string(),
            op,
        },
        _ => AdminRoute::Credential { name, op },
    }
}

fn pretty(v: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `bearerd check [--live]`.
pub fn check(config: &Path, live: bool) -> ExitCode {
    match Config::load(config) {
        Ok(c) => {
            println!("{}: ok", config.display());
            for warning in c.relaxations() {
                println!("warning: {warning}");
            }
            print!("{}", c.describe_routes());
            match live {
                true => live::check_live(&c),
                false => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `bearerd client-metadata`: the client ID metadata document of the credential with
/// `client_metadata_url` (NAME's, when several have one).
pub fn client_metadata(config: &Path, name: Option<&str>) -> ExitCode {
    let loaded = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let documents: Vec<(&str, serde_json::Value)> = loaded
        .credentials
        .iter()
        .filter(|c| name.is_none_or(|n| n == c.name))
        .filter_map(|c| {
            let request = c.grant.request()?;
            Some((
                c.name.as_str(),
                bearerd::oauth::registration::client_metadata_document(request)?,
            ))
        })
        .collect();
    match documents.as_slice() {
        [(_, doc)] => {
            println!("{}", pretty(doc));
            ExitCode::SUCCESS
        }
        [] => {
            eprintln!(
                "error: {}: no credential{} has registration = \"auto\" with client_metadata_url",
                config.display(),
                name.map(|n| format!(" named {n:?}")).unwrap_or_default()
            );
            ExitCode::from(2)
        }
        several => {
            let names: Vec<&str> = several.iter().map(|(n, _)| *n).collect();
            eprintln!(
                "error: several credentials have a client_metadata_url ({}): name one",
                names.join(", ")
            );
            ExitCode::from(2)
        }
    }
}

/// `bearerd run`.
pub fn run(config: &Path) -> ExitCode {
    let mut c = match Config::load(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    bearerd::logging::init(c.server.log_format);
    // The running image itself, even if the file on disk was replaced by an upgrade.
    let proc_exe = PathBuf::from("/proc/self/exe");
    c.server.rotation_helper = if proc_exe.exists() {
        Some(proc_exe)
    } else {
        std::env::current_exe().ok()
    };
    tracing::info!(
        config = %config.display(),
        proxy = %c.server.proxy_listen,
        admin = %c.server.admin_listen,
        upstreams = c.upstreams.len(),
        credentials = c.credentials.len(),
        "bearerd starting"
    );
    for warning in c.relaxations() {
        tracing::warn!("{warning}");
    }
    match bearerd::Sidecar::start(c) {
        Ok(handle) => {
            handle.wait();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `bearerd status [NAME] [--json] [--subjects | --subject S]`.
pub fn status(
    target: AdminTarget,
    name: Option<String>,
    json: bool,
    subjects: bool,
    subject: Option<String>,
) -> ExitCode {
    with_admin(target, |client| async move {
        if let (Some(n), true) = (&name, subjects || subject.is_some()) {
            return show_subjects(&client, n, subject.as_deref(), json).await;
        }
        let status = client.status().await?;
        let Some(n) = &name else {
            match json {
                true => println!("{}", pretty(&status)),
                false => print!("{}", print::status_table(&status)),
            }
            return Ok(true);
        };
        let Some(c) = status.credentials.get(n) else {
            return Err(CliError::Refused(format!("no credential named {n:?}")));
        };
        match (json, c) {
            (true, c) => println!("{}", pretty(c)),
            (false, api::CredentialView::Single(c)) => print!("{}", print::credential_detail(n, c)),
            // A per-subject credential has no token of its own to detail.
            (false, c @ api::CredentialView::PerSubject(_)) => println!("{}", pretty(c)),
        }
        Ok(true)
    })
}

/// `bearerd refresh NAME [--subject S] [--verbose]`.
pub fn refresh(
    target: AdminTarget,
    name: String,
    subject: Option<String>,
    verbose: bool,
) -> ExitCode {
    with_admin(target, |client| async move {
        let route = operation(&name, subject.as_deref(), CredentialOp::Refresh);
        let answer = client.post::<api::RefreshReport>(&route, None).await?;
        let name = who(&name, subject.as_deref());
        let v = match answer {
            Answer::Body(_, v) => v,
            Answer::Refused(_, e) => return Err(CliError::Refused(e.error)),
        };
        let s = &v.status;
        match v.outcome {
            // The number as the JSON has it (`59.9`, `3600.0`, `null`).
            api::Outcome::Success => println!(
                "{name}: refreshed in {} ms, generation {} -> {}, expires in {}s",
                v.duration_ms,
                v.previous_generation,
                v.generation,
                serde_json::json!(s.expires_in_s)
            ),
            outcome => println!(
                "{name}: refresh {} after {} ms (attempt {}): {}: {}",
                if outcome == api::Outcome::Failed {
                    "failed"
                } else {
                    "timeout"
                },
                v.duration_ms,
                s.consecutive_failures,
                s.last_error.as_ref().map_or("-", |e| e.kind.as_str()),
                s.last_error.as_ref().map_or("-", |e| e.message.as_str()),
            ),
        }
        if verbose {
            print!("{}", print::credential_detail(&name, s));
        }
        Ok(v.outcome == api::Outcome::Success)
    })
}

/// `bearerd logout NAME [--subject S]`.
pub fn logout(target: AdminTarget, name: String, subject: Option<String>) -> ExitCode {
    with_admin(target, |client| async move {
        let route = operation(&name, subject.as_deref(), CredentialOp::Logout);
        let answer = client.post::<api::LogoutReport>(&route, None).await?;
        let name = who(&name, subject.as_deref());
        let v = match answer {
            Answer::Body(200, v) => v,
            Answer::Body(code, _) => return Err(CliError::Refused(format!("{code}: refused"))),
            Answer::Refused(_, e) => return Err(CliError::Refused(e.error)),
        };
        for r in &v.revocation {
            println!("{name}: {} at the provider: {}", r.token, r.outcome);
        }
        if v.revocation.is_empty() {
            println!("{name}: nothing to revoke at the provider");
        }
        println!("{name}: forgotten locally; requests now get 503 until a login");
        Ok(v.forgotten)
    })
}

/// `bearerd drill NAME --fail F [--for D]`, or `--stop`.
pub fn drill(
    target: AdminTarget,
    name: String,
    fail: Option<api::DrillFailure>,
    duration: String,
    stop: bool,
) -> ExitCode {
    with_admin(target, |client| async move {
        let route = AdminRoute::Credential {
            name: name.clone(),
            op: CredentialOp::Drill,
        };
        let request = api::DrillRequest {
            fail: (!stop).then_some(fail).flatten(),
            duration: (!stop).then_some(duration),
            stop,
        };
        let v = match client
            .post_json::<api::DrillReport>(&route, &request)
            .await?
        {
            Answer::Body(200, v) => v,
            Answer::Body(code, _) => return Err(CliError::Refused(format!("{code}: refused"))),
            Answer::Refused(code, e) => {
                return Err(CliError::Refused(format!("{code}: {}", e.error)))
            }
        };
        match v.drill {
            Some(d) => println!(
                "{name}: drill running: token requests fail with {} for {}s (nothing is sent; it ends by itself)",
                d.fail.as_str(),
                d.ends_in_s
            ),
            None => println!("{name}: no drill runs"),
        }
        Ok(true)
    })
}

/// `bearerd inspect NAME`: what the current token says of itself, never the token.
pub fn inspect(target: AdminTarget, name: String, json: bool) -> ExitCode {
    with_admin(target, |client| async move {
        let route = AdminRoute::Credential {
            name: name.clone(),
            op: CredentialOp::Claims,
        };
        let v = match client.get::<api::TokenClaims>(&route.to_string()).await? {
            Answer::Body(_, v) => v,
            Answer::Refused(code, e) => {
                return Err(CliError::Refused(format!("{code}: {}", e.error)))
            }
        };
        match json {
            true => println!("{}", pretty(&v)),
            false => print!("{}", print::claims(&v)),
        }
        Ok(true)
    })
}

/// `bearerd status NAME --subjects` (every page) or `--subject S`.
async fn show_subjects(
    client: &AdminClient,
    name: &str,
    subject: Option<&str>,
    json: bool,
) -> Result<bool, CliError> {
    let refused = |code: u16, e: api::ErrorBody| CliError::Refused(format!("{code}: {}", e.error));
    if let Some(s) = subject {
        let route = AdminRoute::Subject {
            name: name.to_string(),
            subject: s.to_string(),
        };
        let v = match client.get::<api::SubjectStatus>(&route.to_string()).await? {
            Answer::Body(_, v) => v,
            Answer::Refused(code, e) => return Err(refused(code, e)),
        };
        match json {
            true => println!("{}", pretty(&v)),
            false => print!(
                "{}",
                print::credential_detail(&who(name, Some(s)), &v.status)
            ),
        }
        return Ok(true);
    }
    let mut all = Vec::new();
    let mut after = String::new();
    let route = AdminRoute::Subjects {
        name: name.to_string(),
    };
    loop {
        let path = format!("{route}?limit=1000{after}");
        let page = match client.get::<api::SubjectPage>(&path).await? {
            Answer::Body(_, page) => page,
            Answer::Refused(code, e) => return Err(refused(code, e)),
        };
        all.extend(page.subjects);
        match page.next {
            Some(next) => {
                after = format!(
                    "&after={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                )
            }
            None => break,
        }
    }
    match json {
        true => println!("{}", pretty(&serde_json::json!({ "subjects": all }))),
        false => print!("{}", print::subjects_table(&all)),
    }
    Ok(true)
}

struct TerminalPrompt;

impl bearerd::oauth::login::LoginPrompt for TerminalPrompt {
    fn open_url(&self, url: &str) {
        println!("Open this URL in a browser to log in (waiting up to 10 minutes):\n\n  {url}\n");
    }
    fn enter_code(&self, verification_uri: &str, user_code: &str, complete: Option<&str>) {
        println!("Go to {verification_uri} and enter the code {user_code}");
        if let Some(c) = complete {
            println!("(or open {c})");
        }
    }
}

/// Runs the login flow and builds what the sidecar is handed: the tokens, or for a client
/// the sidecar registered, the authorization code for it to redeem (the client's secret
/// never leaves the sidecar).
async fn login_body(
    endpoint: &bearerd::oauth::TokenEndpoint,
    redirect_port: Option<u16>,
    subject: Option<&str>,
    device: bool,
    registered: bool,
) -> Result<api::LoginRequest, CliError> {
    use bearerd::oauth::login;
    let refused = |e: login::LoginError| CliError::Refused(e.to_string());
    let port = redirect_port.unwrap_or(0);
    // DPoP: the tokens are bound to the key that redeems the code, which only the sidecar
    // holds, so the sidecar redeems it.
    let dpop = endpoint.config().dpop;
    if dpop && (device || subject.is_some()) {
        return Err(CliError::Refused(
            "dpop = true binds the tokens to the sidecar's key, so the sidecar redeems the login: log in in a browser (without --device); a subject connects through POST /credentials/NAME/subjects/SUBJECT/connect".into(),
        ));
    }
    if (registered || dpop) && !device {
        let grant = login::authorize(endpoint, port, &TerminalPrompt)
            .await
            .map_err(refused)?;
        return Ok(api::LoginRequest {
            code: Some(api::CodeGrant {
                code: grant.code,
                code_verifier: grant.code_verifier,
                redirect_uri: grant.redirect_uri,
            }),
            ..Default::default()
        });
    }
    let token = match device {
        true => login::device(endpoint, &TerminalPrompt).await,
        false => login::authorization_code(endpoint, port, &TerminalPrompt).await,
    }
    .map_err(refused)?;
    match token.refresh_token {
        Some(refresh_token) => Ok(api::LoginRequest::refresh_token(refresh_token)),
        // A provider that offers no offline access: the access token serves until it
        // expires, and then the credential asks for a login again. A per-subject
        // credential needs a refresh token per subject.
        None if subject.is_some() => Err(CliError::Refused(
            "the provider issued no refresh token (does the client need the offline_access scope?)"
                .into(),
        )),
        None => {
            eprintln!("note: the provider issued no refresh token: the token serves until it expires, then log in again");
            Ok(api::LoginRequest {
                access_token: Some(token.access_token),
                expires_in: token.lifetime.map(|l| l.as_secs()),
                scope: (!token.scopes.is_empty()).then(|| token.scopes.join(" ")),
                ..Default::default()
            })
        }
    }
}

/// The client the sidecar registered for `name` (registering it first if needed).
async fn registered_client(
    client: &AdminClient,
    name: &str,
) -> Result<bearerd::oauth::registration::ClientRegistration, CliError> {
    use bearerd::oauth::registration::{ClientRegistration, RegisteredAuth};
    let route = operation(name, None, CredentialOp::Register);
    let report = match client.post::<api::RegistrationReport>(&route, None).await? {
        Answer::Body(_, report) => report,
        Answer::Refused(code, e) => {
            return Err(CliError::Refused(format!(
                "the sidecar could not register a client ({code}): {}",
                e.error
            )))
        }
    };
    let auth = RegisteredAuth::named(&report.token_endpoint_auth_method).ok_or_else(|| {
        CliError::Refused(format!(
            "the sidecar registered a client with token_endpoint_auth_method {:?}, which this bearerd cannot use",
            report.token_endpoint_auth_method
        ))
    })?;
    println!(
        "{name}: client {} registered at {} ({})",
        report.client_id, report.issuer, report.mode
    );
    Ok(ClientRegistration {
        issuer: report.issuer,
        client_id: report.client_id,
        // Never handed out: the sidecar redeems the code.
        client_secret: None,
        redirect_uris: Vec::new(),
        client_secret_expires_at: None,
        auth,
        mode: report.mode,
        registered_at: report.registered_at,
    })
}

/// `bearerd login NAME [--subject S] [--device]`.
pub fn login(target: AdminTarget, name: String, subject: Option<String>, device: bool) -> ExitCode {
    let config = target
        .config
        .clone()
        .or_else(|| std::env::var_os("BEARERD_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("bearerd.toml"));
    let loaded = match Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    with_admin(target, |client| async move {
        login_and_hand_over(&loaded, &name, subject.as_deref(), device, &client).await
    })
}

/// Runs the login flow for `name` and hands the refresh token to the sidecar.
async fn login_and_hand_over(
    config: &Config,
    name: &str,
    subject: Option<&str>,
    device: bool,
    client: &AdminClient,
) -> Result<bool, CliError> {
    use bearerd::grant::RefreshTokenConfig;
    use bearerd::oauth::TokenEndpoint;
    let cred = config.credential(name).ok_or_else(|| {
        CliError::Refused(format!(
            "no credential named {name:?} in {}",
            config.source.display()
        ))
    })?;
    let Some(RefreshTokenConfig { request, .. }) = cred.grant.settings() else {
        return Err(CliError::Refused(format!(
            "credential {name} uses grant {:?}; login needs grant \"refresh_token\"",
            cred.grant.kind()
        )));
    };
    // Checked before the login, not after: a refresh token is a long-lived credential, and
    // this is where it would travel in clear.
    client.ensure_private("a refresh token")?;
    let endpoint = TokenEndpoint::new(request).map_err(|e| CliError::Refused(e.to_string()))?;
    if request.registration.is_some() {
        // The sidecar registers the client (and keeps it); the login uses it.
        let registration = registered_client(client, name).await?;
        if device && registration.auth != bearerd::oauth::registration::RegisteredAuth::None {
            return Err(CliError::Refused(format!(
                "the client registered for {name} is confidential, and its secret stays in the sidecar: log in in a browser (without --device)"
            )));
        }
        endpoint.use_registration(registration);
    }
    // Scopes an upstream asked for since (403 insufficient_scope): this login asks too.
    if subject.is_none() {
        if let Ok(status) = client.status().await {
            if let Some(api::CredentialView::Single(c)) = status.credentials.get(name) {
                if !c.step_up_scopes.is_empty() {
                    println!(
                        "{name}: asking for {} too (step-up)",
                        c.step_up_scopes.join(" ")
                    );
                    endpoint.step_up().require_at_login(&c.step_up_scopes);
                }
            }
        }
    }
    let registered = request.registration.is_some();
    let body = login_body(
        &endpoint,
        request.redirect_port,
        subject,
        device,
        registered,
    )
    .await?;
    let route = operation(name, subject, CredentialOp::Login);
    let answer = match subject {
        // A subject's login answers how the hand-over went; a credential's, with a refresh.
        Some(_) => client
            .post::<api::LoginReport>(&route, Some(&body))
            .await?
            .map(|r| (r.generation, r.status)),
        None => client
            .post::<api::RefreshReport>(&route, Some(&body))
            .await?
            .map(|r| (r.generation, r.status)),
    };
    let name = who(name, subject);
    match answer {
        Answer::Body(200, (generation, _)) => {
            println!("{name}: logged in; the sidecar holds a token (generation {generation})");
            Ok(true)
        }
        Answer::Body(code, (_, status)) => Err(CliError::Refused(format!(
            "logged in at the provider, but the sidecar refused the refresh token ({code}): {}",
            status.last_error.map_or("unknown".into(), |e| e.message)
        ))),
        Answer::Refused(code, e) => Err(CliError::Refused(format!(
            "logged in at the provider, but the sidecar refused the refresh token ({code}): {}",
            e.error
        ))),
    }
}

/// `bearerd inject`: the manifests' text in, the changed text out.
pub fn inject(
    file: Option<&Path>,
    opts: &bearerd::inject::InjectOptions,
    config: Option<&Path>,
) -> ExitCode {
    let pod_config = match config {
        None => None,
        Some(config) => {
            let text = match std::fs::read_to_string(config) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            // Lowering only: the files the config names exist in the pod, not here.
            match bearerd::inject::PodConfig::from_text(config, &text) {
                Ok(c) => Some(c),
                Err(bearerd::inject::PodConfigError::Config(e)) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
                Err(e) => {
                    eprintln!("error: {}: {e}", config.display());
                    return ExitCode::from(2);
                }
            }
        }
    };
    let text = match file.filter(|f| *f != Path::new("-")) {
        Some(f) => {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))
        }
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .map(|_| s)
                .map_err(|e| format!("cannot read stdin: {e}"))
        }
    };
    match text.and_then(|t| {
        bearerd::inject::inject_manifests(&t, opts, pod_config.as_ref()).map_err(|e| e.to_string())
    }) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
