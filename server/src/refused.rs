//! The log line a refused link costs: a reason a person can act on (which key, which setting),
//! at `warn` when the peer looks like a misconfigured wanmux client and at `info` when it looks
//! like a scan or a health check; each kind of refusal at most once per [`LOG_EVERY`], with the
//! count of the refusals of that kind since its last line. Every refusal is also logged at
//! `debug`, so a peer can make the node write a bounded number of lines only.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use wanmux_core::noise::{LinkError, ServerAuth};

/// At most one line per kind of refusal per this long.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(60);

/// For this long after a link from an address was refused its session (a limit, memory), a
/// link from it that the client closes on this node's reply is taken as one of that client's
/// links dialled together with the refused one, which it gave up on hearing the refusal.
const REFUSED_SESSION_MEMORY: Duration = Duration::from_secs(10);

/// Addresses remembered for [`REFUSED_SESSION_MEMORY`] at most; past it the oldest go first.
const REFUSED_SESSION_ADDRS: usize = 1024;

/// Where in the handshake a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Before this node answered: message 1 was missing, malformed or refused.
    BeforeReply,
    /// After this node sent message 2, waiting for the client's key confirmation.
    AfterReply,
}

/// The kinds of refusal, each rate-limited on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    UnknownClient,
    Replayed,
    Secret,
    Mode,
    WrongServerKey,
    WrongPsk,
    ClientGaveUp,
    Silent,
    Timeout,
    NotWanmux,
    Quic,
    CertExpired,
    CertRevoked,
    CertInvalid,
    NodeCertRefused,
    Busy,
    Memory,
    SessionLimit,
    PeerLink,
    Other,
}

impl Kind {
    const ALL: [Kind; 20] = [
        Kind::UnknownClient,
        Kind::Replayed,
        Kind::Secret,
        Kind::Mode,
        Kind::WrongServerKey,
        Kind::WrongPsk,
        Kind::ClientGaveUp,
        Kind::Silent,
        Kind::Timeout,
        Kind::NotWanmux,
        Kind::Quic,
        Kind::CertExpired,
        Kind::CertRevoked,
        Kind::CertInvalid,
        Kind::NodeCertRefused,
        Kind::Busy,
        Kind::Memory,
        Kind::SessionLimit,
        Kind::PeerLink,
        Kind::Other,
    ];

    /// The `reason` label of `wanmux_handshake_failures_total`.
    fn label(self) -> &'static str {
        match self {
            Kind::UnknownClient => "unknown_client",
            Kind::Replayed => "replayed",
            Kind::Secret => "wrong_session_secret",
            Kind::Mode => "auth_mode",
            Kind::WrongServerKey => "wrong_server_key",
            Kind::WrongPsk => "wrong_psk",
            Kind::ClientGaveUp => "client_gave_up",
            Kind::Silent => "closed_early",
            Kind::Timeout => "timeout",
            Kind::NotWanmux => "not_wanmux",
            Kind::Quic => "quic",
            Kind::CertExpired => "client_cert_expired",
            Kind::CertRevoked => "client_cert_revoked",
            Kind::CertInvalid => "client_cert_invalid",
            Kind::NodeCertRefused => "node_cert_refused",
            Kind::Busy => "busy",
            Kind::Memory => "memory",
            Kind::SessionLimit => "session_limit",
            Kind::PeerLink => "peer_link",
            Kind::Other => "other",
        }
    }
}

/// What a refusal's line is rate-limited by: its kind, and a finer kind (which session limit;
/// empty for the others).
type LogKey = (Kind, &'static str);

/// The rate-limited log of refused links, one per node, and the count of every refusal.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Per kind (and, for session limits, per limit): when its last line was written, and the
    /// refusals since then without one.
    last: Mutex<HashMap<LogKey, (Instant, u64)>>,
    /// Addresses whose links were refused their session lately, and when.
    refused_sessions: Mutex<HashMap<IpAddr, Instant>>,
    /// Every refusal since start, by kind (in the order of [`Kind::ALL`]).
    counts: [AtomicU64; Kind::ALL.len()],
}

