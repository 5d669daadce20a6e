//! One peer link while it lives: a writer task that seals what is queued for the peer, and the
//! link's own loop, which reads, decodes and dispatches what the peer sends and keeps the link
//! alive with `PING`/`PONG`.
//!
//! Liveness: each end pings every [`PING_EVERY`] while no ping of its own is outstanding, and a
//! ping unanswered for [`PONG_TIMEOUT`] declares the link dead. A silent peer is therefore found
//! at most `PING_EVERY + PONG_TIMEOUT` (plus one tick, 5 s in all) after its last pong; a peer
//! that closes or resets its socket, at once.

use super::{Credits, Mesh};
use crate::relay::PeerState;
use bytes::{Bytes, BytesMut};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};
use wanmux_core::driver::AbortOnDrop;
use wanmux_core::frame::MAX_MESSAGE;
use wanmux_core::noise::{LinkError, LinkReader, LinkWriter};
use wanmux_core::peer::{PeerFrame, PeerFrameError};

/// How often a link with no ping outstanding sends one.
pub(super) const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping unanswered this long means the peer is gone.
pub(super) const PONG_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames of this link's own (pongs, pings) that may wait for the writer; a peer that sends pings
/// faster than they are answered gets no pong for the excess, not a growing queue here.
const CONTROL_QUEUE: usize = 16;
/// Messages the writer seals before one flush.
const BATCH: usize = 8;

/// Why a peer link ended.
#[derive(Debug)]
pub(super) enum PeerEnd {
    /// The peer closed the connection, or sent `CLOSE`.
    Closed,
    /// A socket or crypto error.
    Link(LinkError),
    /// The peer sent bytes that are not valid peer frames.
    Malformed(PeerFrameError),
    /// The peer sent a frame this version cannot act on.
    Protocol(&'static str),
    /// The peer stopped answering pings.
    TimedOut,
    /// A newer link to the same peer replaced this one, or the mesh stopped.
    Replaced,
}

impl fmt::Display for PeerEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerEnd::Closed => f.write_str("closed by peer"),
            PeerEnd::Link(e) => write!(f, "{e}"),
            PeerEnd::Malformed(e) => write!(f, "protocol error: {e}"),
            PeerEnd::Protocol(e) => write!(f, "protocol error: {e}"),
            PeerEnd::TimedOut => f.write_str("no answer to pings"),
            PeerEnd::Replaced => f.write_str("closed here"),
        }
    }
}

/// Runs an authenticated peer link until it dies: registers it (it becomes the peer's live
/// link), serves it, unregisters it. `first` is the plaintext of the dialler's key confirmation,
/// handled like any other message of the link. Logs the link up and down at info.
pub(super) async fn run(
    mesh: &Arc<Mesh>,
    peer: u16,
    addr: SocketAddr,
    instance: u64,
    mut reader: LinkReader,
    writer: LinkWriter,
    first: Option<Bytes>,
) -> PeerEnd {
    let Some(super::Registered {
        generation,
        kill,
        data,
        credits,
    }) = mesh.register(peer, addr, instance)
    else {
        return PeerEnd::Replaced;
    };
    let span = tracing::info_span!("peer", id = peer, %addr);
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let end = async {
        let mut live = Liveness::new(control);
        // Dropped when the link ends, with every virtual link made through it.
        let mut relayed = PeerState::new(mesh.relay(), peer);
        if let Some(first) = first {
            if let Err(end) = handle_message(first, &mut live, &mut relayed) {
                return end;
            }
        }
        let mut w = AbortOnDrop(tokio::spawn(
            write_loop(writer, control_rx, data, credits).in_current_span(),
        ));
        let mut tick = tokio::time::interval(PING_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = reader.recv() => match msg {
                    Ok(Some(msg)) => {
                        if let Err(end) = handle_message(msg, &mut live, &mut relayed) {
                            return end;
                        }
                        // One read brings many messages, handed out without touching the
                        // socket: each counts against the task's budget, so a peer that keeps
                        // the link full cannot keep the worker from the other tasks.
                        tokio::task::coop::consume_budget().await;
                    }
                    Ok(None) => return PeerEnd::Closed,
                    Err(e) => return PeerEnd::Link(e),
                },
                end = &mut w.0 => return end.unwrap_or(PeerEnd::Closed),
                () = kill.notified() => return PeerEnd::Replaced,
                _ = tick.tick() => {
                    if let Err(end) = live.tick(Instant::now()) {
                        return end;
                    }
                }
            }
        }
    }
    .instrument(span.clone())
    .await;
    mesh.unregister(peer, generation);
    span.in_scope(|| match &end {
        PeerEnd::Malformed(_) | PeerEnd::Protocol(_) => {
            warn!(%end, "peer link down: the peer broke the protocol")
        }
        _ => info!(%end, "peer link down"),
    });
    end
}

