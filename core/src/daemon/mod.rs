//! The skeleton both daemons share: the command line (`run`, `check`, `keygen`), logging,
//! signals and graceful drain, and the accept and drain loops of their listeners.
//!
//! A daemon says what it is (its name, its config, how to start and drain it) by implementing
//! [`Daemon`], and its `main.rs` is that impl and [`daemon_main!`](crate::daemon_main):
//!
//! - `run --config FILE` loads the config (errors on stderr, exit [`EXIT_CONFIG`]), sets up
//!   logging (stderr, level from `RUST_LOG`, default `info`), starts the daemon and waits for
//!   SIGINT or SIGTERM.
//!   Then it drains for the config's drain timeout; a second signal ends the drain at once (what
//!   is open is reset, and both ends are told: [`crate::driver::close_flushed`]). Exit 0, or 1
//!   with `NAME: error` on stderr when the daemon cannot start. SIGHUP reloads the config file
//!   ([`Daemon::reload`]): a file that does not load is refused with every error logged, in the
//!   words `check` prints, and the running config stays. Under systemd (`Type=notify`) it speaks
//!   the notification protocol ([`notify`]): ready, status, watchdog, reloading, stopping.
//!   `--log-format json` writes one JSON object per log line, for log shippers.
//! - `check --config FILE` prints `ok`, or every error (exit 1).
//! - `status [--config FILE | --socket PATH] [--json] [--watch]` asks a running daemon on its
//!   control socket (`crate::control`) and prints its links, sessions and traffic.
//! - `log [FILTER | --reset] [--config FILE | --socket PATH]` shows or changes a running
//!   daemon's log filter ([`logs`]), found as `status` finds it.
//! - `keygen [--psk] [--out FILE]` prints a new key pair or PSK (see [`keys::keygen`]).
//! - `tls ca --out DIR` and `tls issue --ca DIR --name NAME --out DIR [--client]` make PKI
//!   mode's certificates, and `tls revoke --ca DIR --crl FILE [--cert CERT]` its revocation
//!   lists (`crate::tls::issue`); only a daemon with [`Daemon::TLS_TOOLS`] (the node) lists
//!   them.
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

mod docs;
pub mod fds;
pub mod logs;
pub mod notify;
pub mod slots;

