//! Engine unit tests: hostile and malformed peer input, and the small state machines. The
//! many-link behaviour is tested by the simulation in `tests/`.

mod lanes;
mod peer;
mod windows;

use super::link::KEEPALIVE;
use super::*;
use crate::budget::{Budget, Pool};
use crate::frame::reset;
use bytes::{Bytes, BytesMut};

pub(super) const NODE: NodeId = NodeId(1);
pub(super) const LINK: LinkId = LinkId(1);

pub(super) fn server(max_streams: usize) -> (Session, Instant) {
    let now = Instant::now();
    let cfg = Config {
        stream_window: INITIAL_STREAM_CREDIT,
        session_window: INITIAL_SESSION_CREDIT,
        max_streams,
    };
    let mut s = Session::new(Role::Server(NODE), cfg);
    s.add_link(now, LINK);
    (s, now)
}

pub(super) fn msg(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b);
    }
    b.freeze()
}

pub(super) fn data(stream: StreamId, offset: u64, len: usize, fin: bool) -> Frame {
    Frame::Data {
        stream,
        offset,
        fin,
        data: Bytes::from(vec![0xAB; len]),
    }
}

pub(super) fn sid(counter: u64) -> StreamId {
    StreamId::new(NODE, counter)
}

/// Every frame of one message `link` would send now.
pub(super) fn sent(s: &mut Session, now: Instant, link: LinkId) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    if s.poll_transmit(now, link, &mut buf) {
        let mut b = buf.freeze();
        while let Some(f) = Frame::decode(&mut b).expect("own frames decode") {
            out.push(f);
        }
    }
    out
}

/// The `WINDOW` frames among `frames`: (stream, acked, max).
pub(super) fn windows_of(frames: &[Frame]) -> Vec<(StreamId, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match *f {
            Frame::Window { stream, acked, max } => Some((stream, acked, max)),
            _ => None,
        })
        .collect()
}

/// The token of the `PING` in the message `link` would send now, if it carries one.
pub(super) fn sent_ping(s: &mut Session, now: Instant, link: LinkId) -> Option<u64> {
    sent(s, now, link).into_iter().find_map(|f| match f {
        Frame::Ping(t) => Some(t),
        _ => None,
    })
}

/// A link whose writer cannot write (a QUIC connection to a vanished peer with its congestion
/// window full, or a sub-link whose carrier is stuck so) never sends the ping that comes due:
/// the dead timer runs from when it came due, so the link dies as one whose ping went unanswered
/// does (a cluster benchmark saw such links live on for QUIC's 30 s idle timeout, and a
/// connection striped through the dead node stall as long).
#[test]
fn a_link_that_cannot_send_its_due_ping_dies() {
    use super::link::{DEAD_INITIAL, KEEPALIVE};
    let (mut s, t0) = server(16);
    let due = t0 + KEEPALIVE;
    s.handle_timeout(due);
    assert!(s.poll_timeout().is_some_and(|t| t <= due + DEAD_INITIAL));
    s.handle_timeout(due + DEAD_INITIAL - Duration::from_millis(1));
    assert!(
        std::iter::from_fn(|| s.poll_event()).all(|e| !matches!(e, Event::LinkTimedOut(_))),
        "dead too early"
    );
    s.handle_timeout(due + DEAD_INITIAL);
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::LinkTimedOut(l) if *l == LINK)),
        "{events:?}"
    );

    // The same link able to write sends the ping, and the pong keeps it alive.
    let (mut s, t0) = server(16);
    let due = t0 + KEEPALIVE;
    s.handle_timeout(due);
    let token = sent_ping(&mut s, due, LINK).expect("the due ping goes out");
    s.handle_message(
        due + Duration::from_millis(40),
        LINK,
        msg(&[Frame::Pong(token)]),
    )
    .expect("pong");
    s.handle_timeout(due + DEAD_INITIAL * 2);
    assert!(std::iter::from_fn(|| s.poll_event()).all(|e| !matches!(e, Event::LinkTimedOut(_))));
}