impl Refusals {
    /// Logs a link from `peer` that the handshake refused with `e` at `stage`, under `auth`.
    pub(crate) fn handshake(
        &self,
        peer: SocketAddr,
        e: &LinkError,
        stage: Stage,
        auth: &ServerAuth,
    ) {
        debug!(%peer, reason = %e, ?stage, "link refused");
        let (kind, loud, reason) = explain(e, stage, auth);
        if stage == Stage::AfterReply && closed(e) && self.session_refused_lately(peer.ip()) {
            // Another link of that client was refused its session a moment ago, and the client
            // closed the ones it was dialling beside it: that refusal's line said why.
            debug!(%peer, "a link closed by its client after another was refused its session");
            self.count(Kind::SessionLimit);
            return;
        }
        self.log(kind, "", loud, peer, &reason);
    }

    /// Records that a link from `ip` was refused its session now.
    fn session_refused(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut m = self
            .refused_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.retain(|_, at| now.duration_since(*at) < REFUSED_SESSION_MEMORY);
        if m.len() >= REFUSED_SESSION_ADDRS && !m.contains_key(&ip) {
            if let Some(oldest) = m.iter().min_by_key(|(_, at)| **at).map(|(ip, _)| *ip) {
                m.remove(&oldest);
            }
        }
        m.insert(ip, now);
    }

    /// Whether a link from `ip` was refused its session within [`REFUSED_SESSION_MEMORY`].
    fn session_refused_lately(&self, ip: IpAddr) -> bool {
        let m = self
            .refused_sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        m.get(&ip)
            .is_some_and(|at| at.elapsed() < REFUSED_SESSION_MEMORY)
    }

    /// Logs a QUIC connection that failed before its Noise handshake (or PKI hello): a client
    /// certificate that did not verify (PKI mode; at `warn`, by reason: expired, revoked, or
    /// another failure such as another CA), or another QUIC failure.
    pub(crate) fn quic(&self, peer: SocketAddr, e: &LinkError) {
        debug!(%peer, reason = %e, "QUIC link refused");
        if let LinkError::Tls(why) = e {
            // An alert from the client: its TLS refused this node's certificate, not the other
            // way round.
            if why.starts_with(wanmux_core::quic::PEER_REFUSED) {
                let reason = format!(
                    "a client refused this node's certificate ({why}): the client's \
                     tls.ca_file must hold the CA that issued this node's tls.cert_file, which \
                     must be valid now and carry the name the client dials (its node.tls_name)"
                );
                self.log(Kind::NodeCertRefused, "", true, peer, &reason);
                return;
            }
            let lower = why.to_lowercase();
            // TLS's own refusal of a client that offered no protocol of this node's (ALPN):
            // no certificate was looked at (a trial's `h3` client was counted as one refused).
            if lower.contains("known protocol") {
                let reason = format!(
                    "a QUIC client offered none of this node's protocols ({why}): not a wanmux \
                     client, or one of a release this node does not take"
                );
                self.log(Kind::NotWanmux, "", false, peer, &reason);
                return;
            }
            let kind = if lower.contains("expired") {
                Kind::CertExpired
            } else if lower.contains("revoked") {
                Kind::CertRevoked
            } else {
                Kind::CertInvalid
            };
            let reason = format!(
                "the client's certificate was refused ({why}): it must be issued by the CA of \
                 tls.client_ca_file, valid now and not revoked (tls.crl_files)"
            );
            self.log(kind, "", true, peer, &reason);
            return;
        }
        // A client that closed its QUIC connection before the handshake was done: a dial it
        // gave up for another (its address race, its fallback to TCP, a node that restarted
        // under its redials), as a TCP connection closed before its handshake is.
        if matches!(e, LinkError::Closed) {
            let reason = "the client closed its QUIC connection before the handshake was done (a dial it gave up for another, or a scan)";
            self.log(Kind::Silent, "", false, peer, reason);
            return;
        }
        let reason = format!("the QUIC handshake failed: {e}");
        self.log(Kind::Quic, "", false, peer, &reason);
    }