/// The link's own pings: one outstanding at a time.
struct Liveness {
    control: mpsc::Sender<PeerFrame>,
    next_token: u64,
    outstanding: Option<(u64, Instant)>,
}

impl Liveness {
    fn new(control: mpsc::Sender<PeerFrame>) -> Self {
        Liveness {
            control,
            next_token: 0,
            outstanding: None,
        }
    }

    /// Once per [`PING_EVERY`]: the link is dead if the outstanding ping is too old, else a ping
    /// goes out if none is outstanding. A ping the writer has no room for counts as outstanding
    /// all the same: a writer stuck that long (a peer that stopped reading) is a dead link too.
    fn tick(&mut self, now: Instant) -> Result<(), PeerEnd> {
        match self.outstanding {
            Some((_, sent)) if now.duration_since(sent) >= PONG_TIMEOUT => Err(PeerEnd::TimedOut),
            Some(_) => Ok(()),
            None => {
                let token = self.next_token;
                self.next_token = self.next_token.wrapping_add(1);
                let _ = self.control.try_send(PeerFrame::Ping(token));
                self.outstanding = Some((token, now));
                Ok(())
            }
        }
    }

    fn pong(&mut self, token: u64) {
        if let Some((t, sent)) = self.outstanding {
            if t == token {
                self.outstanding = None;
                tracing::trace!(rtt = ?sent.elapsed(), "pong");
            }
        }
    }

    fn ping(&mut self, token: u64) {
        // Dropped when the queue is full: see CONTROL_QUEUE.
        let _ = self.control.try_send(PeerFrame::Pong(token));
    }
}

/// Decodes one message of the peer and acts on each frame in order: the link's own frames
/// here, cluster frames (`BIND` .. `RELAY_DOWN`) in the relay ([`PeerState::dispatch`]).
fn handle_message(
    mut msg: Bytes,
    live: &mut Liveness,
    relayed: &mut PeerState,
) -> Result<(), PeerEnd> {
    loop {
        match PeerFrame::decode(&mut msg) {
            Ok(None) => return Ok(()),
            Ok(Some(PeerFrame::Ping(token))) => live.ping(token),
            Ok(Some(PeerFrame::Pong(token))) => live.pong(token),
            Ok(Some(PeerFrame::Close(code))) => {
                debug!(code, "peer closes the link");
                return Err(PeerEnd::Closed);
            }
            Ok(Some(PeerFrame::Unknown(ty))) => tracing::trace!(ty, "extension frame skipped"),
            Ok(Some(frame)) => {
                let name = frame.name();
                relayed.dispatch(frame).map_err(|e| {
                    debug!(frame = name, error = e, "cluster frame refused");
                    PeerEnd::Protocol(e)
                })?
            }
            Err(e) => return Err(PeerEnd::Malformed(e)),
        }
    }
}

