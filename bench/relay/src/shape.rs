//! A shaped path, and one direction of a link through it.
//!
//! Model, per direction: every chunk the relay reads takes a turn on a bottleneck (serialised at
//! `rate`, first come first served), then travels for `delay`, then is written out. When the
//! bottleneck's backlog reaches `queue`, the relay stops reading, so the senders' TCP flow
//! control holds what a router would queue or drop. The relay's own sockets get small receive
//! buffers when shaping, so little data waits in the relay's kernel where the model cannot see
//! it; the senders' socket buffers still hold data the relay has not read (as a sending host's
//! buffers do on a real path, though here their TCP sees a loopback RTT, not the emulated one).

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::copy::{discard, swallow};
use crate::link::{aborted, changed, Counters, Link, Mode, Tampering};
use crate::Dir;

/// Largest chunk a shaped direction reads at once: small enough that one chunk is a short turn
/// on the bottleneck (1.3 ms at 200 Mbit/s), large enough to keep syscalls few.
const CHUNK: usize = 32 * 1024;
/// Chunks in flight per shaped direction of one link (the delay line). At most `CHUNK` bytes
/// each; the bottleneck's queue limit normally binds long before this.
const LINE_CHUNKS: usize = 4096;
/// Receive buffer of the relay's sockets when shaping.
pub(crate) const SHAPED_RCVBUF: u32 = 32 * 1024;

/// How the relay shapes the path. The default shapes nothing: the relay is a plain copy loop.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Shape {
    /// Bottleneck rate per direction, in bits per second.
    pub rate_bps: Option<f64>,
    /// Whether all links share the bottleneck or each has its own.
    pub bottleneck: Bottleneck,
    /// One-way delay added to every byte.
    pub delay: Duration,
    /// Most backlog the bottleneck holds before the relay stops reading, as time at `rate`.
    pub queue: Duration,
}

impl Shape {
    pub(crate) fn is_shaped(&self) -> bool {
        self.rate_bps.is_some() || !self.delay.is_zero()
    }
}

/// Whose the bottleneck of a shaped relay is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bottleneck {
    /// One per direction, shared by all links: a path.
    #[default]
    Shared,
    /// One per direction of each link: a throttle per TCP connection, as some long-haul paths
    /// have.
    PerLink,
}

/// Moves one direction through the shaped path until its source ends (then passes the FIN on)
/// or it fails. Stalled, it reads nothing and holds what reaches the end of the path;
/// blackholed, it reads and discards, and what reaches the end of the path is lost.
pub(crate) async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    dir: Dir,
    link: &Link,
    shape: Shape,
    counters: Counters<'_>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let bottleneck = &*link.bottleneck[dir as usize];
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(LINE_CHUNKS);
    // Moved in: dropping the sender when reading ends lets the writer finish the line, then FIN.
    let read = async move {
        let mut mode = link.mode.clone();
        let mut tampering = Tampering::new(link.tamper[dir as usize]);
        let mut buf = vec![0u8; CHUNK];
        let mut eof = false;
        loop {
            // As in `copy::pump`: a mode change is polled before the bytes that follow it.
            let now = *mode.borrow_and_update();
            match now {
                Mode::Reset => return Err(aborted()),
                Mode::Forward if eof => return Ok(()),
                Mode::Stall => changed(&mut mode).await?,
                Mode::Blackhole if eof => changed(&mut mode).await?,
                Mode::Blackhole => tokio::select! {
                    biased;
                    c = changed(&mut mode) => c?,
                    end = swallow(from, &mut buf, counters) => eof = end,
                },
                Mode::Forward => {
                    if let Some(wait) = queue_wait(shape, bottleneck) {
                        tokio::select! {
                            biased;
                            c = changed(&mut mode) => { c?; continue; }
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    let n = tokio::select! {
                        biased;
                        c = changed(&mut mode) => { c?; continue; }
                        r = from.read(&mut buf) => r?,
                    };
                    if n == 0 {
                        return Ok(());
                    }
                    let cut = tampering.apply(&mut buf[..n]);
                    let keep = cut.unwrap_or(n);
                    let at = departure(shape, bottleneck, keep) + shape.delay;
                    counters.link.fetch_add(keep as u64, Ordering::Relaxed);
                    counters
                        .all
                        .in_path
                        .fetch_add(keep as u64, Ordering::Relaxed);
                    let chunk = Bytes::copy_from_slice(&buf[..keep]);
                    if tx.send((at, chunk)).await.is_err() {
                        return Err(io::ErrorKind::BrokenPipe.into());
                    }
                    if cut.is_some() {
                        discard(from, &mut buf).await;
                        return Ok(());
                    }
                }
            }
        }
    };
    let write = async {
        let mut mode = link.mode.clone();
        while let Some((at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            let mut now = *mode.borrow_and_update();
            while now == Mode::Stall {
                changed(&mut mode).await?;
                now = *mode.borrow_and_update();
            }
            let n = chunk.len() as u64;
            match now {
                Mode::Reset => return Err(aborted()),
                Mode::Forward => {
                    // Counted before the write, so that a reader of the counter never finds
                    // fewer bytes than the far end has received (after a write, this task may
                    // run again only after the receiver has read them and the counter is read:
                    // a failure of `bench/tests/recovery.rs` on a loaded machine).
                    counters.all.forwarded.fetch_add(n, Ordering::Relaxed);
                    to.write_all(&chunk).await?;
                }
                Mode::Blackhole | Mode::Stall => {
                    counters.all.swallowed.fetch_add(n, Ordering::Relaxed);
                }
            }
            counters.link.fetch_sub(n, Ordering::Relaxed);
            counters.all.in_path.fetch_sub(n, Ordering::Relaxed);
        }
        to.shutdown().await
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// How long to wait for room in the bottleneck's queue before reading more; `None` if there
/// is room (or no rate limit).
fn queue_wait(shape: Shape, bottleneck: &Mutex<Instant>) -> Option<Duration> {
    shape.rate_bps?;
    let free_at = *lock(bottleneck);
    free_at
        .checked_duration_since(Instant::now() + shape.queue)
        .filter(|w| !w.is_zero())
}

/// When `n` bytes read now leave the bottleneck (now, without a rate limit).
fn departure(shape: Shape, bottleneck: &Mutex<Instant>, n: usize) -> Instant {
    let now = Instant::now();
    let Some(rate) = shape.rate_bps else {
        return now;
    };
    let mut free_at = lock(bottleneck);
    let start = (*free_at).max(now);
    *free_at = start + Duration::from_secs_f64(n as f64 * 8.0 / rate);
    *free_at
}

fn lock(m: &Mutex<Instant>) -> MutexGuard<'_, Instant> {
    // Only an `Instant` is stored under this lock; a poisoned one still holds a valid value.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
