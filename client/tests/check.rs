//! `wanmux-client check --config FILE`: for a bad config it prints what the library reports,
//! one `FILE:LINE: KEY: message` line per error, and fails; for the example configs it prints
//! `ok`.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;
use wanmux_config::ClientConfig;

/// A mistake on line 4.
const BAD: &str = r#"[client]
psk = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0="
[[node]]
id = 0
addr = "127.0.0.1:4480"
[[map]]
listen = "127.0.0.1:7000"
service = "echo"
"#;

/// Runs `wanmux-client check --config path`, failing the test if it takes over 30 s.
fn check(path: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wanmux-client"));
    cmd.args(["check", "--config"]).arg(path);
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || done.send(cmd.output()));
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("check finishes within 30 s")
        .expect("run wanmux-client check")
}

#[test]
fn check_prints_the_error_with_its_line_and_key() {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-client.toml");
    std::fs::write(&path, BAD).expect("write config");
    let errors = ClientConfig::load(&path).expect_err("a bad config does not load");
    let out = check(&path);
    assert!(!out.status.success(), "check accepted a bad config");
    let printed = String::from_utf8_lossy(&out.stderr);
    assert_eq!(printed, format!("{errors}\n"));
    let prefix = format!("{}:4: node[0].id: ", path.display());
    assert!(
        printed.starts_with(&prefix) && printed.lines().count() == 1,
        "not one line starting with {prefix:?}:\n{printed}"
    );
}

#[test]
fn check_accepts_the_examples() {
    for name in ["client.toml", "client-psk.toml", "client-pki.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(name);
        let out = check(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "check rejected {name}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "{name}");
    }
}