use notify::Notifier;

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
    /// Whether the `tls` subcommands (an operator CA and its certificates) are this daemon's:
    /// the node's. Elsewhere they are hidden and refused.
    const TLS_TOOLS: bool = false;

    /// The validated config. The skeleton keeps the running one, to compare a reloaded file
    /// with it.
    type Config: Clone;
    /// Why a config file is not valid, printed as is on stderr.
    type ConfigErrors: fmt::Display;
    /// A running daemon.
    type Handle;

    /// Reads and validates the config file at `path`.
    fn load(path: &Path) -> Result<Self::Config, Self::ConfigErrors>;

    /// How long a drain waits for open streams.
    fn drain_timeout(config: &Self::Config) -> Duration;

    /// Worker threads of the runtime `run` builds (`server.threads`, `client.threads`); `None`:
    /// tokio's default, one per CPU the process may use (or `TOKIO_WORKER_THREADS`).
    fn threads(config: &Self::Config) -> Option<std::num::NonZeroUsize>;

    /// What loading found worth a warning, one line each: `check` prints them on stderr and
    /// `run` logs them at start.
    fn warnings(config: &Self::Config) -> &[String];

    /// Starts the daemon: binds its ports and starts its tasks.
    fn start(config: Self::Config) -> impl Future<Output = io::Result<Self::Handle>>;

    /// Completes once the daemon may be announced ready (`READY=1`): at once for a daemon whose
    /// [`start`](Self::start) bound everything it needs; the client waits for its first link or
    /// its first failed dial (logged with its reason). Called again after it was cancelled, so it
    /// must only wait, never change anything.
    fn ready(handle: &Self::Handle) -> impl Future<Output = ()>;

    /// One line on what the daemon is doing, for the service manager (`STATUS=`, shown by
    /// `systemctl status`): links up, sessions, streams.
    fn status(handle: &Self::Handle) -> String;

    /// Applies a config reloaded on SIGHUP. `running` is the config in force, `new` the file as
    /// it loads now (valid). Whatever can change at runtime is applied, without dropping a live
    /// stream; the daemon logs what changed and names in one `warn` line the settings it keeps
    /// (a listen address, keys). Returns the config now in force: `new` with the kept settings
    /// of `running`. `Err` when the change could not be applied (a new port that cannot be
    /// bound): then nothing changed.
    fn reload(
        handle: &mut Self::Handle,
        running: &Self::Config,
        new: Self::Config,
    ) -> impl Future<Output = io::Result<Self::Config>>;

    /// Where the daemon counts its reloads, for its status and metrics: `run` records the
    /// result of each SIGHUP there.
    fn reloads(handle: &Self::Handle) -> &crate::status::Reloads;

    /// The config's control socket (`control.socket`): `run` gives it the default of the
    /// config file when it has none, and `status` reads it.
    fn control_socket(config: &mut Self::Config) -> &mut Option<PathBuf>;

    /// The control socket that the config file at `path` names, read even when the file does
    /// not load: `status --config FILE` after a refused reload.
    fn control_socket_in(path: &Path) -> Option<PathBuf>;

    /// Stops gracefully: lets open streams finish for up to `timeout`, or until `stop`
    /// completes (a second signal), then resets what is left, telling the peer and the
    /// applications, and shuts down.
    fn drain(
        handle: Self::Handle,
        timeout: Duration,
        stop: impl Future<Output = ()>,
    ) -> impl Future<Output = ()>;
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
    /// SIGHUP: reloading the config file at this path.
    pub reloading: fn(&Path),
    /// One line of the errors that made a reloaded file invalid (as `check` prints it).
    pub reload_error: fn(&str),
    /// A reload was refused (the file did not load, or the change could not be applied; the
    /// reason is given): the running config stays.
    pub reload_refused: fn(&dyn fmt::Display),
    /// A reload applied.
    pub reloaded: fn(),
}

