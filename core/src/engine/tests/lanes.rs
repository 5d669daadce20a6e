//! Link choice: interactive lanes, duplicates, stalled and dead links.

use super::*;

/// The data frames `s` sends on `link` in one message: (stream, offset, len).
fn data_sent(s: &mut Session, now: Instant, link: LinkId) -> Vec<(StreamId, u64, usize)> {
    data_of(&sent(s, now, link))
}

/// The data frames among `frames`: (stream, offset, len).
fn data_of(frames: &[Frame]) -> Vec<(StreamId, u64, usize)> {
    frames
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
        .collect()
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
    let bulk = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(bulk, Bytes::from(vec![1u8; 400_000]))
        .unwrap();
    (c, links, now, bulk)
}

#[test]
fn a_dedicated_lane_that_looks_stalled_sends_the_other_lanes_duplicates_and_no_bulk_data() {
    let (mut c, links, now, _) = client_with_two_lanes_and_bulk();
    let game = c.open_stream(now, NODE, "svc").unwrap();
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
    let bulk = c.open_stream(now, NODE, "svc").unwrap();
    let game = c.open_stream(now, NODE, "svc").unwrap();
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
    assert!(!c.has_work_for(now, links[0]) && !c.has_work_for(now, links[1]));
    assert!(
        c.has_work_for(now, links[3]),
        "bulk data waits for the bulk links"
    );
    // Once the traffic stops, the lanes carry bulk again.
    let later = now + Duration::from_secs(3);
    let lane = data_sent(&mut c, later, links[0]);
    assert!(lane.iter().any(|d| d.0 == bulk), "{lane:?}");
}

/// A client with two links that has sent 10,000 bytes of one stream on `LINK`, unconfirmed.
fn ten_kb_out_on_link_one() -> (Session, StreamId, Instant) {
    let (c, id, now, _) = ten_kb_out_on_link_one_with_its_ping();
    (c, id, now)
}

#[test]
fn a_dead_links_unconfirmed_data_counts_as_resent() {
    let (mut c, id, now) = ten_kb_out_on_link_one();
    c.remove_link(LINK);
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

/// The receiving side of a download through a node that was just killed: its link to that node
/// looks alive until the dead timer ends it, seconds later. Window updates (the stream's
/// acknowledgements and credit) sent on it are lost meanwhile, and the sender waits for credit.
/// Once the link looks stalled they go out again on another link, and later ones avoid it.
#[test]
fn a_stalled_links_window_updates_go_out_again_on_another_link_and_later_ones_avoid_it() {
    let (mut s, now) = server(16);
    let two = LinkId(2);
    s.add_link(now, two);
    let id = sid(0);
    // 600 KB arrive on link 1 and are read: a quarter of the window, so a grant is due.
    for k in 0..10u64 {
        s.handle_message(now, LINK, msg(&[data(id, k * 60_000, 60_000, false)]))
            .unwrap();
    }
    while let Ok(ReadChunk::Data(_)) = s.stream_read(now, id, usize::MAX) {}
    let frames = sent(&mut s, now, LINK);
    let first = windows_of(&frames);
    assert_eq!(first.len(), 1, "{frames:?}");
    assert!(
        frames.iter().any(|f| matches!(f, Frame::Ping(_))),
        "{frames:?}"
    );
    assert!(
        sent(&mut s, now, two).is_empty(),
        "nothing else to send yet"
    );
    // Link 1's ping goes unanswered past the stall threshold (2 s before any RTT sample);
    // link 2 has no ping outstanding.
    let later = now + Duration::from_millis(2100);
    s.handle_timeout(later);
    assert!(s.links().any(|l| l == LINK), "a stalled link is kept");
    assert_eq!(windows_of(&sent(&mut s, later, two)), first);
    // A later update skips link 1 while link 2 is not stalled, and only link 2 is woken for it.
    for k in 10..20u64 {
        s.handle_message(later, two, msg(&[data(id, k * 60_000, 60_000, false)]))
            .unwrap();
    }
    while let Ok(ReadChunk::Data(_)) = s.stream_read(later, id, usize::MAX) {}
    assert!(!s.has_work_for(later, LINK));
    assert!(s.has_work_for(later, two));
    assert!(windows_of(&sent(&mut s, later, LINK)).is_empty());
    let update = windows_of(&sent(&mut s, later, two));
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].1, 1_200_000, "{update:?}");
}

