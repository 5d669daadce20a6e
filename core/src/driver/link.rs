//! Link tasks: one reader and one writer per Noise link, feeding one session.

use super::{AbortOnDrop, SessionDriver};
use crate::engine::{Gathered, LinkStats};
use crate::frame::MAX_MESSAGE;
use crate::ids::LinkId;
use crate::noise::{LinkError, LinkReader, LinkWriter, READ_CHUNK};
use bytes::{Bytes, BytesMut};
use std::fmt;
use std::sync::Arc;
use tokio::sync::Notify;
use tracing::{debug, info, warn, Instrument};

/// Messages a writer takes from the engine per lock, then encrypts and writes in one syscall.
const BATCH: usize = 4;
/// A writer that found nothing to send for this long gives its buffers back (an idle link
/// holds next to nothing); the next message allocates them again.
const IDLE_FREE: std::time::Duration = std::time::Duration::from_secs(1);

/// What one link's tasks, its engine state and its socket halves' bookkeeping hold besides the
/// buffers counted below (two tokio tasks, the link's entry in its session, the cipher state).
const LINK_STATE: u64 = 16 * 1024;

/// The most one established link holds in this process for what it receives: its reader's
/// read block ([`READ_CHUNK`], the partial message included; messages are decrypted where they
/// were read, and older blocks still referenced are their consumers' memory), plus
/// `LINK_STATE` (16 KiB: tasks, engine entry, cipher state). A server charges it to the receive
/// pool of its `limits.memory` for every client link it admits (`docs/CONFIG.md`, Limits).
/// Kernel socket buffers and, on a QUIC link, quinn's windows come on top (`docs/CONFIG.md`,
/// "Memory cost of QUIC links").
pub const LINK_RECV_MEMORY: u64 = READ_CHUNK as u64 + LINK_STATE;

/// The most one established link holds in this process for what it sends: its writer's batch
/// (`BATCH`, 4, messages of up to [`MAX_MESSAGE`], each copied into the output buffer where it
/// is sealed, with its length prefix and tag) waiting for the socket; the frames of the batch's
/// messages as they were gathered under the session's lock, of which one message's may still be
/// held beside its copy and each keeps at most [`Gathered::KEPT_FRAMES`] of room afterwards
/// (the payload is referenced, not held: it is the streams'); plus `LINK_STATE`. Charged to the
/// send pool as [`LINK_RECV_MEMORY`] is to the receive pool.
pub const LINK_SEND_MEMORY: u64 =
    (BATCH * (MAX_MESSAGE + 18) + MAX_MESSAGE + BATCH * Gathered::KEPT_FRAMES) as u64 + LINK_STATE;

/// How often a link task copies its numbers from the engine (kept for the log line when the
/// link ends, since the engine forgets a link it declared dead).
const STATS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a link of a session closed here in order may take to see what its writer sent
/// acknowledged before it closes (QUIC: [`LinkWriter::shutdown`] waits for the peer's acks; a
/// path that died takes all of it).
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(1);
/// Every this many copies, the numbers are logged at debug level.
const STATS_LOG_EVERY: u32 = 10;

/// Why a link ended.
#[derive(Debug)]
pub enum LinkEnd {
    /// The peer closed the connection.
    Closed,
    /// The peer closed the connection with a reason (a QUIC close's; printable, bounded).
    ClosedSaying(String),
    /// A socket or crypto error.
    Link(LinkError),
    /// The peer broke the protocol.
    Peer(crate::engine::PeerError),
    /// The session was closed here.
    SessionClosed,
    /// The peer stopped answering pings.
    TimedOut,
    /// The peer broke the rules of routed messages, or a relay refused what came on the link.
    Routed(String),
    /// Closed here to be authenticated again: a reload changed what links are checked against
    /// (see [`SessionDriver::retire_links`]).
    Retired,
    /// The peer sent `CLOSE` with this code ([`crate::frame::close`]): a node that refused the
    /// link its session, a client that stopped.
    PeerClosed(u16),
}

