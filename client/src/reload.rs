//! Reloading the client's config (SIGHUP): port maps and PKI mode's files change at runtime,
//! the rest needs a restart.
//!
//! A map is known by its `listen` address (a map on port 0, which has none to be known by, by
//! its address and service). A map added to the file starts listening; a map gone
//! from it stops accepting at once, while the connections it already accepted run on to their
//! end (they are streams of the session, not of the listener); a map whose `service` changed
//! keeps its socket and sends new connections to the new service. New ports are bound before
//! anything else changes: if one cannot be bound, the reload is refused and nothing changed. (A
//! map moved to an address that overlaps one being removed, `0.0.0.0:7000` replacing
//! `127.0.0.1:7000`, therefore takes two reloads: remove, then add.) `drain_timeout_ms`
//! applies to the next drain.
//!
//! PKI mode's files (`[tls]`) are read again with the config: when their paths stay and they
//! hold a renewed certificate or key for the same key pair, or another CA file, the links
//! dialled from then on present and check those (links up keep theirs). A file that no longer
//! reads refuses the reload, as any invalid file does, with its key and line.
//!
//! Kept until a restart, named in one `warn` line: the nodes, the keys and PSK, `[links]`,
//! `[limits]`, the handshake and grace timeouts, `no_link_hold_ms`, `[cluster]`, `[metrics]`,
//! `[control]`, `[tls]`'s paths, `node.tls_name`, and a certificate with another key pair (the
//! node keys the session by it): the links, the session and
//! the accept loops run with them.

use crate::{accept_loop, listen_map, ClientHandle};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};
use wanmux_config::{ClientAuth, ClientConfig, ServiceName};
use wanmux_core::tls::CertFiles;

/// A mapped port: its socket and its accept loop.
#[derive(Debug)]
pub(crate) struct Listening {
    /// The map's `listen` as configured (port 0 stays 0): what a reload compares.
    pub(crate) listen: SocketAddr,
    pub(crate) socket: Arc<TcpListener>,
    pub(crate) task: JoinHandle<()>,
}

impl Listening {
    /// The address the socket is bound to (the configured one if the kernel will not say).
    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().unwrap_or(self.listen)
    }
}

impl ClientHandle {
    /// Applies `new` (a valid config read again) where the client can change at runtime, see
    /// the module doc, and logs what changed. Returns the config now in force: `new`'s maps and
    /// drain timeout with the rest of `running`. `Err` (naming the map) when a new port cannot
    /// be bound; then nothing changed.
    pub async fn reload(
        &mut self,
        running: &ClientConfig,
        new: ClientConfig,
    ) -> io::Result<ClientConfig> {
        // Which running map each new one is (`None`: a new map), each running map used once.
        let mut unmatched: Vec<usize> = (0..self.listeners.len()).collect();
        let plan: Vec<Option<usize>> = new
            .maps
            .iter()
            .map(|map| {
                let at = unmatched.iter().position(|&i| {
                    let l = &self.listeners[i];
                    // A map on port 0 has no port to be known by: it is the same map only if its
                    // service is the same too.
                    l.listen == map.listen
                        && (map.listen.port() != 0 || self.maps[i].0 == map.service)
                })?;
                Some(unmatched.swap_remove(at))
            })
            .collect();
        // Bind every new port first, so a failure leaves everything as it was.
        let mut bound = Vec::new();
        for (i, map) in new.maps.iter().enumerate() {
            if plan[i].is_some() {
                continue;
            }
            let socket = listen_map(i, map.listen)?;
            bound.push((i, Arc::new(socket)));
        }

        // PKI mode's files read again from the same paths (a renewed certificate or key, a new
        // CA file): the links dialled from now on use them. Last of what can fail.
        let renewed = renewed_tls(running, &new);
        if let (Some(files), Some(quic)) = (renewed, &self.quic) {
            quic.set_tls(files)?;
            info!(
                "[tls] files read again (a renewed certificate, key or CA file): new links use \
                 them, links up keep theirs"
            );
        }

        let kept = kept_settings(running, &new);
        self.reloads().set_pending_restart(&kept);
        if !kept.is_empty() {
            warn!(
                "reload keeps until a restart: {} (changed in the file, still running as before)",
                kept.join(", ")
            );
        }

        let mut old: Vec<Option<(Listening, ServiceName)>> = self
            .listeners
            .drain(..)
            .zip(self.maps.drain(..).map(|(service, _)| service))
            .map(Some)
            .collect();
        let span = tracing::Span::current();
        let mut bound = bound.into_iter();
        for (map, from) in new.maps.iter().zip(plan) {
            let service = map.service.clone();
            let spawn = |socket: Arc<TcpListener>| {
                tokio::spawn(
                    accept_loop(
                        socket,
                        self.cluster.clone(),
                        service.clone(),
                        map.spread,
                        self.no_link_hold,
                    )
                    .instrument(span.clone()),
                )
            };
            let listening = match from.and_then(|i| old[i].take()) {
                Some((l, was)) if was == map.service => l,
                Some((mut l, was)) => {
                    // Same socket, new accept loop: connections already accepted keep their
                    // service, new ones get the new one. The old loop is gone before the new one
                    // starts (it is cancelled only while it waits in accept, so no connection it
                    // accepted is lost).
                    l.task.abort();
                    let _ = (&mut l.task).await;
                    info!(listen = %l.addr(), from = %was.as_str(), to = %service.as_str(), "map changed service");
                    Listening {
                        task: spawn(l.socket.clone()),
                        ..l
                    }
                }
                None => {
                    let (_, socket) = bound.next().expect("every new map was bound above");
                    let listening = Listening {
                        listen: map.listen,
                        task: spawn(socket.clone()),
                        socket,
                    };
                    info!(listen = %listening.addr(), service = %service.as_str(), "map added");
                    listening
                }
            };
            self.maps.push((map.service.clone(), listening.addr()));
            self.listeners.push(listening);
        }
        for (mut l, service) in old.into_iter().flatten() {
            // Dropping the accept loop closes the socket; the streams it started run on. Waiting
            // for the loop to be gone makes the port closed once the reload returns; it is
            // cancelled only while it waits in accept, so no connection it accepted is lost.
            l.task.abort();
            let _ = (&mut l.task).await;
            info!(listen = %l.addr(), service = %service.as_str(), "map removed: no new connections; open ones run to their end");
        }

        let mut now = running.clone();
        if let (
            Some(files),
            ClientAuth::Pki {
                files: in_force, ..
            },
        ) = (renewed, &mut now.auth)
        {
            *in_force = files.clone();
        }
        now.maps = new.maps;
        now.drain_timeout = new.drain_timeout;
        now.warnings = new.warnings;
        Ok(now)
    }
}

