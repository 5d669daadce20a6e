//! Tests of links bound to their TLS connection (QUIC links on ALPN `wanmux/2`): the handshake
//! with the channel binding in its prologue, then clear messages. Over in-memory pipes; the
//! real QUIC links are `crate::quic`'s tests.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::handshake::{Cipher, Mode, Pattern};
use super::tests::{
    creds, exchange, expected, misuse_is_reported_and_harmless, received, Creds, FIRST, HELLO,
    LONG, NODE, PATTERNS,
};
use super::*;

type Connected = Result<(LinkReader, LinkWriter, ServerHello), LinkError>;

const A: ChannelBinding = ChannelBinding::from_bytes([0xA5; CHANNEL_BINDING_LEN]);

fn reply() -> ServerHello {
    ServerHello {
        node_id: NODE,
        epoch: 9,
        relay: false,
    }
}

/// An in-memory pipe, smaller than one message, so both directions see partial reads and writes.
fn pipe() -> ((BoxRead, BoxWrite), (BoxRead, BoxWrite)) {
    let (c, s) = tokio::io::duplex(4096);
    let (c_rd, c_wr) = tokio::io::split(c);
    let (s_rd, s_wr) = tokio::io::split(s);
    (
        (Box::new(c_rd), Box::new(c_wr)),
        (Box::new(s_rd), Box::new(s_wr)),
    )
}

/// The handshake with the client bound to `client` and the node to `node` (`None`: not bound,
/// as on TCP and `wanmux/1`).
async fn handshake(
    creds: &Creds,
    client: Option<&ChannelBinding>,
    node: Option<&ChannelBinding>,
) -> (Connected, Result<Accepted, LinkError>) {
    let ((c_rd, c_wr), (s_rd, s_wr)) = pipe();
    let respond = |hello: &ReceivedHello, _: Option<&PublicKey>| {
        assert_eq!(received(hello), expected());
        Ok(reply())
    };
    let connect = async {
        match client {
            Some(b) => {
                connect_bound_stream(c_rd, c_wr, b, &creds.client, &HELLO, FIRST, LONG).await
            }
            None => connect_stream(c_rd, c_wr, &creds.client, &HELLO, FIRST, LONG).await,
        }
    };
    let accept = async {
        match node {
            Some(b) => accept_bound_stream_with(s_rd, s_wr, b, &creds.server, LONG, respond).await,
            None => accept_stream_with(s_rd, s_wr, &creds.server, LONG, respond).await,
        }
    };
    tokio::join!(connect, accept)
}

/// A bound link that must come up.
async fn bound_link(pattern: Pattern) -> (LinkReader, LinkWriter, Accepted) {
    let creds = creds(pattern);
    let (client, node) = handshake(&creds, Some(&A), Some(&A)).await;
    let (reader, writer, hello) = client.unwrap();
    let accepted = node.unwrap();
    assert_eq!(hello, reply());
    assert_eq!(accepted.client_key, creds.client_key);
    assert_eq!(&accepted.first[..], FIRST, "the key confirmation's frames");
    (reader, writer, accepted)
}

#[tokio::test]
async fn bound_links_carry_clear_messages_both_ways_in_every_pattern() {
    for (i, pattern) in PATTERNS.into_iter().enumerate() {
        let (reader, writer, accepted) = bound_link(pattern).await;
        for encrypts in [
            reader.decrypts(),
            writer.encrypts(),
            accepted.reader.decrypts(),
            accepted.writer.encrypts(),
        ] {
            assert!(!encrypts, "{pattern:?}: a bound link's half still encrypts");
        }
        exchange(
            (reader, writer),
            (accepted.reader, accepted.writer),
            1000 + i as u64 * 10,
        )
        .await;
    }
}

#[tokio::test]
async fn a_clear_message_is_its_length_and_its_bytes() {
    let (_reader, mut writer, _accepted) = bound_link(Pattern::Ik).await;
    writer.seal(b"abc").unwrap();
    writer.seal(b"").unwrap();
    assert_eq!(writer.out_mut()[..], [0, 3, b'a', b'b', b'c', 0, 0]);
    let (_reader, writer, _accepted) = super::tests::link(Pattern::Ik, Cipher::AesGcm).await;
    assert!(writer.encrypts(), "an unbound link encrypts");
}

/// The channel binding: a handshake relayed from one TLS connection onto another (whose
/// exporter differs) fails at the node, which sends nothing back, in every pattern. So does a
/// handshake where one end is bound and the other is not.
#[tokio::test]
async fn a_handshake_made_for_another_tls_connection_fails() {
    let b = ChannelBinding::from_bytes([0x5B; CHANNEL_BINDING_LEN]);
    for pattern in PATTERNS {
        let creds = creds(pattern);
        for (client, node) in [(Some(&A), Some(&b)), (Some(&A), None), (None, Some(&A))] {
            let (client_end, node_end) = handshake(&creds, client, node).await;
            match node_end {
                Err(LinkError::Auth(r)) => {
                    assert!(r.contains("message 1 did not decrypt"), "{pattern:?}: {r}")
                }
                other => panic!(
                    "{pattern:?}, client {:?}, node {:?}: the node took it: {:?}",
                    client.is_some(),
                    node.is_some(),
                    other.map(|_| ())
                ),
            }
            assert!(
                matches!(client_end, Err(LinkError::Closed)),
                "{pattern:?}: {:?}",
                client_end.map(|_| ())
            );
        }
    }
}

