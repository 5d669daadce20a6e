//! Stream tasks: one per proxied TCP connection, moving bytes between the socket and the
//! engine in both directions, with half-close and reset.
//!
//! The socket is read only when the engine has send capacity for the stream, so a slow
//! tunnel slows the application instead of filling memory; no read buffer is held while the
//! connection is idle.

use super::{SessionDriver, StreamWaker};
use crate::engine::ReadChunk;
use crate::frame::reset;
use crate::ids::StreamId;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tracing::{debug, trace};

/// Largest single read from an application socket.
const READ_MAX: usize = 256 * 1024;
/// Most bytes taken from the engine per write to an application socket.
const WRITE_MAX: usize = 256 * 1024;
/// Most chunks taken from the engine per write to an application socket.
const WRITE_CHUNKS: usize = 16;

/// TCP keepalive on the sockets of applications (a client's mapped ports) and services (a
/// node's connections to them): the first probe after this long without a segment, then
/// [`KEEPALIVE_INTERVAL`] apart, [`KEEPALIVE_PROBES`] unanswered ones reset the connection, and
/// with it the stream at both ends. A host that vanished (powered off, its network gone) is so
/// found within about two minutes: without it, the tunnel kept such a connection open at the
/// other end for good, since the kernel of the daemon's host answered the far side's own
/// keepalive probes (a trial's service kept a vanished client's connection 236 s, until the
/// daemon stopped; directly, its keepalive dropped it in 11 s).
pub const KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`KEEPALIVE_IDLE`].
pub const KEEPALIVE_PROBES: u32 = 6;

/// Turns on [`KEEPALIVE_IDLE`]'s keepalive on `socket`: an application's or a service's
/// (on a listener, Linux passes it on to every socket it accepts).
pub fn keepalive(socket: socket2::SockRef<'_>) -> io::Result<()> {
    let params = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    socket.set_tcp_keepalive(&params)
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Half {
    /// Finished cleanly (EOF sent or received).
    Done,
    /// The stream was reset, by the peer or by a socket error here.
    Reset,
}

/// A stream opened and registered by [`SessionDriver::open_stream`], for [`run_opened`] (its
/// wakers stay registered until it has run).
#[derive(Debug)]
pub struct Opened {
    pub(super) id: StreamId,
    pub(super) waker: Arc<StreamWaker>,
    /// Its send capacity when it was opened.
    pub(super) capacity: usize,
}

impl Opened {
    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.id
    }
}

/// Pumps `tcp` <-> stream `id` until both directions are done or the stream is reset. On a
/// reset from the peer the socket is closed with an RST (`SO_LINGER` 0). The caller sets
/// `TCP_NODELAY` on `tcp` (an accepted socket may have it from its listener already).
pub async fn run(driver: SessionDriver, id: StreamId, tcp: TcpStream) {
    let waker = driver.register(id);
    pump(driver, id, waker, tcp, None).await
}

/// [`run`] for a stream [`SessionDriver::open_stream`] opened for a connection just accepted.
/// What the application sent already is read at once, within the capacity the stream was
/// opened with, and queued close behind the stream's `OPEN` (often in the same message):
/// tokio would first wait for the socket's readiness from its next poll of the kernel. A
/// connection whose server speaks first costs one read that finds nothing.
pub async fn run_opened(driver: SessionDriver, opened: Opened, tcp: TcpStream) {
    let want = opened.capacity.min(SMALL_READ);
    let first = if want == 0 {
        None
    } else {
        SCRATCH.with_borrow_mut(|scratch| {
            // The socket is non-blocking (tokio's): nothing there is `WouldBlock`.
            match std::io::Read::read(&mut &*socket2::SockRef::from(&tcp), &mut scratch[..want]) {
                Ok(n) => Some(Ok(Bytes::copy_from_slice(&scratch[..n]))),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(e)),
            }
        })
    };
    pump(driver, opened.id, opened.waker, tcp, first).await
}

/// Runs both directions of stream `id`; `first` is what [`run_opened`] read already.
async fn pump(
    driver: SessionDriver,
    id: StreamId,
    waker: Arc<StreamWaker>,
    tcp: TcpStream,
    first: Option<io::Result<Bytes>>,
) {
    // Armed from the start: should this process die (killed, out of memory, a panic, the
    // watchdog) the kernel closes the socket with an RST, so the application or service does
    // not take a cut-off transfer for a complete one. An orderly end disarms it before its FIN
    // (`downstream`), which then follows the data as usual.
    let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
    let (rd, wr) = tcp.into_split();
    // Dropped without a FIN however this task ends (a reset below, or the task dropped: a panic,
    // the runtime's end): tokio's write half shuts its side of the socket when dropped, and the
    // application would read a clean end before the reset that `SO_LINGER` 0 sends at the close.
    let mut wr = NoFinOnDrop(Some(wr));
    let reset = {
        let up = upstream(&driver, id, &waker, rd, first);
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
        // Close with an RST: `SO_LINGER` 0 (again, if an orderly FIN disarmed it), and the
        // write half dropped without a FIN (`NoFinOnDrop`). The read half was dropped with its
        // future, so this closes the socket.
        let _ = socket2::SockRef::from(wr.as_ref()).set_linger(Some(std::time::Duration::ZERO));
        drop(wr);
        driver.with(|s, _| s.stream_reset(id, reset::APP));
        debug!(stream = %id, "stream reset");
    } else {
        trace!(stream = %id, "stream done");
    }
    driver.unregister(id);
}

