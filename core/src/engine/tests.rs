//! Engine unit tests: hostile and malformed peer input, and the small state machines. The
//! many-link behaviour is tested by the simulation in `tests/`.

use super::link::KEEPALIVE;
use super::*;
use crate::budget::{Budget, Pool};
use crate::frame::reset;

const NODE: NodeId = NodeId(1);
const LINK: LinkId = LinkId(1);

fn server(max_streams: usize) -> (Session, Instant) {
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

fn msg(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b);
    }
    b.freeze()
}

fn data(stream: StreamId, offset: u64, len: usize, fin: bool) -> Frame {
    Frame::Data {
        stream,
        offset,
        fin,
        data: Bytes::from(vec![0xAB; len]),
    }
}

fn sid(counter: u64) -> StreamId {
    StreamId::new(NODE, counter)
}

#[test]
fn data_beyond_stream_credit_is_a_peer_error() {
    let (mut s, now) = server(10);
    let over = data(sid(0), INITIAL_STREAM_CREDIT - 10, 11, false);
    assert_eq!(
        s.handle_message(now, LINK, msg(&[over])),
        Err(PeerError::CreditExceeded(sid(0)))
    );
    let exact = data(sid(1), INITIAL_STREAM_CREDIT - 10, 10, false);
    assert_eq!(s.handle_message(now, LINK, msg(&[exact])), Ok(()));
}

#[test]
fn data_beyond_session_credit_is_a_peer_error() {
    let (mut s, now) = server(1000);
    let per = INITIAL_STREAM_CREDIT;
    let streams = INITIAL_SESSION_CREDIT / per;
    for i in 0..streams {
        let f = data(sid(i), per - 1000, 1000, false);
        s.handle_message(now, LINK, msg(&[f]))
            .expect("within session credit");
    }
    let f = data(sid(streams), 0, 1, false);
    assert_eq!(
        s.handle_message(now, LINK, msg(&[f])),
        Err(PeerError::SessionCreditExceeded)
    );
}

#[test]
fn offset_overflow_is_a_peer_error_not_a_panic() {
    let (mut s, now) = server(10);
    let f = data(sid(0), u64::MAX - 2, 10, false);
    assert_eq!(
        s.handle_message(now, LINK, msg(&[f])),
        Err(PeerError::Overflow(sid(0)))
    );
}

#[test]
fn final_size_must_not_change() {
    let (mut s, now) = server(10);
    s.handle_message(now, LINK, msg(&[data(sid(0), 0, 10, true)]))
        .unwrap();
    let beyond = data(sid(0), 10, 1, false);
    assert_eq!(
        s.handle_message(now, LINK, msg(&[beyond])),
        Err(PeerError::FinalSize(sid(0)))
    );
    let other_fin = data(sid(0), 0, 5, true);
    assert_eq!(
        s.handle_message(now, LINK, msg(&[other_fin])),
        Err(PeerError::FinalSize(sid(0)))
    );
    // A FIN below bytes already received is a lie too.
    s.handle_message(now, LINK, msg(&[data(sid(1), 100, 10, false)]))
        .unwrap();
    assert_eq!(
        s.handle_message(now, LINK, msg(&[data(sid(1), 0, 5, true)])),
        Err(PeerError::FinalSize(sid(1)))
    );
}

#[test]
fn ack_for_bytes_never_sent_is_a_peer_error() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let id = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(id, Bytes::from_static(b"hello")).unwrap();
    let mut buf = BytesMut::new();
    assert!(c.poll_transmit(now, LINK, &mut buf));
    let ok = Frame::Window {
        stream: id,
        acked: 5,
        max: 1 << 20,
    };
    assert_eq!(c.handle_message(now, LINK, msg(&[ok])), Ok(()));
    let bad = Frame::Window {
        stream: id,
        acked: 6,
        max: 1 << 20,
    };
    assert_eq!(
        c.handle_message(now, LINK, msg(&[bad])),
        Err(PeerError::AckBeyondSent(id))
    );
}

#[test]
fn streams_of_another_owner_and_opens_from_a_server_are_refused() {
    let (mut s, now) = server(10);
    let foreign = StreamId::new(NodeId(2), 0);
    assert_eq!(
        s.handle_message(now, LINK, msg(&[data(foreign, 0, 1, false)])),
        Err(PeerError::NotOwner(foreign))
    );
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let open = Frame::Open {
        stream: sid(0),
        service: "x".into(),
    };
    assert_eq!(
        c.handle_message(now, LINK, msg(&[open])),
        Err(PeerError::UnexpectedOpen)
    );
}

#[test]
fn garbage_and_unknown_links_are_errors() {
    let (mut s, now) = server(10);
    assert!(matches!(
        s.handle_message(now, LINK, Bytes::from_static(&[0x11, 0, 0])),
        Err(PeerError::Frame(_))
    ));
    assert_eq!(
        s.handle_message(now, LinkId(99), msg(&[Frame::Ping(1)])),
        Err(PeerError::UnknownLink)
    );
}