/// What a client link carries besides its own session's messages: routed messages (the
/// sections of sub-links and virtual links of other owners, [`crate::route`]). The client's
/// router feeds the sections it reads to the owners' engines and polls their sub-links; a
/// node's router forwards sections to their owners over peer links and writes the sections its
/// peers send back. The link task calls it; it decides nothing about the link's own session.
pub trait Router: Send + Sync + 'static {
    /// The link joined its session as `id`; `waker` wakes its writer (share it with the
    /// sub-links polled in [`Router::poll`]).
    fn up(&self, id: LinkId, waker: &Arc<Notify>);
    /// A routed message arrived. An error closes the link.
    fn route(&self, msg: Bytes) -> RouteFuture<'_>;
    /// Fills up to `bufs.len()` routed messages to send (each buffer cleared first); how many.
    fn poll(&self, bufs: &mut [BytesMut]) -> usize;
    /// About once a second while the link lives.
    fn tick(&self) {}
    /// The link ended.
    fn down(&self);
}

/// What [`Router::route`] returns: done when the message was handed on (a relay waits while
/// its peer link's queue is full, which stops this link's reader: backpressure).
pub type RouteFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), LinkEnd>> + Send + 'a>>;

impl fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkEnd::Closed => f.write_str("closed by peer"),
            LinkEnd::ClosedSaying(why) => write!(f, "closed by peer: {why}"),
            LinkEnd::Link(e) => write!(f, "{e}"),
            LinkEnd::Peer(e) => write!(f, "protocol error: {e}"),
            LinkEnd::SessionClosed => f.write_str("session closed"),
            LinkEnd::TimedOut => f.write_str("no answer to pings"),
            LinkEnd::Routed(e) => write!(f, "routing: {e}"),
            LinkEnd::Retired => f.write_str("closed to be authenticated again after a reload"),
            LinkEnd::PeerClosed(code) => match crate::frame::close::refusal(*code) {
                Some(why) => write!(f, "closed by peer: {why}"),
                None if *code == crate::frame::close::SESSION_OVER => {
                    f.write_str("closed by peer: the client stopped")
                }
                None if *code == crate::frame::close::WRONG_NODE => f.write_str(
                    "closed by peer: the client has another node.id than this node's \
                     server.node_id for the address it dialled (they must be equal)",
                ),
                None => write!(f, "closed by peer (code {code})"),
            },
        }
    }
}

/// Runs one established link for `driver` until it dies, then removes it from the session
/// (its unconfirmed frames go out again on the other links). `first` is the plaintext of the
/// client's key-confirmation message, which the server feeds to the engine like any other.
/// `lane`: the link is a dedicated interactive lane (the client hello's flag).
pub async fn run(
    driver: SessionDriver,
    reader: LinkReader,
    writer: LinkWriter,
    first: Option<Bytes>,
    lane: bool,
) -> LinkEnd {
    run_with(driver, reader, writer, first, lane, |_| {}).await
}

/// [`run`], telling `on_up` the link's id once it has joined the session.
pub async fn run_with(
    driver: SessionDriver,
    reader: LinkReader,
    writer: LinkWriter,
    first: Option<Bytes>,
    lane: bool,
    on_up: impl FnOnce(LinkId),
) -> LinkEnd {
    run_routed(driver, reader, writer, first, lane, on_up, None).await
}

