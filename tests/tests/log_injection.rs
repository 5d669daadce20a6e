//! What a client sends reaches the node's text log escaped: a service name (255 bytes the
//! client picks, in `OPEN`) with a line break and a forged line behind it, or terminal escapes,
//! is one field of one line, not a line of its own (a trial forged an `ERROR` line so).

use std::time::Duration;
use wanmux_tests::harness::{within, Auth, Tunnel};
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
