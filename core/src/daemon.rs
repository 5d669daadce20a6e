//! The skeleton both daemons share: the command line (`run`, `check`, `keygen`), logging,
//! signals and graceful drain, and the accept and drain loops of their listeners.
//!
//! A daemon says what it is (its name, its config, how to start and drain it) by implementing
//! [`Daemon`], and its `main.rs` is that impl and [`daemon_main!`](crate::daemon_main):
//!
//! - `run --config FILE` loads the config (errors on stderr, exit 1), sets up logging (stderr,
//!   level from `RUST_LOG`, default `info`), starts the daemon and waits for SIGINT or SIGTERM.
//!   Then it drains for the config's drain timeout; a second signal stops at once. Exit 0, or 1
//!   with `NAME: error` on stderr when the daemon cannot start.
//! - `check --config FILE` prints `ok`, or every error (exit 1).
//! - `keygen [--psk] [--out FILE]` prints a new key pair or PSK (see [`keys::keygen`]).
//!
//! Usage errors are clap's: a message and exit 2.
//!
//! This is the `daemon` feature; the engine never sees it.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio::net::{TcpListener, TcpStream};

use crate::keys;

#[doc(hidden)]
pub use tracing as __tracing;

/// What one daemon binary runs. Its `main` is [`daemon_main!`](crate::daemon_main).
pub trait Daemon {
    /// The binary's name (`wanmux-client`): the command's name in `--help`, and the prefix of
    /// the error `run` prints when the daemon cannot start.
    const NAME: &'static str;
    /// What the daemon does, in one line (`--help`).
    const ABOUT: &'static str;
    /// What `run` runs, as its help says it: "the client", "the node".
    const RUNS: &'static str;

    /// The validated config.
    type Config;
    /// Why a config file is not valid, printed as is on stderr.
    type ConfigErrors: fmt::Display;
    /// A running daemon.
    type Handle;

    /// Reads and validates the config file at `path`.
    fn load(path: &Path) -> Result<Self::Config, Self::ConfigErrors>;

    /// How long a drain waits for open streams.
    fn drain_timeout(config: &Self::Config) -> Duration;

    /// What loading found worth a warning, one line each: `check` prints them on stderr and
    /// `run` logs them at start.
    fn warnings(config: &Self::Config) -> &[String];

    /// Starts the daemon: binds its ports and starts its tasks.
    fn start(config: Self::Config) -> impl Future<Output = io::Result<Self::Handle>>;

    /// Stops gracefully: lets open streams finish for up to `timeout`, then shuts down.
    fn drain(handle: Self::Handle, timeout: Duration) -> impl Future<Output = ()>;
}

/// What [`main`] needs from the binary's own crate: its version, and the log events of `run`.
/// The events are written in that crate by [`daemon_main!`](crate::daemon_main) so that their
/// target is the binary's (`RUST_LOG=wanmux_client=debug` selects them); a target must be known
/// at compile time, so generic code here cannot give them one.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// `--version`.
    pub version: &'static str,
    /// The first signal came: draining for up to this long.
    pub draining: fn(Duration),
    /// The drain finished.
    pub stopped: fn(),
    /// A second signal came during the drain: stopping at once.
    pub second_signal: fn(),
}

/// The `main` of a daemon binary: `daemon_main!(Client);` where `Client` implements
/// [`Daemon`](crate::daemon::Daemon).
#[macro_export]
macro_rules! daemon_main {
    ($daemon:ty) => {
        fn main() -> ::std::process::ExitCode {
            use $crate::daemon::__tracing::{info, warn};
            $crate::daemon::main::<$daemon>(&$crate::daemon::Binary {
                version: ::core::env!("CARGO_PKG_VERSION"),
                draining: |timeout| info!(?timeout, "draining; a second signal stops at once"),
                stopped: || info!("stopped"),
                second_signal: || warn!("second signal: stopping now"),
            })
        }
    };
}

/// How long an accept loop pauses after a failed accept (out of file descriptors and the
/// like) before it tries again, instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How often a drain looks whether the open streams have finished.
pub const DRAIN_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// The help of `run` names what it runs; `command` puts that in.
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon until SIGINT or SIGTERM.
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
    /// Print the public key of the private key read from standard input (`pubkey < FILE`).
    Pubkey,
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

/// Parses the command line and runs the subcommand; see the module doc.
pub fn main<D: Daemon>(binary: &Binary) -> ExitCode {
    match parse::<D>(binary.version).command {
        Command::Check { config } => match D::load(&config) {
            Ok(config) => {
                for w in D::warnings(&config) {
                    eprintln!("warning: {w}");
                }
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::FAILURE
            }
        },
        Command::Keygen { out, psk } => match keys::keygen(out.as_deref(), psk) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                match &out {
                    Some(path) => eprintln!("keygen: {}: {e}", path.display()),
                    None => eprintln!("keygen: {e}"),
                }
                ExitCode::FAILURE
            }
        },
        Command::Pubkey => {
            use std::io::Read as _;
            let mut text = String::new();
            // A key is 44 characters; anything far larger is not a key.
            if let Err(e) = io::stdin().take(4096).read_to_string(&mut text) {
                eprintln!("pubkey: standard input: {e}");
                return ExitCode::FAILURE;
            }
            match keys::pubkey(&text) {
                Ok(line) => {
                    print!("{line}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!(
                        "pubkey: standard input: {e} (expected the base64 form of a 32-byte \
                         private key, as keygen writes it)"
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run { config } => {
            let config = match D::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging();
            for w in D::warnings(&config) {
                tracing::warn!("{w}");
            }
            match run::<D>(config, binary) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: {}", D::NAME, Chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// The accept loop's next connection. A failed accept is handed to `failed` (to log it) and
/// followed by a pause of [`ACCEPT_BACKOFF`], then the next try.
pub async fn accept(
    listener: &TcpListener,
    failed: impl Fn(&io::Error),
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(x) => return x,
            Err(e) => {
                failed(&e);
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Waits until `open` counts no stream, counting every [`DRAIN_POLL`]. `Err` holds the count
/// when `timeout` passed first: the streams the drain leaves to be reset.
pub async fn wait_drained(timeout: Duration, mut open: impl FnMut() -> usize) -> Result<(), usize> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match open() {
            0 => return Ok(()),
            left if tokio::time::Instant::now() >= deadline => return Err(left),
            _ => tokio::time::sleep(DRAIN_POLL).await,
        }
    }
}

/// The command line of `D`: the shared shape with the daemon's name, version and wording.
fn parse<D: Daemon>(version: &'static str) -> Cli {
    let run = format!(
        "Run {} until SIGINT or SIGTERM (then drain; a second signal stops at once). Log level \
         from RUST_LOG (default: info)",
        D::RUNS
    );
    let mut command = Cli::command()
        .name(D::NAME)
        .version(version)
        .about(D::ABOUT)
        .mut_subcommand("run", |c| c.about(run));
    let matches = command.get_matches_mut();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit())
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
async fn run<D: Daemon>(config: D::Config, binary: &Binary) -> io::Result<()> {
    let timeout = D::drain_timeout(&config);
    let handle = D::start(config).await?;
    wait_for_signal().await?;
    (binary.draining)(timeout);
    tokio::select! {
        () = D::drain(handle, timeout) => (binary.stopped)(),
        r = wait_for_signal() => {
            r?;
            (binary.second_signal)();
        }
    }
    Ok(())
}

async fn wait_for_signal() -> io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

/// An error and its sources, `: `-separated.
struct Chain<'a>(&'a dyn Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}