    /// Logs a connection refused before its handshake because the node has no room for it:
    /// too many handshakes (from its address, or in all), or file descriptors near the limit.
    pub(crate) fn busy(&self, peer: SocketAddr, reason: &str) {
        debug!(%peer, %reason, "link refused");
        self.log(Kind::Busy, "", true, peer, reason);
    }

    /// Logs an authenticated link refused where it would join its session because its
    /// client's share of the node's memory cap (`limits.memory`, `total` bytes) cannot cover
    /// the link's buffers (`session::LinkCharge`).
    pub(crate) fn memory(&self, peer: SocketAddr, total: u64) {
        debug!(%peer, "link refused: memory");
        let reason = format!(
            "the client's share of limits.memory ({} MiB in all) cannot cover one more link \
             (each holds up to {} KiB of buffers): the client opens more links than the node's \
             memory allows it (lower its links.max, or raise limits.memory)",
            total >> 20,
            (wanmux_core::driver::link::LINK_RECV_MEMORY
                + wanmux_core::driver::link::LINK_SEND_MEMORY)
                >> 10
        );
        self.session_refused(peer.ip());
        self.log(Kind::Memory, "", true, peer, &reason);
    }

    /// Logs an authenticated link refused where it would join or start its session because of
    /// a limit (`why`: `limits.max_links_per_session`, `max_sessions`,
    /// `max_sessions_per_client`).
    pub(crate) fn session_limit(&self, peer: SocketAddr, why: &'static str) {
        debug!(%peer, why, "link refused");
        self.session_refused(peer.ip());
        let reason = format!("{why}: the client is told (its log says why)");
        // One line a minute for each limit: a node at its `max_sessions` is not hidden behind
        // a client at its `max_sessions_per_client`.
        self.log(Kind::SessionLimit, why, true, peer, &reason);
    }

    /// Logs a connection to the cluster listener (`cluster.listen`) that was refused before it
    /// became a peer link: not a configured peer's key, a replayed message 1, a timeout, a
    /// scan. Authenticated peers whose hello does not match their `[[peer]]` are logged by the
    /// mesh itself, at `warn`, with the ids.
    pub(crate) fn peer_link(&self, peer: SocketAddr, e: &LinkError) {
        debug!(%peer, reason = %e, "peer link refused");
        let reason = match e {
            // The dialler hung up: a node of the cluster whose handshake failed at its end
            // (it could not decrypt this node's reply, or refused it), or a scan.
            LinkError::Closed => "a connection to cluster.listen closed during its handshake: \
                                  if it came from a node of this cluster, its cluster PSK \
                                  differs from this node's or its peer[].public_key for this \
                                  node is not this node's key (its log says which); else a scan"
                .to_owned(),
            e => format!("a connection to cluster.listen did not become a peer link: {e}"),
        };
        self.log(Kind::PeerLink, "", false, peer, &reason);
    }

    /// Every refusal since start, by the `reason` label of its kind; every kind is listed.
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        Kind::ALL
            .iter()
            .zip(&self.counts)
            .map(|(k, n)| (k.label().to_owned(), n.load(Relaxed)))
            .collect()
    }

    /// Counts a refusal of `kind`.
    fn count(&self, kind: Kind) {
        if let Some(i) = Kind::ALL.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a refusal of `kind` and logs it, at most once per [`LOG_EVERY`] for each `kind`
    /// and `sub` (a finer kind: which session limit; empty for the others).
    fn log(&self, kind: Kind, sub: &'static str, loud: bool, peer: SocketAddr, reason: &str) {
        self.count(kind);
        let now = Instant::now();
        let earlier = {
            // Only counting runs under this lock.
            let mut last = self.last.lock().expect("refusal log lock poisoned");
            match last.get_mut(&(kind, sub)) {
                Some((at, n)) if now.duration_since(*at) < LOG_EVERY => {
                    *n += 1;
                    return;
                }
                Some((at, n)) => {
                    *at = now;
                    std::mem::take(n)
                }
                None => {
                    last.insert((kind, sub), (now, 0));
                    0
                }
            }
        };
        match (loud, earlier) {
            (true, 0) => warn!(%peer, %reason, "link refused"),
            (true, n) => warn!(%peer, %reason, more_refused_since_last_report = n, "link refused"),
            (false, 0) => info!(%peer, %reason, "link refused"),
            (false, n) => info!(%peer, %reason, more_refused_since_last_report = n, "link refused"),
        }
    }
}