/// Seals the link's own frames first, then the credit owed ([`Credits`]), then queued messages,
/// and flushes each batch.
async fn write_loop(
    mut writer: LinkWriter,
    mut control: mpsc::Receiver<PeerFrame>,
    mut data: mpsc::Receiver<Bytes>,
    credits: Arc<Credits>,
) -> PeerEnd {
    let mut own = BytesMut::with_capacity(MAX_MESSAGE);
    let mut data_open = true;
    loop {
        tokio::select! {
            biased;
            frame = control.recv() => {
                // The link's task holds the sender for as long as the link runs.
                let Some(frame) = frame else { return PeerEnd::Replaced };
                own.clear();
                frame.encode(&mut own);
                while own.len() + wanmux_core::frame::PING_LEN <= MAX_MESSAGE {
                    match control.try_recv() {
                        Ok(f) => f.encode(&mut own),
                        Err(_) => break,
                    }
                }
                if let Err(e) = writer.seal(&own) {
                    return PeerEnd::Link(e);
                }
            }
            () = credits.wait() => {
                if let Err(e) = seal_credits(&mut |m| writer.seal(m), &mut own, &credits) {
                    return PeerEnd::Link(e);
                }
            }
            msg = data.recv(), if data_open => match msg {
                Some(msg) => {
                    let mut seal = |m: &[u8]| writer.seal(m);
                    if let Err(e) = seal_batch(&mut seal, msg, &mut data, &mut own, &credits) {
                        return PeerEnd::Link(e);
                    }
                }
                // Every handle is gone; the link's own frames still flow.
                None => {
                    data_open = false;
                    continue;
                }
            },
        }
        if let Err(e) = writer.flush().await {
            return PeerEnd::Link(e);
        }
    }
}

/// Seals `first` and up to [`BATCH`] - 1 more queued messages, each after the credit owed
/// when it is sealed: credit given before a message was queued never follows it on the link
/// (a `VIA_DOWN` queued after it ends what the credit was for). `seal` is the link writer's.
fn seal_batch(
    seal: &mut impl FnMut(&[u8]) -> Result<(), LinkError>,
    first: Bytes,
    data: &mut mpsc::Receiver<Bytes>,
    own: &mut BytesMut,
    credits: &Credits,
) -> Result<(), LinkError> {
    seal_credits(seal, own, credits)?;
    seal(&first)?;
    for _ in 1..BATCH {
        match data.try_recv() {
            Ok(msg) => {
                seal_credits(seal, own, credits)?;
                seal(&msg)?;
            }
            Err(_) => break,
        }
    }
    Ok(())
}

