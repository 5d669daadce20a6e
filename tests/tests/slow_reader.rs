//! A slow reader slows its writer; it never grows memory. Two connections through one tunnel:
//! on one the client's application writes as fast as it can while the application server reads
//! 10 KiB/s, on the other the roles are swapped. After 3 s the writers stop; what they got into
//! the tunnel must be bounded by the windows and the kernel's socket buffers, the process's
//! resident memory must not have grown by more than the windows and some slack, and every byte
//! must then arrive intact.
//!
//! Alone in its own test binary (one process), because it reads the process's resident memory,
//! which tests running beside it would disturb.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wanmux_tests::harness::{eventually, rss_kib, within, Tunnel};
use wanmux_tests::slow::{fast_write, pair, raw_tunnel, slow_read};

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
/// The configured per-stream window (the engine's smallest: the protocol's initial credit) and
/// session window.
const STREAM_WINDOW: u64 = wanmux_core::engine::INITIAL_STREAM_CREDIT;
const SESSION_WINDOW: u64 = 16 * MIB;
/// How long the writers write and the readers read slowly.
const SLOW_FOR: Duration = Duration::from_secs(3);
/// What a writer may have got into the tunnel beyond what its reader took: the windows of both
/// daemons, plus the kernel's buffers of the two application sockets on the way, which Linux
/// grows to a few MiB each (`tcp_wmem`, `tcp_rmem`); about 12 MiB in all here. Without
/// backpressure a writer on loopback moves gigabytes in 3 s.
const IN_FLIGHT_MAX: u64 = 32 * MIB;
/// Resident memory growth allowed while the writers push: each stream's send and receive
/// windows on both daemons and a chunk in each stream task, plus allocator and runtime slack
/// (about 24 MiB in all here). Unbounded buffering would grow by gigabytes.
const RSS_SLACK_KIB: u64 = (2 * 2 * 2 * STREAM_WINDOW + 8 * MIB) / KIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_bound_buffering_in_both_directions() {
    within(Duration::from_secs(60), async {
        let (mut t, raw) = raw_tunnel(STREAM_WINDOW, SESSION_WINDOW).await;
        // Warm up the data path, the allocator's arenas and the runtime.
        t.check_transfer(8 * MIB, 8 * MIB, 1).await;
        let before = rss_kib();

        // Upload: the client's application writes, the application server reads slowly.
        let (up_near, up_far) = pair(&t, "raw", &raw, b'U').await;
        // Download: the application server writes, the client's application reads slowly.
        let (down_near, down_far) = pair(&t, "raw", &raw, b'D').await;
        // The warm-up's stream ends on both sides once its last acknowledgements are through,
        // which a loaded machine may take a moment for.
        two_streams_open(&t).await;

        let peak = Arc::new(AtomicU64::new(before));
        let sampler = {
            let peak = peak.clone();
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let up_w = tokio::spawn(fast_write(up_near, 1, SLOW_FOR));
        let up_r = tokio::spawn(slow_read(up_far, SLOW_FOR));
        let down_w = tokio::spawn(fast_write(down_far, 2, SLOW_FOR));
        let down_r = tokio::spawn(slow_read(down_near, SLOW_FOR));
        // The engines' own accounting: no stream ever buffers more than its window, either way,
        // at either end, while the writers push against the slow readers.
        let mut engine_peak = (0u64, 0u64);
        while !(up_w.is_finished() && down_w.is_finished()) {
            for (r, w) in [
                t.client.max_stream_buffered(),
                t.server.max_stream_buffered(),
            ] {
                engine_peak = (engine_peak.0.max(r), engine_peak.1.max(w));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            engine_peak.0 <= STREAM_WINDOW && engine_peak.1 <= STREAM_WINDOW,
            "a stream buffered more than its window: receive {} / send {} bytes",
            engine_peak.0,
            engine_peak.1
        );
        assert!(
            engine_peak.0 > 0,
            "the engines never held data: the test measured nothing"
        );
        let (up_sent, up_written) = up_w.await.unwrap();
        let (down_sent, down_written) = down_w.await.unwrap();
        // Both streams are still open: nothing was reset or given up under pressure.
        two_streams_open(&t).await;
        let (up_got, up_slow) = up_r.await.unwrap();
        let (down_got, down_slow) = down_r.await.unwrap();
        sampler.abort();
        let peak = peak.load(Ordering::Relaxed);

        println!(
            "in {SLOW_FOR:?}: upload writer {} KiB, its reader {} KiB; download writer {} KiB, \
             its reader {} KiB; VmRSS {before} KiB before, peak {peak} KiB",
            up_written / KIB,
            up_slow / KIB,
            down_written / KIB,
            down_slow / KIB,
        );
        for (dir, written, slow) in [
            ("upload", up_written, up_slow),
            ("download", down_written, down_slow),
        ] {
            assert!(slow <= 48 * KIB, "{dir}: the slow reader read {slow} bytes");
            assert!(
                written - slow <= IN_FLIGHT_MAX,
                "{dir}: the writer got {written} bytes in while its reader took {slow}"
            );
        }
        assert!(
            peak <= before + RSS_SLACK_KIB,
            "memory grew from {before} KiB to {peak} KiB while the readers were slow"
        );
        assert_eq!(up_sent, up_got, "upload: sent vs received");
        assert_eq!(down_sent, down_got, "download: sent vs received");
        assert!(
            eventually(Duration::from_secs(5), || t.client.stream_count() == 0
                && t.server.stream_count() == 0)
            .await,
            "streams left: client {}, server {}",
            t.client.stream_count(),
            t.server.stream_count()
        );
    })
    .await;
}

/// Exactly the test's two streams are open at both ends (within 5 s).
async fn two_streams_open(t: &Tunnel) {
    assert!(
        eventually(Duration::from_secs(5), || t.client.stream_count() == 2
            && t.server.stream_count() == 2)
        .await,
        "streams: client {}, server {} (want 2 each)",
        t.client.stream_count(),
        t.server.stream_count()
    );
}