/// A link whose writer stops taking messages (a QUIC connection to a node that just died: its
/// congestion window fills with packets nobody acks) cannot send the ping that comes due after
/// its last pong. What it carries unconfirmed goes out again on the others as soon as that ping
/// is as late as an unanswered one would be, not when the link is declared dead seconds later.
#[test]
fn a_link_that_cannot_send_its_due_ping_has_its_data_rescued_in_round_trips() {
    let (mut c, id, t0, ping) = ten_kb_out_on_link_one_with_its_ping();
    // More data follows on link 1 before the pong (one ping outstanding at a time).
    c.stream_write(id, Bytes::from(vec![8u8; 10_000])).unwrap();
    let t1 = t0 + Duration::from_millis(1);
    assert_eq!(data_sent(&mut c, t1, LINK), vec![(id, 10_000, 10_000)]);
    // The pong of the first ping comes back after 50 ms: RTT 50 ms, deviation 25 ms.
    let pong_at = t0 + Duration::from_millis(50);
    c.handle_message(pong_at, LINK, msg(&[Frame::Pong(ping)]))
        .unwrap();
    // The next ping comes due; link 1's writer never asks for a message again.
    c.handle_timeout(pong_at);
    // Stalled once the due ping is 2 RTTs + 4 deviations + 10 ms late (210 ms), and rescued
    // one RTT later (260 ms), not before: a loss the transport repairs delays a ping that much.
    c.handle_timeout(pong_at + Duration::from_millis(250));
    assert_eq!(c.resent_bytes(), 0);
    let later = pong_at + Duration::from_millis(270);
    c.handle_timeout(later);
    assert_eq!(c.resent_bytes(), 10_000);
    assert!(c.links().any(|l| l == LINK), "a stalled link is kept");
    assert_eq!(
        data_sent(&mut c, later, LinkId(2)),
        vec![(id, 10_000, 10_000)]
    );
}

/// [`ten_kb_out_on_link_one`], with the token of the ping that went out with the data.
fn ten_kb_out_on_link_one_with_its_ping() -> (Session, StreamId, Instant, u64) {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_link(now, LINK);
    c.add_link(now, LinkId(2));
    let id = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(id, Bytes::from(vec![7u8; 10_000])).unwrap();
    let frames = sent(&mut c, now, LINK);
    assert_eq!(data_of(&frames), vec![(id, 0, 10_000)]);
    assert_eq!(c.resent_bytes(), 0);
    let token = frames
        .iter()
        .find_map(|f| match f {
            Frame::Ping(t) => Some(*t),
            _ => None,
        })
        .expect("the first message carries a ping");
    (c, id, now, token)
}

/// Lanes are held for `LANE_HOLD` after the latest small segment of the streams that still
/// send small ones: when the latest of them turns bulk, the one before it holds them.
#[test]
fn the_lanes_are_held_by_the_latest_small_segment_of_a_stream_still_interactive() {
    let (mut c, links, t0) = client_with_four_links();
    let ms = Duration::from_millis;
    let small = |c: &mut Session, at: Instant, byte: u8| {
        let id = c.open_stream(at, NODE, "svc").unwrap();
        c.stream_write(id, Bytes::from(vec![byte; 16])).unwrap();
        let lane = c.lanes(at).ids[0].expect("lanes are held");
        assert_eq!(data_sent(c, at, lane), vec![(id, 0, 16)]);
        id
    };
    let a = small(&mut c, t0, 1);
    let b = small(&mut c, t0 + ms(500), 2);
    let d = small(&mut c, t0 + ms(1000), 3);
    // The latest turns bulk: B's segment, 500 ms older, holds the lanes (not A's, the oldest).
    let t1 = t0 + ms(1000);
    c.stream_write(d, Bytes::from(vec![4u8; 200_000])).unwrap();
    let _ = data_sent(&mut c, t1, links[2]);
    assert!(c.lanes(t0 + LANE_HOLD + ms(100)).ids[0].is_some());
    assert!(c.lanes(t0 + ms(500) + LANE_HOLD + ms(100)).ids[0].is_none());
    // Both others turn bulk too: nothing holds them.
    for id in [a, b] {
        c.stream_write(id, Bytes::from(vec![5u8; 200_000])).unwrap();
    }
    let _ = data_sent(&mut c, t1, links[3]);
    assert!(c.lanes(t1).ids[0].is_none());
}