/// An application socket's write half that sends no FIN when dropped (`OwnedWriteHalf::forget`):
/// the socket closes when both halves are gone, with an RST while `SO_LINGER` 0 is armed (see
/// `pump`). An orderly end sends its FIN itself (`downstream`).
struct NoFinOnDrop(Option<OwnedWriteHalf>);

impl std::ops::Deref for NoFinOnDrop {
    type Target = OwnedWriteHalf;

    fn deref(&self) -> &OwnedWriteHalf {
        self.0.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for NoFinOnDrop {
    fn deref_mut(&mut self) -> &mut OwnedWriteHalf {
        self.0.as_mut().expect("held until dropped")
    }
}

impl Drop for NoFinOnDrop {
    fn drop(&mut self) {
        if let Some(wr) = self.0.take() {
            wr.forget();
        }
    }
}

/// A read that returned less than this marks the stream as interactive or idle: the next read
/// takes at most this much, into the worker thread's scratch buffer, and hands the engine a copy
/// of exactly what came. A block reserved per read (and kept by the engine's slice until the
/// peer acknowledged it) cost every new or idle stream a fresh allocation of this size, which
/// grew the heap a page at a time while thousands of connections were set up, and a block kept
/// across the wait cost an idle stream its touched page of up to [`READ_MAX`] in each daemon
/// (bench/RESULTS.md, "Scale and memory"). A bulk stream, whose reads fill what they may take,
/// reads straight into one block from read to read, uncopied.
const SMALL_READ: usize = 16 * 1024;

std::thread_local! {
    /// Where small reads land before they are copied out (see [`SMALL_READ`]): one per worker
    /// thread, used only within one poll.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SMALL_READ].into_boxed_slice());
}

/// Socket -> engine. `first` is what [`run_opened`] read already.
async fn upstream(
    driver: &SessionDriver,
    id: StreamId,
    waker: &StreamWaker,
    mut rd: OwnedReadHalf,
    first: Option<io::Result<Bytes>>,
) -> Half {
    let mut buf = BytesMut::new();
    // Bytes of the last read; a stream starts small and grows to READ_MAX in one read.
    let mut last = 0;
    let mut first = first;
    loop {
        let read = match first.take() {
            Some(read) => read,
            None => match read_next(driver, id, waker, &mut rd, &mut buf, last).await {
                Some(read) => read,
                None => return Half::Reset,
            },
        };
        let data = match read {
            Ok(data) => data,
            Err(e) => {
                debug!(stream = %id, error = %e, "application socket error");
                return Half::Reset;
            }
        };
        if data.is_empty() {
            return match driver.with(|s, _| s.stream_finish(id)) {
                Ok(()) => Half::Done,
                Err(_) => Half::Reset,
            };
        }
        last = data.len();
        driver.counters().app_read(last);
        if driver.with(|s, _| s.stream_write(id, data)).is_err() {
            return Half::Reset;
        }
    }
}

/// The application's next bytes (empty at its end of the stream), read once the stream has
/// capacity for them; `None` when the stream was reset meanwhile. `last`: bytes of the last
/// read; `buf` is the block a bulk stream reads into.
async fn read_next(
    driver: &SessionDriver,
    id: StreamId,
    waker: &StreamWaker,
    rd: &mut OwnedReadHalf,
    buf: &mut BytesMut,
    last: usize,
) -> Option<io::Result<Bytes>> {
    loop {
        if last < SMALL_READ {
            // Whatever was read is split off already: drop the rest of the block (the engine's
            // slices keep what they need of it).
            *buf = BytesMut::new();
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
                return Some(Err(e));
            },
            () = &mut writable => match driver.with(|s, _| s.stream_send_capacity(id)) {
                Ok(_) => continue,
                Err(_) => return None,
            },
        }
        let cap = match driver.with(|s, _| s.stream_send_capacity(id)) {
            Ok(c) => c.min(READ_MAX),
            Err(_) => return None,
        };
        if cap == 0 {
            writable.await;
            continue;
        }
        // One poll of the socket: a read that returns less than it could take also tells tokio
        // the socket is drained, so the next turn waits for the application instead of asking
        // the socket again (one `recv` that would fail, and one capacity check, per read).
        let read = if last < SMALL_READ {
            read_small(rd, cap.min(SMALL_READ)).await
        } else {
            buf.reserve(cap);
            match poll_once(rd.read_buf(&mut (&mut *buf).limit(cap))).await {
                Poll::Ready(Ok(_)) => Poll::Ready(Ok(buf.split().freeze())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        };
        match read {
            Poll::Ready(read) => return Some(read),
            // The readiness was stale; it is cleared now.
            Poll::Pending => continue,
        }
    }
}

/// Polls `rd` once for at most `want` (at most [`SMALL_READ`]) bytes, read into this thread's
/// scratch buffer: a copy of what came (empty at the end of the stream), or `Pending` with the
/// task registered for the socket's next readiness.
async fn read_small(rd: &mut OwnedReadHalf, want: usize) -> Poll<io::Result<Bytes>> {
    std::future::poll_fn(|cx| {
        Poll::Ready(SCRATCH.with_borrow_mut(|scratch| {
            let mut rb = ReadBuf::new(&mut scratch[..want]);
            match Pin::new(&mut *rd).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(Bytes::copy_from_slice(rb.filled()))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            }
        }))
    })
    .await
}

/// `f` polled once: its output, or `Pending` (what it registered for its wake-up stays).
async fn poll_once<F: std::future::Future>(f: F) -> Poll<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
}

/// Engine -> socket. Each write takes every chunk the stream has ready, up to [`WRITE_MAX`]
/// bytes in at most [`WRITE_CHUNKS`] chunks, in one system call: a stream's bytes come in a
/// chunk per frame, and a call per chunk would cost a wake-up of the application per chunk too
/// (`bench/RESULTS.md`, "Many streams"). A stream that waits for more holds no chunk list.
async fn downstream(
    driver: &SessionDriver,
    id: StreamId,
    waker: &StreamWaker,
    wr: &mut OwnedWriteHalf,
) -> Half {
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        let readable = waker.readable.notified();
        tokio::pin!(readable);
        readable.as_mut().enable();
        let mut taken = 0;
        let next = driver.with(|s, now| {
            while chunks.len() < WRITE_CHUNKS && taken < WRITE_MAX {
                match s.stream_read(now, id, WRITE_MAX - taken) {
                    Ok(ReadChunk::Data(b)) => {
                        taken += b.len();
                        chunks.push(b);
                    }
                    other => return other.map(Some),
                }
            }
            Ok(None)
        });
        if taken > 0 {
            if let Err(e) = write_chunks(wr, &mut chunks).await {
                debug!(stream = %id, error = %e, "application socket error");
                return Half::Reset;
            }
            driver.counters().app_written(taken);
        }
        // What ended the turn, once what it took is written: the end of the stream was
        // consumed by the read that returned it, so it is acted on now, not asked for again.
        match next {
            Ok(Some(ReadChunk::Fin)) => {
                // An orderly end: the FIN follows the data, and the close after it lingers as
                // usual (with `SO_LINGER` 0 a close before the peer acknowledged the FIN would
                // reset, and drop what it had not yet acknowledged).
                let _ = socket2::SockRef::from(wr.as_ref()).set_linger(None);
                let _ = wr.shutdown().await;
                return Half::Done;
            }
            Ok(Some(ReadChunk::Blocked)) => {
                chunks = Vec::new();
                readable.await;
            }
            Ok(Some(ReadChunk::Data(_)) | None) => {}
            Err(_) => return Half::Reset,
        }
    }
}

