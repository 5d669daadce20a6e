//! Stream windows: autotuning, holes, credit limits and the memory budget.

use super::*;

/// The `WINDOW` frames `s` sends on `LINK` now: (stream, acked, max).
fn windows_sent(s: &mut Session, now: Instant) -> Vec<(StreamId, u64, u64)> {
    let mut out = Vec::new();
    loop {
        let frames = sent(s, now, LINK);
        if frames.is_empty() {
            return out;
        }
        out.extend(windows_of(&frames));
    }
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
        while let Ok(ReadChunk::Data(_)) = s.stream_read(now, id, usize::MAX) {}
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
        s.stream_read(now, sid(0), 1000),
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
    // Opened (a stream still waiting for its OPEN may hold only `PENDING_MEMORY`).
    let open = Frame::Open {
        stream: id,
        service: "svc".into(),
        pin: false,
    };
    s.handle_message(now, LINK, msg(&[open])).unwrap();
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
    while let Ok(ReadChunk::Data(d)) = s.stream_read(now, id, usize::MAX) {
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
    while let Ok(ReadChunk::Data(_)) = s.stream_read(later, id, usize::MAX) {}
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
    let mut s = Stream::new(Instant::now(), stream::Phase::Open);
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
    let mut s = Stream::new(Instant::now(), stream::Phase::Open);
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
    // Opened: the data the protocol lets the client send before any grant is taken (counted
    // whatever the budget's state); a stream without its `OPEN` would be refused instead.
    let open = Frame::Open {
        stream: sid(0),
        service: "svc".into(),
        pin: false,
    };
    t.handle_message(now, LINK, msg(&[open])).unwrap();
    for i in 0..10 {
        t.handle_message(now, LINK, msg(&[data(sid(0), i * 60_000, 60_000, false)]))
            .unwrap();
    }
    while let Ok(ReadChunk::Data(_)) = t.stream_read(now, sid(0), usize::MAX) {}
    // Everything given back when streams end and sessions go away.
    s.stream_reset(sid(0), reset::APP);
    assert_eq!(s.budget_held().0, 0);
    assert!(t.budget_blocked() || t.budget_held().0 > 0);
    t.retry_budget(now);
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
    let a = c.open_stream(now, NODE, "svc").unwrap();
    let b = c.open_stream(now, NODE, "svc").unwrap();
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
    c.retry_budget(now);
    let mut woken = false;
    while let Some(ev) = c.poll_event() {
        woken |= ev == Event::StreamWritable(b);
    }
    assert!(woken, "the blocked writer was not woken");
    assert_eq!(c.stream_send_capacity(b), Ok(acked as usize));
    c.stream_reset(a, reset::APP);
    assert_eq!(budget.used(Pool::Send), 0);
}

#[test]
fn data_before_open_must_fit_the_budget_and_expires() {
    let now = Instant::now();
    let budget = Budget::new(2 << 20); // 1 MiB per pool
    let mut s = Session::with_budget(Role::Server(NODE), Config::default(), budget.clone());
    s.add_link(now, LINK);
    // Counted as it arrives: bytes, and the overhead of each segment.
    for i in 0..10 {
        s.handle_message(now, LINK, msg(&[data(sid(0), i * 60_000, 60_000, false)]))
            .unwrap();
    }
    let used = budget.used(Pool::Recv);
    assert!(used >= 600_000, "pending data not counted: {used}");
    // A second pending stream whose data does not fit is refused (code 5) and holds nothing.
    for i in 0..10 {
        s.handle_message(now, LINK, msg(&[data(sid(1), i * 60_000, 60_000, false)]))
            .unwrap();
    }
    assert_eq!(budget.used(Pool::Recv), used);
    let resets: Vec<Frame> = sent(&mut s, now, LINK)
        .into_iter()
        .filter(|f| matches!(f, Frame::Reset { .. }))
        .collect();
    assert_eq!(
        resets,
        vec![Frame::Reset {
            stream: sid(1),
            code: reset::NO_MEMORY,
            final_size: 0
        }]
    );
    // The first never gets its OPEN: it expires, and gives its memory back.
    let due = s.poll_timeout().expect("a pending stream expires");
    assert!(due <= now + PENDING_LIFETIME);
    s.handle_timeout(now + PENDING_LIFETIME);
    assert_eq!(budget.used(Pool::Recv), 0);
    // (The link is dead by then, its pings unanswered: the RESETs wait for another.)
    let resets: Vec<(StreamId, u16)> = s
        .control
        .iter()
        .filter_map(|f| match *f {
            Frame::Reset { stream, code, .. } => Some((stream, code)),
            _ => None,
        })
        .collect();
    assert!(resets.contains(&(sid(0), reset::NO_OPEN)), "{resets:?}");
}

#[test]
fn pending_streams_are_capped() {
    let (mut s, now) = server(100_000);
    for i in 0..MAX_PENDING_STREAMS as u64 + 10 {
        s.handle_message(now, LINK, msg(&[data(sid(i), 0, 1, false)]))
            .unwrap();
    }
    assert_eq!(s.pending, MAX_PENDING_STREAMS);
    // Their OPENs arrive: they leave the pending state and make room.
    for i in 0..10 {
        let open = Frame::Open {
            stream: sid(i),
            service: "svc".into(),
            pin: false,
        };
        s.handle_message(now, LINK, msg(&[open])).unwrap();
    }
    assert_eq!(s.pending, MAX_PENDING_STREAMS - 10);
}

#[test]
fn fragments_beyond_the_limit_reset_the_stream_and_free_it() {
    let budget = Budget::unlimited();
    let now = Instant::now();
    let mut s = Session::with_budget(Role::Server(NODE), Config::default(), budget.clone());
    s.add_link(now, LINK);
    let open = Frame::Open {
        stream: sid(0),
        service: "svc".into(),
        pin: false,
    };
    s.handle_message(now, LINK, msg(&[open])).unwrap();
    // One-byte segments at odd offsets: each a segment of its own, each counted.
    for i in 0..1024u64 {
        s.handle_message(now, LINK, msg(&[data(sid(0), 1 + 2 * i, 1, false)]))
            .unwrap();
    }
    let used = budget.used(Pool::Recv);
    assert!(used >= 1024 * (reorder::SEGMENT_COST + 1), "{used}");
    s.handle_message(now, LINK, msg(&[data(sid(0), 1 + 2 * 1024, 1, false)]))
        .unwrap();
    assert_eq!(
        budget.used(Pool::Recv),
        0,
        "the refused stream holds nothing"
    );
    assert_eq!(s.recv_segments, 0);
    assert_eq!(s.stream_read(now, sid(0), 10), Err(StreamError::Closed));
}

#[test]
fn one_session_holds_at_most_its_share_of_data_before_open() {
    let budget = Budget::unlimited();
    let now = Instant::now();
    let mut s = Session::with_budget(Role::Server(NODE), Config::default(), budget.clone());
    s.add_link(now, LINK);
    let mib = |s: &mut Session, id: StreamId| {
        for i in 0..32 {
            let f = data(id, i * 32_768, 32_768, false);
            s.handle_message(now, LINK, msg(&[f])).unwrap();
        }
    };
    for i in 0..10 {
        mib(&mut s, sid(i));
        assert!(s.pending_charged <= PENDING_MEMORY);
        assert_eq!(s.pending_charged, budget.used(Pool::Recv));
    }
    // Seven fit with their overhead; the rest were refused, holding nothing.
    assert_eq!(s.pending, 7);
    let refused = s
        .control
        .iter()
        .filter(|f| {
            matches!(
                f,
                Frame::Reset {
                    code: reset::NO_MEMORY,
                    ..
                }
            )
        })
        .count();
    assert_eq!(refused, 3);
    // An OPEN moves a stream out of the share (it is charged all the same), making room.
    let open = Frame::Open {
        stream: sid(0),
        service: "svc".into(),
        pin: false,
    };
    s.handle_message(now, LINK, msg(&[open])).unwrap();
    mib(&mut s, sid(20));
    assert_eq!(s.pending, 7);
    assert!(s.streams.get(&sid(20)).is_some_and(|st| !st.is_reset()));
}

#[test]
fn a_stream_holds_at_most_its_unsent_bound_and_is_woken_when_the_links_took_half() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let a = c.open_stream(now, NODE, "svc").unwrap();
    let most = UNSENT_MIN as usize;
    assert!(Config::default().stream_window > UNSENT_MAX);
    assert_eq!(
        c.stream_send_capacity(a),
        Ok(most),
        "bounded by what waits for a link, not by the window"
    );
    c.stream_write(a, Bytes::from(vec![1u8; most])).unwrap();
    assert_eq!(c.stream_send_capacity(a), Ok(0));
    c.handle_message(
        now,
        LINK,
        msg(&[Frame::Window {
            stream: a,
            acked: 0,
            max: 64 << 20,
        }]),
    )
    .unwrap();
    // The link takes one message at a time: the writer is woken with the message that leaves
    // at most half of the bound unsent, not before (no pong yet: the bound is UNSENT_MIN).
    let (mut taken, mut buf) = (0usize, BytesMut::new());
    let mut woken_after = None;
    while c.poll_transmit(now, LINK, &mut buf) {
        let mut b = buf.split().freeze();
        while let Some(f) = Frame::decode(&mut b).expect("own frames decode") {
            if let Frame::Data { stream, data, .. } = f {
                assert_eq!(stream, a);
                taken += data.len();
            }
        }
        while let Some(ev) = c.poll_event() {
            if ev == Event::StreamWritable(a) {
                assert!(woken_after.is_none(), "woken twice");
                woken_after = Some(taken);
            }
        }
        if woken_after.is_some() {
            break;
        }
    }
    let woken_after = woken_after.expect("the writer was not woken");
    assert!(woken_after >= most / 2, "woken after {woken_after}");
    assert!(
        woken_after < most / 2 + crate::frame::MAX_MESSAGE,
        "woken late: {woken_after}"
    );
    assert_eq!(c.stream_send_capacity(a), Ok(woken_after));
}

