//! `status --watch | head`: once the reader of its output goes away, `status` ends quietly with
//! success, as a Unix tool does, rather than panicking with "failed printing to stdout: Broken
//! pipe" (a trial's finding).

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-pipe");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // A node address nothing listens on: the daemon runs and answers `status` without a link.
    let node = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    let socket = dir.join("client.sock");
    let config = dir.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "[client]\npsk = \"URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=\"\n\
             [[node]]\nid = 1\naddr = \"{node}\"\n\
             [[map]]\nlisten = \"127.0.0.1:0\"\nservice = \"web\"\n\
             [control]\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .expect("config written");
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the daemon starts"),
    );
    // The file appears at bind(), a moment before the daemon listens on it: wait for an answer.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut status = Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
        .args(["status", "--watch", "--socket"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("status starts");
    // Read its first screen, then go away, as `head` does.
    let mut stdout = status.stdout.take().expect("piped");
    let mut first = [0u8; 64];
    if let Err(e) = stdout.read_exact(&mut first) {
        let _ = status.wait();
        let mut stderr = String::new();
        let _ = status
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut stderr);
        panic!("the first screen: {e}; status said: {stderr}");
    }
    drop(stdout);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = status.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "status runs on into a closed pipe"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    status
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .expect("stderr");
    drop(daemon);
    assert!(exit.success(), "{exit}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The daemon, killed when the test ends, however it ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
