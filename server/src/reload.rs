//! Reloading a node's config (SIGHUP): what changes at runtime and what needs a restart.
//!
//! Applied at once, without touching a live stream of an allowed client:
//!
//! - `allowed_clients`: new links are checked against the new list; the sessions (and so the
//!   links and streams) of a client key no longer listed are closed;
//! - `[[service]]`: streams opened from now on find their service in the new list; streams
//!   already connected keep their service connection;
//! - `drain_timeout_ms`: the next drain waits the new time;
//! - `[tls]`'s files (read again: a renewed chain or key, another client CA, new revocation
//!   lists) and the `sha256:` entries of `allowed_clients`: new QUIC links get them; the
//!   sessions of certificates no longer listed are closed; another client CA or other
//!   revocation lists close the certificate clients' links, which dial again and are checked
//!   under them (their sessions go on; a revoked certificate's links are refused, and its
//!   session ends after its grace); a link whose TLS ran before such a reload and whose hello
//!   came after it is refused where it joins its session (`SharedAuth::pki_checks`).
//!
//! Kept until a restart, named in one `warn` line: the listen address, `quic`, the node id, the
//! node's private key, the PSK and the authentication mode (clients pin the key and hold the
//! PSK; changing them under live links would strand every client), the timeouts the sessions
//! and handshakes already run with, `congestion` (set on the listener at bind) and `[limits]`
//! (each session's engine and the shared memory budget were sized from them).

use crate::ServerHandle;
use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tracing::{info, warn};
use wanmux_config::{ServerAuth, ServerConfig, ServerTls, Service};
use wanmux_core::keys::PublicKey;
use wanmux_core::noise;

/// The authentication new links are checked with; a reload replaces it. With it, PKI mode's
/// allow-list: `None` without `[tls]`, else the client certificates taken by identity (empty:
/// every one the CA issued).
#[derive(Debug)]
pub(crate) struct SharedAuth(
    RwLock<Arc<noise::ServerAuth>>,
    RwLock<Option<Arc<BTreeSet<PublicKey>>>>,
    /// Counts the reloads that replaced the client CA or the revocation lists
    /// ([`SharedAuth::pki_checks`]).
    AtomicU64,
);

impl SharedAuth {
    pub(crate) fn new(auth: &ServerAuth, tls: Option<&ServerTls>) -> Self {
        SharedAuth(
            RwLock::new(Arc::new(auth.into())),
            RwLock::new(tls.map(|t| Arc::new(t.allowed_certs.clone()))),
            AtomicU64::new(0),
        )
    }

    /// Which client CA and revocation lists QUIC links are checked against now: taken as a
    /// link arrives and compared where it joins its session, so that a link whose TLS checked
    /// its certificate under lists a reload replaced meanwhile is refused (its client dials
    /// again) rather than missed by the reload's sweep of the links already up.
    pub(crate) fn pki_checks(&self) -> u64 {
        self.2.load(Ordering::SeqCst)
    }

    /// Whether a client certificate (that TLS verified) with identity `id` may connect.
    pub(crate) fn allows_cert(&self, id: &PublicKey) -> bool {
        let certs = self.1.read().expect("auth lock poisoned").clone();
        certs.is_some_and(|c| c.is_empty() || c.contains(id))
    }

    /// What a link arriving now is checked with.
    pub(crate) fn current(&self) -> Arc<noise::ServerAuth> {
        // Only a clone or a store runs under this lock.
        self.0.read().expect("auth lock poisoned").clone()
    }

    fn replace(&self, auth: &ServerAuth) {
        *self.0.write().expect("auth lock poisoned") = Arc::new(auth.into());
    }

    /// Whether a link that authenticated as `key` (a certificate's identity if `pki`) may still
    /// join a session: a reload may have removed its key while its handshake ran.
    pub(crate) fn still_allows(&self, key: Option<&PublicKey>, pki: bool) -> bool {
        if pki {
            return key.is_some_and(|k| self.allows_cert(k));
        }
        let auth = self.current();
        match key {
            Some(key) => auth.allowed_clients.contains(key),
            // PSK-only links carry no key; the mode cannot change at runtime.
            None => true,
        }
    }
}

