//! Hostile and malformed peer input, stream life cycle, pongs and restarts.

use super::*;

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
    let id = c.open_stream(now, NODE, "svc").unwrap();
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
        pin: false,
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

fn open(i: u64) -> Frame {
    Frame::Open {
        stream: sid(i),
        service: "svc".into(),
        pin: false,
    }
}

/// The codes of the `RESET`s the session sends on `LINK`, every message it has for it.
fn resets_sent(s: &mut Session, now: Instant) -> Vec<(StreamId, u16)> {
    let mut out = Vec::new();
    loop {
        let frames = sent(s, now, LINK);
        if frames.is_empty() {
            return out;
        }
        out.extend(frames.into_iter().filter_map(|f| match f {
            Frame::Reset { stream, code, .. } => Some((stream, code)),
            _ => None,
        }));
    }
}

#[test]
fn a_burst_over_the_stream_limit_is_refused_and_the_session_goes_on() {
    let (mut s, now) = server(2);
    for i in 0..2 {
        s.handle_message(now, LINK, msg(&[open(i)])).unwrap();
    }
    // A burst far over the limit, each with its first bytes: every one refused, none kept.
    for i in 2..1002 {
        s.handle_message(now, LINK, msg(&[open(i), data(sid(i), 0, 1000, false)]))
            .unwrap();
    }
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    let opened = events
        .iter()
        .filter(|e| matches!(e, Event::StreamOpened { .. }))
        .count();
    assert_eq!(opened, 2, "only streams under the limit open: {events:?}");
    let refused = Event::Refused {
        code: reset::TOO_MANY_STREAMS,
    };
    assert_eq!(
        events.iter().filter(|e| **e == refused).count(),
        1000,
        "the node is told of each refusal (it counts and logs them)"
    );
    assert_eq!(s.stream_count(), 2);
    let resets = resets_sent(&mut s, now);
    assert_eq!(resets.len(), 1000);
    assert!(resets.iter().all(|&(_, c)| c == reset::TOO_MANY_STREAMS));
    // A refused stream has no more credit than a new one.
    assert_eq!(
        s.handle_message(
            now,
            LINK,
            msg(&[data(sid(2), INITIAL_STREAM_CREDIT, 1, false)])
        ),
        Err(PeerError::CreditExceeded(sid(2)))
    );
    let (mut s, now) = server(2);
    for i in 0..1002 {
        s.handle_message(now, LINK, msg(&[open(i), data(sid(i), 0, 1000, false)]))
            .unwrap();
    }
    // The client answers each refusal with its RESET: the bytes it sent (more than arrived
    // here) count against the session's credit, which is granted again as they are consumed
    // at once (10 MB in all: past half the session window, 16 MiB).
    for i in 2..1002 {
        let reset = Frame::Reset {
            stream: sid(i),
            code: reset::TOO_MANY_STREAMS,
            final_size: 10_000,
        };
        s.handle_message(now, LINK, msg(&[reset])).unwrap();
    }
    let granted = std::iter::from_fn(|| {
        let f = sent(&mut s, now, LINK);
        (!f.is_empty()).then_some(f)
    })
    .flatten()
    .any(|f| matches!(f, Frame::SessionWindow { .. }));
    assert!(
        granted,
        "the refused streams' bytes were consumed and granted again"
    );
    // Frames for them now are stale; once a stream ends, a new one opens.
    s.handle_message(now, LINK, msg(&[data(sid(5), 1000, 10, false)]))
        .unwrap();
    let end = Frame::Reset {
        stream: sid(0),
        code: reset::APP,
        final_size: 1000,
    };
    s.handle_message(now, LINK, msg(&[end])).unwrap();
    while s.poll_event().is_some() {}
    s.handle_message(now, LINK, msg(&[open(1002)])).unwrap();
    let opened: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    assert!(
        opened
            .iter()
            .any(|e| matches!(e, Event::StreamOpened { stream, .. } if *stream == sid(1002))),
        "{opened:?}"
    );
}

#[test]
fn refused_streams_with_spaced_ids_cut_the_peer_off() {
    let (mut s, now) = server(2);
    for i in 0..2 {
        s.handle_message(now, LINK, msg(&[open(i)])).unwrap();
    }
    // Every other id: one range each, past 2 x max_streams + 1,024 of them.
    let mut result = Ok(());
    for i in 0..2000 {
        result = s.handle_message(now, LINK, msg(&[open(10 + 2 * i)]));
        if result.is_err() {
            assert!(i > 1000, "cut off after {i}");
            break;
        }
    }
    assert_eq!(result, Err(PeerError::TooManyStreams));
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
            pin: false,
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
                pin: false,
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
            pin: false,
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
        s.stream_read(now, id, 100),
        Ok(ReadChunk::Data(Bytes::from(vec![0xAB; 3])))
    );
    assert_eq!(s.stream_read(now, id, 100), Ok(ReadChunk::Fin));
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
    let id = c.open_stream(now, NODE, "svc").unwrap();
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
        c.open_stream(now, NODE, &"x".repeat(256)),
        Err(OpenError::NameTooLong)
    );
}

#[test]
fn pongs_confirm_what_a_link_carried() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let id = c.open_stream(now, NODE, "svc").unwrap();
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
    assert!(c.link_stats(LINK, now).unwrap().unconfirmed > 0);
    let later = now + Duration::from_millis(30);
    c.handle_message(later, LINK, msg(&[Frame::Pong(token)]))
        .unwrap();
    let stats = c.link_stats(LINK, later).unwrap();
    assert_eq!(stats.unconfirmed, 0);
    assert_eq!(stats.rtt.smoothed, Some(Duration::from_millis(30)));
}

