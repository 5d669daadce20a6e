//! One relayed connection (a link): its mode, what it does to each direction, and its life from
//! the dial to the target until both directions ended or it is reset.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

use crate::shape::{self, SHAPED_RCVBUF};
use crate::{copy, Dir};

/// What a link does with the bytes it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Copy both ways.
    Forward,
    /// Read nothing, write nothing.
    Stall,
    /// Read and discard.
    Blackhole,
    /// Close both sockets with an RST (final).
    Reset,
}

/// Damage done to one direction of a link, at an offset of the bytes read in that direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tamper {
    /// Flip the lowest bit of the byte at this offset.
    FlipBit(u64),
    /// Pass this many bytes, then end the direction (FIN) and discard the rest.
    Cut(u64),
}

/// A [`Tamper`]'s progress along one direction of one link.
#[derive(Debug)]
pub(crate) struct Tampering {
    tamper: Option<Tamper>,
    /// Bytes read so far.
    read: u64,
}

impl Tampering {
    pub(crate) fn new(tamper: Option<Tamper>) -> Self {
        Tampering { tamper, read: 0 }
    }

    /// Applies the tamper to `chunk`, the next bytes read. Returns `Some(n)` when the direction
    /// is cut after the first `n` bytes of it, `None` when all of it passes.
    pub(crate) fn apply(&mut self, chunk: &mut [u8]) -> Option<usize> {
        let start = self.read;
        let end = start + chunk.len() as u64;
        self.read = end;
        match self.tamper {
            Some(Tamper::FlipBit(at)) if (start..end).contains(&at) => {
                // In range: `at - start` is below `chunk.len()`.
                chunk[(at - start) as usize] ^= 1;
                None
            }
            Some(Tamper::Cut(at)) if end >= at => {
                self.tamper = None;
                Some(at.saturating_sub(start) as usize)
            }
            _ => None,
        }
    }
}

/// Byte counts of one direction, all links.
#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    /// Written to the far side (a shaped relay counts a chunk as its write starts, so the far
    /// side never has more than this).
    pub(crate) forwarded: AtomicU64,
    /// Read and not yet written (inside the emulated path of a shaped relay).
    pub(crate) in_path: AtomicU64,
    /// Destroyed inside the emulated path by a reset.
    pub(crate) dropped: AtomicU64,
    /// Read and discarded by a blackhole.
    pub(crate) swallowed: AtomicU64,
}

/// What the two directions of one link share.
pub(crate) struct Link {
    pub(crate) mode: watch::Receiver<Mode>,
    /// Bytes of this link inside the emulated path, per direction.
    pub(crate) in_path: [Arc<AtomicU64>; 2],
    pub(crate) tamper: [Option<Tamper>; 2],
    /// When each direction's bottleneck is next free (shared with other links, or this
    /// link's own).
    pub(crate) bottleneck: [Arc<Mutex<Instant>>; 2],
}

/// Where the pumps of one direction count.
#[derive(Clone, Copy)]
pub(crate) struct Counters<'a> {
    pub(crate) all: &'a DirCounters,
    pub(crate) link: &'a AtomicU64,
}

/// Runs one link until both directions ended (each end of stream passed on as a FIN), one side
/// failed or it is reset; the last two end with an RST on both sides.
pub(crate) async fn run(
    inbound: TcpStream,
    target: SocketAddr,
    link: &Link,
    shape: shape::Shape,
    dirs: &[DirCounters; 2],
) {
    let shaped = shape.is_shaped();
    let mut reset = link.mode.clone();
    let outbound = tokio::select! {
        c = connect(target, shaped) => c,
        _ = reset.wait_for(|m| *m == Mode::Reset) => Err(aborted()),
    };
    let Ok(mut outbound) = outbound else {
        let _ = inbound.set_zero_linger();
        return;
    };
    let mut inbound = inbound;
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let clean = {
        // Borrowed halves: dropping them sends nothing, so a reset below is an RST only.
        let (mut ri, mut wi) = inbound.split();
        let (mut ro, mut wo) = outbound.split();
        let counters = |d: Dir| Counters {
            all: &dirs[d as usize],
            link: &link.in_path[d as usize],
        };
        let (up, down) = (counters(Dir::Up), counters(Dir::Down));
        let pumps = async {
            if shaped {
                tokio::try_join!(
                    shape::pump(&mut ri, &mut wo, Dir::Up, link, shape, up),
                    shape::pump(&mut ro, &mut wi, Dir::Down, link, shape, down),
                )
            } else {
                tokio::try_join!(
                    copy::pump(&mut ri, &mut wo, Dir::Up, link, up),
                    copy::pump(&mut ro, &mut wi, Dir::Down, link, down),
                )
            }
        };
        tokio::select! {
            r = pumps => r.is_ok(),
            _ = reset.wait_for(|m| *m == Mode::Reset) => false,
        }
    };
    // Whatever is left in the emulated path is gone with the link.
    for d in Dir::BOTH {
        let left = link.in_path[d as usize].swap(0, Ordering::Relaxed);
        dirs[d as usize].in_path.fetch_sub(left, Ordering::Relaxed);
    }
    if !clean {
        // SO_LINGER 0: closing sends an RST instead of a FIN.
        let _ = inbound.set_zero_linger();
        let _ = outbound.set_zero_linger();
    }
}

async fn connect(target: SocketAddr, shaped: bool) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if shaped {
        socket.set_recv_buffer_size(SHAPED_RCVBUF)?;
    }
    socket.connect(target).await
}

/// The error a pump ends with when its link is reset.
pub(crate) fn aborted() -> io::Error {
    io::ErrorKind::ConnectionAborted.into()
}

/// Waits for the next mode change; an error if the relay is gone.
pub(crate) async fn changed(mode: &mut watch::Receiver<Mode>) -> io::Result<()> {
    mode.changed().await.map_err(|_| aborted())
}
