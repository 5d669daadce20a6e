//! The control socket (`control.socket`): a Unix stream socket, mode 0600, on which a running
//! daemon answers `status` with its [`Status`] as JSON. `wanmux-client status` and
//! `wanmux-server status` are its clients ([`query`]).
//!
//! One request per connection: a line naming the command, then the daemon writes the answer
//! and closes. Only the daemon's user (and root) can connect: the file's mode is set to 0600
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
    let reply = match line.trim() {
        "status" => status().to_json(),
        other => format!(
            "{{\"error\": {}}}",
            serde_json::to_string(&format!("unknown command {other:?}"))
                .expect("a string serializes")
        ),
    };
    tokio::time::timeout(TIMEOUT, async {
        wr.write_all(reply.as_bytes()).await?;
        wr.write_all(b"\n").await?;
        wr.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "answer not read"))?
}

/// Asks the daemon at `path` for its status.
pub async fn query(path: &Path) -> io::Result<Status> {
    let conn = tokio::time::timeout(TIMEOUT, UnixStream::connect(path))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let (rd, mut wr) = conn.into_split();
    wr.write_all(b"status\n").await?;
    let mut text = String::new();
    tokio::time::timeout(TIMEOUT, async {
        rd.take(64 << 20).read_to_string(&mut text).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))??;
    serde_json::from_str(&text).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a status answer: {e}"),
        )
    })
}

/// Where a daemon started from `config` (a file) puts its control socket when the file sets no
/// `control.socket`: `/run/wanmux/NAME-STEM.sock`, e.g. `/run/wanmux/wanmux-client-office.sock`
/// for `/etc/wanmux/office.toml`, so instances of the `@` units each get their own.
pub fn default_socket(daemon: &str, config: &Path) -> PathBuf {
    let stem = config
        .file_stem()
        .map_or_else(|| "default".into(), |s| s.to_string_lossy());
    PathBuf::from("/run/wanmux").join(format!("{daemon}-{stem}.sock"))
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
                print!("{text}");
                return Ok(());
            }
            Some(every) => {
                // Home and clear the screen, as `top` does.
                print!("\x1b[H\x1b[2J{text}");
                tokio::time::sleep(every).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sockets_differ_per_daemon_and_instance() {
        let a = default_socket("wanmux-client", Path::new("/etc/wanmux/office.toml"));
        assert_eq!(a, Path::new("/run/wanmux/wanmux-client-office.sock"));
        let b = default_socket("wanmux-server", Path::new("/etc/wanmux/office.toml"));
        assert_ne!(a, b);
        let c = default_socket("wanmux-client", Path::new("lab.toml"));
        assert_eq!(c, Path::new("/run/wanmux/wanmux-client-lab.sock"));
    }
}
