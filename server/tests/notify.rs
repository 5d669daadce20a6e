//! `wanmux-server run` under a service manager, played by this test: it binds the
//! `NOTIFY_SOCKET` datagram socket, starts the real binary with the watchdog on, and reads what
//! the daemon announces while it is reloaded with SIGHUP (a good file, then a broken one) and
//! stopped with SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PSK: &str = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=";

fn config(services: &[&str]) -> String {
    let mut text = format!("[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 1\npsk = \"{PSK}\"\n");
    for name in services {
        text.push_str(&format!(
            "[[service]]\nname = \"{name}\"\ntarget = \"127.0.0.1:9\"\n"
        ));
    }
    text
}

/// The daemon under test, its stderr lines arriving on a channel.
struct Daemon {
    child: Child,
    stderr: mpsc::Receiver<String>,
    /// Every stderr line read so far.
    seen: Vec<String>,
}

impl Daemon {
    fn start(config: &Path, notify: &str) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "400000")
            .env_remove("WATCHDOG_PID")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wanmux-server");
        let (tx, stderr) = mpsc::channel();
        let pipe = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Daemon {
            child,
            stderr,
            seen: Vec::new(),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to 10 s for a stderr line containing `text`; returns it.
    fn wait_log(&mut self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        if let Some(l) = self.seen.iter().find(|l| l.contains(text)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(text) {
                        return line;
                    }
                }
                Err(_) => panic!("no log line with {text:?}; seen:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The notifications the daemon sends, read with a deadline.
struct Manager {
    socket: UnixDatagram,
}

impl Manager {
    /// Datagrams until one has a line `line` (returned with its datagram), within 10 s. The
    /// datagrams skipped on the way are appended to `skipped`.
    fn until(&self, line: &str, skipped: &mut Vec<String>) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {line:?} within 10 s; got {skipped:?}");
            self.socket
                .set_read_timeout(Some(left))
                .expect("read timeout");
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {line:?}: {e}; got {skipped:?}"));
            let msg = String::from_utf8(buf[..n].to_vec()).expect("utf-8 notification");
            if msg.lines().any(|l| l == line) {
                return msg;
            }
            skipped.push(msg);
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn notifies_ready_status_watchdog_and_reloads_in_order() {
    let dir = temp_dir("notify-server");
    let config_path = dir.join("server.toml");
    std::fs::write(&config_path, config(&["echo"])).expect("write config");
    let socket_path = dir.join("notify.sock");
    let manager = Manager {
        socket: UnixDatagram::bind(&socket_path).expect("bind the notify socket"),
    };
    let mut daemon = Daemon::start(&config_path, socket_path.to_str().expect("utf-8"));
    let mut skipped = Vec::new();

    // Ready, with a status line, once the listener is bound.
    let ready = manager.until("READY=1", &mut skipped);
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=sessions 0, links up 0")),
        "{ready:?}"
    );
    // Nothing about the daemon's state comes before READY. A watchdog ping may: the watchdog's
    // first tick is due at once and races READY in the daemon's loop (a loaded machine saw
    // WATCHDOG=1 first), and a ping before READY is harmless to the manager.
    assert!(
        skipped.iter().all(|m| m == "WATCHDOG=1"),
        "before READY: {skipped:?}"
    );
    let listening = daemon.wait_log("wanmux-server listening");
    let addr = listening
        .split("listen=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the listen address is logged")
        .to_owned();
    // The watchdog pings at half of WATCHDOG_USEC.
    manager.until("WATCHDOG=1", &mut skipped);

    // A good file: RELOADING (stamped with the monotonic clock), the change logged, READY.
    std::fs::write(&config_path, config(&["echo", "web"])).expect("write config");
    daemon.signal("HUP");
    skipped.clear();
    let reloading = manager.until("RELOADING=1", &mut skipped);
    assert!(
        reloading.lines().any(|l| l
            .strip_prefix("MONOTONIC_USEC=")
            .is_some_and(|v| v.parse::<u64>().is_ok())),
        "{reloading:?}"
    );
    let ready = manager.until("READY=1", &mut skipped);
    assert!(!ready.contains("refused"), "{ready:?}");
    daemon.wait_log("service web added");
    daemon.wait_log("reload done");
    manager.until("WATCHDOG=1", &mut skipped);

    // A broken file: every error logged as `check` prints it, the running config stays.
    std::fs::write(
        &config_path,
        "[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 0\npsk = \"short\"\n[[service]]\nname = \"echo\"\ntarget = \"127.0.0.1:9\"\n",
    )
    .expect("write config");
    let check = Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(["check", "--config"])
        .arg(&config_path)
        .output()
        .expect("run check");
    assert!(!check.status.success());
    let errors: Vec<String> = String::from_utf8_lossy(&check.stderr)
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(
        errors.len() >= 2,
        "the broken file has two errors: {errors:?}"
    );
    daemon.signal("HUP");
    skipped.clear();
    manager.until("RELOADING=1", &mut skipped);
    let ready = manager.until("READY=1", &mut skipped);
    assert!(
        ready.contains("last reload refused, running the previous config"),
        "{ready:?}"
    );
    for e in &errors {
        daemon.wait_log(e);
    }
    daemon.wait_log("reload refused");
    // Still serving on the same port.
    std::net::TcpStream::connect(&addr).expect("the node still accepts links");
    manager.until("WATCHDOG=1", &mut skipped);

    // SIGTERM: STOPPING, then a clean exit.
    daemon.signal("TERM");
    manager.until("STOPPING=1", &mut skipped);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = daemon.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the node did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

#[cfg(target_os = "linux")]
#[test]
fn notifies_an_abstract_socket_and_only_the_watchdog_pid() {
    use std::os::linux::net::SocketAddrExt as _;
    let dir = temp_dir("notify-abstract");
    let config_path = dir.join("server.toml");
    std::fs::write(&config_path, config(&["echo"])).expect("write config");
    let name = format!("wanmux-test-notify-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
    let manager = Manager {
        socket: UnixDatagram::bind_addr(&addr).expect("bind the abstract socket"),
    };
    // WATCHDOG_PID names another process: this one must not ping.
    let mut child = Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(["run", "--config"])
        .arg(&config_path)
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "100000")
        .env("WATCHDOG_PID", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wanmux-server");
    let mut skipped = Vec::new();
    manager.until("READY=1", &mut skipped);
    // Over 1 s (ten watchdog periods) the daemon sends status lines only; SIGTERM's STOPPING
    // ends the wait.
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    manager.until("STOPPING=1", &mut skipped);
    assert!(
        skipped.iter().all(|m| !m.contains("WATCHDOG")),
        "pinged for another pid: {skipped:?}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
