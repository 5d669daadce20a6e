//! Elastic links: a client configured with `links.min < links.max` opens more links while a
//! bulk upload or download keeps every link busy, and the data still arrives intact. Links go through a
//! relay that throttles each TCP connection, as some long-haul paths do, so one link is the
//! bottleneck and more links help.

use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wanmux_config::Links;
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

/// Moves `up` and `down` bytes through a per-connection throttle with `links = 1..=3` and
/// checks that the pool grew, stayed within max, and the data is intact.
async fn grows(up: u64, down: u64) {
    wanmux_tests::harness::init_tracing();
    within(Duration::from_secs(120), async {
        let mut app = app_server().await;
        let (server_cfg, mut client_cfg) = configs(Auth::Psk, app.addr, 1);
        client_cfg.links = Links::elastic(1, 3);
        let server = wanmux_server::start(server_cfg).await.unwrap();
        let relay = throttle_relay(server.local_addr(), THROTTLE).await;
        point_client_at(&mut client_cfg, relay);
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

/// A TCP relay to `target` that passes at most `rate` bytes per second each way per connection.
async fn throttle_relay(target: SocketAddr, rate: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    return;
                };
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::join!(pipe(ri, wo, rate), pipe(ro, wi, rate));
            });
        }
    });
    addr
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
) {
    let start = tokio::time::Instant::now();
    let mut moved = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        moved += n as u64;
        // Sleep until the bytes moved so far fit the rate.
        let due = start + Duration::from_secs_f64(moved as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
    }
    let _ = to.shutdown().await;
}
