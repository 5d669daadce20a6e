//! Tests of both configs: every error kind names its key and line, all semantic errors come out
//! in one pass, and secrets stay out of `Debug` and messages.

use crate::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn b64(byte: u8) -> String {
    PublicKey::from_bytes([byte; 32]).to_base64()
}

fn server(text: &str) -> Result<ServerConfig, ConfigErrors> {
    ServerConfig::parse(text, Path::new("/nonexistent"), "server.toml")
}

fn client(text: &str) -> Result<ClientConfig, ConfigErrors> {
    ClientConfig::parse(text, Path::new("/nonexistent"), "client.toml")
}

/// The (key, line) pairs of an error list, for compact asserts.
fn keys_lines(errs: &ConfigErrors) -> Vec<(&str, Option<usize>)> {
    errs.iter().map(|e| (e.key.as_str(), e.line)).collect()
}

/// The single error of a result that must fail with exactly one.
fn one_error<T: std::fmt::Debug>(r: Result<T, ConfigErrors>) -> ConfigError {
    let errs = r.unwrap_err();
    assert_eq!(errs.len(), 1, "expected one error, got:\n{errs}");
    errs.errors[0].clone()
}

/// A fresh empty directory under the system temp dir.
fn temp_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wanmux-config-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A valid PSK-only server config; tests append to or edit it. Line numbers are fixed.
fn psk_server() -> String {
    format!(
        "[server]\n\
         listen = \"0.0.0.0:4480\"\n\
         node_id = 1\n\
         psk = \"{}\"\n\
         \n\
         [[service]]\n\
         name = \"game\"\n\
         target = \"10.0.0.5:7000\"\n",
        b64(9)
    )
}

/// A valid static-key client config. Line numbers are fixed.
fn static_client() -> String {
    format!(
        "[client]\n\
         private_key = \"{}\"\n\
         \n\
         [[node]]\n\
         id = 1\n\
         addr = \"203.0.113.10:4480\"\n\
         public_key = \"{}\"\n\
         \n\
         [[map]]\n\
         listen = \"127.0.0.1:7000\"\n\
         service = \"game\"\n",
        b64(1),
        b64(2)
    )
}

// ---------------------------------------------------------------------------------------------
// Valid configs
// ---------------------------------------------------------------------------------------------

#[test]
fn psk_server_parses_with_defaults() {
    let c = server(&psk_server()).unwrap();
    assert_eq!(c.listen, "0.0.0.0:4480".parse::<SocketAddr>().unwrap());
    assert_eq!(c.node_id.get(), 1);
    assert!(matches!(&c.auth, ServerAuth::PskOnly { psk } if *psk == Psk::from_bytes([9; 32])));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.stream_window, 64 << 20);
    assert_eq!(c.limits.session_window, 128 << 20);
    assert_eq!(c.limits.max_streams, 16384);
    assert_eq!(c.services.len(), 1);
    let game = c.service("game").unwrap();
    assert_eq!(game.target.to_string(), "10.0.0.5:7000");
    assert_eq!(
        game.target.socket_addr(),
        Some("10.0.0.5:7000".parse().unwrap())
    );
    assert!(c.service("other").is_none());
    c.validate().unwrap();
}

#[test]
fn threads_are_the_runtimes_workers() {
    // Unset: the daemon's default (one per CPU, one on one or two CPUs).
    assert_eq!(server(&psk_server()).unwrap().threads, None);
    assert_eq!(client(&static_client()).unwrap().threads, None);
    let set = |text: &str, n: &str| text.replacen("]\n", &format!("]\nthreads = {n}\n"), 1);
    let c = server(&set(&psk_server(), "1")).unwrap();
    assert_eq!(c.threads.map(|t| t.get()), Some(1));
    c.validate().unwrap();
    let c = client(&set(&static_client(), "1024")).unwrap();
    assert_eq!(c.threads.map(|t| t.get()), Some(1024));
    c.validate().unwrap();
    for n in ["0", "1025", "-1"] {
        let e = one_error(server(&set(&psk_server(), n)));
        assert_eq!((e.key.as_str(), e.line), ("server.threads", Some(2)), "{n}");
        assert!(e.message.contains("out of range 1..=1024"), "{}", e.message);
        let e = one_error(client(&set(&static_client(), n)));
        assert_eq!((e.key.as_str(), e.line), ("client.threads", Some(2)), "{n}");
    }
    // Built in code: validate names the key.
    let mut c = server(&psk_server()).unwrap();
    c.threads = std::num::NonZeroUsize::new(4096);
    let e = one_error(c.validate());
    assert_eq!(e.key, "server.threads");
}

#[test]
fn limits_become_the_engine_config() {
    use wanmux_core::engine;
    assert_eq!(
        engine::Config::from(Limits::default()),
        engine::Config::default()
    );
    let limits = Limits {
        stream_window: 1 << 20,
        session_window: 3 << 20,
        max_streams: 7,
        memory: 64 << 20,
        ..Limits::default()
    };
    let cfg = engine::Config::from(limits);
    assert_eq!(
        (cfg.stream_window, cfg.session_window, cfg.max_streams),
        (1 << 20, 3 << 20, 7)
    );
}

/// A trial set `limits.max_streams = 3` in a client config and saw 10 connections go through
/// with no word: the key bounds what a node accepts. Such keys load, with a warning each that
/// names the key and its line; the window keys do not warn.
#[test]
fn node_only_limits_in_a_client_config_warn() {
    let text = format!(
        "{}\n[limits]\nstream_window = 4194304\nmax_streams = 3\nmax_links_per_session = 4\n",
        static_client()
    );
    let c = client(&text).expect("loads");
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    let line = |key: &str| {
        1 + text
            .lines()
            .position(|l| l.starts_with(key))
            .expect("the key's line")
    };
    for (w, key) in c
        .warnings
        .iter()
        .zip(["max_streams", "max_links_per_session"])
    {
        assert!(
            w.contains(&format!(
                ":{}: limits.{key}: has no effect in a client config",
                line(key)
            )),
            "{w}"
        );
    }
}

#[test]
fn static_server_with_psk_is_ikpsk2_and_reads_key_files() {
    let dir = temp_dir();
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    // Key files: base64 with surrounding whitespace, relative to the config's directory.
    std::fs::write(dir.join("keys/server.key"), format!("  {}\n\n", b64(3))).unwrap();
    std::fs::write(dir.join("wanmux.psk"), format!("{}\n", b64(4))).unwrap();
    let text = format!(
        "[server]\nlisten = \"[::]:4480\"\nnode_id = 65535\nprivate_key_file = \"keys/server.key\"\n\
         psk_file = \"wanmux.psk\"\nallowed_clients = [\"{}\", \"{}\"]\nhandshake_timeout_ms = 2500\n\
         connect_timeout_ms = 100\n[limits]\nstream_window = 16384\nsession_window = 16384\n\
         max_streams = 1\n[[service]]\nname = \"a.b_c-D9\"\ntarget = \"game.example.net:7000\"\n",
        b64(5),
        b64(6)
    );
    std::fs::write(dir.join("server.toml"), &text).unwrap();
    let c = ServerConfig::load(dir.join("server.toml")).unwrap();
    match &c.auth {
        ServerAuth::StaticKey {
            private_key,
            allowed_clients,
            psk,
        } => {
            assert_eq!(*private_key, PrivateKey::from_bytes([3; 32]));
            assert_eq!(psk.as_ref(), Some(&Psk::from_bytes([4; 32])));
            let want: Vec<_> = [5, 6].map(|b| PublicKey::from_bytes([b; 32])).into();
            assert_eq!(allowed_clients.iter().copied().collect::<Vec<_>>(), want);
        }
        other => panic!("wrong mode {other:?}"),
    }
    assert_eq!(c.node_id.get(), 65535);
    assert_eq!(c.handshake_timeout, Duration::from_millis(2500));
    assert_eq!(c.connect_timeout, Duration::from_millis(100));
    assert_eq!(
        c.limits,
        Limits {
            stream_window: 16384,
            session_window: 16384,
            max_streams: 1,
            memory: 1 << 30,
            ..Limits::default()
        }
    );
    let svc = &c.services[0];
    assert_eq!(svc.name.as_str(), "a.b_c-D9");
    assert_eq!(svc.target.host(), &Host::Name("game.example.net".into()));
    assert_eq!(svc.target.port(), 7000);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn static_client_parses_and_exposes_handshakes() {
    let c = client(&static_client()).unwrap();
    let ClientAuth::StaticKey {
        private_key,
        psk,
        nodes,
    } = &c.auth
    else {
        panic!("wrong mode {:?}", c.auth);
    };
    assert_eq!(*private_key, PrivateKey::from_bytes([1; 32]));
    assert!(psk.is_none());
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].public_key, PublicKey::from_bytes([2; 32]));
    assert_eq!(nodes[0].node.addr.len(), 1);
    assert_eq!(nodes[0].node.addr[0].to_string(), "203.0.113.10:4480");
    assert_eq!(c.links, Links::fixed(4));
    assert_eq!(c.handshake_timeout, Duration::from_secs(10));
    assert_eq!(c.maps[0].service.as_str(), "game");
    let hs: Vec<_> = c.auth.handshakes().collect();
    assert_eq!(hs.len(), 1);
    assert!(matches!(
        hs[0].1,
        NodeHandshake::StaticKey { remote, psk: None, .. } if *remote == PublicKey::from_bytes([2; 32])
    ));
    assert_eq!(c.nodes().map(|n| n.id.get()).collect::<Vec<_>>(), [1]);
    c.validate().unwrap();
}