#[test]
fn a_small_header_that_turns_into_bulk_does_not_hold_the_lanes() {
    let (mut c, links, now) = client_with_four_links();
    let id = c.open_stream(now, NODE, "svc").unwrap();
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
    let game = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    for &lane in &links[2..] {
        let frames = sent(&mut c, later, lane);
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, Frame::Open { stream, .. } if *stream == game)),
            "{frames:?}"
        );
        assert_eq!(data_of(&frames), vec![(game, 0, 100)]);
    }
    // Without a bulk link the lanes are ordinary links again (one of the two is an on-demand
    // lane while the game is active), rather than leave the bulk data nowhere to go.
    c.remove_link(links[0]);
    c.remove_link(links[1]);
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
        pin: false,
    };
    (s, links, now, id, open)
}

#[test]
fn a_node_sends_a_small_reply_on_both_dedicated_lanes() {
    let (mut s, [lane_a, lane_b, bulk_a, bulk_b], now, id, open) = node_with_two_lanes_and_bulk();
    s.handle_message(now, lane_a, msg(&[open, data(id, 0, 64, false)]))
        .unwrap();
    while s.poll_event().is_some() {}
    assert!(matches!(
        s.stream_read(now, id, 100),
        Ok(ReadChunk::Data(_))
    ));
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
        while let Ok(ReadChunk::Data(_)) = s.stream_read(now, id, usize::MAX) {}
    };
    let windows = |frames: &[Frame]| {
        frames
            .iter()
            .filter(|f| matches!(f, Frame::Window { .. } | Frame::SessionWindow { .. }))
            .count()
    };
    upload(&mut s, now, bulk_a);
    assert!(!s.has_work_for(now, lane_a) && !s.has_work_for(now, lane_b));
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
    s.remove_link(bulk_b);
    let later = now + Duration::from_millis(2500);
    upload(&mut s, later, lane_a);
    assert!(s.has_work_for(later, lane_a));
    assert!(windows(&sent(&mut s, later, lane_a)) > 0);
}

#[test]
fn the_engine_wakes_one_parked_writer_for_session_work_and_every_one_with_work_of_its_own() {
    let (mut c, links, now) = client_with_four_links();
    let mut woken = Vec::new();
    c.poll_wakes(now, &mut woken);
    assert!(woken.is_empty(), "no writer is parked yet");
    // Every writer polls until it finds nothing (the first takes the session window), and
    // parks.
    for &l in &links {
        while !sent(&mut c, now, l).is_empty() {}
        c.park_writer(now, l);
    }
    c.poll_wakes(now, &mut woken);
    assert!(woken.is_empty(), "nothing to send, nobody to wake");
    // A new stream's OPEN is session-level work: one writer is woken, the lowest-RTT one that
    // may carry it (no RTT yet: the first lane, link 1).
    let id = c.open_stream(now, NODE, "svc").unwrap();
    c.poll_wakes(now, &mut woken);
    assert_eq!(woken, [links[0]]);
    // Woken and not polled yet: another engine call before it polls wakes no other writer for
    // the same work.
    woken.clear();
    c.poll_wakes(now, &mut woken);
    assert!(woken.is_empty(), "{woken:?}");
    assert!(sent(&mut c, now, links[0])
        .iter()
        .any(|f| matches!(f, Frame::Open { stream, .. } if *stream == id)));
    // Link 1 sent the OPEN; the copy it left for the other lane is link 2's own work.
    c.poll_wakes(now, &mut woken);
    assert_eq!(woken, [links[1]], "the second lane sends the OPEN's copy");
    assert!(sent(&mut c, now, links[1])
        .iter()
        .any(|f| matches!(f, Frame::Open { stream, .. } if *stream == id)));
    // A ping from the peer on link 4 owes a pong: its own writer is woken for it.
    woken.clear();
    c.handle_message(now, links[3], msg(&[Frame::Ping(7)]))
        .unwrap();
    c.poll_wakes(now, &mut woken);
    assert_eq!(woken, [links[3]]);
    assert_eq!(
        c.link_activity(links[2]).map(|a| a.busy),
        Some(false),
        "link 3 found nothing"
    );
    assert!(sent(&mut c, now, links[3]).contains(&Frame::Pong(7)));
    assert_eq!(c.link_activity(links[3]).map(|a| a.busy), Some(true));
}

