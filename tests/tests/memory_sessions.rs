//! A node frees every session that ends (issue 23: every resource a peer can make the node hold
//! is bounded). A trial found every ended session's engine still in memory, with whatever it held
//! (about 9 KB each, megabytes with many finished stream ids), outside `limits.memory`: the task
//! that connects a session's new streams waited on a channel whose sender its own driver held, so
//! it never ended. One client key grew a node by 370 MB in 91 s by starting sessions and ending
//! them; honest clients that stop or come back after their grace leaked too.
//!
//! Here sessions end both ways, each after streams went through it (hashes compared both ways):
//! by their client stopping in order (`CLOSE` `SESSION_OVER`) and by expiring (the client's links
//! cut and kept down past the node's grace). Then no session engine is left in memory.

use std::time::Duration;
use tokio::net::TcpStream;
use wanmux_relay::{Links, Relay, Shape};
use wanmux_tests::harness::{
    app_server, configs, eventually, point_client_at, transfer_on, within, Auth,
};

const ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_frees_every_session_that_ended() {
    within(Duration::from_secs(90), async {
        let mut app = app_server().await;
        let (mut server_config, client_config) = configs(Auth::Static { psk: false }, app.addr, 2);
        server_config.session_grace = Duration::from_millis(300);
        let server = wanmux_server::start(server_config)
            .await
            .expect("server starts");
        for round in 0..ROUNDS {
            // One session ended by its client, one left to expire.
            for expire in [false, true] {
                let mut config = client_config.clone();
                let relay = Relay::start(server.local_addr(), Shape::default())
                    .await
                    .expect("relay");
                point_client_at(&mut config, relay.addr());
                let client = wanmux_client::start(config).await.expect("client starts");
                client.wait_for_links(2).await;
                for seed in 0..2 {
                    let tcp = TcpStream::connect(client.first_addr()).await.unwrap();
                    let r = transfer_on(tcp, 64 << 10, 128 << 10, seed)
                        .await
                        .expect("transfer");
                    let a = app.results.recv().await.expect("app server result");
                    assert_eq!((a.received, a.sent), (r.sent, r.received));
                }
                if expire {
                    relay.blackhole(Links::All);
                    relay.reset(Links::All);
                }
                client.shutdown();
                assert!(
                    eventually(Duration::from_secs(20), || server.session_count() == 0).await,
                    "round {round}, expire {expire}: the node still holds {} sessions",
                    server.session_count()
                );
            }
        }
        // The tasks of the last session end within a moment of it.
        assert!(
            eventually(Duration::from_secs(10), || server.session_engines() == 0).await,
            "{} session engines still in memory after {} sessions ended",
            server.session_engines(),
            2 * ROUNDS
        );
        server.shutdown();
    })
    .await;
}
