//! What the client's links tell the rest of the daemon about dialling: whether the first dials
//! have settled (a link is up, or a dial failed and said why), which is when the service manager
//! hears `READY=1`; and the `warn` line a failed dial costs, with a reason a person can act on,
//! at most one per node per [`WARN_EVERY`] with the count of that node's failures in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::{debug, warn};
use wanmux_core::noise::LinkError;

/// At most one `warn` line about failed dials of a node per this long; the others are counted.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);

/// The `reason` labels of failed dials (`wanmux_handshake_failures_total` on the client), in
/// the order of [`Dials::counts`].
const REASONS: [&str; 9] = [
    "refused_by_node",
    "session_refused",
    "connection_refused",
    "auth",
    "tls",
    "node_id_mismatch",
    "timeout",
    "io",
    "other",
];

/// Shared by every link slot of the client.
#[derive(Debug)]
pub(crate) struct Dials {
    /// Set once a link came up or a dial failed.
    settled: watch::Sender<bool>,
    /// Per node (as the config names it: one entry per `[[node]]`).
    log: Mutex<HashMap<String, WarnLog>>,
    /// Failed dials since start, by reason (in the order of [`REASONS`]).
    counts: [AtomicU64; REASONS.len()],
}

#[derive(Debug, Default)]
struct WarnLog {
    /// The last failed dial's reason, and when.
    last_error: Option<(Instant, String)>,
    /// When the last `warn` line was written.
    last: Option<Instant>,
    /// Failed dials since then that got no line of their own.
    unreported: u64,
}

impl Default for Dials {
    fn default() -> Self {
        Dials {
            settled: watch::Sender::new(false),
            log: Mutex::new(HashMap::new()),
            counts: Default::default(),
        }
    }
}

impl Dials {
    /// Completes once a link came up or a dial failed.
    pub(crate) async fn wait_settled(&self) {
        let mut rx = self.settled.subscribe();
        // The sender lives as long as `self`, so this cannot fail while we wait.
        let _ = rx.wait_for(|settled| *settled).await;
    }

    /// Whether a link came up or a dial failed since start.
    pub(crate) fn settled(&self) -> bool {
        *self.settled.borrow()
    }

    pub(crate) fn link_up(&self) {
        self.settled.send_replace(true);
    }

    /// A dial of `node` at `addr` failed with `e`: logged at debug always, at warn with a reason
    /// to act on when no warn line about `node` was written within [`WARN_EVERY`].
    pub(crate) fn failed(
        &self,
        node: impl std::fmt::Display,
        addr: &str,
        e: &LinkError,
        quic: bool,
    ) {
        debug!(%node, %addr, error = %e, "dial failed");
        self.report(reason(e), &node, addr, || explain(e, &node, addr, quic));
    }

    /// A link to `node` at `addr` came up, and the node refused it its session: `why` (a
    /// limit of the node's, `CLOSE` with a code). Counted and logged as a failed dial.
    pub(crate) fn session_refused(&self, node: impl std::fmt::Display, addr: &str, why: &str) {
        debug!(%node, %addr, why, "link refused its session");
        self.report("session_refused", &node, addr, || why.to_owned());
    }

    /// Counts a failed dial under `label` and logs it at warn, with `reason()`, when no warn
    /// line about `node` was written within [`WARN_EVERY`]: with several nodes down, each is
    /// named every minute, not whichever failed last.
    fn report(
        &self,
        label: &str,
        node: &dyn std::fmt::Display,
        addr: &str,
        reason: impl FnOnce() -> String,
    ) {
        if let Some(i) = REASONS.iter().position(|r| *r == label) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        let reason = reason();
        if let Some(earlier) = self.turn(&node.to_string(), Instant::now(), &reason) {
            if earlier > 0 {
                warn!(%node, %addr, %reason, failed_dials_since_last_report = earlier, "cannot open a link to the node");
            } else {
                warn!(%node, %addr, %reason, "cannot open a link to the node");
            }
        }
        // Settled only once the reason is in the log.
        self.settled.send_replace(true);
    }
}

impl Dials {
    /// Records a failed dial of `node` at `now` for `why` (for `status`), and whether it gets a
    /// `warn` line: with the count of its failures since its last line, or `None` when that
    /// line is within [`WARN_EVERY`] (the failure is counted for the next).
    fn turn(&self, node: &str, now: Instant, why: &str) -> Option<u64> {
        // Only counting runs under this lock.
        let mut logs = self.log.lock().expect("dial log lock poisoned");
        let log = logs.entry(node.to_owned()).or_default();
        log.last_error = Some((now, why.to_owned()));
        if log.last.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            log.unreported += 1;
            None
        } else {
            log.last = Some(now);
            Some(std::mem::take(&mut log.unreported))
        }
    }

    /// Why the last dial of `node` failed and how long before `now`, for `status` (the client
    /// shows it for a node it has no link to).
    pub(crate) fn last_error(&self, node: &str, now: Instant) -> Option<(Duration, String)> {
        let logs = self.log.lock().expect("dial log lock poisoned");
        let (at, why) = logs.get(node)?.last_error.as_ref()?;
        Some((now.saturating_duration_since(*at), why.clone()))
    }

    /// Failed dials since start, by reason; every reason is listed.
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        REASONS
            .iter()
            .zip(&self.counts)
            .map(|(r, n)| ((*r).to_owned(), n.load(Relaxed)))
            .collect()
    }
}

