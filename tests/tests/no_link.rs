//! A client with no live link to any node does not leave application connections hanging: it
//! holds each for `client.no_link_hold_ms`, then refuses it with a reset; a node that comes up
//! within the hold takes it.

use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use wanmux_tests::harness::{
    app_server, configs, free_port, init_tracing, point_client_at, read_end, transfer_on, within,
    Auth, ReadEnd,
};

#[tokio::test]
async fn connections_are_refused_after_the_hold_when_no_node_is_reachable() {
    init_tracing();
    within(Duration::from_secs(30), async {
        let app = app_server().await;
        for hold in [Duration::ZERO, Duration::from_millis(400)] {
            let (_, mut config) = configs(Auth::Psk, app.addr, 2);
            point_client_at(&mut config, free_port());
            config.no_link_hold = hold;
            let client = wanmux_client::start(config).await.expect("client starts");
            // Its status says why it has no link to the node (a trial: "0 links", not why).
            client.wait_first_dial().await;
            let why = client.status().sessions[0].last_dial_error.clone();
            assert!(
                why.as_deref()
                    .is_some_and(|w| w.contains("connection refused")),
                "{why:?}"
            );
            let started = Instant::now();
            let mut tcp = TcpStream::connect(client.first_addr()).await.unwrap();
            assert_eq!(
                read_end(&mut tcp, Duration::from_secs(5)).await,
                ReadEnd::Reset,
                "hold {hold:?}"
            );
            let took = started.elapsed();
            assert!(
                took >= hold && took < hold + Duration::from_secs(2),
                "refused after {took:?} with a hold of {hold:?}"
            );
            // Counted for the operator: `status` and `wanmux_stream_refusals_total`.
            let refusals = client.status().stream_refusals;
            assert_eq!(refusals["no_link"], 1, "{refusals:?}");
            assert!(
                client
                    .status()
                    .to_text()
                    .contains("connections reset (streams refused): no_link 1"),
                "{}",
                client.status().to_text()
            );
            client.shutdown();
        }
    })
    .await;
}

#[tokio::test]
async fn a_node_that_comes_up_within_the_hold_takes_the_connection() {
    init_tracing();
    within(Duration::from_secs(30), async {
        let mut app = app_server().await;
        let (mut server_config, mut config) = configs(Auth::Psk, app.addr, 1);
        let node = free_port();
        point_client_at(&mut config, node);
        config.no_link_hold = Duration::from_secs(10);
        let client = wanmux_client::start(config).await.expect("client starts");
        let tcp = TcpStream::connect(client.first_addr()).await.unwrap();
        let transfer = tokio::spawn(transfer_on(tcp, 100_000, 200_000, 5));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!transfer.is_finished());
        server_config.listen = node;
        let _server = wanmux_server::start(server_config)
            .await
            .expect("server starts");
        let r = transfer
            .await
            .unwrap()
            .expect("transfer through the late node");
        assert_eq!((r.sent.bytes, r.received.bytes), (100_000, 200_000));
        let a = app.results.recv().await.expect("app server result");
        assert_eq!((a.received, a.sent), (r.sent, r.received));
        client.shutdown();
    })
    .await;
}

/// Right after a start the first link may take longer than the hold: here a node without QUIC,
/// which the default transport gives 3 s to answer QUIC before it dials TCP (and asks QUIC
/// once more). The hold runs from the end of the first dials, so a connection made at once
/// waits for that first link instead of being refused as if no node were reachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_at_start_waits_for_the_first_dials() {
    init_tracing();
    within(Duration::from_secs(60), async {
        let mut app = app_server().await;
        let (mut server_config, mut config) = configs(Auth::Psk, app.addr, 1);
        server_config.quic = false;
        let server = wanmux_server::start(server_config)
            .await
            .expect("server starts");
        point_client_at(&mut config, server.local_addr());
        config.transport = wanmux_config::LinkTransport::Auto;
        config.no_link_hold = Duration::from_secs(1);
        let client = wanmux_client::start(config).await.expect("client starts");
        let started = Instant::now();
        let tcp = TcpStream::connect(client.first_addr()).await.unwrap();
        let r = transfer_on(tcp, 100_000, 200_000, 6)
            .await
            .expect("the connection waited for the first link");
        let took = started.elapsed();
        assert!(
            took > Duration::from_secs(2),
            "the first link came after {took:?}: the hold was not what was tested"
        );
        assert_eq!((r.sent.bytes, r.received.bytes), (100_000, 200_000));
        let a = app.results.recv().await.expect("app server result");
        assert_eq!((a.received, a.sent), (r.sent, r.received));
        assert_eq!(client.status().stream_refusals["no_link"], 0);
        client.shutdown();
        server.shutdown();
    })
    .await;
}