/// Sends every message `LINK` has now; the token of the first `PING` among them.
fn send_all(c: &mut Session, now: Instant) -> Option<u64> {
    let mut token = None;
    loop {
        let frames = sent(c, now, LINK);
        if frames.is_empty() {
            return token;
        }
        for f in frames {
            if let Frame::Ping(t) = f {
                token = token.or(Some(t));
            }
        }
    }
}

/// The unsent bound follows the links' bandwidth-delay product (delivery rate times smallest RTT,
/// four times), from UNSENT_MIN to UNSENT_MAX, is shared by the bulk streams, and falls back when
/// the links go.
#[test]
fn the_unsent_bound_follows_what_the_links_hold() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(t0, LINK);
    let a = c.open_stream(t0, NODE, "svc").unwrap();
    let credit = Frame::Window {
        stream: a,
        acked: 0,
        max: 64 << 20,
    };
    let session = Frame::SessionWindow { max: 256 << 20 };
    c.handle_message(t0, LINK, msg(&[credit, session])).unwrap();
    assert_eq!(c.stream_send_capacity(a), Ok(UNSENT_MIN as usize));

    // Round trips of 100 ms, each carrying `n` bytes: a pong confirms what went before its ping
    // (in the round's first message), so the second pong measures the first round's bytes over
    // the 100 ms since the first.
    let round = |c: &mut Session, at: Instant, n: usize| {
        c.stream_write(a, Bytes::from(vec![0u8; n])).unwrap();
        let token = send_all(c, at).expect("a ping rides with the data");
        c.handle_message(at + ms(100), LINK, msg(&[Frame::Pong(token)]))
            .unwrap();
    };
    let bdp = 3u64 << 20;
    round(&mut c, t0, bdp as usize);
    round(&mut c, t0 + ms(100), 1);
    let bound = c.stream_send_capacity(a).unwrap() as u64;
    let slack = 2 * crate::frame::MAX_MESSAGE as u64;
    assert!(
        bound.abs_diff(4 * bdp) < 4 * slack,
        "bound {bound}, not four times the link's bandwidth-delay product ({bdp})"
    );

    // Ten times more (the rate is smoothed, a quarter per sample): capped.
    round(&mut c, t0 + ms(200), 10 * bdp as usize);
    round(&mut c, t0 + ms(300), 1);
    assert_eq!(c.stream_send_capacity(a), Ok(UNSENT_MAX as usize));

    // Bulk streams share it: with 3 others waiting to send, each may hold a third of what the
    // links want (4 x 9.75 MiB: the rate is smoothed); a 15th would be less than UNSENT_MIN.
    for _ in 0..3 {
        let b = c.open_stream(t0, NODE, "svc").unwrap();
        c.stream_write(b, Bytes::from(vec![0u8; 1 << 20])).unwrap();
    }
    assert_eq!(c.sched.bulk_streams(), 3);
    let third = c.unsent_target / 3;
    assert!(third > UNSENT_MIN && third < UNSENT_MAX, "{third}");
    assert_eq!(c.stream_send_capacity(a), Ok(third as usize));
    assert_eq!(unsent_bound(c.unsent_target, 15), UNSENT_MIN);

    // The link goes, and with it what it held.
    c.remove_link(LINK);
    assert_eq!(c.stream_send_capacity(a), Ok(UNSENT_MIN as usize));
}