/// The `reason` label of a failed dial: one of [`REASONS`], grouped as [`explain`] tells them.
fn reason(e: &LinkError) -> &'static str {
    use std::io::ErrorKind;
    match e {
        LinkError::Closed => "refused_by_node",
        LinkError::Io(io) if io.kind() == ErrorKind::ConnectionReset => "refused_by_node",
        LinkError::Io(io) if io.kind() == ErrorKind::ConnectionRefused => "connection_refused",
        LinkError::Auth(_) => "auth",
        LinkError::Tls(_) => "tls",
        LinkError::Protocol("node id mismatch") => "node_id_mismatch",
        LinkError::Timeout => "timeout",
        LinkError::Io(_) => "io",
        _ => "other",
    }
}

/// Whether `addr` (`HOST:PORT`) names its host rather than giving its IP address.
fn is_name(addr: &str) -> bool {
    addr.parse::<std::net::SocketAddr>().is_err()
}

/// Why a dial failed, in words that say what to check.
fn explain(e: &LinkError, node: &dyn std::fmt::Display, addr: &str, quic: bool) -> String {
    use std::io::ErrorKind;
    match e {
        LinkError::Closed => "the node closed the link during the handshake: it refused this \
                              client (its public key is not in the node's allowed_clients, the \
                              PSK differs, node.public_key is not the node's key, or the node \
                              runs the other authentication mode), or it had no room for \
                              another handshake (too many from this address or in all, or its \
                              file descriptors); the node's log says which"
            .to_owned(),
        LinkError::Io(io) if io.kind() == ErrorKind::ConnectionReset => format!(
            "the node reset the link during the handshake ({io}): it refused this client \
             (allowed_clients, PSK, node.public_key or mode differ), or it had no room for \
             another handshake (too many from this address or in all, or its file \
             descriptors); the node's log says which"
        ),
        LinkError::Io(io) if io.kind() == ErrorKind::ConnectionRefused => format!(
            "connection refused: nothing listens at {addr} (is wanmux-server running there, \
             and is the port right?{})",
            if is_name(addr) {
                " A name is tried at each of its addresses: none took the connection"
            } else {
                ""
            }
        ),
        // What the resolver says for a name it cannot resolve (getaddrinfo's error, which std
        // and tokio report with this text).
        LinkError::Io(io)
            if io
                .to_string()
                .contains("failed to lookup address information") =>
        {
            format!(
                "cannot resolve the host name of {addr} ({io}): check node.addr's name and this \
                 machine's DNS (names are resolved at each dial)"
            )
        }
        LinkError::Auth(_) => "the node's handshake reply did not decrypt: the PSK differs from \
                               the node's, or node.public_key is not this node's key"
            .to_owned(),
        LinkError::Tls(why) => format!(
            "TLS refused the link ({why}): in PKI mode the node's certificate must be issued by \
             the CA of tls.ca_file, be valid now and carry node.tls_name (default: the host of \
             node.addr), and the node must take this client's certificate (tls.cert_file, \
             issued by the CA of its tls.client_ca_file, not revoked)"
        ),
        LinkError::Protocol("node id mismatch") => format!(
            "the node at {addr} reports another node id than node.id = {node} here: node.id must \
             equal the node's server.node_id"
        ),
        LinkError::Timeout if quic => format!(
            "no handshake within client.handshake_timeout_ms: nothing answers QUIC at {addr} \
             (the node is down or unreachable, UDP to it is blocked, or it runs with \
             server.quic = false, which links.transport = \"quic\" cannot use)"
        ),
        LinkError::Timeout => format!(
            "no handshake within client.handshake_timeout_ms: {addr} does not answer (a firewall \
             dropping packets, a wrong address, or an overloaded node)"
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each node's failed dials get their own line a minute: with two nodes down, both are
    /// named (a trial's client named one node a minute, whichever failed last, and counted the
    /// other's failures under it).
    #[test]
    fn each_node_gets_its_own_warn_line_a_minute() {
        let dials = Dials::default();
        let t0 = Instant::now();
        assert_eq!(dials.turn("2", t0, "down"), Some(0));
        assert_eq!(dials.turn("3", t0, "down"), Some(0), "node 3 is named too");
        assert_eq!(dials.turn("2", t0 + Duration::from_secs(1), "down"), None);
        assert_eq!(dials.turn("2", t0 + Duration::from_secs(2), "down"), None);
        assert_eq!(dials.turn("3", t0 + Duration::from_secs(3), "down"), None);
        assert_eq!(
            dials.turn("2", t0 + WARN_EVERY, "down"),
            Some(2),
            "node 2's own count"
        );
        assert_eq!(dials.turn("3", t0 + WARN_EVERY, "down"), Some(1));
    }

    /// A name that does not resolve reads as such, not as "link I/O error" (a trial's), and a
    /// refused connection to a name says that every address of it was tried.
    #[test]
    fn names_that_do_not_resolve_or_refuse_say_so() {
        let lookup = LinkError::Io(std::io::Error::other(
            "failed to lookup address information: Name or service not known",
        ));
        let why = explain(&lookup, &"1", "no-such-host.invalid:4480", false);
        assert!(
            why.starts_with("cannot resolve the host name of no-such-host.invalid:4480"),
            "{why}"
        );
        let refused = LinkError::Io(std::io::ErrorKind::ConnectionRefused.into());
        let why = explain(&refused, &"1", "localhost:4480", false);
        assert!(why.contains("each of its addresses"), "{why}");
        let why = explain(&refused, &"1", "127.0.0.1:4480", false);
        assert!(!why.contains("each of its addresses"), "{why}");
    }
}
