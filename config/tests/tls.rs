//! `[tls]` (PKI mode) in both configs: the files are read and checked when the config loads, so
//! `check` names the key and line of a file that is missing, a key that is not the
//! certificate's, a chain of another CA or an expired certificate (errors), and of a certificate
//! that expires within 30 days (a warning); the rules that tie `[tls]` to the other keys
//! (`sha256:` entries, `node.tls_name`, QUIC links only, no Noise keys beside it on a client).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use wanmux_config::{ClientAuth, ClientConfig, ConfigErrors, ServerAuth, ServerConfig};
use wanmux_core::tls::issue::{Ca, Issued};
use wanmux_core::tls::{spki_text, Usage};

const DAY: Duration = Duration::from_secs(86_400);

/// A fresh directory for one test's files.
fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wanmux-config-tls-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn ca() -> Ca {
    Ca::generate(SystemTime::now() + 3650 * DAY).expect("a CA")
}

/// A certificate of `ca` valid from yesterday for `days` days more (negative: expired).
fn issue(ca: &Ca, name: &str, usage: Usage, days: i64) -> Issued {
    let now = SystemTime::now();
    let to = if days >= 0 {
        now + DAY * days as u32
    } else {
        now - DAY * (-days) as u32
    };
    ca.issue(name, usage, now - 30 * DAY, to)
        .expect("a certificate")
}

/// Writes `text` to `dir/name`; a private key (`.key`) only its owner may read, as a key file
/// should be.
fn write(dir: &Path, name: &str, text: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    if name.ends_with(".key") {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

/// Writes `ca.pem`, `me.pem` and `me.key` (of `me`) to `dir`.
fn files(dir: &Path, ca: &Ca, me: &Issued) {
    write(dir, "ca.pem", &ca.cert_pem());
    write(dir, "me.pem", &me.cert_pem);
    write(dir, "me.key", &me.key_pem);
}

const SERVICE: &str = "[[service]]\nname = \"web\"\ntarget = \"127.0.0.1:80\"\n";
const NODE_TLS: &str =
    "[tls]\ncert_file = \"me.pem\"\nkey_file = \"me.key\"\nclient_ca_file = \"ca.pem\"\n";
const CLIENT_TLS: &str =
    "[tls]\nca_file = \"ca.pem\"\ncert_file = \"me.pem\"\nkey_file = \"me.key\"\n";
const MAP: &str = "[[map]]\nlisten = \"127.0.0.1:9000\"\nservice = \"web\"\n";

fn server(dir: &Path, text: &str) -> Result<ServerConfig, ConfigErrors> {
    ServerConfig::parse(text, dir, "node.toml")
}

fn client(dir: &Path, text: &str) -> Result<ClientConfig, ConfigErrors> {
    ClientConfig::parse(text, dir, "client.toml")
}

/// The one error of `r`, as (key, line, message).
fn error<T: std::fmt::Debug>(r: Result<T, ConfigErrors>) -> Vec<(String, Option<usize>, String)> {
    r.expect_err("the config must not load")
        .errors
        .into_iter()
        .map(|e| (e.key, e.line, e.message))
        .collect()
}

#[test]
fn a_pki_node_and_client_load_and_a_certificate_near_its_end_is_a_warning() {
    let d = dir("ok");
    let ca = ca();
    files(&d, &ca, &issue(&ca, "node.example", Usage::Node, 365));
    let listed = issue(&ca, "laptop", Usage::Client, 365);
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:4443\"\nnode_id = 1\nallowed_clients = [\"{}\"]\n{NODE_TLS}{SERVICE}",
        spki_text(&listed.spki)
    );
    let s = server(&d, &text).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(s.auth, ServerAuth::PkiOnly), "{:?}", s.auth);
    let tls = s.tls.expect("[tls]");
    assert_eq!(tls.allowed_certs.len(), 1);
    assert_eq!(
        tls.allowed_certs.iter().next().unwrap().as_bytes(),
        &listed.spki
    );
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);

    // A private key other users can read: a warning naming the key, as for Noise keys.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let key = d.join("me.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let s = server(&d, &text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        let w = &s.warnings[0];
        assert!(
            w.starts_with("node.toml:7: tls.key_file:") && w.contains("mode 644"),
            "{w}"
        );
    }

    let c = dir("ok-client");
    files(&c, &ca, &issue(&ca, "laptop", Usage::Client, 20));
    let text = format!("[[node]]\nid = 1\naddr = \"node.example:4443\"\n{CLIENT_TLS}{MAP}");
    let cfg = client(&c, &text).unwrap_or_else(|e| panic!("{e}"));
    let ClientAuth::Pki { nodes, .. } = &cfg.auth else {
        panic!("PKI mode: {:?}", cfg.auth)
    };
    assert_eq!(
        nodes[0].tls_name, "node.example",
        "default: the host of addr"
    );
    assert_eq!(
        cfg.transport,
        wanmux_config::LinkTransport::Quic,
        "QUIC by default"
    );
    // Expires in 20 days: a warning at tls.cert_file, line 5, with the date.
    assert_eq!(cfg.warnings.len(), 1, "{:?}", cfg.warnings);
    let w = &cfg.warnings[0];
    assert!(
        w.starts_with("client.toml:6: tls.cert_file:") && w.contains("within 30 days"),
        "{w}"
    );
}