#[test]
fn auth_becomes_the_noise_credentials() {
    use wanmux_core::auth;
    let c = client(&static_client()).unwrap();
    let (_, hs) = c.auth.handshakes().next().unwrap();
    let auth::ClientAuth::Static {
        local,
        server: node_key,
        psk,
    } = auth::ClientAuth::from(hs)
    else {
        panic!("static-key mode becomes a static Noise client");
    };
    assert_eq!(local, PrivateKey::from_bytes([1; 32]));
    assert_eq!(node_key, PublicKey::from_bytes([2; 32]));
    assert!(psk.is_none());
    let psk = Psk::from_bytes([7; 32]);
    let hs = NodeHandshake::PskOnly { psk: &psk };
    assert!(matches!(auth::ClientAuth::from(hs), auth::ClientAuth::Psk(p) if p == psk));

    let s = auth::ServerAuth::from(&server(&psk_server()).unwrap().auth);
    assert!(s.private_key.is_none() && s.allowed_clients.is_empty());
    assert_eq!(s.psk, Some(Psk::from_bytes([9; 32])));
    let s = auth::ServerAuth::from(&ServerAuth::StaticKey {
        private_key: PrivateKey::from_bytes([3; 32]),
        allowed_clients: [5, 6].map(|b| PublicKey::from_bytes([b; 32])).into(),
        psk: None,
    });
    assert_eq!(s.private_key, Some(PrivateKey::from_bytes([3; 32])));
    assert_eq!(
        s.allowed_clients,
        [5, 6].map(|b| PublicKey::from_bytes([b; 32])).into()
    );
    assert!(s.psk.is_none());
}

#[test]
fn psk_client_with_several_nodes_and_links() {
    let text = format!(
        "[client]\npsk = \"{}\"\n[[node]]\nid = 1\naddr = \"a.example:4480\"\n[[node]]\nid = 2\n\
         addr = \"[2001:db8::1]:4480\"\n[links]\ncount = 256\n[[map]]\nlisten = \"[::1]:7000\"\n\
         service = \"x\"\n[[map]]\nlisten = \"127.0.0.1:7000\"\nservice = \"x\"\n",
        b64(7)
    );
    let c = client(&text).unwrap();
    assert!(matches!(&c.auth, ClientAuth::PskOnly { nodes, .. } if nodes.len() == 2));
    assert_eq!(c.links, Links::fixed(256));
    let hs: Vec<_> = c.auth.handshakes().collect();
    assert!(hs
        .iter()
        .all(|(_, h)| matches!(h, NodeHandshake::PskOnly { .. })));
    assert_eq!(
        hs[1].0.addr.as_slice(),
        ["[2001:db8::1]:4480".parse().unwrap()]
    );
    // Two maps on one port but different, non-wildcard addresses do not conflict.
    assert_eq!(c.maps.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Errors from the TOML parser: one, with key and line
// ---------------------------------------------------------------------------------------------

#[test]
fn unknown_key_names_key_and_line() {
    let text = psk_server().replace("node_id = 1\n", "node_id = 1\nnode_idd = 2\n");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.node_idd", Some(4)));
    assert!(
        e.message.contains("unknown field `node_idd`"),
        "{}",
        e.message
    );

    // Inside the second element of an array of tables.
    let text = format!(
        "{}[[service]]\nname = \"b\"\ntarjet = \"x:1\"\n",
        psk_server()
    );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("service[1].tarjet", Some(11)));

    // An unknown table.
    let text = format!("{}[limit]\nmax_streams = 5\n", static_client());
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("limit", Some(12)));

    // A server key in a client config.
    let text = static_client().replace("[client]\n", "[client]\nlisten = \"0.0.0.0:1\"\n");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("client.listen", Some(2)));
}

#[test]
fn type_and_syntax_errors_have_lines() {
    let text = psk_server().replace("node_id = 1", "node_id = \"one\"");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.node_id", Some(3)));
    assert!(e.message.contains("invalid type"), "{}", e.message);
    assert!(e.message.ends_with("expected an integer"), "{}", e.message);

    // A table twice: one line, with the file and line (a trial's printed a second line with
    // neither).
    let text = format!(
        "{}\n[limits]\nmemory = 16777216\n[limits]\nmax_streams = 5\n",
        psk_server()
    );
    let e = one_error(server(&text));
    let line = text
        .lines()
        .enumerate()
        .filter(|(_, l)| *l == "[limits]")
        .nth(1)
        .unwrap()
        .0
        + 1;
    assert_eq!(e.line, Some(line), "{e:?}");
    assert!(!e.message.contains('\n'), "{:?}", e.message);
    assert!(
        e.message.contains("duplicate key `limits`"),
        "{}",
        e.message
    );

    // An integer beyond TOML's: the parser gives up on the whole file, the key is still named.
    let text = psk_server().replace("node_id = 1", "node_id = 99999999999999999999");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.node_id", Some(3)));
    assert!(
        e.message.contains("at most 9223372036854775807"),
        "{}",
        e.message
    );
    let text = format!(
        "{}[[service]]\nname = \"b\"\ntarget = 99999999999999999999\n",
        psk_server()
    );
    let e = one_error(server(&text));
    assert_eq!(e.key, "service[1].target", "{e:?}");

    let text = format!("{}[limits]\nstream_window = 1.5\n", psk_server());
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("limits.stream_window", Some(10)));

    // An element of an array.
    let text = static_client().replace("[client]\n", "") + "[client]\n";
    assert!(client(&text).is_err());
    let text = psk_server().replace(
        "node_id = 1\n",
        "node_id = 1\nallowed_clients = [\"a\", 7]\n",
    );
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("server.allowed_clients[1]", Some(4))
    );

    // `[service]` instead of `[[service]]`.
    let text = psk_server().replace("[[service]]", "[service]");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("service", Some(6)));

    // A table defined twice: the parser cannot name a key, only the line.
    let e = one_error(server(&(psk_server() + "[server]\n")));
    assert_eq!((e.key.as_str(), e.line), ("", Some(9)));
    assert!(e.to_string().contains("duplicate"), "{e}");

    // A syntax error: unterminated string.
    let text = psk_server().replace("target = \"10.0.0.5:7000\"", "target = \"10.0.0.5:7000");
    let e = one_error(server(&text));
    assert_eq!(e.line, Some(8));
}

#[test]
fn parser_errors_do_not_quote_secrets() {
    let secret = b64(42);
    // A key pasted into a numeric field: the parser's message would quote the string.
    let text = psk_server().replace("node_id = 1", &format!("node_id = \"{secret}\""));
    let errs = server(&text).unwrap_err();
    let shown = errs.to_string();
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    // A syntax error on the line of an inline secret: the message does not quote the line.
    let text = psk_server().replace(
        &format!("psk = \"{}\"", b64(9)),
        &format!("psk = \"{secret}\" x"),
    );
    let shown = server(&text).unwrap_err().to_string();
    assert!(!shown.contains(&secret), "{shown}");
    assert!(shown.starts_with("server.toml:4: "), "{shown}");
    // A key file given as the config: its line reads as a key without a value, which the
    // error would name.
    for text in [format!("{secret}\n"), format!("{secret}=\n")] {
        let shown = server(&text).unwrap_err().to_string();
        let bare = secret.trim_end_matches('=');
        assert!(!shown.contains(bare), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
    // A secret used as a key inside a table.
    let text = psk_server().replace("[server]\n", &format!("[server]\n\"{secret}\" = 1\n"));
    let shown = server(&text).unwrap_err().to_string();
    assert!(!shown.contains(secret.trim_end_matches('=')), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Semantic errors: each kind names its key and line
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_addresses() {
    let text = psk_server().replace("0.0.0.0:4480", "0.0.0.0:99999");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.listen", Some(2)));
    assert!(
        e.message.contains("invalid socket address"),
        "{}",
        e.message
    );

    let text = psk_server().replace("0.0.0.0:4480", "localhost:4480");
    assert_eq!(one_error(server(&text)).key, "server.listen");
    // A trial wrote `::1:4480` and was told only that host names are not allowed.
    let text = psk_server().replace("0.0.0.0:4480", "::1:4480");
    let e = one_error(server(&text));
    assert!(
        e.message
            .contains("an IPv6 address goes in brackets: \"[::1]:PORT\""),
        "{}",
        e.message
    );

    for (bad, want) in [
        ("10.0.0.5", "expected HOST:PORT"),
        ("10.0.0.5:0", "invalid port"),
        ("10.0.0.5:http", "invalid port"),
        ("10.0.0.5:+80", "invalid port"),
        ("::1:80", "IPv6 addresses need brackets"),
        ("[::1:80", "expected HOST:PORT"),
        ("[nothost]:80", "invalid host"),
        ("bad_host!:80", "invalid host"),
        ("10.0.0.256:80", "invalid host"),
        (":80", "invalid host"),
        ("-x.example:80", "invalid host"),
    ] {
        let text = psk_server().replace("10.0.0.5:7000", bad);
        let e = one_error(server(&text));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("service[0].target", Some(8)),
            "{bad}"
        );
        assert!(e.message.contains(want), "{bad}: {}", e.message);
    }

    let text = static_client().replace("203.0.113.10:4480", "203.0.113.10");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[0].addr", Some(6)));

    let text = static_client().replace("127.0.0.1:7000", "localhost:7000");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("map[0].listen", Some(10)));
}

#[test]
fn bad_service_names() {
    let long = "a".repeat(256);
    for bad in ["", "game server", "gäme", "a/b", long.as_str()] {
        let text = psk_server().replace("name = \"game\"", &format!("name = \"{bad}\""));
        let e = one_error(server(&text));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("service[0].name", Some(7)),
            "{bad:?}"
        );
    }
    let ok = "a".repeat(255);
    let text = psk_server().replace("name = \"game\"", &format!("name = \"{ok}\""));
    server(&text).unwrap();

    let text = static_client().replace("service = \"game\"", "service = \"no way\"");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("map[0].service", Some(11)));
}

