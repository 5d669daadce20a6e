//! What a client does reaches the node's text log escaped and bounded. A service name (255
//! bytes the client picks, in `OPEN`) with a line break and a forged line behind it, or terminal
//! escapes, is one field of one line, not a line of its own (a trial forged an `ERROR` line so).
//! A client that starts and ends sessions as fast as it can gets its share of `info` lines a
//! minute, the rest at `debug` and counted (a trial wrote 1,300 lines a second so).

use std::collections::HashSet;
use std::time::{Duration, Instant};
use wanmux_core::frame::{close, Frame};
use wanmux_core::ids::SessionId;
use wanmux_core::noise::SessionSecret;
use wanmux_tests::harness::{eventually, within, Auth, Tunnel};
use wanmux_tests::hostile::{noise_auth, wire, RawLink};
use wanmux_tests::logs;

const FORGED: &str = "2026-12-07T17:00:00.000000Z ERROR wanmux_server: FORGED LINE";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_name_cannot_forge_a_log_line() {
    let logs = logs::capture("debug,quinn=warn,rustls=warn");
    within(Duration::from_secs(60), async {
        let t = Tunnel::start(Auth::Static { psk: false }, 1).await;
        let mark = logs.mark();
        let mut link = RawLink::connect(
            t.server.local_addr(),
            &noise_auth(&t.client_config),
            rand::random(),
            0,
        )
        .await
        .expect("an authenticated link");
        let mut frame = Vec::new();
        wire::open(
            &mut frame,
            wire::stream(0),
            &format!("nosuch\n{FORGED} \x1b[2J\x1b[31mRED"),
        );
        link.send(&frame).await.expect("send");
        link.sync(Duration::from_secs(10)).await.expect("sync");
        let warned = logs
            .wait_for(
                mark,
                &[
                    "WARN",
                    "a client asked for a service this node does not have",
                ],
                Duration::from_secs(10),
            )
            .await
            .expect("the refusal is logged");
        let lines = logs.since(mark);
        assert!(
            !lines.iter().any(|l| l.starts_with(FORGED)),
            "a forged line:\n{}",
            lines.join("\n")
        );
        assert!(
            !lines.iter().any(|l| l.contains('\x1b')),
            "a terminal escape:\n{}",
            lines.join("\n")
        );
        assert!(warned.contains("nosuch\\n"), "{warned}");
    })
    .await;
}

/// `LOG_LINES_PER_CLIENT` of `server/src/session.rs`.
const SHARE_A_MINUTE: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_starting_and_ending_sessions_gets_its_share_of_log_lines() {
    let logs = logs::capture("debug,quinn=warn,rustls=warn");
    within(Duration::from_secs(120), async {
        let t = Tunnel::start(Auth::Static { psk: false }, 1).await;
        let auth = noise_auth(&t.client_config);
        let mark = logs.mark();
        let started = Instant::now();
        const SESSIONS: usize = 150;
        // The sessions' ids, which their lines carry (`session{id=...}`).
        let mut ids = HashSet::new();
        for i in 0..SESSIONS {
            let secret: [u8; 32] = rand::random();
            ids.insert(format!(
                "session{{id={}}}",
                SessionId(SessionSecret::from_bytes(secret).id())
            ));
            let mut link = RawLink::connect(t.server.local_addr(), &auth, secret, 0)
                .await
                .expect("an authenticated link");
            // The node has the session (its line is logged) once it answers.
            link.sync(Duration::from_secs(10)).await.expect("sync");
            let mut frame = Vec::new();
            Frame::Close(close::SESSION_OVER).encode(&mut frame);
            link.send(&frame).await.expect("send");
            link.flush().await.expect("flush");
            // Ended before the next starts: the client's session limit stays out of the way.
            assert!(
                eventually(Duration::from_secs(10), || t.server.session_count() <= 1).await,
                "session {i} not ended"
            );
        }
        let elapsed = started.elapsed().as_secs() as usize;
        let left_out = logs
            .wait_for(mark, &["about client", "left out"], Duration::from_secs(10))
            .await
            .expect("a line counts the lines left out");
        // Every session's start is logged, at info while the share lasts and at debug after.
        let lines = logs.since(mark);
        let ours = |l: &&String| ids.iter().any(|id| l.contains(id.as_str()));
        let about = |what: &str, level: &str| {
            let lines = lines.iter().filter(ours);
            lines
                .filter(|l| l.contains(what) && l.contains(level))
                .count()
        };
        assert_eq!(about("session started", ""), SESSIONS, "{left_out}");
        let at_info = ["session started", "session over", "link ended"]
            .iter()
            .map(|what| about(what, " INFO "))
            .sum::<usize>();
        // The share, and what a minute refills of it while the sessions came.
        let allowed = SHARE_A_MINUTE + (elapsed + 1) * SHARE_A_MINUTE / 60;
        assert!(
            at_info <= allowed,
            "{at_info} info lines about {SESSIONS} sessions in {elapsed} s, more than {allowed}"
        );
        assert!(at_info >= SHARE_A_MINUTE / 2, "{at_info} info lines");
    })
    .await;
}