#[test]
fn the_engine_plans_elastic_links_from_how_long_every_link_has_been_busy() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let (a, b) = (LinkId(1), LinkId(2));
    c.add_link(now, a);
    let view = |extra: &'static [LinkId], slots| PoolView {
        min: 1,
        max: 3,
        slots,
        dialing: false,
        extra,
    };
    // A bulk upload keeps the only link busy.
    let id = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(id, Bytes::from(vec![7; 1 << 20])).unwrap();
    assert!(!sent(&mut c, now, a).is_empty());
    assert_eq!(
        c.plan_links(now, view(&[], 1)),
        LinkPlan::Hold,
        "busy, but not for long"
    );
    let later = now + GROW_AFTER;
    assert!(!sent(&mut c, later, a).is_empty());
    assert_eq!(c.plan_links(later, view(&[], 1)), LinkPlan::Open);
    let dialing = PoolView {
        dialing: true,
        ..view(&[], 2)
    };
    assert_eq!(
        c.plan_links(later, dialing),
        LinkPlan::Hold,
        "one dial at a time"
    );
    // The extra link comes up; both idle once the data is gone, and the extra one is closed
    // after RETIRE_AFTER.
    c.add_link(later, b);
    c.stream_reset(id, 0);
    for l in [a, b] {
        while !sent(&mut c, later, l).is_empty() {}
        c.park_writer(later, l);
    }
    const EXTRA: &[LinkId] = &[LinkId(2)];
    assert_eq!(c.plan_links(later, view(EXTRA, 2)), LinkPlan::Hold);
    let idle = later + RETIRE_AFTER;
    assert_eq!(c.plan_links(idle, view(EXTRA, 2)), LinkPlan::Close(b));
    // A server's MORE_LINKS opens one whatever the links look like.
    c.handle_message(idle, a, msg(&[Frame::MoreLinks])).unwrap();
    assert_eq!(c.plan_links(idle, view(EXTRA, 2)), LinkPlan::Open);
    assert_eq!(
        c.plan_links(idle, view(EXTRA, 2)),
        LinkPlan::Close(b),
        "asked once"
    );
}

#[test]
fn a_node_whose_links_are_all_busy_asks_for_another() {
    let (mut s, now) = server(16);
    s.handle_message(
        now,
        LINK,
        msg(&[Frame::Open {
            stream: sid(0),
            service: "svc".into(),
            pin: false,
        }]),
    )
    .unwrap();
    s.stream_write(sid(0), Bytes::from(vec![1; 1 << 20]))
        .unwrap();
    let frames = sent(&mut s, now, LINK);
    assert!(!frames.contains(&Frame::MoreLinks));
    // Still busy GROW_AFTER later, with data waiting: the next message asks for a link.
    let later = now + GROW_AFTER;
    assert!(!sent(&mut s, later, LINK).is_empty());
    assert!(s.wants_transmit());
    assert!(sent(&mut s, later, LINK).contains(&Frame::MoreLinks));
}

/// A relayed link (a sub-link or virtual link) takes the data of striped streams but never of a
/// pinned one, and keeps its messages within a section; a direct link serves both.
#[test]
fn a_relayed_link_takes_striped_data_but_never_pinned_data() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let (direct, relayed) = (LinkId(1), LinkId(2));
    c.add_link(now, direct);
    c.add_relayed_link(now, relayed);
    assert!(c.is_relayed(relayed) && !c.is_relayed(direct));
    let pinned = c.open_stream_spread(now, NODE, "svc", true).unwrap();
    let striped = c.open_stream_spread(now, NODE, "svc", false).unwrap();
    c.stream_write(pinned, Bytes::from(vec![1u8; 300_000]))
        .unwrap();
    c.stream_write(striped, Bytes::from(vec![2u8; 300_000]))
        .unwrap();
    let mut on_relayed = 0;
    let mut pinned_direct = 0;
    for _ in 0..20 {
        let mut buf = BytesMut::new();
        if c.poll_transmit(now, relayed, &mut buf) {
            assert!(buf.len() <= crate::route::MAX_SECTION);
        }
        let mut b = buf.freeze();
        while let Some(f) = Frame::decode(&mut b).unwrap() {
            if let Frame::Data { stream, data, .. } = &f {
                assert_ne!(*stream, pinned, "pinned data on a relayed link");
                on_relayed += data.len();
            }
            if let Frame::Open { stream, pin, .. } = f {
                assert_eq!(pin, stream == pinned, "OPEN says which stream is pinned");
            }
        }
        for (stream, _, len) in data_sent(&mut c, now, direct) {
            if stream == pinned {
                pinned_direct += len;
            }
        }
    }
    assert!(
        on_relayed > 100_000,
        "the relayed link carried striped data"
    );
    assert_eq!(
        pinned_direct, 300_000,
        "the direct link carried all pinned data"
    );
}