/// Writes all of `chunks` to `wr` (vectored: several chunks per system call) and empties it.
async fn write_chunks(wr: &mut OwnedWriteHalf, chunks: &mut Vec<Bytes>) -> io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let mut slices = [IoSlice::new(&[]); WRITE_CHUNKS];
        let k = (chunks.len() - first).min(WRITE_CHUNKS);
        for (slice, c) in slices.iter_mut().zip(&chunks[first..first + k]) {
            *slice = IoSlice::new(c);
        }
        let mut n = wr.write_vectored(&slices[..k]).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let c = &mut chunks[first];
            if c.len() <= n {
                n -= c.len();
                first += 1;
            } else {
                c.advance(n);
                n = 0;
            }
        }
    }
    chunks.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::BudgetSignal;
    use crate::engine::{Config, Role, Session};
    use crate::ids::NodeId;

    /// A stream task dropped mid-stream (a panic, the runtime's end as a daemon exits) closes
    /// its application's connection with a reset only: before, tokio's write half sent a FIN
    /// as it was dropped, and the application read a clean end of the stream before the reset,
    /// as if the transfer were complete.
    #[tokio::test]
    async fn a_stream_task_dropped_resets_its_connection_without_a_fin() {
        let signal = BudgetSignal::default();
        let session = Session::new(Role::Client, Config::default());
        let (driver, _opened) = SessionDriver::start(session, &signal);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let opened = driver
            .open_stream(|s, now| s.open_stream(now, NodeId(1), "svc"))
            .expect("a stream");
        let task = tokio::spawn(run_opened(driver.clone(), opened, tcp));
        // The task waits for either side; then it is dropped.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        task.abort();
        let _ = task.await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), app.read(&mut buf))
            .await
            .expect("the connection ends");
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "the application read {read:?}, not a reset"
        );
    }
}