/// [`run_with`] for a link that also carries routed messages, which `router` handles.
pub async fn run_routed(
    driver: SessionDriver,
    mut reader: LinkReader,
    writer: LinkWriter,
    first: Option<Bytes>,
    lane: bool,
    on_up: impl FnOnce(LinkId),
    router: Option<Arc<dyn Router>>,
) -> LinkEnd {
    let (id, waker, kill) = driver.add_link(lane);
    on_up(id);
    if let Some(r) = &router {
        r.up(id, &waker);
    }
    let _routed = router.clone().map(RouterDown);
    // Removes the link from the session however this future ends, aborted included.
    let _registered = Registered {
        driver: driver.clone(),
        id,
    };
    let span = tracing::debug_span!("link", id = %id);
    let mut last: Option<LinkStats> = None;
    let end = async {
        if let Some(first) = first {
            driver.counters().link_received(first.len());
            if let Err(e) = driver.with(|s, now| s.handle_message(now, id, first)) {
                return LinkEnd::Peer(e);
            }
        }
        let mut w = AbortOnDrop(tokio::spawn(
            write_loop(driver.clone(), id, waker, writer, router.clone()).in_current_span(),
        ));
        let read = read_loop(&driver, id, &mut reader, router.as_deref());
        tokio::pin!(read);
        let mut tick = tokio::time::interval(STATS_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tokio::select! {
                end = &mut read => return end,
                end = &mut w.0 => return end.unwrap_or(LinkEnd::Closed),
                () = driver.closed() => {
                    // An orderly end (a drain's end, a stop): the writer puts out what it took
                    // (the streams' `RESET`s) and shuts its half, which on QUIC waits for the
                    // peer's acks: a connection's close discards what it has not delivered.
                    if driver.closed_in_order() {
                        let _ = tokio::time::timeout(CLOSE_LINGER, &mut w.0).await;
                    }
                    return LinkEnd::SessionClosed;
                }
                // Retired, or found dead by the engine (or closed by the peer with a reason:
                // below).
                () = kill.notified() => {
                    return if driver.is_retired(id) {
                        LinkEnd::Retired
                    } else {
                        LinkEnd::TimedOut
                    };
                }
                _ = tick.tick() => {
                    if let Some(r) = &router {
                        r.tick();
                    }
                    if let Some(s) = driver.with(|s, now| s.link_stats(id, now)) {
                        last = Some(s);
                        ticks = ticks.wrapping_add(1);
                        if ticks.is_multiple_of(STATS_LOG_EVERY) {
                            debug!(stats = %Stats(&s), "link");
                        }
                    }
                }
            }
        }
    }
    .instrument(span.clone())
    .await;
    // A peer's `CLOSE` with a reason and the end of the stream behind it come together: the
    // reason is the end, whichever the link saw first.
    let end = match (end, driver.peer_close(id)) {
        (LinkEnd::Closed | LinkEnd::Link(_) | LinkEnd::TimedOut, Some(code)) => {
            LinkEnd::PeerClosed(code)
        }
        (end, _) => end,
    };
    let stats = driver.with(|s, now| s.link_stats(id, now)).or(last);
    span.in_scope(|| match stats {
        // A client configured with another node id for this node's address: the operator's
        // mistake to see on both ends, one line a minute with the count (the client dials
        // again, backing off: a trial's node logged 87 lines in 35 s).
        _ if matches!(end, LinkEnd::PeerClosed(crate::frame::close::WRONG_NODE)) => {
            driver.wrong_node(end.to_string())
        }
        Some(s) if driver.may_log() => info!(%end, stats = %Stats(&s), "link ended"),
        None if driver.may_log() => info!(%end, "link ended"),
        Some(s) => debug!(%end, stats = %Stats(&s), "link ended"),
        None => debug!(%end, "link ended"),
    });
    end
}

/// Logs the end of links a client closed because this node's id is not the one its config has
/// for the address (`WRONG_NODE`): at `warn`, with the count of such ends since the last line
/// ([`SessionDriver::wrong_node`]).
pub(super) fn log_wrong_node(links: u64, end: &String) {
    warn!(links, %end, "link ended")
}

/// A link's numbers for a log line.
struct Stats<'a>(&'a LinkStats);

impl fmt::Display for Stats<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        match s.rtt.smoothed {
            Some(srtt) => write!(f, "rtt {:.1}±{:.1} ms", ms(srtt), ms(s.rtt.var))?,
            None => f.write_str("rtt -")?,
        }
        write!(
            f,
            ", delivery {:.1} Mbit/s, sent {} B, received {} B, unconfirmed {}",
            s.delivery_rate as f64 * 8e-6,
            s.bytes_sent,
            s.bytes_received,
            s.unconfirmed
        )
    }
}