/// A probed idle link sends a ping with its next message instead of at its keepalive 10 s
/// later: answered, it counts as answered since the probe; unanswered, it is dead within the
/// dead timer of the probe (a client probes the link its dead sub-link rode).
#[test]
fn a_probed_link_pings_at_once_and_is_answered_or_dead_within_the_dead_timer() {
    use super::link::DEAD_INITIAL;
    let (mut s, t0) = server(16);
    let at = t0 + Duration::from_millis(100);
    assert_eq!(s.link_answered_since(LINK, at), Some(false));
    assert!(
        sent_ping(&mut s, at, LINK).is_none(),
        "an idle link has nothing to send before its keepalive"
    );
    s.probe_link(at, LINK);
    let token = sent_ping(&mut s, at, LINK).expect("the probe's ping goes out at once");
    s.handle_message(
        at + Duration::from_millis(30),
        LINK,
        msg(&[Frame::Pong(token)]),
    )
    .expect("pong");
    assert_eq!(s.link_answered_since(LINK, at), Some(true));
    assert_eq!(
        s.link_answered_since(LINK, at + Duration::from_millis(31)),
        Some(false)
    );

    // Unanswered: dead at the probe's dead timer, long before keepalive + dead timer.
    let (mut s, t0) = server(16);
    let at = t0 + Duration::from_millis(100);
    s.probe_link(at, LINK);
    assert!(sent_ping(&mut s, at, LINK).is_some());
    s.handle_timeout(at + DEAD_INITIAL);
    assert!(
        std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, Event::LinkTimedOut(l) if l == LINK)),
        "the probed link died"
    );
    assert_eq!(s.link_answered_since(LINK, at), None);
}

/// A link that times out makes every other link of the session ping with its next message: an
/// idle sibling on the same dead path is found within its own dead timer instead of at its
/// keepalive 10 s later (a blackhole test saw one idle link outlive the others by seconds).
#[test]
fn a_dead_link_makes_its_idle_siblings_ping_at_once() {
    use super::link::DEAD_INITIAL;
    const OTHER: LinkId = LinkId(2);
    let (mut s, t0) = server(16);
    s.add_link(t0, OTHER);
    let at = t0 + Duration::from_millis(100);
    s.probe_link(at, LINK);
    assert!(sent_ping(&mut s, at, LINK).is_some());
    assert!(
        sent_ping(&mut s, at, OTHER).is_none(),
        "an idle link has nothing to send before its keepalive"
    );
    let died = at + DEAD_INITIAL;
    s.handle_timeout(died);
    assert!(std::iter::from_fn(|| s.poll_event())
        .any(|e| matches!(e, Event::LinkTimedOut(l) if l == LINK)));
    assert!(
        sent_ping(&mut s, died, OTHER).is_some(),
        "the sibling pings at once"
    );
    s.handle_timeout(died + DEAD_INITIAL);
    assert!(
        std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, Event::LinkTimedOut(l) if l == OTHER)),
        "the unanswered sibling is dead one dead timer later"
    );
}

/// Carries the messages `a` and `b` send each other on `LINK` until neither has anything to
/// send, `ACK_DELAY` apart (so delayed acks go too).
fn exchange(a: &mut Session, b: &mut Session, mut now: Instant) -> Instant {
    for _ in 0..100 {
        let quiet = !carry(a, b, now) & !carry(b, a, now);
        now += ACK_DELAY * 2;
        a.handle_timeout(now);
        b.handle_timeout(now);
        if quiet {
            return now;
        }
    }
    panic!("the two ends kept talking");
}

/// Carries what `from` would send on `LINK` now to `to`; whether there was anything.
fn carry(from: &mut Session, to: &mut Session, now: Instant) -> bool {
    let mut buf = BytesMut::new();
    let mut any = false;
    while from.poll_transmit(now, LINK, &mut buf) {
        any = true;
        to.handle_message(now, LINK, buf.split().freeze())
            .expect("own frames are valid");
    }
    any
}