/// A server learns from `OPEN_PIN` that a stream is pinned and keeps its data off relayed links.
#[test]
fn open_pin_keeps_the_servers_data_off_relayed_links() {
    let (mut s, now) = server(16);
    let relayed = LinkId(2);
    s.add_relayed_link(now, relayed);
    let id = sid(0);
    s.handle_message(
        now,
        LINK,
        msg(&[Frame::Open {
            stream: id,
            service: "svc".into(),
            pin: true,
        }]),
    )
    .unwrap();
    s.stream_write(id, Bytes::from(vec![3u8; 100_000])).unwrap();
    for _ in 0..5 {
        assert!(data_sent(&mut s, now, relayed).is_empty());
    }
    assert!(!data_sent(&mut s, now, LINK).is_empty());
}

/// A pinned stream's small segment is sent on the lane only: its copy for the other lane does not
/// go there when that lane is a relayed link (found by the `engine` fuzz target: a pinned
/// stream's `FIN` on a relayed link). A striped stream's copy still does.
#[test]
fn a_pinned_streams_lane_copy_stays_off_a_relayed_twin() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    // Four links, so two lanes: the lowest ids, 1 (direct) and 2 (relayed).
    c.add_link(now, LinkId(1));
    c.add_relayed_link(now, LinkId(2));
    c.add_link(now, LinkId(3));
    c.add_link(now, LinkId(4));
    let pinned = c.open_stream_spread(now, NODE, "svc", true).unwrap();
    let striped = c.open_stream_spread(now, NODE, "svc", false).unwrap();
    c.stream_write(pinned, Bytes::from_static(b"ping")).unwrap();
    c.stream_write(striped, Bytes::from_static(b"pong"))
        .unwrap();
    c.stream_finish(pinned).unwrap();
    let on_lane: Vec<StreamId> = data_sent(&mut c, now, LinkId(1))
        .into_iter()
        .map(|(stream, _, _)| stream)
        .collect();
    assert!(
        on_lane.contains(&pinned) && on_lane.contains(&striped),
        "both small segments go out on the first lane: {on_lane:?}"
    );
    let on_relayed: Vec<StreamId> = data_sent(&mut c, now, LinkId(2))
        .into_iter()
        .map(|(stream, _, _)| stream)
        .collect();
    assert!(
        !on_relayed.contains(&pinned),
        "a pinned stream's copy on a relayed lane"
    );
    assert!(
        on_relayed.contains(&striped),
        "a striped stream's copy goes on the other lane"
    );
}

/// Gives each of `links` (idle) an RTT sample: pinged by keepalive, answered `rtt` later.
fn with_rtts(c: &mut Session, now: Instant, links: &[(LinkId, Duration)]) -> Instant {
    let at = now + KEEPALIVE;
    c.handle_timeout(at);
    let mut last = at;
    for &(l, rtt) in links {
        let token = sent_ping(c, at, l).expect("an idle link is pinged");
        c.handle_message(at + rtt, l, msg(&[Frame::Pong(token)]))
            .unwrap();
        last = last.max(at + rtt);
    }
    last
}

/// A client engine with direct links 1 and 2 and sub-links 3 and 4 (through another node),
/// each measured at the RTT in `rtt_ms` (in that order); the instant after the measurements.
fn direct_and_relayed(rtt_ms: [u64; 4]) -> (Session, [LinkId; 4], Instant) {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let ids = [LinkId(1), LinkId(2), LinkId(3), LinkId(4)];
    c.add_link(now, ids[0]);
    c.add_link(now, ids[1]);
    c.add_relayed_link(now, ids[2]);
    c.add_relayed_link(now, ids[3]);
    let rtts: Vec<_> = ids
        .iter()
        .zip(rtt_ms)
        .map(|(&l, ms)| (l, Duration::from_millis(ms)))
        .collect();
    let now = with_rtts(&mut c, now, &rtts);
    (c, ids, now)
}