#[test]
fn duplicates_name_the_second_occurrence() {
    let text = format!(
        "{}\n[[service]]\nname = \"other\"\ntarget = \"10.0.0.6:1\"\n\n[[service]]\nname = \"game\"\n\
         target = \"10.0.0.7:1\"\n",
        psk_server()
    );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("service[2].name", Some(15)));
    assert!(
        e.message.contains("service[0]") && e.message.contains("line 7"),
        "{}",
        e.message
    );

    let text = static_client()
        + &format!(
            "[[node]]\nid = 1\naddr = \"203.0.113.10:4480\"\npublic_key = \"{}\"\n",
            b64(2)
        );
    let errs = client(&text).unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [("node[1].id", Some(13)), ("node[1].addr", Some(14))]
    );

    let text = static_client() + "[[map]]\nlisten = \"0.0.0.0:7000\"\nservice = \"other\"\n";
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("map[1].listen", Some(13)));
    assert!(e.message.contains("map[0].listen"), "{}", e.message);

    let text = psk_server().replace(
        "node_id = 1\n",
        &format!(
            "node_id = 1\nprivate_key = \"{}\"\nallowed_clients = [\"{}\", \"{}\"]\n",
            b64(1),
            b64(2),
            b64(2)
        ),
    );
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("server.allowed_clients[1]", Some(5))
    );
}

#[test]
fn map_listen_conflicts() {
    let addrs = |list: &[&str]| -> Vec<(usize, usize)> {
        let text = list.iter().enumerate().fold(static_client(), |t, (i, a)| {
            t + &format!("[[map]]\nlisten = \"{a}\"\nservice = \"s{i}\"\n")
        });
        match client(&text) {
            Ok(_) => vec![],
            Err(errs) => errs
                .iter()
                .map(|e| {
                    let i: usize = e.key["map[".len()..e.key.find(']').unwrap()]
                        .parse()
                        .unwrap();
                    let first: usize = e.message
                        ["conflicts with map[".len()..e.message.find(']').unwrap()]
                        .parse()
                        .unwrap();
                    (i, first)
                })
                .collect(),
        }
    };
    // map[0] is 127.0.0.1:7000 from static_client().
    assert_eq!(addrs(&["127.0.0.2:7000", "[::1]:7000", "0.0.0.0:7001"]), []);
    assert_eq!(addrs(&["0.0.0.0:7000"]), [(1, 0)]);
    assert_eq!(addrs(&["[::]:7000"]), [(1, 0)]);
    assert_eq!(addrs(&["[::1]:7001", "[::]:7001"]), [(2, 1)]);
    assert_eq!(addrs(&["127.0.0.1:0", "127.0.0.1:0"]), []);
}

#[test]
fn missing_key_file() {
    let text = psk_server().replace(
        "node_id = 1\n",
        &format!(
            "node_id = 1\nprivate_key_file = \"missing.key\"\nallowed_clients = [\"{}\"]\n",
            b64(2)
        ),
    );
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("server.private_key_file", Some(4))
    );
    assert!(
        e.message.contains("/nonexistent/missing.key"),
        "{}",
        e.message
    );

    // An absolute path is used as is.
    let text = static_client().replace(
        &format!("private_key = \"{}\"", b64(1)),
        "private_key_file = \"/nonexistent-dir/client.key\"",
    );
    let e = one_error(client(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("client.private_key_file", Some(2))
    );
    assert!(
        e.message
            .contains("cannot read /nonexistent-dir/client.key"),
        "{}",
        e.message
    );
}