#[test]
fn streams_over_the_limit_are_reset_then_the_peer_is_cut_off() {
    let (mut s, now) = server(2);
    for i in 0..2 {
        let open = Frame::Open {
            stream: sid(i),
            service: "svc".into(),
        };
        s.handle_message(now, LINK, msg(&[open])).unwrap();
    }
    // The third and fourth are refused with a RESET, kept as tombstones.
    for i in 2..4 {
        let open = Frame::Open {
            stream: sid(i),
            service: "svc".into(),
        };
        s.handle_message(now, LINK, msg(&[open])).unwrap();
    }
    let opened: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert_eq!(
        opened.len(),
        2,
        "only streams under the limit are opened: {opened:?}"
    );
    let mut buf = BytesMut::new();
    assert!(s.poll_transmit(now, LINK, &mut buf));
    let mut b = buf.split().freeze();
    let mut resets = 0;
    while let Some(f) = Frame::decode(&mut b).unwrap() {
        if let Frame::Reset { code, .. } = f {
            assert_eq!(code, reset::TOO_MANY_STREAMS);
            resets += 1;
        }
    }
    assert_eq!(resets, 2);
    // Twice the limit in live streams and tombstones: the peer is misbehaving.
    let open = Frame::Open {
        stream: sid(4),
        service: "svc".into(),
    };
    assert_eq!(
        s.handle_message(now, LINK, msg(&[open])),
        Err(PeerError::TooManyStreams)
    );
}

#[test]
fn frames_for_finished_streams_are_dropped_silently() {
    let (mut s, now) = server(10);
    let id = sid(0);
    s.handle_message(
        now,
        LINK,
        msg(&[Frame::Open {
            stream: id,
            service: "svc".into(),
        }]),
    )
    .unwrap();
    s.handle_message(
        now,
        LINK,
        msg(&[Frame::Reset {
            stream: id,
            code: reset::APP,
            final_size: 0,
        }]),
    )
    .unwrap();
    assert_eq!(s.stream_count(), 0);
    // Stale resends after the stream ended: no error, no new stream, no event.
    while s.poll_event().is_some() {}
    s.handle_message(
        now,
        LINK,
        msg(&[
            Frame::Open {
                stream: id,
                service: "svc".into(),
            },
            data(id, 0, 5, true),
        ]),
    )
    .unwrap();
    assert_eq!(s.stream_count(), 0);
    assert_eq!(s.poll_event(), None);
}

#[test]
fn data_before_open_is_buffered_and_delivered_after_it() {
    let (mut s, now) = server(10);
    let id = sid(0);
    s.handle_message(now, LINK, msg(&[data(id, 0, 3, true)]))
        .unwrap();
    assert_eq!(s.poll_event(), None, "no event before OPEN");
    s.handle_message(
        now,
        LINK,
        msg(&[Frame::Open {
            stream: id,
            service: "svc".into(),
        }]),
    )
    .unwrap();
    assert_eq!(
        s.poll_event(),
        Some(Event::StreamOpened {
            stream: id,
            service: "svc".into()
        })
    );
    assert_eq!(
        s.stream_read(id, 100),
        Ok(ReadChunk::Data(Bytes::from(vec![0xAB; 3])))
    );
    assert_eq!(s.stream_read(id, 100), Ok(ReadChunk::Fin));
}

#[test]
fn reset_accounts_session_credit_for_bytes_never_seen() {
    let (mut s, now) = server(1000);
    // A stream that claims 200 KiB sent but only 10 bytes arrived, then resets: the session
    // must count all 200 KiB as used and consumed, or credit would leak away with each reset.
    let id = sid(0);
    s.handle_message(now, LINK, msg(&[data(id, 0, 10, false)]))
        .unwrap();
    s.handle_message(
        now,
        LINK,
        msg(&[Frame::Reset {
            stream: id,
            code: reset::APP,
            final_size: 200 * 1024,
        }]),
    )
    .unwrap();
    assert_eq!(s.recv_session_used, 200 * 1024);
    assert_eq!(s.recv_session_consumed, 200 * 1024);
    // Our own reset goes back with our final size so the peer can do the same.
    let mut buf = BytesMut::new();
    assert!(s.poll_transmit(now, LINK, &mut buf));
    let mut b = buf.split().freeze();
    let mut replied = false;
    while let Some(f) = Frame::decode(&mut b).unwrap() {
        replied |= matches!(f, Frame::Reset { stream, final_size: 0, .. } if stream == id);
    }
    assert!(replied);
}

