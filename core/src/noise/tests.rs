//! Real-socket tests of the Noise link driver, on 127.0.0.1:0.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::handshake::{
    client_state, connect_with, decode_client_hello, decode_server_hello, encode_client_hello,
    encode_server_hello, timestamp_now, Cipher, Mode, Pattern,
};
use super::*;
use crate::keys::{generate_keypair, Psk};

pub(super) const PATTERNS: [Pattern; 3] = [Pattern::Ik, Pattern::IkPsk2, Pattern::NnPsk0];
const CIPHERS: [Cipher; 2] = [Cipher::ChaChaPoly, Cipher::AesGcm];
pub(super) static HELLO: ClientHello = ClientHello {
    session: SessionSecret::from_bytes([7; 32]),
    link_seq: 3,
    lane: true,
    relay: false,
};

/// What the server reads of [`HELLO`] (the timestamp aside).
pub(super) fn received(hello: &ReceivedHello) -> (([u8; 16], u32, bool), bool) {
    (
        (hello.session_id, hello.link_seq, hello.lane),
        hello.timestamp > 1_600_000_000_000_000_000,
    )
}

/// [`received`] of a genuine [`HELLO`].
pub(super) fn expected() -> (([u8; 16], u32, bool), bool) {
    ((HELLO.session.id(), HELLO.link_seq, HELLO.lane), true)
}
pub(super) const NODE: u16 = 42;
pub(super) const FIRST: &[u8] = b"\x01ping-frame";
pub(super) const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(200);

type Connected = Result<(LinkReader, LinkWriter, ServerHello), LinkError>;

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.unwrap(), server.unwrap().0)
}

/// Matching client and server credentials for `pattern`.
pub(super) struct Creds {
    pub(super) client: ClientAuth,
    pub(super) server: ServerAuth,
    pub(super) client_key: Option<PublicKey>,
}

pub(super) fn creds(pattern: Pattern) -> Creds {
    let (client_priv, client_pub) = generate_keypair();
    let (server_priv, server_pub) = generate_keypair();
    let psk = Psk::generate();
    let static_psk = (pattern == Pattern::IkPsk2).then(|| psk.clone());
    match pattern {
        Pattern::Ik | Pattern::IkPsk2 => Creds {
            client: ClientAuth::Static {
                local: client_priv,
                server: server_pub,
                psk: static_psk.clone(),
            },
            server: ServerAuth {
                private_key: Some(server_priv),
                allowed_clients: [client_pub].into(),
                psk: static_psk,
            },
            client_key: Some(client_pub),
        },
        Pattern::NnPsk0 => Creds {
            client: ClientAuth::Psk(psk.clone()),
            server: ServerAuth {
                private_key: None,
                allowed_clients: Default::default(),
                psk: Some(psk),
            },
            client_key: None,
        },
    }
}

async fn handshake(
    client: &ClientAuth,
    server: &ServerAuth,
    cipher: Cipher,
) -> (Connected, Result<Accepted, LinkError>) {
    let (c, s) = tcp_pair().await;
    tokio::join!(
        connect_with(c, client, &HELLO, FIRST, LONG, cipher),
        accept(s, server, NODE, LONG)
    )
}

/// A handshake that must succeed.
pub(super) async fn link(pattern: Pattern, cipher: Cipher) -> (LinkReader, LinkWriter, Accepted) {
    let creds = creds(pattern);
    let (client, server) = handshake(&creds.client, &creds.server, cipher).await;
    let (reader, writer, hello) = client.unwrap();
    let accepted = server.unwrap();
    assert_eq!(
        hello,
        ServerHello {
            node_id: NODE,
            epoch: 0,
            relay: false,
        }
    );
    assert_eq!(received(&accepted.hello), expected());
    assert_eq!(accepted.client_key, creds.client_key);
    assert_eq!(&accepted.first[..], FIRST);
    (reader, writer, accepted)
}

/// The client's side of a refusal: the connection ends without a byte from the server.
fn assert_refused(client: Connected) {
    match client {
        Err(LinkError::Closed) => {}
        Err(LinkError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a silent refusal, got {:?}", other.map(|_| ())),
    }
}

fn assert_auth(server: Result<Accepted, LinkError>, reason: &str) {
    match server {
        Err(LinkError::Auth(r)) => assert!(r.contains(reason), "auth error {r:?}"),
        other => panic!(
            "expected an auth error ({reason}), got {:?}",
            other.map(|_| ())
        ),
    }
}

/// Messages of random sizes in `0..=MAX_PLAINTEXT` (both ends included), random content.
pub(super) fn random_messages(seed: u64, count: usize) -> Arc<Vec<Vec<u8>>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut msgs = vec![Vec::new(), vec![0xAB; MAX_PLAINTEXT]];
    while msgs.len() < count {
        let len = match rng.random_range(0..3) {
            0 => rng.random_range(0..64),
            1 => rng.random_range(0..4096),
            _ => rng.random_range(0..=MAX_PLAINTEXT),
        };
        let mut m = vec![0; len];
        rng.fill_bytes(&mut m);
        msgs.push(m);
    }
    Arc::new(msgs)
}

