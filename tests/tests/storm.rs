//! Reconnect storm: 200 clients (one link each) lose their links at the same instant. Each link
//! slot redials after a random sleep in `[backoff/2, backoff]`, with the backoff starting at
//! 100 ms and doubling while links keep dying young, so the server must see the reconnects
//! spread over that window, not as one burst. The relay in front of the server records when it
//! accepted each connection: that is when the server sees it.

use std::time::{Duration, Instant};
use wanmux_relay::{Links, Relay, Shape};
use wanmux_tests::harness::{
    app_server, configs, eventually, init_tracing, point_client_at, within, Auth,
};

const CLIENTS: usize = 200;
const BUCKET: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_a_mass_link_loss_spread_over_the_backoff_window() {
    // Per client: its mapped port and its link; per link two relay sockets and one at the
    // server; old and new links overlap for a moment.
    let need = 8 * CLIENTS as u64 + 512;
    let got = rlimit::increase_nofile_limit(need).expect("raise RLIMIT_NOFILE");
    assert!(
        got >= need,
        "RLIMIT_NOFILE too low: need {need}, can have {got}"
    );
    init_tracing();
    within(Duration::from_secs(60), async {
        let app = app_server().await;
        let (server_cfg, mut client_cfg) = configs(Auth::Psk, app.addr, 1);
        let server = wanmux_server::start(server_cfg).await.unwrap();
        let relay = Relay::start(server.local_addr(), Shape::default())
            .await
            .expect("relay starts");
        point_client_at(&mut client_cfg, relay.addr());
        let mut clients = Vec::with_capacity(CLIENTS);
        for _ in 0..CLIENTS {
            clients.push(wanmux_client::start(client_cfg.clone()).await.unwrap());
        }
        let all_up =
            |clients: &[wanmux_client::ClientHandle]| clients.iter().all(|c| c.live_links() == 1);
        assert!(
            eventually(Duration::from_secs(20), || all_up(&clients)).await,
            "not every client got its link up"
        );
        // The server counts a session once the link's key confirmation arrived, just after
        // the client counts the link.
        assert!(
            eventually(Duration::from_secs(5), || server.session_count() == CLIENTS).await,
            "the server holds {} sessions, not {CLIENTS}",
            server.session_count()
        );

        // Two waves: the first redials after 50..100 ms, the second (links that died young
        // again) after 100..200 ms.
        let mut young_since: Option<Instant> = None;
        for (wave, backoff) in [(1, 100u64), (2, 200)] {
            let before = relay.accepted();
            let lost = Instant::now();
            // A link that lived 1 s starts its slot's backoff over (100 ms): on a loaded
            // machine the first links of wave 1 can be that old before every client is back,
            // and their slots then redial as in wave 1.
            let backoff = match young_since {
                Some(t) if lost - t >= Duration::from_millis(950) => {
                    println!(
                        "wave {wave}: the first links back from the last wave lived {:?}: \
                         backoff of 100 ms",
                        lost - t
                    );
                    100
                }
                _ => backoff,
            };
            relay.reset(Links::All);
            assert!(
                eventually(Duration::from_secs(10), || relay.accepted()
                    >= before + CLIENTS
                    && all_up(&clients))
                .await,
                "wave {wave}: not every client came back"
            );
            let times = relay.accept_times();
            let accepted = &times[before..before + CLIENTS];
            young_since = accepted.iter().min().copied();
            let delays: Vec<Duration> = accepted.iter().map(|&t| t - lost).collect();
            let backoff = Duration::from_millis(backoff);
            check_spread(wave, &delays, backoff);
            assert!(
                eventually(Duration::from_secs(5), || server.session_count() == CLIENTS).await,
                "wave {wave}: {} sessions, not {CLIENTS}: sessions were not resumed",
                server.session_count()
            );
        }
        for c in clients {
            c.shutdown();
        }
        server.shutdown();
    })
    .await;
}

/// Asserts that `delays` (from the loss to each reconnect) are spread over the jitter window
/// `[backoff / 2, backoff]`: none before it starts, the middle 80% over at least a quarter of
/// `backoff` (uniform jitter gives 40%; redials without jitter, a few ms), and no 10 ms window
/// holding two thirds of them. The thresholds leave room for a loaded machine, where the
/// runtime that hosts all 200 clients fires their timers in batches.
fn check_spread(wave: usize, delays: &[Duration], backoff: Duration) {
    let mut sorted = delays.to_vec();
    sorted.sort();
    let n = sorted.len();
    let (first, last) = (sorted[0], sorted[n - 1]);
    let (p10, p90) = (sorted[n / 10], sorted[n * 9 / 10]);
    // The most reconnects in any window of BUCKET (sliding over the sorted delays).
    let mut densest = 0;
    let mut start = 0;
    for end in 0..n {
        while sorted[end] - sorted[start] >= BUCKET {
            start += 1;
        }
        densest = densest.max(end - start + 1);
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "wave {wave}: {n} reconnects from {:.1} ms to {:.1} ms after the loss (10% {:.1} ms, \
         median {:.1} ms, 90% {:.1} ms), at most {densest} in any {BUCKET:?}",
        ms(first),
        ms(last),
        ms(p10),
        ms(sorted[n / 2]),
        ms(p90),
    );
    assert!(
        first >= backoff / 2,
        "wave {wave}: a client reconnected after {first:?}, before half the backoff"
    );
    assert!(
        p90 - p10 >= backoff / 4,
        "wave {wave}: the middle 80% of reconnects came within {:?}: a burst",
        p90 - p10
    );
    assert!(
        densest * 3 <= n * 2,
        "wave {wave}: {densest} of {n} reconnects within {BUCKET:?}: a burst"
    );
}