impl ServerHandle {
    /// Applies `new` (a valid config read again) where the node can change at runtime, see the
    /// module doc, and logs what changed. Returns the config now in force: `new` with the kept
    /// settings of `running`. Never fails today; `io::Result` leaves room for changes that bind.
    pub async fn reload(
        &mut self,
        running: &ServerConfig,
        new: ServerConfig,
    ) -> io::Result<ServerConfig> {
        let kept = kept_settings(running, &new);
        self.reloads().set_pending_restart(&kept);
        if !kept.is_empty() {
            warn!(
                "reload keeps until a restart: {} (changed in the file, still running as before)",
                kept.join(", ")
            );
        }
        // First what can fail, so that a failed reload changed nothing.
        let tls_changed = match (&running.tls, &new.tls) {
            (Some(old), Some(fresh)) => !same_files(&old.files, &fresh.files),
            _ => false,
        };
        if let (true, Some(fresh), Some((listener, _))) = (tls_changed, &new.tls, &self.quic) {
            listener.set_pki(Some(&fresh.files))?;
        }
        let mut now = running.clone();
        now.drain_timeout = new.drain_timeout;
        now.warnings = new.warnings.clone();

        if running.services != new.services {
            for change in service_changes(&running.services, &new.services) {
                info!("{change}: new streams use it (open ones keep their connection)");
            }
            self.sessions.set_services(new.services.clone());
            now.services = new.services.clone();
        }

        if let (
            ServerAuth::StaticKey {
                allowed_clients: old,
                ..
            },
            ServerAuth::StaticKey {
                allowed_clients: fresh,
                ..
            },
            ServerAuth::StaticKey {
                allowed_clients: in_force,
                ..
            },
        ) = (&running.auth, &new.auth, &mut now.auth)
        {
            if old != fresh {
                let added: Vec<String> = fresh.difference(old).map(|k| k.to_string()).collect();
                let removed: Vec<String> = old.difference(fresh).map(|k| k.to_string()).collect();
                *in_force = fresh.clone();
                self.auth.replace(&now.auth);
                let closed = self
                    .sessions
                    .close_clients(|key, pki| pki || fresh.contains(key));
                info!(
                    added = ?added,
                    removed = ?removed,
                    sessions_closed = closed,
                    "allowed_clients changed: new links are checked against the new list; the \
                     sessions of removed keys are closed"
                );
            }
        }
        if let (true, Some(fresh), Some(in_force)) =
            (tls_changed, new.tls.as_ref(), now.tls.as_mut())
        {
            // What the clients' certificates are checked against: the links already up passed
            // the old checks, so they are checked again (a revoked certificate's links close).
            let recheck = running.tls.as_ref().is_none_or(|old| {
                old.files.roots != fresh.files.roots || old.files.crls != fresh.files.crls
            });
            in_force.files = fresh.files.clone();
            if recheck {
                // After the listener took the new lists, before the sweep: a link either joined
                // before it (and is retired) or finds the count moved where it joins.
                self.auth.2.fetch_add(1, Ordering::SeqCst);
                let sessions = self.sessions.retire_pki_links();
                info!(
                    sessions,
                    "[tls] client CA or revocation lists changed: new QUIC links are checked \
                     against them, and the certificate clients' links up now close and dial \
                     again (their sessions and streams go on; a revoked client's are refused)"
                );
            } else {
                info!(
                    "[tls] files changed (certificate chain or key): new QUIC links get them; \
                     links already up keep theirs"
                );
            }
        }
        let certs = |c: &ServerConfig| c.tls.as_ref().map(|t| t.allowed_certs.clone());
        if let (Some(old), Some(fresh), Some(in_force)) =
            (certs(running), certs(&new), now.tls.as_mut())
        {
            if old != fresh {
                let text = |s: &BTreeSet<PublicKey>| -> Vec<String> {
                    s.iter()
                        .map(|k| wanmux_core::tls::spki_text(k.as_bytes()))
                        .collect()
                };
                let added = text(&fresh.difference(&old).copied().collect());
                let removed = text(&old.difference(&fresh).copied().collect());
                in_force.allowed_certs = fresh.clone();
                *self.auth.1.write().expect("auth lock poisoned") = Some(Arc::new(fresh.clone()));
                let closed = self
                    .sessions
                    .close_clients(|key, pki| !pki || fresh.is_empty() || fresh.contains(key));
                info!(
                    added = ?added,
                    removed = ?removed,
                    sessions_closed = closed,
                    "allowed_clients (sha256: entries) changed: new links are checked against \
                     the new list; the sessions of removed certificates are closed"
                );
            }
        }
        Ok(now)
    }
}

/// Whether two reads of `[tls]` hold the same certificates, key and revocation lists.
fn same_files(a: &wanmux_core::tls::CertFiles, b: &wanmux_core::tls::CertFiles) -> bool {
    a.chain == b.chain
        && a.roots == b.roots
        && a.crls == b.crls
        && a.key.secret_der() == b.key.secret_der()
}

