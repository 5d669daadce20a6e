//! The control socket (`control.socket`): a Unix stream socket, mode 0600, on which a running
//! daemon answers `status` with its [`Status`] as JSON. `wanmux-client status` and
//! `wanmux-server status` are its clients ([`query`]). It also answers `log` (the log filter in
//! force), `log set FILTER` and `log reset` (change it; `crate::daemon::logs`), as
//! `{"log": FILTER}`; `wanmux-client log` and `wanmux-server log` are their clients
//! ([`log_filter`]).
//!
//! One request per connection: a line naming the command, then the daemon writes the answer
//! (one JSON object; `{"error": WHY}` for a command it does not take) and closes. Only the daemon's user (and root) can connect: the file's mode is set to 0600
//! as soon as it is bound (connecting needs write permission, which the usual umask of 022
//! already withholds from others in between).

use crate::status::Status;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::debug;

/// Time a client has to send its command line, and to read the answer.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest command line.
const MAX_LINE: usize = 256;

/// Where the status comes from.
pub type StatusSource = Arc<dyn Fn() -> Status + Send + Sync>;

/// A bound control socket; the file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// Binds `path` (mode 0600) and serves `status` there. A socket file left by a daemon that
    /// is gone is replaced; one that a running daemon answers on is an error
    /// (`AddrInUse`), as is any other file at `path`.
    pub fn bind(path: &Path, status: StatusSource) -> io::Result<ControlSocket> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "a file that is not a socket is in the way",
                ));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another daemon answers on it",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let task = tokio::spawn(serve(listener, status));
        Ok(ControlSocket {
            path: path.to_owned(),
            task,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

async fn serve(listener: UnixListener, status: StatusSource) {
    loop {
        crate::daemon::hold_spare_fd();
        match listener.accept().await {
            Ok((conn, _)) => {
                let status = status.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(conn, &status).await {
                        debug!(error = %e, "control socket: request failed");
                    }
                });
            }
            Err(e) => {
                debug!(error = %e, "control socket: accept failed");
                // Out of file descriptors: `status` is what the operator needs now. The spare
                // one takes the request waiting, answered here before the spare is taken back.
                if crate::daemon::out_of_fds(&e) && crate::daemon::free_spare_fd() {
                    let waiting =
                        tokio::time::timeout(Duration::from_millis(100), listener.accept()).await;
                    if let Ok(Ok((conn, _))) = waiting {
                        if let Err(e) = answer(conn, &status).await {
                            debug!(error = %e, "control socket: request failed");
                        }
                        continue;
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(conn: UnixStream, status: &StatusSource) -> io::Result<()> {
    let (rd, mut wr) = conn.into_split();
    let mut line = String::new();
    let mut rd = BufReader::new(rd.take(MAX_LINE as u64));
    tokio::time::timeout(TIMEOUT, rd.read_line(&mut line))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no command"))??;
    let command = line.trim();
    let reply = match command.split_once(' ').map(|(c, rest)| (c, rest.trim())) {
        None if command == "status" => {
            let mut st = status();
            st.log_filter = crate::daemon::logs::current();
            st.to_json()
        }
        None if command == "log" => {
            log_answer(crate::daemon::logs::current().ok_or_else(|| NO_LOG.to_string()))
        }
        Some(("log", "reset")) => log_answer(crate::daemon::logs::reset()),
        Some(("log", rest)) => match rest.split_once(' ') {
            Some(("set", filter)) => log_answer(crate::daemon::logs::set(filter)),
            _ => error_answer(&format!("unknown command {command:?}")),
        },
        _ => error_answer(&format!("unknown command {command:?}")),
    };
    tokio::time::timeout(TIMEOUT, async {
        wr.write_all(reply.as_bytes()).await?;
        wr.write_all(b"\n").await?;
        wr.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "answer not read"))?
}

/// Why a daemon has no log filter to show: it was not started by `run`.
const NO_LOG: &str = "this daemon's log was not set up by `run`";

/// The answer to a `log` command: `{"log": FILTER}` or `{"error": WHY}`.
fn log_answer(filter: Result<String, String>) -> String {
    match filter {
        Ok(f) => serde_json::json!({ "log": f }).to_string(),
        Err(why) => error_answer(&why),
    }
}

fn error_answer(why: &str) -> String {
    serde_json::json!({ "error": why }).to_string()
}

/// What `log` asks of the daemon's log filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogChange {
    /// Only show it.
    Show,
    /// Put this filter in force (`RUST_LOG`'s syntax).
    Set(String),
    /// Go back to the filter the daemon started with.
    Reset,
}

/// Asks the daemon at `path` for its log filter, changed as `change` says first; the filter in
/// force after it, or the daemon's reason for refusing the change (`InvalidInput`).
pub async fn log_filter(path: &Path, change: &LogChange) -> io::Result<String> {
    let command = match change {
        LogChange::Show => "log".to_string(),
        LogChange::Set(filter) if filter.contains(['\n', '\r']) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a log filter is one line",
            ));
        }
        LogChange::Set(filter) => format!("log set {filter}"),
        LogChange::Reset => "log reset".to_string(),
    };
    if command.len() >= MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the filter is too long (at most {} characters)",
                MAX_LINE - 10
            ),
        ));
    }
    let text = ask(path, &command).await?;
    let answer: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        io::Error::new(io::ErrorKind::InvalidData, format!("not a log answer: {e}"))
    })?;
    if let Some(filter) = answer.get("log").and_then(|v| v.as_str()) {
        return Ok(filter.to_string());
    }
    let why = answer
        .get("error")
        .and_then(|v| v.as_str())
        .unwrap_or("the daemon's answer names no filter");
    Err(io::Error::new(io::ErrorKind::InvalidInput, why.to_string()))
}