#[test]
fn bad_base64() {
    // Inline PSK.
    let text = psk_server().replace(&b64(9), "not base64!");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.psk", Some(4)));
    assert!(e.message.contains("not valid base64"), "{}", e.message);

    // Right alphabet, wrong length.
    let text = psk_server().replace(&b64(9), "AAAA");
    let e = one_error(server(&text));
    assert!(e.message.contains("decodes to 3 bytes"), "{}", e.message);

    // A node's public key.
    let text = static_client().replace(&b64(2), &b64(2)[1..]);
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[0].public_key", Some(7)));

    // A key file with garbage: the error names the file, not its content.
    let dir = temp_dir();
    std::fs::write(dir.join("bad.psk"), "hunter2-is-my-psk\n").unwrap();
    let text = psk_server().replace(&format!("psk = \"{}\"", b64(9)), "psk_file = \"bad.psk\"");
    let e = one_error(ServerConfig::parse(&text, &dir, "s.toml"));
    assert_eq!((e.key.as_str(), e.line), ("server.psk_file", Some(4)));
    assert!(
        e.message.contains("bad.psk: not valid base64"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("hunter2"), "{}", e.message);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn inline_and_file_key_together() {
    let text = psk_server().replace("node_id = 1\n", "node_id = 1\npsk_file = \"x.psk\"\n");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.psk_file", Some(4)));
    assert!(e.message.contains("not both"), "{}", e.message);
}

#[test]
fn out_of_range_values() {
    let cases: &[(&str, &str)] = &[
        ("stream_window = 16383", "limits.stream_window"),
        ("stream_window = 1073741825", "limits.stream_window"),
        ("stream_window = -1", "limits.stream_window"),
        ("session_window = 4294967297", "limits.session_window"),
        ("session_window = 0", "limits.session_window"),
        ("session_window = 16383", "limits.session_window"),
        ("max_streams = 0", "limits.max_streams"),
        ("max_streams = 1000001", "limits.max_streams"),
        ("max_streams = 9999999999999", "limits.max_streams"),
        ("memory = 8388607", "limits.memory"),
        ("memory = 1099511627777", "limits.memory"),
    ];
    for (line, key) in cases {
        let text = format!("{}\n[limits]\n{line}\n", psk_server());
        let e = one_error(server(&text));
        assert_eq!((e.key.as_str(), e.line), (*key, Some(11)), "{line}");
        assert!(e.message.contains("out of range"), "{line}: {}", e.message);
    }
    // Upper bounds are inclusive.
    let text = format!(
        "{}[limits]\nstream_window = 1073741824\nsession_window = 4294967296\nmax_streams = 1000000\n\
         memory = 1099511627776\n",
        psk_server()
    );
    server(&text).unwrap();

    // memory below twice stream_window: reported at memory if written, else at stream_window.
    let text = format!(
        "{}[limits]\nstream_window = 8388608\nsession_window = 8388608\nmemory = 16777215\n",
        psk_server()
    );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("limits.memory", Some(12)));
    assert!(e.message.contains("twice stream_window"), "{}", e.message);
    let text = format!(
        "{}[limits]\nstream_window = 1073741824\nsession_window = 1073741824\n",
        psk_server()
    );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("limits.memory", Some(10)));

    // session_window below stream_window, both written: reported at session_window.
    let text = format!(
        "{}[limits]\nstream_window = 1048576\nsession_window = 65536\n",
        psk_server()
    );
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("limits.session_window", Some(11))
    );
    // Only stream_window written, above the default session window: the session window's
    // default follows it.
    let text = format!("{}[limits]\nstream_window = 268435456\n", psk_server());
    let c = server(&text).unwrap();
    assert_eq!(c.limits.stream_window, 256 << 20);
    assert_eq!(c.limits.session_window, 256 << 20);
    // Only memory written, below twice the default stream window: the stream window's default
    // is half of it, the session window's stays.
    let text = format!("{}[limits]\nmemory = 67108864\n", psk_server());
    let c = server(&text).unwrap();
    assert_eq!(c.limits.stream_window, 32 << 20);
    assert_eq!(c.limits.session_window, 128 << 20);
    let text = format!("{}[limits]\nmemory = 8388608\n", psk_server());
    assert_eq!(server(&text).unwrap().limits.stream_window, 4 << 20);

    for (text, key, line) in [
        (
            psk_server().replace("node_id = 1", "node_id = 0"),
            "server.node_id",
            3,
        ),
        (
            psk_server().replace("node_id = 1", "node_id = 65536"),
            "server.node_id",
            3,
        ),
    ] {
        let e = one_error(server(&text));
        assert_eq!((e.key.as_str(), e.line), (key, Some(line)), "{text}");
    }
    let text = psk_server().replace("node_id = 1\n", "node_id = 1\nhandshake_timeout_ms = 0\n");
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("server.handshake_timeout_ms", Some(4))
    );
    let text = psk_server().replace(
        "node_id = 1\n",
        "node_id = 1\nconnect_timeout_ms = 600001\n",
    );
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("server.connect_timeout_ms", Some(4))
    );

    for count in ["0", "257", "-4"] {
        let text = format!("{}[links]\ncount = {count}\n", static_client());
        let e = one_error(client(&text));
        assert_eq!((e.key.as_str(), e.line), ("links.count", Some(13)));
    }
    // Elastic links: min and max, each checked, max not below min, count not with them.
    let c = client(&format!("{}[links]\nmin = 2\nmax = 32\n", static_client())).unwrap();
    assert_eq!(c.links, Links::elastic(2, 32));
    let c = client(&format!("{}[links]\nmax = 8\n", static_client())).unwrap();
    assert_eq!(c.links, Links::elastic(1, 8));
    let e = one_error(client(&format!(
        "{}[links]\nmin = 4\nmax = 2\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("links.max", Some(14)));
    let e = one_error(client(&format!("{}[links]\nmin = 0\n", static_client())));
    assert_eq!((e.key.as_str(), e.line), ("links.min", Some(13)));
    let e = one_error(client(&format!(
        "{}[links]\ncount = 4\nmax = 8\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("links.count", Some(13)));
    let text = static_client().replace("id = 1", "id = 70000");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[0].id", Some(5)));
}

#[test]
fn missing_required_keys_and_tables() {
    let text = psk_server()
        .replace("listen = \"0.0.0.0:4480\"\n", "")
        .replace("target = \"10.0.0.5:7000\"\n", "");
    let errs = server(&text).unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [("server.listen", Some(1)), ("service[0].target", Some(5))]
    );
    assert!(errs.errors[0].message.contains("missing required key"));

    let errs = server("").unwrap_err();
    assert_eq!(keys_lines(&errs), [("service", None), ("server", None)]);

    let errs = client("").unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [("client.psk", None), ("node", None), ("map", None)]
    );

    let text = static_client().replace("id = 1\n", "");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[0].id", Some(4)));
}

#[test]
fn server_mode_rules() {
    // Allowed clients without a private key.
    let text = psk_server().replace(
        "node_id = 1\n",
        &format!("node_id = 1\nallowed_clients = [\"{}\"]\n", b64(2)),
    );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.private_key", Some(1)));
    assert!(e.message.contains("static-key mode"), "{}", e.message);

    // No allowed clients and no PSK.
    let text = psk_server().replace(&format!("psk = \"{}\"\n", b64(9)), "");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.psk", Some(1)));
    assert!(e.message.contains("PSK-only mode"), "{}", e.message);

    // A private key with an empty allow-list.
    let text = psk_server().replace(
        "node_id = 1\n",
        &format!(
            "node_id = 1\nprivate_key = \"{}\"\nallowed_clients = []\n",
            b64(1)
        ),
    );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("server.private_key", Some(4)));
    assert!(
        e.message.contains("allowed_clients is empty"),
        "{}",
        e.message
    );

    // Static-key mode without a PSK is plain IK.
    let text = psk_server().replace(
        &format!("psk = \"{}\"\n", b64(9)),
        &format!(
            "private_key = \"{}\"\nallowed_clients = [\"{}\"]\n",
            b64(1),
            b64(2)
        ),
    );
    let c = server(&text).unwrap();
    assert!(matches!(c.auth, ServerAuth::StaticKey { psk: None, .. }));
}

#[test]
fn client_mode_rules() {
    // Static-key mode: a node without public_key.
    let text = static_client().replace(&format!("public_key = \"{}\"\n", b64(2)), "");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[0].public_key", Some(4)));
    assert!(e.message.contains("static-key mode"), "{}", e.message);

    // No private key and no PSK.
    let text = static_client()
        .replace(&format!("private_key = \"{}\"\n", b64(1)), "")
        .replace(&format!("public_key = \"{}\"\n", b64(2)), "");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("client.psk", Some(1)));

    // PSK-only mode: a node's public_key could not be checked.
    let text = static_client().replace(
        &format!("private_key = \"{}\"", b64(1)),
        &format!("psk = \"{}\"", b64(3)),
    );
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[0].public_key", Some(7)));
    assert!(e.message.contains("PSK-only mode"), "{}", e.message);

    // Static-key mode with a PSK is IKpsk2.
    let text = static_client().replace("[client]\n", &format!("[client]\npsk = \"{}\"\n", b64(3)));
    let c = client(&text).unwrap();
    let hs: Vec<_> = c.auth.handshakes().collect();
    assert!(matches!(
        hs[0].1,
        NodeHandshake::StaticKey { psk: Some(_), .. }
    ));

    // A private key that fails to load is still a private key: no extra "missing" errors.
    let text = static_client().replace(&b64(1), "bad");
    let e = one_error(client(&text));
    assert_eq!(e.key, "client.private_key");
}

// ---------------------------------------------------------------------------------------------
// All errors at once, and how they print
// ---------------------------------------------------------------------------------------------

#[test]
fn all_semantic_errors_in_one_pass() {
    let text = format!(
        "[server]\n\
         listen = \"nowhere\"\n\
         node_id = 0\n\
         private_key_file = \"nope.key\"\n\
         allowed_clients = [\"{}\", \"short\"]\n\
         handshake_timeout_ms = 5\n\
         [limits]\n\
         stream_window = 1\n\
         max_streams = 0\n\
         [[service]]\n\
         name = \"game\"\n\
         target = \"nohost\"\n\
         [[service]]\n\
         name = \"game\"\n\
         target = \"10.0.0.1:1\"\n\
         [[service]]\n\
         name = \"bad name\"\n",
        b64(2)
    );
    let errs = server(&text).unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [
            ("server.listen", Some(2)),
            ("server.node_id", Some(3)),
            ("server.private_key_file", Some(4)),
            ("server.allowed_clients[1]", Some(5)),
            ("server.handshake_timeout_ms", Some(6)),
            ("limits.stream_window", Some(8)),
            ("limits.max_streams", Some(9)),
            ("service[0].target", Some(12)),
            ("service[1].name", Some(14)),
            ("service[2].target", Some(16)),
            ("service[2].name", Some(17)),
        ],
        "{errs}"
    );
    let shown = errs.to_string();
    let lines: Vec<_> = shown.lines().collect();
    assert_eq!(lines.len(), errs.len());
    assert!(
        lines[0].starts_with("server.toml:2: server.listen: invalid socket address"),
        "{shown}"
    );
    assert!(
        lines[8].starts_with("server.toml:14: service[1].name: duplicate service name"),
        "{shown}"
    );
}

#[test]
fn display_without_line_or_key() {
    let errs = ConfigErrors {
        source_name: "c.toml".into(),
        errors: vec![
            ConfigError {
                key: "node".into(),
                line: None,
                message: "m1".into(),
            },
            ConfigError {
                key: String::new(),
                line: Some(3),
                message: "m2".into(),
            },
        ],
    };
    assert_eq!(errs.to_string(), "c.toml: node: m1\nc.toml:3: m2");
}

#[test]
fn load_reports_unreadable_file() {
    let errs = ServerConfig::load("/nonexistent/server.toml").unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(
        errs.to_string()
            .starts_with("/nonexistent/server.toml: cannot read config file"),
        "{errs}"
    );
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

#[test]
fn secrets_are_redacted_in_debug() {
    let psk = b64(9);
    let c = server(&psk_server()).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains(&psk), "{dbg}");
    assert!(dbg.contains("Psk(<redacted>)"), "{dbg}");

    let c = client(&static_client().replace("[client]\n", &format!("[client]\npsk = \"{psk}\"\n")))
        .unwrap();
    let dbg = format!("{c:?} {:?}", c.auth.handshakes().collect::<Vec<_>>());
    assert!(!dbg.contains(&b64(1)), "private key leaked: {dbg}");
    assert!(!dbg.contains(&psk), "psk leaked: {dbg}");
    // Public keys are not secret and show, which helps when comparing configs.
    assert!(dbg.contains(&b64(2)), "{dbg}");
}

