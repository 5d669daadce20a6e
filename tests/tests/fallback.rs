//! `links.transport = "auto"` (the default): links run over QUIC where the node answers it, and
//! fall back to TCP, with a `warn` line naming why, where it does not: a node with
//! `server.quic = false`, and a node whose UDP is dropped on the way (a socket at the node's
//! address and port that reads every datagram and answers none). Every case moves data both
//! ways and compares hashes.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::UdpSocket;
use wanmux_config::LinkTransport;
use wanmux_relay::{Relay, Shape, UdpRelay};
use wanmux_tests::harness::{within, Auth, Tunnel};
use wanmux_tests::logs::{self, Logs};

const LINKS: u16 = 4;
const LIMIT: Duration = Duration::from_secs(90);
const WARN_PARTS: [&str; 3] = [
    "WARN",
    "wanmux_client::carrier",
    "run over TCP instead of QUIC",
];

/// Starts a tunnel whose client runs the default transport, with `front` between it and the
/// node, and checks a transfer both ways.
async fn auto_tunnel<R>(
    quic_on_node: bool,
    front: impl AsyncFnOnce(SocketAddr) -> (R, Vec<SocketAddr>),
) -> (Tunnel, R) {
    let (mut t, r) = Tunnel::start_fronted(
        Auth::Static { psk: false },
        LINKS,
        |server, client| {
            server.quic = quic_on_node;
            client.transport = LinkTransport::default();
        },
        front,
    )
    .await;
    assert_eq!(t.client_config.transport, LinkTransport::Auto);
    t.check_transfer(2 << 20, 3 << 20, 1).await;
    t.check_concurrent(8, 256 << 10, 256 << 10).await;
    let status = t.client.status();
    let links: Vec<_> = status.sessions.iter().flat_map(|s| &s.links).collect();
    let lanes = links.iter().filter(|l| l.lane).count();
    let quic = links.iter().all(|l| l.transport.as_deref() == Some("quic"));
    assert_eq!(lanes, if quic { DEFAULT_LANES } else { 0 }, "{status:?}");
    assert_eq!(t.client.live_links(), usize::from(LINKS) + lanes);
    (t, r)
}

/// The default `links.lanes`: lane streams beside 2 of the QUIC links, none on TCP links.
const DEFAULT_LANES: usize = 2;

/// Every link in `t`'s status, on both ends, runs over `transport`; the client's go to `addr`.
fn links_run_over(t: &Tunnel, transport: &str, addr: &str) {
    let client = t.client.status();
    let server = t.server.status();
    let lanes = if transport == "quic" {
        DEFAULT_LANES
    } else {
        0
    };
    let links: Vec<_> = client.sessions.iter().flat_map(|s| &s.links).collect();
    assert_eq!(links.len(), usize::from(LINKS) + lanes);
    assert_eq!(links.iter().filter(|l| l.lane).count(), lanes);
    for l in links {
        assert_eq!(l.transport.as_deref(), Some(transport), "{l:?}");
        assert_eq!(l.address.as_deref(), Some(addr), "{l:?}");
    }
    let links: Vec<_> = server.sessions.iter().flat_map(|s| &s.links).collect();
    assert_eq!(links.len(), usize::from(LINKS) + lanes);
    assert_eq!(links.iter().filter(|l| l.lane).count(), lanes);
    for l in links {
        assert_eq!(l.transport.as_deref(), Some(transport), "{l:?}");
        assert!(l
            .address
            .as_deref()
            .is_some_and(|a| a.starts_with("127.0.0.1:")));
    }
    assert!(t
        .client
        .status()
        .to_text()
        .contains(&format!(" {transport} ")));
}

/// No line about a fallback of `addr` after `mark`.
fn no_fallback_warning(logs: &Logs, mark: usize, addr: &str) {
    assert!(
        logs.since(mark)
            .iter()
            .all(|l| !(l.contains("instead of QUIC") && l.contains(addr))),
        "no fallback line"
    );
}