#[test]
fn bad_files_are_errors_naming_key_and_line() {
    let d = dir("bad");
    let (ca, other) = (ca(), ca());
    let node = issue(&ca, "node.example", Usage::Node, 365);
    let head = "[server]\nlisten = \"0.0.0.0:4443\"\nnode_id = 1\n";

    // A missing file.
    files(&d, &ca, &node);
    let text = format!("{head}{}{SERVICE}", NODE_TLS.replace("me.pem", "nope.pem"));
    let errs = error(server(&d, &text));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].0.as_str(), errs[0].1), ("tls.cert_file", Some(5)));
    assert!(errs[0].2.contains("nope.pem"), "{}", errs[0].2);

    // A key that is not the certificate's.
    write(&d, "other.key", &issue(&ca, "x", Usage::Node, 365).key_pem);
    let text = format!("{head}{}{SERVICE}", NODE_TLS.replace("me.key", "other.key"));
    let errs = error(server(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("tls.key_file", Some(6)),
        "{errs:?}"
    );
    assert!(errs[0].2.contains("not the key"), "{}", errs[0].2);

    // A FIFO as the key: an error at once, not a wait for a writer.
    let fifo = d.join("fifo.key");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let text = format!("{head}{}{SERVICE}", NODE_TLS.replace("me.key", "fifo.key"));
    let errs = error(server(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("tls.key_file", Some(6)),
        "{errs:?}"
    );
    assert!(errs[0].2.contains("not a regular file"), "{}", errs[0].2);

    // An expired certificate.
    files(&d, &ca, &issue(&ca, "node.example", Usage::Node, -2));
    let text = format!("{head}{NODE_TLS}{SERVICE}");
    let errs = error(server(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("tls.cert_file", Some(5)),
        "{errs:?}"
    );
    assert!(errs[0].2.contains("expired on"), "{}", errs[0].2);

    // Not a PEM file at all.
    write(&d, "ca.pem", "not a certificate\n");
    files_except_ca(&d, &node);
    let errs = error(server(&d, &format!("{head}{NODE_TLS}{SERVICE}")));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("tls.client_ca_file", Some(7)),
        "{errs:?}"
    );

    // A chain of another CA than the file's: a warning (the other ends may trust that CA).
    files(&d, &other, &node);
    let s = server(&d, &format!("{head}{NODE_TLS}{SERVICE}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("tls.cert_file") && w.contains("does not lead")),
        "{:?}",
        s.warnings
    );
}

fn files_except_ca(dir: &Path, me: &Issued) {
    write(dir, "me.pem", &me.cert_pem);
    write(dir, "me.key", &me.key_pem);
}

#[test]
fn tls_keys_in_the_wrong_place_are_errors() {
    let d = dir("rules");
    let ca = ca();
    files(&d, &ca, &issue(&ca, "laptop", Usage::Client, 365));
    let id = spki_text(&[3; 32]);

    // A sha256: entry without [tls].
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:4443\"\nnode_id = 1\npsk = \"{}\"\nallowed_clients = [\"{id}\"]\n{SERVICE}",
        wanmux_core::keys::Psk::generate().to_base64()
    );
    let errs = error(server(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("server.allowed_clients[0]", Some(5)),
        "{errs:?}"
    );

    // [tls] on a node that accepts no QUIC.
    let text = format!(
        "[server]\nlisten = \"0.0.0.0:4443\"\nnode_id = 1\nquic = false\n{NODE_TLS}{SERVICE}"
    );
    let errs = error(server(&d, &text));
    assert!(
        errs.iter().any(|e| e.0 == "server.quic" && e.1 == Some(4)),
        "{errs:?}"
    );

    // node.tls_name without [tls].
    let psk = wanmux_core::keys::Psk::generate().to_base64();
    let text = format!(
        "[client]\npsk = \"{psk}\"\n[[node]]\nid = 1\naddr = \"n:1\"\ntls_name = \"n\"\n{MAP}"
    );
    let errs = error(client(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("node[0].tls_name", Some(6)),
        "{errs:?}"
    );

    // TCP links in PKI mode.
    let text = format!(
        "[[node]]\nid = 1\naddr = \"n:1\"\n[links]\ntransport = \"tcp\"\n{CLIENT_TLS}{MAP}"
    );
    let errs = error(client(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("links.transport", Some(5)),
        "{errs:?}"
    );

    // A PSK beside [tls] on a client.
    let text =
        format!("[client]\npsk = \"{psk}\"\n[[node]]\nid = 1\naddr = \"n:1\"\n{CLIENT_TLS}{MAP}");
    let errs = error(client(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("client.psk", Some(2)),
        "{errs:?}"
    );

    // A tls_name no certificate can carry.
    let text =
        format!("[[node]]\nid = 1\naddr = \"n:1\"\ntls_name = \"not a name\"\n{CLIENT_TLS}{MAP}");
    let errs = error(client(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("node[0].tls_name", Some(4)),
        "{errs:?}"
    );

    // [tls] without its CA file.
    let text = format!(
        "[[node]]\nid = 1\naddr = \"n:1\"\n{}{MAP}",
        CLIENT_TLS.replace("ca_file = \"ca.pem\"\n", "")
    );
    let errs = error(client(&d, &text));
    assert_eq!(
        (errs[0].0.as_str(), errs[0].1),
        ("tls.ca_file", Some(4)),
        "{errs:?}"
    );
}

/// A config built in code: `validate` applies the same rules (QUIC links only, a name a
/// certificate can carry, `[tls]` for a PKI-only node).
#[test]
fn validate_applies_the_pki_rules_to_code_built_configs() {
    use wanmux_config::{CertFiles, LinkTransport, NamedNode, Node, PortMap, ServiceName};
    let ca = ca();
    let me = issue(&ca, "laptop", Usage::Client, 365);
    let files = CertFiles::from_pem(&me.cert_pem, &me.key_pem, &ca.cert_pem(), &[]).expect("PEM");
    let node = Node {
        id: 1.try_into().unwrap(),
        addr: "127.0.0.1:4480"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    };
    let auth = |name: &str| ClientAuth::Pki {
        files: files.clone(),
        nodes: vec![NamedNode {
            node: node.clone(),
            tls_name: name.into(),
        }],
    };
    let map = vec![PortMap {
        listen: "127.0.0.1:9000".parse().unwrap(),
        service: ServiceName::new("web").unwrap(),
        spread: Default::default(),
    }];
    let mut c = ClientConfig::new(auth("127.0.0.1"), map);
    c.transport = LinkTransport::Quic;
    c.validate().unwrap_or_else(|e| panic!("{e}"));
    c.transport = LinkTransport::Tcp;
    let errs = c.validate().expect_err("TCP links in PKI mode");
    assert_eq!(errs.errors[0].key, "links.transport");
    c.transport = LinkTransport::Quic;
    c.auth = auth("not a name");
    let errs = c.validate().expect_err("a bad name");
    assert_eq!(errs.errors[0].key, "node[0].tls_name");

    let s = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        1.try_into().unwrap(),
        ServerAuth::PkiOnly,
        vec![wanmux_config::Service {
            name: ServiceName::new("web").unwrap(),
            target: "127.0.0.1:80".parse().unwrap(),
        }],
    );
    let errs = s.validate().expect_err("PKI-only without [tls]");
    assert_eq!(errs.errors[0].key, "tls");
}
