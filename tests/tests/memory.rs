//! Memory of a server node under a flood of garbage connections. Alone in its own test binary
//! (one process), because it reads the process's resident memory, which tests running beside
//! it would disturb.

use std::time::Duration;
use wanmux_tests::harness::{panics, rss_kib, within, Auth, Tunnel};
use wanmux_tests::hostile::{capture_first_message, garbage_flood, noise_auth, Garbage};

/// Growth allowed over the measured flood. A leak of 8 KiB per connection (a handshake's
/// buffers) over 2,000 connections would be 16 MiB; allocator and runtime noise stay well
/// under that once warmed up.
const SLACK_KIB: u64 = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_flood_memory_is_bounded() {
    within(Duration::from_secs(120), async {
        let before_panics = panics();
        let mut t = Tunnel::start_with(Auth::Static { psk: false }, 2, |s, _| {
            s.handshake_timeout = Duration::from_millis(500);
        })
        .await;
        let first = capture_first_message(&noise_auth(&t.client_config)).await;
        let server = t.server.local_addr();
        let limit = Duration::from_secs(5);
        // Warm up: allocator arenas, the runtime's task slabs, the data path.
        garbage_flood(server, first.clone(), &Garbage::QUICK, 400, 32, limit).await;
        garbage_flood(server, first.clone(), &[Garbage::Stall], 100, 100, limit).await;
        t.check_transfer(1 << 20, 1 << 20, 1).await;
        let before = rss_kib();
        garbage_flood(server, first.clone(), &Garbage::QUICK, 2000, 32, limit).await;
        // Stalled handshakes held open at once, until the server's handshake timeout.
        garbage_flood(server, first, &[Garbage::Stall], 200, 200, limit).await;
        let after = rss_kib();
        println!("VmRSS before {before} KiB, after 2,200 garbage connections {after} KiB");
        assert!(
            after <= before + SLACK_KIB,
            "memory grew from {before} KiB to {after} KiB over 2,200 garbage connections"
        );
        assert_eq!(t.server.session_count(), 1, "garbage made a session");
        t.check_transfer(1 << 20, 1 << 20, 2).await;
        assert_eq!(panics(), before_panics, "something panicked");
    })
    .await;
}
