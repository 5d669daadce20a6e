//! Downloads that their applications stop reading, and uploads to a service that stops reading,
//! hold their streams' windows, not the session's: the client's other connections keep moving.
//! A trial stalled a client: 10-30 local connections that asked for large downloads and never
//! read them filled its session window (`limits.session_window`) with bytes no one read, and
//! every other connection of that client, to any service, got no answer until they were gone;
//! uploads into a service that did not read did the same at the node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use wanmux_tests::harness::{eventually, within};
use wanmux_tests::slow::{pair, raw_tunnel};

const MIB: u64 = 1 << 20;
const STREAM_WINDOW: u64 = 8 * MIB;
/// The engine's smallest: the protocol's initial session credit. Four streams' windows are
/// twice it.
const SESSION_WINDOW: u64 = 16 * MIB;
/// Stalled downloads.
const STALLED: u8 = 4;

/// Which end's applications stop reading.
#[derive(Clone, Copy, Debug)]
enum Stalled {
    /// The client's: downloads.
    Downloads,
    /// The service's, behind the node: uploads.
    Uploads,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_nobody_reads_leave_the_session_s_other_connections_moving() {
    other_connections_move(Stalled::Downloads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_a_service_does_not_read_leave_the_session_s_other_connections_moving() {
    other_connections_move(Stalled::Uploads).await;
}

async fn other_connections_move(stalled: Stalled) {
    within(Duration::from_secs(60), async {
        let (mut t, raw) = raw_tunnel(STREAM_WINDOW, SESSION_WINDOW).await;
        // Connections whose readers never read: their writers write until the socket takes
        // no more.
        let written = Arc::new(AtomicU64::new(0));
        let mut held = Vec::new();
        for tag in 0..STALLED {
            let (near, far) = pair(&t, "raw", &raw, tag).await;
            let (mut writer, reader) = match stalled {
                Stalled::Downloads => (far, near),
                Stalled::Uploads => (near, far),
            };
            let written = written.clone();
            let task = tokio::spawn(async move {
                let chunk = vec![tag; 64 * 1024];
                while writer.write_all(&chunk).await.is_ok() {
                    written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
            held.push((reader, task));
        }
        // The receiving daemon holds nearly a session window of them unread (before the fix,
        // the session's credit stopped them there).
        let unread = || {
            let status = match stalled {
                Stalled::Downloads => t.client.status(),
                Stalled::Uploads => t.server.status(),
            };
            status
                .sessions
                .iter()
                .map(|s| s.receive_buffered_bytes)
                .sum::<u64>()
        };
        assert!(
            eventually(Duration::from_secs(20), || unread()
                >= SESSION_WINDOW - 2 * MIB)
            .await,
            "{stalled:?}: the stalled connections hold {} MiB unread ({} MiB written)",
            unread() / MIB,
            written.load(Ordering::Relaxed) / MIB
        );
        // Another connection of the same client moves its bytes both ways, intact.
        tokio::time::timeout(
            Duration::from_secs(10),
            t.check_transfer(2 * MIB, 2 * MIB, 5),
        )
        .await
        .unwrap_or_else(|_| panic!("{stalled:?}: another connection is stalled behind them"));
        for (reader, task) in held {
            task.abort();
            drop(reader);
        }
    })
    .await;
}
