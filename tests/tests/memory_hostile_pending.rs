//! Data without `OPEN` under a hostile authenticated client (issue 23, finding 2): one client
//! key, six session ids, each session sending its full initial credit (16 MiB, 2 MiB on each of
//! eight streams) and never an `OPEN`. Streams waiting for their `OPEN` must fit in the node's
//! memory cap or are refused, so the node holds about its cap, not 96 MiB. Alone in its test
//! binary because it reads the process's resident memory.

use std::time::Duration;
use wanmux_core::budget::Pool;
use wanmux_core::frame::close;
use wanmux_tests::harness::{rss_kib, within};
use wanmux_tests::hostile::{alone, wire, Attack, RawLink};

/// Growth allowed: the node's receive pool (4 MiB) and allocator and runtime noise.
const SLACK_KIB: u64 = 16 * 1024;
const SESSIONS: u64 = 6;
const STREAMS: u64 = 8;
const PER_STREAM: u64 = 2 << 20;
const CHUNK: u64 = 60_000;

#[test]
fn six_sessions_of_data_without_open() {
    alone(within(Duration::from_secs(120), async {
        let attack = Attack::start().await;
        let (auth, server) = (&attack.auth, attack.server);
        let before = rss_kib();
        let payload = vec![0x5A; CHUNK as usize];
        let mut frame = Vec::new();
        let mut refused = 0;
        for n in 0..SESSIONS {
            let mut link = RawLink::connect(server, auth, rand::random(), 0)
                .await
                .expect("an allowed client's handshake");
            let sent = async {
                for s in 0..STREAMS {
                    let mut offset = 0;
                    while offset < PER_STREAM {
                        let n = CHUNK.min(PER_STREAM - offset) as usize;
                        frame.clear();
                        wire::data(&mut frame, wire::stream(s), offset, &payload[..n]);
                        link.send(&frame).await?;
                        offset += n as u64;
                    }
                }
                // Processed; the session outlives its link (its grace period).
                link.sync(Duration::from_secs(30)).await
            }
            .await;
            if let Err(e) = sent {
                // The earlier sessions' data may still hold the client's share of the memory
                // cap (their streams wait for an OPEN until their pending lifetime ends): then
                // the node refuses the link, which is the cap at work. Anything else is not.
                let code = link.close_code_within(Duration::from_secs(5)).await;
                assert_eq!(
                    code,
                    Some(close::NO_MEMORY),
                    "session {n}: the link failed ({e}) without the node's refusal for memory"
                );
                refused += 1;
            }
        }
        assert!(
            refused <= SESSIONS / 2,
            "{refused} of {SESSIONS} sessions refused"
        );
        let after = rss_kib();
        let used = attack.tunnel.server.budget().used(Pool::Recv);
        println!(
            "VmRSS before {before} KiB, after {SESSIONS} sessions of data without OPEN {after} \
             KiB; receive pool {used} bytes; {refused} sessions refused for memory"
        );
        assert!(
            used <= attack.tunnel.server.budget().cap(),
            "receive pool {used}"
        );
        attack.survived(before, after, SLACK_KIB).await;
    }));
}
