//! A node's QUIC listener under a flood of QUIC Initial packets from addresses that never answer
//! (what spoofed source addresses look like): a real client still connects and moves data, and a
//! link's handshake, QUIC and Noise together, ends within one handshake timeout.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wanmux_config::LinkTransport;
use wanmux_tests::harness::{init_tracing, panics, within, Auth, Tunnel};

const LIMIT: Duration = Duration::from_secs(90);

/// A QUIC client's first datagram (an Initial with a TLS ClientHello for ALPN `wanmux/2` and
/// `wanmux/1`), a
/// new connection each time, written by quinn-proto without an endpoint behind it.
struct Initials {
    endpoint: quinn_proto::Endpoint,
    config: quinn_proto::ClientConfig,
}

impl Initials {
    fn new() -> Initials {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            // The server's certificate is never seen: the flood sends only the first packet.
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"wanmux/2".to_vec(), b"wanmux/1".to_vec()];
        let crypto = quinn_proto::crypto::rustls::QuicClientConfig::try_from(tls).expect("QUIC");
        Initials {
            endpoint: quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                true,
                None,
            ),
            config: quinn_proto::ClientConfig::new(Arc::new(crypto)),
        }
    }

    /// The first datagram of a new connection to `server`.
    fn next(&mut self, server: SocketAddr) -> Vec<u8> {
        let now = Instant::now();
        let (_, mut conn) = self
            .endpoint
            .connect(now, self.config.clone(), server, "wanmux")
            .expect("connect");
        let mut buf = Vec::new();
        let t = conn
            .poll_transmit(now, 1, &mut buf)
            .expect("an Initial to send");
        buf.truncate(t.size);
        buf
    }
}

/// Sends Initials to `server` from a new loopback address each (127.0.x.y, never 127.0.0.1, the
/// real client's), `burst` at once and then `per_second`, until `stop`; returns how many.
fn flood(server: SocketAddr, burst: usize, per_second: usize, stop: Arc<AtomicBool>) -> usize {
    let mut initials = Initials::new();
    let mut sent = 0usize;
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let due = burst + (started.elapsed().as_secs_f64() * per_second as f64) as usize;
        if sent >= due {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        // 127.0.1.1 ..= 127.0.200.250: a fresh address for each of 50,000 Initials.
        let n = sent % 50_000;
        let from = Ipv4Addr::new(127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8);
        let packet = initials.next(server);
        // A socket that is closed at once: the node's answers go nowhere, as to a spoofed
        // address.
        if let Ok(sock) = UdpSocket::bind((from, 0)) {
            let _ = sock.send_to(&packet, server);
        }
        sent += 1;
    }
    sent
}

/// The long-header packet type of a QUIC version 1 Retry.
const RETRY: u8 = 3;

/// Sends one Initial to `server` from an address of its own and returns the long-header packet
/// type of the first datagram that comes back (0 Initial, 2 Handshake, 3 Retry), if any within
/// 2 s.
fn first_answer(server: SocketAddr) -> Option<u8> {
    let sock = UdpSocket::bind((Ipv4Addr::new(127, 0, 250, 251), 0)).expect("bind probe");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    sock.send_to(&Initials::new().next(server), server)
        .expect("send");
    let mut buf = [0u8; 2048];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    (n > 0 && buf[0] & 0x80 != 0).then_some((buf[0] >> 4) & 0x03)
}

/// Finding: the node accepted every Initial (no address validation), so a flood from addresses
/// that never answer held every handshake slot for a handshake timeout and a real client got
/// none. Under load the node now asks unvalidated addresses for a Retry round trip first.
#[test]
fn a_real_client_connects_and_moves_data_through_an_initial_flood() {
    init_tracing();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(within(LIMIT, async {
        let before = panics();
        let app = wanmux_tests::harness::app_server().await;
        let (mut server_cfg, mut client_cfg) =
            wanmux_tests::harness::configs(Auth::Static { psk: false }, app.addr, 2);
        server_cfg.quic = true;
        client_cfg.transport = LinkTransport::Quic;
        let server = wanmux_server::start(server_cfg).await.expect("server");
        let quic = server.quic_addr().expect("QUIC address");

        let stop = Arc::new(AtomicBool::new(false));
        let flooder = {
            let stop = stop.clone();
            std::thread::spawn(move || flood(quic, 1_500, 300, stop))
        };
        // The burst is out (more Initials than the node has handshake slots) before the client
        // starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The node is under load: an Initial from an address it has not validated gets a Retry.
        let probe = tokio::task::spawn_blocking(move || first_answer(quic))
            .await
            .expect("probe");
        assert_eq!(
            probe,
            Some(RETRY),
            "the node answered a new address's Initial with a packet of type {probe:?} (3 is a \
             Retry) during the flood"
        );
        wanmux_tests::harness::point_client_at(&mut client_cfg, server.local_addr());
        let client = wanmux_client::start(client_cfg.clone())
            .await
            .expect("client starts");
        let up = tokio::time::timeout(Duration::from_secs(8), client.wait_for_links(2)).await;
        let links = client.live_links();
        let mut t = Tunnel {
            app,
            server,
            client,
            client_config: client_cfg,
        };
        let moved = if up.is_ok() {
            t.check_transfer(4 << 20, 4 << 20, 1).await;
            true
        } else {
            false
        };
        stop.store(true, Ordering::Relaxed);
        let sent = tokio::task::spawn_blocking(move || flooder.join().expect("flooder"))
            .await
            .expect("join");
        assert!(sent >= 1_500, "the flood sent {sent} Initials");
        assert!(
            moved,
            "the real client had {links} of 2 links 8 s into a flood of {sent} Initials"
        );
        assert_eq!(panics(), before, "something panicked");
    }));
}