/// The `main` of a daemon binary: `daemon_main!(Client);` where `Client` implements
/// [`Daemon`](crate::daemon::Daemon).
#[macro_export]
macro_rules! daemon_main {
    ($daemon:ty) => {
        fn main() -> ::std::process::ExitCode {
            use $crate::daemon::__tracing::{error, info, warn};
            $crate::daemon::main::<$daemon>(&$crate::daemon::Binary {
                version: ::core::env!("CARGO_PKG_VERSION"),
                draining: |timeout| info!(?timeout, "draining; a second signal stops at once"),
                stopped: || info!("stopped"),
                second_signal: || warn!("second signal: stopping now"),
                reloading: |path| info!(config = %path.display(), "SIGHUP: reloading the config"),
                reload_error: |line| error!("{line}"),
                reload_refused: |why| {
                    warn!(reason = %why, "reload refused: the running config stays")
                },
                reloaded: || info!("reload done"),
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
    /// Run the daemon until SIGINT or SIGTERM; SIGHUP reloads the config.
    Run {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// How log lines are written on stderr: `text` for people and the journal, `json`
        /// (one object per line: timestamp, level, target, fields, spans) for log shippers.
        #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Check a config file: print every error with its key and line, or "ok".
    Check {
        /// The config file.
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Print the public key of the private key read from standard input (`pubkey < FILE`).
    Pubkey,
    /// Show what a running daemon is doing (links, sessions, traffic), asked on its control
    /// socket.
    Status {
        /// The config file the daemon runs: its `control.socket`, or the default socket of that
        /// file. Without it (and without --socket), the one daemon of this kind running with a
        /// default socket.
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The control socket itself.
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        socket: Option<PathBuf>,
        /// Print JSON, for scripts.
        #[arg(long)]
        json: bool,
        /// Refresh every second, like `top`, until interrupted.
        #[arg(long)]
        watch: bool,
    },
    /// Show or change a running daemon's log filter, without a restart: `log debug` to see
    /// more, `log --reset` for the filter it started with (`RUST_LOG`, or info).
    Log {
        /// The filter to put in force, in `RUST_LOG`'s syntax (`debug`,
        /// `info,wanmux_core::driver=trace`). Without it (and without --reset), the filter in
        /// force is printed.
        #[arg(value_name = "FILTER", conflicts_with = "reset")]
        filter: Option<String>,
        /// Go back to the filter the daemon started with.
        #[arg(long)]
        reset: bool,
        /// The config file the daemon runs (as for `status`).
        #[arg(long, short, value_name = "FILE")]
        config: Option<PathBuf>,
        /// The control socket itself.
        #[arg(long, value_name = "PATH", conflicts_with = "config")]
        socket: Option<PathBuf>,
    },
    /// Make PKI mode's certificates: an operator CA, node or client certificates it issues
    /// (Ed25519 keys), and its revocation list.
    #[command(subcommand)]
    Tls(TlsCommand),
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

/// `tls`: PKI mode's certificates.
#[derive(Debug, Subcommand)]
enum TlsCommand {
    /// Make an operator CA: DIR/ca.pem (ca_file on clients, client_ca_file on nodes) and
    /// DIR/ca.key (mode 0600; keep it off the nodes and clients). Never overwrites a file.
    Ca {
        /// The directory to write to (created if need be).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Issue a certificate of the CA made by `tls ca`: DIR/NAME.pem and DIR/NAME.key (mode
    /// 0600). For a node, NAME is the name clients dial it by (node.tls_name, default the host
    /// of node.addr: a DNS name or an IP address); with --client, any name, and the client's
    /// sha256: identity is printed for the nodes' allowed_clients.
    Issue {
        /// The CA's directory (ca.pem and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The node's DNS name or IP address, or the client's name.
        #[arg(long, value_name = "NAME")]
        name: String,
        /// The directory to write to (created if need be).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// A client's certificate (TLS client authentication) instead of a node's.
        #[arg(long)]
        client: bool,
        /// Days the certificate is valid from today.
        #[arg(long, value_name = "DAYS", default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=3650))]
        days: u32,
        /// Renew: certify this existing private key (PEM) instead of making a new one, and
        /// write DIR/NAME.pem only. The certificate keeps the identity (sha256:) of the one it
        /// replaces, so allowed_clients stays, and a client that reloads (SIGHUP) takes it
        /// without a restart.
        #[arg(long, value_name = "KEY")]
        key: Option<PathBuf>,
    },
    /// Revoke a client certificate of the CA made by `tls ca`: add it to the CA's revocation
    /// list FILE (PEM, for the nodes' crl_files), or make the list. The list is read back from
    /// FILE (it must be this CA's) and keeps what it revoked; it gets the next CRL number and a
    /// new next update, and replaces FILE at once (mode 0644). Without --cert, signs the list
    /// again as it is (before its next update comes). Then reload the nodes (SIGHUP): the
    /// certificate clients' links dial again under the new list, and a revoked certificate's
    /// are refused.
    Revoke {
        /// The CA's directory (ca.pem and ca.key).
        #[arg(long, value_name = "DIR")]
        ca: PathBuf,
        /// The revocation list to update or make.
        #[arg(long, value_name = "FILE")]
        crl: PathBuf,
        /// The client certificate to revoke (PEM, as `tls issue --client` wrote it).
        #[arg(long, value_name = "CERT")]
        cert: Option<PathBuf>,
        /// Days until the list's next update: `check` warns a week before, and other tools
        /// take a list past it as stale.
        #[arg(long, value_name = "DAYS", default_value_t = crate::tls::issue::CRL_VALIDITY_DAYS, value_parser = clap::value_parser!(u32).range(1..=3650))]
        next_update: u32,
    },
}

/// `run`'s exit status when its config file does not load (sysexits' `EX_CONFIG`): the units
/// name it in `RestartPreventExitStatus=`, so that systemd does not restart a daemon that cannot
/// start until its file is fixed.
pub const EXIT_CONFIG: u8 = 78;

/// How `run` writes its log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// One line of text per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses the command line and runs the subcommand; see the module doc.
pub fn main<D: Daemon>(binary: &Binary) -> ExitCode {
    // Kept out of the command line the man pages and completions describe (see `docs`).
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(docs::SUBCOMMAND)) {
        return docs::main(command::<D>(binary.version));
    }
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
        Command::Tls(_) if !D::TLS_TOOLS => {
            eprintln!("tls: the certificates are made with wanmux-server tls");
            ExitCode::FAILURE
        }
        Command::Tls(tls) => {
            use crate::tls::{issue, Usage};
            let done = match tls {
                TlsCommand::Ca { out } => issue::make_ca(&out),
                TlsCommand::Issue {
                    ca,
                    name,
                    out,
                    client,
                    days,
                    key,
                } => {
                    let usage = if client { Usage::Client } else { Usage::Node };
                    match key {
                        None => issue::issue_files(&ca, &name, &out, usage, days),
                        Some(key) => issue::renew_files(&ca, &name, &key, &out, usage, days),
                    }
                }
                TlsCommand::Revoke {
                    ca,
                    crl,
                    cert,
                    next_update,
                } => issue::revoke_files(&ca, &crl, cert.as_deref(), next_update),
            };
            match done {
                Ok(text) => {
                    print!("{text}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("tls: {e}");
                    ExitCode::FAILURE
                }
            }
        }
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
        Command::Status {
            config,
            socket,
            json,
            watch,
        } => status::<D>(config, socket, json, watch),
        Command::Log {
            filter,
            reset,
            config,
            socket,
        } => {
            let change = match (filter, reset) {
                (Some(f), _) => crate::control::LogChange::Set(f),
                (None, true) => crate::control::LogChange::Reset,
                (None, false) => crate::control::LogChange::Show,
            };
            log::<D>(config, socket, &change)
        }

        Command::Run {
            config: path,
            log_format,
        } => {
            let mut config = match D::load(&path) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{errors}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            logs::init(log_format);
            for w in D::warnings(&config) {
                tracing::warn!("{w}");
            }
            default_control_socket::<D>(&path, &mut config);
            match runtime(D::threads(&config))
                .and_then(|rt| rt.block_on(run::<D>(&path, config, binary)))
            {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{}: {}", D::NAME, Chain(&e));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Gives a config that names no `control.socket` the default one of its file, when this user
/// may create it (see [`crate::control::default_dir`]); else `status` is unavailable, and a
/// warning says so.
fn default_control_socket<D: Daemon>(path: &Path, config: &mut D::Config) {
    let socket = D::control_socket(config);
    if socket.is_some() {
        return;
    }
    let dir = crate::control::default_dir();
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let usable = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::File::create(&probe))
        .map(|_| {
            let _ = std::fs::remove_file(&probe);
        });
    match usable {
        Ok(()) => *socket = Some(dir.join(crate::control::default_socket_name(D::NAME, path))),
        Err(e) => tracing::warn!(
            "no control socket, so `status` cannot ask this daemon: cannot create files in {}: \
             {e} (set control.socket to a path this user may create)",
            dir.display()
        ),
    }
}

/// `status`: finds the daemon's control socket and prints what it answers.
fn status<D: Daemon>(
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    json: bool,
    watch: bool,
) -> ExitCode {
    let Some(path) = control_path::<D>("status", config, socket) else {
        return ExitCode::FAILURE;
    };
    let format = if json {
        crate::control::Format::Json
    } else {
        crate::control::Format::Text
    };
    let every = watch.then_some(Duration::from_secs(1));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("status: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(crate::control::print_status(&path, format, every)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("status: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `log`: shows or changes the log filter of the daemon found as `status` finds it.
fn log<D: Daemon>(
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    change: &crate::control::LogChange,
) -> ExitCode {
    let Some(path) = control_path::<D>("log", config, socket) else {
        return ExitCode::FAILURE;
    };
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .and_then(|rt| rt.block_on(crate::control::log_filter(&path, change)));
    match asked {
        Ok(filter) => {
            println!("{filter}");
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            eprintln!("log: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "log: no answer on the control socket {}: {e} (is the daemon running, with this \
                 config, and are you its user or root?)",
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// The control socket `command` (`status`, `log`) asks: `socket`, or the one of the daemon
/// running `config`, or the one daemon of this kind with a default socket. `None` after saying
/// on stderr why there is none.
fn control_path<D: Daemon>(
    command: &str,
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
) -> Option<PathBuf> {
    Some(match (socket, config) {
        (Some(socket), _) => socket,
        (None, Some(file)) => match D::load(&file) {
            Ok(mut c) => match D::control_socket(&mut c).clone() {
                Some(set) => set,
                None => crate::control::find_default(D::NAME, &file)
                    .unwrap_or_else(|| crate::control::default_socket(D::NAME, &file)),
            },
            Err(errors) => {
                // A daemon whose reload of this file was refused runs on: ask it anyway.
                eprintln!("{errors}");
                let running = D::control_socket_in(&file)
                    .or_else(|| crate::control::find_default(D::NAME, &file));
                let socket = running?;
                eprintln!(
                    "{command}: {} does not load; asking the daemon at {}, which runs on the last \
                     config that loaded",
                    file.display(),
                    socket.display()
                );
                socket
            }
        },
        (None, None) => {
            let found = crate::control::default_sockets(D::NAME);
            match found.as_slice() {
                [one] => one.clone(),
                [] => {
                    eprintln!(
                        "{command}: no running {} with a default socket in {}; name its config \
                         with --config FILE (or the socket with --socket PATH)",
                        D::NAME,
                        crate::control::RUN_DIR
                    );
                    return None;
                }
                many => {
                    eprintln!(
                        "{command}: several {} are running; name one with --config FILE, or \
                         with --socket and one of these sockets:",
                        D::NAME
                    );
                    for p in many {
                        eprintln!("  {}", p.display());
                    }
                    return None;
                }
            }
        }
    })
}

/// How often an accept loop logs its failed accepts at most ([`AcceptErrors`]).
const ACCEPT_ERRORS_EVERY: Duration = Duration::from_secs(10);

/// One listener's failed accepts, logged at `warn` at most once per 10 s with their count: a
/// process out of file descriptors fails every accept, 20 times a second ([`ACCEPT_BACKOFF`]),
/// for as long as it stays out (a trial's node wrote 316 lines in 16 s).
#[derive(Debug)]
pub struct AcceptErrors {
    what: &'static str,
    tally: crate::lograte::Tally<(&'static str, io::Error)>,
}

impl AcceptErrors {
    /// The failures of the listener named `what` in the log line (`"accept failed"`,
    /// `"cluster accept failed"`).
    pub fn new(what: &'static str) -> AcceptErrors {
        let tally = crate::lograte::Tally::new(
            ACCEPT_ERRORS_EVERY,
            |n, (what, e): &(&'static str, io::Error)| {
                if out_of_fds(e) {
                    tracing::warn!(
                        error = %e,
                        failed = n,
                        "{what}: this process is out of file descriptors (its open-file limit, \
                         LimitNOFILE= under systemd); one kept in reserve takes the waiting \
                         connections one at a time"
                    );
                } else {
                    tracing::warn!(error = %e, failed = n, "{what}");
                }
            },
        );
        AcceptErrors { what, tally }
    }
}

/// One file descriptor the process holds in reserve (on `/dev/null`) for an accept loop that
/// finds the process out of them: freed, it lets the loop take the connection waiting, which
/// its caller answers or refuses at once (an RST, a control socket's `status`), instead of
/// leaving it in the listen backlog until the peer gives up (a trial's clients read a node out
/// of descriptors as one that did not answer, and `status` got no answer). Taken again at the
/// next accept.
static SPARE_FD: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

fn spare_fd() -> std::sync::MutexGuard<'static, Option<std::fs::File>> {
    SPARE_FD.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the spare descriptor if it is not held (and the process has one to take).
pub(crate) fn hold_spare_fd() {
    let mut spare = spare_fd();
    if spare.is_none() {
        *spare = std::fs::File::open("/dev/null").ok();
    }
}

/// Frees the spare descriptor for an accept; whether there was one.
pub(crate) fn free_spare_fd() -> bool {
    spare_fd().take().is_some()
}

/// Whether `e` says the process (EMFILE) or the system (ENFILE) is out of file descriptors.
pub fn out_of_fds(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(24 | 23))
}

/// `peer` as a person reads it: an IPv4 peer of a listener on `[::]` (an IPv4-mapped IPv6
/// address, `[::ffff:192.0.2.1]:PORT`) as the IPv4 address it is. A trial's node printed such
/// peers in its log, `status` (where the long form pushed the columns out of line) and metrics.
pub fn canonical(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

/// The accept loop's next connection. A failed accept is counted in `errors` (which logs it)
/// and followed by a pause of [`ACCEPT_BACKOFF`], then the next try; out of file descriptors,
/// the spare one the process keeps is freed for the connection waiting first.
pub async fn accept(listener: &TcpListener, errors: &AcceptErrors) -> (TcpStream, SocketAddr) {
    loop {
        hold_spare_fd();
        match listener.accept().await {
            Ok((tcp, peer)) => return (tcp, canonical(peer)),
            Err(e) => {
                let spare = out_of_fds(&e) && free_spare_fd();
                errors.tally.hit((errors.what, e));
                if spare {
                    // The accept failed for a connection that waits: it is there at once.
                    if let Ok(Ok((tcp, peer))) =
                        tokio::time::timeout(ACCEPT_BACKOFF, listener.accept()).await
                    {
                        return (tcp, canonical(peer));
                    }
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// What to add to a bind error on `addr`: for a port below 1024 refused for lack of privilege,
/// how to grant it (the shipped systemd units drop every capability); otherwise nothing.
pub fn bind_hint(addr: SocketAddr, e: &io::Error) -> &'static str {
    if e.kind() == io::ErrorKind::PermissionDenied && addr.port() != 0 && addr.port() < 1024 {
        " (ports below 1024 need CAP_NET_BIND_SERVICE: under systemd, a drop-in with \
         AmbientCapabilities=CAP_NET_BIND_SERVICE and CapabilityBoundingSet=CAP_NET_BIND_SERVICE, \
         see docs/operations.md)"
    } else {
        ""
    }
}

/// How long a daemon that stops gives its links to send the `RESET`s of the streams it resets,
/// and its stream tasks to close their sockets ([`crate::driver::close_flushed`]).
pub const CLOSE_FLUSH: Duration = Duration::from_secs(1);

/// What a drain left open when it ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// The streams the drain leaves to be reset.
    pub streams: usize,
    /// It was told to stop (a second signal), not timed out.
    pub stopped: bool,
}

impl Left {
    /// The log line's message for it.
    pub fn message(&self) -> &'static str {
        if self.stopped {
            "stopping now: resetting the streams still open"
        } else {
            "drain timeout: resetting the streams still open"
        }
    }
}

/// Waits until `open` counts no stream, counting every [`DRAIN_POLL`]. `Err` says what is left
/// when `timeout` passed first, or `stop` completed.
pub async fn wait_drained(
    timeout: Duration,
    stop: impl Future<Output = ()>,
    mut open: impl FnMut() -> usize,
) -> Result<(), Left> {
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::pin!(stop);
    loop {
        match open() {
            0 => return Ok(()),
            streams if tokio::time::Instant::now() >= deadline => {
                return Err(Left {
                    streams,
                    stopped: false,
                })
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(DRAIN_POLL) => {}
            () = &mut stop => {
                return Err(Left {
                    streams: open(),
                    stopped: true,
                })
            }
        }
    }
}

/// The command line of `D`, parsed.
fn parse<D: Daemon>(version: &'static str) -> Cli {
    let mut command = command::<D>(version);
    let matches = command.get_matches_mut();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut command).exit())
}

/// The command line of `D`: the shared shape with the daemon's name, version and wording.
fn command<D: Daemon>(version: &'static str) -> clap::Command {
    let run = format!(
        "Run {} until SIGINT or SIGTERM (then drain; a second signal stops at once); SIGHUP \
         reloads the config file. Log level \
         from RUST_LOG (default: info); `log FILTER` changes it while the daemon runs",
        D::RUNS
    );
    Cli::command()
        .name(D::NAME)
        .bin_name(D::NAME)
        .version(version)
        .about(D::ABOUT)
        .mut_subcommand("run", |c| c.about(run))
        .mut_subcommand("tls", |c| c.hide(!D::TLS_TOOLS))
}

/// The runtime the daemon runs on: multi-threaded, with `threads` workers if the config sets
/// them, else as `TOKIO_WORKER_THREADS` says (checked here: tokio would panic on a bad value),
/// else [`default_workers`] for the CPUs the process may use.
fn runtime(threads: Option<std::num::NonZeroUsize>) -> io::Result<tokio::runtime::Runtime> {
    const ENV: &str = "TOKIO_WORKER_THREADS";
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n.get());
    } else if let Some(v) = std::env::var_os(ENV) {
        let n = v
            .to_str()
            .and_then(|v| v.parse::<std::num::NonZeroUsize>().ok());
        let n = n.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ENV}={v:?} is not a number of threads (1 or more)"),
            )
        })?;
        b.worker_threads(n.get());
    } else {
        b.worker_threads(default_workers(cpus()));
    }
    b.enable_all().build()
}

/// The CPUs the process may use (its affinity and cgroup quota count); 1 if the host does not say.
fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Workers when neither the config nor the environment says: one per CPU, except on a machine
/// of one or two CPUs, where one. There the kernel's network stack, the applications and the
/// other end share the CPUs with the daemon, and two workers of one daemon mostly wake each
/// other across them: on a 2-CPU VM one worker costs less CPU per byte, adds half the round
/// trip and moves the WAN lab's paths as fast or faster (`bench/RESULTS.md`, "One worker by
/// default on one or two CPUs").
fn default_workers(cpus: usize) -> usize {
    if cpus <= 2 {
        1
    } else {
        cpus
    }
}

async fn run<D: Daemon>(path: &Path, config: D::Config, binary: &Binary) -> io::Result<()> {
    // What the host gives the daemon, beside the other host checks (socket buffers, bbr).
    tracing::info!(
        target: "wanmux::host",
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        cpus = cpus(),
        "runtime started"
    );
    let notifier = match Notifier::from_env() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NOTIFY_SOCKET is set but unusable: not notifying");
            None
        }
    };
    let notify = |state: &str| {
        if let Some(n) = &notifier {
            let _ = n.send(state);
        }
    };
    // Handlers first: from here on SIGHUP no longer ends the process, even during start.
    let mut signals = Signals::new()?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut handle = D::start(config.clone()).await?;
    let mut running = config;
    let mut ready = false;
    // Set while the last reload was refused: `systemctl status` says so until one succeeds.
    let mut refused = false;
    let mut status = tokio::time::interval_at(
        tokio::time::Instant::now() + notify::STATUS_EVERY,
        notify::STATUS_EVERY,
    );
    status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = notify::watchdog_interval()
        .filter(|_| notifier.is_some())
        .map(tokio::time::interval);
    // The pings come from this loop, which also reads the daemon's status (and with it takes
    // the engines' locks): a daemon stuck there stops pinging and the manager restarts it.
    let status_line = |h: &D::Handle, refused: bool| {
        let s = D::status(h);
        if refused {
            format!("{s}; last reload refused, running the previous config")
        } else {
            s
        }
    };
    loop {
        tokio::select! {
            r = signals.stop() => {
                r?;
                break;
            }
            () = D::ready(&handle), if !ready => {
                ready = true;
                notify(&format!("READY=1\nSTATUS={}", status_line(&handle, refused)));
            }
            _ = hangup.recv(), if ready => {
                notify(&notify::reloading_message());
                (binary.reloading)(path);
                match reload::<D>(path, &mut handle, &running, binary).await {
                    Ok(now) => {
                        running = now;
                        refused = false;
                        (binary.reloaded)();
                    }
                    Err(why) => {
                        refused = true;
                        (binary.reload_refused)(&why);
                    }
                }
                D::reloads(&handle).record(!refused);
                notify(&format!("READY=1\nSTATUS={}", status_line(&handle, refused)));
            }
            _ = status.tick(), if ready => {
                notify(&format!("STATUS={}", status_line(&handle, refused)));
            }
            _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                notify("WATCHDOG=1");
            }
        }
    }
    let timeout = D::drain_timeout(&running);
    notify(&format!(
        "STOPPING=1\nSTATUS=draining for up to {timeout:?}"
    ));
    (binary.draining)(timeout);
    // A second signal cuts the drain short: what is open is reset, and the peer and the
    // applications are told (an exit that left it to the kernel would end the connections
    // with a FIN, and cut-off transfers would look complete).
    let second = async {
        if signals.stop().await.is_ok() {
            (binary.second_signal)();
        } else {
            std::future::pending::<()>().await;
        }
    };
    let drain = D::drain(handle, timeout, second);
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => {
                (binary.stopped)();
                break;
            }
            // A drain takes up to its timeout; the manager may still hold the watchdog to it.
            _ = async { watchdog.as_mut()?.tick().await; Some(()) }, if watchdog.is_some() => {
                notify("WATCHDOG=1");
            }
        }
    }
    Ok(())
}

/// Loads the config file at `path` again and has the daemon apply it. `Err` says why the
/// running config stays: the errors of an invalid file are logged first, one line each.
async fn reload<D: Daemon>(
    path: &Path,
    handle: &mut D::Handle,
    running: &D::Config,
    binary: &Binary,
) -> Result<D::Config, String> {
    let mut new = match D::load(path) {
        Ok(c) => c,
        Err(errors) => {
            let text = errors.to_string();
            let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
            for line in &lines {
                (binary.reload_error)(line);
            }
            return Err(format!(
                "{} error(s) in {} (listed above)",
                lines.len(),
                path.display()
            ));
        }
    };
    for w in D::warnings(&new) {
        tracing::warn!("{w}");
    }
    // The file names no control socket: it is the same default `run` gave the running config,
    // so the reload must not see a change there.
    default_control_socket::<D>(path, &mut new);
    D::reload(handle, running, new)
        .await
        .map_err(|e| Chain(&e).to_string())
}

/// The signals that stop `run`: SIGINT and SIGTERM.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM.
    async fn stop(&mut self) -> io::Result<()> {
        tokio::select! {
            _ = self.interrupt.recv() => Ok(()),
            _ = self.terminate.recv() => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::{bind_hint, canonical, default_workers};
    use std::io;
    use std::net::SocketAddr;

    #[test]
    fn ipv4_mapped_peers_read_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:192.0.2.1]:4480".parse().unwrap();
        assert_eq!(canonical(mapped), "192.0.2.1:4480".parse().unwrap());
        for plain in ["[2001:db8::1]:4480", "[::1]:4480", "192.0.2.1:4480"] {
            let a: SocketAddr = plain.parse().unwrap();
            assert_eq!(canonical(a), a);
        }
    }

    #[test]
    fn one_worker_on_one_or_two_cpus_else_one_per_cpu() {
        let got: Vec<usize> = (1..=5).map(default_workers).collect();
        assert_eq!(got, [1, 1, 3, 4, 5]);
    }

    #[test]
    fn a_refused_low_port_says_which_capability_it_needs() {
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        let low = "0.0.0.0:443".parse().unwrap();
        assert!(bind_hint(low, &denied).contains("CAP_NET_BIND_SERVICE"));
        assert_eq!(bind_hint("0.0.0.0:4480".parse().unwrap(), &denied), "");
        let in_use = io::Error::from(io::ErrorKind::AddrInUse);
        assert_eq!(bind_hint(low, &in_use), "");
    }
}
