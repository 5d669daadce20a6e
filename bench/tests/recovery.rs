//! The `recovery` subcommand at tiny sizes: it completes, every byte verified, and its output
//! is sane. No timing assertions: the machine may be busy.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wanmux-bench");
/// A run here takes a few seconds; this is a hang.
const LIMIT: Duration = Duration::from_secs(120);

/// Runs the binary with `args` (killing it after `LIMIT`); returns exit code, stdout, stderr.
fn run(args: &[&str]) -> (i32, String, String) {
    let mut child = Command::new(BIN)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).unwrap();
        s
    });
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("wanmux-bench {args:?} did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (
        status.code().unwrap_or(-1),
        out.join().unwrap(),
        err.join().unwrap(),
    )
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn recovery_json_through_a_shaped_relay() {
    let (code, out, err) = run(&[
        "recovery",
        "--links",
        "2",
        "-t",
        "0.5",
        "--warmup",
        "0.3",
        "--kill-every",
        "0.2",
        "--rate",
        "100",
        "--delay",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(v["verified"], true);
    assert_eq!(v["links"], 2);
    assert_eq!(f(&v["rate_mbit"]), 100.0);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let dirs = runs[0].as_array().unwrap();
    let names: Vec<&str> = dirs
        .iter()
        .map(|d| d["direction"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["upload", "download"]);
    for d in dirs {
        let what = &d["direction"];
        for phase in [
            &d["no_faults"],
            &d["one_kill"]["phase"],
            &d["kill_every"]["phase"],
        ] {
            assert!(phase["payload_bytes"].as_u64().unwrap() > 0, "{what}");
            // Payload plus framing and encryption went through the relay.
            assert!(
                phase["wire_bytes"].as_u64().unwrap() > phase["payload_bytes"].as_u64().unwrap(),
                "{what}"
            );
            let bps = f(&phase["bits_per_second"]);
            assert!(bps.is_finite() && bps >= 0.0, "{what}");
            // 0.8 s of 100 ms samples.
            assert_eq!(phase["samples"].as_array().unwrap().len(), 8, "{what}");
        }
        assert_eq!(d["no_faults"]["kills"], 0, "{what}");
        assert_eq!(d["one_kill"]["phase"]["kills"], 1, "{what}");
        // Kills at 0.3 and 0.5 s, and at 0.7 s unless the links were all down then.
        let kills = d["kill_every"]["phase"]["kills"].as_u64().unwrap();
        assert!((2..=3).contains(&kills), "{what}: {kills} kills");
        let k = &d["one_kill"];
        assert!((f(&k["kill_at"]) - 0.3).abs() < 0.2, "{what}");
        assert!(k["resent_bytes"].as_u64().is_some(), "{what}");
        assert!(f(&d["kill_every"]["ratio"]) >= 0.0, "{what}");
    }
    assert_eq!(v["summary"].as_array().unwrap().len(), 2);
}

#[test]
fn recovery_text_on_bare_loopback() {
    let (code, out, err) = run(&[
        "recovery",
        "--links",
        "2",
        "-t",
        "0.3",
        "--warmup",
        "0.2",
        "--direction",
        "download",
        "--runs",
        "2",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("unshaped relay on loopback"), "{out}");
    assert!(out.contains("median [min - max] over 2 runs"), "{out}");
    assert!(out.contains("every byte verified: yes"), "{out}");
    assert!(!out.contains("upload"), "{out}");
}

#[test]
fn recovery_rejects_bad_options() {
    let (code, _, err) = run(&["recovery", "--links", "0"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("links 0"), "{err}");
    let (code, _, err) = run(&["recovery", "--rate", "-5"]);
    assert_ne!(code, 0, "{err}");
    let (code, _, _) = run(&["recovery", "--delay", "fast"]);
    assert_eq!(code, 2);
}