#[test]
fn write_respects_capacity_and_finish() {
    let now = Instant::now();
    let cfg = Config {
        stream_window: INITIAL_STREAM_CREDIT,
        ..Config::default()
    };
    let mut c = Session::new(Role::Client, cfg);
    c.add_link(now, LINK);
    let id = c.open_stream(NODE, "svc").unwrap();
    let cap = c.stream_send_capacity(id).unwrap();
    assert_eq!(cap as u64, INITIAL_STREAM_CREDIT);
    assert_eq!(
        c.stream_write(id, Bytes::from(vec![0; cap + 1])),
        Err(StreamError::Full)
    );
    c.stream_write(id, Bytes::from(vec![0; cap])).unwrap();
    assert_eq!(c.stream_send_capacity(id), Ok(0));
    c.stream_finish(id).unwrap();
    assert_eq!(
        c.stream_write(id, Bytes::from_static(b"x")),
        Err(StreamError::Finished)
    );
    assert_eq!(
        c.open_stream(NODE, &"x".repeat(256)),
        Err(OpenError::NameTooLong)
    );
}

#[test]
fn pongs_confirm_what_a_link_carried() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let id = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(id, Bytes::from_static(b"abc")).unwrap();
    let mut buf = BytesMut::new();
    assert!(c.poll_transmit(now, LINK, &mut buf));
    let mut b = buf.split().freeze();
    let mut token = None;
    while let Some(f) = Frame::decode(&mut b).unwrap() {
        if let Frame::Ping(t) = f {
            token = Some(t);
        }
    }
    let token = token.expect("a ping rides along with unconfirmed frames");
    assert!(c.link_stats(LINK).unwrap().unconfirmed > 0);
    let later = now + Duration::from_millis(30);
    c.handle_message(later, LINK, msg(&[Frame::Pong(token)]))
        .unwrap();
    let stats = c.link_stats(LINK).unwrap();
    assert_eq!(stats.unconfirmed, 0);
    assert_eq!(stats.rtt.smoothed, Some(Duration::from_millis(30)));
}

#[test]
fn restart_forgets_streams_and_credit_but_keeps_links() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let a = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(a, Bytes::from(vec![1; 1000])).unwrap();
    let mut buf = BytesMut::new();
    assert!(c.poll_transmit(now, LINK, &mut buf));
    while c.poll_event().is_some() {}
    c.restart();
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        events.contains(&Event::StreamReadable(a)) && events.contains(&Event::StreamWritable(a))
    );
    assert_eq!(c.stream_read(a, 10), Err(StreamError::Closed));
    assert_eq!(c.stream_count(), 0);
    assert_eq!(c.send_session_used, 0);
    assert_eq!(c.links().collect::<Vec<_>>(), vec![LINK]);
    assert_eq!(c.link_stats(LINK).unwrap().unconfirmed, 0);
    // New streams get fresh ids and work as before.
    let b = c.open_stream(NODE, "svc").unwrap();
    assert_ne!(a, b);
    assert!(c.poll_transmit(now, LINK, &mut buf));
}

/// The `WINDOW` frames `s` sends on `LINK` now: (stream, acked, max).
fn windows_sent(s: &mut Session, now: Instant) -> Vec<(StreamId, u64, u64)> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    while s.poll_transmit(now, LINK, &mut buf) {
        let mut b = buf.split().freeze();
        while let Some(f) = Frame::decode(&mut b).expect("own frames decode") {
            if let Frame::Window { stream, acked, max } = f {
                out.push((stream, acked, max));
            }
        }
    }
    out
}

/// A peer that always sends up to its credit and an application that reads at once: returns
/// the largest credit ahead of the reader seen, and the budget's peak use.
fn stream_credit_grows(s: &mut Session, now: Instant, id: StreamId, total: u64) -> (u64, u64) {
    let (mut max, mut sent, mut ahead, mut peak) = (INITIAL_STREAM_CREDIT, 0u64, 0u64, 0u64);
    while sent < total {
        let n = (max - sent).min(60_000);
        if n > 0 {
            s.handle_message(now, LINK, msg(&[data(id, sent, n as usize, false)]))
                .expect("within credit");
            sent += n;
        }
        while let Ok(ReadChunk::Data(_)) = s.stream_read(id, usize::MAX) {}
        for (stream, _, m) in windows_sent(s, now) {
            if stream == id {
                max = max.max(m);
            }
        }
        ahead = ahead.max(max - sent);
        peak = peak.max(s.budget().used(Pool::Recv));
        assert!(n > 0 || max > sent, "credit stalled at {sent}");
    }
    (ahead, peak)
}

/// A server session whose streams' windows may grow to `stream_window`, with one link.
fn server_with_window(stream_window: u64) -> (Session, Instant) {
    let now = Instant::now();
    let cfg = Config {
        stream_window,
        ..Config::default()
    };
    let mut s = Session::new(Role::Server(NODE), cfg);
    s.add_link(now, LINK);
    (s, now)
}

