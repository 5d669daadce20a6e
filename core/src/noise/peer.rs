//! The peer role of the link handshake: a link between two server nodes of a cluster
//! (`docs/PROTOCOL.md`, "Peer links").
//!
//! It is the client handshake (`IK`, or `IKpsk2` with the cluster's PSK) with other payloads,
//! run on the node's cluster listener: the dialling node pins the peer's key, the accepting node
//! takes only the keys of its configured peers. Message 1 carries the dialler's node id and
//! instance, message 2 the acceptor's (in the layout of a client link's message 2, with version
//! 3 and the instance where a client link has the epoch); a client hello (30 bytes) never
//! decodes as a peer hello (role 2, 12 bytes) nor the other way round, nor a reply of one kind as
//! the other's (a client link's key confirmation must also hold its session secret), so even a
//! key configured on both listeners would not cross over (the config refuses that too).

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;

use super::handshake::{
    decode_reply, encode_reply, initiate, respond_to, tcp_halves, timestamp_now, Cipher, Payloads,
};
use super::replay::{Identity, ReplayGuard};
use super::{BoxRead, BoxWrite, ClientAuth, LinkError, LinkReader, LinkWriter, ServerAuth};
use crate::keys::PublicKey;

/// Version byte of both peer handshake payloads (the cluster protocol's). Version 4 added
/// message 1's timestamp (replay protection); version 3 had none.
const VERSION: u8 = 4;
/// Role byte of message 1: a peer node (clients have no role byte).
const ROLE_PEER: u8 = 2;
/// `version | role | node_id | instance | timestamp`.
const HELLO_LEN: usize = 1 + 1 + 2 + 8 + 8;

/// What each node of a peer link tells the other in the handshake (message 1 from the dialler,
/// message 2 from the acceptor).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerHello {
    /// The sender's `server.node_id`.
    pub node_id: u16,
    /// Drawn at random when the sender's process started: a new value means the peer restarted
    /// and kept nothing of what it had with this node.
    pub instance: u64,
}

/// A peer's message 1 as the acceptor read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ReceivedPeerHello {
    hello: PeerHello,
    /// The dialler's clock when it wrote message 1, in nanoseconds since the Unix epoch,
    /// strictly increasing within one process (the client links' clock): what replay
    /// protection compares.
    timestamp: u64,
}

/// A peer link the node accepted: the handshake and key confirmation succeeded.
#[derive(Debug)]
pub struct PeerAccepted {
    /// The dialler's message 1 payload.
    pub hello: PeerHello,
    /// The dialler's static key: one of the configured peers' (the allow-list of the `auth`
    /// given to [`accept_peer`]).
    pub key: PublicKey,
    /// Plaintext of the dialler's key-confirmation message.
    pub first: Bytes,
    /// Receive half of the link.
    pub reader: LinkReader,
    /// Send half of the link.
    pub writer: LinkWriter,
}

/// Peer link payloads.
struct PeerLink;

/// Message 1's payload for `h`, written at `timestamp`.
fn encode_peer_hello(h: &PeerHello, timestamp: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(HELLO_LEN);
    p.extend_from_slice(&[VERSION, ROLE_PEER]);
    p.extend_from_slice(&h.node_id.to_be_bytes());
    p.extend_from_slice(&h.instance.to_be_bytes());
    p.extend_from_slice(&timestamp.to_be_bytes());
    p
}

impl Payloads for PeerLink {
    type Hello = PeerHello;
    type Received = ReceivedPeerHello;
    type Reply = PeerHello;
    fn unknown_key(_: PublicKey) -> LinkError {
        LinkError::Auth("key is not one of the configured peers'")
    }

    fn encode_hello(h: &PeerHello) -> Vec<u8> {
        encode_peer_hello(h, timestamp_now())
    }

    fn decode_hello(p: &[u8]) -> Result<ReceivedPeerHello, LinkError> {
        let p: &[u8; HELLO_LEN] = p
            .try_into()
            .map_err(|_| LinkError::Protocol("peer hello has the wrong length"))?;
        if p[0] != VERSION || p[1] != ROLE_PEER {
            return Err(LinkError::Protocol(
                "peer hello has an unknown version or role",
            ));
        }
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&p[at..at + 8]);
            u64::from_be_bytes(b)
        };
        Ok(ReceivedPeerHello {
            hello: PeerHello {
                node_id: u16::from_be_bytes([p[2], p[3]]),
                instance: u64_at(4),
            },
            timestamp: u64_at(12),
        })
    }

    fn encode_reply(h: &PeerHello) -> Vec<u8> {
        encode_reply(VERSION, h.node_id, h.instance).to_vec()
    }

    fn decode_reply(p: &[u8]) -> Result<PeerHello, LinkError> {
        let (node_id, instance) = decode_reply(p, VERSION)?;
        Ok(PeerHello { node_id, instance })
    }
}