/// Seals `msgs` in random batches, flushing after each, then shuts down. Each message is
/// either sealed from a slice (`seal`) or built in the output buffer (`begin`, `commit`),
/// mixed at random, with empty messages built and dropped among them.
async fn write_all(mut writer: LinkWriter, msgs: Arc<Vec<Vec<u8>>>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut it = msgs.iter().peekable();
    while it.peek().is_some() {
        let mut expected = writer.pending();
        // A clear link (`wanmux/2`) sends no tag.
        let tag = if writer.encrypts() { 16 } else { 0 };
        for m in it.by_ref().take(rng.random_range(1..=8)) {
            // (An empty message can only be sealed: `commit` drops one.)
            match rng.random_range(0..3) {
                0 => writer.seal(m).unwrap(),
                1 if m.is_empty() => writer.seal(m).unwrap(),
                1 => {
                    let mut body = writer.begin().unwrap();
                    body.extend_from_slice(m);
                    writer.commit(body).unwrap();
                }
                _ => {
                    let body = writer.begin().unwrap();
                    writer.commit(body).unwrap();
                    assert_eq!(writer.pending(), expected, "an empty message is dropped");
                    writer.seal(m).unwrap();
                }
            }
            expected += 2 + m.len() + tag;
        }
        assert_eq!(writer.pending(), expected);
        writer.flush().await.unwrap();
        assert_eq!(writer.pending(), 0);
    }
    writer.shutdown().await;
}

/// Receives until EOF and checks the messages are exactly `msgs`, in order.
async fn read_all(mut reader: LinkReader, msgs: Arc<Vec<Vec<u8>>>) {
    let mut n = 0;
    while let Some(m) = reader.recv().await.unwrap() {
        assert!(n < msgs.len(), "more messages than sent");
        assert!(m[..] == msgs[n][..], "message {n} differs");
        n += 1;
    }
    assert_eq!(n, msgs.len());
    assert!(matches!(reader.recv().await, Err(LinkError::Closed)));
}