#[test]
fn restart_forgets_streams_and_credit_but_keeps_links() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    let a = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(a, Bytes::from(vec![1; 1000])).unwrap();
    let mut buf = BytesMut::new();
    assert!(c.poll_transmit(now, LINK, &mut buf));
    while c.poll_event().is_some() {}
    c.restart();
    let events: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(
        events.contains(&Event::StreamReadable(a)) && events.contains(&Event::StreamWritable(a))
    );
    assert_eq!(c.stream_read(now, a, 10), Err(StreamError::Closed));
    assert_eq!(c.stream_count(), 0);
    assert_eq!(c.send_session_used, 0);
    assert_eq!(c.links().collect::<Vec<_>>(), vec![LINK]);
    assert_eq!(c.link_stats(LINK, now).unwrap().unconfirmed, 0);
    // New streams get fresh ids and work as before.
    let b = c.open_stream(now, NODE, "svc").unwrap();
    assert_ne!(a, b);
    assert!(c.poll_transmit(now, LINK, &mut buf));
}

#[test]
fn the_last_stream_id_of_node_65535_finishes_without_overflow() {
    let now = Instant::now();
    let node = NodeId(u16::MAX);
    let mut s = Session::new(Role::Server(node), Config::default());
    s.add_link(now, LINK);
    let last = StreamId::new(node, StreamId::MAX_COUNTER);
    assert_eq!(last.0, u64::MAX);
    let reset = Frame::Reset {
        stream: last,
        code: reset::APP,
        final_size: 0,
    };
    s.handle_message(now, LINK, msg(&[reset])).unwrap();
    assert_eq!(s.stream_count(), 0);
    // Finished: a late frame for it is stale, not a new stream.
    s.handle_message(now, LINK, msg(&[data(last, 0, 10, false)]))
        .unwrap();
    assert_eq!(s.stream_count(), 0);
}

#[test]
fn finished_streams_cost_bounded_memory_whatever_ids_the_client_picks() {
    let (mut s, now) = server(16);
    // Spaced ids, each ending at once: one range each, without a bound.
    for i in 0..100_000u64 {
        let reset = Frame::Reset {
            stream: sid(2 * i),
            code: reset::APP,
            final_size: 0,
        };
        s.handle_message(now, LINK, msg(&[reset])).unwrap();
        // Drop the RESETs it answers with, as a client would read them.
        if i % 1000 == 0 {
            while !sent(&mut s, now, LINK).is_empty() {}
        }
    }
    assert!(
        s.finished.ranges() <= 2 * 16 + MAX_FINISHED_RANGES,
        "{} ranges",
        s.finished.ranges()
    );
    assert_eq!(s.stream_count(), 0);
    // The newest ids are still told apart: a gap among them is a new stream...
    s.handle_message(now, LINK, msg(&[data(sid(2 * 99_999 - 1), 0, 1, false)]))
        .unwrap();
    assert_eq!(s.stream_count(), 1);
    // ...and a stream that ended is stale.
    s.handle_message(now, LINK, msg(&[data(sid(2 * 99_999), 0, 1, false)]))
        .unwrap();
    assert_eq!(s.stream_count(), 1);
    // Low gaps were filled: taken for finished streams.
    s.handle_message(now, LINK, msg(&[data(sid(1), 0, 1, false)]))
        .unwrap();
    assert_eq!(s.stream_count(), 1);
}

/// The node ends a stream once the client acked its FIN and it read the client's: the
/// acknowledgement of the client's FIN may then still be unconfirmed on a link. If that link
/// dies, the acknowledgement must go out again on another, or the client waits for it forever.
#[test]
fn the_final_ack_of_a_stream_survives_the_death_of_its_link() {
    let (mut s, now) = server(10);
    let other = LinkId(2);
    s.add_link(now, other);
    let id = sid(0);
    let open = Frame::Open {
        stream: id,
        service: "svc".into(),
        pin: false,
    };
    s.handle_message(now, LINK, msg(&[open, data(id, 0, 10, true)]))
        .unwrap();
    while let Ok(ReadChunk::Data(_)) = s.stream_read(now, id, usize::MAX) {}
    assert_eq!(s.stream_read(now, id, usize::MAX), Ok(ReadChunk::Fin));
    s.stream_write(id, Bytes::from_static(b"reply")).unwrap();
    s.stream_finish(id).unwrap();
    // One message on LINK carries the ack of the client's FIN and the node's reply with its FIN.
    let frames = sent(&mut s, now, LINK);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Window { stream, acked: 11, .. } if *stream == id)),
        "the FIN's ack went out: {frames:?}"
    );
    assert!(frames
        .iter()
        .any(|f| matches!(f, Frame::Data { fin: true, .. })));
    // The client acks the node's FIN on the other link: both directions are done.
    s.handle_message(
        now,
        other,
        msg(&[Frame::Window {
            stream: id,
            acked: 6,
            max: INITIAL_STREAM_CREDIT,
        }]),
    )
    .unwrap();
    assert_eq!(s.stream_count(), 0, "the stream ended at the node");
    assert!(sent(&mut s, now, other)
        .iter()
        .all(|f| !matches!(f, Frame::Window { .. })));
    // LINK dies before a pong confirmed its message: the ack goes out on the other link.
    s.remove_link(LINK);
    let again = sent(&mut s, now, other);
    assert!(
        again
            .iter()
            .any(|f| matches!(f, Frame::Window { stream, acked: 11, .. } if *stream == id)),
        "the final ack was lost with its link: {again:?}"
    );
    assert_eq!(s.stream_count(), 0, "no stream comes back for it");
}
