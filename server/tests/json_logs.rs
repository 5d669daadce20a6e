//! `wanmux-server run --log-format json`: every log line on stderr is one JSON object with its
//! time, level, target and fields, for log shippers.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use wanmux_tests::process::Daemon;

#[test]
fn every_log_line_is_a_json_object() {
    let mut child = node_logging_json("json-logs", "info");
    let mut lines = BufReader::new(child.take_stderr().expect("stderr")).lines();
    // The host checks (socket buffers, congestion control) may warn first, depending on the
    // machine; the first line of the daemon's own is its listening line.
    let first = lines
        .by_ref()
        .map(|l| l.expect("utf-8"))
        .find(|l| !l.contains("\"target\":\"wanmux::host\""))
        .expect("a log line");
    let v: serde_json::Value = serde_json::from_str(&first).expect("the line is JSON");
    assert_eq!(v["level"], "INFO", "{first}");
    assert_eq!(v["target"], "wanmux_server", "{first}");
    assert_eq!(v["fields"]["message"], "wanmux-server listening", "{first}");
    assert!(v["fields"]["listen"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    assert!(v["timestamp"].is_string(), "{first}");

    std::thread::sleep(Duration::from_millis(100));
    child.terminate();
    let mut rest = 0;
    for line in lines {
        let line = line.expect("utf-8");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        rest += 1;
    }
    assert!(rest >= 2, "the drain's lines are missing");
    assert!(child.wait().success());
}

/// A `RUST_LOG` that does not parse is a `warn` line naming it, not a quiet `info` default
/// (a trial set `wanmux_server=verbose` and saw nothing change).
#[test]
fn a_rust_log_that_does_not_parse_is_said() {
    let mut child = node_logging_json("bad-rust-log", "wanmux_server=verbose");
    let lines = BufReader::new(child.take_stderr().expect("stderr")).lines();
    let said = lines
        .map(|l| l.expect("utf-8"))
        .take_while(|l| !l.contains("wanmux-server listening"))
        .find(|l| l.contains("RUST_LOG does not parse"))
        .expect("a line about RUST_LOG before the listening line");
    assert!(said.contains("wanmux_server=verbose"), "{said}");
    assert!(said.contains("\"WARN\""), "{said}");
    child.terminate();
}

/// A node process (config in a temp dir `name`) logging JSON to a piped stderr with
/// `RUST_LOG=rust_log`; killed when dropped if the test fails first.
fn node_logging_json(name: &str, rust_log: &str) -> Daemon {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("server.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 1\n\
         psk = \"URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=\"\n\
         [[service]]\nname = \"echo\"\ntarget = \"127.0.0.1:9\"\n",
    )
    .expect("write config");
    Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config)
            .env("RUST_LOG", rust_log)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
}