/// The engine of a far node on the client: direct links 1 and 2 (80 ms), and sub-links 3 and 4
/// through a near node (12 ms). The interactive lanes are the sub-links: a game's small segments
/// go through the near node, twice, and the direct links carry bulk data only.
#[test]
fn interactive_lanes_are_the_nearest_links_whichever_node_they_go_through() {
    let (mut c, [d1, d2, r3, r4], now) = direct_and_relayed([80, 81, 12, 13]);
    let bulk = c.open_stream(now, NODE, "svc").unwrap();
    let game = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(bulk, Bytes::from(vec![1u8; 300_000]))
        .unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    for d in [d1, d2] {
        let frames = sent(&mut c, now, d);
        assert!(
            frames.iter().all(|f| match f {
                Frame::Data { stream, .. } => *stream == bulk,
                f => !matches!(f, Frame::Open { .. }),
            }),
            "a far direct link carried interactive frames: {frames:?}"
        );
    }
    for r in [r3, r4] {
        let frames = sent(&mut c, now, r);
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, Frame::Data { stream, .. } if *stream == game)),
            "the game's segment on the near link {r}: {frames:?}"
        );
        assert!(
            frames
                .iter()
                .all(|f| !matches!(f, Frame::Data { stream, .. } if *stream == bulk)),
            "bulk data on a lane: {frames:?}"
        );
    }
}

/// A pinned interactive stream cannot use the lanes through relays: while it waits, one lane is
/// the nearest direct link, so it is sent at once and not when the lanes are let go.
#[test]
fn a_pinned_interactive_stream_gets_a_direct_lane_when_the_nearest_links_are_relayed() {
    let (mut c, [d1, d2, r3, r4], now) = direct_and_relayed([80, 40, 12, 13]);
    let bulk = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(bulk, Bytes::from(vec![1u8; 300_000]))
        .unwrap();
    let game = c.open_stream_spread(now, NODE, "svc", true).unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    let mut game_sent = Vec::new();
    for l in [r3, r4, d1, d2] {
        for (stream, offset, len) in data_sent(&mut c, now, l) {
            if stream == game {
                game_sent.push((l, offset, len));
            }
        }
    }
    // d2, the nearer direct link, replaced the second relayed lane.
    assert_eq!(game_sent, vec![(d2, 0, 100)]);
}

/// A far owner's engine on the client with two dedicated lanes of its own (80 ms) and two
/// sub-links over the near node's dedicated lanes (12 ms): the sub-links are its lanes, so the
/// game's segments go through the near node, and no bulk data goes on any lane link.
#[test]
fn dedicated_lanes_over_a_nearer_node_carry_the_interactive_frames_and_no_bulk() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let (l1, l2, b3, b4, r5, r6, rb7) = (
        LinkId(1),
        LinkId(2),
        LinkId(3),
        LinkId(4),
        LinkId(5),
        LinkId(6),
        LinkId(7),
    );
    c.add_lane(now, l1);
    c.add_lane(now, l2);
    c.add_link(now, b3);
    c.add_link(now, b4);
    c.add_relayed_lane(now, r5);
    c.add_relayed_lane(now, r6);
    c.add_relayed_link(now, rb7);
    let ms = Duration::from_millis;
    let now = with_rtts(
        &mut c,
        now,
        &[
            (l1, ms(80)),
            (l2, ms(80)),
            (b3, ms(80)),
            (b4, ms(80)),
            (r5, ms(12)),
            (r6, ms(12)),
            (rb7, ms(12)),
        ],
    );
    // More than three rounds take: the tail of a bulk stream (16 KiB) is interactive.
    let bulk = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(bulk, Bytes::from(vec![1u8; 1_000_000]))
        .unwrap();
    let game = c.open_stream(now, NODE, "svc").unwrap();
    c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
    let mut game_on = Vec::new();
    for _ in 0..3 {
        for l in [l1, l2, b3, b4, r5, r6, rb7] {
            for (stream, _, _) in data_sent(&mut c, now, l) {
                if stream == game {
                    game_on.push(l);
                }
                if stream == bulk {
                    assert!(![l1, l2, r5, r6].contains(&l), "bulk data on lane {l}");
                }
            }
        }
    }
    game_on.sort();
    assert_eq!(
        game_on,
        vec![r5, r6],
        "the game's segment went on both near lanes"
    );
}