/// A link's membership of its session, ended on drop.
struct Registered {
    driver: SessionDriver,
    id: LinkId,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.driver.remove_link(self.id);
    }
}

/// Tells the router the link ended, however its task ends.
struct RouterDown(Arc<dyn Router>);

impl Drop for RouterDown {
    fn drop(&mut self) {
        self.0.down();
    }
}

async fn read_loop(
    driver: &SessionDriver,
    id: LinkId,
    reader: &mut LinkReader,
    router: Option<&dyn Router>,
) -> LinkEnd {
    // Messages handled in one pass over the session: what one read brought, up to this many.
    let mut batch: Vec<Bytes> = Vec::with_capacity(READ_BATCH);
    loop {
        let first = match reader.recv().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return LinkEnd::Closed,
            Err(e) => return failed(e),
        };
        let mut next = Ok(Some(first));
        while let Ok(Some(msg)) = next {
            tracing::trace!(len = msg.len(), "received");
            driver.counters().link_received(msg.len());
            if let Some(r) = router.filter(|_| crate::route::is_routed(&msg)) {
                // The session's messages before it first, in order.
                if let Err(e) = handle(driver, id, &mut batch) {
                    return e;
                }
                if let Err(e) = r.route(msg).await {
                    return e;
                }
            } else {
                batch.push(msg);
            }
            next = match batch.len() < READ_BATCH {
                true => reader.recv_buffered(),
                false => Ok(None),
            };
        }
        if let Err(e) = handle(driver, id, &mut batch) {
            return e;
        }
        if let Err(e) = next {
            return failed(e);
        }
        // Each batch counts against the task's share of tokio's cooperative budget: a QUIC
        // stream's reads take no part in it (a TCP socket's do, once per read of many
        // messages), so while a peer kept its stream full the reads never waited and this task
        // kept its worker from every other task, the endpoint's UDP socket included (trial 56:
        // others' round trips 0.2 -> 40-165 ms under a flood of tiny messages).
        tokio::task::coop::consume_budget().await;
    }
}

/// Most messages [`read_loop`] hands the session in one pass: a peer that sends many small
/// messages (a trial sent millions of empty ones a second) costs one pass of the session's lock
/// per batch, not per message, and a batch of full messages stays short.
const READ_BATCH: usize = 32;

/// Hands `batch` (emptied) to the session, in order, under one lock.
fn handle(driver: &SessionDriver, id: LinkId, batch: &mut Vec<Bytes>) -> Result<(), LinkEnd> {
    if batch.is_empty() {
        return Ok(());
    }
    driver
        .with(|s, now| {
            batch
                .drain(..)
                .try_for_each(|m| s.handle_message(now, id, m))
        })
        .map_err(LinkEnd::Peer)
}

/// Why a link whose read or write failed with `e` ended (a QUIC link's end as the peer's close
/// or a timeout where it was one, [`crate::quic::link_end`]).
fn failed(e: LinkError) -> LinkEnd {
    crate::quic::link_end(&e).unwrap_or(LinkEnd::Link(e))
}

