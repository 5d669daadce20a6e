//! Benchmark "Flood while working" (issue 23), not a test: ignored by default, run by hand,
//! results in `bench/RESULTS.md`, "Flood while working". A real 256 MiB download runs through a
//! one-node tunnel (4 links) alone, then again while the node takes thousands of junk
//! connections, stalled handshakes and replayed first messages, and a hostile authenticated
//! client (another key) holds eight never-acknowledged downloads; both transfers' hashes are
//! checked, their throughputs compared, and the process's resident memory (node, client and
//! application server in one process) sampled. Alone in its binary, since it reads the
//! process's memory:
//!
//! ```sh
//! cargo test --release -p wanmux-tests --test flood_bench -- --ignored --nocapture
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wanmux_config::ClientAuth;
use wanmux_core::keys::generate_keypair;
use wanmux_tests::harness::{panics, rss_kib, within, Auth, Tunnel, SERVICE};
use wanmux_tests::hostile::{
    capture_first_message, garbage_flood, noise_auth, wire, Garbage, RawLink,
};

const SIZE: u64 = 256 << 20;

#[test]
#[ignore = "a benchmark: run by hand, see the module doc"]
fn flood_while_working() {
    wanmux_tests::hostile::alone(within(Duration::from_secs(600), async {
        let before_panics = panics();
        let (hostile_key, hostile_public) = generate_keypair();
        let mut t = Tunnel::start_with(Auth::Static { psk: false }, 4, |s, _| {
            if let wanmux_config::ServerAuth::StaticKey {
                allowed_clients, ..
            } = &mut s.auth
            {
                allowed_clients.insert(hostile_public);
            }
        })
        .await;
        t.check_transfer(1 << 20, 1 << 20, 1).await;
        let rss_start = rss_kib();
        let started = Instant::now();
        t.check_transfer(0, SIZE, 2).await;
        let calm = started.elapsed();
        let rss_calm = rss_kib();

        // The hostile client: eight 1 GiB downloads, never a WINDOW.
        let mut cfg = t.client_config.clone();
        if let ClientAuth::StaticKey { private_key, .. } = &mut cfg.auth {
            *private_key = hostile_key;
        }
        let server = t.server.local_addr();
        let mut hostile = RawLink::connect(server, &noise_auth(&cfg), rand::random(), 0)
            .await
            .expect("hostile handshake");
        for s in 0..8u64 {
            let mut f = Vec::new();
            wire::open(&mut f, wire::stream(s), SERVICE);
            let mut header = [0u8; 16];
            header[..8].copy_from_slice(&(1u64 << 30).to_be_bytes());
            header[8..].copy_from_slice(&(1000 + s).to_be_bytes());
            wire::data(&mut f, wire::stream(s), 0, &header);
            hostile.send(&f).await.expect("send");
        }
        hostile.sync(Duration::from_secs(10)).await.expect("sync");
        let first = capture_first_message(&noise_auth(&t.client_config)).await;
        let done = Arc::new(AtomicBool::new(false));
        let junk = Arc::new(AtomicU64::new(0));
        let peak = Arc::new(AtomicU64::new(rss_kib()));
        // Junk, replays and cut-short handshakes, 32 at a time, in rounds until the transfer ends.
        let flood = {
            let (done, junk, first) = (done.clone(), junk.clone(), first.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    garbage_flood(
                        server,
                        first.clone(),
                        &Garbage::QUICK,
                        400,
                        32,
                        Duration::from_secs(15),
                    )
                    .await;
                    junk.fetch_add(400, Ordering::Relaxed);
                }
            })
        };
        // Stalled handshakes, 100 held open at a time, each until the node's handshake timeout.
        let stalls = {
            let (done, junk) = (done.clone(), junk.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    garbage_flood(
                        server,
                        first.clone(),
                        &[Garbage::Stall],
                        100,
                        100,
                        Duration::from_secs(15),
                    )
                    .await;
                    junk.fetch_add(100, Ordering::Relaxed);
                }
            })
        };
        // The hostile client answers the node's pings, so it keeps its link and its session.
        let keeper = {
            let done = done.clone();
            tokio::spawn(async move {
                let mut kept = true;
                while !done.load(Ordering::Relaxed) {
                    kept &= hostile.sync(Duration::from_secs(10)).await.is_ok();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                kept
            })
        };
        let sampler = {
            let (done, peak) = (done.clone(), peak.clone());
            tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        t.check_transfer(0, SIZE, 3).await;
        let flooded = started.elapsed();
        done.store(true, Ordering::Relaxed);
        let kept = keeper.await.expect("keeper");
        flood.await.expect("flood");
        stalls.await.expect("stalls");
        sampler.await.expect("sampler");
        let mib = |d: Duration| SIZE as f64 * 8.0 / d.as_secs_f64() / 1e6;
        println!(
            "256 MiB download: alone {calm:.2?} ({:.0} Mbit/s); under the flood {flooded:.2?} \
             ({:.0} Mbit/s, {:.0}%); junk connections {}; hostile link kept: {kept}; VmRSS start {rss_start} KiB, after \
             the calm transfer {rss_calm} KiB, peak under the flood {} KiB; node send pool \
             {:?}",
            mib(calm),
            mib(flooded),
            100.0 * calm.as_secs_f64() / flooded.as_secs_f64(),
            junk.load(Ordering::Relaxed),
            peak.load(Ordering::Relaxed),
            t.server.budget(),
        );
        assert_eq!(
            t.server.session_count(),
            2,
            "sessions: the client's and the hostile one"
        );
        assert_eq!(panics(), before_panics, "something panicked");
    }));
}