/// Sends `command` to the daemon at `path` and reads its whole answer.
async fn ask(path: &Path, command: &str) -> io::Result<String> {
    let conn = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (rd, mut wr) = conn.into_split();
    wr.write_all(format!("{command}\n").as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(TIMEOUT, async {
        rd.take(64 << 20).read_to_string(&mut text).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    Ok(text)
}

/// Asks the daemon at `path` for its status.
pub async fn query(path: &Path) -> io::Result<Status> {
    let text = ask(path, "status").await?;
    serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a status answer: {e}"),
        )
    })
}

/// The directory of default control sockets.
pub const RUN_DIR: &str = "/run/wanmux";

/// The file name of the control socket a daemon started from `config` (a file) uses when the
/// file sets no `control.socket`: `NAME-STEM-HASH.sock`, e.g.
/// `wanmux-client-office-1f2e3d4c.sock` for `/etc/wanmux/office.toml`. The hash is of the
/// file's absolute path, so instances of the `@` units, and two files of the same name in
/// different directories, each get their own. It lives in the service's runtime directory
/// (`$RUNTIME_DIRECTORY`, under [`RUN_DIR`], as the units set it) or in [`RUN_DIR`] itself
/// ([`default_dir`]); `status --config FILE` looks in both ([`find_default`]).
pub fn default_socket_name(daemon: &str, config: &Path) -> String {
    let stem = config
        .file_stem()
        .map_or_else(|| "default".into(), |s| s.to_string_lossy());
    let absolute = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_owned());
    // FNV-1a: the same in every build, unlike std's hasher.
    let hash = absolute
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{daemon}-{stem}-{:08x}.sock", hash as u32)
}

/// Where `run` puts a default socket: the service's runtime directory when systemd gave one
/// (`$RUNTIME_DIRECTORY`), else [`RUN_DIR`].
pub fn default_dir() -> PathBuf {
    std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(RUN_DIR))
}

/// The default socket of `config` in [`default_dir`] (what `run` binds).
pub fn default_socket(daemon: &str, config: &Path) -> PathBuf {
    default_dir().join(default_socket_name(daemon, config))
}

/// Where the default socket of `config` is: in [`RUN_DIR`] or one of its subdirectories (a
/// unit's runtime directory). `None` when there is none.
pub fn find_default(daemon: &str, config: &Path) -> Option<PathBuf> {
    let name = default_socket_name(daemon, config);
    run_dirs()
        .into_iter()
        .map(|d| d.join(&name))
        .find(|p| p.exists())
}

