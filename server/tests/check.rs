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

/// `run` on a config that does not load prints its errors and exits with `EX_CONFIG` (78),
/// which the units name in `RestartPreventExitStatus=`: systemd does not restart it in a loop
/// until its restart limit (a trial's remark on the units).
#[test]
fn run_on_a_bad_config_exits_with_ex_config() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-server-run.toml");
    std::fs::write(&path, BAD).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run wanmux-server run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("node_id"), "{stderr}");
    for unit in [
        "wanmux-server.service",
        "wanmux-server@.service",
        "wanmux-client.service",
        "wanmux-client@.service",
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dist/systemd")
            .join(unit);
        let text = std::fs::read_to_string(&path).expect("read unit");
        assert!(
            text.contains(&format!(
                "RestartPreventExitStatus={}",
                wanmux_core::daemon::EXIT_CONFIG
            )),
            "{unit}"
        );
    }
}
