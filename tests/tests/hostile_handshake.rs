//! Attacks on the link handshake, written against the wire protocol (`wanmux_tests::noise_wire`,
//! `snow` alone): a PSK holder who read a session's id from a recorded message 1 must not join
//! that session, and a recorded message 1 sent again must get no answer.

use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wanmux_config::ClientAuth;
use wanmux_tests::harness::{eventually, within, Auth, Tunnel};
use wanmux_tests::noise_wire::{now_ns, open_psk_hello, psk_join, replay, Hello, Tap};

const LIMIT: Duration = Duration::from_secs(60);

/// A tunnel of one link whose connections to the node go through a [`Tap`].
async fn tapped(auth: Auth) -> (Tunnel, Tap) {
    Tunnel::start_fronted(
        auth,
        1,
        |_, _| {},
        async |server| {
            let tap = Tap::start(server).await;
            let addr = tap.addr();
            (tap, vec![addr])
        },
    )
    .await
}

/// Finding: any PSK holder could read a session's id from the victim's message 1, join the
/// session and receive its streams' data. A join must need the secret only the session's own
/// client holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psk_holder_cannot_join_another_clients_session() {
    within(LIMIT, async {
        let (t, tap) = tapped(Auth::Psk).await;
        let psk = match &t.client_config.auth {
            ClientAuth::PskOnly { psk, .. } => *psk.as_bytes(),
            _ => unreachable!("PSK-only config"),
        };
        // The victim downloads; it has read some of it when its link is cut.
        let mut victim = TcpStream::connect(t.addr()).await.expect("connect");
        let mut header = [0u8; 16];
        header[..8].copy_from_slice(&(64u64 << 20).to_be_bytes());
        victim.write_all(&header).await.expect("header");
        let mut buf = vec![0u8; 1 << 20];
        victim.read_exact(&mut buf).await.expect("first MiB");
        let firsts = tap.firsts();
        assert_eq!(firsts.len(), 1, "one link");
        let hello = open_psk_hello(&psk, &firsts[0]);
        tap.cut();
        assert!(
            eventually(Duration::from_secs(5), || t.server.link_count() == 0).await,
            "the victim's link is gone at the node"
        );
        // The attacker does not have the session's secret: it sends one of its own.
        let guess: [u8; 32] = rand::random();
        let joined = psk_join(
            t.server.local_addr(),
            &psk,
            Hello {
                session_id: hello.session_id,
                link_seq: hello.link_seq + 1,
                timestamp: now_ns(),
            },
            &guess,
            Duration::from_secs(3),
        )
        .await;
        assert_eq!(
            (joined.messages, joined.data_bytes),
            (0, 0),
            "a PSK holder joined another client's session: {joined:?}"
        );
        assert_eq!(
            t.server.link_count(),
            0,
            "the node kept the attacker's link"
        );
    })
    .await;
}

/// The replay protection must not let a PSK holder lock a client out of its own session: a
/// message 1 for the session with a timestamp far ahead (which fails its key confirmation) must
/// not raise the floor the client's next link is compared with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_psk_holder_cannot_lock_a_client_out_of_its_session() {
    within(LIMIT, async {
        let (mut t, tap) = tapped(Auth::Psk).await;
        let psk = match &t.client_config.auth {
            ClientAuth::PskOnly { psk, .. } => *psk.as_bytes(),
            _ => unreachable!("PSK-only config"),
        };
        let hello = open_psk_hello(&psk, &tap.firsts()[0]);
        let guess: [u8; 32] = rand::random();
        let joined = psk_join(
            t.server.local_addr(),
            &psk,
            Hello {
                session_id: hello.session_id,
                link_seq: hello.link_seq + 1,
                timestamp: u64::MAX - 1,
            },
            &guess,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(joined.messages, 0, "{joined:?}");
        // The client's link drops; it dials again, with its own clock.
        tap.reset();
        let back = eventually(Duration::from_secs(10), || {
            tap.firsts().len() >= 2 && t.client.live_links() == 1 && t.server.link_count() == 1
        })
        .await;
        assert!(
            back,
            "the client's link did not come back ({} dials)",
            tap.firsts().len()
        );
        t.check_transfer(1 << 20, 1 << 20, 1).await;
    })
    .await;
}

/// Finding: a recorded message 1, sent again, was answered every time (a message 2 tells an
/// observer the client is still allowed, and costs the node four DH operations).
async fn replay_gets_no_answer(auth: Auth) {
    within(LIMIT, async {
        let (mut t, tap) = tapped(auth).await;
        let firsts = tap.firsts();
        assert_eq!(firsts.len(), 1, "one link");
        for _ in 0..3 {
            let got = replay(t.server.local_addr(), &firsts[0], Duration::from_secs(1)).await;
            assert_eq!(got, 0, "the node answered a replayed message 1 ({auth:?})");
        }
        // The real client's link is unharmed.
        t.check_transfer(1 << 20, 1 << 20, 1).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_ik_message_1_gets_no_answer() {
    replay_gets_no_answer(Auth::Static { psk: false }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_ikpsk2_message_1_gets_no_answer() {
    replay_gets_no_answer(Auth::Static { psk: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_nnpsk0_message_1_gets_no_answer() {
    replay_gets_no_answer(Auth::Psk).await;
}
