//! `wanmux-server log`: a running node's log filter is shown and changed on its control socket,
//! without a restart: its log shows what the new filter lets through, `status` shows the
//! filter, a filter that does not parse is refused and the running one stays, and `--reset`
//! puts back the one it started with.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wanmux_tests::process::Daemon;

fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wanmux-server")
}

/// The node's log lines (JSON), gathered by a thread as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<serde_json::Value>>>);

impl Lines {
    /// Waits up to 10 s for a line that `matches`, and returns it.
    fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(v) = self.0.lock().unwrap().iter().find(|v| matches(v)) {
                return v.clone();
            }
            assert!(Instant::now() < deadline, "no log line: {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, matches: impl Fn(&serde_json::Value) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|v| matches(v)).count()
    }
}

/// A debug line of the node: a connection it refused before its handshake.
fn refusal_at_debug(v: &serde_json::Value) -> bool {
    v["level"] == "DEBUG"
        && v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("wanmux"))
}

#[test]
fn the_log_filter_changes_while_the_node_runs() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("log-filter");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("node.sock");
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 1\n\
             psk = \"URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=\"\n\
             [[service]]\nname = \"echo\"\ntarget = \"127.0.0.1:9\"\n\
             [control]\nsocket = \"{}\"\n",
            sock.display()
        ),
    )
    .expect("write config");
    let mut node = Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let lines = Lines::default();
    let stderr = node.take_stderr().expect("stderr");
    let gathered = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            gathered.0.lock().unwrap().push(v);
        }
    });
    let listening = lines.wait_for("listening", |v| {
        v["fields"]["message"] == "wanmux-server listening"
    });
    let addr = listening["fields"]["listen"].as_str().unwrap().to_string();
    let s = sock.to_str().unwrap();
    let log = |args: &[&str]| {
        let mut all = vec!["log", "--socket", s];
        all.extend_from_slice(args);
        server(&all)
    };
    // The socket may come a moment after the listening line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let out = log(&[]);
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(shown.status.success(), "{shown:?}");
    assert_eq!(String::from_utf8_lossy(&shown.stdout).trim(), "info");

    // At info, a connection closed before its handshake is a debug line: not written.
    let knock = || drop(std::net::TcpStream::connect(&addr).expect("connect to the node"));
    knock();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines.count(refusal_at_debug), 0);

    // A filter that does not parse: refused, with the parser's reason; info stays.
    let bad = log(&["wanmux_server=loud"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("not a log filter"), "{err}");
    assert_eq!(String::from_utf8_lossy(&log(&[]).stdout).trim(), "info");

    // debug: the change is logged, status shows it, and the next refusal is written.
    let set = log(&["debug"]);
    assert!(set.status.success(), "{set:?}");
    assert_eq!(String::from_utf8_lossy(&set.stdout).trim(), "debug");
    let changed = lines.wait_for("the change", |v| {
        v["level"] == "WARN" && v["fields"]["message"] == "log filter set on the control socket"
    });
    assert_eq!(changed["fields"]["was"], "info", "{changed}");
    assert_eq!(changed["fields"]["now"], "debug", "{changed}");
    let status = server(&["status", "--json", "--socket", s]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["log_filter"], "debug");
    knock();
    lines.wait_for("a debug line", refusal_at_debug);

    // --reset: info again, and debug lines stop.
    let reset = log(&["--reset"]);
    assert!(reset.status.success(), "{reset:?}");
    assert_eq!(String::from_utf8_lossy(&reset.stdout).trim(), "info");
    lines.wait_for("the reset", |v| {
        v["fields"]["message"] == "log filter reset on the control socket"
    });
    let before = lines.count(refusal_at_debug);
    knock();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines.count(refusal_at_debug), before);

    node.terminate();
    assert!(node.wait().success());
}