/// [`RUN_DIR`] and its subdirectories, after `$RUNTIME_DIRECTORY` when it is set elsewhere
/// (a daemon started by hand with it, as systemd sets it).
fn run_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![PathBuf::from(RUN_DIR)];
    let own = default_dir();
    if !own.starts_with(RUN_DIR) {
        dirs.insert(0, own);
    }
    if let Ok(entries) = std::fs::read_dir(RUN_DIR) {
        let mut subs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subs.sort();
        dirs.extend(subs);
    }
    dirs
}

/// The default sockets of `daemon` in [`RUN_DIR`] and its subdirectories (for `status`
/// without `--config`) on which a daemon answers: the file a killed daemon left is no running
/// daemon.
pub fn default_sockets(daemon: &str) -> Vec<PathBuf> {
    answering_in(&run_dirs(), daemon)
}

/// The sockets of `daemon` in `dirs` on which a daemon answers.
fn answering_in(dirs: &[PathBuf], daemon: &str) -> Vec<PathBuf> {
    let prefix = format!("{daemon}-");
    let mut found: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|d| d.filter_map(Result::ok).map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".sock"))
        })
        .filter(|p| std::os::unix::net::UnixStream::connect(p).is_ok())
        .collect();
    found.sort();
    found
}

/// How `status` shows what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table for people.
    Text,
    /// JSON, for scripts.
    Json,
}

/// `status`: asks the daemon at `path` and prints its state; with `watch`, again every
/// `watch` interval, clearing the terminal between (until interrupted). An unreachable
/// daemon is an error naming the socket.
pub async fn print_status(path: &Path, format: Format, watch: Option<Duration>) -> io::Result<()> {
    loop {
        let st = query(path).await.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "no answer on the control socket {}: {e} (is the daemon running, with this \
                     config, and are you its user or root?)",
                    path.display()
                ),
            )
        })?;
        let text = match format {
            Format::Text => st.to_text(),
            Format::Json => st.to_json() + "\n",
        };
        match watch {
            None => {
                write_out(&text)?;
                return Ok(());
            }
            Some(every) => {
                // Home and clear the screen, as `top` does.
                if !write_out(&format!("\x1b[H\x1b[2J{text}"))? {
                    return Ok(());
                }
                tokio::time::sleep(every).await;
            }
        }
    }
}

/// Writes `text` to standard output; `false` if its reader went away (`status --watch | head`):
/// then there is no one left to print for, which is no error.
fn write_out(text: &str) -> io::Result<bool> {
    use std::io::Write as _;
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket file that a killed daemon left (no one listens) is not a running daemon: a
    /// trial's `status` without `--config` said several daemons ran, or asked a dead one.
    #[test]
    fn only_sockets_a_daemon_answers_on_are_found() {
        let dir = std::env::temp_dir().join(format!("wanmux-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let live = dir.join("wanmux-server-live-00000001.sock");
        let dead = dir.join("wanmux-server-dead-00000002.sock");
        let _listening = std::os::unix::net::UnixListener::bind(&live).expect("bind");
        drop(std::os::unix::net::UnixListener::bind(&dead).expect("bind"));
        assert!(dead.exists(), "the dead daemon's file stays");
        let other = dir.join("wanmux-client-live-00000003.sock");
        let _client = std::os::unix::net::UnixListener::bind(&other).expect("bind");
        assert_eq!(
            answering_in(std::slice::from_ref(&dir), "wanmux-server"),
            vec![live]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn default_sockets_differ_per_daemon_and_file() {
        let a = default_socket_name("wanmux-client", Path::new("/etc/wanmux/office.toml"));
        assert!(
            a.starts_with("wanmux-client-office-") && a.ends_with(".sock"),
            "{a}"
        );
        assert_eq!(
            a,
            default_socket_name("wanmux-client", Path::new("/etc/wanmux/office.toml"))
        );
        let b = default_socket_name("wanmux-server", Path::new("/etc/wanmux/office.toml"));
        assert_ne!(a, b);
        let c = default_socket_name("wanmux-client", Path::new("/home/me/office.toml"));
        assert_ne!(a, c, "same name, other directory");
    }
}
