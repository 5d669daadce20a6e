//! One direction of an unshaped link: a copy loop through one buffer that obeys the link's
//! mode between any two reads or writes.

use std::io;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::link::{aborted, changed, Counters, Link, Mode, Tampering};
use crate::Dir;

/// Copy buffer per direction per link. Allocated zeroed, so pages a quiet link never touches
/// cost no resident memory; large enough that a tunnel through the relay moves 256 MiB each
/// way over 4 links in about a second on loopback.
const BUF: usize = 256 * 1024;

/// Copies `from` -> `to` as the link's mode says, until `from` ends (passed on as a FIN, or as
/// nothing while blackholed) or the link is reset or fails (an error: reset both sides).
pub(crate) async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    dir: Dir,
    link: &Link,
    counters: Counters<'_>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut mode = link.mode.clone();
    let mut tampering = Tampering::new(link.tamper[dir as usize]);
    let mut buf = vec![0u8; BUF];
    let (mut pos, mut len) = (0, 0);
    // The source ended (or the direction was cut): pass on what is left, then a FIN.
    let mut eof = false;
    let mut cut = false;
    loop {
        // Reads and writes below are cancel-safe: a mode change in between loses no byte. A
        // change is polled first, so bytes that arrived after it are handled in the new mode.
        let now = *mode.borrow_and_update();
        match now {
            Mode::Reset => return Err(aborted()),
            Mode::Stall => changed(&mut mode).await?,
            Mode::Blackhole => {
                // Whatever was read and not yet written is lost, as on a path that drops it.
                let lost = (len - pos) as u64;
                counters.all.swallowed.fetch_add(lost, Ordering::Relaxed);
                (pos, len) = (0, 0);
                if eof {
                    changed(&mut mode).await?;
                    continue;
                }
                tokio::select! {
                    biased;
                    c = changed(&mut mode) => c?,
                    end = swallow(from, &mut buf, counters) => eof = end,
                }
            }
            Mode::Forward if pos < len => tokio::select! {
                biased;
                c = changed(&mut mode) => c?,
                r = to.write(&buf[pos..len]) => {
                    let n = r?;
                    pos += n;
                    counters.all.forwarded.fetch_add(n as u64, Ordering::Relaxed);
                }
            },
            Mode::Forward if eof => {
                let _ = to.shutdown().await;
                if cut {
                    discard(from, &mut buf).await;
                }
                return Ok(());
            }
            Mode::Forward => tokio::select! {
                biased;
                c = changed(&mut mode) => c?,
                r = from.read(&mut buf) => match r? {
                    0 => eof = true,
                    n => {
                        (pos, len) = (0, n);
                        if let Some(keep) = tampering.apply(&mut buf[..n]) {
                            (len, eof, cut) = (keep, true, true);
                        }
                    }
                },
            },
        }
    }
}

/// Reads once for a blackhole and counts what it read as swallowed; returns whether the source
/// ended. An end or a reset from the peer is swallowed too: nothing more comes from it.
/// Cancel-safe, as `read` is.
pub(crate) async fn swallow<R: AsyncRead + Unpin>(
    from: &mut R,
    buf: &mut [u8],
    counters: Counters<'_>,
) -> bool {
    match from.read(buf).await {
        Ok(n) if n > 0 => {
            counters
                .all
                .swallowed
                .fetch_add(n as u64, Ordering::Relaxed);
            false
        }
        _ => true,
    }
}

/// Reads and drops what the source still sends after a cut, until it ends or fails.
pub(crate) async fn discard<R: AsyncRead + Unpin>(from: &mut R, buf: &mut [u8]) {
    while matches!(from.read(buf).await, Ok(n) if n > 0) {}
}
