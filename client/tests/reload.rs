//! `wanmux-client run` reloaded with SIGHUP, as `systemctl reload` does it: a map added to the
//! file starts listening, a removed one stops, and a file with a mistake is refused with its
//! error logged while the running maps stay. (Streams running through a reload, hashed, are in
//! `tests/tests/reload.rs`.)

use std::io::{BufRead as _, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn config(node: &str, maps: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[client]\npsk = \"URYnETZVguZE3vaKV8RKJV1GxdNtUebJAabte/+Erp0=\"\n\
         [[node]]\nid = 1\naddr = \"{node}\"\n"
    );
    for (listen, service) in maps {
        text.push_str(&format!(
            "[[map]]\nlisten = \"{listen}\"\nservice = \"{service}\"\n"
        ));
    }
    text
}

/// A fresh directory `name` under the test's temp dir, the path of its `client.toml` (not yet
/// written), and a node address nothing listens on: the maps work without a link.
fn fresh(name: &str) -> (std::path::PathBuf, String) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let node = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .to_string();
    (dir.join("client.toml"), node)
}

struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    /// Waits up to 10 s for a log line with every one of `parts`, after the ones already
    /// returned.
    fn wait_log(&mut self, parts: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if parts.iter().all(|p| line.contains(p)) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line with {parts:?}; seen:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in `listen=ADDR` of a log line.
fn listen_addr(line: &str) -> String {
    line.split("listen=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no listen= in {line}"))
        .to_owned()
}

