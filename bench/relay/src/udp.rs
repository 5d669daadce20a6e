//! The UDP relay: another address of a QUIC node, or a path whose QUIC traffic a test watches.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A UDP forwarder on `127.0.0.1:0` to a target, on the runtime that starts it. Each client
/// address gets an upstream socket of its own. Dropping it stops it; datagrams sent to it then
/// get no answer, as on a dead path.
///
/// A client sends every QUIC link from one UDP socket, so the relay tells links apart by the
/// connection id the node chose for each (the source connection id of the node's long-header
/// packets, those of the handshake).
pub struct UdpRelay {
    addr: SocketAddr,
    forwarded: Arc<AtomicU64>,
    blackout: Arc<Mutex<Option<Instant>>>,
    node_ids: Arc<Mutex<HashSet<Vec<u8>>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        for task in lock(&self.tasks).drain(..) {
            task.abort();
        }
    }
}

impl UdpRelay {
    /// Starts a relay on `127.0.0.1:0` that forwards every datagram to `target`.
    pub async fn start(target: SocketAddr) -> io::Result<UdpRelay> {
        UdpRelay::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), target).await
    }

    /// [`UdpRelay::start`] on `bind` (the port of a TCP relay to the same node, say).
    pub async fn start_on(bind: SocketAddr, target: SocketAddr) -> io::Result<UdpRelay> {
        let sock = Arc::new(UdpSocket::bind(bind).await?);
        let addr = sock.local_addr()?;
        let forwarded = Arc::new(AtomicU64::new(0));
        let blackout = Arc::new(Mutex::new(None));
        let node_ids = Arc::new(Mutex::new(HashSet::new()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let main = tokio::spawn({
            let (forwarded, node_ids, tasks) = (forwarded.clone(), node_ids.clone(), tasks.clone());
            let blackout = blackout.clone();
            async move {
                let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
                let mut buf = vec![0u8; 65536];
                loop {
                    let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                        continue;
                    };
                    let up = match upstreams.get(&from) {
                        Some(up) => up.clone(),
                        None => {
                            let Ok(up) = upstream(target).await else {
                                continue;
                            };
                            let back = tokio::spawn(forward_back(
                                up.clone(),
                                sock.clone(),
                                from,
                                forwarded.clone(),
                                node_ids.clone(),
                                blackout.clone(),
                            ));
                            lock(&tasks).push(back);
                            upstreams.insert(from, up.clone());
                            up
                        }
                    };
                    if up.send(&buf[..n]).await.is_ok() {
                        forwarded.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        });
        lock(&tasks).push(main);
        Ok(UdpRelay {
            addr,
            forwarded,
            blackout,
            node_ids,
            tasks,
        })
    }

    /// Where clients send.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// QUIC connections the node answered through this relay (each completed, or at least
    /// began, its handshake).
    pub fn connections(&self) -> usize {
        lock(&self.node_ids).len()
    }

    /// Drops every datagram from the node to its clients for the next `span`: the first sending
    /// of what the node sends meanwhile is lost, as on a path that loses a burst.
    pub fn drop_from_node_for(&self, span: Duration) {
        *lock(&self.blackout) = Some(Instant::now() + span);
    }

    /// Bytes forwarded so far, both directions.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

async fn upstream(target: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let up = UdpSocket::bind("127.0.0.1:0").await?;
    up.connect(target).await?;
    Ok(Arc::new(up))
}

/// Copies datagrams from the node back to the client at `to`.
async fn forward_back(
    up: Arc<UdpSocket>,
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    forwarded: Arc<AtomicU64>,
    node_ids: Arc<Mutex<HashSet<Vec<u8>>>>,
    blackout: Arc<Mutex<Option<Instant>>>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        // An error here is an ICMP report for an earlier datagram; the socket goes on.
        let Ok(n) = up.recv(&mut buf).await else {
            continue;
        };
        if lock(&blackout).is_some_and(|until| Instant::now() < until) {
            continue;
        }
        if let Some(id) = long_header_source_id(&buf[..n]) {
            lock(&node_ids).insert(id.to_vec());
        }
        if sock.send_to(&buf[..n], to).await.is_ok() {
            forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// The source connection id of a datagram that starts with a QUIC long-header packet (RFC 9000
/// 17.2: flags, version, destination id length and id, source id length and id); `None` for
/// short-header packets and version negotiation.
fn long_header_source_id(d: &[u8]) -> Option<&[u8]> {
    if d.first()? & 0x80 == 0 || d.get(1..5)? == [0; 4] {
        return None;
    }
    let dcid_len = usize::from(*d.get(5)?);
    let scid_at = 6 + dcid_len;
    let scid_len = usize::from(*d.get(scid_at)?);
    d.get(scid_at + 1..scid_at + 1 + scid_len)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only inserts and pushes run under these locks; a poisoned one still holds valid data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_source_id_of_long_headers_only() {
        // Initial, version 1, 8-byte destination id, 4-byte source id.
        let mut d = vec![0xc0, 0, 0, 0, 1, 8];
        d.extend_from_slice(&[9; 8]);
        d.push(4);
        d.extend_from_slice(&[1, 2, 3, 4, 0xff]);
        assert_eq!(long_header_source_id(&d), Some(&[1, 2, 3, 4][..]));
        // Short header; version negotiation; cut short.
        assert_eq!(long_header_source_id(&[0x40, 1, 2, 3, 4, 5]), None);
        assert_eq!(long_header_source_id(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(long_header_source_id(&d[..16]), None);
    }
}
