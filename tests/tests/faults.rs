//! Link faults on real sockets: links go through a fault-injecting relay
//! ([`wanmux_tests::fault`]) that resets, stalls or blackholes them mid-transfer. Streams must
//! survive every fault that a link can recover from within the session grace, with every byte
//! intact (hashes, both directions), and end cleanly on both sides when the grace runs out.

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wanmux_relay::{Dir, Links, Relay};
use wanmux_tests::fault::{relayed_tunnel, wait_quiet};
use wanmux_tests::harness::{
    add_map, add_service, drain_end, eventually, holds_until, paused_transfer, raw_pair, transfer,
    within, Auth, ReadEnd, Tunnel,
};

const MIB: u64 = 1 << 20;
const IK: Auth = Auth::Static { psk: false };
/// Windows of 8 MiB per stream, so that the daemons cannot buffer the rest of a paused 32 MiB
/// transfer each way before a fault starts: it must cross the links after the fault, and so
/// cannot finish during it (with the default 64 MiB windows it sometimes could).
fn small_windows(server: &mut wanmux_config::Limits, client: &mut wanmux_config::Limits) {
    for l in [server, client] {
        l.stream_window = 8 * MIB;
        l.session_window = 16 * MIB;
    }
}

/// What the links carry between two kills in the kill test.
const BETWEEN_KILLS: u64 = 4 * MIB;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_links_one_by_one_loses_nothing_256mib_both_ways() {
    within(Duration::from_secs(120), async {
        let (mut t, relay) = relayed_tunnel(IK, 4, |_, _| {}).await;
        let (up, down, seed) = (256 * MIB, 256 * MIB, 11);
        let started = Instant::now();
        let running = tokio::spawn(transfer(t.addr(), up, down, seed));
        let mut kills = 0;
        loop {
            // Kill only while all four links are up, so at most one is down at any time.
            let ready = eventually(Duration::from_secs(10), || {
                running.is_finished() || t.client.live_links() == 4
            })
            .await;
            assert!(
                ready,
                "{} links up 10 s after a kill",
                t.client.live_links()
            );
            if running.is_finished() {
                break;
            }
            assert_eq!(relay.reset(Links::Oldest), 1, "no open link to kill");
            kills += 1;
            let noticed = eventually(Duration::from_secs(5), || t.client.live_links() < 4).await;
            assert!(noticed, "the client did not notice a reset link");
            // The links carry data before the next kill.
            let next = relay.forwarded_both() + BETWEEN_KILLS;
            let carried = eventually(Duration::from_secs(10), || {
                running.is_finished() || relay.forwarded_both() >= next
            })
            .await;
            assert!(carried, "nothing moved for 10 s after kill {kills}");
        }
        let c = running.await.unwrap().expect("transfer survives the kills");
        let took = started.elapsed();
        t.check_result(c, seed, up, down).await;
        println!(
            "256 MiB each way over 4 links, {kills} links killed one by one: {took:?}, \
             {} connections accepted by the relay",
            relay.accepted()
        );
        assert!(
            kills >= 4,
            "only {kills} kills during the transfer: every link should die at least once"
        );
        assert_eq!(t.app.accepted(), 1, "the application connection was redone");
        assert_eq!(t.server.session_count(), 1, "the session was not resumed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholing_every_link_for_5s_then_restoring_loses_nothing() {
    within(Duration::from_secs(60), async {
        let (mut t, relay) = relayed_tunnel(IK, 4, |s, c| {
            // Dials into the blackhole give up after a second, not the default ten.
            c.handshake_timeout = Duration::from_secs(1);
            small_windows(&mut s.limits, &mut c.limits);
        })
        .await;
        let (up, down, seed) = (32 * MIB, 32 * MIB, 21);
        let (running, gate) = paused_transfer(t.addr(), up, down, seed, 8 * MIB).await;
        let accepted = relay.accepted();

        // Every link and every redial goes into the blackhole, with the transfer running.
        relay.blackhole(Links::All);
        let blackholed = Instant::now();
        gate.open();
        // A link carrying data is dead within its dead timer (2 s here); an idle one is probed
        // when the first dies and dead one timer later. The bound leaves room for a loaded
        // machine's slow timers.
        let dead = eventually(Duration::from_secs(10), || t.client.live_links() == 0).await;
        let detected = blackholed.elapsed();
        assert!(
            dead,
            "{} links still up after 10 s in a blackhole",
            t.client.live_links()
        );
        // The dead timer runs from the ping it waits for, which may have gone out just before
        // the blackhole began (its pong swallowed): in one CI run 0.2 ms before, read as 1.9998
        // s. A link declared dead early, by a wrong timer, would read far below this bound.
        assert!(
            detected >= Duration::from_millis(1900),
            "links declared dead after {detected:?}, before the 2 s minimum (less a ping's flight)"
        );
        // The blackhole lasts 5 s: no link comes up through it, the transfer cannot finish.
        let held = holds_until(blackholed + Duration::from_secs(5), || {
            t.client.live_links() == 0 && !running.is_finished()
        })
        .await;
        assert!(
            held,
            "in the blackhole: {} links up, transfer finished: {}",
            t.client.live_links(),
            running.is_finished()
        );
        assert!(
            swallowed(&relay) > 0,
            "the blackhole swallowed nothing: the transfer was not sending into it"
        );

        relay.restore(Links::All);
        let restored = Instant::now();
        let c = running
            .await
            .unwrap()
            .expect("transfer survives the blackhole");
        let recovered = restored.elapsed();
        t.check_result(c, seed, up, down).await;
        println!(
            "blackhole: links dead after {detected:?}, transfer done {recovered:?} after \
             restore, {} redials",
            relay.accepted() - accepted
        );
        assert!(relay.accepted() > accepted, "the client never redialled");
        assert_eq!(t.app.accepted(), 1, "the application connection was redone");
        assert_eq!(t.server.session_count(), 1, "the session was not resumed");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_shorter_than_the_ping_timeout_kills_no_link() {
    within(Duration::from_secs(60), async {
        let (mut t, relay) =
            relayed_tunnel(IK, 4, |s, c| small_windows(&mut s.limits, &mut c.limits)).await;
        let (up, down, seed) = (32 * MIB, 32 * MIB, 31);
        let (running, gate) = paused_transfer(t.addr(), up, down, seed, 8 * MIB).await;
        relay.stall(Links::All);
        let stalled = Instant::now();
        gate.open();
        // The stall lasts 1 s, half the shortest ping timeout: every link stays up through it.
        let held = holds_until(stalled + Duration::from_secs(1), || {
            t.client.live_links() == 4 && !running.is_finished()
        })
        .await;
        assert!(
            held,
            "in the stall: {} links up, transfer finished: {}",
            t.client.live_links(),
            running.is_finished()
        );
        relay.resume(Links::All);
        let c = running.await.unwrap().expect("transfer survives the stall");
        t.check_result(c, seed, up, down).await;
        assert_eq!(
            relay.accepted(),
            4,
            "a link was redialled after a 1 s stall"
        );
        assert_eq!(t.client.live_links(), 4);
    })
    .await;
}

/// A tunnel of two links through a relay, with the graces given and a 0.5 s handshake timeout
/// on the client, and one connection through it: (its application end, its service end).
async fn graced_pair(
    server_grace: Duration,
    client_grace: Duration,
) -> (Tunnel, Relay, TcpStream, TcpStream) {
    let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let (t, relay) = relayed_tunnel(IK, 2, |s, c| {
        s.session_grace = server_grace;
        c.session_grace = client_grace;
        c.handshake_timeout = Duration::from_millis(500);
        add_service(s, "raw", raw_addr);
        add_map(c, "raw");
    })
    .await;
    let (near, far) = raw_pair(&t, &raw).await;
    (t, relay, near, far)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_grace_period_closes_both_ends_and_frees_the_session() {
    const SERVER_GRACE: Duration = Duration::from_millis(1500);
    const CLIENT_GRACE: Duration = Duration::from_millis(1000);
    within(Duration::from_secs(60), async {
        let (mut t, relay, mut near, mut far) = graced_pair(SERVER_GRACE, CLIENT_GRACE).await;
        assert_eq!(t.server.session_count(), 1);

        // Every link (and every redial) stalls for longer than both graces. Both ends write,
        // so each engine has something unconfirmed on a link and pings it.
        relay.stall(Links::All);
        let stalled = Instant::now();
        near.write_all(&[1; 1024]).await.unwrap();
        far.write_all(&[2; 1024]).await.unwrap();
        let (near_end, far_end) = tokio::join!(
            async {
                let end = drain_end(&mut near, Duration::from_secs(20)).await;
                (end, stalled.elapsed())
            },
            async {
                let end = drain_end(&mut far, Duration::from_secs(20)).await;
                (end, stalled.elapsed())
            },
        );
        println!("stall: client app side {near_end:?}, server app side {far_end:?}");
        let gave_up = stalled + near_end.1;
        for (side, (end, at)) in [("client", near_end), ("server", far_end)] {
            assert!(
                matches!(end, ReadEnd::Reset | ReadEnd::Eof),
                "{side} application side after the grace: {end:?}"
            );
            // A link is declared dead after 2 s at least; the grace runs after that.
            assert!(
                at >= Duration::from_secs(2) + CLIENT_GRACE,
                "{side} application side closed after {at:?}, within the grace"
            );
        }
        assert!(
            eventually(Duration::from_secs(1), || t.server.session_count() == 0).await,
            "the server still holds the session"
        );
        assert_eq!(t.server.stream_count(), 0);
        assert_eq!(t.client.stream_count(), 0);

        // Dials that began under the old session id (stalled in their handshakes) must be over
        // before the path comes back; see `a_dial_begun_before_the_client_gave_up_does_not_join`.
        wait_dials_since(&relay, gave_up, 2).await;

        // The path comes back: the client starts a new session and new connections work.
        relay.resume(Links::All);
        let resumed = Instant::now();
        assert!(
            eventually(Duration::from_secs(15), || t.client.live_links() == 2).await,
            "links did not come back"
        );
        t.check_transfer(MIB, MIB, 41).await;
        println!(
            "new session working {:?} after the stall ended",
            resumed.elapsed()
        );
        assert_eq!(t.server.session_count(), 1);
    })
    .await;
}

/// A client that gave up its session (no link to the node for its grace, which is shorter than
/// the node's) tells the node so on its new session's first link (`FORGET`): the node ends the
/// old session at once, closing its service connections, rather than holding them until its
/// own grace is over (a trial's services saw their resets 32 s after the applications did).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_the_client_gave_up_ends_at_the_node_when_the_client_is_back() {
    const SERVER_GRACE: Duration = Duration::from_secs(60);
    const CLIENT_GRACE: Duration = Duration::from_millis(1000);
    within(Duration::from_secs(60), async {
        let (t, relay, mut near, mut far) = graced_pair(SERVER_GRACE, CLIENT_GRACE).await;

        relay.stall(Links::All);
        let stalled = Instant::now();
        near.write_all(&[1; 1024]).await.unwrap();
        far.write_all(&[2; 1024]).await.unwrap();
        let end = drain_end(&mut near, Duration::from_secs(20)).await;
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "client application side after the client's grace: {end:?}"
        );
        let gave_up = Instant::now();
        println!(
            "the client gave up its session {:?} into the stall",
            gave_up - stalled
        );
        wait_dials_since(&relay, gave_up, 2).await;
        assert_eq!(
            t.server.session_count(),
            1,
            "the node holds the old session"
        );

        relay.resume(Links::All);
        let resumed = Instant::now();
        let end = drain_end(&mut far, SERVER_GRACE / 2).await;
        let after = resumed.elapsed();
        println!("the service's connection ended {after:?} after the path came back: {end:?}");
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "server application side once the client is back: {end:?}"
        );
        assert!(
            after < Duration::from_secs(15),
            "the node held the old session {after:?} after the client came back"
        );
        assert!(
            eventually(Duration::from_secs(5), || t.server.session_count() == 1
                && t.client.live_links() == 2)
            .await,
            "the new session only: {} sessions, {} links",
            t.server.session_count(),
            t.client.live_links()
        );
        assert_eq!(t.server.stream_count(), 0);
    })
    .await;
}

/// One link, stalled past the ping timeout while both ends have frames in flight: both engines
/// declare the link dead and queue its frames again, the client redials once the path is back,
/// and the connection carries on, bytes intact.
///
/// Runs on its own one-worker runtime (what `#[tokio::main]` gives a daemon on a one-core
/// machine) under a watchdog thread: the bug this test found, a writer that spun on a link its
/// engine had timed out, froze the runtime, timers included, where [`within`] cannot fire.
#[test]
fn one_link_stalled_past_the_ping_timeout_recovers() {
    watchdog(1, Duration::from_secs(15), async {
        let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let raw_addr = raw.local_addr().unwrap();
        let (t, relay) = relayed_tunnel(IK, 1, |s, c| {
            add_service(s, "raw", raw_addr);
            add_map(c, "raw");
        })
        .await;
        let (mut near, mut far) = raw_pair(&t, &raw).await;
        relay.stall(Links::All);
        near.write_all(&[1; 1024]).await.unwrap();
        far.write_all(&[2; 1024]).await.unwrap();
        // Both ends time the link out (2 s without a pong) and queue its frames again.
        let dead = eventually(Duration::from_secs(8), || {
            t.client.resent_bytes() > 0 && t.server.resent_bytes() > 0
        })
        .await;
        assert!(
            dead,
            "the link was not timed out at both ends: {} and {} bytes queued again",
            t.client.resent_bytes(),
            t.server.resent_bytes()
        );
        relay.resume(Links::All);
        let mut buf = [0u8; 1024];
        near.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [2; 1024]);
        far.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [1; 1024]);
        assert!(relay.accepted() > 1, "the link was not redialled");
    });
}

/// The server's grace runs out while the client still believes in a link: the client's link is
/// idle, so it finds out that it is dead only at its next keepalive ping (10 s), while the
/// server, which had data in flight, found out after 2 s. When the path comes back in between,
/// the client redials under its old session id; the server has dropped that session and starts
/// a new one under the same id, which must get another epoch (the server remembers expired ids
/// for a while), so the client resets its open connection: the server reset the other end long
/// ago.
#[test]
fn a_session_the_server_expired_is_not_resumed() {
    watchdog(2, Duration::from_secs(45), async {
        let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let raw_addr = raw.local_addr().unwrap();
        let (t, relay) = relayed_tunnel(IK, 1, |s, c| {
            s.session_grace = Duration::from_millis(1500);
            c.session_grace = Duration::from_millis(1000);
            add_service(s, "raw", raw_addr);
            add_map(c, "raw");
        })
        .await;
        let (mut near, mut far) = raw_pair(&t, &raw).await;
        // The client's last frames are confirmed: it has nothing in flight.
        assert!(
            wait_quiet(&relay, Duration::from_millis(200), Duration::from_secs(5)).await,
            "the link did not go quiet"
        );

        // Only the server side has something in flight, so only the server pings.
        relay.stall(Links::All);
        far.write_all(&[2; 1024]).await.unwrap();
        // The ping timeout (5 s before any RTT sample) and the grace (1.5 s), with room for a
        // loaded machine.
        let end = drain_end(&mut far, Duration::from_secs(20)).await;
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "server side: {end:?}"
        );
        assert!(
            eventually(Duration::from_secs(1), || t.server.session_count() == 0).await,
            "the server still holds the session"
        );
        assert_eq!(
            t.client.live_links(),
            1,
            "the client already saw its link die"
        );

        // The path comes back before the client's own ping timeout.
        relay.resume(Links::All);
        let end = drain_end(&mut near, Duration::from_secs(5)).await;
        assert!(
            matches!(end, ReadEnd::Reset | ReadEnd::Eof),
            "client side of a connection whose server side is gone: {end:?}"
        );
    });
}

/// The client gives up on its session (no link for its grace) while a redial, begun under the
/// old session id, is stuck in its handshake. When that handshake completes after all, the link
/// belongs to the old id at the server, so the client must drop it rather than take it into its
/// new session (where it has no epoch yet to compare with): else a later redial under the new id
/// reaches another server session with another epoch, and the client resets every connection as
/// if the server had restarted, or with two slots both are up at once, each in another server
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dial_begun_before_the_client_gave_up_does_not_join() {
    within(Duration::from_secs(60), async {
        let raw = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let raw_addr = raw.local_addr().unwrap();
        let (t, relay) = relayed_tunnel(IK, 2, |s, c| {
            s.session_grace = Duration::from_millis(1500);
            c.session_grace = Duration::from_millis(1000);
            // Default handshake timeout (10 s): redials stay stuck in the stall until it ends.
            add_service(s, "raw", raw_addr);
            add_map(c, "raw");
        })
        .await;
        let (mut near, mut far) = raw_pair(&t, &raw).await;
        relay.stall(Links::All);
        near.write_all(&[1; 1024]).await.unwrap();
        far.write_all(&[2; 1024]).await.unwrap();
        let (a, b) = tokio::join!(
            drain_end(&mut near, Duration::from_secs(20)),
            drain_end(&mut far, Duration::from_secs(20)),
        );
        assert!(
            matches!(a, ReadEnd::Reset | ReadEnd::Eof),
            "client side: {a:?}"
        );
        assert!(
            matches!(b, ReadEnd::Reset | ReadEnd::Eof),
            "server side: {b:?}"
        );
        assert!(eventually(Duration::from_secs(1), || t.server.session_count() == 0).await);

        // The path comes back while redials under the old id are still in their handshakes.
        relay.resume(Links::All);
        assert!(eventually(Duration::from_secs(10), || t.client.live_links() == 2).await);
        let (mut near, mut far) = raw_pair(&t, &raw).await;

        // One link dies and is redialled: the session (and the connection) must carry on.
        let first = relay.forwarding_links()[0];
        relay.reset(Links::One(first));
        assert!(eventually(Duration::from_secs(2), || t.client.live_links() < 2).await);
        // A link counts as up only once its epoch was checked, and a mismatch resets every
        // connection before that: the connection's fate is settled here.
        assert!(eventually(Duration::from_secs(10), || t.client.live_links() == 2).await);
        let wrote = near.write_all(b"still").await;
        let mut buf = [0u8; 5];
        let got = tokio::time::timeout(Duration::from_secs(5), far.read_exact(&mut buf)).await;
        assert!(
            wrote.is_ok() && matches!(got, Ok(Ok(_))) && &buf == b"still",
            "the connection did not survive a link reset: write {wrote:?}, read {got:?}"
        );
        // The stale dial completed its handshake, so the server started a session for the old
        // id; the client dropped that link at once, and the server lets the empty session go
        // after its grace (1.5 s).
        assert!(
            eventually(Duration::from_secs(4), || t.server.session_count() == 1).await,
            "the client is in two server sessions"
        );
    })
    .await;
}

/// Runs `test` on a new runtime with `workers` worker threads, in its own thread, and fails if
/// it does not finish within `limit`, even when the runtime is frozen and its own timers cannot
/// fire.
fn watchdog<F>(workers: usize, limit: Duration, test: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(test);
        let _ = done.send(());
    });
    match finished.recv_timeout(limit) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("the test failed"),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the test did not finish within {limit:?}: the runtime is stuck")
        }
    }
}

/// Bytes the relay's blackhole swallowed, both directions.
fn swallowed(relay: &Relay) -> u64 {
    Dir::BOTH.iter().map(|&d| relay.swallowed(d)).sum()
}

/// Waits until the relay accepted `slots` dials after `since`. A link slot dials again only
/// once its last dial ended, and every dial into a stall times out after the same handshake
/// timeout, so then every dial begun before `since` has ended: the slot that dialled after
/// `since` had ended its own, and a slot that dialled twice did so a timeout after `since`.
async fn wait_dials_since(relay: &Relay, since: Instant, slots: usize) {
    let dialled = || {
        relay
            .accept_times()
            .iter()
            .filter(|&&at| at > since)
            .count()
    };
    assert!(
        eventually(Duration::from_secs(15), || dialled() >= slots).await,
        "{} dials since the client gave up, not {slots}",
        dialled()
    );
}
