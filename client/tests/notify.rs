//! `wanmux-client run` under a service manager, played by this test: with its only node
//! unreachable, the client still tells the manager it is ready once the first dial failed, and
//! that failure is a `warn` line saying what to check.

use std::io::{BufRead as _, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn ready_after_a_failed_first_dial_whose_reason_is_logged() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("notify-client");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let config = dir.join("client.toml");
    std::fs::write(
        &config,
        format!(
            "[client]\npsk = \"URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=\"\n\
             [[node]]\nid = 1\naddr = \"{closed}\"\n\
             [[map]]\nlisten = \"127.0.0.1:0\"\nservice = \"echo\"\n"
        ),
    )
    .expect("write config");
    let socket_path = dir.join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wanmux-client");
    let (tx, lines) = mpsc::channel();
    let pipe = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    let mut buf = [0u8; 4096];
    let n = manager.recv(&mut buf).expect("a notification within 20 s");
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.lines().any(|l| l == "READY=1"), "{first:?}");
    assert!(first.contains("STATUS=links up 0"), "{first:?}");

    // The reason was logged before READY was sent.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let warned = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) if l.contains("WARN") && l.contains("cannot open a link to the node") => break l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no warn line about the dial; seen:\n{}", seen.join("\n")),
        }
    };
    assert!(
        warned.contains("connection refused") && warned.contains(&closed.to_string()),
        "{warned}"
    );
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    // Status lines may come first.
    loop {
        let n = manager.recv(&mut buf).expect("STOPPING within 20 s");
        let msg = String::from_utf8_lossy(&buf[..n]);
        if msg.starts_with("STOPPING=1") {
            break;
        }
        assert!(msg.starts_with("STATUS="), "{msg:?}");
    }
    assert!(child.wait().expect("exit").success());
}