/// A PSK tunnel over QUIC links with `tweak` applied to the node's config, its QUIC address,
/// and a dialer of this test's own (a peer that speaks QUIC but not wanmux, as the test likes).
async fn quic_node(
    tweak: impl FnOnce(&mut wanmux_config::ServerConfig),
) -> (Tunnel, SocketAddr, wanmux_core::quic::Dialer) {
    let t = Tunnel::start_with(Auth::Psk, 1, |server, client| {
        server.quic = true;
        tweak(server);
        client.transport = LinkTransport::Quic;
    })
    .await;
    let node = t.server.quic_addr().expect("QUIC endpoint");
    let dialer =
        wanmux_core::quic::client_endpoint("127.0.0.1:0".parse().expect("addr")).expect("ep");
    (t, node, dialer)
}

/// Finding: a QUIC link's handshake slot was held for the QUIC handshake's timeout and then
/// again for the Noise handshake's. A link that completes QUIC and then sends one byte of its
/// message 1 just before the timeout must be closed at the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_links_handshake_ends_within_one_timeout() {
    within(LIMIT, async {
        let timeout = Duration::from_millis(1_500);
        let (mut t, node, dialer) = quic_node(|server| server.handshake_timeout = timeout).await;
        let started = Instant::now();
        let (mut rd, mut wr) = wanmux_core::quic::connect(&dialer, node, timeout)
            .await
            .expect("QUIC handshake")
            .into_halves();
        tokio::time::sleep(timeout.mul_f32(0.8).saturating_sub(started.elapsed())).await;
        // The first byte of a message 1 (a mode byte): the stream appears at the node.
        wr.write_all(&[0x31]).await.expect("write");
        wr.flush().await.expect("flush");
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(timeout * 3, rd.read(&mut buf)).await;
        let after = started.elapsed();
        assert!(
            matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
            "the node did not close the link: {closed:?}"
        );
        assert!(
            after < timeout.mul_f32(1.4),
            "the node closed the link {after:?} after it arrived, its handshake timeout is {timeout:?}"
        );
        t.check_transfer(1000, 1000, 1).await;
    })
    .await;
}

/// Finding: a connection had the whole 16 MiB receive window from its first packet, and quinn
/// buffered what came on the lane stream, which the node reads only after the link on the
/// connection authenticated: with no key or certificate, a trial made a node hold 16 MiB a
/// connection, 0.9 GB from one address, for the handshake timeout. Now a connection may send
/// the node 64 KiB until a link on it authenticated; then it gets the whole window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_connection_cannot_make_the_node_buffer_its_window() {
    within(LIMIT, async {
        let (mut t, node, dialer) = quic_node(|_| {}).await;
        let link = wanmux_core::quic::connect(&dialer, node, Duration::from_secs(5))
            .await
            .expect("QUIC handshake");
        // The link's stream is left unwritten (no handshake); the lane stream gets the bytes.
        let lane = link
            .sibling()
            .open()
            .await
            .expect("open")
            .expect("a node allows a lane stream");
        let (_rd, mut wr) = lane.into_halves();
        let chunk = vec![0xAA; 16 << 10];
        let mut taken = 0usize;
        let deadline = Instant::now() + Duration::from_secs(2);
        while taken < 4 << 20 {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, wr.write(&chunk)).await {
                Ok(Ok(n)) => taken += n,
                Ok(Err(e)) => panic!("the node closed the connection early: {e}"),
                // Flow control holds the rest back.
                Err(_) => break,
            }
        }
        assert!(
            taken <= 64 << 10,
            "the node let an unauthenticated connection send {taken} bytes"
        );
        drop((wr, link));
        // Authenticated links still get the whole window: data moves both ways.
        t.check_transfer(8 << 20, 8 << 20, 3).await;
    })
    .await;
}