/// Both directions at once, each half in its own task.
pub(super) async fn exchange(
    client: (LinkReader, LinkWriter),
    server: (LinkReader, LinkWriter),
    seed: u64,
) {
    let up = random_messages(seed, 120);
    let down = random_messages(seed + 1, 120);
    let tasks = [
        tokio::spawn(write_all(client.1, up.clone(), seed)),
        tokio::spawn(read_all(server.0, up)),
        tokio::spawn(write_all(server.1, down.clone(), seed + 1)),
        tokio::spawn(read_all(client.0, down)),
    ];
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn every_pattern_and_cipher_transfers_both_ways() {
    for (i, pattern) in PATTERNS.into_iter().enumerate() {
        for (j, cipher) in CIPHERS.into_iter().enumerate() {
            let (reader, writer, accepted) = link(pattern, cipher).await;
            let seed = (i * 2 + j) as u64 * 10;
            exchange((reader, writer), (accepted.reader, accepted.writer), seed).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_random_messages_round_trip_exactly() {
    for cipher in CIPHERS {
        let (reader, writer, accepted) = link(Pattern::Ik, cipher).await;
        let up = random_messages(100, 600);
        let down = random_messages(101, 600);
        let tasks = [
            tokio::spawn(write_all(writer, up.clone(), 1)),
            tokio::spawn(read_all(accepted.reader, up)),
            tokio::spawn(write_all(accepted.writer, down.clone(), 2)),
            tokio::spawn(read_all(reader, down)),
        ];
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// Messages are decrypted where they were read and handed out as slices of the read block: a
/// consumer that holds every one of them to the end still reads each intact (a block is
/// reused only once no slice of it is held), and the reader's own buffer stays within one
/// read chunk however many blocks the held slices pin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_messages_stay_intact_and_the_reader_keeps_one_block() {
    for cipher in CIPHERS {
        let (_reader, writer, mut accepted) = link(Pattern::Ik, cipher).await;
        let msgs = random_messages(200, 400);
        let sender = tokio::spawn(write_all(writer, msgs.clone(), 3));
        let mut held = Vec::new();
        while let Some(m) = accepted.reader.recv().await.unwrap() {
            assert!(
                accepted.reader.buffer_capacity() <= READ_CHUNK,
                "the reader's buffer grew to {} bytes",
                accepted.reader.buffer_capacity()
            );
            held.push(m);
        }
        sender.await.unwrap();
        assert_eq!(held.len(), msgs.len());
        for (n, (got, sent)) in held.iter().zip(msgs.iter()).enumerate() {
            assert!(got[..] == sent[..], "held message {n} differs ({cipher:?})");
        }
        let total: usize = msgs.iter().map(Vec::len).sum();
        assert!(
            total > 4 * READ_CHUNK,
            "the messages span several read blocks"
        );
        // Consumed as they come, the reader reuses its block, still within one chunk: a
        // partial message longer than what was consumed before it moves to a new block
        // rather than doubling the old one.
        let (_reader, writer, mut accepted) = link(Pattern::Ik, cipher).await;
        let msgs = random_messages(201, 1_500);
        let sender = tokio::spawn(write_all(writer, msgs.clone(), 4));
        let mut n = 0;
        while let Some(m) = accepted.reader.recv().await.unwrap() {
            assert!(m[..] == msgs[n][..], "message {n} differs ({cipher:?})");
            assert!(
                accepted.reader.buffer_capacity() <= READ_CHUNK,
                "the reader's buffer grew to {} bytes",
                accepted.reader.buffer_capacity()
            );
            n += 1;
        }
        sender.await.unwrap();
        assert_eq!(n, msgs.len());
    }
}

#[tokio::test]
async fn links_run_over_any_byte_stream() {
    // An in-memory pipe, smaller than one message, so both directions see partial reads and
    // writes. It has no socket options and no peer address.
    let (c, s) = tokio::io::duplex(4096);
    let (c_rd, c_wr) = tokio::io::split(c);
    let (s_rd, s_wr) = tokio::io::split(s);
    let creds = creds(Pattern::IkPsk2);
    let respond = |hello: &ReceivedHello, key: Option<&PublicKey>| {
        assert_eq!(received(hello), expected());
        assert_eq!(key, creds.client_key.as_ref());
        Ok(ServerHello {
            node_id: NODE,
            epoch: 5,
            relay: false,
        })
    };
    let (client, server) = tokio::join!(
        connect_stream(
            Box::new(c_rd),
            Box::new(c_wr),
            &creds.client,
            &HELLO,
            FIRST,
            LONG
        ),
        accept_stream_with(Box::new(s_rd), Box::new(s_wr), &creds.server, LONG, respond)
    );
    let (reader, writer, hello) = client.unwrap();
    let accepted = server.unwrap();
    assert_eq!(
        hello,
        ServerHello {
            node_id: NODE,
            epoch: 5,
            relay: false,
        }
    );
    assert_eq!(accepted.client_key, creds.client_key);
    assert_eq!(&accepted.first[..], FIRST);
    assert_eq!(reader.peer_addr(), None);
    assert_eq!(accepted.writer.peer_addr(), None);
    exchange((reader, writer), (accepted.reader, accepted.writer), 500).await;
}

#[tokio::test]
async fn tcp_links_know_their_peer() {
    let (reader, writer, accepted) = link(Pattern::Ik, Cipher::ChaChaPoly).await;
    let client_addr = accepted.reader.peer_addr().unwrap();
    assert_eq!(accepted.writer.peer_addr(), Some(client_addr));
    assert!(reader.peer_addr().is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(writer.peer_addr(), reader.peer_addr());
    assert!(format!("{reader:?}").contains(&reader.peer_addr().unwrap().to_string()));
}

#[tokio::test]
async fn data_sent_right_after_connect_is_kept() {
    let creds = creds(Pattern::NnPsk0);
    let (c, s) = tcp_pair().await;
    let client = async {
        let (reader, mut writer, _) =
            connect_with(c, &creds.client, &HELLO, FIRST, LONG, Cipher::ChaChaPoly).await?;
        for i in 0..5u8 {
            writer.seal(&[i; 10])?;
        }
        writer.flush().await?;
        writer.shutdown().await;
        Ok::<_, LinkError>(reader)
    };
    let (client, server) = tokio::join!(client, accept(s, &creds.server, NODE, LONG));
    let _reader = client.unwrap();
    let mut accepted = server.unwrap();
    for i in 0..5u8 {
        assert_eq!(accepted.reader.recv().await.unwrap().unwrap()[..], [i; 10]);
    }
    assert!(accepted.reader.recv().await.unwrap().is_none());
}

#[tokio::test]
async fn wrong_psk_is_refused_in_nnpsk0() {
    let creds = creds(Pattern::NnPsk0);
    let wrong = ClientAuth::Psk(Psk::generate());
    let (client, server) = handshake(&wrong, &creds.server, Cipher::ChaChaPoly).await;
    assert_auth(server, "message 1 did not decrypt");
    assert_refused(client);
}

#[tokio::test]
async fn wrong_psk_is_refused_in_ikpsk2() {
    let creds = creds(Pattern::IkPsk2);
    let ClientAuth::Static { local, server, .. } = creds.client.clone() else {
        unreachable!()
    };
    let wrong = ClientAuth::Static {
        local,
        server,
        psk: Some(Psk::generate()),
    };
    let (client, server) = handshake(&wrong, &creds.server, Cipher::AesGcm).await;
    // The server cannot tell from message 1; the client catches it in message 2 and hangs up
    // without a key confirmation.
    assert!(matches!(client, Err(LinkError::Auth(r)) if r.contains("message 2")));
    assert!(
        matches!(server, Err(LinkError::Closed)),
        "{:?}",
        server.map(|_| ())
    );
}

/// Writes `mode | len | message 1` for `auth` the way a client would, and returns the bytes.
fn message_1(mode: Mode, auth: &ClientAuth) -> (Vec<u8>, snow::HandshakeState) {
    let mut hs = client_state(mode, auth, None).unwrap();
    let mut msg = [0u8; 1024];
    let n = hs
        .write_message(&encode_client_hello(&HELLO, timestamp_now()), &mut msg)
        .unwrap();
    let mut out = vec![mode.to_byte()];
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&msg[..n]);
    (out, hs)
}

/// Plays a client that sends `msg1`, reads message 2 and then sends a forged key confirmation.
async fn forged_confirmation(server: &ServerAuth, msg1: &[u8]) -> Result<Accepted, LinkError> {
    let (mut c, s) = tcp_pair().await;
    let attacker = async {
        c.write_all(msg1).await.unwrap();
        let len = usize::from(c.read_u16().await.unwrap());
        let mut msg2 = vec![0; len];
        c.read_exact(&mut msg2).await.unwrap();
        let mut forged = vec![0, 32];
        forged.extend_from_slice(&[0x5A; 32]);
        c.write_all(&forged).await.unwrap();
        c
    };
    let (_c, server) = tokio::join!(attacker, accept(s, server, NODE, LONG));
    server
}

#[tokio::test]
async fn ikpsk2_wrong_psk_is_caught_at_key_confirmation() {
    let creds = creds(Pattern::IkPsk2);
    let ClientAuth::Static { local, server, .. } = creds.client.clone() else {
        unreachable!()
    };
    let wrong = ClientAuth::Static {
        local,
        server,
        psk: Some(Psk::generate()),
    };
    let mode = Mode {
        pattern: Pattern::IkPsk2,
        cipher: Cipher::ChaChaPoly,
    };
    let (msg1, _) = message_1(mode, &wrong);
    assert_auth(
        forged_confirmation(&creds.server, &msg1).await,
        "key confirmation",
    );
}

#[tokio::test]
async fn replayed_message_1_does_not_make_a_link() {
    let creds = creds(Pattern::Ik);
    let mode = Mode {
        pattern: Pattern::Ik,
        cipher: Cipher::AesGcm,
    };
    // A genuine message 1, as an observer would capture it, replayed to the server.
    let (msg1, _) = message_1(mode, &creds.client);
    assert_auth(
        forged_confirmation(&creds.server, &msg1).await,
        "key confirmation",
    );
    assert_auth(
        forged_confirmation(&creds.server, &msg1).await,
        "key confirmation",
    );
}

/// Sends `bytes` raw, then checks the server sent nothing back and returns its verdict.
async fn raw_client(
    server: &ServerAuth,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Accepted, LinkError> {
    let (mut c, s) = tcp_pair().await;
    let raw = async {
        c.write_all(bytes).await.unwrap();
        let mut reply = Vec::new();
        // Reset or EOF are both fine; what matters is that no byte came back.
        let _ = c.read_to_end(&mut reply).await;
        assert!(reply.is_empty(), "server replied {} bytes", reply.len());
    };
    let ((), server) = tokio::join!(raw, accept(s, server, NODE, timeout));
    server
}

#[tokio::test]
async fn unknown_client_key_is_refused_silently() {
    let creds = creds(Pattern::Ik);
    let mut server = creds.server.clone();
    server.allowed_clients = [generate_keypair().1].into();
    let (client, result) = handshake(&creds.client, &server, Cipher::ChaChaPoly).await;
    let client_key = creds.client_key.expect("IK has a client key");
    assert!(
        matches!(result, Err(LinkError::UnknownClient(k)) if k == client_key),
        "expected the unknown key {client_key} in the error"
    );
    assert_refused(client);

    let mode = Mode {
        pattern: Pattern::Ik,
        cipher: Cipher::ChaChaPoly,
    };
    let (msg1, _) = message_1(mode, &creds.client);
    assert!(matches!(
        raw_client(&server, &msg1, LONG).await,
        Err(LinkError::UnknownClient(k)) if k == client_key
    ));
}

#[tokio::test]
async fn wrong_pinned_server_key_is_refused() {
    let creds = creds(Pattern::Ik);
    let ClientAuth::Static { local, .. } = creds.client.clone() else {
        unreachable!()
    };
    let wrong = ClientAuth::Static {
        local,
        server: generate_keypair().1,
        psk: None,
    };
    let (client, server) = handshake(&wrong, &creds.server, Cipher::AesGcm).await;
    assert_auth(server, "message 1 did not decrypt");
    assert_refused(client);
}

#[tokio::test]
async fn modes_the_server_does_not_take_are_refused() {
    let ik = creds(Pattern::Ik);
    let ikpsk2 = creds(Pattern::IkPsk2);
    let nn = creds(Pattern::NnPsk0);
    let cases = [
        (&nn.client, &ik.server),
        (&nn.client, &ikpsk2.server),
        (&ik.client, &nn.server),
        (&ikpsk2.client, &nn.server),
        (&ik.client, &ikpsk2.server),
        (&ikpsk2.client, &ik.server),
    ];
    for (client, server) in cases {
        let (c, s) = handshake(client, server, Cipher::ChaChaPoly).await;
        assert_auth(s, "mode not allowed");
        assert_refused(c);
    }
    // Nothing configured: nothing allowed.
    let none = ServerAuth {
        private_key: None,
        allowed_clients: Default::default(),
        psk: None,
    };
    let (c, s) = handshake(&nn.client, &none, Cipher::AesGcm).await;
    assert_auth(s, "mode not allowed");
    assert_refused(c);
}

#[tokio::test]
async fn garbage_gives_errors_not_panics() {
    let servers = [creds(Pattern::Ik).server, creds(Pattern::NnPsk0).server];
    let mut rng = StdRng::seed_from_u64(7);
    for i in 0..60 {
        let mut bytes = vec![0; rng.random_range(0..3000)];
        rng.fill_bytes(&mut bytes);
        // Half the time, a valid mode byte and a plausible length, so the garbage reaches snow.
        if i % 2 == 0 && bytes.len() > 3 {
            bytes[0] = [0x11, 0x22, 0x31, 0x32][i % 4];
            bytes[1] = 0;
            bytes[2] = rng.random_range(0..=255);
        }
        let (mut c, s) = tcp_pair().await;
        let send = async {
            let _ = c.write_all(&bytes).await;
            let _ = c.shutdown().await;
            c
        };
        let (_c, result) = tokio::join!(send, accept(s, &servers[i % 2], NODE, LONG));
        assert!(result.is_err(), "garbage accepted");
    }
}

#[tokio::test]
async fn garbage_from_the_server_gives_client_errors() {
    let creds = creds(Pattern::Ik);
    let mut rng = StdRng::seed_from_u64(8);
    for _ in 0..30 {
        let mut bytes = vec![0; rng.random_range(0..1500)];
        rng.fill_bytes(&mut bytes);
        let (c, mut s) = tcp_pair().await;
        let fake_server = async {
            let mut msg1 = [0u8; 3];
            s.read_exact(&mut msg1).await.unwrap();
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
            s
        };
        let (client, _s) = tokio::join!(
            connect_with(c, &creds.client, &HELLO, FIRST, LONG, Cipher::AesGcm),
            fake_server
        );
        assert!(client.is_err(), "garbage accepted by the client");
    }
}

#[tokio::test]
async fn truncated_handshake_is_an_error() {
    let creds = creds(Pattern::Ik);
    let mode = Mode {
        pattern: Pattern::Ik,
        cipher: Cipher::ChaChaPoly,
    };
    let (msg1, _) = message_1(mode, &creds.client);
    let half = &msg1[..msg1.len() / 2];
    // The client hangs up mid-message.
    let (mut c, s) = tcp_pair().await;
    let send = async {
        c.write_all(half).await.unwrap();
        c.shutdown().await.unwrap();
        c
    };
    let (_c, result) = tokio::join!(send, accept(s, &creds.server, NODE, LONG));
    assert!(
        matches!(result, Err(LinkError::Closed)),
        "{:?}",
        result.map(|_| ())
    );
    // The client stalls mid-message.
    let (mut c, s) = tcp_pair().await;
    c.write_all(half).await.unwrap();
    let result = accept(s, &creds.server, NODE, SHORT).await;
    assert!(
        matches!(result, Err(LinkError::Timeout)),
        "{:?}",
        result.map(|_| ())
    );
}

#[tokio::test]
async fn silent_peers_time_out() {
    let creds = creds(Pattern::NnPsk0);
    let (_c, s) = tcp_pair().await;
    let start = Instant::now();
    let result = accept(s, &creds.server, NODE, SHORT).await;
    assert!(
        matches!(result, Err(LinkError::Timeout)),
        "{:?}",
        result.map(|_| ())
    );
    assert!(start.elapsed() < LONG / 2);

    let (c, _s) = tcp_pair().await;
    let result = connect_with(c, &creds.client, &HELLO, FIRST, SHORT, Cipher::AesGcm).await;
    assert!(
        matches!(result, Err(LinkError::Timeout)),
        "{:?}",
        result.map(|_| ())
    );
}

#[tokio::test]
async fn oversized_handshake_lengths_are_refused_before_reading() {
    let creds = creds(Pattern::NnPsk0);
    // Header only, connection left open: reading the body would hang until the timeout.
    let result = raw_client(&creds.server, &[0x31, 0x04, 0x01], LONG).await;
    assert!(
        matches!(result, Err(LinkError::Protocol(_))),
        "{:?}",
        result.map(|_| ())
    );

    // Same on the client, for message 2.
    let (c, mut s) = tcp_pair().await;
    let fake_server = async {
        let mut head = [0u8; 3];
        s.read_exact(&mut head).await.unwrap();
        s.write_all(&[0x04, 0x01]).await.unwrap();
        s
    };
    let (client, _s) = tokio::join!(
        connect_with(c, &creds.client, &HELLO, FIRST, LONG, Cipher::AesGcm),
        fake_server
    );
    assert!(
        matches!(client, Err(LinkError::Protocol(_))),
        "{:?}",
        client.map(|_| ())
    );
}

#[tokio::test]
async fn corrupted_transport_message_is_an_error() {
    let (_reader, mut writer, mut accepted) = link(Pattern::IkPsk2, Cipher::ChaChaPoly).await;
    writer.send(b"fine").await.unwrap();
    writer.seal(b"tampered with").unwrap();
    writer.out_mut()[7] ^= 0x01;
    writer.flush().await.unwrap();
    assert_eq!(&accepted.reader.recv().await.unwrap().unwrap()[..], b"fine");
    let result = accepted.reader.recv().await;
    assert!(
        matches!(result, Err(LinkError::Protocol(_))),
        "{:?}",
        result
    );
    // The reader is done for good.
    assert!(matches!(
        accepted.reader.recv().await,
        Err(LinkError::Closed)
    ));
}

#[tokio::test]
async fn malformed_transport_framing_is_an_error() {
    // A length below the tag size.
    let (_reader, mut writer, mut accepted) = link(Pattern::Ik, Cipher::AesGcm).await;
    writer.raw().write_all(&[0, 15]).await.unwrap();
    let result = accepted.reader.recv().await;
    assert!(
        matches!(result, Err(LinkError::Protocol(_))),
        "{:?}",
        result
    );

    // EOF inside a message.
    let (_reader, mut writer, mut accepted) = link(Pattern::Ik, Cipher::AesGcm).await;
    writer.raw().write_all(&[0, 100, 1, 2, 3]).await.unwrap();
    writer.raw().shutdown().await.unwrap();
    assert!(matches!(
        accepted.reader.recv().await,
        Err(LinkError::Closed)
    ));

    // A replayed message: valid ciphertext under the wrong nonce.
    let (_reader, mut writer, mut accepted) = link(Pattern::Ik, Cipher::ChaChaPoly).await;
    writer.seal(b"once").unwrap();
    let copy = writer.out_mut().to_vec();
    writer.flush().await.unwrap();
    writer.raw().write_all(&copy).await.unwrap();
    assert_eq!(&accepted.reader.recv().await.unwrap().unwrap()[..], b"once");
    assert!(matches!(
        accepted.reader.recv().await,
        Err(LinkError::Protocol(_))
    ));
}

#[tokio::test]
async fn api_misuse_is_reported_and_harmless() {
    let (_reader, mut writer, accepted) = link(Pattern::NnPsk0, Cipher::AesGcm).await;
    misuse_is_reported_and_harmless(&mut writer, accepted, 16).await;

    let creds = creds(Pattern::NnPsk0);
    let (c, _s) = tcp_pair().await;
    let long_first = vec![0; MAX_FIRST_PLAINTEXT + 1];
    let result = connect(c, &creds.client, &HELLO, &long_first, LONG).await;
    assert!(matches!(result, Err(LinkError::Misuse(_))));
}

#[tokio::test]
async fn largest_first_message_is_accepted() {
    let creds = creds(Pattern::Ik);
    let (c, s) = tcp_pair().await;
    let first = vec![0x42; MAX_FIRST_PLAINTEXT];
    let (client, server) = tokio::join!(
        connect(c, &creds.client, &HELLO, &first, LONG),
        accept(s, &creds.server, NODE, LONG)
    );
    client.unwrap();
    assert_eq!(server.unwrap().first[..], first[..]);
}

#[test]
fn every_mode_round_trips() {
    for pattern in PATTERNS {
        for cipher in CIPHERS {
            let mode = Mode { pattern, cipher };
            assert_eq!(Mode::from_byte(mode.to_byte()).unwrap(), mode);
            let _ = mode.params();
        }
    }
    assert_eq!(
        Mode {
            pattern: Pattern::IkPsk2,
            cipher: Cipher::AesGcm
        }
        .to_byte(),
        0x22
    );
    for byte in [0x00, 0x01, 0x10, 0x13, 0x41, 0xF1, 0x3F] {
        assert!(
            matches!(Mode::from_byte(byte), Err(LinkError::Protocol(_))),
            "{byte:#x}"
        );
    }
}

#[test]
fn hello_payloads_are_checked() {
    let good = encode_client_hello(&HELLO, 0x1122_3344_5566_7788);
    assert_eq!(good[0], 3, "version");
    assert_eq!(good[22..], [0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]);
    let hello = decode_client_hello(&good).unwrap();
    assert_eq!(
        hello,
        ReceivedHello {
            session_id: HELLO.session.id(),
            link_seq: 3,
            lane: true,
            relay: HELLO.relay,
            timestamp: 0x1122_3344_5566_7788,
        }
    );
    assert!(decode_client_hello(&good[..29]).is_err());
    // Version 2 (no timestamp, no session secret) and version 1 are refused.
    for version in [1, 2] {
        let mut bad = good;
        bad[0] = version;
        assert!(decode_client_hello(&bad).is_err());
    }
    assert!(
        decode_client_hello(&good[..22]).is_err(),
        "a version-2 length"
    );

    let hello = ServerHello {
        node_id: 9,
        epoch: 0x0102_0304_0506_0708,
        relay: false,
    };
    let good = encode_server_hello(&hello);
    assert_eq!(good, [3, 0, 9, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(decode_server_hello(&good).unwrap(), hello);
    assert!(decode_server_hello(&good[..11]).is_err());
    let mut bad = good;
    bad[0] = 1;
    assert!(decode_server_hello(&bad).is_err());
    let mut bad = good;
    bad[3] = 1;
    assert!(decode_server_hello(&bad).is_err());
}

/// Plays a client that sends a genuine message 1 for [`HELLO`] in `pattern` and then a key
/// confirmation, correctly encrypted, whose plaintext is `confirm`; returns the server's verdict.
async fn confirm_with(pattern: Pattern, confirm: &[u8]) -> Result<Accepted, LinkError> {
    let creds = creds(pattern);
    let mode = Mode {
        pattern,
        cipher: Cipher::ChaChaPoly,
    };
    let (msg1, mut hs) = message_1(mode, &creds.client);
    let (mut c, s) = tcp_pair().await;
    let client = async {
        c.write_all(&msg1).await.unwrap();
        let len = usize::from(c.read_u16().await.unwrap());
        let mut msg2 = vec![0; len];
        c.read_exact(&mut msg2).await.unwrap();
        let mut payload = [0u8; 1024];
        hs.read_message(&msg2, &mut payload).unwrap();
        let transport = hs.into_stateless_transport_mode().unwrap();
        let mut sealed = [0u8; 1024];
        let n = transport.write_message(0, confirm, &mut sealed).unwrap();
        c.write_u16(n as u16).await.unwrap();
        c.write_all(&sealed[..n]).await.unwrap();
        c
    };
    let (_c, server) = tokio::join!(client, accept(s, &creds.server, NODE, LONG));
    server
}

#[tokio::test]
async fn a_key_confirmation_must_hold_the_sessions_secret() {
    for pattern in PATTERNS {
        // The secret whose id message 1 carries: the link is taken, its frames are `first`.
        let mut good = HELLO.session.as_bytes().to_vec();
        good.extend_from_slice(FIRST);
        let accepted = confirm_with(pattern, &good).await.unwrap();
        assert_eq!(&accepted.first[..], FIRST);
        // Anything else is refused: another secret, a secret cut short, frames alone.
        let mut other = [0x11u8; 32].to_vec();
        other.extend_from_slice(FIRST);
        for confirm in [&other[..], &good[..31], FIRST] {
            assert_auth(confirm_with(pattern, confirm).await, "session's secret");
        }
    }
}

#[test]
fn a_session_secret_names_its_session() {
    let a = SessionSecret::from_bytes([1; 32]);
    let b = SessionSecret::from_bytes([2; 32]);
    assert_eq!(a.id(), a.clone().id());
    assert_ne!(a.id(), b.id());
    assert_ne!(
        SessionSecret::generate().id(),
        SessionSecret::generate().id()
    );
    assert!(!format!("{a:?}").contains("1, 1"), "redacted");
}

#[test]
fn message_1_timestamps_increase_strictly() {
    let mut last = timestamp_now();
    for _ in 0..10_000 {
        let t = timestamp_now();
        assert!(t > last);
        last = t;
    }
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        last.abs_diff(wall) < 10_000_000_000,
        "the wall clock, in ns"
    );
}

#[tokio::test]
async fn a_message_1_the_server_refuses_gets_no_answer() {
    for pattern in PATTERNS {
        let creds = creds(pattern);
        let (c, s) = tcp_pair().await;
        let (client, server) = tokio::join!(
            connect_with(c, &creds.client, &HELLO, FIRST, LONG, Cipher::ChaChaPoly),
            accept_with(s, &creds.server, LONG, |_, _| Err(LinkError::Replayed))
        );
        assert!(matches!(server, Err(LinkError::Replayed)));
        assert_refused(client);
    }
}

/// Sealing more than a message holds, or more than the writer may keep pending, is refused and
/// changes nothing: what was sealed before arrives, and the link goes on. `overhead` is what a
/// message costs beyond its length prefix and plaintext (the AEAD tag, or 0 in the clear).
pub(super) async fn misuse_is_reported_and_harmless(
    writer: &mut LinkWriter,
    mut accepted: Accepted,
    overhead: usize,
) {
    let big = vec![0; MAX_PLAINTEXT + 1];
    assert!(matches!(writer.seal(&big), Err(LinkError::Misuse(_))));
    assert_eq!(writer.pending(), 0);
    let mut body = writer.begin().unwrap();
    body.extend_from_slice(&big);
    assert!(matches!(writer.commit(body), Err(LinkError::Misuse(_))));
    assert_eq!(writer.pending(), 0);
    while writer.pending() + 2 + MAX_PLAINTEXT + overhead <= MAX_PENDING {
        writer.seal(&big[..MAX_PLAINTEXT]).unwrap();
    }
    assert!(matches!(
        writer.seal(&big[..MAX_PLAINTEXT]),
        Err(LinkError::Misuse(_))
    ));
    assert!(matches!(writer.begin(), Err(LinkError::Misuse(_))));
    let sealed = writer.pending() / (2 + MAX_PLAINTEXT + overhead);
    let reader = tokio::spawn(async move {
        for _ in 0..sealed {
            assert_eq!(
                accepted.reader.recv().await.unwrap().unwrap().len(),
                MAX_PLAINTEXT
            );
        }
        accepted.reader.recv().await.unwrap().unwrap()
    });
    writer.send(b"still fine").await.unwrap();
    assert_eq!(&reader.await.unwrap()[..], b"still fine");
}

#[tokio::test]
async fn a_message_built_in_place_and_not_flushed_is_sealed_by_the_shutdown() {
    for cipher in CIPHERS {
        let (_reader, mut writer, mut accepted) = link(Pattern::Ik, cipher).await;
        let mut body = writer.begin().unwrap();
        body.extend_from_slice(b"the last words");
        writer.commit(body).unwrap();
        writer.shutdown().await;
        let got = accepted.reader.recv().await.unwrap().unwrap();
        assert_eq!(&got[..], b"the last words");
        assert!(accepted.reader.recv().await.unwrap().is_none());
    }
}

/// `recv_buffered` hands out the messages one read brought, never waits, and reports a bad
/// length as `recv` does.
#[tokio::test]
async fn buffered_messages_come_without_waiting() {
    let (c, s) = tokio::io::duplex(1 << 16);
    let (_c_rd, mut raw) = tokio::io::split(c);
    let (s_rd, _s_wr) = tokio::io::split(s);
    let mut reader = transport::LinkReader::new(
        transport::InBuf::new(Box::new(s_rd), 1024),
        transport::Seal::Clear,
        0,
    );
    // Clear messages as a peer writes them (a length, then the bytes), in one write; the last
    // one incomplete.
    raw.write_all(b"\x00\x03one\x00\x00\x00\x05three\x00\x04fo")
        .await
        .expect("write");
    raw.flush().await.expect("flush");
    assert_eq!(
        &reader.recv().await.expect("recv").expect("a message")[..],
        b"one"
    );
    assert_eq!(
        &reader.recv_buffered().expect("ok").expect("buffered")[..],
        b""
    );
    assert_eq!(
        &reader.recv_buffered().expect("ok").expect("buffered")[..],
        b"three"
    );
    assert!(
        reader.recv_buffered().expect("ok").is_none(),
        "nothing waits"
    );
    raw.write_all(b"ur").await.expect("write");
    assert_eq!(
        &reader.recv().await.expect("recv").expect("the rest")[..],
        b"four"
    );
    // A length over the bound: an error, then nothing more.
    raw.write_all(&u16::MAX.to_be_bytes()).await.expect("write");
    raw.flush().await.expect("flush");
    assert!(matches!(reader.recv().await, Err(LinkError::Protocol(_))));
    assert!(reader.recv_buffered().expect("ended").is_none());
}
