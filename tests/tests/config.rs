//! Config errors name their key and line: through the library the daemons load configs with,
//! and through the real `wanmux-server check --config` and `wanmux-client check --config`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wanmux_config::{ClientConfig, ConfigErrors, ServerConfig};

/// Whole-test limit for the library tests.
const LIMIT: Duration = Duration::from_secs(30);
/// Whole-test limit when cargo may first have to build both daemons' binaries.
const BUILD_LIMIT: Duration = Duration::from_secs(900);

/// Four mistakes on known lines: lines 4, 8 and 12, and an unknown key on line 13 that only a
/// fixed file reaches (an unknown key stops parsing before the other checks run).
const BAD_SERVER: &str = r#"# A server config with mistakes on known lines.
[server]
listen = "0.0.0.0:4480"
node_id = 0
psk = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0="

[limits]
stream_window = 1

[[service]]
name = "echo"
target = "no port here"
"#;

const BAD_SERVER_KEY: &str = r#"[server]
listen = "0.0.0.0:4480"
node_id = 1
psk = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0="
handshake_timeout = 3

[[service]]
name = "echo"
target = "127.0.0.1:7007"
"#;

const BAD_CLIENT: &str = r#"[client]
psk = "URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0="

[[node]]
id = 1
addr = "127.0.0.1:4480"

[[map]]
listen = "127.0.0.1:99999"
service = "echo"
"#;

/// The `FILE:LINE: KEY:` prefixes each bad file must produce, one per error.
fn expected(file: &str) -> &'static [(usize, &'static str)] {
    match file {
        "bad-server.toml" => &[
            (4, "server.node_id"),
            (8, "limits.stream_window"),
            (12, "service[0].target"),
        ],
        "bad-server-key.toml" => &[(5, "server.handshake_timeout")],
        "bad-client.toml" => &[(9, "map[0].listen")],
        _ => unreachable!("unknown test file"),
    }
}

/// A fresh directory for this test's files.
fn temp_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wanmux-tests-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// Checks that `errors`, as `check` prints them, name each expected key with its line.
fn assert_names_keys_and_lines(path: &Path, errors: &ConfigErrors) {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("file name");
    let want = expected(name);
    let got: Vec<(Option<usize>, &str)> = errors.iter().map(|e| (e.line, e.key.as_str())).collect();
    let want_pairs: Vec<(Option<usize>, &str)> =
        want.iter().map(|&(line, key)| (Some(line), key)).collect();
    assert_eq!(got, want_pairs, "errors of {name}: {errors}");
    assert_printed(&errors.to_string(), path, want);
}

/// Checks printed `check` output: one `FILE:LINE: KEY: message` line per expected error.
fn assert_printed(output: &str, path: &Path, want: &[(usize, &str)]) {
    for &(line, key) in want {
        let prefix = format!("{}:{line}: {key}: ", path.display());
        assert!(
            output.lines().any(|l| l.starts_with(&prefix)),
            "no line starting with {prefix:?} in:\n{output}"
        );
    }
    assert_eq!(
        output.lines().count(),
        want.len(),
        "one line per error expected:\n{output}"
    );
}

/// Runs `test` on its own thread and fails if it takes longer than `limit`, so a hang fails
/// the test instead of blocking the run.
fn within(limit: Duration, test: impl FnOnce() + Send + 'static) {
    let (done, finished) = mpsc::channel();
    let thread = std::thread::spawn(move || {
        test();
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => thread.join().expect("test thread"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match thread.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the thread reports success before it ends"),
        },
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("test did not finish within {limit:?}"),
    }
}

/// Runs `cmd` to its end; kills it and fails the test if that takes longer than `limit`.
fn run_until(cmd: &mut Command, limit: Duration) -> ExitStatus {
    let mut child = cmd.spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn server_config_errors_name_key_and_line() {
    within(LIMIT, || {
        let dir = temp_dir("server-lib");
        for (name, text) in [
            ("bad-server.toml", BAD_SERVER),
            ("bad-server-key.toml", BAD_SERVER_KEY),
        ] {
            let path = write(&dir, name, text);
            let errors = ServerConfig::load(&path).expect_err("a bad config must not load");
            assert_names_keys_and_lines(&path, &errors);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

#[test]
fn client_config_errors_name_key_and_line() {
    within(LIMIT, || {
        let dir = temp_dir("client-lib");
        let path = write(&dir, "bad-client.toml", BAD_CLIENT);
        let errors = ClientConfig::load(&path).expect_err("a bad config must not load");
        assert_names_keys_and_lines(&path, &errors);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// Variables cargo sets for a running test (besides `CARGO_PKG_*`), not for a build.
const TEST_ONLY_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// Builds `bin` of `package` into the target directory this test runs from and returns its
/// path. Cargo does not build other packages' binaries for a test, and `CARGO_BIN_EXE_*` exists
/// only for a package's own binaries, so this runs cargo itself (fast when it is up to date).
fn build_binary(package: &str, bin: &str) -> PathBuf {
    // <target>/<profile dir>/deps/<this test>
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable in <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("target dir");
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(other) => other,
        None => panic!("unexpected profile dir {}", profile_dir.display()),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo runs this test with the variables of this package set. Build scripts that watch
    // them (ring's watches CARGO_MANIFEST_DIR) would see a change and rebuild, for this build
    // and again for the next `cargo test`.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_") || TEST_ONLY_VARS.contains(&key) {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workspace)
        .args(["build", "--quiet", "--package", package, "--bin", bin])
        .arg("--profile")
        .arg(profile)
        .arg("--target-dir")
        .arg(target_dir)
        .stdout(Stdio::null());
    let status = run_until(&mut cmd, BUILD_LIMIT);
    assert!(status.success(), "cargo build of {bin} failed");
    let path = profile_dir.join(bin);
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// Runs `bin check --config path` and returns its exit success and stderr.
fn run_check(bin: &Path, path: &Path) -> (bool, String) {
    // stderr goes to a file rather than a pipe, so waiting with a deadline cannot deadlock on
    // a full pipe.
    let err_path = path.with_extension("stderr");
    let err_file = std::fs::File::create(&err_path).expect("create stderr file");
    let status = run_until(
        Command::new(bin)
            .args(["check", "--config"])
            .arg(path)
            .stdout(Stdio::null())
            .stderr(err_file),
        Duration::from_secs(30),
    );
    let stderr = std::fs::read_to_string(&err_path).expect("read stderr");
    (status.success(), stderr)
}

#[test]
fn check_commands_print_key_and_line() {
    within(BUILD_LIMIT, || {
        let dir = temp_dir("check-bin");
        let server = build_binary("wanmux-server", "wanmux-server");
        for (name, text) in [
            ("bad-server.toml", BAD_SERVER),
            ("bad-server-key.toml", BAD_SERVER_KEY),
        ] {
            let path = write(&dir, name, text);
            let (ok, stderr) = run_check(&server, &path);
            assert!(!ok, "wanmux-server check accepted {name}");
            assert_printed(&stderr, &path, expected(name));
        }
        let client = build_binary("wanmux-client", "wanmux-client");
        let path = write(&dir, "bad-client.toml", BAD_CLIENT);
        let (ok, stderr) = run_check(&client, &path);
        assert!(!ok, "wanmux-client check accepted a bad config");
        assert_printed(&stderr, &path, expected("bad-client.toml"));
        let _ = std::fs::remove_dir_all(&dir);
    });
}
