//! Which carrier a link runs over under `links.transport = "auto"` (the default): QUIC, unless
//! a node address does not answer QUIC while TCP to it works, then TCP.
//!
//! A dial to an address in QUIC mode gives the QUIC handshake [`QUIC_ANSWER`] to answer. With
//! no answer (UDP blocked on the way, or a node with `server.quic = false`, whose UDP port
//! nobody reads) the same dial tries TCP; when that link comes up, QUIC is asked once more (the
//! node may only now be up: a restart, a client started first), and only when that is not
//! answered either does the address fall back: its links run over TCP, and one `warn` line says
//! why. When it is answered, the link runs over QUIC and the TCP one is dropped. A QUIC handshake that is answered and then
//! fails (authentication, a refusal) is the node's answer, never a reason to fall back; and when
//! TCP fails too, the node is down or unreachable and nothing changes. An address that fell back
//! is probed with QUIC again by the first dial after [`REPROBE`]; when QUIC answers, its new
//! links run over QUIC again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};
use wanmux_core::tune;

/// How long a QUIC handshake has to be answered before a dial under `auto` tries TCP. A QUIC
/// client resends its first packet after about 1 s, so this covers two tries of it, with a
/// round trip of up to a second.
pub(crate) const QUIC_ANSWER: Duration = Duration::from_secs(3);

/// How long an address that fell back to TCP keeps TCP before a dial tries QUIC there again.
pub(crate) const REPROBE: Duration = Duration::from_secs(600);

/// What one dial under `auto` does first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// QUIC within [`QUIC_ANSWER`], then TCP if it was not answered. `probe`: the address is
    /// in TCP mode and this dial tries QUIC again.
    QuicFirst { probe: bool },
    /// TCP only: the address fell back, and it is not time to probe yet.
    Tcp,
}

/// The carrier of each node address, shared by every link slot of a client.
#[derive(Debug, Default)]
pub(crate) struct Carriers {
    /// The addresses in TCP mode, with when they fell back (or were last probed).
    fallen_back: Mutex<HashMap<String, Instant>>,
    /// The host warnings that matter once links run over TCP (no bbr, small TCP buffers),
    /// logged with the first fallback rather than at start.
    tcp_host_warnings: Mutex<Option<Vec<String>>>,
}

impl Carriers {
    /// `tcp_host_warnings` are logged, once, when the first address falls back to TCP.
    pub(crate) fn new(tcp_host_warnings: Vec<String>) -> Carriers {
        Carriers {
            fallen_back: Mutex::default(),
            tcp_host_warnings: Mutex::new(Some(tcp_host_warnings)),
        }
    }

    /// What a dial of `addr` starting at `now` tries first.
    pub(crate) fn plan(&self, addr: &str, now: Instant) -> Plan {
        // Only map look-ups run under this lock.
        let fallen = self.fallen_back.lock().expect("carrier lock poisoned");
        match fallen.get(addr) {
            None => Plan::QuicFirst { probe: false },
            Some(&since) if now.duration_since(since) >= REPROBE => Plan::QuicFirst { probe: true },
            Some(_) => Plan::Tcp,
        }
    }

    /// The addresses whose links run over TCP now, sorted.
    pub(crate) fn fallen_back(&self) -> Vec<String> {
        let fallen = self.fallen_back.lock().expect("carrier lock poisoned");
        let mut addrs: Vec<String> = fallen.keys().cloned().collect();
        addrs.sort();
        addrs
    }

    /// QUIC at `addr` was not answered within [`QUIC_ANSWER`] (`why`) while a TCP link to it
    /// came up: its links run over TCP from now on. Logged at `warn` by the first dial that
    /// finds it; a failed probe only restarts the wait for the next one.
    pub(crate) fn fall_back(&self, node: &dyn std::fmt::Display, addr: &str, why: &str) {
        let first = {
            let mut fallen = self.fallen_back.lock().expect("carrier lock poisoned");
            fallen.insert(addr.to_owned(), Instant::now()).is_none()
        };
        if !first {
            return;
        }
        warn!(
            %node, %addr,
            reason = %format_args!(
                "no QUIC answer within {} s ({why}) while TCP works: UDP to {addr} is blocked on \
                 the way, or the node runs with server.quic = false",
                QUIC_ANSWER.as_secs()
            ),
            "links to this node address run over TCP instead of QUIC (set links.transport = \
             \"tcp\" to make that the plan, or open UDP to the node's port; QUIC is tried again \
             every {} min)",
            REPROBE.as_secs() / 60
        );
        let host = self
            .tcp_host_warnings
            .lock()
            .expect("carrier lock poisoned")
            .take();
        for w in host.into_iter().flatten() {
            warn!(target: tune::LOG_TARGET, "{w}");
        }
    }

    /// QUIC at `addr` answered: if it had fallen back, its new links run over QUIC again.
    pub(crate) fn quic_answered(&self, node: &dyn std::fmt::Display, addr: &str) {
        let was = {
            let mut fallen = self.fallen_back.lock().expect("carrier lock poisoned");
            fallen.remove(addr).is_some()
        };
        if was {
            info!(%node, %addr, "QUIC answers again: new links to this node address run over QUIC");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_falls_back_then_is_probed_again_and_recovers() {
        let c = Carriers::new(Vec::new());
        let t0 = Instant::now();
        assert_eq!(c.plan("a:1", t0), Plan::QuicFirst { probe: false });
        c.fall_back(&1, "a:1", "timeout");
        assert_eq!(c.fallen_back(), ["a:1"]);
        assert_eq!(c.plan("a:1", Instant::now()), Plan::Tcp);
        assert_eq!(
            c.plan("b:1", Instant::now()),
            Plan::QuicFirst { probe: false }
        );
        let later = Instant::now() + REPROBE;
        assert_eq!(c.plan("a:1", later), Plan::QuicFirst { probe: true });
        c.quic_answered(&1, "a:1");
        assert!(c.fallen_back().is_empty());
        assert_eq!(c.plan("a:1", later), Plan::QuicFirst { probe: false });
    }
}