/// The one `warn` line about the fallback of `addr`, after `mark`, with `parts`. (The tests of
/// this file run at once and log to the same place; their addresses differ.)
fn fallback_warning(logs: &Logs, mark: usize, addr: &str, parts: &[&str]) -> String {
    let lines: Vec<String> = logs
        .since(mark)
        .into_iter()
        .filter(|l| WARN_PARTS.iter().all(|p| l.contains(p)) && l.contains(addr))
        .collect();
    assert_eq!(lines.len(), 1, "one line for the node address: {lines:#?}");
    for p in parts {
        assert!(lines[0].contains(p), "{p:?} in {}", lines[0]);
    }
    lines[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_quic_gets_tcp_links() {
    let logs = logs::capture("info");
    within(LIMIT, async {
        let mark = logs.mark();
        let (t, ()) = auto_tunnel(false, async |server| ((), vec![server])).await;
        let addr = t.server.local_addr().to_string();
        assert_eq!(t.client.tcp_fallbacks(), vec![addr.clone()]);
        fallback_warning(
            &logs,
            mark,
            &addr,
            &["server.quic = false", "no QUIC answer"],
        );
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

/// A TCP relay to the node with a UDP socket on the same port that swallows every datagram:
/// the node's address with UDP dropped on the way.
struct UdpDropped {
    relay: Relay,
    sink: std::sync::Arc<UdpSocket>,
    swallowed: std::sync::Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpDropped {
    async fn start(node: SocketAddr) -> UdpDropped {
        for _ in 0..16 {
            let relay = Relay::start(node, Shape::default()).await.expect("relay");
            // The relay's TCP port may be taken for UDP; then take another.
            let Ok(sink) = UdpSocket::bind(relay.addr()).await else {
                continue;
            };
            let sink = std::sync::Arc::new(sink);
            let swallowed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let task = tokio::spawn({
                let (sink, swallowed) = (sink.clone(), swallowed.clone());
                async move {
                    let mut buf = vec![0u8; 65536];
                    while sink.recv_from(&mut buf).await.is_ok() {
                        swallowed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
            return UdpDropped {
                relay,
                sink,
                swallowed,
                task,
            };
        }
        panic!("no port free for both TCP and UDP");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_udp_is_dropped_gets_tcp_links() {
    let logs = logs::capture("info");
    within(LIMIT, async {
        let mark = logs.mark();
        let (t, front) = auto_tunnel(true, async |server| {
            let front = UdpDropped::start(server).await;
            let addr = front.relay.addr();
            (front, vec![addr])
        })
        .await;
        let addr = front.relay.addr().to_string();
        assert_eq!(front.sink.local_addr().unwrap(), front.relay.addr());
        assert!(
            front.swallowed.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "QUIC was tried first"
        );
        assert_eq!(
            front.relay.accepted(),
            usize::from(LINKS),
            "the links are TCP"
        );
        assert_eq!(t.client.tcp_fallbacks(), vec![addr.clone()]);
        links_run_over(&t, "tcp", &addr);
        fallback_warning(&logs, mark, &addr, &["UDP to", "is blocked"]);
        front.task.abort();
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_answers_quic_gets_quic_links() {
    let logs = logs::capture("info");
    within(LIMIT, async {
        let mark = logs.mark();
        // Only UDP reaches the node at the client's address (a UDP relay; TCP there is refused),
        // so links can only be QUIC.
        let (t, relay) = auto_tunnel(true, async |server| {
            let quic = UdpRelay::start(server).await.expect("UDP relay");
            let addr = quic.addr();
            (quic, vec![addr])
        })
        .await;
        let addr = relay.addr().to_string();
        assert!(relay.forwarded() > 0);
        assert_eq!(relay.connections(), usize::from(LINKS));
        assert!(t.client.tcp_fallbacks().is_empty());
        links_run_over(&t, "quic", &addr);
        no_fallback_warning(&logs, mark, &addr);
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}

/// A node whose QUIC does not answer the client's first dial (here: its answers are lost for
/// the first 3.5 s; in life, a node that comes up during that dial, after a restart or after
/// the client) while TCP then works: QUIC is asked once more before the address falls back, and
/// answers, so the links are QUIC and nothing warns of blocked UDP. A trial saw a node restart
/// leave a client on TCP links for 10 minutes, with a warning that sent its operator to the
/// firewall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_that_answers_late_is_no_reason_to_fall_back() {
    let logs = logs::capture("info");
    within(LIMIT, async {
        let mark = logs.mark();
        let (t, (tcp, quic)) = auto_tunnel(true, async |server| {
            for _ in 0..16 {
                let tcp = Relay::start(server, Shape::default()).await.expect("relay");
                // The relay's TCP port may be taken for UDP; then take another.
                let Ok(quic) = UdpRelay::start_on(tcp.addr(), server).await else {
                    continue;
                };
                quic.drop_from_node_for(Duration::from_millis(3500));
                let addr = tcp.addr();
                return ((tcp, quic), vec![addr]);
            }
            panic!("no port free for both TCP and UDP");
        })
        .await;
        let addr = tcp.addr().to_string();
        assert!(quic.connections() > 0);
        assert!(
            t.client.tcp_fallbacks().is_empty(),
            "{:?}",
            t.client.tcp_fallbacks()
        );
        links_run_over(&t, "quic", &addr);
        no_fallback_warning(&logs, mark, &addr);
        t.client.shutdown();
        t.server.shutdown();
    })
    .await;
}