#[test]
fn secrets_never_appear_in_errors() {
    // Bad-length keys of the right alphabet would be the likeliest to be echoed.
    let almost = b64(1)[..40].to_owned();
    let text = psk_server().replace(&b64(9), &almost);
    let shown = server(&text).unwrap_err().to_string();
    assert!(!shown.contains(&almost), "{shown}");
    let text = static_client().replace(&b64(1), &almost);
    let shown = client(&text).unwrap_err().to_string();
    assert!(!shown.contains(&almost), "{shown}");
}

// ---------------------------------------------------------------------------------------------
// Building configs in code
// ---------------------------------------------------------------------------------------------

#[test]
fn code_built_configs_validate() {
    let svc = |name: &str| Service {
        name: name.parse().unwrap(),
        target: "127.0.0.1:7".parse().unwrap(),
    };
    let auth = ServerAuth::PskOnly {
        psk: Psk::from_bytes([1; 32]),
    };
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let id = std::num::NonZeroU16::new(1).unwrap();
    let mut s = ServerConfig::new(addr, id, auth, vec![svc("echo")]);
    s.validate().unwrap();

    s.services.push(svc("echo"));
    s.limits.max_streams = 0;
    s.auth = ServerAuth::StaticKey {
        private_key: PrivateKey::from_bytes([1; 32]),
        allowed_clients: Default::default(),
        psk: None,
    };
    let errs = s.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "server.allowed_clients",
            "limits.max_streams",
            "service[1].name"
        ]
    );

    let node = Node {
        id,
        addr: HostPort::from(addr).into(),
    };
    let map = PortMap {
        listen: "127.0.0.1:7000".parse().unwrap(),
        service: "echo".parse().unwrap(),
        spread: Default::default(),
    };
    let auth = ClientAuth::PskOnly {
        psk: Psk::from_bytes([1; 32]),
        nodes: vec![node.clone()],
    };
    let mut c = ClientConfig::new(auth, vec![map.clone()]);
    c.validate().unwrap();
    c.maps.push(map);
    c.links = Links::fixed(0);
    c.auth = ClientAuth::PskOnly {
        psk: Psk::from_bytes([1; 32]),
        nodes: vec![node.clone(), node],
    };
    let errs = c.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["node[1].id", "node[1].addr", "links.min", "map[1].listen"]
    );
}

#[test]
fn host_port_forms() {
    for (text, shown) in [
        ("example.net:80", "example.net:80"),
        ("Example.NET.:80", "Example.NET.:80"),
        ("[2001:db8::1]:443", "[2001:db8::1]:443"),
        ("10.0.0.5:7000", "10.0.0.5:7000"),
        ("_srv.internal:1", "_srv.internal:1"),
    ] {
        assert_eq!(text.parse::<HostPort>().unwrap().to_string(), shown);
    }
    assert_eq!(HostPort::new("::1", 80).unwrap().to_string(), "[::1]:80");
    assert!(HostPort::new("a..b", 80).is_err());
    assert!(HostPort::new(&"a".repeat(64), 80).is_err());
    assert!(HostPort::new("ok", 0).is_err());
    assert_eq!(ServiceName::new("").unwrap_err(), ServiceNameError::Empty);
}

