//! A client keeps file descriptors in reserve for its links (issue 23, a trial's finding):
//! application connections that would take the open descriptors into the reserve of the limit
//! are refused with a reset (counted as `file_limit`), so that a link lost meanwhile can be
//! dialled again. Before, connections to a mapped port took every descriptor, and the client
//! logged `Too many open files` for each redial while its connections waited on a link that
//! never came back.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::net::TcpStream;
use wanmux_config::ClientAuth;
use wanmux_relay::{Links, Relay, Shape};
use wanmux_tests::harness::{
    app_server, configs, eventually, free_port, read_end, transfer_on, within, Auth, ReadEnd,
    SERVICE,
};
use wanmux_tests::process::Daemon;

/// The client's descriptor limit: its own (runtime, listener, links, control socket) take
/// about twenty, its reserve 16 (an eighth, at least 16), the connections the rest.
const NOFILE: u32 = 64;

/// The client's `status --json`, if it answered with JSON.
fn status_json(socket: &Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_wanmux-client"))
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .expect("status runs");
    serde_json::from_slice(&out.stdout).ok()
}

/// Links up, as the client's `status --json` counts them.
fn links_up(socket: &Path) -> u64 {
    let Some(st) = status_json(socket) else {
        return 0;
    };
    st["sessions"].as_array().map_or(0, |s| {
        s.iter()
            .filter_map(|s| s["links"].as_array())
            .map(|l| l.len() as u64)
            .sum()
    })
}

/// The client's count of connections it refused at the file limit.
fn refused_at_limit(socket: &Path) -> u64 {
    let st = status_json(socket).expect("status JSON");
    st["stream_refusals"]["file_limit"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_file_limit_keeps_room_to_dial_its_links_again() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        panic!("prlimit (util-linux) is needed to start the client with few file descriptors");
    }
    within(Duration::from_secs(90), async {
        let mut app = app_server().await;
        let (server_config, client_config) = configs(Auth::Psk, app.addr, 2);
        let server = wanmux_server::start(server_config)
            .await
            .expect("node starts");
        let relay = Relay::start(server.local_addr(), Shape::default())
            .await
            .expect("relay");
        let ClientAuth::PskOnly { psk, .. } = &client_config.auth else {
            unreachable!("PSK-only configs")
        };
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("client-fd-limit");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (map, socket) = (free_port(), dir.join("client.sock"));
        let config = dir.join("client.toml");
        std::fs::write(
            &config,
            format!(
                "[client]\npsk = \"{}\"\n[[node]]\nid = 1\naddr = \"{}\"\n\
                 [links]\ncount = 2\ntransport = \"tcp\"\n\
                 [[map]]\nlisten = \"{map}\"\nservice = \"{SERVICE}\"\n\
                 [control]\nsocket = \"{}\"\n",
                psk.to_base64(),
                relay.addr(),
                socket.display()
            ),
        )
        .expect("client config");
        let _client = Daemon::spawn(
            Command::new("prlimit")
                .arg(format!("--nofile={NOFILE}:{NOFILE}"))
                .arg("--")
                .arg(env!("CARGO_BIN_EXE_wanmux-client"))
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("client.log")).unwrap()),
        );
        assert!(
            eventually(Duration::from_secs(15), || links_up(&socket) == 2).await,
            "the client's links come up"
        );

        // Connections held open until the client refuses new ones.
        let mut held = Vec::new();
        let mut reset = 0;
        for _ in 0..80 {
            let mut tcp = match TcpStream::connect(map).await {
                Ok(tcp) => tcp,
                // The reset came before the connect's completion was read.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    reset += 1;
                    continue;
                }
                Err(e) => panic!("connect: {e}"),
            };
            match read_end(&mut tcp, Duration::from_millis(100)).await {
                ReadEnd::Hang => held.push(tcp),
                _ => reset += 1,
            }
        }
        println!("{} connections held, {reset} refused", held.len());
        assert!(held.len() >= 10, "{} held", held.len());
        assert!(reset >= 10, "{reset} refused");
        assert!(refused_at_limit(&socket) >= 10);

        // The links die; with every connection still held, they are dialled again.
        relay.reset(Links::All);
        assert!(
            eventually(Duration::from_secs(20), || relay.accepted() >= 4
                && links_up(&socket) == 2)
            .await,
            "the links came back: {} dialled, {} up (client log: {})",
            relay.accepted(),
            links_up(&socket),
            std::fs::read_to_string(dir.join("client.log")).unwrap_or_default()
        );
        // A held connection carries a transfer, hashes compared both ways: the first one, made
        // while the client had descriptors to spare. A late one may be a refusal whose reset
        // came after the 100 ms the loop waited for it (a loaded machine), counted as held.
        let tcp = held.remove(0);
        let r = transfer_on(tcp, 100_000, 100_000, 3)
            .await
            .expect("a transfer on a held connection");
        let a = app.results.recv().await.expect("app server result");
        assert_eq!((a.received, a.sent), (r.sent, r.received));
        drop(held);
        server.shutdown();
    })
    .await;
}