#[test]
fn stream_window_autotunes_up_to_the_configured_window() {
    let (mut s, now) = server_with_window(4 << 20);
    // A stream that moves little keeps the initial credit and costs the budget nothing.
    s.handle_message(now, LINK, msg(&[data(sid(0), 0, 100, false)]))
        .unwrap();
    assert!(matches!(
        s.stream_read(sid(0), 1000),
        Ok(ReadChunk::Data(_))
    ));
    assert!(windows_sent(&mut s, now)
        .iter()
        .all(|w| w.2 <= INITIAL_STREAM_CREDIT));
    assert_eq!(s.budget_held(), (0, 0));
    // A bulk stream whose reader keeps up grows to the configured window.
    let (ahead, _) = stream_credit_grows(&mut s, now, sid(1), 32 << 20);
    assert!(ahead > 2 << 20, "window did not grow: {ahead}");
    assert!(ahead <= 4 << 20, "window beyond the configuration: {ahead}");
}

#[test]
fn a_hole_that_holds_back_half_the_window_doubles_it_up_to_the_configured_window() {
    let (mut s, now) = server_with_window(8 << 20);
    let id = sid(0);
    // The first 60 kB are still on a slow link; what follows arrives on a fast one, up to the
    // credit, and the application can read none of it.
    let hole = 60_000u64;
    let (mut max, mut sent) = (INITIAL_STREAM_CREDIT, hole);
    let mut grown_at = Vec::new();
    while sent < max {
        let n = (max - sent).min(60_000);
        s.handle_message(now, LINK, msg(&[data(id, sent, n as usize, false)]))
            .expect("within credit");
        sent += n;
        for (stream, acked, m) in windows_sent(&mut s, now) {
            assert_eq!((stream, acked), (id, 0), "nothing contiguous yet");
            if m > max {
                max = m;
                grown_at.push(sent);
            }
        }
    }
    assert_eq!(
        max,
        8 << 20,
        "credit grows to the configured window, no further"
    );
    // Each doubling waited until half the window lay beyond the hole: 1 MiB of the 2 MiB
    // window, then 2 MiB of 4.
    assert_eq!(grown_at.len(), 2, "{grown_at:?}");
    assert!((1 << 20..(1 << 20) + 60_000).contains(&grown_at[0]));
    assert!((2 << 20..(2 << 20) + 60_000).contains(&grown_at[1]));
    // The hole fills and everything is read, in order.
    s.handle_message(now, LINK, msg(&[data(id, 0, hole as usize, false)]))
        .expect("within credit");
    let mut read = 0;
    while let Ok(ReadChunk::Data(d)) = s.stream_read(id, usize::MAX) {
        read += d.len() as u64;
    }
    assert_eq!(read, sent);
}

/// Gives `s`'s link a smoothed RTT of `rtt`: the keepalive ping goes out after `KEEPALIVE`
/// and its pong comes back `rtt` later. Returns the time after that.
fn with_rtt(s: &mut Session, now: Instant, rtt: Duration) -> Instant {
    let at = now + KEEPALIVE;
    s.handle_timeout(at);
    let ping = sent(s, at, LINK)
        .into_iter()
        .find_map(|f| match f {
            Frame::Ping(token) => Some(token),
            _ => None,
        })
        .expect("an idle link is pinged");
    let back = at + rtt;
    s.handle_message(back, LINK, msg(&[Frame::Pong(ping)]))
        .expect("the pong of our ping");
    back
}

/// The credit a stream of a 16 MiB-window server grants when its application reads the first
/// 600 kB, in 60 kB frames, `after` the stream's first frame, with 100 ms round trips. The
/// grant comes at the first read past a quarter of the window: 540 kB.
fn first_grant_after(after: Duration) -> u64 {
    let (mut s, now) = server_with_window(16 << 20);
    let now = with_rtt(&mut s, now, Duration::from_millis(100));
    let id = sid(0);
    for i in 0..10u64 {
        s.handle_message(now, LINK, msg(&[data(id, i * 60_000, 60_000, false)]))
            .expect("within credit");
    }
    windows_sent(&mut s, now);
    let later = now + after;
    s.handle_timeout(later);
    while let Ok(ReadChunk::Data(_)) = s.stream_read(id, usize::MAX) {}
    windows_sent(&mut s, later)
        .into_iter()
        .map(|(_, _, m)| m)
        .max()
        .expect("a quarter of the window read: a grant")
}

#[test]
fn the_first_quarter_of_the_window_read_within_four_round_trips_doubles_it() {
    // Three round trips: how long a sender in start-up may take to send the first quarter.
    let max = first_grant_after(Duration::from_millis(300));
    assert_eq!(max, 540_000 + 2 * INITIAL_STREAM_CREDIT);
    // Five: a slow stream, which keeps the initial window.
    let max = first_grant_after(Duration::from_millis(500));
    assert_eq!(max, 540_000 + INITIAL_STREAM_CREDIT);
}