/// A server session with these windows and one link.
fn session_with(stream_window: u64, session_window: u64) -> (Session, Instant) {
    let now = Instant::now();
    let cfg = Config {
        stream_window,
        session_window,
        ..Config::default()
    };
    let mut s = Session::new(Role::Server(NODE), cfg);
    s.add_link(now, LINK);
    (s, now)
}

/// The peer opens stream `id` (its `OPEN`: a stream without one may hold `PENDING_MEMORY`).
fn open_stream(s: &mut Session, now: Instant, id: StreamId) {
    let open = Frame::Open {
        stream: id,
        service: "svc".into(),
        pin: false,
    };
    s.handle_message(now, LINK, msg(&[open])).unwrap();
}

/// The peer sends stream `id`'s bytes from `at` up to `to`, in frames of 60,000.
fn send_up_to(s: &mut Session, now: Instant, id: StreamId, mut at: u64, to: u64) {
    while at < to {
        let n = (to - at).min(60_000);
        s.handle_message(now, LINK, msg(&[data(id, at, n as usize, false)]))
            .expect("within credit");
        at += n;
    }
}

/// Streams whose applications stopped reading hold their own windows, reserved in the memory
/// budget, not the session's: the session credit covers the streams' reserved credit on top of
/// `session_window`, so a new stream still gets its initial credit's worth through. Before, the
/// session credit followed what the applications read alone, and three stalled streams of 8 MiB
/// windows filled a 16 MiB session window (a trial's client: every other connection stalled).
#[test]
fn streams_that_stop_reading_leave_the_session_credit_to_the_others() {
    let (mut s, now) = session_with(8 << 20, INITIAL_SESSION_CREDIT);
    // Three bulk streams whose readers keep up until their windows reach 8 MiB, then stop:
    // the peer fills each stream's credit, within the session credit it was given.
    for i in 0..3 {
        let id = sid(i);
        open_stream(&mut s, now, id);
        let (ahead, _) = stream_credit_grows(&mut s, now, id, 32 << 20);
        assert_eq!(ahead, 8 << 20, "stream {i}'s window grew to 8 MiB");
        // The peer sends up to the stream's credit, which the session credit it was given
        // (its `SESSION_WINDOW` frames went out among the stream's windows) covers.
        let (mut at, max) = (s.streams[&id].recv_highest, s.streams[&id].recv_max);
        assert!(
            max - at >= 6 << 20,
            "stream {i}'s credit ahead: {}",
            max - at
        );
        assert!(
            s.recv_session_used + (max - at) <= s.recv_session_max,
            "stream {i}: the session credit does not cover its window"
        );
        while at < max {
            let n = (max - at).min(60_000);
            s.handle_message(now, LINK, msg(&[data(id, at, n as usize, false)]))
                .expect("within credit");
            at += n;
            // A peer near the end of its session credit is not held short of what is due by
            // more than a sixteenth of the window (grants come in halves of it otherwise).
            let due = s.recv_session_consumed + INITIAL_SESSION_CREDIT + s.recv_reserved;
            let left = s.recv_session_max - s.recv_session_used;
            assert!(
                left >= INITIAL_SESSION_CREDIT / 4
                    || due.saturating_sub(s.recv_session_max) < INITIAL_SESSION_CREDIT / 16,
                "stream {i}: {left} bytes of credit left, {} due",
                due.saturating_sub(s.recv_session_max)
            );
        }
    }
    // 18-24 MiB unread, all but 2 MiB a stream reserved: a new stream gets its initial credit
    // through.
    assert!(s.budget_held().0 >= 12 << 20);
    for i in 0..3 {
        assert!(!s.streams[&sid(i)].is_reset(), "stream {i} was refused");
    }
    let id = sid(3);
    open_stream(&mut s, now, id);
    assert!(s.recv_session_used + INITIAL_STREAM_CREDIT <= s.recv_session_max);
    s.handle_message(now, LINK, msg(&[data(id, 0, 60_000, false)]))
        .expect("a new stream's data is within the session credit");
    assert!(matches!(
        s.stream_read(now, id, usize::MAX),
        Ok(ReadChunk::Data(d)) if d.len() == 60_000
    ));
    // The window itself still bounds what no reservation covers: credit for the unread bytes
    // within the streams' first 2 MiB stays within `session_window`.
    let reserved: u64 = s.streams.values().map(|s| s.recv_reservation()).sum();
    assert_eq!(s.recv_reserved, reserved);
    assert!(s.recv_session_max <= s.recv_session_consumed + INITIAL_SESSION_CREDIT + reserved);
}

