//! `wanmux-server status` as an operator runs it: against a running node, found by its config
//! file (`control.socket`, or the file's default socket under /run/wanmux), as text and JSON;
//! and a clear error when nothing answers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use wanmux_tests::process::Daemon;

const PSK: &str = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=";

fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run wanmux-server")
}

/// Runs a node on `config` until dropped.
fn start(config: &Path) -> Daemon {
    Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

fn write_config(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 7\npsk = \"{PSK}\"\n\
             [[service]]\nname = \"echo\"\ntarget = \"127.0.0.1:9\"\n{extra}"
        ),
    )
    .expect("write config");
    config
}

/// `status --config FILE --json` until the node answers (it is starting).
fn status_json(config: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = server(&["status", "--json", "--config", config.to_str().unwrap()]);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("status --json prints JSON");
        }
        assert!(
            Instant::now() < deadline,
            "status never answered: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_finds_the_node_by_its_config_and_prints_text_or_json() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("node.sock");
    let config = write_config(
        &dir,
        "node.toml",
        &format!("[control]\nsocket = \"{}\"\n", sock.display()),
    );

    // Nothing runs yet: an error that names the socket.
    let out = server(&["status", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no answer on the control socket") && err.contains("node.sock"),
        "{err}"
    );

    let node = start(&config);
    let v = status_json(&config);
    assert_eq!(v["daemon"], "server");
    assert_eq!(v["sessions"].as_array().map(Vec::len), Some(0));
    let text = server(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(text.status.success());
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("wanmux-server "), "{text}");
    assert!(text.contains("0 sessions, 0 links, 0 streams"), "{text}");
    drop(node);
}

/// Without `control.socket` a node takes its config file's default socket under /run/wanmux,
/// where `status --config FILE` looks. (Where this user may not create /run/wanmux the node runs
/// without one and says so; there is nothing to ask then, and the test says why it stops.)
#[test]
fn without_control_socket_the_default_under_run_is_used() {
    if std::fs::create_dir_all(wanmux_core::control::RUN_DIR).is_err() {
        eprintln!(
            "skipped: this user cannot create {}",
            wanmux_core::control::RUN_DIR
        );
        return;
    }
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-default");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = write_config(&dir, "default-sock.toml", "");
    let node = start(&config);
    let v = status_json(&config);
    assert_eq!(v["daemon"], "server");
    let socket = wanmux_core::control::find_default("wanmux-server", &config)
        .expect("the default socket exists");
    // A node that stops takes its socket file with it.
    node.terminate();
    let deadline = Instant::now() + Duration::from_secs(10);
    while socket.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "{} left behind", socket.display());
    drop(node);
}

/// `status --json` (and so the metrics, rendered from the same status) counts the reloads that
/// SIGHUP applied and refused, and says when the last one was refused.
#[test]
fn reloads_are_counted() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-reloads");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sock = dir.join("node.sock");
    let control = format!("[control]\nsocket = \"{}\"\n", sock.display());
    let config = write_config(&dir, "node.toml", &control);
    let node = start(&config);
    let v = status_json(&config);
    assert_eq!(
        v["reloads"],
        serde_json::json!({"applied": 0, "refused": 0, "last_refused": false, "pending_restart": []})
    );
    let hangup = || {
        let sent = Command::new("kill")
            .args(["-HUP", &node.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success());
    };
    // Waits until the reloads reach `want` (a reload runs in the daemon after the signal).
    let reloads = |want: serde_json::Value| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The socket itself: the config may not load any more.
            let out = server(&["status", "--json", "--socket", sock.to_str().unwrap()]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
            if v["reloads"] == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reloads {} never {want}",
                v["reloads"]
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // An added service: applied.
    write_config(
        &dir,
        "node.toml",
        &format!("{control}[[service]]\nname = \"web\"\ntarget = \"127.0.0.1:9\"\n"),
    );
    hangup();
    reloads(
        serde_json::json!({"applied": 1, "refused": 0, "last_refused": false, "pending_restart": []}),
    );
    // A setting only a restart changes: applied, and said to wait for the restart.
    let with_threads = std::fs::read_to_string(&config)
        .expect("read config")
        .replace("node_id = 7", "node_id = 7\nthreads = 1");
    std::fs::write(&config, with_threads).expect("write config");
    hangup();
    reloads(
        serde_json::json!({"applied": 2, "refused": 0, "last_refused": false, "pending_restart": ["server.threads"]}),
    );
    let out = server(&["status", "--socket", sock.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("waiting for a restart: server.threads"),
        "{text}"
    );
    // A file that does not load: refused, the node runs on.
    std::fs::write(&config, format!("{control}[server]\nlisten = 1\n")).expect("write config");
    hangup();
    reloads(
        serde_json::json!({"applied": 2, "refused": 1, "last_refused": true, "pending_restart": ["server.threads"]}),
    );
    let out = server(&["status", "--socket", sock.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("reloads: 2 applied, 1 refused (the last one"),
        "{text}"
    );
    // `status --config` still finds it by the file's `control.socket`, and says why it asks.
    let out = server(&["status", "--config", config.to_str().unwrap()]);
    let (text, errors) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{errors}");
    assert!(text.contains("1 refused"), "{text}");
    assert!(
        errors.contains("server.listen") && errors.contains("does not load; asking the daemon at"),
        "{errors}"
    );
    drop(node);
}