/// Whether the peer closed (or reset) the connection.
fn closed(e: &LinkError) -> bool {
    use std::io::ErrorKind;
    match e {
        LinkError::Closed => true,
        LinkError::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// The kind of a refusal, whether it is worth a `warn` (a wanmux client that is configured
/// wrong), and what to do about it.
fn explain(e: &LinkError, stage: Stage, auth: &ServerAuth) -> (Kind, bool, String) {
    let static_keys = auth.private_key.is_some();
    let closed = closed(e);
    match e {
        LinkError::UnknownCert(id) => (
            Kind::UnknownClient,
            true,
            format!(
                "the client's certificate verified, but its identity {} is not among the \
                 sha256: entries of server.allowed_clients: add it to let this client in",
                wanmux_core::tls::spki_text(id)
            ),
        ),
        LinkError::UnknownClient(key) => (
            Kind::UnknownClient,
            true,
            format!("client key {key} is not in server.allowed_clients (add it there, then reload, to let this client in)"),
        ),
        LinkError::Replayed => (
            Kind::Replayed,
            true,
            "its message 1 was replayed: this node took that message (or a later one) from the \
             same client before. An attacker sent a recorded message again, or the client's \
             clock went back (it is refused until its clock passes the time of its last link \
             here; see docs/PROTOCOL.md, Replay)"
                .to_owned(),
        ),
        LinkError::Auth(m) if m.contains("secret") => (
            Kind::Secret,
            true,
            "its key confirmation did not hold the secret of the session it asked to join: \
             someone who knows the session's id (any holder of the PSK can read it) tried to \
             join another client's session"
                .to_owned(),
        ),
        LinkError::Auth(m) if m.contains("mode") => (
            Kind::Mode,
            true,
            if static_keys {
                format!(
                    "the client uses another handshake: this node takes static keys {} a PSK \
                     (client.private_key, node.public_key and client.psk must match the node's \
                     mode)",
                    if auth.psk.is_some() { "with" } else { "without" }
                )
            } else {
                "the client uses static keys; this node takes PSK-only clients (remove \
                 client.private_key, or give the node a private_key and allowed_clients)"
                    .to_owned()
            },
        ),
        LinkError::Auth(m) if m.contains("message 1") && static_keys => (
            Kind::WrongServerKey,
            true,
            "the client's message did not decrypt with this node's key: the client's \
             node.public_key is not this node's public key (`wanmux-server pubkey < KEYFILE` \
             prints it)"
                .to_owned(),
        ),
        LinkError::Auth(m) if m.contains("message 1") => (
            Kind::WrongPsk,
            true,
            "the client's message did not decrypt: its PSK differs from this node's server.psk"
                .to_owned(),
        ),
        LinkError::Auth(m) if m.contains("key confirmation") => (
            Kind::WrongPsk,
            true,
            "the client's key confirmation did not decrypt: its PSK differs from this node's"
                .to_owned(),
        ),
        _ if closed && stage == Stage::AfterReply && auth.psk.is_some() && static_keys => (
            Kind::WrongPsk,
            true,
            "the client closed the link on this node's reply, which it could not decrypt: its \
             PSK differs from this node's server.psk (or it gave up: see its log)"
                .to_owned(),
        ),
        // At `info`: in these modes the client refuses nothing in the reply (a wrong node key or
        // PSK fails message 1 here), so this is its handshake timing out, as it does on a path
        // that comes back from an outage (a trial saw the warning on every recovery).
        _ if closed && stage == Stage::AfterReply => (
            Kind::ClientGaveUp,
            false,
            "the client closed the link on this node's reply (its handshake timed out: a slow \
             path, or one coming back from an outage; or it refused this node: see its log)"
                .to_owned(),
        ),
        _ if closed => (
            Kind::Silent,
            false,
            "closed before its handshake (a port scan or a TCP health check)".to_owned(),
        ),
        LinkError::Timeout => (
            Kind::Timeout,
            false,
            "no complete handshake within server.handshake_timeout_ms (a scan, or a client on \
             a very slow path)"
                .to_owned(),
        ),
        LinkError::Protocol(m) if m.contains("version") => (
            Kind::NotWanmux,
            true,
            format!("the client runs another wanmux version ({m}): upgrade both ends"),
        ),
        LinkError::Protocol(m) => (
            Kind::NotWanmux,
            false,
            format!("not a wanmux handshake, or another version: {m}"),
        ),
        other => (Kind::Other, false, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn static_keys() -> ServerAuth {
        ServerAuth {
            private_key: Some(wanmux_core::keys::generate_keypair().0),
            allowed_clients: Default::default(),
            psk: None,
        }
    }

    fn count(r: &Refusals, label: &str) -> u64 {
        r.counts()[label]
    }

    /// A trial's node warned "the client closed the link on this node's reply" for every
    /// session it refused: the client's other links, dialled beside the refused one and closed
    /// when it heard the refusal. They count as the refusal's now, and log nothing more.
    #[test]
    fn links_a_client_closes_after_its_session_was_refused_are_that_refusal() {
        let r = Refusals::default();
        let auth = static_keys();
        let client: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let other: SocketAddr = "192.0.2.8:40000".parse().unwrap();
        r.session_limit(client, "limits.max_sessions");
        let sibling = SocketAddr::new(client.ip(), 40001);
        r.handshake(sibling, &LinkError::Closed, Stage::AfterReply, &auth);
        assert_eq!(count(&r, "session_limit"), 2);
        assert_eq!(count(&r, "client_gave_up"), 0);
        // Another address's is what it always was.
        r.handshake(other, &LinkError::Closed, Stage::AfterReply, &auth);
        assert_eq!(count(&r, "client_gave_up"), 1);
    }

    /// A QUIC client that offered no protocol of this node's is not a refused certificate.
    #[test]
    fn a_client_of_another_protocol_is_not_a_refused_certificate() {
        let r = Refusals::default();
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        r.quic(
            peer,
            &LinkError::Tls("peer doesn't support any known protocol".to_owned()),
        );
        assert_eq!(count(&r, "not_wanmux"), 1);
        assert_eq!(count(&r, "client_cert_invalid"), 0);
        r.quic(
            peer,
            &LinkError::Tls("invalid peer certificate: UnknownIssuer".to_owned()),
        );
        assert_eq!(count(&r, "client_cert_invalid"), 1);
    }

    /// Each session limit has its own line a minute: a node at `max_sessions` was named only a
    /// minute after a client at its `max_sessions_per_client`.
    #[test]
    fn each_session_limit_is_rate_limited_on_its_own() {
        let r = Refusals::default();
        let peer: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        r.session_limit(peer, "limits.max_sessions_per_client");
        r.session_limit(peer, "limits.max_sessions");
        r.session_limit(peer, "limits.max_sessions");
        let last = r.last.lock().unwrap();
        // Each was logged once (the count of those not logged since is 0), the repeat counted.
        assert_eq!(
            last[&(Kind::SessionLimit, "limits.max_sessions_per_client")].1,
            0
        );
        assert_eq!(last[&(Kind::SessionLimit, "limits.max_sessions")].1, 1);
    }
}
