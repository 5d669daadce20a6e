//! Finished-stream state under a hostile authenticated client (issue 23, finding 7): a million
//! `RESET`s for stream ids two apart, each ending a stream the node never saw, so each would be
//! a range of its own in the node's set of finished streams, and each asks for a `RESET` in
//! answer. The node keeps a bounded number of ranges and a bounded queue of answers (a client
//! that makes it queue more is cut off, and here comes back on a new link into the same
//! session). Two sessions in turn: the first warms up the allocator with the attack's passing
//! buffers, the second is measured, with the first still held (sessions outlive their links).
//! Alone in its test binary because it reads the process's resident memory.

use std::net::SocketAddr;
use std::time::Duration;
use wanmux_core::noise::ClientAuth;
use wanmux_tests::harness::{rss_kib, within};
use wanmux_tests::hostile::{alone, wire, Attack, RawLink};

/// Growth allowed: allocator and runtime noise. Without the bound one session held about
/// 80 MiB after the attack.
const SLACK_KIB: u64 = 16 * 1024;
const RESETS: u64 = 1_000_000;

/// Sends the `RESET`s into a new session, on as many links as it takes, and returns how many.
async fn spaced_resets(server: SocketAddr, auth: &ClientAuth) -> u32 {
    let session: [u8; 32] = rand::random();
    let mut frame = Vec::new();
    let (mut next, mut links) = (0, 0u32);
    while next < RESETS {
        let mut link = RawLink::connect(server, auth, session, links)
            .await
            .expect("an allowed client's handshake");
        links += 1;
        assert!(links < 1000, "cut off {links} times");
        let mut ok = true;
        while ok && next < RESETS {
            frame.clear();
            wire::reset(&mut frame, wire::stream(2 * next), 0, 0);
            ok = link.send(&frame).await.is_ok();
            next += 1;
        }
        // Everything processed, or the link was cut off: go on on a new one.
        let _ = link.sync(Duration::from_secs(60)).await;
    }
    // Another link into the session proves it is still there, holding what it holds.
    let mut link = RawLink::connect(server, auth, session, links)
        .await
        .expect("handshake");
    link.sync(Duration::from_secs(10)).await.expect("sync");
    links
}

#[test]
fn a_million_resets_for_spaced_stream_ids() {
    alone(within(Duration::from_secs(120), async {
        let attack = Attack::start().await;
        let (auth, server) = (&attack.auth, attack.server);
        let warm = rss_kib();
        spaced_resets(server, auth).await;
        let before = rss_kib();
        let links = spaced_resets(server, auth).await;
        let after = rss_kib();
        println!(
            "VmRSS {warm} KiB, after a first session of {RESETS} spaced RESETs {before} KiB, \
             after a second ({links} links) {after} KiB"
        );
        attack.survived(before, after, SLACK_KIB).await;
    }));
}
