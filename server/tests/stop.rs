//! `wanmux-server run` stopped by two signals (a drain cut short) while a connection is open:
//! the connection is reset at once at both ends. The node resets its streams, its links carry
//! the `RESET`s to the client before they close, and its service sockets close with an RST. A
//! process that simply exited dropped its sockets (a FIN: the service read a clean end of
//! stream) and told the client nothing, whose application then waited out the client's grace.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wanmux_config::{ClientAuth, LinkTransport};
use wanmux_tests::harness::{
    configs, eventually, free_port, is_listening, point_client_at, read_end, within, Auth, ReadEnd,
    SERVICE,
};
use wanmux_tests::mesh::LogCapture;
use wanmux_tests::process::Daemon;

/// A node process serving `service` (PSK-only mode, control socket in `dir`) and an in-process
/// client of it over `transport`, with its links up.
async fn node_and_client(
    name: &str,
    service: std::net::SocketAddr,
    transport: LinkTransport,
) -> (Daemon, wanmux_client::ClientHandle) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (_, mut client) = configs(Auth::Psk, service, 2);
    let ClientAuth::PskOnly { psk, .. } = &client.auth else {
        unreachable!("PSK-only configs")
    };
    let addr = free_port();
    let config = dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{addr}\"\nnode_id = 1\npsk = \"{}\"\n\n\
             [[service]]\nname = \"{SERVICE}\"\ntarget = \"{service}\"\n\n\
             [control]\nsocket = \"node.sock\"\n",
            psk.to_base64(),
        ),
    )
    .expect("write node config");
    let node = Daemon::spawn(
        Command::new(env!("CARGO_BIN_EXE_wanmux-server"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
    );
    assert!(
        eventually(Duration::from_secs(10), || is_listening(addr)).await,
        "the node listens"
    );
    point_client_at(&mut client, addr);
    client.transport = transport;
    let client = wanmux_client::start(client).await.expect("client starts");
    client.wait_for_links(2).await;
    (node, client)
}

/// Sends `signal` (`-INT`, `-TERM`) to `node`.
fn signal(node: &Daemon, signal: &str) {
    let sent = Command::new("kill")
        .args([signal, &node.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_resets_the_open_connections_at_both_ends_at_once() {
    second_signal("stop-twice", LinkTransport::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_resets_the_open_connections_at_both_ends_at_once_over_quic() {
    second_signal("stop-twice-quic", LinkTransport::Quic).await;
}

/// Two signals to a node with one connection open over `transport`: both ends are reset at
/// once.
async fn second_signal(name: &str, transport: LinkTransport) {
    within(Duration::from_secs(60), async {
        let service = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind service");
        let (node, client) = node_and_client(name, service.local_addr().unwrap(), transport).await;

        // One connection, both ends seen connected.
        let mut app = TcpStream::connect(client.first_addr()).await.unwrap();
        app.write_all(b"hello").await.unwrap();
        let (mut svc, _) = service.accept().await.unwrap();
        let mut buf = [0u8; 5];
        svc.read_exact(&mut buf).await.unwrap();
        svc.write_all(b"world").await.unwrap();
        app.read_exact(&mut buf).await.unwrap();

        for _ in 0..2 {
            signal(&node, "-INT");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let stopped = Instant::now();
        let (a, s) = tokio::join!(
            read_end(&mut app, Duration::from_secs(5)),
            read_end(&mut svc, Duration::from_secs(5)),
        );
        assert_eq!(
            (a, s),
            (ReadEnd::Reset, ReadEnd::Reset),
            "the application and the service see a reset"
        );
        assert!(stopped.elapsed() < Duration::from_secs(5));
        client.shutdown();
        drop(node);
    })
    .await;
}

/// A node that stops closes its QUIC links with a CONNECTION_CLOSE: the client sees its idle
/// links end at once, not at their next keepalive (10 s) and its timeout, and its log says that
/// the node drained and closed them (quinn's own error says "connection lost").
#[tokio::test]
async fn a_stopped_node_s_quic_links_end_at_once() {
    let log = LogCapture::start();
    within(Duration::from_secs(60), async {
        let service = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind service");
        let (mut node, client) = node_and_client(
            "stop-quic",
            service.local_addr().unwrap(),
            LinkTransport::Quic,
        )
        .await;
        signal(&node, "-TERM");
        // Waited for off this thread: the client runs on it.
        let stopped = tokio::task::spawn_blocking(move || node.wait());
        assert!(stopped.await.unwrap().success(), "the node stops");
        assert!(
            eventually(Duration::from_secs(3), || client.live_links() == 0).await,
            "the client's QUIC links to the stopped node are still up"
        );
        log.wait_for(&["the peer is draining"], Duration::from_secs(1))
            .await;
        log.wait_for(
            &["link ended", "end=closed by peer"],
            Duration::from_secs(1),
        )
        .await;
        assert!(
            log.find(&["connection lost"]).is_none(),
            "{:#?}",
            log.lines()
        );
        client.shutdown();
    })
    .await;
}
