//! The service manager's notification protocol (`sd_notify(3)`), without libsystemd: each
//! notification is one datagram of `KEY=VALUE` lines sent to the `AF_UNIX` socket named by
//! `$NOTIFY_SOCKET`, a path or, with a leading `@`, a name in Linux's abstract namespace.
//!
//! What the daemons send (see `docs/operations.md`):
//!
//! - `READY=1` once the daemon serves (and after each reload, with `STATUS=`);
//! - `STATUS=...` every [`STATUS_EVERY`], one line a person reads in `systemctl status`;
//! - `WATCHDOG=1` every half of `$WATCHDOG_USEC`, when the watchdog is on for this process
//!   (`$WATCHDOG_PID` unset or ours);
//! - `RELOADING=1` with `MONOTONIC_USEC=` (the `CLOCK_MONOTONIC` time, which systemd uses to
//!   tell this reload from an older one) when a reload starts;
//! - `STOPPING=1` when the drain starts.
//!
//! Without `$NOTIFY_SOCKET` nothing is sent. A notification that cannot be sent is logged once
//! at `warn` (a full socket, a manager gone); the daemon runs on.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often `STATUS=` is refreshed.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// A send to the manager's socket that blocks longer than this is given up: the manager
/// reads its socket at once, and a daemon must not stall on it.
const SEND_TIMEOUT: Duration = Duration::from_millis(200);

/// Where notifications go; see the module doc.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
    /// What `$NOTIFY_SOCKET` said, for the log.
    name: String,
    /// A send failed already: later failures are not logged again.
    failed: AtomicBool,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for: `Ok(None)` when it is unset or empty, `Err` when
    /// it names no socket this process can send to (an unsupported address family, a path too
    /// long for a socket address).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                let name = v.to_string_lossy().into_owned();
                Notifier::new(&name).map(Some)
            }
        }
    }

    /// A notifier for the socket `name`: a path (`/run/systemd/notify`) or an abstract name
    /// (`@/org/freedesktop/systemd1/notify`).
    pub fn new(name: &str) -> io::Result<Notifier> {
        let target = if let Some(abstract_name) = name.strip_prefix('@') {
            abstract_addr(abstract_name.as_bytes())?
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)?
        } else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "NOTIFY_SOCKET is neither a path nor an abstract socket name (@...)",
            ));
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_write_timeout(Some(SEND_TIMEOUT))?;
        Ok(Notifier {
            socket,
            target,
            name: name.to_owned(),
            failed: AtomicBool::new(false),
        })
    }

    /// Sends one notification: `KEY=VALUE` lines. A failure is returned and, the first time,
    /// logged.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let sent = self.socket.send_to_addr(state.as_bytes(), &self.target);
        match sent {
            Ok(n) if n == state.len() => Ok(()),
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "notification truncated",
            )),
            Err(e) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(socket = %self.name, error = %e, "cannot notify the service manager");
                }
                Err(e)
            }
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt as _;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt as _;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract socket names exist on Linux only",
    ))
}

/// The watchdog interval this process must ping at: half of `$WATCHDOG_USEC`, when that is set
/// and `$WATCHDOG_PID` is unset or this process's id (the manager may mean another process of
/// the service). `None` when the watchdog is off or the variables do not parse.
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok()? != me {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it. std's `Instant` reads
/// this clock but does not expose its value, hence `nix` (already a dependency of the
/// workspace's WAN lab).
pub fn monotonic_usec() -> io::Result<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let sec = u64::try_from(t.tv_sec()).unwrap_or(0);
    let nsec = u64::try_from(t.tv_nsec()).unwrap_or(0);
    Ok(sec * 1_000_000 + nsec / 1_000)
}

/// The `RELOADING=1` notification, stamped with the monotonic clock.
pub fn reloading_message() -> String {
    match monotonic_usec() {
        Ok(usec) => format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading the config"),
        Err(_) => "RELOADING=1\nSTATUS=reloading the config".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_only_for_its_pid_and_at_half_the_period() {
        let half = Some(Duration::from_secs(5));
        assert_eq!(watchdog_interval_from(Some("10000000"), None, 7), half);
        assert_eq!(watchdog_interval_from(Some("10000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval_from(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval_from(None, None, 7), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 7), None);
    }

    #[test]
    fn sends_to_a_path_and_to_an_abstract_name() {
        let dir = std::env::temp_dir().join(format!("wanmux-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.send("READY=1\nSTATUS=up").unwrap();
        let mut buf = [0u8; 256];
        let len = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=up");
        std::fs::remove_dir_all(&dir).unwrap();

        #[cfg(target_os = "linux")]
        {
            let name = format!("wanmux-notify-test-{}", std::process::id());
            let listener =
                UnixDatagram::bind_addr(&abstract_addr(name.as_bytes()).unwrap()).unwrap();
            let n = Notifier::new(&format!("@{name}")).unwrap();
            n.send("WATCHDOG=1").unwrap();
            let len = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], b"WATCHDOG=1");
        }
        assert!(Notifier::new("vsock:2:1234").is_err());
    }

    #[test]
    fn monotonic_clock_moves_with_instant() {
        let a = monotonic_usec().unwrap();
        let start = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let b = monotonic_usec().unwrap();
        let elapsed = start.elapsed().as_micros() as u64;
        assert!(
            b - a >= 20_000 && b - a <= elapsed + 1_000,
            "{a} {b} {elapsed}"
        );
        assert!(reloading_message().starts_with("RELOADING=1\nMONOTONIC_USEC="));
    }
}
