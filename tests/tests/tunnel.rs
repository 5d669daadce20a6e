//! End to end through real sockets on loopback: client, server node and application server.

use wanmux_tests::harness::{Auth, Tunnel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_transfers_each_direction_and_both() {
    let mut t = Tunnel::start(Auth::Static { psk: false }, 4).await;
    for (i, (up, down)) in [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (1 << 20, 0),
        (0, 1 << 20),
        (1 << 20, 1 << 20),
    ]
    .into_iter()
    .enumerate()
    {
        t.check_transfer(up, down, i as u64).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn congestion_control_is_applied_or_ignored_when_missing() {
    use wanmux_tests::harness::{app_server, configs, point_client_at, transfer};
    for cc in ["cubic", "nosuchcc"] {
        let mut app = app_server().await;
        let (mut server_cfg, mut client_cfg) = configs(Auth::Psk, app.addr, 2);
        server_cfg.congestion = Some(cc.into());
        client_cfg.congestion = Some(cc.into());
        let server = wanmux_server::start(server_cfg).await.unwrap();
        point_client_at(&mut client_cfg, server.local_addr());
        let client = wanmux_client::start(client_cfg).await.unwrap();
        client.wait_for_links(2).await;
        let c = transfer(client.first_addr(), 1 << 20, 1 << 20, 9)
            .await
            .unwrap();
        let a = app.results.recv().await.unwrap();
        assert_eq!(
            (c.sent, a.sent),
            (a.received, c.received),
            "congestion {cc}"
        );
        client.shutdown();
        server.shutdown();
    }
}