async fn write_loop(
    driver: SessionDriver,
    id: LinkId,
    waker: Arc<Notify>,
    mut writer: LinkWriter,
    router: Option<Arc<dyn Router>>,
) -> LinkEnd {
    let mut routed_first = false;
    // Where the session's messages are gathered under its lock (`poll_link_into`).
    let mut gathered: [Gathered; BATCH] = Default::default();
    loop {
        // Closed in order: what the session still has to send (its `RESET`s, a `CLOSE`) goes
        // out first, then the writer shuts its half.
        let closing = driver.closed_in_order();
        // With a router, its messages and the session's own take turns going first, so
        // neither starves the other on a busy link. Every message is built in the writer's
        // output buffer and sealed there by the flush.
        routed_first = !routed_first;
        let mut n = 0;
        if let (true, Some(r)) = (routed_first, &router) {
            match poll_routed(r.as_ref(), &driver, &mut writer, BATCH / 2) {
                Ok(m) => n = m,
                Err(e) => return failed(e),
            }
        }
        match driver.poll_link_into(id, &mut writer, &mut gathered[..BATCH - n]) {
            None => return LinkEnd::TimedOut,
            Some(Err(e)) => return failed(e),
            Some(Ok(own)) => n += own,
        }
        if let (false, Some(r)) = (routed_first, &router) {
            match poll_routed(r.as_ref(), &driver, &mut writer, BATCH - n) {
                Ok(m) => n += m,
                Err(e) => return failed(e),
            }
        }
        tracing::trace!(messages = n, "transmit");
        if n == 0 && closing {
            writer.shutdown().await;
            return LinkEnd::SessionClosed;
        }
        if n == 0 {
            // poll_link_into parked this writer; a permit from a wake-up in between is kept
            // (and a wake-up that comes as the timeout drops the wait is passed on as a permit).
            // An orderly close wakes it too, to shut its half.
            if tokio::time::timeout(IDLE_FREE, waker.notified())
                .await
                .is_err()
            {
                writer.free_buffer();
                gathered = Default::default();
                waker.notified().await;
            }
            continue;
        }
        if let Err(e) = writer.flush().await {
            return failed(e);
        }
    }
}

/// Up to `max` routed messages from `router`, each built in `writer`'s output buffer.
fn poll_routed(
    router: &dyn Router,
    driver: &SessionDriver,
    writer: &mut LinkWriter,
    max: usize,
) -> Result<usize, LinkError> {
    let mut n = 0;
    while n < max {
        let mut body = writer.begin()?;
        let got = router.poll(std::slice::from_mut(&mut body));
        let len = body.len();
        writer.commit(body)?;
        if got == 0 {
            break;
        }
        driver.counters().link_sent(len);
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::BudgetSignal;
    use crate::engine::{Config, Role, Session};
    use crate::ids::NodeId;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, ReadBuf};

    /// A peer whose stream is never empty: empty clear messages (`00 00`) on every read, at
    /// once, until `limit` bytes, then the end of the stream. It counts what it served.
    struct Flood {
        served: Arc<AtomicU64>,
        limit: u64,
    }

    impl AsyncRead for Flood {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let served = self.served.load(Ordering::Relaxed);
            let n = (buf.remaining() as u64).min(self.limit - served) as usize;
            buf.put_slice(&vec![0; n]);
            self.served.fetch_add(n as u64, Ordering::Relaxed);
            Poll::Ready(Ok(()))
        }
    }

    /// Issue 23 (trial 56, F3): a link whose stream is always full (a QUIC stream's reads never
    /// wait and take no part in tokio's budget) gives its worker back to the other tasks: with
    /// one thread, another task runs after the reader handled a little of the flood, not after
    /// all of it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_reader_of_a_stream_that_never_waits_lets_other_tasks_run() {
        const LIMIT: u64 = 16 << 20;
        let signal = BudgetSignal::default();
        let session = Session::new(Role::Server(NodeId(1)), Config::default());
        let (driver, _opened) = SessionDriver::start(session, &signal);
        let (id, _, _) = driver.add_link(false);
        let served = Arc::new(AtomicU64::new(0));
        let mut reader = LinkReader::clear(Box::new(Flood {
            served: served.clone(),
            limit: LIMIT,
        }));
        let d = driver.clone();
        let task = tokio::spawn(async move {
            let end = read_loop(&d, id, &mut reader, None).await;
            assert!(matches!(end, LinkEnd::Closed), "{end:?}");
        });
        // The reader runs now; this task gets its turn when the reader gives the thread back.
        tokio::task::yield_now().await;
        let when = served.load(Ordering::Relaxed);
        assert!(
            when < LIMIT / 4,
            "another task ran only after the reader had handled {when} of {LIMIT} bytes"
        );
        task.await.expect("the reader ends at the end of the flood");
        driver.remove_link(id);
    }
}