#[test]
fn a_small_segment_goes_once_on_a_path_under_a_millisecond_and_twice_on_a_longer_one() {
    for (rtt, copies) in [
        (Duration::from_micros(200), 1),
        (Duration::from_millis(20), 2),
    ] {
        let (mut c, links, now) = client_with_four_links();
        let now = with_rtts(
            &mut c,
            now,
            &links.iter().map(|&l| (l, rtt)).collect::<Vec<_>>(),
        );
        let game = c.open_stream(now, NODE, "svc").unwrap();
        c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
        let carried: usize = links
            .iter()
            .map(|&l| {
                data_sent(&mut c, now, l)
                    .iter()
                    .filter(|d| **d == (game, 0, 100))
                    .count()
            })
            .sum();
        assert_eq!(carried, copies, "RTT {rtt:?}");
    }
}

#[test]
fn a_small_frame_wakes_the_nearest_lane_alone_once_every_lane_is_timed() {
    // Links 1-4 at 300, 200, 400 and 500 us (the lanes are links 1 and 2, copies are not sent
    // under 1 ms), and then the same with link 2 not measured yet (still a lane: the second
    // lane is a link without a sample, so that it gets one).
    for unmeasured in [false, true] {
        let (mut c, links, now) = client_with_four_links();
        let rtts: Vec<(LinkId, Duration)> = links
            .iter()
            .zip([300, 200, 400, 500])
            .filter(|(&l, _)| !(unmeasured && l == links[1]))
            .map(|(&l, us)| (l, Duration::from_micros(us)))
            .collect();
        let now = with_rtts(&mut c, now, &rtts);
        let game = c.open_stream(now, NODE, "svc").unwrap();
        c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
        let settle = |c: &mut Session| {
            for &l in &links {
                while !sent(c, now, l).is_empty() {}
                c.park_writer(now, l);
            }
        };
        settle(&mut c);
        let mut woken = Vec::new();
        c.poll_wakes(now, &mut woken);
        assert!(woken.is_empty(), "{woken:?}");
        c.stream_write(game, Bytes::from(vec![3u8; 100])).unwrap();
        c.poll_wakes(now, &mut woken);
        woken.sort();
        if unmeasured {
            assert_eq!(woken, [links[0], links[1]], "both lanes, one unmeasured");
        } else {
            assert_eq!(woken, [links[1]], "the nearest lane alone");
            // Woken, not polled yet: no second wake-up for the same frame.
            woken.clear();
            c.poll_wakes(now, &mut woken);
            assert!(woken.is_empty(), "{woken:?}");
        }
        let carried: usize = links
            .iter()
            .map(|&l| {
                data_sent(&mut c, now, l)
                    .iter()
                    .filter(|d| d.0 == game)
                    .count()
            })
            .sum();
        assert!(carried >= 1, "the frame went out");
    }
}

/// A far node's engine where only one direct link (2) has an RTT sample: the other direct
/// link (1) is the lane chosen to be measured, and carries only the copies of the small
/// segments that link 2 sends. Its copies take a ping along, so it is measured, the sub-links
/// (3 and 4, through a near node) are measured in their turn, and within a few segments the
/// segments go through the near node. (Without the ping, link 1 stayed unmeasured and the
/// lanes stayed the far direct links: a cluster test saw one direction of an echo take the
/// far owner's links for a whole run.)
#[test]
fn a_lane_that_sends_only_copies_is_measured_so_the_nearest_links_become_the_lanes() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    let [d1, d2, r3, r4] = [LinkId(1), LinkId(2), LinkId(3), LinkId(4)];
    c.add_link(now, d1);
    c.add_link(now, d2);
    c.add_relayed_link(now, r3);
    c.add_relayed_link(now, r4);
    let ms = Duration::from_millis;
    let rtt = |l: LinkId| if l == r3 || l == r4 { ms(1) } else { ms(40) };
    // Link 2 alone measured (probed, answered); the others have pinged nothing yet.
    c.probe_link(now, d2);
    let token = sent_ping(&mut c, now, d2).expect("the probe's ping");
    let mut t = now + rtt(d2);
    c.handle_message(t, d2, msg(&[Frame::Pong(token)])).unwrap();
    let game = c.open_stream(t, NODE, "svc").unwrap();
    let mut on = Vec::new();
    for _ in 0..8 {
        c.stream_write(game, Bytes::from(vec![2u8; 100])).unwrap();
        on.clear();
        let mut pongs = Vec::new();
        // Link 2, the measured lane, sends first: link 1 gets the copies.
        for l in [d2, d1, r3, r4] {
            for f in sent(&mut c, t, l) {
                match f {
                    Frame::Data { stream, .. } if stream == game => on.push(l),
                    Frame::Ping(token) => pongs.push((t + rtt(l), l, token)),
                    _ => {}
                }
            }
        }
        pongs.sort();
        for (at, l, token) in pongs {
            c.handle_message(at, l, msg(&[Frame::Pong(token)])).unwrap();
        }
        t += ms(100);
    }
    on.sort();
    assert_eq!(on, vec![r3, r4], "the last segment went on {on:?}");
}

