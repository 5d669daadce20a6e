//! `wanmux-server`: run a server node, check its config, or make keys.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use wanmux_config::ServerConfig;

#[derive(Debug, Parser)]
#[command(
    name = "wanmux-server",
    version,
    about = "wanmux server node: accepts client links and connects streams to named services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node until SIGINT or SIGTERM (then drain; a second signal stops at once). Log
    /// level from RUST_LOG (default: info).
    Run {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Check a config file: print every error with its key and line, or "ok".
    Check {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Make a key pair (or with --psk a pre-shared key).
    Keygen {
        /// Write the private key (or PSK) to this new file, mode 0600, and print only the
        /// public key.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// Make a pre-shared key instead of a key pair.
        #[arg(long)]
        psk: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match ServerConfig::load(&config) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen { out, psk } => match wanmux_core::keys::keygen(out.as_deref(), psk) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("keygen: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            let config = match ServerConfig::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            match run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("wanmux-server: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // Logs go to stderr (stdout stays free for command output), coloured only on a terminal.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

#[tokio::main]
async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let drain = config.drain_timeout;
    let server = wanmux_server::start(config).await?;
    wait_for_signal().await?;
    tracing::info!(timeout = ?drain, "draining; a second signal stops at once");
    tokio::select! {
        () = server.drain(drain) => tracing::info!("stopped"),
        r = wait_for_signal() => {
            r?;
            tracing::warn!("second signal: stopping now");
        }
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
