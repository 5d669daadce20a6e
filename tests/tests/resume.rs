//! Sessions across server loss: a server that comes back without the session (a crash and
//! restart) makes the client reset the connections the session carried, and new connections
//! work at once.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wanmux_tests::harness::{
    app_server, configs, drain_end, init_tracing, point_client_at, transfer, Auth, ReadEnd,
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
