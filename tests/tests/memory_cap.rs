//! The daemon-wide memory cap (`limits.memory`) on real sockets: many streams whose readers
//! are slow at one end while writers push at the other, in both directions, with each stream
//! window small but all of them together far beyond the cap. Each daemon's budget pools stay
//! within their caps the whole time (the receive pool: plus what the streams it receives on
//! hold within their initial credit, which the protocol lets the peer send before any grant and
//! the budget counts as it arrives), the cap really is what holds the writers back, nothing is
//! reset, and every byte arrives intact once the readers speed up.

use std::time::Duration;
use tokio::net::TcpListener;
use wanmux_core::budget::Pool;
use wanmux_core::driver::link::{LINK_RECV_MEMORY, LINK_SEND_MEMORY};
use wanmux_tests::harness::{add_map, add_service, eventually, within, Auth, Tunnel};
use wanmux_tests::slow::{fast_write, pair, slow_read};

const MIB: u64 = 1 << 20;
/// Each daemon's cap: 4 MiB per pool.
const MEMORY: u64 = 8 * MIB;
/// Twice the protocol's initial credit (2 MiB), which the budget does not count.
const STREAM_WINDOW: u64 = 4 * MIB;
/// Streams per direction: their send windows together (32 MiB) are eight times a pool.
const STREAMS: u64 = 8;
const SLOW_FOR: Duration = Duration::from_secs(2);
/// A stream task checks its capacity, then reads its socket (at most 256 KiB), then writes to
/// the engine; streams of one daemon doing so at once (one per worker thread) can take the send
/// pool past its cap by that much each. Kept at one read per stream, which it cannot exceed.
const SEND_SLACK: u64 = STREAMS * 2 * 256 * 1024;
/// Each daemon receives on half the streams; what they hold within their initial credit
/// (2 MiB, with each segment's overhead) may take the receive pool past its cap.
const RECV_SLACK: u64 = STREAMS / 2 * (2 * MIB + MIB / 8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_holds_with_many_slow_readers_both_ways() {
    within(Duration::from_secs(60), async {
        let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let raw_addr = raw.local_addr().unwrap();
        let t = Tunnel::start_with(Auth::Static { psk: false }, 2, |s, c| {
            for limits in [&mut s.limits, &mut c.limits] {
                limits.stream_window = STREAM_WINDOW;
                limits.session_window = 64 * MIB;
                limits.memory = MEMORY;
            }
            add_service(s, "raw", raw_addr);
            add_map(c, "raw");
        })
        .await;
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for i in 0..STREAMS {
            let (near, far) = pair(&t, "raw", &raw, i as u8).await;
            // Even streams upload, odd ones download.
            let (w, r) = if i % 2 == 0 { (near, far) } else { (far, near) };
            writers.push(tokio::spawn(fast_write(w, i, SLOW_FOR)));
            readers.push(tokio::spawn(slow_read(r, SLOW_FOR)));
        }
        let budgets = [t.client.budget(), t.server.budget().clone()];
        let mut peak = [(0u64, 0u64); 2];
        while !writers.iter().all(|w| w.is_finished()) {
            for (b, p) in budgets.iter().zip(peak.iter_mut()) {
                p.0 = p.0.max(b.used(Pool::Recv));
                p.1 = p.1.max(b.used(Pool::Send));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "budget peaks (receive, send) client {:?} server {:?}",
            peak[0], peak[1]
        );
        let cap = MEMORY / 2;
        for (side, (recv, send)) in ["client", "server"].into_iter().zip(peak) {
            assert!(
                recv <= cap + RECV_SLACK,
                "{side}: receive pool {recv} > {cap} + initial credit"
            );
            assert!(send <= cap + SEND_SLACK, "{side}: send pool {send} > {cap}");
            // A server gives one client at most half of a pool (its fair share), a client
            // daemon its sessions the whole pool; either way the writers pushed against it.
            assert!(
                send > cap * 2 / 5,
                "{side}: send pool peaked at {send}: the cap held nothing back"
            );
        }
        let mut sent = Vec::new();
        for w in writers {
            sent.push(w.await.unwrap().0);
        }
        for (i, r) in readers.into_iter().enumerate() {
            let (got, _) = r.await.unwrap();
            assert_eq!(sent[i], got, "stream {i}: sent vs received");
        }
        assert!(
            eventually(Duration::from_secs(5), || t.client.stream_count() == 0
                && t.server.stream_count() == 0)
            .await
        );
        // Everything is given back but, on the server, the charges of the client's live links
        // (`LINK_RECV_MEMORY`, `LINK_SEND_MEMORY` each).
        let links = t.server.link_count() as u64;
        let held = [(0, 0), (links * LINK_RECV_MEMORY, links * LINK_SEND_MEMORY)];
        for (b, (recv, send)) in budgets.iter().zip(held) {
            assert!(
                eventually(Duration::from_secs(2), || b.used(Pool::Recv) == recv
                    && b.used(Pool::Send) == send)
                .await,
                "budget not returned: {b:?}, {links} links"
            );
        }
    })
    .await;
}