#[test]
fn sighup_adds_and_removes_maps_and_refuses_a_broken_file() {
    let (path, node) = fresh("reload-client");
    std::fs::write(&path, config(&node, &[("127.0.0.1:0", "a")])).expect("write");
    let mut client = run(&path);
    let a = listen_addr(&client.wait_log(&["mapping", "service=a"]));
    TcpStream::connect(&a).expect("map a accepts");

    // Map b replaces map a.
    std::fs::write(&path, config(&node, &[("127.0.0.1:0", "b")])).expect("write");
    client.hup();
    let b = listen_addr(&client.wait_log(&["map added", "service=b"]));
    let removed = client.wait_log(&["map removed", "service=a"]);
    assert_eq!(listen_addr(&removed), a);
    client.wait_log(&["reload done"]);
    // Nothing but the maps changed: in particular not the control socket, which the file leaves
    // at its default (a reload once compared that default with "none" and warned of a change).
    if let Some(kept) = client
        .seen
        .iter()
        .find(|l| l.contains("keeps until a restart"))
    {
        panic!("a reload that changed only maps warned: {kept}");
    }
    TcpStream::connect(&b).expect("map b accepts");
    assert!(
        TcpStream::connect(&a).is_err(),
        "the removed map {a} still accepts"
    );

    // A broken file: its error is logged as `check` prints it, and map b stays.
    std::fs::write(
        &path,
        config(&node, &[("127.0.0.1:0", "b")]).replace("id = 1", "id = 0"),
    )
    .expect("write");
    let check = Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    let error = String::from_utf8_lossy(&check.stderr).trim().to_owned();
    assert!(error.contains("node[0].id"), "{error}");
    client.hup();
    let logged = client.wait_log(&["ERROR", &error]);
    assert!(logged.ends_with(&error), "{logged}");
    client.wait_log(&["reload refused", "the running config stays"]);
    TcpStream::connect(&b).expect("map b still accepts");

    let ok = Command::new("kill")
        .args(["-TERM", &client.child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = client.child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the client did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}

/// `client.threads` sets the runtime's worker threads, which a reload cannot change: the
/// change is named as waiting for a restart, and the maps keep working.
#[test]
fn threads_are_set_at_start_and_kept_by_a_reload() {
    let (path, node) = fresh("reload-client-threads");
    let with_threads = |n: usize| {
        config(&node, &[("127.0.0.1:0", "a")]).replacen(
            "[client]\n",
            &format!("[client]\nthreads = {n}\n"),
            1,
        )
    };
    // More than the CPUs: never the default (at most one per CPU).
    let n = std::thread::available_parallelism().map_or(1, |n| n.get()) + 1;
    std::fs::write(&path, with_threads(n)).expect("write");
    let mut client = run(&path);
    let started = client.wait_log(&["runtime started"]);
    assert!(started.contains(&format!("threads={n} ")), "{started}");
    let a = listen_addr(&client.wait_log(&["mapping", "service=a"]));

    std::fs::write(&path, with_threads(1)).expect("write");
    client.hup();
    let kept = client.wait_log(&["keeps until a restart"]);
    assert!(kept.contains("client.threads"), "{kept}");
    client.wait_log(&["reload done"]);
    TcpStream::connect(&a).expect("map a still accepts");
}

/// Unset `client.threads` leaves the count to `TOKIO_WORKER_THREADS`: a value that is not one
/// stops the start with an error naming it (tokio itself would panic), and a good one is used.
#[test]
fn a_bad_worker_threads_variable_is_an_error_not_a_panic() {
    let (path, node) = fresh("client-threads-env");
    std::fs::write(&path, config(&node, &[("127.0.0.1:0", "a")])).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
        .args(["run", "--config"])
        .arg(&path)
        .env("TOKIO_WORKER_THREADS", "0")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run wanmux-client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TOKIO_WORKER_THREADS=\"0\" is not a number of threads"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Starts `wanmux-client run` on `path` with its log lines read into a [`Client`].
fn run(path: &Path) -> Client {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
        .args(["run", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wanmux-client");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Client {
        child,
        lines,
        seen: Vec::new(),
    }
}

/// A PKI client's SIGHUP reads its `[tls]` files again: a certificate renewed for the same key
/// is taken for new links; a file that no longer reads refuses the reload with its key and line
/// (the running files stay); a certificate with another key waits for a restart, named in the
/// reload's warning. (That new links present the renewed certificate is in
/// `tests/tests/pki.rs`.)
#[test]
fn sighup_rereads_a_pki_clients_files() {
    use wanmux_core::tls::issue::{issue_files, make_ca, renew_files};
    use wanmux_core::tls::Usage;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("reload-pki-client");
    let _ = std::fs::remove_dir_all(&dir);
    let (ca, out) = (dir.join("ca"), dir.join("out"));
    make_ca(&ca).expect("tls ca");
    issue_files(&ca, "laptop", &out, Usage::Client, 30).expect("tls issue --client");
    // A node address nothing answers on: the client runs without a link.
    let node = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free port");
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        format!(
            "[client]\nhandshake_timeout_ms = 500\n[tls]\nca_file = \"ca/ca.pem\"\n\
             cert_file = \"out/laptop.pem\"\n\
             key_file = \"out/laptop.key\"\n\
             [[node]]\nid = 1\naddr = \"{node}\"\n\
             [[map]]\nlisten = \"127.0.0.1:0\"\nservice = \"a\"\n"
        ),
    )
    .expect("write");
    let mut client = run(&path);
    client.wait_log(&["mapping", "service=a"]);

    // Renewed for the same key, in place: taken.
    renew_files(
        &ca,
        "laptop",
        &out.join("laptop.key"),
        &dir.join("renewed"),
        Usage::Client,
        30,
    )
    .expect("tls issue --key");
    std::fs::rename(dir.join("renewed/laptop.pem"), out.join("laptop.pem")).expect("in place");
    client.hup();
    client.wait_log(&["[tls] files read again"]);
    client.wait_log(&["reload done"]);

    // Not a certificate any more: refused, with the key and line.
    let renewed = std::fs::read(out.join("laptop.pem")).expect("the renewed one");
    std::fs::write(out.join("laptop.pem"), "not a certificate\n").expect("write");
    client.hup();
    let logged = client.wait_log(&["ERROR", "tls.cert_file"]);
    assert!(logged.contains("client.toml:5:"), "{logged}");
    client.wait_log(&["reload refused", "the running config stays"]);

    // Another key: the reload goes on and names what waits for a restart.
    std::fs::write(out.join("laptop.pem"), renewed).expect("write");
    let other = dir.join("other");
    issue_files(&ca, "laptop", &other, Usage::Client, 30).expect("a new key");
    for f in ["laptop.pem", "laptop.key"] {
        std::fs::rename(other.join(f), out.join(f)).expect("in place");
    }
    client.hup();
    let kept = client.wait_log(&["keeps until a restart"]);
    assert!(kept.contains("another key"), "{kept}");
    client.wait_log(&["reload done"]);
    let taken = client
        .seen
        .iter()
        .filter(|l| l.contains("files read again"))
        .count();
    assert_eq!(taken, 1, "a certificate of another key was taken");
}
