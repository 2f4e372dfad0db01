//! The `bearerd` command line: subcommands only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bearerd::admin::client::{self, AdminClient};
use bearerd::config::Config;
use bearerd::{logging, Sidecar};

#[derive(Parser)]
#[command(
    name = "bearerd",
    version,
    about = "Sidecar proxy that injects fresh OAuth2 bearer tokens"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Run {
        /// Config file.
        #[arg(short, long, env = "BEARERD_CONFIG", default_value = "bearerd.toml")]
        config: PathBuf,
    },
    /// Validate a config and print the resolved routes.
    Check {
        #[arg(short, long, env = "BEARERD_CONFIG", default_value = "bearerd.toml")]
        config: PathBuf,
    },
    /// Print a new random store key (base64, 32 bytes).
    Keygen,
    /// Add the bearerd sidecar to Kubernetes manifests (or take it out), like `linkerd
    /// inject`: reads multi-document YAML from -f (or stdin), writes it to stdout.
    Inject {
        /// Manifests to read ("-" or none: stdin).
        #[arg(short, long)]
        file: Option<PathBuf>,
        /// Take out what inject added, and nothing else.
        #[arg(long)]
        uninject: bool,
        /// The bearerd config the ConfigMap holds: checked, and its upstreams become the
        /// app containers' BEARERD_URL_* env vars.
        #[arg(short, long, env = "BEARERD_CONFIG", default_value = "bearerd.toml")]
        config: PathBuf,
        #[arg(long)]
        image: Option<String>,
        /// The ConfigMap with bearerd.toml.
        #[arg(long, default_value = "bearerd-config")]
        config_map: String,
        /// The Secret mounted read-only at /var/run/secrets/bearerd.
        #[arg(long, default_value = "bearerd-secrets")]
        secret: String,
        /// Mount no Secret (a secretless pod).
        #[arg(long)]
        no_secret: bool,
        /// Also project a service-account token with this audience at
        /// /var/run/secrets/tokens/token (for client_assertion or subject_token).
        #[arg(long)]
        token_audience: Option<String>,
        #[arg(long, default_value = "50m")]
        cpu_request: String,
        #[arg(long, default_value = "32Mi")]
        memory_request: String,
        #[arg(long, default_value = "128Mi")]
        memory_limit: String,
    },
    /// Internal: runs one refresh-token exchange for a running sidecar (see
    /// src/token/rotation.rs). Reads its request from stdin.
    #[command(hide = true)]
    RotationHelper,
    /// Show each credential's state (from a running sidecar's admin API).
    Status {
        /// One credential in detail.
        name: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Print the raw JSON of /status.
        #[arg(long)]
        json: bool,
        /// A per-subject credential's subjects, one row each.
        #[arg(long, requires = "name", conflicts_with = "subject")]
        subjects: bool,
        /// One subject of a per-subject credential, in detail.
        #[arg(long, requires = "name")]
        subject: Option<String>,
    },
    /// Refresh a credential now and show the attempt.
    Refresh {
        name: String,
        /// A subject of a per-subject credential.
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
        /// Show the credential's whole state after the attempt.
        #[arg(long)]
        verbose: bool,
    },
    /// Authorize a refresh_token credential once, by browser (code + PKCE) or device code,
    /// and hand the refresh token to the running sidecar.
    Login {
        name: String,
        /// A subject of a per-subject credential.
        #[arg(long)]
        subject: Option<String>,
        /// Use the device grant (RFC 8628) instead of a browser redirect.
        #[arg(long)]
        device: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a credential's tokens at the provider (best effort) and forget them.
    Logout {
        name: String,
        /// A subject of a per-subject credential.
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run an embedded token server, an echo upstream and the sidecar between them.
    Demo {
        /// Stop after this long (e.g. "30s"); runs until Ctrl-C when absent.
        #[arg(long)]
        duration: Option<humantime::Duration>,
        /// Lifetime of the demo's tokens.
        #[arg(long, default_value = "10s")]
        token_lifetime: humantime::Duration,
    },
}

#[derive(clap::Args)]
struct AdminArgs {
    /// Admin API base URL (default: the config's admin_listen, else http://127.0.0.1:14090).
    #[arg(long, env = "BEARERD_ADMIN")]
    admin: Option<String>,
    /// Config file to read admin_listen and admin_token from.
    #[arg(short, long)]
    config: Option<PathBuf>,
}

/// Runs one admin-API command on a small runtime; prints errors and maps them to exit 1.
fn with_admin<F, Fut>(args: AdminArgs, f: F) -> ExitCode
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<bool, String>>,
{
    let run = || -> Result<bool, String> {
        let client = AdminClient::resolve(args.admin, args.config)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
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

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    bearerd::allocator::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok", config.display());
                print!("{}", c.describe_routes());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::RotationHelper => bearerd::token::rotation::helper_main(),
        Command::Run { config } => {
            let mut c = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            logging::init(c.server.log_format);
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
            match Sidecar::start(c) {
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
        Command::Status {
            name,
            admin,
            json,
            subjects,
            subject,
        } => with_admin(admin, |client| async move {
            if let (Some(n), true) = (&name, subjects || subject.is_some()) {
                return show_subjects(&client, n, subject.as_deref(), json).await;
            }
            let status = client.get("/status").await?;
            match (&name, json) {
                (None, true) => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                (None, false) => print!("{}", client::status_table(&status)),
                (Some(n), _) => {
                    let c = &status["credentials"][n.as_str()];
                    if c.is_null() {
                        return Err(format!("no credential named {n:?}"));
                    }
                    if json {
                        println!("{}", serde_json::to_string_pretty(c).unwrap_or_default());
                    } else {
                        print!("{}", client::credential_detail(n, c));
                    }
                }
            }
            Ok(true)
        }),
        Command::Refresh {
            name,
            subject,
            admin,
            verbose,
        } => with_admin(admin, |client| async move {
            let (code, v) = client
                .post(
                    &client::operation_path(&name, subject.as_deref(), "/refresh"),
                    None,
                )
                .await?;
            let name = who(&name, subject.as_deref());
            if matches!(code, 400 | 401 | 404) {
                return Err(v["error"].as_str().unwrap_or("refused").to_string());
            }
            let outcome = v["outcome"].as_str().unwrap_or("unknown");
            let s = &v["status"];
            match outcome {
                "success" => println!(
                    "{name}: refreshed in {} ms, generation {} -> {}, expires in {}s",
                    v["duration_ms"], v["previous_generation"], v["generation"], s["expires_in_s"]
                ),
                _ => println!(
                    "{name}: refresh {outcome} after {} ms (attempt {}): {}: {}",
                    v["duration_ms"],
                    s["consecutive_failures"],
                    s["last_error"]["kind"].as_str().unwrap_or("-"),
                    s["last_error"]["message"].as_str().unwrap_or("-")
                ),
            }
            if verbose {
                print!("{}", client::credential_detail(&name, s));
            }
            Ok(outcome == "success")
        }),
        Command::Logout {
            name,
            subject,
            admin,
        } => with_admin(admin, |client| async move {
            let (code, v) = client
                .post(
                    &client::operation_path(&name, subject.as_deref(), "/logout"),
                    None,
                )
                .await?;
            let name = who(&name, subject.as_deref());
            if code != 200 {
                return Err(v["error"].as_str().unwrap_or("refused").to_string());
            }
            for r in v["revocation"].as_array().into_iter().flatten() {
                println!(
                    "{name}: {} at the provider: {}",
                    r["token"].as_str().unwrap_or("?"),
                    r["outcome"].as_str().unwrap_or("?")
                );
            }
            if v["revocation"].as_array().is_none_or(|a| a.is_empty()) {
                println!("{name}: nothing to revoke at the provider");
            }
            println!("{name}: forgotten locally; requests now get 503 until a login");
            Ok(v["forgotten"].as_bool() == Some(true))
        }),
        Command::Login {
            name,
            subject,
            device,
            admin,
        } => {
            let config = admin
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
            with_admin(admin, |client| async move {
                login(&loaded, &name, subject.as_deref(), device, &client).await
            })
        }
        Command::Inject {
            file,
            uninject,
            config,
            image,
            config_map,
            secret,
            no_secret,
            token_audience,
            cpu_request,
            memory_request,
            memory_limit,
        } => {
            let defaults = bearerd::inject::InjectOptions::default();
            let opts = bearerd::inject::InjectOptions {
                image: image.unwrap_or(defaults.image),
                config_map,
                secret: (!no_secret).then_some(secret),
                token_audience,
                cpu_request,
                memory_request,
                memory_limit,
            };
            let pod_config = if uninject {
                None
            } else {
                let read = std::fs::read_to_string(&config)
                    .map_err(|e| e.to_string())
                    .and_then(|t| bearerd::inject::PodConfig::from_text(&t));
                match read {
                    Ok(c) => Some(c),
                    Err(e) => {
                        eprintln!("error: {}: {e}", config.display());
                        return ExitCode::from(2);
                    }
                }
            };
            let text = match file.as_deref().filter(|f| *f != std::path::Path::new("-")) {
                Some(f) => std::fs::read_to_string(f)
                    .map_err(|e| format!("cannot read {}: {e}", f.display())),
                None => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                        .map(|_| s)
                        .map_err(|e| format!("cannot read stdin: {e}"))
                }
            };
            match text.and_then(|t| {
                bearerd::inject::inject_manifests(&t, &opts, pod_config.as_ref())
                    .map_err(|e| e.to_string())
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
        Command::Keygen => {
            println!("{}", bearerd::store::generate_key());
            ExitCode::SUCCESS
        }
        Command::Demo {
            duration,
            token_lifetime,
        } => match bearerd::demo::run(duration.map(Into::into), token_lifetime.into()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}

struct TerminalPrompt;

impl bearerd::token::login::LoginPrompt for TerminalPrompt {
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

/// Runs the login flow for `name` and hands the refresh token to the sidecar.
/// `NAME`, or `NAME [subject]`, for messages.
fn who(name: &str, subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!("{name} [{s}]"),
        None => name.to_string(),
    }
}

/// `bearerd status NAME --subjects` (every page) or `--subject S`.
async fn show_subjects(
    client: &AdminClient,
    name: &str,
    subject: Option<&str>,
    json: bool,
) -> Result<bool, String> {
    let refused = |code: u16, v: &serde_json::Value| {
        format!("{code}: {}", v["error"].as_str().unwrap_or("refused"))
    };
    if let Some(s) = subject {
        let (code, v) = client
            .get_with_token(&client::operation_path(name, Some(s), ""))
            .await?;
        if code != 200 {
            return Err(refused(code, &v));
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        } else {
            print!("{}", client::credential_detail(&who(name, Some(s)), &v));
        }
        return Ok(true);
    }
    let mut all = Vec::new();
    let mut after = String::new();
    loop {
        let path = format!(
            "{}?limit=1000{after}",
            client::operation_path(name, None, "/subjects")
        );
        let (code, v) = client.get_with_token(&path).await?;
        if code != 200 {
            return Err(refused(code, &v));
        }
        all.extend(v["subjects"].as_array().cloned().unwrap_or_default());
        match v["next"].as_str() {
            Some(next) => {
                after = format!(
                    "&after={}",
                    url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
                )
            }
            None => break,
        }
    }
    if json {
        let v = serde_json::json!({ "subjects": all });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", client::subjects_table(&all));
    }
    Ok(true)
}

async fn login(
    config: &Config,
    name: &str,
    subject: Option<&str>,
    device: bool,
    client: &AdminClient,
) -> Result<bool, String> {
    use bearerd::config::GrantConfig;
    use bearerd::token::{endpoint::TokenEndpoint, login};
    let cred = config.credential(name).ok_or_else(|| {
        format!(
            "no credential named {name:?} in {}",
            config.source.display()
        )
    })?;
    let GrantConfig::RefreshToken { request, .. } = &cred.grant else {
        return Err(format!(
            "credential {name} uses grant {:?}; login needs grant \"refresh_token\"",
            cred.grant.kind()
        ));
    };
    // Checked before the login, not after: a refresh token is a long-lived credential, and
    // this is where it would travel in clear.
    client.ensure_private("a refresh token")?;
    let endpoint = TokenEndpoint::new(request)?;
    let (token, refresh_token) = if device {
        login::device(&endpoint, &TerminalPrompt).await?
    } else {
        login::authorization_code(
            &endpoint,
            request.redirect_port.unwrap_or(0),
            &TerminalPrompt,
        )
        .await?
    };
    let Some(refresh_token) = refresh_token else {
        return Err(
            "the provider issued no refresh token (does the client need the offline_access scope?)"
                .into(),
        );
    };
    drop(token);
    let body = serde_json::json!({ "refresh_token": secrecy::ExposeSecret::expose_secret(&refresh_token) });
    let (code, v) = client
        .post(&client::operation_path(name, subject, "/login"), Some(body))
        .await?;
    let name = who(name, subject);
    if code != 200 {
        return Err(format!(
            "logged in at the provider, but the sidecar refused the refresh token ({code}): {}",
            v["error"]
                .as_str()
                .or(v["status"]["last_error"]["message"].as_str())
                .unwrap_or("unknown")
        ));
    }
    println!(
        "{name}: logged in; the sidecar holds a token (generation {})",
        v["generation"]
    );
    Ok(true)
}