#[test]
fn a_frame_cut_at_a_credit_limit_the_peer_had_doubles_the_window_once() {
    let window = 16 << 20;
    let mut s = Stream::new(true);
    assert!(
        !s.widen_when_blocked(INITIAL_STREAM_CREDIT - 1, window),
        "short of the limit"
    );
    assert!(s.widen_when_blocked(INITIAL_STREAM_CREDIT, window));
    assert_eq!(s.recv_window, 2 * INITIAL_STREAM_CREDIT);
    assert!(
        !s.widen_when_blocked(INITIAL_STREAM_CREDIT, window),
        "the same limit again"
    );
    // A grant raised the credit; the peer may not have it yet, so either limit counts once.
    s.recv_max_before = s.recv_max;
    s.recv_max += 3 << 20;
    assert!(!s.widen_when_blocked(INITIAL_STREAM_CREDIT, window));
    assert!(s.widen_when_blocked(s.recv_max, window));
    assert_eq!(s.recv_window, 4 * INITIAL_STREAM_CREDIT);
    // An application that left a quarter of the window unread is what holds the peer back.
    s.recv.insert(0, Bytes::from(vec![0; 2 << 20]));
    s.recv_max_before = s.recv_max;
    s.recv_max += 1 << 20;
    assert!(!s.widen_when_blocked(s.recv_max, window));
    assert_eq!(s.recv_window, 4 * INITIAL_STREAM_CREDIT);
    // Never past the configured window.
    let mut s = Stream::new(true);
    assert!(s.widen_when_blocked(INITIAL_STREAM_CREDIT, 3 << 20));
    assert_eq!(s.recv_window, 3 << 20);
    s.recv_max_before = s.recv_max;
    s.recv_max += 1 << 20;
    assert!(!s.widen_when_blocked(s.recv_max, 3 << 20));
}

#[test]
fn memory_budget_caps_the_credit_granted() {
    let now = Instant::now();
    let cfg = Config {
        stream_window: 4 << 20,
        ..Config::default()
    };
    let budget = Budget::new(2 << 20); // 1 MiB per pool
    let mut s = Session::with_budget(Role::Server(NODE), cfg, budget.clone());
    s.add_link(now, LINK);
    let (ahead, peak) = stream_credit_grows(&mut s, now, sid(0), 16 << 20);
    assert!(peak <= 1 << 20, "receive pool {peak} beyond its cap");
    assert!(ahead <= INITIAL_STREAM_CREDIT + (1 << 20), "credit {ahead}");
    assert!(
        ahead > INITIAL_STREAM_CREDIT,
        "the budget allowed growth: {ahead}"
    );
    // A second session sharing the budget finds it used up: its stream gets the initial credit
    // only, and waits for the budget once it reads a quarter of it (a grant that would double
    // the window).
    let mut t = Session::with_budget(Role::Server(NODE), cfg, budget.clone());
    t.add_link(now, LINK);
    let before = budget.used(Pool::Recv);
    assert!(
        before > (1 << 20) - (1 << 17),
        "budget should be nearly full: {before}"
    );
    for i in 0..10 {
        t.handle_message(now, LINK, msg(&[data(sid(0), i * 60_000, 60_000, false)]))
            .unwrap();
    }
    while let Ok(ReadChunk::Data(_)) = t.stream_read(sid(0), usize::MAX) {}
    // Everything given back when streams end and sessions go away.
    s.stream_reset(sid(0), reset::APP);
    assert_eq!(s.budget_held().0, 0);
    assert!(t.budget_blocked() || t.budget_held().0 > 0);
    t.retry_budget();
    assert!(
        t.budget_held().0 > 0,
        "the waiting stream got the freed budget"
    );
    drop(t);
    drop(s);
    assert_eq!(budget.used(Pool::Recv), 0);
    assert_eq!(budget.used(Pool::Send), 0);
}

