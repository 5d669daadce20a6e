//! Connections accepted while the client has no link up: each waits up to `client.link_wait_ms`
//! for one, in its own task so the accept loop goes on, then either becomes a stream or is
//! reset. Without this a connection made while every node is unreachable would hang for the
//! whole session grace (25 s) before it is reset. The resets cost a `warn` line at most once a
//! minute, with the count in between.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tracing::{debug, warn};
use wanmux_core::driver::SessionDriver;

/// At most one `warn` line about reset connections per this long.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// How often a held connection looks whether a link came up (besides being woken when one
/// does), so a wake-up that raced with the look is not missed for long.
const RECHECK: Duration = Duration::from_millis(50);

/// The client's policy for connections that arrive with no link up, shared by its accept loops.
#[derive(Debug)]
pub(crate) struct NoLink {
    /// `client.link_wait_ms`.
    wait: Duration,
    /// When the last `warn` line was written, and the resets since then without one.
    log: Mutex<(Option<Instant>, u64)>,
}

impl NoLink {
    pub(crate) fn new(wait: Duration) -> Self {
        NoLink {
            wait,
            log: Mutex::new((None, 0)),
        }
    }

    /// Waits up to `client.link_wait_ms` for a link of `driver` to be up; `true` once one is.
    pub(crate) async fn wait_for_link(&self, driver: &SessionDriver) -> bool {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            if driver.live_links() > 0 {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return false;
            }
            let _ =
                tokio::time::timeout((deadline - now).min(RECHECK), driver.links_changed()).await;
        }
    }

    /// Resets `tcp` (from `peer`), which found no link within the wait.
    pub(crate) fn refuse(&self, tcp: TcpStream, peer: SocketAddr) {
        // An RST, so the application sees at once that the connection failed.
        let _ = tcp.set_zero_linger();
        drop(tcp);
        debug!(%peer, "no link up: connection reset");
        let now = Instant::now();
        let earlier = {
            // Only counting runs under this lock.
            let mut log = self.log.lock().expect("no-link log lock poisoned");
            if log.0.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
                log.1 += 1;
                return;
            }
            log.0 = Some(now);
            std::mem::take(&mut log.1)
        };
        warn!(
            %peer,
            wait_ms = self.wait.as_millis() as u64,
            more_reset_since_last_report = earlier,
            "no link to any node: a new connection was reset after client.link_wait_ms (the \
             dial failures above say why)"
        );
    }
}
