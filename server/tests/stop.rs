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
use wanmux_config::LinkTransport;
use wanmux_relay::UdpRelay;
use wanmux_tests::harness::{
    eventually, is_listening, point_client_at, psk_node_file, read_end, within, ReadEnd,
};
use wanmux_tests::process::Daemon;

/// A node process serving `service` (PSK-only mode, control socket in `dir`) and an in-process
/// client of it over `transport`, with its links up.
async fn node_and_client(
    name: &str,
    service: std::net::SocketAddr,
    transport: LinkTransport,
) -> (Daemon, wanmux_client::ClientHandle) {
    let (node, client, _) = node_and_client_via(name, service, transport, false).await;
    (node, client)
}

/// [`node_and_client`], the client's QUIC links going through a [`UdpRelay`] if `relayed`.
async fn node_and_client_via(
    name: &str,
    service: std::net::SocketAddr,
    transport: LinkTransport,
    relayed: bool,
) -> (Daemon, wanmux_client::ClientHandle, Option<UdpRelay>) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let (config, addr, mut client) = psk_node_file(&dir, service, "", 2);
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
    let relay = match relayed {
        true => Some(UdpRelay::start(addr).await.expect("UDP relay starts")),
        false => None,
    };
    point_client_at(&mut client, relay.as_ref().map_or(addr, UdpRelay::addr));
    client.transport = transport;
    let client = wanmux_client::start(client).await.expect("client starts");
    client.wait_for_links(2).await;
    (node, client, relay)
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

/// A node that stops closes its QUIC links only once the client acknowledged what their
/// streams carried: a QUIC connection's close discards what is not yet delivered. Here the path
/// loses everything the node sends for 100 ms from the second signal on: without the wait the
/// `RESET`s went with it, and the application waited for the client's grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_s_resets_survive_a_lossy_moment_on_quic() {
    second_signal_lossy("stop-twice-lossy", LinkTransport::Quic, true).await;
}

/// Two signals to a node with one connection open over `transport`: both ends are reset at
/// once.
async fn second_signal(name: &str, transport: LinkTransport) {
    second_signal_lossy(name, transport, false).await;
}

/// [`second_signal`], the path from the node to the client losing everything for 100 ms from
/// the second signal on if `lossy` (QUIC only).
async fn second_signal_lossy(name: &str, transport: LinkTransport, lossy: bool) {
    within(Duration::from_secs(60), async {
        let service = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind service");
        let (node, client, relay) =
            node_and_client_via(name, service.local_addr().unwrap(), transport, lossy).await;

        // One connection, both ends seen connected.
        let mut app = TcpStream::connect(client.first_addr()).await.unwrap();
        app.write_all(b"hello").await.unwrap();
        let (mut svc, _) = service.accept().await.unwrap();
        let mut buf = [0u8; 5];
        svc.read_exact(&mut buf).await.unwrap();
        svc.write_all(b"world").await.unwrap();
        app.read_exact(&mut buf).await.unwrap();

        signal(&node, "-INT");
        // Two signals that arrive before the node has read the first are one signal to it (a
        // drain, not its end): the second goes once the node drains, as its client heard.
        assert!(
            eventually(Duration::from_secs(10), || client.peer_draining(1)).await,
            "the node drains after the first signal"
        );
        if let Some(relay) = &relay {
            relay.drop_from_node_for(Duration::from_millis(100));
        }
        signal(&node, "-INT");
        tokio::time::sleep(Duration::from_millis(200)).await;
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
/// links end at once, not at their next keepalive (10 s) and its timeout, and it heard the node
/// drain first (`DRAINING`, then the links' ends, each delivered before the connection closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_s_quic_links_end_at_once() {
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
        assert!(node.wait().success(), "the node stops");
        assert!(
            eventually(Duration::from_secs(3), || client.live_links() == 0).await,
            "the client's QUIC links to the stopped node are still up"
        );
        assert!(client.peer_draining(1), "the client heard the node drain");
        client.shutdown();
    })
    .await;
}

/// A node that dies (kill -9, as an out-of-memory kill, a panic or the watchdog would end it)
/// leaves its service sockets to the kernel, which resets them: each stream's socket is armed
/// with `SO_LINGER` 0 until its orderly end. Before, the kernel closed them with a FIN, and a
/// trial's sink took 9.6 MiB of a 30 MiB upload for a complete one. A stream that had ended in
/// order before the kill keeps its clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_service_connections_are_reset() {
    within(Duration::from_secs(60), async {
        let service = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind service");
        let (mut node, client) = node_and_client(
            "kill-node",
            service.local_addr().unwrap(),
            LinkTransport::Tcp,
        )
        .await;
        // One connection that ended in order, one cut off by the kill.
        let mut done = TcpStream::connect(client.first_addr()).await.unwrap();
        done.write_all(b"done").await.unwrap();
        done.shutdown().await.unwrap();
        let (mut done_svc, _) = service.accept().await.unwrap();
        let mut all = Vec::new();
        done_svc.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"done");
        let mut app = TcpStream::connect(client.first_addr()).await.unwrap();
        app.write_all(b"hello").await.unwrap();
        let (mut svc, _) = service.accept().await.unwrap();
        let mut buf = [0u8; 5];
        svc.read_exact(&mut buf).await.unwrap();
        node.kill();
        assert_eq!(
            read_end(&mut svc, Duration::from_secs(5)).await,
            ReadEnd::Reset,
            "the service sees its cut-off connection reset"
        );
        client.shutdown();
    })
    .await;
}
