//! Sessions across server loss: a server that comes back without the session (a crash and
//! restart) makes the client reset the connections the session carried, and new connections
//! work at once.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wanmux_config::LinkTransport;
use wanmux_core::status::Status;
use wanmux_tests::harness::{
    app_server, configs, drain_end, eventually, init_tracing, point_client_at, transfer, Auth,
    ReadEnd,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_resets_old_connections_and_serves_new_ones() {
    init_tracing();
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut app = app_server().await;
        let (mut server_cfg, mut client_cfg) = configs(Auth::Static { psk: true }, app.addr, 2);
        let server = wanmux_server::start(server_cfg.clone())
            .await
            .expect("server starts");
        let server_addr = server.local_addr();
        point_client_at(&mut client_cfg, server_addr);
        let client = wanmux_client::start(client_cfg)
            .await
            .expect("client starts");
        client.wait_for_links(2).await;

        // A connection that stays open: it asks for far more than it reads (the tunnel's
        // windows stall the app server) and keeps its own side open.
        let mut old = TcpStream::connect(client.first_addr()).await.unwrap();
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&(1u64 << 40).to_be_bytes());
        old.write_all(&header).await.unwrap();
        let mut one = [0u8; 1];
        old.read_exact(&mut one).await.unwrap();

        // The server dies without a word, and a new one starts on the same address.
        server.abort();
        server_cfg.listen = server_addr;
        // The aborted accept task drops its listener asynchronously; retry the bind briefly.
        let mut tries = 0;
        let server = loop {
            match wanmux_server::start(server_cfg.clone()).await {
                Ok(s) => break s,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("server restarts: {e}"),
            }
        };
        assert_eq!(server.local_addr(), server_addr);

        // The old connection is reset once the client sees the new epoch...
        let end = drain_end(&mut old, Duration::from_secs(20)).await;
        assert_eq!(
            end,
            ReadEnd::Reset,
            "the old connection must be reset, not hang or end"
        );
        // ...and new connections go through, both directions intact.
        client.wait_for_links(1).await;
        let c = transfer(client.first_addr(), 100_000, 200_000, 7)
            .await
            .unwrap();
        // The first app result may be the old connection's; find this one by its sizes.
        loop {
            let a = app.results.recv().await.unwrap();
            if a.received.bytes == 100_000 {
                assert_eq!(c.sent, a.received);
                assert_eq!(a.sent, c.received);
                break;
            }
        }
        client.shutdown();
        server.shutdown();
    })
    .await
    .expect("test timed out");
}

/// A client that stops in order (its drain) tells the node its session is over (`CLOSE` with
/// `SESSION_OVER`): the node ends it at once, not after `server.session_grace_ms`. A client
/// the node refuses a session (here: `limits.max_sessions_per_client = 1`, taken) is told why
/// (`CLOSE` with the limit's code), and both ends count it. A trial locked a client out of its
/// node for 25 s by restarting it ten times: each old session stayed for the grace, the
/// refusals were logged nowhere, and the client read "connection lost".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_in_order_ends_its_session_and_a_refused_one_is_told_why() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let app = app_server().await;
        let (mut server_cfg, mut client_cfg) = configs(Auth::Static { psk: false }, app.addr, 2);
        server_cfg.limits.max_sessions_per_client = 1;
        let server = wanmux_server::start(server_cfg)
            .await
            .expect("server starts");
        point_client_at(&mut client_cfg, server.local_addr());
        for transport in [LinkTransport::Tcp, LinkTransport::Quic] {
            client_cfg.transport = transport;
            let first = wanmux_client::start(client_cfg.clone())
                .await
                .expect("client starts");
            first.wait_for_links(2).await;
            // The client counts a link from the node's handshake message; the node starts the
            // session just after sending it.
            assert!(
                eventually(Duration::from_secs(3), || server.session_count() == 1).await,
                "{transport:?}: the node holds {} sessions",
                server.session_count()
            );
            // Another instance of the same client (another session): refused, and told why.
            let second = wanmux_client::start(client_cfg.clone())
                .await
                .expect("client starts");
            let refused = |st: &Status, reason| st.handshake_failures.get(reason).copied();
            assert!(
                eventually(Duration::from_secs(10), || {
                    refused(&second.status(), "session_refused").unwrap_or(0) > 0
                })
                .await,
                "{transport:?}: the second client was told: {:?}",
                second.status().handshake_failures
            );
            assert!(refused(&server.status(), "session_limit").unwrap_or(0) > 0);
            assert_eq!(server.session_count(), 1, "the node holds the first's only");
            // The first stops in order: the node ends its session at once (the grace is 30 s),
            // and the second gets its own.
            let first_id = server.status().sessions[0].id.clone();
            first.drain(Duration::from_secs(1)).await;
            assert!(
                eventually(Duration::from_secs(3), || {
                    server.status().sessions.iter().all(|s| s.id != first_id)
                })
                .await,
                "{transport:?}: the first client's session is still there"
            );
            assert!(
                eventually(Duration::from_secs(15), || second.live_links() >= 2).await,
                "{transport:?}: the second client's links did not come up"
            );
            second.drain(Duration::from_secs(1)).await;
            assert!(
                eventually(Duration::from_secs(3), || server.session_count() == 0).await,
                "{transport:?}: the node kept a stopped client's session"
            );
        }
    })
    .await
    .expect("within the time limit");
}