#[test]
fn congestion_control_names() {
    let c = client(&format!(
        "{}[links]\ncongestion = \"bbr\"\n",
        static_client()
    ))
    .unwrap();
    assert_eq!(c.congestion.as_deref(), Some("bbr"));
    let e = one_error(client(&format!(
        "{}[links]\ncongestion = \"BBR; rm\"\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("links.congestion", Some(13)));
    let mut cfg = client(&static_client()).unwrap();
    assert_eq!(cfg.congestion, None);
    cfg.congestion = Some(String::new());
    let errs = cfg.validate().unwrap_err();
    assert_eq!(
        errs.iter().next().map(|e| e.key.as_str()),
        Some("links.congestion")
    );
}

#[test]
fn cluster_owner() {
    let c = client(&static_client()).unwrap();
    assert_eq!(c.owner, OwnerPolicy::LeastLoaded);
    for (name, p) in [
        ("least_loaded", OwnerPolicy::LeastLoaded),
        ("hash", OwnerPolicy::Hash),
        ("first", OwnerPolicy::First),
    ] {
        let text = format!("{}[cluster]\nowner = \"{name}\"\n", static_client());
        let c = client(&text).unwrap();
        assert_eq!(c.owner, p);
        assert_eq!(p.to_string(), name);
    }
    let e = one_error(client(&format!(
        "{}[cluster]\nowner = \"random\"\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("cluster.owner", Some(13)));
    assert_eq!(
        e.message,
        "\"random\" is not an owner policy (use \"least_loaded\", \"hash\" or \"first\")"
    );
    let e = one_error(client(&format!(
        "{}[cluster]\nowners = \"first\"\n",
        static_client()
    )));
    assert_eq!(e.line, Some(13));
}

#[test]
fn map_spread() {
    let c = client(&static_client()).unwrap();
    assert_eq!(c.maps[0].spread, Spread::Stripe);
    for (name, want) in [("stripe", Spread::Stripe), ("pin", Spread::Pin)] {
        let text = format!("{}spread = \"{name}\"\n", static_client());
        let c = client(&text).unwrap();
        assert_eq!(c.maps[0].spread, want);
        assert_eq!(want.as_str(), name);
    }
    let e = one_error(client(&format!("{}spread = \"wide\"\n", static_client())));
    assert_eq!((e.key.as_str(), e.line), ("map[0].spread", Some(12)));
    assert_eq!(
        e.message,
        "\"wide\" is not a spread (use \"stripe\" or \"pin\")"
    );
}

#[test]
fn no_link_hold() {
    let c = client(&static_client()).unwrap();
    assert_eq!(c.no_link_hold, ClientConfig::DEFAULT_NO_LINK_HOLD);
    let with = |v: &str| {
        static_client().replace("[client]\n", &format!("[client]\nno_link_hold_ms = {v}\n"))
    };
    assert_eq!(client(&with("0")).unwrap().no_link_hold, Duration::ZERO);
    assert_eq!(
        client(&with("1500")).unwrap().no_link_hold,
        Duration::from_millis(1500)
    );
    let e = one_error(client(&with("60001")));
    assert_eq!(e.key, "client.no_link_hold_ms");
    assert!(
        e.line.is_some() && e.message.contains("milliseconds"),
        "{e}"
    );
    let mut c = client(&static_client()).unwrap();
    c.no_link_hold = Duration::from_secs(61);
    let errs = c.validate().unwrap_err();
    assert_eq!(keys_lines(&errs), [("client.no_link_hold_ms", None)]);
}

#[test]
fn metrics_listen() {
    assert_eq!(client(&static_client()).unwrap().metrics_listen, None);
    assert_eq!(server(&psk_server()).unwrap().metrics_listen, None);
    let at: SocketAddr = "127.0.0.1:9480".parse().unwrap();
    let table = "[metrics]\nlisten = \"127.0.0.1:9480\"\n";
    let c = client(&format!("{}{table}", static_client())).unwrap();
    assert_eq!(c.metrics_listen, Some(at));
    let s = server(&format!("{}{table}", psk_server())).unwrap();
    assert_eq!(s.metrics_listen, Some(at));
    let e = one_error(server(&format!(
        "{}[metrics]\nlisten = \"localhost:9480\"\n",
        psk_server()
    )));
    assert_eq!((e.key.as_str(), e.line), ("metrics.listen", Some(10)));
    let e = one_error(client(&format!("{}[metrics]\n", static_client())));
    assert_eq!((e.key.as_str(), e.line), ("metrics.listen", Some(12)));
    let e = one_error(client(&format!(
        "{}[metrics]\nlisten = \"127.0.0.1:1\"\nport = 3\n",
        static_client()
    )));
    assert_eq!(e.line, Some(14));
}

#[test]
fn control_socket() {
    assert_eq!(client(&static_client()).unwrap().control_socket, None);
    let c = client(&format!(
        "{}[control]\nsocket = \"run/c.sock\"\n",
        static_client()
    ))
    .unwrap();
    assert_eq!(
        c.control_socket,
        Some(PathBuf::from("/nonexistent/run/c.sock"))
    );
    let s = server(&format!(
        "{}[control]\nsocket = \"/run/wanmux/s.sock\"\n",
        psk_server()
    ))
    .unwrap();
    assert_eq!(s.control_socket, Some(PathBuf::from("/run/wanmux/s.sock")));
    let e = one_error(server(&format!(
        "{}[control]\nsocket = \"\"\n",
        psk_server()
    )));
    assert_eq!((e.key.as_str(), e.line), ("control.socket", Some(10)));
    let e = one_error(client(&format!("{}[control]\n", static_client())));
    assert_eq!((e.key.as_str(), e.line), ("control.socket", Some(12)));
}

#[test]
fn link_transport() {
    let c = client(&static_client()).unwrap();
    assert_eq!(c.transport, LinkTransport::Auto);
    assert_eq!(LinkTransport::default(), LinkTransport::Auto);
    for (name, t) in [
        ("auto", LinkTransport::Auto),
        ("tcp", LinkTransport::Tcp),
        ("quic", LinkTransport::Quic),
    ] {
        let text = format!("{}[links]\ntransport = \"{name}\"\n", static_client());
        let c = client(&text).unwrap();
        assert_eq!(c.transport, t);
        assert_eq!(t.to_string(), name);
        c.validate().unwrap();
    }
    // `congestion` with QUIC links is allowed (and ignored by them).
    let text = format!(
        "{}[links]\ntransport = \"quic\"\ncongestion = \"bbr\"\ncount = 2\n",
        static_client()
    );
    let c = client(&text).unwrap();
    assert_eq!(c.transport, LinkTransport::Quic);
    assert_eq!(c.congestion.as_deref(), Some("bbr"));
    assert_eq!(c.links, Links::fixed(2));

    let e = one_error(client(&format!(
        "{}[links]\ntransport = \"udp\"\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("links.transport", Some(13)));
    assert_eq!(
        e.message,
        "\"udp\" is not a link transport (use \"auto\", \"tcp\" or \"quic\")"
    );
    // Names are exact, like every other key.
    let e = one_error(client(&format!(
        "{}[links]\ntransport = \"QUIC\"\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("links.transport", Some(13)));
    // Not a string: a type error from the parser, with key and line.
    let e = one_error(client(&format!(
        "{}[links]\ntransport = 1\n",
        static_client()
    )));
    assert_eq!((e.key.as_str(), e.line), ("links.transport", Some(13)));
    assert!(e.message.contains("invalid type"), "{}", e.message);
    // A bad transport is reported together with the other semantic errors.
    let errs = client(&format!(
        "{}[links]\ntransport = \"udp\"\ncount = 0\n",
        static_client()
    ))
    .unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [("links.transport", Some(13)), ("links.count", Some(14))]
    );
}

#[test]
fn client_dedicated_lanes() {
    // Unset: 2, as lane streams on QUIC links only, so they take no link and fit any count.
    let c = client(&static_client()).unwrap();
    assert_eq!((c.lanes, c.lanes_set), (2, false));
    for links in ["count = 1", "count = 2", "min = 1\nmax = 8"] {
        let c = client(&format!("{}[links]\n{links}\n", static_client())).unwrap();
        assert_eq!((c.lanes, c.lanes_set), (2, false), "{links}");
        c.validate().unwrap();
    }
    for (links, lanes) in [
        ("count = 4", 2),
        ("count = 2", 1),
        ("min = 3\nmax = 8", 2),
        ("", 0),
    ] {
        let text = format!("{}[links]\n{links}\nlanes = {lanes}\n", static_client());
        let c = client(&text).unwrap();
        assert_eq!((c.lanes, c.lanes_set), (lanes, true));
        c.validate().unwrap();
    }
    // Out of range, and too many for links.min (which defaults to 4): line 13, after [links].
    for (text, message) in [
        ("lanes = 3", "3 is out of range 0..=2"),
        ("lanes = -1", "-1 is out of range 0..=2"),
        (
            "lanes = 2\ncount = 2",
            "2 dedicated lanes leave no link for bulk data out of links.min = 2",
        ),
    ] {
        let e = one_error(client(&format!("{}[links]\n{text}\n", static_client())));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("links.lanes", Some(13)),
            "{text}"
        );
        assert_eq!(e.message, message);
    }
    // A config built in code is checked the same way.
    let mut c = client(&static_client()).unwrap();
    c.lanes = 4;
    let errs = c.validate().unwrap_err();
    assert_eq!(keys_lines(&errs), [("links.lanes", None)]);
    let mut c = client(&static_client()).unwrap();
    (c.lanes, c.lanes_set) = (2, true);
    c.links.min = 2;
    let errs = c.validate().unwrap_err();
    assert_eq!(keys_lines(&errs), [("links.lanes", None)]);
}

#[test]
fn server_quic() {
    let c = server(&psk_server()).unwrap();
    assert!(c.quic, "on by default");
    // `quic = VALUE` on line 4, in `[server]`.
    let with_quic = |value: &str| {
        psk_server().replace("node_id = 1\n", &format!("node_id = 1\nquic = {value}\n"))
    };
    for (value, quic) in [("true", true), ("false", false)] {
        let c = server(&with_quic(value)).unwrap();
        assert_eq!(c.quic, quic);
        c.validate().unwrap();
    }
    for value in ["\"yes\"", "1", "\"true\""] {
        let e = one_error(server(&with_quic(value)));
        assert_eq!(
            (e.key.as_str(), e.line),
            ("server.quic", Some(4)),
            "{value}"
        );
        assert!(e.message.contains("invalid type"), "{}", e.message);
        assert!(e.message.contains("bool"), "{}", e.message);
    }
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let id = std::num::NonZeroU16::new(1).unwrap();
    let auth = ServerAuth::PskOnly {
        psk: Psk::from_bytes([1; 32]),
    };
    let svc = Service {
        name: "echo".parse().unwrap(),
        target: "127.0.0.1:7".parse().unwrap(),
    };
    assert!(ServerConfig::new(addr, id, auth, vec![svc]).quic);
}

// ---------------------------------------------------------------------------------------------
// Multihomed nodes: `node.addr` as an array
// ---------------------------------------------------------------------------------------------

/// `static_client()` with line 6 replaced by `addr = VALUE` (VALUE may span lines).
fn client_with_addr(value: &str) -> String {
    static_client().replace("addr = \"203.0.113.10:4480\"", &format!("addr = {value}"))
}

#[test]
fn node_addr_array() {
    let c = client(&client_with_addr(
        "[\"203.0.113.10:4480\", \"b.example.net:4481\", \"[2001:db8::2]:4480\"]",
    ))
    .unwrap();
    let node = c.nodes().next().unwrap();
    let shown: Vec<_> = node.addr.iter().map(|a| a.to_string()).collect();
    assert_eq!(
        shown,
        [
            "203.0.113.10:4480",
            "b.example.net:4481",
            "[2001:db8::2]:4480"
        ],
        "in the order written"
    );
    c.validate().unwrap();

    // An array of one is the same node as the plain string.
    let one = client(&client_with_addr("[\"203.0.113.10:4480\"]")).unwrap();
    let plain = client(&static_client()).unwrap();
    assert_eq!(one.nodes().next(), plain.nodes().next());

    // Elements on lines of their own, with a trailing comma.
    let c = client(&client_with_addr(
        "[\n  \"203.0.113.10:4480\",\n  \"203.0.113.11:4480\",\n]",
    ))
    .unwrap();
    assert_eq!(c.nodes().next().unwrap().addr.len(), 2);
}

#[test]
fn node_addr_array_errors_name_the_element() {
    for (value, key, line, want) in [
        ("[]", "node[0].addr", 6, "empty array"),
        (
            "[\"203.0.113.10:4480\", \"x\"]",
            "node[0].addr[1]",
            6,
            "expected HOST:PORT",
        ),
        (
            "[\n\"203.0.113.10:4480\",\n\"10.0.0.1:0\",\n]",
            "node[0].addr[1]",
            8,
            "invalid port",
        ),
        (
            "[\"203.0.113.10:4480\", \"203.0.113.10:4480\"]",
            "node[0].addr[1]",
            6,
            "listed twice (also node[0].addr[0])",
        ),
        // Parser errors: the value's or the element's type.
        ("7", "node[0].addr", 6, "a host:port string or an array"),
        (
            "[\"203.0.113.10:4480\", 7]",
            "node[0].addr[1]",
            6,
            "invalid type",
        ),
        ("{ a = 1 }", "node[0].addr", 6, "invalid type"),
    ] {
        let e = one_error(client(&client_with_addr(value)));
        assert_eq!((e.key.as_str(), e.line), (key, Some(line)), "{value}");
        assert!(e.message.contains(want), "{value}: {}", e.message);
    }

    // Every address is unique in the file, whichever form each node uses.
    let second = |addr: &str| {
        format!(
            "[[node]]\nid = 2\naddr = {addr}\npublic_key = \"{}\"\n",
            b64(3)
        )
    };
    let first = client_with_addr("[\"203.0.113.10:4480\", \"203.0.113.11:4480\"]");
    let text = first.clone() + &second("\"203.0.113.11:4480\"");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[1].addr", Some(14)));
    assert!(
        e.message.contains("same address as node[0].addr[1]"),
        "{}",
        e.message
    );
    let text = static_client() + &second("[\"203.0.113.12:4480\", \"203.0.113.10:4480\"]");
    let e = one_error(client(&text));
    assert_eq!((e.key.as_str(), e.line), ("node[1].addr[1]", Some(14)));
    assert!(
        e.message.contains("same address as node[0].addr:"),
        "{}",
        e.message
    );

    // Semantic errors in addresses come out together with the others.
    let text = client_with_addr("[\"203.0.113.10:4480\", \"bad\", \"203.0.113.10:4480\"]")
        .replace("id = 1", "id = 0");
    let errs = client(&text).unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [
            ("node[0].id", Some(5)),
            ("node[0].addr[1]", Some(6)),
            ("node[0].addr[2]", Some(6)),
        ]
    );
}

#[test]
fn code_built_node_addrs() {
    assert!(NodeAddrs::new(Vec::new()).is_none());
    let hp = |s: &str| s.parse::<HostPort>().unwrap();
    let node = |id: u16, addrs: &[&str]| Node {
        id: std::num::NonZeroU16::new(id).unwrap(),
        addr: NodeAddrs::new(addrs.iter().map(|a| hp(a)).collect()).unwrap(),
    };
    let map = PortMap {
        listen: "127.0.0.1:7000".parse().unwrap(),
        service: "echo".parse().unwrap(),
        spread: Default::default(),
    };
    let with_nodes = |nodes: Vec<Node>| {
        ClientConfig::new(
            ClientAuth::PskOnly {
                psk: Psk::from_bytes([1; 32]),
                nodes,
            },
            vec![map.clone()],
        )
    };
    with_nodes(vec![
        node(1, &["10.0.0.1:1", "10.0.0.2:1"]),
        node(2, &["10.0.0.3:1"]),
    ])
    .validate()
    .unwrap();
    let errs = with_nodes(vec![
        node(1, &["10.0.0.1:1", "10.0.0.2:1", "10.0.0.1:1"]),
        node(2, &["10.0.0.2:1"]),
    ])
    .validate()
    .unwrap_err();
    let got: Vec<_> = errs
        .iter()
        .map(|e| (e.key.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("node[0].addr[2]", "listed twice (also node[0].addr[0])"),
            (
                "node[1].addr",
                "same address as node[0].addr[1]: an address belongs to one node, list each \
                 node once"
            ),
        ]
    );
}

#[test]
fn session_and_link_caps_parse_and_are_checked() {
    let text = format!(
        "{}[limits]\nmax_sessions = 10\nmax_sessions_per_client = 2\nmax_links_per_session = 3\n",
        psk_server()
    );
    let c = server(&text).unwrap();
    assert_eq!(
        (
            c.limits.max_sessions,
            c.limits.max_sessions_per_client,
            c.limits.max_links_per_session
        ),
        (10, 2, 3)
    );
    for (line, key, message) in [
        (
            "max_sessions = 0",
            "limits.max_sessions",
            "0 is out of range 1..=1000000",
        ),
        (
            "max_sessions_per_client = 1000001",
            "limits.max_sessions_per_client",
            "1000001 is out of range 1..=1000000",
        ),
        (
            "max_links_per_session = 0",
            "limits.max_links_per_session",
            "0 is out of range 1..=100000",
        ),
    ] {
        let e = one_error(server(&format!("{}[limits]\n{line}\n", psk_server())));
        assert_eq!(
            (e.key.as_str(), e.line, e.message.as_str()),
            (key, Some(10), message)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// [cluster] and [[peer]]
// ---------------------------------------------------------------------------------------------

/// A valid static-key server, node 1, with private key `[1; 32]`: lines 1-8 are `[server]`
/// and the service.
fn static_server() -> String {
    format!(
        "[server]\n\
         listen = \"0.0.0.0:4480\"\n\
         node_id = 1\n\
         private_key = \"{}\"\n\
         allowed_clients = [\"{}\"]\n\
         [[service]]\n\
         name = \"game\"\n\
         target = \"10.0.0.5:7000\"\n",
        b64(1),
        b64(2)
    )
}

/// The public key of private key `[byte; 32]`, base64.
fn pub_of(byte: u8) -> String {
    PrivateKey::from_bytes([byte; 32]).public_key().to_base64()
}

/// `static_server()` with a cluster on 10.0.0.1:4481 (lines 9-10) and `peers` as
/// `(id, addr, public key)`, four lines each from line 11.
fn cluster_server(peers: &[(i64, &str, String)]) -> String {
    peers.iter().fold(
        static_server() + "[cluster]\nlisten = \"10.0.0.1:4481\"\n",
        |t, (id, addr, key)| {
            t + &format!("[[peer]]\nid = {id}\naddr = \"{addr}\"\npublic_key = \"{key}\"\n")
        },
    )
}

#[test]
fn cluster_of_three_parses() {
    let dir = temp_dir();
    std::fs::write(dir.join("cluster.psk"), format!("{}\n", b64(8))).unwrap();
    let text = cluster_server(&[
        (2, "10.0.0.2:4481", pub_of(12)),
        (3, "node3.example.net:4481", pub_of(13)),
    ])
    .replace(
        "listen = \"10.0.0.1:4481\"\n",
        "listen = \"10.0.0.1:4481\"\npsk_file = \"cluster.psk\"\n",
    );
    std::fs::write(dir.join("server.toml"), &text).unwrap();
    let c = ServerConfig::load(dir.join("server.toml")).unwrap();
    let cluster = c.cluster.as_ref().expect("a cluster");
    assert_eq!(
        cluster.listen,
        "10.0.0.1:4481".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(cluster.psk, Some(Psk::from_bytes([8; 32])));
    let ids: Vec<_> = cluster.peers.iter().map(|p| p.id.get()).collect();
    assert_eq!(ids, [2, 3]);
    assert_eq!(cluster.peers[1].addr.to_string(), "node3.example.net:4481");
    assert_eq!(
        cluster.peers[0].public_key,
        PrivateKey::from_bytes([12; 32]).public_key()
    );
    c.validate().unwrap();
    std::fs::remove_dir_all(dir).unwrap();

    // No [cluster]: none, as before.
    assert!(server(&static_server()).unwrap().cluster.is_none());
}

#[test]
fn cluster_rules_name_key_and_line() {
    let two = |a: (i64, &str, String), b: (i64, &str, String)| server(&cluster_server(&[a, b]));
    let ok = || (2, "10.0.0.2:4481", pub_of(12));

    // A peer with this node's id.
    let e = one_error(server(&cluster_server(&[(1, "10.0.0.2:4481", pub_of(12))])));
    assert_eq!((e.key.as_str(), e.line), ("peer[0].id", Some(12)));
    assert!(e.message.contains("node_id"), "{}", e.message);

    // A peer with this node's key.
    let e = one_error(server(&cluster_server(&[(2, "10.0.0.2:4481", pub_of(1))])));
    assert_eq!((e.key.as_str(), e.line), ("peer[0].public_key", Some(14)));
    assert!(e.message.contains("own"), "{}", e.message);

    // A peer with a client's key (allowed_clients holds the public key b64(2)).
    let e = one_error(server(&cluster_server(&[(2, "10.0.0.2:4481", b64(2))])));
    assert_eq!((e.key.as_str(), e.line), ("peer[0].public_key", Some(14)));
    assert!(e.message.contains("allowed_clients"), "{}", e.message);

    // Duplicate id, address, key: each on the second peer, naming the first.
    for (second, key, line) in [
        ((2, "10.0.0.3:4481", pub_of(13)), "peer[1].id", 16),
        ((3, "10.0.0.2:4481", pub_of(13)), "peer[1].addr", 17),
        ((3, "10.0.0.3:4481", pub_of(12)), "peer[1].public_key", 18),
    ] {
        let e = one_error(two(ok(), second));
        assert_eq!((e.key.as_str(), e.line), (key, Some(line)));
        assert!(e.message.contains("also peer[0]"), "{}", e.message);
    }

    // The cluster listener on the client listener (0.0.0.0:4480 covers 10.0.0.1:4480).
    let text = cluster_server(&[ok()]).replace("10.0.0.1:4481", "10.0.0.1:4480");
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("cluster.listen", Some(10)));
    assert!(e.message.contains("server.listen"), "{}", e.message);

    // Peers without [cluster]: reported at the first peer.
    let text = static_server()
        + &format!(
            "[[peer]]\nid = 2\naddr = \"10.0.0.2:4481\"\npublic_key = \"{}\"\n",
            pub_of(12)
        );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("cluster", Some(9)));
    assert!(e.message.contains("[cluster] is missing"), "{}", e.message);

    // [cluster] without peers.
    let e = one_error(server(&cluster_server(&[])));
    assert_eq!((e.key.as_str(), e.line), ("peer", Some(9)));

    // A cluster on a PSK-only node: no static key to authenticate with.
    let text = psk_server()
        + &format!(
            "[cluster]\nlisten = \"10.0.0.1:4481\"\n[[peer]]\nid = 2\naddr = \"10.0.0.2:4481\"\n\
             public_key = \"{}\"\n",
            pub_of(12)
        );
    let e = one_error(server(&text));
    assert_eq!((e.key.as_str(), e.line), ("cluster", Some(9)));
    assert!(e.message.contains("static-key mode"), "{}", e.message);
}

/// Every rule that can be checked is, whatever else failed: a bad PSK, a bad `relay_queue`, a
/// bad `server.listen` or a duplicate service do not hide the peers' mistakes.
#[test]
fn cluster_rules_are_checked_beside_other_errors() {
    // peer[0] has this node's id, peer[1] peer[0]'s address.
    let peers = cluster_server(&[
        (1, "10.0.0.2:4481", pub_of(12)),
        (3, "10.0.0.2:4481", pub_of(13)),
    ]);
    let expected = [("peer[0].id", Some(12)), ("peer[1].addr", Some(17))];
    for (what, text, first) in [
        (
            "relay_queue",
            peers.replace("[cluster]\n", "[cluster]\nrelay_queue = 1\n"),
            ("cluster.relay_queue", Some(10)),
        ),
        (
            "psk",
            peers.replace("[cluster]\n", "[cluster]\npsk = \"notbase64\"\n"),
            ("cluster.psk", Some(10)),
        ),
        (
            "server.listen",
            peers.replace("0.0.0.0:4480", "0.0.0.0"),
            ("server.listen", Some(2)),
        ),
    ] {
        let errs = server(&text).unwrap_err();
        let got = keys_lines(&errs);
        assert!(got.contains(&first), "{what}: {got:?}");
        for e in &expected {
            // One line lower where a line was inserted above the peers.
            let moved = (
                e.0,
                e.1.map(|l| if what == "server.listen" { l } else { l + 1 }),
            );
            assert!(got.contains(&moved), "{what}: {moved:?} not in {got:?}");
        }
    }
    // A peer that did not convert leaves the others checked.
    let text = peers.replace("id = 3", "id = 0");
    let errs = server(&text).unwrap_err();
    let got = keys_lines(&errs);
    assert!(got.contains(&("peer[0].id", Some(12))), "{got:?}");
    assert!(got.contains(&("peer[1].id", Some(16))), "{got:?}");
}

#[test]
fn cluster_field_errors_name_key_and_line() {
    let text = static_server()
        + "[cluster]\npsk = \"short\"\n[[peer]]\nid = 0\naddr = \"10.0.0.2\"\n\
           public_key = \"!!\"\n[[peer]]\n";
    let errs = server(&text).unwrap_err();
    assert_eq!(
        keys_lines(&errs),
        [
            ("cluster.listen", Some(9)),
            ("cluster.psk", Some(10)),
            ("peer[0].id", Some(12)),
            ("peer[0].addr", Some(13)),
            ("peer[0].public_key", Some(14)),
            ("peer[1].id", Some(15)),
            ("peer[1].addr", Some(15)),
            ("peer[1].public_key", Some(15)),
        ]
    );
    // The PSK's text is never quoted.
    assert!(!errs.to_string().contains("short"), "{errs}");

    let text = cluster_server(&[(2, "10.0.0.2:4481", pub_of(12))])
        .replace("[cluster]\n", "[cluster]\nport = 1\n");
    let e = one_error(server(&text));
    assert!(e.message.contains("port"), "{}", e.message);
}

#[test]
fn cluster_relay_queue() {
    let base = |extra: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:4480\"\nnode_id = 1\nprivate_key = \"{}\"\n\
             allowed_clients = [\"{}\"]\n\n[cluster]\nlisten = \"127.0.0.1:4481\"\n{extra}\n\
             [[peer]]\nid = 2\naddr = \"127.0.0.1:4482\"\npublic_key = \"{}\"\n\n\
             [[service]]\nname = \"game\"\ntarget = \"127.0.0.1:7000\"\n",
            b64(1),
            PrivateKey::from_bytes([2; 32]).public_key().to_base64(),
            PrivateKey::from_bytes([3; 32]).public_key().to_base64(),
        )
    };
    let c = server(&base("")).unwrap();
    assert_eq!(c.cluster.unwrap().relay_queue, Cluster::DEFAULT_RELAY_QUEUE);
    let c = server(&base("relay_queue = 1048576")).unwrap();
    assert_eq!(c.cluster.unwrap().relay_queue, 1 << 20);
    let e = one_error(server(&base("relay_queue = 1000")));
    assert_eq!((e.key.as_str(), e.line), ("cluster.relay_queue", Some(9)));
    assert_eq!(e.message, "1000 is out of range 65536..=1073741824");
}

#[test]
fn code_built_cluster_validates() {
    let mut c = server(&static_server()).unwrap();
    let peer = |id: u16, addr: &str, key: u8| Peer {
        id: std::num::NonZeroU16::new(id).unwrap(),
        addr: addr.parse().unwrap(),
        public_key: PrivateKey::from_bytes([key; 32]).public_key(),
    };
    c.cluster = Some(Cluster {
        listen: "127.0.0.1:0".parse().unwrap(),
        relay_queue: Cluster::DEFAULT_RELAY_QUEUE,
        psk: None,
        peers: vec![peer(2, "127.0.0.1:9", 12), peer(3, "127.0.0.1:10", 13)],
    });
    c.validate().unwrap();

    c.cluster = Some(Cluster {
        listen: "[::]:4480".parse().unwrap(),
        relay_queue: Cluster::DEFAULT_RELAY_QUEUE,
        psk: None,
        peers: vec![
            peer(1, "127.0.0.1:9", 1),
            peer(1, "127.0.0.1:9", 1),
            peer(4, "127.0.0.1:11", 14),
        ],
    });
    let errs = c.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "cluster.listen",
            "peer[0].id",
            "peer[0].public_key",
            "peer[1].id",
            "peer[1].public_key",
            "peer[1].id",
            "peer[1].addr",
            "peer[1].public_key",
        ]
    );
    assert!(errs.iter().all(|e| e.line.is_none()));

    c.cluster.as_mut().unwrap().peers.clear();
    let errs = c.validate().unwrap_err();
    let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["cluster.listen", "peer"]);
}

#[test]
fn the_control_socket_is_read_from_a_file_that_does_not_load() {
    let dir = temp_dir();
    let file = dir.join("broken.toml");
    std::fs::write(
        &file,
        "[control]\nsocket = \"run/node.sock\"\n[server]\nlisten = 1\n",
    )
    .unwrap();
    assert!(ServerConfig::load(&file).is_err());
    assert_eq!(control_socket_in(&file), Some(dir.join("run/node.sock")));
    std::fs::write(&file, "[server]\nlisten = 1\n").unwrap();
    assert_eq!(control_socket_in(&file), None, "no [control]");
    std::fs::write(&file, "[control\nsocket = \"x\"\n").unwrap();
    assert_eq!(control_socket_in(&file), None, "not TOML");
    assert_eq!(control_socket_in(&dir.join("missing.toml")), None);
}

/// The `sha256:` entries of `allowed_clients` that cannot be: each error one sentence, without
/// the runs of spaces a string broken over lines once left in them.
#[test]
fn sha256_entry_errors_read_as_sentences() {
    let entry =
        |e: &str| static_server().replace(&format!("\"{}\"]", b64(2)), &format!("\"{e}\"]"));
    let good = format!("sha256:{}", b64(7));
    for (text, says) in [
        (entry(&good), "it needs [tls] with client_ca_file"),
        (
            entry("sha256:AAAA"),
            "SHA-256 of a certificate's public key",
        ),
    ] {
        let errs = server(&text).unwrap_err();
        let shown = errs.to_string();
        assert!(shown.contains(says), "{shown}");
        assert!(!shown.contains("  "), "{shown}");
    }
}

/// A key or config file that is a FIFO (or a device) is an error at once: reading it would
/// block `check`, or a running daemon's reload, until someone opened its other end (a trial's
/// node ignored SIGTERM and answered no `status` so).
#[test]
fn a_fifo_as_key_or_config_file_is_an_error_not_a_wait() {
    let dir = temp_dir();
    let fifo = dir.join("fifo.key");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success());
    let text = psk_server().replace(
        "node_id = 1\n",
        &format!(
            "node_id = 1\nprivate_key_file = \"{}\"\nallowed_clients = [\"{}\"]\n",
            fifo.display(),
            b64(2)
        ),
    );
    let e = one_error(server(&text));
    assert_eq!(
        (e.key.as_str(), e.line),
        ("server.private_key_file", Some(4))
    );
    assert!(e.message.contains("not a regular file"), "{}", e.message);
    // The config file itself.
    let errs = ServerConfig::load(&fifo).unwrap_err();
    assert!(errs.to_string().contains("not a regular file"), "{errs}");
    std::fs::remove_dir_all(dir).unwrap();
}