/// Dials a peer over `tcp`: the dialling side of the peer handshake, then `first` as the key
/// confirmation. `auth` must be [`ClientAuth::Static`] with this node's private key, the peer's
/// pinned public key and the cluster PSK if any; a PSK-only `auth` is refused by every cluster
/// listener. Returns the link's halves and the peer's reply.
///
/// Errors as [`super::connect`]: [`LinkError::Closed`] (or a reset) when the peer refuses this
/// node, [`LinkError::Auth`] when its reply does not decrypt (another key than the pinned one,
/// or another PSK), [`LinkError::Timeout`] after `timeout`.
pub async fn connect_peer(
    tcp: TcpStream,
    auth: &ClientAuth,
    hello: &PeerHello,
    first: &[u8],
    timeout: Duration,
) -> Result<(LinkReader, LinkWriter, PeerHello), LinkError> {
    let (rd, wr, peer) = tcp_halves(tcp)?;
    let (mut reader, mut writer, reply) =
        connect_peer_stream(rd, wr, auth, hello, first, timeout).await?;
    reader.peer = peer;
    writer.peer = peer;
    Ok((reader, writer, reply))
}

/// [`connect_peer`] over any reliable, ordered byte stream given as its two halves (the fuzz
/// targets run it over an in-memory pipe).
pub async fn connect_peer_stream(
    rd: BoxRead,
    wr: BoxWrite,
    auth: &ClientAuth,
    hello: &PeerHello,
    first: &[u8],
    timeout: Duration,
) -> Result<(LinkReader, LinkWriter, PeerHello), LinkError> {
    if first.len() > super::MAX_FIRST_PLAINTEXT {
        return Err(LinkError::Misuse(
            "first message longer than MAX_FIRST_PLAINTEXT",
        ));
    }
    let handshake = initiate::<PeerLink>(rd, wr, None, auth, hello, first, Cipher::preferred());
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// Accepts a peer link on `tcp`: the accepting side of the peer handshake. `auth` holds this
/// node's private key, the configured peers' keys as its allow-list and the cluster PSK if any.
/// `replays` holds the timestamps this node took from its peers (one guard for the node's
/// cluster listener, kept for the life of the process): a message 1 whose timestamp was taken
/// before, or is older than the window, is a replay and gets nothing ([`LinkError::Replayed`]).
/// Otherwise `respond` sees the authenticated dialler's hello and key and returns this node's
/// reply, or refuses it (a node id that is not the one configured for that key), in which case
/// the dialler gets nothing.
///
/// Returns once the dialler's key confirmation decrypted. Errors as [`super::accept_with`].
pub async fn accept_peer<F>(
    tcp: TcpStream,
    auth: &ServerAuth,
    replays: &Mutex<ReplayGuard>,
    timeout: Duration,
    respond: F,
) -> Result<PeerAccepted, LinkError>
where
    F: FnOnce(&PeerHello, &PublicKey) -> Result<PeerHello, LinkError>,
{
    let (rd, wr, peer) = tcp_halves(tcp)?;
    let mut accepted = accept_peer_stream(rd, wr, auth, replays, timeout, respond).await?;
    accepted.reader.peer = peer;
    accepted.writer.peer = peer;
    Ok(accepted)
}

/// [`accept_peer`] over any reliable, ordered byte stream given as its two halves (the fuzz
/// targets run it over an in-memory pipe).
pub async fn accept_peer_stream<F>(
    rd: BoxRead,
    wr: BoxWrite,
    auth: &ServerAuth,
    replays: &Mutex<ReplayGuard>,
    timeout: Duration,
    respond: F,
) -> Result<PeerAccepted, LinkError>
where
    F: FnOnce(&PeerHello, &PublicKey) -> Result<PeerHello, LinkError>,
{
    if auth.private_key.is_none() {
        return Err(LinkError::Misuse("peer links need the node's private key"));
    }
    let respond = |received: &ReceivedPeerHello, key: Option<&PublicKey>| {
        // With a private key only static-key patterns are allowed, and they carry a key.
        let key = key.ok_or(LinkError::Protocol("peer link without a static key"))?;
        // Message 1 authenticated as `key`: only that peer can have written this timestamp, so
        // it is taken now. Only the guard's bookkeeping runs under the lock; a poisoned lock
        // (a panic elsewhere while holding it) still holds a consistent guard.
        replays
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Identity::Peer(*key), received.timestamp)
            .map_err(|_| LinkError::Replayed)?;
        respond(&received.hello, key)
    };
    let handshake = respond_to::<PeerLink, _>(rd, wr, None, auth, respond);
    let r = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| LinkError::Timeout)??;
    Ok(PeerAccepted {
        hello: r.hello.hello,
        key: r
            .key
            .ok_or(LinkError::Protocol("peer link without a static key"))?,
        first: Bytes::copy_from_slice(&r.first),
        reader: r.reader,
        writer: r.writer,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{generate_keypair, Psk};
    use crate::noise::{accept_with, connect, ClientHello, ServerHello};
    use tokio::net::TcpListener;

    const LONG: Duration = Duration::from_secs(10);

    /// A replay guard of its own for one accept.
    fn fresh() -> &'static Mutex<ReplayGuard> {
        Box::leak(Box::default())
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// Node 1 dials node 2 with `psk` on both sides (or not).
    fn auths(psk: Option<Psk>) -> (ClientAuth, ServerAuth, PublicKey) {
        let (one_priv, one_pub) = generate_keypair();
        let (two_priv, two_pub) = generate_keypair();
        let dial = ClientAuth::Static {
            local: one_priv,
            server: two_pub,
            psk: psk.clone(),
        };
        let accept = ServerAuth {
            private_key: Some(two_priv),
            allowed_clients: [one_pub].into(),
            psk,
        };
        (dial, accept, one_pub)
    }

    const ONE: PeerHello = PeerHello {
        node_id: 1,
        instance: 11,
    };
    const TWO: PeerHello = PeerHello {
        node_id: 2,
        instance: 22,
    };

    #[tokio::test]
    async fn peers_meet_with_and_without_psk() {
        for psk in [None, Some(Psk::generate())] {
            let (dial, accept, one_pub) = auths(psk);
            let (a, b) = tcp_pair().await;
            let (dialled, accepted) = tokio::join!(
                connect_peer(a, &dial, &ONE, b"\x01first", LONG),
                accept_peer(b, &accept, fresh(), LONG, |hello, key| {
                    assert_eq!(*hello, ONE);
                    assert_eq!(*key, one_pub);
                    Ok(TWO)
                }),
            );
            let (mut rd, mut wr, reply) = dialled.unwrap();
            let mut acc = accepted.unwrap();
            assert_eq!(reply, TWO);
            assert_eq!((acc.hello, acc.key), (ONE, one_pub));
            assert_eq!(&acc.first[..], b"\x01first");
            wr.send(b"up").await.unwrap();
            assert_eq!(&acc.reader.recv().await.unwrap().unwrap()[..], b"up");
            acc.writer.send(b"down").await.unwrap();
            assert_eq!(&rd.recv().await.unwrap().unwrap()[..], b"down");
        }
    }

    #[tokio::test]
    async fn a_refused_peer_gets_nothing() {
        let (dial, accept, _) = auths(None);
        let (a, b) = tcp_pair().await;
        let (dialled, accepted) = tokio::join!(
            connect_peer(a, &dial, &ONE, b"", LONG),
            accept_peer(b, &accept, fresh(), LONG, |_, _| Err(LinkError::Auth(
                "node id mismatch"
            ))),
        );
        assert!(matches!(accepted, Err(LinkError::Auth("node id mismatch"))));
        assert!(matches!(dialled, Err(LinkError::Closed | LinkError::Io(_))));
    }

    #[tokio::test]
    async fn an_unknown_key_or_psk_is_refused() {
        // The acceptor does not list the dialler's key.
        let (dial, mut accept, _) = auths(None);
        accept.allowed_clients = [generate_keypair().1].into();
        let (a, b) = tcp_pair().await;
        let (dialled, accepted) = tokio::join!(
            connect_peer(a, &dial, &ONE, b"", LONG),
            accept_peer(b, &accept, fresh(), LONG, |_, _| Ok(TWO)),
        );
        assert!(matches!(accepted, Err(LinkError::Auth(_))), "{accepted:?}");
        assert!(dialled.is_err());

        // The PSKs differ: the dialler cannot open message 2 (`psk2` is mixed in there) and
        // hangs up, so the acceptor never sees a key confirmation.
        let (dial, mut accept, _) = auths(Some(Psk::generate()));
        accept.psk = Some(Psk::generate());
        let (a, b) = tcp_pair().await;
        let (dialled, accepted) = tokio::join!(
            connect_peer(a, &dial, &ONE, b"", LONG),
            accept_peer(b, &accept, fresh(), LONG, |_, _| Ok(TWO)),
        );
        assert!(matches!(dialled, Err(LinkError::Auth(_))), "{dialled:?}");
        assert!(accepted.is_err());
    }

    #[tokio::test]
    async fn client_and_peer_hellos_never_cross() {
        // The same keys on both sides: only the payloads differ.
        let (dial, accept, _) = auths(None);
        let hello = ClientHello {
            session: crate::noise::SessionSecret::from_bytes([1; 32]),
            link_seq: 0,
            lane: false,
            relay: false,
        };
        let (a, b) = tcp_pair().await;
        let (dialled, accepted) = tokio::join!(
            connect(a, &dial, &hello, b"", LONG),
            accept_peer(b, &accept, fresh(), LONG, |_, _| Ok(TWO)),
        );
        assert!(
            matches!(
                accepted,
                Err(LinkError::Protocol("peer hello has the wrong length"))
            ),
            "{accepted:?}"
        );
        assert!(dialled.is_err());

        let (a, b) = tcp_pair().await;
        let (dialled, accepted) = tokio::join!(
            connect_peer(a, &dial, &ONE, b"", LONG),
            accept_with(b, &accept, LONG, |_, _| Ok(ServerHello {
                node_id: 2,
                epoch: 0,
                relay: false,
            })),
        );
        assert!(
            matches!(accepted, Err(LinkError::Protocol(_))),
            "{accepted:?}"
        );
        assert!(dialled.is_err());
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let hello = encode_peer_hello(&ONE, 1234);
        assert_eq!(
            PeerLink::decode_hello(&hello).unwrap(),
            ReceivedPeerHello {
                hello: ONE,
                timestamp: 1234
            }
        );
        // Version 3 (no timestamp) is refused, by its length and by its version byte.
        assert!(PeerLink::decode_hello(&hello[..12]).is_err());
        let mut v3 = hello.clone();
        v3[0] = 3;
        assert!(PeerLink::decode_hello(&v3).is_err());
        let reply = PeerLink::encode_reply(&TWO);
        assert_eq!(PeerLink::decode_reply(&reply).unwrap(), TWO);
        for cut in 0..hello.len() {
            assert!(PeerLink::decode_hello(&hello[..cut]).is_err());
        }
        for cut in 0..reply.len() {
            assert!(PeerLink::decode_hello(&hello[..cut]).is_err());
            assert!(PeerLink::decode_reply(&reply[..cut]).is_err());
        }
        let mut bad = hello.clone();
        bad[1] = 1;
        assert!(PeerLink::decode_hello(&bad).is_err());
        let mut bad = reply.clone();
        bad[0] = 2;
        assert!(PeerLink::decode_reply(&bad).is_err());
        let mut bad = reply;
        bad[3] = 1;
        assert!(PeerLink::decode_reply(&bad).is_err());
    }

    /// A recorded message 1 of a peer, sent again, gets no message 2; the peer's next link (a
    /// later timestamp) still comes up.
    #[tokio::test]
    async fn a_replayed_peer_hello_gets_nothing() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (dial, accept, _) = auths(None);
        let replays = Mutex::default();
        // Record what a dialler sends first: mode | len | message 1.
        let (a, mut b) = tcp_pair().await;
        let dialler = tokio::spawn({
            let dial = dial.clone();
            async move { connect_peer(a, &dial, &ONE, b"", LONG).await }
        });
        let mut head = [0u8; 3];
        b.read_exact(&mut head).await.unwrap();
        let mut first = head.to_vec();
        first.resize(3 + usize::from(u16::from_be_bytes([head[1], head[2]])), 0);
        b.read_exact(&mut first[3..]).await.unwrap();
        dialler.abort();

        // Sends `first` to an acceptor holding `replays`; returns its result and the bytes it
        // answered with.
        let send = |first: Vec<u8>| {
            let (accept, replays) = (&accept, &replays);
            async move {
                let (mut c, d) = tcp_pair().await;
                c.write_all(&first).await.unwrap();
                let short = Duration::from_millis(300);
                let (accepted, answer) = tokio::join!(
                    accept_peer(d, accept, replays, short, |_, _| Ok(TWO)),
                    async {
                        let mut got = Vec::new();
                        let _ = tokio::time::timeout(LONG, c.read_to_end(&mut got)).await;
                        got
                    }
                );
                (accepted.map(|_| ()), answer.len())
            }
        };
        // The first time it is answered (and then times out: nobody confirms the keys).
        let (accepted, answered) = send(first.clone()).await;
        assert!(matches!(accepted, Err(LinkError::Timeout)), "{accepted:?}");
        assert!(answered > 0, "the original message 1 got a message 2");
        // Again: nothing.
        for _ in 0..2 {
            let (accepted, answered) = send(first.clone()).await;
            assert!(matches!(accepted, Err(LinkError::Replayed)), "{accepted:?}");
            assert_eq!(answered, 0, "a replayed message 1 got an answer");
        }
        // The peer's next link has a later timestamp and comes up.
        let (a, b) = tcp_pair().await;
        let (dialled, accepted) = tokio::join!(
            connect_peer(a, &dial, &ONE, b"", LONG),
            accept_peer(b, &accept, &replays, LONG, |_, _| Ok(TWO)),
        );
        assert_eq!(dialled.unwrap().2, TWO);
        assert_eq!(accepted.unwrap().hello, ONE);
    }
}
