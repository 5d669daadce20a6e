//! Graceful stop: draining a client or a server lets open connections finish with every byte
//! intact, refuses new ones, and resets what is still open when the drain timeout runs out.

use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wanmux_tests::harness::{
    begin, drain_end, eventually, is_listening, transfer, within, Auth, ReadEnd, Tunnel,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A connection that stays open: it asks for nothing back and never finishes its upload.
async fn idle_connection(t: &Tunnel) -> TcpStream {
    let mut tcp = TcpStream::connect(t.addr()).await.unwrap();
    tcp.write_all(&[0u8; 16]).await.unwrap();
    tcp
}

/// Ends the connection of [`idle_connection`] (its upload ends, nothing comes back) and
/// returns the application server's results of it and of the one other connection, by seed.
async fn end_held(
    mut held: TcpStream,
    app: &mut wanmux_tests::harness::AppServer,
) -> [wanmux_tests::harness::AppResult; 2] {
    held.shutdown().await.unwrap();
    let end = drain_end(&mut held, Duration::from_secs(10)).await;
    assert!(matches!(end, ReadEnd::Eof), "held connection: {end:?}");
    let mut results = [
        app.results.recv().await.unwrap(),
        app.results.recv().await.unwrap(),
    ];
    results.sort_by_key(|r| r.seed);
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_drain_finishes_open_transfers_and_closes_its_ports() {
    within(LIMIT, async {
        let t = Tunnel::start(Auth::Psk, 2).await;
        let addr = t.addr();
        // A connection that only ends when the test says so holds the drain open while the
        // port is checked (the transfer alone can finish on loopback before that).
        let held = idle_connection(&t).await;
        let running = tokio::spawn(transfer(addr, 32 << 20, 32 << 20, 5));
        // Drain once the transfer's stream is open.
        assert!(
            eventually(Duration::from_secs(5), || t.client.stream_count() > 1).await,
            "the transfer opened no stream"
        );
        let Tunnel {
            mut app,
            server,
            client,
            ..
        } = t;
        assert!(is_listening(addr), "{addr} is not seen listening");
        let started = Instant::now();
        let drain = tokio::spawn(client.drain(Duration::from_secs(30)));
        assert!(
            eventually(Duration::from_secs(5), || !is_listening(addr)).await,
            "a draining client still listens on {addr}"
        );
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "a draining client still accepts"
        );
        let c = running.await.unwrap().expect("the open transfer finishes");
        let results = end_held(held, &mut app).await;
        let a = &results[1];
        assert_eq!(a.seed, 5);
        assert_eq!(c.sent, a.received);
        assert_eq!(a.sent, c.received);
        drain.await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(25),
            "drain waited for its timeout"
        );
        server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_drain_refuses_new_streams_and_finishes_open_ones() {
    within(LIMIT, async {
        let t = Tunnel::start(Auth::Static { psk: false }, 2).await;
        let addr = t.addr();
        // An open connection that only ends when the test says so: it holds the drain open
        // until the refusal below has been seen (the bulk transfer alone can finish on
        // loopback before the new connection arrives, and a stopped server refuses nothing).
        let held = idle_connection(&t).await;
        let running = tokio::spawn(transfer(addr, 16 << 20, 16 << 20, 6));
        assert!(
            eventually(Duration::from_secs(5), || t.server.stream_count() >= 2).await,
            "{} streams open at the server, not 2",
            t.server.stream_count()
        );
        let Tunnel {
            mut app,
            server,
            client,
            ..
        } = t;
        let drain = tokio::spawn(begin(server.drain(Duration::from_secs(30))).await);
        // The drain refuses new streams once the client has had time to hear of it (what
        // arrives within about a round trip was opened before, and is served: stripe.rs,
        // `connections_opened_before_the_client_heard_of_a_drain_are_served`).
        assert!(
            eventually(Duration::from_secs(5), || client.peer_draining(1)).await,
            "the client heard of the drain"
        );
        tokio::time::sleep(wanmux_core::engine::MAX_DRAIN_GRACE).await;
        // A new connection is refused by the draining server: closed without any data.
        // The refusal can reset the connection before the test's connect or write completes:
        // then that call reports it (and a read after it would wait for nothing).
        let reset = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::ConnectionReset => ReadEnd::Reset,
            kind => ReadEnd::Error(kind),
        };
        let end = match TcpStream::connect(addr).await {
            Err(e) => reset(e),
            Ok(mut fresh) => match fresh.write_all(&1000u64.to_be_bytes()).await {
                Err(e) => reset(e),
                Ok(()) => drain_end(&mut fresh, Duration::from_secs(10)).await,
            },
        };
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "new stream while draining: {end:?}"
        );
        let c = running.await.unwrap().expect("the open transfer finishes");
        let results = end_held(held, &mut app).await;
        assert_eq!((results[0].seed, results[1].seed), (0, 6));
        assert_eq!((results[0].sent.bytes, results[0].received.bytes), (0, 0));
        assert_eq!(c.sent, results[1].received);
        assert_eq!(results[1].sent, c.received);
        drain.await.unwrap();
        client.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_resets_what_is_left() {
    within(LIMIT, async {
        let t = Tunnel::start(Auth::Psk, 1).await;
        let mut stuck = idle_connection(&t).await;
        assert!(
            eventually(Duration::from_secs(5), || t.client.stream_count() > 0).await,
            "the idle connection opened no stream"
        );
        let Tunnel { server, client, .. } = t;
        let started = Instant::now();
        client.drain(Duration::from_millis(500)).await;
        assert!(started.elapsed() >= Duration::from_millis(500));
        let end = drain_end(&mut stuck, Duration::from_secs(5)).await;
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "after the drain timeout: {end:?}"
        );
        server.shutdown();
    })
    .await;
}