/// An application that sent its data and FIN, then went away without reading the reply (its
/// socket reset when the reply came): the client resets a stream both of whose directions have
/// ended, which the node may have forgotten already (it had everything and its FIN was acked).
/// The node takes a `RESET` for a forgotten stream as stale and does not answer it; the client's
/// stream must end anyway, not wait for that answer for ever (a trial saw such streams pile up,
/// and every drain wait its whole timeout for them).
#[test]
fn a_stream_reset_after_both_fins_ends_at_both_ends() {
    let (mut node, t0) = server(16);
    let mut client = Session::new(Role::Client, Config::default());
    client.add_link(t0, LINK);
    let id = client.open_stream(t0, NODE, "echo").expect("open");
    client
        .stream_write(id, Bytes::from(vec![7u8; 1000]))
        .expect("write");
    client.stream_finish(id).expect("finish");
    let now = exchange(&mut client, &mut node, t0);
    // The node reads it all and answers with data and its FIN.
    while let Ok(ReadChunk::Data(_)) = node.stream_read(now, id, usize::MAX) {}
    assert!(matches!(
        node.stream_read(now, id, usize::MAX),
        Ok(ReadChunk::Fin)
    ));
    node.stream_write(id, Bytes::from(vec![8u8; 1000]))
        .expect("node writes");
    node.stream_finish(id).expect("node finishes");
    let now = exchange(&mut client, &mut node, now);
    assert_eq!(node.stream_count(), 0, "the node forgot the stream");
    // The client's application never reads the reply: its task resets the stream.
    client.stream_reset(id, reset::APP);
    let now = exchange(&mut client, &mut node, now);
    assert_eq!(client.stream_count(), 0, "the client's stream ended too");
    assert_eq!(node.stream_count(), 0);
    // Its unread bytes were given back to the session window: a new stream moves as much.
    let id2 = client.open_stream(now, NODE, "echo").expect("open");
    let room = client.stream_send_capacity(id2).expect("capacity");
    assert!(room > 0);
}

/// A draining node serves the streams a client opened before it could have heard `DRAINING`:
/// those whose `OPEN` arrives within twice the slowest link's RTT (and its variation) of the
/// drain's start; later ones are refused. A trial's cluster reset the connections a client
/// opened in the round trip after a node started draining, though the other node was up.
#[test]
fn a_drain_serves_what_was_opened_before_the_client_could_hear_it() {
    let (mut s, t0) = server(16);
    assert!(s.opened_before_drain_heard(t0), "not draining");
    // No RTT sample yet: RFC 9002's first RTT.
    assert_eq!(
        s.drain_grace(),
        DRAIN_GRACE_FIRST_RTT * 2 + DRAIN_GRACE_MARGIN
    );
    // One sample of 100 ms: the link's ping answered 100 ms after it went.
    let due = t0 + KEEPALIVE;
    s.handle_timeout(due);
    let token = sent_ping(&mut s, due, LINK).expect("the due ping goes out");
    let now = due + Duration::from_millis(100);
    s.handle_message(now, LINK, msg(&[Frame::Pong(token)]))
        .expect("pong");
    let grace = s.drain_grace();
    assert!(
        grace >= Duration::from_millis(200) + DRAIN_GRACE_MARGIN && grace < MAX_DRAIN_GRACE,
        "{grace:?}"
    );
    s.start_draining(now);
    assert!(sent(&mut s, now, LINK).contains(&Frame::Draining));
    assert!(s.opened_before_drain_heard(now + grace - Duration::from_millis(1)));
    assert!(!s.opened_before_drain_heard(now + grace));
    // A second start does not move the first.
    s.start_draining(now + grace);
    assert!(!s.opened_before_drain_heard(now + grace));
}