#[test]
fn memory_budget_bounds_send_buffers_and_wakes_writers() {
    let now = Instant::now();
    let budget = Budget::new(2 << 20); // 1 MiB per pool
    let mut c = Session::with_budget(Role::Client, Config::default(), budget.clone());
    c.add_link(now, LINK);
    let a = c.open_stream(NODE, "svc").unwrap();
    let b = c.open_stream(NODE, "svc").unwrap();
    let cap = c.stream_send_capacity(a).unwrap();
    assert_eq!(cap, 1 << 20, "capacity limited by the send pool");
    c.stream_write(a, Bytes::from(vec![1u8; cap])).unwrap();
    assert_eq!(
        c.stream_send_capacity(b),
        Ok(0),
        "pool used up by the other stream"
    );
    assert!(c.budget_blocked());
    // Send it all (the initial credit covers it); the peer acks a quarter: the pool frees that
    // much and `b` is woken.
    let mut buf = BytesMut::new();
    while c.poll_transmit(now, LINK, &mut buf) {}
    let acked = cap as u64 / 4;
    c.handle_message(
        now,
        LINK,
        msg(&[Frame::Window {
            stream: a,
            acked,
            max: 4 << 20,
        }]),
    )
    .unwrap();
    assert_eq!(budget.used(Pool::Send), (1 << 20) - acked);
    c.retry_budget();
    let mut woken = false;
    while let Some(ev) = c.poll_event() {
        woken |= ev == Event::StreamWritable(b);
    }
    assert!(woken, "the blocked writer was not woken");
    assert_eq!(c.stream_send_capacity(b), Ok(acked as usize));
    c.stream_reset(a, reset::APP);
    assert_eq!(budget.used(Pool::Send), 0);
}

/// The data frames `s` sends on `link` in one message: (stream, offset, len).
/// Every frame of one message `link` would send now.
fn sent(s: &mut Session, now: Instant, link: LinkId) -> Vec<Frame> {
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

fn data_sent(s: &mut Session, now: Instant, link: LinkId) -> Vec<(StreamId, u64, usize)> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    if s.poll_transmit(now, link, &mut buf) {
        let mut b = buf.freeze();
        while let Some(f) = Frame::decode(&mut b).expect("own frames decode") {
            if let Frame::Data {
                stream,
                offset,
                data,
                ..
            } = f
            {
                out.push((stream, offset, data.len()));
            }
        }
    }
    out
}

/// A client with links 1 to 4, enough for two interactive lanes.
fn client_with_four_links() -> (Session, Vec<LinkId>, Instant) {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let links: Vec<LinkId> = (1..=4).map(LinkId).collect();
    for &l in &links {
        c.add_link(now, l);
    }
    (c, links, now)
}

/// A client with links 1 and 2 for bulk data and 3 and 4 as dedicated lanes (not the lowest
/// ids), and a stream with 400 KB to send.
fn client_with_two_lanes_and_bulk() -> (Session, Vec<LinkId>, Instant, StreamId) {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let links: Vec<LinkId> = (1..=4).map(LinkId).collect();
    c.add_link(now, links[0]);
    c.add_link(now, links[1]);
    c.add_lane(now, links[2]);
    c.add_lane(now, links[3]);
    let bulk = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(bulk, Bytes::from(vec![1u8; 400_000]))
        .unwrap();
    (c, links, now, bulk)
}

#[test]
fn a_dedicated_lane_that_looks_stalled_sends_the_other_lanes_duplicates_and_no_bulk_data() {
    let (mut c, links, now, _) = client_with_two_lanes_and_bulk();
    let game = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    // Every link sends and pings (lane 4 first, so it carries the game's segment and lane 3
    // the copy); the peer answers on all but lane 4, whose pong waits (in a real link: behind
    // a lost packet of what it receives).
    for l in [links[0], links[1], links[3], links[2]] {
        let frames = sent(&mut c, now, l);
        assert!(
            frames.iter().any(|f| matches!(f, Frame::Data { .. })),
            "{frames:?}"
        );
        for f in frames {
            if let (Frame::Ping(token), true) = (f, l != links[3]) {
                let at = now + Duration::from_millis(10);
                c.handle_message(at, l, msg(&[Frame::Pong(token)])).unwrap();
            }
        }
    }
    let later = now + Duration::from_millis(2500);
    // Lane 4 now looks stalled: it takes no bulk data (before, it was "not a lane" then).
    let d = data_sent(&mut c, later, links[3]);
    assert!(d.is_empty(), "{d:?}");
    // The game's next segment goes on lane 3 and again on lane 4.
    c.stream_write(game, Bytes::from(vec![3u8; 100])).unwrap();
    for &lane in &links[2..] {
        let d = data_sent(&mut c, later, lane);
        assert_eq!(d, vec![(game, 100, 100)], "lane {lane}");
    }
    // No more: lane 4 carries only duplicates.
    let d = data_sent(&mut c, later, links[3]);
    assert!(d.is_empty(), "{d:?}");
}

