//! Hostile input to a real server node on loopback: clients with the wrong credentials get
//! nothing, and garbage or cut-short handshakes neither crash the node nor stop it from serving
//! good clients; an authenticated client gets no more links and sessions than the limits allow.
//! (Memory under a garbage flood is measured alone in `tests/memory.rs`, under hostile
//! authenticated clients in `tests/memory_hostile_*.rs`.)

use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use wanmux_config::ClientAuth;
use wanmux_core::keys::{generate_keypair, Psk};
use wanmux_tests::harness::{panics, read_end, within, Auth, ReadEnd, Tunnel};
use wanmux_tests::hostile::{
    capture_first_message, garbage_flood, noise_auth, try_handshake, try_quic_dial, Garbage,
    RawLink,
};

const LIMIT: Duration = Duration::from_secs(60);
const IK: Auth = Auth::Static { psk: false };
const IKPSK2: Auth = Auth::Static { psk: true };

/// Starts a tunnel with one good client, then a second client whose config `spoil` changed so
/// the server must refuse it. Checks that the bad client's handshakes fail, that a connection
/// through it gets no data and reaches nothing, that the server holds no session for it, and
/// that the good client still works.
async fn refused_client(auth: Auth, spoil: impl FnOnce(&mut ClientAuth)) {
    within(LIMIT, async {
        let before = panics();
        let mut t = Tunnel::start(auth, 1).await;
        let mut bad_cfg = t.client_config.clone();
        spoil(&mut bad_cfg.auth);
        // The handshake itself, directly: refused.
        let end = try_handshake(t.server.local_addr(), &noise_auth(&bad_cfg)).await;
        assert!(end.is_err(), "server accepted a bad client's handshake");
        // The bad client daemon, as a user would run it.
        let bad = wanmux_client::start(bad_cfg).await.expect("client starts");
        let mut tcp = TcpStream::connect(bad.first_addr()).await.expect("connect");
        // A header asking the application server for 1000 bytes, and some upload.
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&1000u64.to_be_bytes());
        let _ = tcp.write_all(&header).await;
        let _ = tcp.write_all(&[0x55; 1000]).await;
        // Over a second: the bad client retries with backoff several times meanwhile.
        let end = read_end(&mut tcp, Duration::from_millis(1500)).await;
        assert!(
            matches!(end, ReadEnd::Hang | ReadEnd::Eof | ReadEnd::Reset),
            "a refused client's connection saw {end:?}"
        );
        assert_eq!(bad.live_links(), 0, "a refused client has a link");
        assert_eq!(
            t.app.accepted(),
            0,
            "a refused client reached the app server"
        );
        assert_eq!(
            t.server.session_count(),
            1,
            "a session for a refused client"
        );
        bad.shutdown();
        t.check_transfer(1000, 1000, 1).await;
        assert_eq!(t.app.accepted(), 1);
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_psk_nnpsk0_is_refused() {
    refused_client(Auth::Psk, |auth| match auth {
        ClientAuth::PskOnly { psk, .. } => *psk = Psk::generate(),
        _ => unreachable!("PSK-only config"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_psk_ikpsk2_is_refused() {
    refused_client(IKPSK2, |auth| match auth {
        ClientAuth::StaticKey { psk, .. } => *psk = Some(Psk::generate()),
        _ => unreachable!("static-key config"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_psk_ikpsk2_is_refused() {
    // The client speaks IK to a server that requires IKpsk2.
    refused_client(IKPSK2, |auth| match auth {
        ClientAuth::StaticKey { psk, .. } => *psk = None,
        _ => unreachable!("static-key config"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_client_key_is_refused() {
    refused_client(IK, |auth| match auth {
        ClientAuth::StaticKey { private_key, .. } => *private_key = generate_keypair().0,
        _ => unreachable!("static-key config"),
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pinned_server_key_is_refused() {
    refused_client(IK, |auth| match auth {
        ClientAuth::StaticKey { nodes, .. } => nodes[0].public_key = generate_keypair().1,
        _ => unreachable!("static-key config"),
    })
    .await;
}

/// Every kind of garbage and cut-short handshake, many times over, against a node in each
/// auth mode: nothing panics, no session appears, and both the connected client and a freshly
/// started one still move data.
async fn garbage_then_serve(auth: Auth) {
    within(LIMIT, async {
        let before = panics();
        let mut t = Tunnel::start_with(auth, 2, |s, _| {
            // Stalled handshakes end at this timeout.
            s.handshake_timeout = Duration::from_millis(500);
        })
        .await;
        let first = capture_first_message(&noise_auth(&t.client_config)).await;
        let server = t.server.local_addr();
        let limit = Duration::from_secs(5);
        garbage_flood(server, first.clone(), &Garbage::QUICK, 800, 16, limit).await;
        garbage_flood(server, first, &[Garbage::Stall], 40, 40, limit).await;
        assert_eq!(t.server.session_count(), 1, "garbage made a session");
        // The client connected before the flood still works...
        t.check_transfer(1 << 20, 1 << 20, 1).await;
        // ...and so does a new one, which must complete fresh handshakes.
        let fresh = wanmux_client::start(t.client_config.clone())
            .await
            .expect("client starts");
        tokio::time::timeout(Duration::from_secs(10), fresh.wait_for_links(2))
            .await
            .expect("a new client's links come up after the flood");
        let c = wanmux_tests::harness::transfer(fresh.first_addr(), 4096, 4096, 2)
            .await
            .expect("transfer through the new client");
        let a = t.app.results.recv().await.expect("app server result");
        assert_eq!((c.sent, c.received), (a.received, a.sent));
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_then_serve_ik() {
    garbage_then_serve(IK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_then_serve_ikpsk2() {
    garbage_then_serve(IKPSK2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_then_serve_nnpsk0() {
    garbage_then_serve(Auth::Psk).await;
}

/// Opens `count` links into session `session` of the node with `auth` and keeps them; returns
/// them with how many of them the node took (a link it refuses completes its handshake and is
/// closed at its key confirmation, so its first `PING` gets no `PONG`).
async fn links_into(
    server: std::net::SocketAddr,
    auth: &wanmux_core::noise::ClientAuth,
    session: [u8; 32],
    count: u32,
) -> (Vec<RawLink>, usize) {
    let mut links = Vec::new();
    let mut taken = 0;
    for seq in 0..count {
        let mut link = RawLink::connect(server, auth, session, seq)
            .await
            .expect("an allowed client's handshake");
        if link.sync(Duration::from_secs(5)).await.is_ok() {
            taken += 1;
        }
        links.push(link);
    }
    (links, taken)
}

/// Raises the soft limit on open files to hold `need` of them.
fn enough_files(need: u64) {
    let got = rlimit::increase_nofile_limit(need).expect("raise RLIMIT_NOFILE");
    assert!(got >= need, "RLIMIT_NOFILE {got}, need {need}");
}

/// Issue 23, finding 2: an authenticated client opens 320 links into one session; the node
/// takes `limits.max_links_per_session` (300 by default) and closes the others, and a link that
/// closes gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_per_session_are_capped() {
    enough_files(2048);
    within(LIMIT, async {
        let before = panics();
        let mut t = Tunnel::start(IK, 1).await;
        let auth = noise_auth(&t.client_config);
        let session: [u8; 32] = rand::random();
        let (mut links, taken) = links_into(t.server.local_addr(), &auth, session, 320).await;
        assert_eq!(taken, 300, "links the node took into one session");
        links.truncate(10);
        // The node sees the others close, and takes new links again.
        let mut again = 0;
        for seq in 0..50 {
            let mut link = RawLink::connect(t.server.local_addr(), &auth, session, 1000 + seq)
                .await
                .expect("handshake");
            if link.sync(Duration::from_secs(5)).await.is_ok() {
                again += 1;
                links.push(link);
                if again == 5 {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(again, 5, "closed links gave their places back");
        t.check_transfer(1 << 16, 1 << 16, 1).await;
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

/// Issue 23, finding 2: one client key asks for 20 sessions; the node holds
/// `limits.max_sessions_per_client` (8 by default, one of them the tunnel's own client's) and
/// refuses the links of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_per_client_key_are_capped() {
    within(LIMIT, async {
        let before = panics();
        let mut t = Tunnel::start(IK, 1).await;
        let auth = noise_auth(&t.client_config);
        let mut links = Vec::new();
        let mut taken = 0;
        for _ in 0..20 {
            let (mut l, n) = links_into(t.server.local_addr(), &auth, rand::random(), 1).await;
            taken += n;
            links.append(&mut l);
        }
        assert_eq!(taken, 7, "sessions the node started for one client key");
        assert_eq!(t.server.session_count(), 8);
        t.check_transfer(1 << 16, 1 << 16, 1).await;
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

/// `limits.max_sessions`: clients with keys of their own, one session each, up to the node's
/// total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_in_total_are_capped() {
    within(LIMIT, async {
        let before = panics();
        let keys: Vec<_> = (0..6).map(|_| generate_keypair()).collect();
        let mut t = Tunnel::start_with(IK, 1, |s, _| {
            s.limits.max_sessions = 4;
            if let wanmux_config::ServerAuth::StaticKey {
                allowed_clients, ..
            } = &mut s.auth
            {
                allowed_clients.extend(keys.iter().map(|(_, public)| *public));
            }
        })
        .await;
        let mut links = Vec::new();
        let mut taken = 0;
        for (private, _) in &keys {
            let mut cfg = t.client_config.clone();
            if let ClientAuth::StaticKey { private_key, .. } = &mut cfg.auth {
                *private_key = private.clone();
            }
            let (mut l, n) =
                links_into(t.server.local_addr(), &noise_auth(&cfg), rand::random(), 1).await;
            taken += n;
            links.append(&mut l);
        }
        assert_eq!(taken, 3, "sessions beside the tunnel's own client's");
        assert_eq!(t.server.session_count(), 4);
        t.check_transfer(1 << 16, 1 << 16, 1).await;
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

/// Issue 23, finding 5: a client that opens bulk downloads and never acknowledges a byte (no
/// `WINDOW` at all) leaves everything the node sends it, and everything the node read for it
/// from the service, in the node's send buffers, which a memory cap shared by all clients would
/// let it fill. Another client's echo must keep answering, promptly, all along: the node gives
/// each client a fair share of the pool (`limits.memory`, docs/CONFIG.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_acks_does_not_starve_another() {
    use wanmux_core::budget::Pool;
    use wanmux_tests::harness::{eventually, transfer, SERVICE};
    use wanmux_tests::hostile::wire;
    within(LIMIT, async {
        let before = panics();
        let (hostile_key, hostile_public) = generate_keypair();
        let mut t = Tunnel::start_with(IK, 1, |s, _| {
            // The smallest cap the config allows: 4 MiB per pool, a 4 MiB stream window.
            s.limits.memory = 8 << 20;
            s.limits.stream_window = 4 << 20;
            if let wanmux_config::ServerAuth::StaticKey {
                allowed_clients, ..
            } = &mut s.auth
            {
                allowed_clients.insert(hostile_public);
            }
        })
        .await;
        // A well-behaved echo first, to compare against.
        let started = std::time::Instant::now();
        t.check_transfer(1000, 1000, 100).await;
        let calm = started.elapsed();
        let mut cfg = t.client_config.clone();
        if let ClientAuth::StaticKey { private_key, .. } = &mut cfg.auth {
            *private_key = hostile_key;
        }
        let mut hostile =
            RawLink::connect(t.server.local_addr(), &noise_auth(&cfg), rand::random(), 0)
                .await
                .expect("the hostile client's handshake");
        // Eight downloads of 1 GiB each, none ever acknowledged: together they ask the node to
        // buffer eight stream windows (32 MiB), eight times its send pool.
        for s in 0..8u64 {
            let mut f = Vec::new();
            wire::open(&mut f, wire::stream(s), SERVICE);
            let mut header = [0u8; 16];
            header[..8].copy_from_slice(&(1u64 << 30).to_be_bytes());
            header[8..].copy_from_slice(&(1000 + s).to_be_bytes());
            wire::data(&mut f, wire::stream(s), 0, &header);
            hostile.send(&f).await.expect("send");
        }
        hostile.sync(Duration::from_secs(10)).await.expect("sync");
        let budget = t.server.budget().clone();
        let cap = budget.cap();
        // The node has read from the service all it will for the hostile client (its share
        // of the pool, or on a node without shares the whole pool).
        assert!(
            eventually(Duration::from_secs(20), || budget.used(Pool::Send)
                >= cap * 2 / 5)
            .await,
            "the hostile client's downloads did not fill the send pool: {budget:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut slowest = Duration::ZERO;
        for round in 0..10u64 {
            // The hostile client keeps its link (answers the node's pings), never its windows.
            hostile
                .sync(Duration::from_secs(10))
                .await
                .expect("hostile link kept");
            let started = std::time::Instant::now();
            let seed = 200 + round;
            let echo =
                tokio::time::timeout(Duration::from_secs(5), transfer(t.addr(), 1000, 1000, seed))
                    .await
                    .unwrap_or_else(|_| panic!("echo {round} got no reply within 5 s: {budget:?}"))
                    .expect("echo");
            t.check_result(echo, seed, 1000, 1000).await;
            slowest = slowest.max(started.elapsed());
        }
        let used = budget.used(Pool::Send);
        println!(
            "echo before the hostile client {calm:?}, slowest of 10 beside it {slowest:?}; \
             send pool {used} of {cap} bytes"
        );
        assert!(
            slowest < Duration::from_secs(2),
            "an echo took {slowest:?} beside the hostile client"
        );
        // The pool holds what the cap allows, plus one socket read per worker thread.
        assert!(
            used <= cap + 2 * (256 << 10),
            "send pool {used} over its cap {cap}"
        );
        assert_eq!(panics(), before, "something panicked");
    })
    .await;
}

/// Stalled handshakes from one address do not lock it out (a trial's finding): 20 connections
/// from 127.0.0.1 that send the first byte of message 1 and then nothing, more than the 16 one
/// source may have in progress. Each new handshake takes over the oldest stalled one's slot (its
/// connection closes) instead of being refused until the stalled ones time out, so an honest
/// client from the same address gets its links at once, and moves data (hashes both ways).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_do_not_lock_their_address_out() {
    wanmux_tests::harness::init_tracing();
    within(LIMIT, async {
        let mut t = Tunnel::start_with(IK, 1, |s, _| {
            s.handshake_timeout = Duration::from_secs(30);
        })
        .await;
        let mut stalled = Vec::new();
        for _ in 0..20 {
            let mut tcp = TcpStream::connect(t.server.local_addr()).await.unwrap();
            // A valid mode byte (IK), so the node waits for the rest of message 1.
            tcp.write_all(&[0x11]).await.unwrap();
            stalled.push(tcp);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut config = t.client_config.clone();
        config.maps[0].listen = "127.0.0.1:0".parse().unwrap();
        let started = std::time::Instant::now();
        let second = wanmux_client::start(config).await.expect("client starts");
        tokio::time::timeout(Duration::from_secs(5), second.wait_for_links(1))
            .await
            .expect("the honest client's links come up beside the stalled handshakes");
        println!("links up after {:?}", started.elapsed());
        // The oldest stalled connections were closed for newer handshakes.
        let mut closed = 0;
        for tcp in &mut stalled {
            if read_end(tcp, Duration::from_millis(50)).await != ReadEnd::Hang {
                closed += 1;
            }
        }
        assert!(closed >= 4, "{closed} stalled connections closed");
        let c = wanmux_tests::harness::transfer(second.first_addr(), 100_000, 100_000, 7)
            .await
            .expect("a transfer through the second client");
        let a = t.app.results.recv().await.expect("app server result");
        assert_eq!((a.received, a.sent), (c.sent, c.received));
        second.shutdown();
        t.check_transfer(1000, 1000, 1).await;
    })
    .await;
}

/// Checks that of `dials` handshakes since `started` (refused at the key check, or before it as
/// `busy`), at most `limits.handshake_rate = 2`'s burst of 8 and what the rate refilled since
/// (slow on a loaded machine) reached the key check.
fn rate_limited(t: &Tunnel, started: std::time::Instant, dials: u64) {
    let most = 8 + (2.0 * started.elapsed().as_secs_f64()).ceil() as u64;
    let failures = t.server.status().handshake_failures;
    assert!(
        failures["unknown_client"] <= most,
        "{failures:?} in {:?}",
        started.elapsed()
    );
    assert_eq!(
        failures["unknown_client"] + failures["busy"],
        dials,
        "{failures:?}"
    );
}

/// The same over QUIC: a trial made 1,017 TLS handshakes a second from one address, none
/// refused, since only validated addresses were counted and a QUIC connection was validated
/// only under a flood. With `limits.handshake_rate = 2`, 40 QUIC dials of a key the node does
/// not allow, back to back: half the rate's burst goes in unvalidated, the next get a Retry and
/// come back validated, where the other half reaches the key check and the rest are refused
/// (`busy`): the rate's burst in all, not twice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_quic_handshakes_from_one_source_are_rate_limited() {
    within(LIMIT, async {
        let mut t = Tunnel::start_with(IK, 1, |s, c| {
            s.quic = true;
            s.limits.handshake_rate = 2;
            c.transport = wanmux_config::LinkTransport::Quic;
        })
        .await;
        let mut stranger = t.client_config.clone();
        if let ClientAuth::StaticKey { private_key, .. } = &mut stranger.auth {
            *private_key = generate_keypair().0;
        }
        let auth = noise_auth(&stranger);
        let node = t.server.quic_addr().expect("QUIC endpoint");
        let started = std::time::Instant::now();
        for _ in 0..40 {
            assert!(try_quic_dial(node, &auth).await.is_err());
        }
        rate_limited(&t, started, 40);
        // The tunnel's own link, made before, carries on.
        t.check_transfer(1000, 1000, 1).await;
    })
    .await;
}

/// New handshakes from one source are rate-limited before the node spends anything on them (a
/// trial's recorded message 1, sent again and again, made a node spend two Diffie-Hellman
/// operations on each, a whole CPU's worth, for nothing). With `limits.handshake_rate = 2` (a
/// burst of 8), 40 handshakes of a key the node does not allow, back to back from 127.0.0.1:
/// at most the burst reaches the key check, the rest are closed at once (`busy`); once the
/// rate refills, the honest client's link still comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_handshakes_from_one_source_are_rate_limited() {
    within(LIMIT, async {
        let mut t = Tunnel::start_with(IK, 1, |s, _| {
            s.limits.handshake_rate = 2;
        })
        .await;
        let mut stranger = t.client_config.clone();
        if let ClientAuth::StaticKey { private_key, .. } = &mut stranger.auth {
            *private_key = generate_keypair().0;
        }
        let auth = noise_auth(&stranger);
        let started = std::time::Instant::now();
        for _ in 0..40 {
            assert!(try_handshake(t.server.local_addr(), &auth).await.is_err());
        }
        rate_limited(&t, started, 40);
        // The tunnel's own link, made before, carries on; after a second, so does a new one.
        t.check_transfer(1000, 1000, 1).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut config = t.client_config.clone();
        config.maps[0].listen = "127.0.0.1:0".parse().unwrap();
        let second = wanmux_client::start(config).await.expect("client starts");
        tokio::time::timeout(Duration::from_secs(10), second.wait_for_links(1))
            .await
            .expect("a new link once the rate refilled");
        second.shutdown();
    })
    .await;
}
