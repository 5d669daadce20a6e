//! `wanmux-server check --config FILE`: for a bad config it prints what the library reports,
//! one `FILE:LINE: KEY: message` line per error, and fails; for the example configs it prints
//! `ok`.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;
use wanmux_config::ServerConfig;

/// Mistakes on lines 3 and 7.
const BAD: &str = r#"[server]
listen = "0.0.0.0:4480"
node_id = 0
psk = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0="

[limits]
stream_window = 1

[[service]]
name = "echo"
target = "127.0.0.1:7007"
"#;

/// Runs `wanmux-server check --config path`, failing the test if it takes over 30 s.
fn check(path: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wanmux-server"));
    cmd.args(["check", "--config"]).arg(path);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(cmd.output()));
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("check finishes within 30 s")
        .expect("run wanmux-server check")
}

#[test]
fn check_prints_every_error_with_its_line_and_key() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-server.toml");
    std::fs::write(&path, BAD).expect("write config");
    let errors = ServerConfig::load(&path).expect_err("a bad config does not load");
    let out = check(&path);
    assert!(!out.status.success(), "check accepted a bad config");
    let printed = String::from_utf8_lossy(&out.stderr);
    assert_eq!(printed, format!("{errors}\n"));
    let lines: Vec<&str> = printed.lines().collect();
    let want = [(3, "server.node_id"), (7, "limits.stream_window")];
    assert_eq!(lines.len(), want.len(), "one line per error:\n{printed}");
    for (text, (line, key)) in lines.iter().zip(want) {
        let prefix = format!("{}:{line}: {key}: ", path.display());
        assert!(
            text.starts_with(&prefix),
            "{text:?} does not start with {prefix:?}"
        );
    }
}

#[test]
fn check_accepts_the_examples() {
    for name in [
        "server.toml",
        "server-psk.toml",
        "server-pki.toml",
        "server-cluster-1.toml",
        "server-cluster-2.toml",
        "server-cluster-3.toml",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "check rejected {name}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{name}");
    }
}
