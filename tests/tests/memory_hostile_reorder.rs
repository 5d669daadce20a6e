//! Reorder memory under a hostile authenticated client (issue 23, finding 1): a million one-byte
//! `DATA` frames at odd offsets, each a segment of its own beyond a hole, spread over 16 opened
//! streams. The node counts each segment's overhead, not only its byte, and resets a stream
//! whose data is in too many pieces, so the node's memory stays near its cap. Alone in its test
//! binary because it reads the process's resident memory.

use std::time::Duration;
use wanmux_core::budget::Pool;
use wanmux_tests::harness::{rss_kib, within};
use wanmux_tests::hostile::{alone, wire, Attack, RawLink};

/// Growth allowed: the node's receive pool (4 MiB) and allocator and runtime noise. Without
/// the bound the attack held about 100 MiB.
const SLACK_KIB: u64 = 16 * 1024;
const FRAMES: u64 = 1_000_000;
const STREAMS: u64 = 16;

#[test]
fn a_million_one_byte_segments_at_odd_offsets() {
    alone(within(Duration::from_secs(120), async {
        let attack = Attack::start().await;
        let (auth, server) = (&attack.auth, attack.server);
        let mut link = RawLink::connect(server, auth, rand::random(), 0)
            .await
            .expect("an allowed client's handshake");
        let mut frame = Vec::new();
        for s in 0..STREAMS {
            frame.clear();
            wire::open(&mut frame, wire::stream(s), wanmux_tests::harness::SERVICE);
            link.send(&frame).await.expect("send");
        }
        link.sync(Duration::from_secs(10)).await.expect("sync");
        let before = rss_kib();
        for i in 0..FRAMES {
            frame.clear();
            let stream = wire::stream(i % STREAMS);
            wire::data(&mut frame, stream, 1 + 2 * (i / STREAMS), b"x");
            link.send(&frame).await.expect("send");
        }
        // Everything processed (the node closing the link would fail this as well).
        link.sync(Duration::from_secs(60)).await.expect("sync");
        let after = rss_kib();
        let used = attack.tunnel.server.budget().used(Pool::Recv);
        println!(
            "VmRSS before {before} KiB, after {FRAMES} one-byte segments {after} KiB; \
             receive pool {used} bytes"
        );
        assert!(
            used <= attack.tunnel.server.budget().cap(),
            "receive pool {used}"
        );
        drop(link);
        attack.survived(before, after, SLACK_KIB).await;
    }));
}
