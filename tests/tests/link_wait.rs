//! A connection accepted while the client has no link up waits `client.link_wait_ms` for one:
//! it goes through if a link comes up in time (every byte intact), and is reset with a `warn`
//! line once the wait is over, long before the session grace.

use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wanmux_relay::{Links, Relay, Shape};
use wanmux_tests::harness::{
    app_server, configs, drain_end, point_client_at, transfer, within, Auth, ReadEnd,
};
use wanmux_tests::logs;

/// A server behind a relay that forwards nothing yet, and a client dialling it with
/// `link_wait`: no link comes up until the relay resumes.
async fn stalled(
    link_wait: Duration,
) -> (
    wanmux_tests::harness::AppServer,
    wanmux_server::ServerHandle,
    Relay,
    wanmux_client::ClientHandle,
) {
    let app = app_server().await;
    let (server_config, mut client_config) = configs(Auth::Psk, app.addr, 1);
    let server = wanmux_server::start(server_config).await.expect("server");
    let relay = Relay::start(server.local_addr(), Shape::default())
        .await
        .expect("relay");
    relay.stall(Links::All);
    point_client_at(&mut client_config, relay.addr());
    client_config.link_wait = link_wait;
    client_config.handshake_timeout = Duration::from_secs(30);
    let client = wanmux_client::start(client_config).await.expect("client");
    (app, server, relay, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_waits_for_the_first_link_then_flows() {
    let _ = logs::capture("info");
    within(Duration::from_secs(60), async {
        let (mut app, server, relay, client) = stalled(Duration::from_secs(20)).await;
        let addr = client.first_addr();
        let running = tokio::spawn(transfer(addr, 1 << 20, 1 << 20, 7));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            client.live_links(),
            0,
            "a link came up through a stalled relay"
        );
        assert!(!running.is_finished(), "the transfer ended without a link");
        relay.resume(Links::All);
        let c = running
            .await
            .unwrap()
            .expect("the held connection goes through");
        let a = app.results.recv().await.expect("app result");
        assert_eq!(c.sent, a.received);
        assert_eq!(a.sent, c.received);
        assert_eq!((c.sent.bytes, c.received.bytes), (1 << 20, 1 << 20));
        client.shutdown();
        server.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_link_is_reset_after_the_wait() {
    let logs = logs::capture("info");
    let mark = logs.mark();
    within(Duration::from_secs(60), async {
        let wait = Duration::from_millis(300);
        let (_app, server, _relay, client) = stalled(wait).await;
        let started = Instant::now();
        let mut tcp = TcpStream::connect(client.first_addr())
            .await
            .expect("accepted");
        // The header of a transfer; it may fail if the reset comes first.
        let _ = tcp.write_all(&[0u8; 16]).await;
        let end = drain_end(&mut tcp, Duration::from_secs(10)).await;
        let waited = started.elapsed();
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "a held connection ended with {end:?}"
        );
        assert!(
            waited >= wait && waited < Duration::from_secs(5),
            "reset after {waited:?}, the wait is {wait:?}"
        );
        let line = logs
            .wait_for(
                mark,
                &[
                    "WARN",
                    "wanmux_client::hold",
                    "no link to any node",
                    "wait_ms=300",
                ],
                Duration::from_secs(5),
            )
            .await;
        assert!(
            line.is_some(),
            "no warn line; logged:\n{}",
            logs.since(mark).join("\n")
        );
        client.shutdown();
        server.shutdown();
    })
    .await;
}
