//! The log line a refused link costs: a reason a person can act on (which key, which setting),
//! at `warn` when the peer looks like a misconfigured wanmux client and at `info` when it looks
//! like a scan or a health check; each kind of refusal at most once per [`LOG_EVERY`], with the
//! count of the refusals of that kind since its last line. Every refusal is also logged at
//! `debug`, so a peer can make the node write a bounded number of lines only.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};
use wanmux_core::noise::{LinkError, ServerAuth};

/// At most one line per kind of refusal per this long.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(60);

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

/// The rate-limited log of refused links, one per node, and the count of every refusal.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Per kind: when its last line was written, and the refusals since then without one.
    last: Mutex<HashMap<Kind, (Instant, u64)>>,
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
        self.log(kind, loud, peer, &reason);
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
                self.log(Kind::NodeCertRefused, true, peer, &reason);
                return;
            }
            let lower = why.to_lowercase();
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
            self.log(kind, true, peer, &reason);
            return;
        }
        // A client that closed its QUIC connection before the handshake was done: a dial it
        // gave up for another (its address race, its fallback to TCP, a node that restarted
        // under its redials), as a TCP connection closed before its handshake is.
        if matches!(e, LinkError::Closed) {
            let reason = "the client closed its QUIC connection before the handshake was done                           (a dial it gave up for another, or a scan)";
            self.log(Kind::Silent, false, peer, reason);
            return;
        }
        let reason = format!("the QUIC handshake failed: {e}");
        self.log(Kind::Quic, false, peer, &reason);
    }

    /// Logs a connection refused before its handshake because the node has no room for it:
    /// too many handshakes (from its address, or in all), or file descriptors near the limit.
    pub(crate) fn busy(&self, peer: SocketAddr, reason: &str) {
        debug!(%peer, %reason, "link refused");
        self.log(Kind::Busy, true, peer, reason);
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
        self.log(Kind::Memory, true, peer, &reason);
    }

    /// Logs an authenticated link refused where it would join or start its session because of
    /// a limit (`why`: `limits.max_links_per_session`, `max_sessions`,
    /// `max_sessions_per_client`).
    pub(crate) fn session_limit(&self, peer: SocketAddr, why: &str) {
        debug!(%peer, why, "link refused");
        let reason = format!("{why}: the client is told (its log says why)");
        self.log(Kind::SessionLimit, true, peer, &reason);
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
        self.log(Kind::PeerLink, false, peer, &reason);
    }

    /// Every refusal since start, by the `reason` label of its kind; every kind is listed.
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        Kind::ALL
            .iter()
            .zip(&self.counts)
            .map(|(k, n)| (k.label().to_owned(), n.load(Relaxed)))
            .collect()
    }

    fn log(&self, kind: Kind, loud: bool, peer: SocketAddr, reason: &str) {
        if let Some(i) = Kind::ALL.iter().position(|k| *k == kind) {
            self.counts[i].fetch_add(1, Relaxed);
        }
        let now = Instant::now();
        let earlier = {
            // Only counting runs under this lock.
            let mut last = self.last.lock().expect("refusal log lock poisoned");
            match last.get_mut(&kind) {
                Some((at, n)) if now.duration_since(*at) < LOG_EVERY => {
                    *n += 1;
                    return;
                }
                Some((at, n)) => {
                    *at = now;
                    std::mem::take(n)
                }
                None => {
                    last.insert(kind, (now, 0));
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

/// The kind of a refusal, whether it is worth a `warn` (a wanmux client that is configured
/// wrong), and what to do about it.
fn explain(e: &LinkError, stage: Stage, auth: &ServerAuth) -> (Kind, bool, String) {
    use std::io::ErrorKind;
    let static_keys = auth.private_key.is_some();
    let closed = match e {
        LinkError::Closed => true,
        LinkError::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ),
        _ => false,
    };
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
        _ if closed && stage == Stage::AfterReply => (
            Kind::ClientGaveUp,
            true,
            "the client closed the link on this node's reply (its handshake timed out, or it \
             refused this node: see its log)"
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