/// The settings that differ between `running` and `new` and cannot change at runtime, by
/// their config keys.
fn kept_settings(running: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut kept = Vec::new();
    let mut check = |changed: bool, key| {
        if changed {
            kept.push(key)
        }
    };
    check(running.listen != new.listen, "server.listen");
    // Files of a [tls] that stays are read again (`reload`); adding or removing it changes
    // the mode.
    check(
        running.tls.is_some() != new.tls.is_some(),
        "[tls] (PKI mode)",
    );
    check(running.quic != new.quic, "server.quic");
    check(running.node_id != new.node_id, "server.node_id");
    check(running.threads != new.threads, "server.threads");
    match (&running.auth, &new.auth) {
        (
            ServerAuth::StaticKey {
                private_key: k1,
                psk: p1,
                ..
            },
            ServerAuth::StaticKey {
                private_key: k2,
                psk: p2,
                ..
            },
        ) => {
            check(k1 != k2, "server.private_key");
            check(p1 != p2, "server.psk");
        }
        (ServerAuth::PskOnly { psk: p1 }, ServerAuth::PskOnly { psk: p2 }) => {
            check(p1 != p2, "server.psk")
        }
        (ServerAuth::PkiOnly, ServerAuth::PkiOnly) => {}
        _ => check(
            true,
            "the authentication mode (server.private_key, server.allowed_clients)",
        ),
    }
    check(
        running.handshake_timeout != new.handshake_timeout,
        "server.handshake_timeout_ms",
    );
    check(
        running.session_grace != new.session_grace,
        "server.session_grace_ms",
    );
    check(
        running.connect_timeout != new.connect_timeout,
        "server.connect_timeout_ms",
    );
    check(running.congestion != new.congestion, "server.congestion");
    // By key: a trial's reload said only "[limits]".
    for key in running.limits.changed_keys(&new.limits) {
        check(true, key);
    }
    let cluster = |c: &ServerConfig| {
        c.cluster
            .as_ref()
            .map(|c| (c.listen, c.psk.clone(), c.peers.clone(), c.relay_queue))
    };
    check(cluster(running) != cluster(new), "[cluster] and [[peer]]");
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

/// What a reload changes in the services, one line each: added, removed, or with another
/// target (old and new named).
fn service_changes(old: &[Service], new: &[Service]) -> Vec<String> {
    let find = |list: &[Service], name: &str| -> Option<String> {
        list.iter()
            .find(|s| s.name.as_str() == name)
            .map(|s| s.target.to_string())
    };
    let mut out = Vec::new();
    for s in new {
        let name = s.name.as_str();
        match find(old, name) {
            None => out.push(format!("service {name} added, target {}", s.target)),
            Some(was) if was != s.target.to_string() => out.push(format!(
                "service {name} target changed from {was} to {}",
                s.target
            )),
            Some(_) => {}
        }
    }
    for s in old {
        if find(new, s.name.as_str()).is_none() {
            out.push(format!("service {} removed", s.name.as_str()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{kept_settings, service_changes};
    use wanmux_config::{ServerAuth, ServerConfig, Service};
    use wanmux_core::keys::Psk;

    #[test]
    fn each_service_change_is_a_line_naming_old_and_new() {
        let svc = |name: &str, target: &str| Service {
            name: wanmux_config::ServiceName::new(name).unwrap(),
            target: target.parse::<std::net::SocketAddr>().unwrap().into(),
        };
        let old = [
            svc("a", "127.0.0.1:1"),
            svc("b", "127.0.0.1:2"),
            svc("c", "127.0.0.1:3"),
        ];
        let new = [
            svc("a", "127.0.0.1:1"),
            svc("b", "127.0.0.1:9"),
            svc("d", "127.0.0.1:4"),
        ];
        assert_eq!(
            service_changes(&old, &new),
            [
                "service b target changed from 127.0.0.1:2 to 127.0.0.1:9",
                "service d added, target 127.0.0.1:4",
                "service c removed",
            ]
        );
        assert!(service_changes(&old, &old).is_empty());
    }

    #[test]
    fn names_what_a_reload_cannot_change() {
        let psk = Psk::generate();
        let a = ServerConfig::new(
            "127.0.0.1:4480".parse().unwrap(),
            1.try_into().unwrap(),
            ServerAuth::PskOnly { psk },
            Vec::new(),
        );
        let mut b = a.clone();
        b.drain_timeout *= 2;
        assert!(kept_settings(&a, &b).is_empty(), "drain_timeout applies");
        b.listen = "127.0.0.1:4481".parse().unwrap();
        b.auth = ServerAuth::PskOnly {
            psk: Psk::generate(),
        };
        b.limits.max_streams += 1;
        assert_eq!(
            kept_settings(&a, &b),
            ["server.listen", "server.psk", "limits.max_streams"]
        );
    }
}
