//! Elastic links: a client configured with `links.min < links.max` opens more links while a
//! bulk upload or download keeps every link busy, and the data still arrives intact. Links go
//! through a relay that throttles each TCP connection, as some long-haul paths do, so one link
//! is the bottleneck and more links help.

use std::time::Duration;
use wanmux_config::Links;
use wanmux_relay::{Bottleneck, Relay, Shape};
use wanmux_tests::harness::{app_server, configs, point_client_at, transfer, within, Auth};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_upload_grows_the_link_pool_up_to_max() {
    grows(24 << 20, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_download_grows_the_link_pool_up_to_max() {
    grows(0, 24 << 20).await;
}

/// Bytes per second the relay lets through each link, each way. Low enough that one link is
/// throttle-bound even when the test runs beside others on a loaded 2-core machine (at 16 MiB/s a
/// starved sender sometimes was not, the link never stayed busy and the pool never grew).
const THROTTLE: u64 = 4 << 20;

/// The path: each TCP connection throttled to [`THROTTLE`] each way.
fn throttle() -> Shape {
    Shape {
        rate_bps: Some(THROTTLE as f64 * 8.0),
        bottleneck: Bottleneck::PerLink,
        queue: Duration::from_millis(20),
        ..Shape::default()
    }
}

/// Moves `up` and `down` bytes through a per-connection throttle with `links = 1..=3` and
/// checks that the pool grew, stayed within max, and the data is intact.
async fn grows(up: u64, down: u64) {
    wanmux_tests::harness::init_tracing();
    within(Duration::from_secs(120), async {
        let mut app = app_server().await;
        let (server_cfg, mut client_cfg) = configs(Auth::Psk, app.addr, 1);
        client_cfg.links = Links::elastic(1, 3);
        let server = wanmux_server::start(server_cfg).await.unwrap();
        let relay = Relay::start(server.local_addr(), throttle())
            .await
            .expect("relay starts");
        point_client_at(&mut client_cfg, relay.addr());
        let client = wanmux_client::start(client_cfg).await.unwrap();
        client.wait_for_links(1).await;
        assert_eq!(client.live_links(), 1);
        let addr = client.first_addr();
        let moving = tokio::spawn(transfer(addr, up, down, 3));
        // Watch the pool until both ends are done: an upload's writer finishes as soon as
        // the loopback socket buffers and the tunnel have taken its last byte, which can be
        // 0.2 s in, long before the bytes have crossed the throttle.
        let mut most = 1;
        let mut app_done = None;
        while app_done.is_none() || !moving.is_finished() {
            most = most.max(client.live_links());
            tokio::select! {
                a = app.results.recv(), if app_done.is_none() => {
                    app_done = Some(a.expect("the app server reports each connection"));
                }
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        let c = moving.await.unwrap().unwrap();
        let a = app_done.expect("set before the loop ends");
        assert_eq!(c.sent, a.received);
        assert_eq!(a.sent, c.received);
        assert!(most >= 2, "the pool never grew (at most {most} links)");
        assert!(most <= 3, "the pool grew past max ({most} links)");
        client.shutdown();
        server.shutdown();
    })
    .await;
}
