//! `wanmux-server tls` as an operator runs it: a CA, a node certificate and two client
//! certificates, one of them revoked with `tls revoke`; `check` takes the node's config with the
//! list in `crl_files`, and warns (key and line) when the list's next update is near.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn server(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
        .args(args)
        .output()
        .expect("run wanmux-server")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout.clone()).expect("utf-8")
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

const NODE: &str = "[server]\nlisten = \"127.0.0.1:0\"\nnode_id = 1\n\n\
[tls]\ncert_file = \"out/127.0.0.1.pem\"\nkey_file = \"out/127.0.0.1.key\"\n\
client_ca_file = \"ca/ca.pem\"\ncrl_files = [\"clients.crl\"]\n\n\
[[service]]\nname = \"echo\"\ntarget = \"127.0.0.1:7\"\n";

#[test]
fn tls_revoke_makes_a_list_check_takes_and_warns_before_its_next_update() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("tls-cli");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (ca, out, crl): (PathBuf, PathBuf, PathBuf) =
        (dir.join("ca"), dir.join("out"), dir.join("clients.crl"));
    ok(&server(&["tls", "ca", "--out", s(&ca)]));
    ok(&server(&[
        "tls",
        "issue",
        "--ca",
        s(&ca),
        "--name",
        "127.0.0.1",
        "--out",
        s(&out),
    ]));
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let said = ok(&server(&[
            "tls",
            "issue",
            "--ca",
            s(&ca),
            "--name",
            name,
            "--client",
            "--out",
            s(&out),
        ]));
        let id = said
            .lines()
            .find_map(|l| l.strip_prefix("identity: \""))
            .and_then(|l| l.split('"').next())
            .expect("the identity is printed")
            .to_owned();
        ids.push(id);
    }

    let said = ok(&server(&[
        "tls",
        "revoke",
        "--ca",
        s(&ca),
        "--crl",
        s(&crl),
        "--cert",
        s(&out.join("b.pem")),
    ]));
    assert!(said.starts_with("revoked: serial "), "{said}");
    assert!(said.contains(&ids[1]) && !said.contains(&ids[0]), "{said}");
    assert!(
        said.contains("CRL number 1, 1 certificate revoked"),
        "{said}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&crl)
            .expect("the list")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    let config = dir.join("node.toml");
    std::fs::write(&config, NODE).expect("write config");
    let check = || server(&["check", "--config", s(&config)]);
    let quiet = check();
    assert_eq!(ok(&quiet), "ok\n");
    assert_eq!(String::from_utf8_lossy(&quiet.stderr), "");

    // Signed again (no --cert) with a next update 3 days away: still b only, the next
    // number, and `check` warns with the key and line.
    let said = ok(&server(&[
        "tls",
        "revoke",
        "--ca",
        s(&ca),
        "--crl",
        s(&crl),
        "--next-update",
        "3",
    ]));
    assert!(
        said.contains("CRL number 2, 1 certificate revoked"),
        "{said}"
    );
    let warned = check();
    assert_eq!(ok(&warned), "ok\n");
    let err = String::from_utf8_lossy(&warned.stderr);
    let prefix = format!("warning: {}:9: tls.crl_files[0]: ", config.display());
    assert!(
        err.starts_with(&prefix) && err.contains("due to be replaced") && err.lines().count() == 1,
        "not one warning starting with {prefix:?}:\n{err}"
    );

    // The node's certificate is no client's: refused, the list untouched, exit 1.
    let before = std::fs::read(&crl).expect("the list");
    let refused = server(&[
        "tls",
        "revoke",
        "--ca",
        s(&ca),
        "--crl",
        s(&crl),
        "--cert",
        s(&out.join("127.0.0.1.pem")),
    ]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.starts_with("tls: ") && err.contains("127.0.0.1.pem"),
        "{err}"
    );
    assert_eq!(std::fs::read(&crl).expect("the list"), before);

    let help = ok(&server(&["tls", "revoke", "--help"]));
    for word in ["--ca", "--crl", "--cert", "--next-update", "[default: 30]"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}