#[test]
fn small_interactive_frames_get_lanes_free_of_bulk_and_go_twice() {
    let (mut c, links, now) = client_with_four_links();
    let bulk = c.open_stream(NODE, "svc").unwrap();
    let game = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(bulk, Bytes::from(vec![1u8; 200_000]))
        .unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    // The new streams' OPENs and a small write switch the lanes on before anything goes out:
    // links 1 and 2 are lanes, the others carry bulk data only (no OPEN: it goes on a lane).
    let first = sent(&mut c, now, links[3]);
    assert!(first
        .iter()
        .any(|f| matches!(f, Frame::Data { stream, .. } if *stream == bulk)));
    assert!(first.iter().all(|f| match f {
        Frame::Data { stream, .. } => *stream == bulk,
        f => matches!(
            f,
            Frame::Ping(_) | Frame::Window { .. } | Frame::SessionWindow { .. }
        ),
    }));
    assert_eq!(data_sent(&mut c, now, links[0]), vec![(game, 0, 100)]);
    assert_eq!(data_sent(&mut c, now, links[1]), vec![(game, 0, 100)]);
    // The next small write goes on a lane only, and again on the other lane; the other links
    // carry bulk only.
    c.stream_write(game, Bytes::from(vec![3u8; 100])).unwrap();
    let other = data_sent(&mut c, now, links[2]);
    assert!(
        !other.is_empty() && other.iter().all(|d| d.0 == bulk),
        "{other:?}"
    );
    assert_eq!(data_sent(&mut c, now, links[0]), vec![(game, 100, 100)]);
    assert_eq!(data_sent(&mut c, now, links[1]), vec![(game, 100, 100)]);
    assert!(!c.has_work_for(links[0]) && !c.has_work_for(links[1]));
    assert!(
        c.has_work_for(links[3]),
        "bulk data waits for the bulk links"
    );
    // Once the traffic stops, the lanes carry bulk again.
    let later = now + Duration::from_secs(3);
    let lane = data_sent(&mut c, later, links[0]);
    assert!(lane.iter().any(|d| d.0 == bulk), "{lane:?}");
}

/// A client with two links that has sent 10,000 bytes of one stream on `LINK`, unconfirmed.
fn ten_kb_out_on_link_one() -> (Session, StreamId, Instant) {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    c.add_link(now, LinkId(2));
    let id = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(id, Bytes::from(vec![7u8; 10_000])).unwrap();
    assert_eq!(data_sent(&mut c, now, LINK), vec![(id, 0, 10_000)]);
    assert_eq!(c.resent_bytes(), 0);
    (c, id, now)
}

#[test]
fn a_dead_links_unconfirmed_data_counts_as_resent() {
    let (mut c, id, now) = ten_kb_out_on_link_one();
    c.remove_link(now, LINK);
    assert_eq!(c.resent_bytes(), 10_000);
    assert_eq!(data_sent(&mut c, now, LinkId(2)), vec![(id, 0, 10_000)]);
}

#[test]
fn a_stalled_links_unconfirmed_data_goes_out_again_on_another_link() {
    let (mut c, id, now) = ten_kb_out_on_link_one();
    // Link 1's ping goes unanswered past the stall threshold (2 s before any RTT sample) but
    // not yet the ping timeout (5 s); link 2 sent nothing, so it has no ping outstanding.
    let later = now + Duration::from_millis(2100);
    c.handle_timeout(later);
    assert_eq!(c.resent_bytes(), 10_000);
    assert!(c.links().any(|l| l == LINK), "a stalled link is kept");
    assert_eq!(data_sent(&mut c, later, LinkId(2)), vec![(id, 0, 10_000)]);
    // Rescued once, not again at every timer.
    c.handle_timeout(later + Duration::from_millis(100));
    assert_eq!(c.resent_bytes(), 10_000);
}

#[test]
fn a_small_header_that_turns_into_bulk_does_not_hold_the_lanes() {
    let (mut c, links, now) = client_with_four_links();
    let id = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(id, Bytes::from(vec![1u8; 16])).unwrap();
    // The OPEN and the small header (a request, or a bulk transfer's header) take a lane.
    assert_eq!(data_sent(&mut c, now, links[0]), vec![(id, 0, 16)]);
    // The stream turns bulk: it no longer holds the lanes, so every link carries it at once.
    c.stream_write(id, Bytes::from(vec![2u8; 200_000])).unwrap();
    for &l in &links {
        assert!(
            data_sent(&mut c, now, l).iter().any(|d| d.0 == id),
            "{l:?} carries no bulk"
        );
    }
}

#[test]
fn dedicated_lanes_never_carry_bulk_data_while_another_link_can() {
    let (mut c, links, now, bulk) = client_with_two_lanes_and_bulk();
    // Once the stream's OPEN is out nothing would reserve lanes among ordinary links (no
    // interactive data, no OPEN waiting), but the dedicated lanes still take no bulk data.
    // (Within a second: the pings of this one-sided session go unanswered, and after two
    // seconds every link counts as stalled.)
    for t in [now, now + Duration::from_secs(1)] {
        for &lane in &links[2..] {
            let d = data_sent(&mut c, t, lane);
            assert!(d.is_empty(), "{d:?}");
        }
        let d = data_sent(&mut c, t, links[0]);
        assert!(!d.is_empty() && d.iter().all(|d| d.0 == bulk), "{d:?}");
    }
    // A new stream's OPEN and its small first write go on both lanes.
    let later = now + Duration::from_secs(1);
    let game = c.open_stream(NODE, "svc").unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    for &lane in &links[2..] {
        let frames = sent(&mut c, later, lane);
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, Frame::Open { stream, .. } if *stream == game)),
            "{frames:?}"
        );
        let data: Vec<_> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Data {
                    stream,
                    offset,
                    data,
                    ..
                } => Some((*stream, *offset, data.len())),
                _ => None,
            })
            .collect();
        assert_eq!(data, vec![(game, 0, 100)]);
    }
    // Without a bulk link the lanes are ordinary links again (one of the two is an on-demand
    // lane while the game is active), rather than leave the bulk data nowhere to go.
    c.remove_link(later, links[0]);
    c.remove_link(later, links[1]);
    let mut d = data_sent(&mut c, later, links[2]);
    d.extend(data_sent(&mut c, later, links[3]));
    assert!(d.iter().any(|d| d.0 == bulk), "{d:?}");
}

