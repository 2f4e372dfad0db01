//! The `bearerd` command line: subcommands only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod cli;

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
        /// Also get a token for each credential from its real endpoint (in memory; no
        /// store is touched, and refresh tokens are never spent).
        #[arg(long)]
        live: bool,
    },
    /// Print a new random store key (base64, 32 bytes).
    Keygen,
    /// Print the OAuth client ID metadata document to host at a credential's
    /// client_metadata_url (every such credential's, or NAME's).
    ClientMetadata {
        #[arg(short, long, env = "BEARERD_CONFIG", default_value = "bearerd.toml")]
        config: PathBuf,
        /// One credential (default: the only one with client_metadata_url).
        name: Option<String>,
    },
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
    /// Rehearse a failure: the running sidecar's token requests for NAME fail as if the
    /// provider answered so (none is sent), then it ends by itself.
    Drill {
        name: String,
        /// The failure: 401, 500, timeout or invalid_grant.
        #[arg(long, value_parser = parse_drill_failure, required_unless_present = "stop")]
        fail: Option<bearerd::api::DrillFailure>,
        /// How long (at most 1h).
        #[arg(long = "for", default_value = "60s")]
        duration: String,
        /// End the drill that runs now.
        #[arg(long, conflicts_with = "fail")]
        stop: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show what a credential's current token says of itself (issuer, audience, scopes,
    /// subject tag, expiry), decoded; never the token.
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run an embedded token server, an echo upstream and the sidecar between them.
    #[cfg(feature = "demo")]
    Demo {
        /// Stop after this long (e.g. "30s"); runs until Ctrl-C when absent.
        #[arg(long)]
        duration: Option<humantime::Duration>,
        /// Lifetime of the demo's tokens.
        #[arg(long, default_value = "10s")]
        token_lifetime: humantime::Duration,
    },
}

impl From<AdminArgs> for cli::AdminTarget {
    fn from(a: AdminArgs) -> Self {
        cli::AdminTarget {
            admin: a.admin,
            config: a.config,
        }
    }
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

fn parse_drill_failure(s: &str) -> Result<bearerd::api::DrillFailure, String> {
    bearerd::api::DrillFailure::parse(s).ok_or_else(|| {
        let all: Vec<&str> = bearerd::api::DrillFailure::ALL
            .iter()
            .map(|f| f.as_str())
            .collect();
        format!("expected {}", all.join(" | "))
    })
}

fn main() -> ExitCode {
    #[cfg(feature = "mimalloc")]
    bearerd::allocator::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, live } => cli::check(&config, live),
        Command::Drill {
            name,
            fail,
            duration,
            stop,
            admin,
        } => cli::drill(admin.into(), name, fail, duration, stop),
        Command::Inspect { name, json, admin } => cli::inspect(admin.into(), name, json),
        Command::ClientMetadata { config, name } => cli::client_metadata(&config, name.as_deref()),
        Command::RotationHelper => bearerd::token::rotation::helper_main(),
        Command::Run { config } => cli::run(&config),
        Command::Status {
            name,
            admin,
            json,
            subjects,
            subject,
        } => cli::status(admin.into(), name, json, subjects, subject),
        Command::Refresh {
            name,
            subject,
            admin,
            verbose,
        } => cli::refresh(admin.into(), name, subject, verbose),
        Command::Logout {
            name,
            subject,
            admin,
        } => cli::logout(admin.into(), name, subject),
        Command::Login {
            name,
            subject,
            device,
            admin,
        } => cli::login(admin.into(), name, subject, device),
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
            let config = (!uninject).then_some(config.as_path());
            cli::inject(file.as_deref(), &opts, config)
        }
        Command::Keygen => {
            println!("{}", bearerd::store::generate_key());
            ExitCode::SUCCESS
        }
        #[cfg(feature = "demo")]
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
