//! Config errors name their key and line, through the library the daemons load configs with.
//! (The daemons' `check` commands are tested beside them, in `server/tests/check.rs` and
//! `client/tests/check.rs`.)

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use wanmux_config::{ClientConfig, ConfigErrors, ServerConfig};

/// Whole-test limit.
const LIMIT: Duration = Duration::from_secs(30);

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

/// A listen address that is taken: the daemon fails to start with an error that names the
/// address and the key it came from, not a bare "Address already in use".
#[tokio::test]
async fn a_taken_listen_address_is_named_in_the_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("local addr");
    let target = "127.0.0.1:9".parse().expect("socket address");
    let (mut server, mut client) = wanmux_tests::harness::configs(
        wanmux_tests::harness::Auth::Static { psk: false },
        target,
        1,
    );
    server.listen = addr;
    let err = match wanmux_server::start(server).await {
        Ok(_) => panic!("the server started on a taken address"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(&format!("cannot listen on {addr} (server.listen): ")),
        "{err}"
    );
    client.maps[0].listen = addr;
    let err = match wanmux_client::start(client).await {
        Ok(_) => panic!("the client started on a taken address"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(&format!("cannot listen on {addr} (map[0].listen): ")),
        "{err}"
    );
}