/// `new`'s PKI files when a reload applies them: the same paths as `running`'s, other
/// contents, and the same identity (the key of the certificate), since the node keys the
/// session by it.
fn renewed_tls<'a>(running: &ClientConfig, new: &'a ClientConfig) -> Option<&'a CertFiles> {
    match (&running.auth, &new.auth) {
        (ClientAuth::Pki { files: f1, .. }, ClientAuth::Pki { files: f2, .. })
            if f1.paths == f2.paths && identity(f1) == identity(f2) && !same_files(f1, f2) =>
        {
            Some(f2)
        }
        _ => None,
    }
}

/// A client certificate's identity at the nodes (`None` if it does not parse, which a loaded
/// config rules out).
fn identity(files: &CertFiles) -> Option<[u8; wanmux_core::tls::SPKI_HASH_LEN]> {
    files.chain.first().and_then(wanmux_core::tls::spki_hash)
}

/// Whether two reads of `[tls]` hold the same certificates, key and CA.
fn same_files(a: &CertFiles, b: &CertFiles) -> bool {
    a.chain == b.chain && a.key.secret_der() == b.key.secret_der() && a.roots == b.roots
}

/// The settings that differ between `running` and `new` and cannot change at runtime, by
/// their config keys.
fn kept_settings(running: &ClientConfig, new: &ClientConfig) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut check = |changed: bool, key| {
        if changed {
            kept.push(key)
        }
    };
    check(
        !running.nodes().eq(new.nodes()),
        "[[node]] (ids and addresses)",
    );
    check(running.threads != new.threads, "client.threads");
    match (&running.auth, &new.auth) {
        (
            ClientAuth::StaticKey {
                private_key: k1,
                psk: p1,
                nodes: n1,
            },
            ClientAuth::StaticKey {
                private_key: k2,
                psk: p2,
                nodes: n2,
            },
        ) => {
            check(k1 != k2, "client.private_key");
            check(p1 != p2, "client.psk");
            check(
                !n1.iter()
                    .map(|n| n.public_key)
                    .eq(n2.iter().map(|n| n.public_key)),
                "node.public_key",
            );
        }
        (ClientAuth::PskOnly { psk: p1, .. }, ClientAuth::PskOnly { psk: p2, .. }) => {
            check(p1 != p2, "client.psk")
        }
        (
            ClientAuth::Pki {
                files: f1,
                nodes: n1,
            },
            ClientAuth::Pki {
                files: f2,
                nodes: n2,
            },
        ) => {
            check(f1.paths != f2.paths, "[tls] (its paths)");
            check(
                f1.paths == f2.paths && identity(f1) != identity(f2),
                "[tls] (a certificate with another key: the node keys the session by the key, \
                 so a new key takes a restart; renew with `tls issue --key`)",
            );
            check(
                !n1.iter()
                    .map(|n| &n.tls_name)
                    .eq(n2.iter().map(|n| &n.tls_name)),
                "node.tls_name",
            );
        }
        _ => check(
            true,
            "the authentication mode (client.private_key, node.public_key)",
        ),
    }
    check(
        running.links != new.links
            || running.transport != new.transport
            || running.lanes != new.lanes
            || running.lanes_set != new.lanes_set
            || running.congestion != new.congestion,
        "[links]",
    );
    // By key: a trial's reload said only "[limits]".
    for key in running.limits.changed_keys(&new.limits) {
        check(true, key);
    }
    check(
        running.handshake_timeout != new.handshake_timeout,
        "client.handshake_timeout_ms",
    );
    check(
        running.session_grace != new.session_grace,
        "client.session_grace_ms",
    );
    check(
        running.no_link_hold != new.no_link_hold,
        "client.no_link_hold_ms",
    );
    check(running.owner != new.owner, "cluster.owner");
    check(
        running.metrics_listen != new.metrics_listen,
        "metrics.listen",
    );
    check(
        running.control_socket != new.control_socket,
        "control.socket",
    );
    kept
}