/// The prologue as `docs/PROTOCOL.md` writes it: `wanmux v1`, the mode byte, the 32 bytes of
/// the exporter.
#[test]
fn the_bound_prologue_ends_with_the_exporter() {
    let mode = Mode {
        pattern: Pattern::IkPsk2,
        cipher: Cipher::AesGcm,
    };
    let mut spec = b"wanmux v1\x22".to_vec();
    assert_eq!(mode.prologue(None)[..], spec[..]);
    spec.extend_from_slice(&[0xA5; 32]);
    assert_eq!(mode.prologue(Some(&A))[..], spec[..]);
}

/// A client written from the protocol with `snow` alone: NNpsk0 with the exporter in the
/// prologue, a Noise key confirmation, then clear messages both ways, read and written raw.
#[tokio::test]
async fn a_bound_link_written_from_the_protocol_is_taken() {
    let creds = creds(Pattern::NnPsk0);
    let ClientAuth::Psk(psk) = &creds.client else {
        unreachable!("NNpsk0 credentials")
    };
    let ((mut rd, mut wr), (s_rd, s_wr)) = pipe();
    let client = async {
        let mut prologue = b"wanmux v1\x31".to_vec();
        prologue.extend_from_slice(A.as_bytes());
        let mut hs = snow::Builder::new("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
            .prologue(&prologue)
            .unwrap()
            .psk(0, psk.as_bytes())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut msg = [0u8; 1024];
        let payload = handshake::encode_client_hello(&HELLO, handshake::timestamp_now());
        let n = hs.write_message(&payload, &mut msg).unwrap();
        let mut out = vec![0x31, 0, n as u8];
        out.extend_from_slice(&msg[..n]);
        wr.write_all(&out).await.unwrap();
        let len = usize::from(rd.read_u16().await.unwrap());
        let mut msg2 = vec![0; len];
        rd.read_exact(&mut msg2).await.unwrap();
        let mut plain = [0u8; 1024];
        let n = hs.read_message(&msg2, &mut plain).unwrap();
        assert_eq!(
            handshake::decode_server_hello(&plain[..n]).unwrap(),
            reply()
        );
        // The key confirmation, a Noise transport message: the session secret and a frame.
        let mut t = hs.into_transport_mode().unwrap();
        let mut confirm = HELLO.session.as_bytes().to_vec();
        confirm.extend_from_slice(FIRST);
        let n = t.write_message(&confirm, &mut msg).unwrap();
        let mut out = (n as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&msg[..n]);
        // Then a clear message right behind it.
        out.extend_from_slice(&[0, 5]);
        out.extend_from_slice(b"hello");
        wr.write_all(&out).await.unwrap();
        // The node's clear message, raw.
        let mut back = [0u8; 2 + 5];
        rd.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"\x00\x05world");
        (rd, wr)
    };
    let node = async {
        let respond = |_: &ReceivedHello, _: Option<&PublicKey>| Ok(reply());
        let mut acc = accept_bound_stream_with(s_rd, s_wr, &A, &creds.server, LONG, respond)
            .await
            .unwrap();
        assert_eq!(&acc.first[..], FIRST);
        assert_eq!(&acc.reader.recv().await.unwrap().unwrap()[..], b"hello");
        acc.writer.send(b"world").await.unwrap();
        acc
    };
    let (_client, _node) = tokio::join!(client, node);
}

#[tokio::test]
async fn malformed_clear_messages_close_the_link() {
    // A length over the largest message a Noise message could hold.
    let (_reader, mut writer, mut accepted) = bound_link(Pattern::Ik).await;
    writer.send(b"fine").await.unwrap();
    let too_long = (MAX_PLAINTEXT as u16 + 1).to_be_bytes();
    writer.raw().write_all(&too_long).await.unwrap();
    assert_eq!(&accepted.reader.recv().await.unwrap().unwrap()[..], b"fine");
    let result = accepted.reader.recv().await;
    assert!(
        matches!(result, Err(LinkError::Protocol(r)) if r.contains("longer")),
        "{result:?}"
    );
    // The reader is done for good.
    assert!(matches!(
        accepted.reader.recv().await,
        Err(LinkError::Closed)
    ));

    // The largest message and an empty one are fine; EOF inside a message is not.
    let (_reader, mut writer, mut accepted) = bound_link(Pattern::NnPsk0).await;
    let largest = vec![0x42; MAX_PLAINTEXT];
    let sent = largest.clone();
    // The pipe holds less than the largest message: the reader reads meanwhile.
    let write = tokio::spawn(async move {
        writer.seal(&sent).unwrap();
        writer.seal(b"").unwrap();
        writer.flush().await.unwrap();
        writer.raw().write_all(&[0, 100, 1, 2, 3]).await.unwrap();
        writer.raw().shutdown().await.unwrap();
        writer
    });
    assert_eq!(
        accepted.reader.recv().await.unwrap().unwrap()[..],
        largest[..]
    );
    assert!(accepted.reader.recv().await.unwrap().unwrap().is_empty());
    assert!(matches!(
        accepted.reader.recv().await,
        Err(LinkError::Closed)
    ));
    drop(write.await.unwrap());

    // A Noise transport message where a clear one is due is read as clear bytes, not decrypted:
    // the frames it holds are the engine's to refuse. Its length is within bounds.
    let (_reader, mut writer, mut accepted) = bound_link(Pattern::IkPsk2).await;
    writer.raw().write_all(&[0, 17]).await.unwrap();
    writer.raw().write_all(&[0xEE; 17]).await.unwrap();
    assert_eq!(
        accepted.reader.recv().await.unwrap().unwrap()[..],
        [0xEE; 17]
    );
}

#[tokio::test]
async fn api_misuse_on_a_clear_link_is_reported_and_harmless() {
    let (_reader, mut writer, accepted) = bound_link(Pattern::Ik).await;
    misuse_is_reported_and_harmless(&mut writer, accepted, 0).await;
}