/// Seals what credit is owed, in as many messages as it takes.
fn seal_credits(
    seal: &mut impl FnMut(&[u8]) -> Result<(), LinkError>,
    own: &mut BytesMut,
    credits: &Credits,
) -> Result<(), LinkError> {
    loop {
        own.clear();
        let more = credits.take(own);
        if !own.is_empty() {
            seal(own)?;
        }
        if !more {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_ping_ends_the_link_after_the_timeout() {
        let (tx, mut rx) = mpsc::channel(CONTROL_QUEUE);
        let mut live = Liveness::new(tx);
        let t0 = Instant::now();
        live.tick(t0).unwrap();
        assert_eq!(rx.try_recv().unwrap(), PeerFrame::Ping(0));
        // One outstanding at a time.
        live.tick(t0 + PING_EVERY).unwrap();
        assert!(rx.try_recv().is_err());
        // A pong for another token changes nothing; the right one clears it.
        live.pong(7);
        assert!(matches!(
            live.tick(t0 + PONG_TIMEOUT),
            Err(PeerEnd::TimedOut)
        ));
        let mut live = Liveness::new(live.control.clone());
        live.tick(t0).unwrap();
        let Ok(PeerFrame::Ping(token)) = rx.try_recv() else {
            panic!("a ping")
        };
        live.pong(token);
        live.tick(t0 + PONG_TIMEOUT).unwrap();
        assert!(matches!(rx.try_recv(), Ok(PeerFrame::Ping(_))));
    }

    #[test]
    fn a_stuck_writer_counts_as_an_unanswered_ping() {
        let (tx, _rx) = mpsc::channel(1);
        tx.try_send(PeerFrame::Pong(1)).unwrap();
        let mut live = Liveness::new(tx);
        let t0 = Instant::now();
        live.tick(t0).unwrap();
        live.tick(t0 + PONG_TIMEOUT - Duration::from_millis(1))
            .unwrap();
        assert!(matches!(
            live.tick(t0 + PONG_TIMEOUT),
            Err(PeerEnd::TimedOut)
        ));
    }

    #[test]
    fn pings_are_answered_until_the_queue_is_full() {
        let (tx, mut rx) = mpsc::channel(2);
        let mut live = Liveness::new(tx);
        for t in 0..5 {
            live.ping(t);
        }
        assert_eq!(rx.try_recv().unwrap(), PeerFrame::Pong(0));
        assert_eq!(rx.try_recv().unwrap(), PeerFrame::Pong(1));
        assert!(rx.try_recv().is_err());
    }

    /// Credit owed goes before the next queued message, and credit given after a message was
    /// sealed follows it: the writer never holds credit behind data.
    #[test]
    fn credit_is_sealed_ahead_of_queued_messages() {
        use wanmux_core::peer::{Handle, Via};
        let (tx, mut rx) = mpsc::channel(4);
        for m in [b"one".as_slice(), b"two", b"three"] {
            tx.try_send(Bytes::from_static(m)).unwrap();
        }
        let credits = Credits::default();
        credits.give(Handle(1), Via(9), 1000);
        let mut sealed: Vec<Vec<u8>> = Vec::new();
        let mut own = BytesMut::new();
        let first = rx.try_recv().unwrap();
        seal_batch(
            &mut |m: &[u8]| {
                sealed.push(m.to_vec());
                if m == b"two" {
                    // Given while "two" is sealed: it goes before "three", not after it.
                    credits.give(Handle(1), Via(9), 500);
                }
                Ok(())
            },
            first,
            &mut rx,
            &mut own,
            &credits,
        )
        .unwrap();
        let credit = |bytes| {
            let mut b = BytesMut::new();
            PeerFrame::ViaCredit {
                handle: Handle(1),
                via: Via(9),
                bytes,
            }
            .encode(&mut b);
            b.to_vec()
        };
        assert_eq!(
            sealed,
            vec![
                credit(1000),
                b"one".to_vec(),
                b"two".to_vec(),
                credit(500),
                b"three".to_vec()
            ]
        );
    }

    #[test]
    fn cluster_frames_without_a_relay_close_the_link_and_stream_frames_are_malformed() {
        let (tx, _rx) = mpsc::channel(CONTROL_QUEUE);
        let mut live = Liveness::new(tx);
        let mut relayed = PeerState::new(None, 2);
        let mut msg = BytesMut::new();
        PeerFrame::Ping(1).encode(&mut msg);
        PeerFrame::Unbind {
            handle: wanmux_core::peer::Handle(3),
        }
        .encode(&mut msg);
        assert!(matches!(
            handle_message(msg.freeze(), &mut live, &mut relayed),
            Err(PeerEnd::Protocol("relay not supported by this node"))
        ));
        let msg = Bytes::from_static(&[0x10, 0, 0]);
        assert!(matches!(
            handle_message(msg, &mut live, &mut relayed),
            Err(PeerEnd::Malformed(PeerFrameError::NotOnPeerLink(0x10)))
        ));
        let mut msg = BytesMut::new();
        PeerFrame::Close(0).encode(&mut msg);
        assert!(matches!(
            handle_message(msg.freeze(), &mut live, &mut relayed),
            Err(PeerEnd::Closed)
        ));
    }
}
