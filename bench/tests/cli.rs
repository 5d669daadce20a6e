//! Tests of the `wanmux-bench` binary: port 0 servers, JSON output, exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;

const BIN: &str = env!("CARGO_BIN_EXE_wanmux-bench");

/// A `wanmux-bench server` on port 0, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new(BIN)
            .args(["server", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect(&line)
            .to_string();
        Server { child, addr }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn client_json_and_text() {
    let server = Server::start();
    let (code, out, err) = run(&[
        "client",
        "--connect",
        &server.addr,
        "--bytes",
        "1M",
        "-P",
        "2",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(v["sent_bytes"], 1 << 20);
    assert_eq!(v["received_bytes"], 1 << 20);
    assert_eq!(v["streams"], 2);
    assert_eq!(v["reverse"], false);
    assert_eq!(v["verified"], true);
    assert!(v["seconds"].as_f64().unwrap() > 0.0);
    assert!(v["bits_per_second"].as_f64().unwrap() > 0.0);

    let (code, out, err) = run(&[
        "client",
        "--connect",
        &server.addr,
        "-t",
        "1.2",
        "-R",
        "-i",
        "0.5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.lines()
            .filter(|l| l.contains("Mbit/s") && l.starts_with('['))
            .count()
            >= 2
    );
    assert!(
        out.contains("download (server -> client), 1 stream:"),
        "{out}"
    );

    let (code, out, err) = run(&[
        "client",
        "--connect",
        &server.addr,
        "--bytes",
        "1M",
        "--bidir",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    for (half, reverse) in [("upload", false), ("download", true)] {
        assert_eq!(v[half]["received_bytes"], 1 << 20, "{out}");
        assert_eq!(v[half]["reverse"], reverse, "{out}");
        assert_eq!(v[half]["verified"], true, "{out}");
    }
    let (code, out, err) = run(&[
        "client",
        "--connect",
        &server.addr,
        "-t",
        "0.6",
        "--bidir",
        "-i",
        "0.5",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|l| l.starts_with("up ")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("down ")), "{out}");
    let (code, _, err) = run(&["client", "--connect", &server.addr, "--bidir", "-R"]);
    assert_eq!(code, 2, "--bidir with -R is a usage error: {err}");

    let (code, out, err) = run(&["rr", "--connect", &server.addr, "-n", "100", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(v["count"], 100);
    assert!(v["p999_us"].as_f64().unwrap() >= v["p50_us"].as_f64().unwrap());

    let (code, _, err) = run(&[
        "client",
        "--connect",
        &server.addr,
        "-t",
        "1",
        "--bytes",
        "5",
    ]);
    assert_eq!(code, 2, "conflicting options are a usage error: {err}");
}

#[test]
fn verification_failure_exits_3() {
    let server = Server::start();
    // A one-connection relay that flips one payload byte on the way to the server.
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let target = server.addr.clone();
    thread::spawn(move || {
        let (client, _) = relay.accept().unwrap();
        let upstream = TcpStream::connect(target).unwrap();
        let (mut c2, mut u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
        thread::spawn(move || {
            let _ = std::io::copy(&mut u2, &mut c2);
        });
        let (mut c, mut u) = (client, upstream);
        let mut buf = vec![0u8; 65536];
        let mut pos = 0usize;
        loop {
            let n = match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if (pos..pos + n).contains(&100_000) {
                buf[100_000 - pos] ^= 0x40;
            }
            pos += n;
            if u.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = u.shutdown(std::net::Shutdown::Write);
    });
    let (code, out, err) = run(&[
        "client",
        "--connect",
        &relay_addr,
        "--bytes",
        "4M",
        "--json",
    ]);
    assert_eq!(code, 3, "stdout {out} stderr {err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("DATA VERIFICATION FAILED (detected by server)"),
        "{err}"
    );
}