/// A node with dedicated lanes 1 and 2 and bulk links 3 and 4, and the `OPEN` of the client's
/// first stream (not yet handled).
fn node_with_two_lanes_and_bulk() -> (Session, [LinkId; 4], Instant, StreamId, Frame) {
    let now = Instant::now();
    let mut s = Session::new(Role::Server(NODE), Config::default());
    let links = [LinkId(1), LinkId(2), LinkId(3), LinkId(4)];
    s.add_lane(now, links[0]);
    s.add_lane(now, links[1]);
    s.add_link(now, links[2]);
    s.add_link(now, links[3]);
    let id = sid(0);
    let open = Frame::Open {
        stream: id,
        service: "svc".into(),
    };
    (s, links, now, id, open)
}

#[test]
fn a_node_sends_a_small_reply_on_both_dedicated_lanes() {
    let (mut s, [lane_a, lane_b, bulk_a, bulk_b], now, id, open) = node_with_two_lanes_and_bulk();
    s.handle_message(now, lane_a, msg(&[open, data(id, 0, 64, false)]))
        .unwrap();
    while s.poll_event().is_some() {}
    assert!(matches!(s.stream_read(id, 100), Ok(ReadChunk::Data(_))));
    // The service answers with 64 bytes: a round trip's reply.
    s.stream_write(id, Bytes::from(vec![7u8; 64])).unwrap();
    let carried = |s: &mut Session, link| {
        data_sent(s, now, link)
            .iter()
            .any(|&(stream, offset, len)| (stream, offset, len) == (id, 0, 64))
    };
    let first = carried(&mut s, lane_a);
    let second = carried(&mut s, lane_b);
    assert!(first && second, "on both lanes: {first} {second}");
    assert!(!carried(&mut s, bulk_a) && !carried(&mut s, bulk_b));
}

#[test]
fn window_updates_stay_off_the_lanes_while_another_link_can_take_them() {
    let (mut s, [lane_a, lane_b, bulk_a, bulk_b], now, id, open) = node_with_two_lanes_and_bulk();
    s.handle_message(now, bulk_a, msg(&[open])).unwrap();
    // An upload arrives on the bulk links and the service reads it: credit is due.
    let mut offset = 0;
    let mut upload = |s: &mut Session, at: Instant, link| {
        for _ in 0..20 {
            s.handle_message(at, link, msg(&[data(id, offset, 60_000, false)]))
                .unwrap();
            offset += 60_000;
        }
        while let Ok(ReadChunk::Data(_)) = s.stream_read(id, usize::MAX) {}
    };
    let windows = |frames: &[Frame]| {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Window { .. } | Frame::SessionWindow { .. }))
            .count()
    };
    upload(&mut s, now, bulk_a);
    assert!(!s.has_work_for(lane_a) && !s.has_work_for(lane_b));
    // Every link sends once (and pings); the peer answers the lanes' pings only.
    let mut on_lanes = 0;
    let mut on_bulk = 0;
    for link in [lane_a, lane_b, bulk_a, bulk_b] {
        let frames = sent(&mut s, now, link);
        let n = windows(&frames);
        if link == lane_a || link == lane_b {
            on_lanes += n;
            for f in frames {
                if let Frame::Ping(token) = f {
                    let at = now + Duration::from_millis(10);
                    s.handle_message(at, link, msg(&[Frame::Pong(token)]))
                        .unwrap();
                }
            }
        } else {
            on_bulk += n;
        }
    }
    assert_eq!(on_lanes, 0, "window updates went on a lane");
    assert!(on_bulk > 0, "no window update was sent");
    // Once no other link can (one closed, the other's pong overdue), the lanes carry them.
    s.remove_link(now, bulk_b);
    let later = now + Duration::from_millis(2500);
    upload(&mut s, later, lane_a);
    assert!(s.has_work_for(lane_a));
    assert!(windows(&sent(&mut s, later, lane_a)) > 0);
}