/// A message on a relayed link means the peer was heard through another node, whether the link
/// lives on or not; one on a direct link does not count as such. A probe pings the relayed
/// links only, at once, and the peer's answer is heard.
#[test]
fn the_peer_heard_through_a_relay_is_remembered_and_probed_for() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let (mut c, mut s) = (Session::new(Role::Client, Config::default()), server(16).0);
    let (direct, relayed) = (LinkId(1), LinkId(2));
    for e in [&mut c, &mut s] {
        e.add_link(t0, direct);
        e.add_relayed_link(t0, relayed);
    }
    assert_eq!(s.heard_through_relay(), None);
    s.handle_message(t0 + ms(1), direct, msg(&[Frame::Ping(9)]))
        .unwrap();
    assert_eq!(s.heard_through_relay(), None, "a direct link's message");
    s.handle_message(t0 + ms(2), relayed, msg(&[Frame::Ping(10)]))
        .unwrap();
    assert_eq!(s.heard_through_relay(), Some(t0 + ms(2)));
    s.remove_link(relayed);
    assert_eq!(
        s.heard_through_relay(),
        Some(t0 + ms(2)),
        "outlives its link"
    );

    // New links ping at once, for their first RTT sample; answered, they are idle and ping
    // again at the keepalive, unless probed.
    for l in [direct, relayed] {
        if let Some(token) = sent_ping(&mut c, t0, l) {
            c.handle_message(t0 + ms(1), l, msg(&[Frame::Pong(token)]))
                .unwrap();
        }
    }
    let now = t0 + ms(100);
    assert_eq!(sent_ping(&mut c, now, relayed), None);
    assert_eq!(sent_ping(&mut c, now, direct), None);
    c.probe_relayed(now);
    assert_eq!(
        sent_ping(&mut c, now, direct),
        None,
        "direct links are not probed"
    );
    let token = sent_ping(&mut c, now, relayed).expect("the relayed link pings at once");
    c.handle_message(now + ms(5), relayed, msg(&[Frame::Pong(token)]))
        .unwrap();
    assert_eq!(c.heard_through_relay(), Some(now + ms(5)));
    // A session started afresh forgets it.
    c.restart();
    assert_eq!(c.heard_through_relay(), None);
}

/// With no direct link to a node for its grace, the client resets its pinned streams only
/// (`RESET` code `NO_PATH`); the striped ones go on.
#[test]
fn reset_pinned_resets_the_pinned_streams_only() {
    let now = Instant::now();
    let mut c = Session::new(Role::Client, Config::default());
    c.add_relayed_link(now, LinkId(2));
    let pinned = c.open_stream_spread(now, NODE, "svc", true).unwrap();
    let striped = c.open_stream_spread(now, NODE, "svc", false).unwrap();
    assert_eq!(c.reset_pinned(reset::NO_PATH), 1);
    assert!(c.stream_send_capacity(pinned).is_err(), "pinned is reset");
    assert!(c.stream_send_capacity(striped).is_ok(), "striped lives on");
    let frames = sent(&mut c, now, LinkId(2));
    assert!(frames.iter().any(|f| matches!(
        f,
        Frame::Reset { stream, code, .. } if *stream == pinned && *code == reset::NO_PATH
    )));
    assert_eq!(c.reset_pinned(reset::NO_PATH), 0, "once");
}
