//! Stream tasks: one per proxied TCP connection, moving bytes between the socket and the
//! engine in both directions, with half-close and reset.
//!
//! The socket is read only when the engine has send capacity for the stream, so a slow
//! tunnel slows the application instead of filling memory; no read buffer is held while the
//! connection is idle.

use super::SessionDriver;
use crate::engine::ReadChunk;
use crate::frame::reset;
use crate::ids::StreamId;
use bytes::{BufMut, BytesMut};
use std::io;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, trace};

/// Largest single read from an application socket.
const READ_MAX: usize = 256 * 1024;
/// Largest chunk taken from the engine per write to an application socket.
const WRITE_MAX: usize = 256 * 1024;

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    /// Finished cleanly (EOF sent or received).
    Done,
    /// The stream was reset, by the peer or by a socket error here.
    Reset,
}

/// Pumps `tcp` <-> stream `id` until both directions are done or the stream is reset. On a
/// reset from the peer the socket is closed with an RST (`SO_LINGER` 0).
pub async fn run(driver: SessionDriver, id: StreamId, tcp: TcpStream) {
    let waker = driver.register(id);
    let _ = tcp.set_nodelay(true);
    let (rd, mut wr) = tcp.into_split();
    let reset = {
        let up = upstream(&driver, id, &waker, rd);
        let down = downstream(&driver, id, &waker, &mut wr);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut reset = false;
        while !(reset || up_done && down_done) {
            tokio::select! {
                h = &mut up, if !up_done => { up_done = true; reset = h == Half::Reset; }
                h = &mut down, if !down_done => { down_done = true; reset = h == Half::Reset; }
            }
        }
        reset
    };
    if reset {
        // Close with an RST: `SO_LINGER` 0, and `forget` the write half so that dropping it
        // does not send a FIN first (the application would read a clean EOF before the RST).
        // The read half was dropped with its future, so this closes the socket.
        let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(std::time::Duration::ZERO));
        wr.forget();
        driver.with(|s, _| s.stream_reset(id, reset::APP));
        debug!(stream = %id, "stream reset");
    } else {
        trace!(stream = %id, "stream done");
    }
    driver.unregister(id);
}

/// A read that returned less than this marks the stream as interactive or idle: the next read
/// reserves at most this much, and the task lets its buffer go before it waits. A reservation
/// kept across the wait cost an idle stream its touched page of a block of up to [`READ_MAX`]
/// in each daemon (bench/RESULTS.md, "Scale and memory"); a bulk stream, whose reads fill their
/// reservation, keeps one block from read to read.
const SMALL_READ: usize = 16 * 1024;

/// Socket -> engine.
async fn upstream(
    driver: &SessionDriver,
    id: StreamId,
    waker: &super::StreamWaker,
    rd: OwnedReadHalf,
) -> Half {
    let mut buf = BytesMut::new();
    // Bytes of the last read; a stream starts small and grows to READ_MAX in one read.
    let mut last = 0;
    loop {
        if last < SMALL_READ {
            // Whatever was read is split off already: drop the rest of the block (the engine's
            // slices keep what they need of it).
            buf = BytesMut::new();
        }
        let writable = waker.writable.notified();
        tokio::pin!(writable);
        writable.as_mut().enable();
        // Wait for the application's bytes first, then check the capacity, read and write
        // without a wait between them: the send pool is passed by one read per stream only while
        // streams do that at the same moment (one per worker thread), not by one per stream that
        // checked its capacity and then waited for its application, which a client could make
        // thousands. A reset also wakes `writable`: the application may be idle (its download
        // done, its upload not), and it must see the reset now, not at its next write.
        tokio::select! {
            r = rd.readable() => if let Err(e) = r {
                debug!(stream = %id, error = %e, "application socket error");
                return Half::Reset;
            },
            () = &mut writable => match driver.with(|s, _| s.stream_send_capacity(id)) {
                Ok(_) => continue,
                Err(_) => return Half::Reset,
            },
        }
        let cap = match driver.with(|s, _| s.stream_send_capacity(id)) {
            Ok(c) => c.min(READ_MAX),
            Err(_) => return Half::Reset,
        };
        if cap == 0 {
            writable.await;
            continue;
        }
        let want = if last < SMALL_READ {
            cap.min(SMALL_READ)
        } else {
            cap
        };
        buf.reserve(want);
        let n = match rd.try_read_buf(&mut (&mut buf).limit(want)) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                debug!(stream = %id, error = %e, "application socket error");
                return Half::Reset;
            }
        };
        if n == 0 {
            return match driver.with(|s, _| s.stream_finish(id)) {
                Ok(()) => Half::Done,
                Err(_) => Half::Reset,
            };
        }
        last = n;
        driver.counters().app_read(n);
        if driver
            .with(|s, _| s.stream_write(id, buf.split().freeze()))
            .is_err()
        {
            return Half::Reset;
        }
    }
}

/// Engine -> socket.
async fn downstream(
    driver: &SessionDriver,
    id: StreamId,
    waker: &super::StreamWaker,
    wr: &mut OwnedWriteHalf,
) -> Half {
    loop {
        let readable = waker.readable.notified();
        tokio::pin!(readable);
        readable.as_mut().enable();
        match driver.with(|s, now| s.stream_read(now, id, WRITE_MAX)) {
            Ok(ReadChunk::Data(b)) => {
                if let Err(e) = wr.write_all(&b).await {
                    debug!(stream = %id, error = %e, "application socket error");
                    return Half::Reset;
                }
                driver.counters().app_written(b.len());
            }
            Ok(ReadChunk::Fin) => {
                let _ = wr.shutdown().await;
                return Half::Done;
            }
            Ok(ReadChunk::Blocked) => readable.await,
            Err(_) => return Half::Reset,
        }
    }
}