/// Streams whose applications do not read, holding nine tenths of the session window: the
/// session says so, once (a trial's stalled client logged nothing at either end).
#[test]
fn a_session_window_held_by_unread_streams_is_reported_once() {
    let (mut s, now) = session_with(INITIAL_STREAM_CREDIT, INITIAL_SESSION_CREDIT);
    let held = |s: &mut Session| {
        std::iter::from_fn(|| s.poll_event())
            .filter_map(|e| match e {
                Event::WindowHeld { held, streams } => Some((held, streams)),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let per = INITIAL_STREAM_CREDIT;
    let streams = INITIAL_SESSION_CREDIT / per;
    for i in 0..streams {
        open_stream(&mut s, now, sid(i));
        send_up_to(&mut s, now, sid(i), 0, per);
        let events = held(&mut s);
        if (i + 1) * per < INITIAL_SESSION_CREDIT / 10 * 9 {
            assert!(events.is_empty(), "after {} streams: {events:?}", i + 1);
        } else if (i + 1) * per - per < INITIAL_SESSION_CREDIT / 10 * 9 {
            assert_eq!(events.len(), 1, "after {} streams: {events:?}", i + 1);
            assert_eq!(events[0].1, usize::try_from(i + 1).unwrap());
        } else {
            assert!(events.is_empty(), "once: {events:?}");
        }
    }
    // Read: the held bytes fall, and the report is armed again (for a minute from the last).
    for i in 0..streams {
        while let Ok(ReadChunk::Data(_)) = s.stream_read(now, sid(i), usize::MAX) {}
    }
    assert!(held(&mut s).is_empty());
    assert!(!s.window_held);
}

/// A peer out of session credit gets what the reads free once it is a sixteenth of the window,
/// not only once it is half of it: a session whose applications read little (most of its
/// streams stalled) was otherwise held up to half a window short of its due.
#[test]
fn a_peer_out_of_session_credit_gets_what_reads_free_before_half_the_window() {
    let (mut s, now) = session_with(INITIAL_STREAM_CREDIT, INITIAL_SESSION_CREDIT);
    let per = INITIAL_STREAM_CREDIT;
    for i in 0..INITIAL_SESSION_CREDIT / per {
        open_stream(&mut s, now, sid(i));
        send_up_to(&mut s, now, sid(i), 0, per);
    }
    assert_eq!(
        s.recv_session_used, s.recv_session_max,
        "out of session credit"
    );
    // One stream's application reads its 2 MiB: an eighth of the window.
    while let Ok(ReadChunk::Data(_)) = s.stream_read(now, sid(0), usize::MAX) {}
    assert_eq!(s.recv_session_consumed, per);
    // Granted as the reads free a sixteenth (before: at half the window, 8 MiB read).
    assert!(
        s.recv_session_max >= INITIAL_SESSION_CREDIT + INITIAL_SESSION_CREDIT / 16,
        "granted: {}",
        s.recv_session_max - INITIAL_SESSION_CREDIT
    );
}

/// A node hands the daemon each `FORGET` (the client gave up another session for this one), at
/// most `MAX_FORGETS` per session, so a peer that sends them without end grows nothing; a
/// client never takes one from its node.
#[test]
fn forget_frames_reach_the_daemon_up_to_a_bound() {
    use crate::frame::SecretBytes;
    let (mut s, now) = server(16);
    let forgets: Vec<Frame> = (0..MAX_FORGETS as u8 + 10)
        .map(|i| Frame::Forget(SecretBytes([i; 32])))
        .collect();
    s.handle_message(now, LINK, msg(&forgets)).unwrap();
    let mut got = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let Event::Forget(secret) = ev {
            got.push(secret.0[0]);
        }
    }
    assert_eq!(got, (0..MAX_FORGETS as u8).collect::<Vec<_>>());

    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    c.handle_message(now, LINK, msg(&forgets[..1])).unwrap();
    assert!(std::iter::from_fn(|| c.poll_event()).all(|e| !matches!(e, Event::Forget(_))));
    // A client sends one when told, and a node does not.
    c.forget_session(SecretBytes([1; 32]));
    assert!(sent(&mut c, now, LINK).contains(&Frame::Forget(SecretBytes([1; 32]))));
    s.forget_session(SecretBytes([1; 32]));
    assert!(!sent(&mut s, now, LINK)
        .iter()
        .any(|f| matches!(f, Frame::Forget(_))));
}
