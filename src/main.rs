//! The `bearerd` command line: subcommands only; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

fn main() -> ExitCode {
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
        Command::Run { config } => {
            let c = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            };
            logging::init(c.server.log_format);
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
