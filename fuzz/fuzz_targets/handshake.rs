//! The link handshake, each message and each mode (`IK`, `IKpsk2`, `NNpsk0` on client links;
//! `IK`, `IKpsk2` on peer links), from either end, over an in-memory pipe.
//!
//! The fuzzer plays one end with its own Noise state (snow, as `docs/PROTOCOL.md` describes the
//! handshake): it chooses the mode byte, the keys and PSK (right or wrong), the plaintext of every
//! message it sends (a valid payload or any bytes), corrupts, truncates or re-lengths any of its
//! messages, then sends transport messages and garbage. The crate's own side runs against it:
//! `accept_stream_with` and `connect_stream` for client links, `accept_peer_stream` and
//! `connect_peer_stream` for peer links. A third scenario runs both of the crate's sides against
//! each other through a pipe that corrupts bytes in flight, client links either as on TCP or
//! bound to a TLS connection's exporter (QUIC on ALPN `wanmux/2`: `connect_bound_stream`,
//! `accept_bound_stream_with`, clear messages after the key confirmation). A fourth runs PKI
//! mode's clear hello and reply (`accept_pki_stream`, `connect_pki_stream`) against the
//! fuzzer's bytes: a node takes a hello only if its secret derives the id it names.
//!
//! Client links run version 3 (`docs/PROTOCOL.md`, "Handshake"): message 1 carries the session
//! id and a timestamp, and the key confirmation starts with the session secret that id derives
//! from. The fuzzer's dialler holds a secret of its own and sends its id or any other, and its
//! secret or any bytes in the key confirmation; the crate's accepting side may refuse message 1
//! (as a replayed one), and may agree to routed messages. Peer links run the peer protocol's
//! version 4: message 1 carries the dialler's node id, instance and timestamp, and the crate's
//! acceptor refuses a timestamp its replay guard took before (the fuzzer may have the guard take
//! the one its hello carries first).
//!
//! Checked: nothing panics; a side that completes the handshake got exactly what the fuzzer's
//! side authenticated (its key confirmation's frames after a secret that derives message 1's
//! session id, its hello or reply), never a dialler its callback refused, and its link reader yields
//! exactly the transport messages the fuzzer sealed, in order, and then an error or the end; two
//! honest sides with nothing corrupted always complete. The runtime's clock is paused, so a side
//! that waits for bytes that never come ends at its handshake timeout at once.
#![no_main]

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use wanmux_core::keys::{PrivateKey, Psk, PublicKey};
use wanmux_core::noise::{
    self, BoxRead, BoxWrite, ClientAuth, ClientHello, LinkError, LinkReader, PeerHello,
    ReceivedHello, ServerAuth, ServerHello, SessionSecret, SESSION_SECRET_LEN,
};

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_MSG: usize = noise::MAX_HANDSHAKE_MESSAGE;

/// Which link kind and which mode the crate's side is configured for.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Kind {
    Client,
    Peer,
}

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern {
    Ik,
    IkPsk2,
    NnPsk0,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Cipher {
    ChaChaPoly,
    AesGcm,
}

/// A key the fuzzer's side uses: the one the other side expects, or another.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum KeyChoice {
    Right,
    Wrong,
}

/// The plaintext of a handshake payload.
#[derive(Arbitrary, Debug)]
enum Payload {
    /// What an honest side of this kind sends, with these fields: a client hello's session id
    /// (`None`: the id of the dialler's secret), link seq, flags and timestamp (`value`); a peer
    /// hello's node id, instance (`value`) and timestamp (`seq`); a reply's node id, status (from
    /// `flags`) and epoch or instance (`value`).
    Valid {
        id: Option<[u8; 16]>,
        seq: u32,
        flags: u8,
        value: u64,
        node: u16,
    },
    /// Any bytes.
    Raw(Vec<u8>),
}

/// Changes to one message on the wire.
#[derive(Arbitrary, Debug, Default)]
struct Damage {
    /// XOR these bytes at these positions of the message (modulo its length).
    flips: Vec<(u16, u8)>,
    /// Send only this many bytes of it (the length prefix still says the full length).
    cut: Option<u16>,
    /// Put this in the length prefix instead.
    len: Option<u16>,
}

impl Damage {
    fn is_none(&self) -> bool {
        self.flips.iter().all(|&(_, x)| x == 0) && self.cut.is_none() && self.len.is_none()
    }

    /// `len | message`, damaged.
    fn frame(&self, msg: &[u8]) -> Vec<u8> {
        let mut m = msg.to_vec();
        if !m.is_empty() {
            for &(at, x) in &self.flips {
                let i = usize::from(at) % m.len();
                m[i] ^= x;
            }
        }
        let len = self.len.unwrap_or(m.len() as u16);
        if let Some(cut) = self.cut {
            m.truncate(usize::from(cut));
        }
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&m);
        out
    }
}

/// What the fuzzer's side sends once the handshake is through: transport messages sealed with
/// the link's keys (some damaged), then raw bytes.
#[derive(Arbitrary, Debug)]
struct Tail {
    messages: Vec<(Vec<u8>, Damage)>,
    garbage: Vec<u8>,
}

/// The plaintext of the fuzzer's key confirmation (its first transport message).
#[derive(Arbitrary, Debug)]
enum Confirm {
    /// The dialler's session secret, then these frames (what an honest client sends).
    Secret(Vec<u8>),
    /// Any bytes.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Scenario {
    /// The fuzzer dials the crate's accepting side.
    Dial {
        kind: Kind,
        /// The accepting side's mode (`NnPsk0` on a peer listener is refused by its config).
        server: Pattern,
        pattern: Pattern,
        cipher: Cipher,
        /// Sent instead of the mode byte.
        mode_byte: Option<u8>,
        local: KeyChoice,
        remote: KeyChoice,
        psk: KeyChoice,
        /// The dialler's session secret (client links).
        secret: [u8; SESSION_SECRET_LEN],
        hello: Payload,
        msg1: Damage,
        /// The crate's side refuses message 1 (as a replayed one).
        refuse: bool,
        confirm: Confirm,
        msg3: Damage,
        tail: Tail,
    },
    /// The crate's dialling side dials the fuzzer.
    Accept {
        kind: Kind,
        client: Pattern,
        /// The crate's dialler asks for routed messages.
        relay: bool,
        local: KeyChoice,
        psk: KeyChoice,
        reply: Payload,
        msg2: Damage,
        /// Raw bytes in place of message 2.
        raw: Option<Vec<u8>>,
        tail: Tail,
    },
    /// The crate's two sides, through a pipe that damages what passes.
    Both {
        kind: Kind,
        pattern: Pattern,
        relay: bool,
        /// Client links bound to a TLS exporter: the client's and the node's (each 32 times the
        /// byte); different ones must fail the handshake.
        bound: Option<(u8, u8)>,
        /// (direction, offset in that direction's byte stream, XOR).
        flips: Vec<(bool, u16, u8)>,
        messages: Vec<Vec<u8>>,
    },
    /// PKI mode (QUIC links whose certificates TLS verified): the clear hello and its reply.
    /// The fuzzer plays the client to the crate's node side (a valid hello with any damage, or
    /// any bytes), then the node to the crate's client side (any reply bytes), each followed by
    /// `len | frames` messages.
    Pki {
        secret: [u8; SESSION_SECRET_LEN],
        /// The id the hello names: the secret's own, or any other.
        id: Option<[u8; 16]>,
        /// Bytes 22 (flags) and 1 (version) of the hello as sent, if set.
        flags: Option<u8>,
        version: Option<u8>,
        /// Raw bytes in place of the hello.
        raw: Option<Vec<u8>>,
        /// The crate's node refuses the hello.
        refuse: bool,
        /// What the fuzzer's node answers the crate's client.
        reply: Vec<u8>,
        tail: Vec<u8>,
    },
}

struct Keys {
    server: PrivateKey,
    client: PrivateKey,
    other: PrivateKey,
    psk: Psk,
    other_psk: Psk,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        server: PrivateKey::from_bytes([1; 32]),
        client: PrivateKey::from_bytes([2; 32]),
        other: PrivateKey::from_bytes([3; 32]),
        psk: Psk::from_bytes([4; 32]),
        other_psk: Psk::from_bytes([5; 32]),
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    })
}

fn server_auth(p: Pattern) -> ServerAuth {
    let k = keys();
    let allowed: HashSet<PublicKey> = [k.client.public_key()].into();
    match p {
        Pattern::Ik => ServerAuth {
            private_key: Some(k.server.clone()),
            allowed_clients: allowed,
            psk: None,
        },
        Pattern::IkPsk2 => ServerAuth {
            private_key: Some(k.server.clone()),
            allowed_clients: allowed,
            psk: Some(k.psk.clone()),
        },
        Pattern::NnPsk0 => ServerAuth {
            private_key: None,
            allowed_clients: HashSet::new(),
            psk: Some(k.psk.clone()),
        },
    }
}

fn client_auth(p: Pattern, local: KeyChoice, psk: KeyChoice) -> ClientAuth {
    let k = keys();
    let psk = match psk {
        KeyChoice::Right => k.psk.clone(),
        KeyChoice::Wrong => k.other_psk.clone(),
    };
    let local = match local {
        KeyChoice::Right => k.client.clone(),
        KeyChoice::Wrong => k.other.clone(),
    };
    match p {
        Pattern::Ik => ClientAuth::Static {
            local,
            server: k.server.public_key(),
            psk: None,
        },
        Pattern::IkPsk2 => ClientAuth::Static {
            local,
            server: k.server.public_key(),
            psk: Some(psk),
        },
        Pattern::NnPsk0 => ClientAuth::Psk(psk),
    }
}

fn mode_byte(p: Pattern, c: Cipher) -> u8 {
    let p = match p {
        Pattern::Ik => 1,
        Pattern::IkPsk2 => 2,
        Pattern::NnPsk0 => 3,
    };
    let c = match c {
        Cipher::ChaChaPoly => 1,
        Cipher::AesGcm => 2,
    };
    p << 4 | c
}

fn from_mode_byte(b: u8) -> Option<(Pattern, Cipher)> {
    let p = match b >> 4 {
        1 => Pattern::Ik,
        2 => Pattern::IkPsk2,
        3 => Pattern::NnPsk0,
        _ => return None,
    };
    let c = match b & 0xf {
        1 => Cipher::ChaChaPoly,
        2 => Cipher::AesGcm,
        _ => return None,
    };
    Some((p, c))
}

fn params(p: Pattern, c: Cipher) -> snow::params::NoiseParams {
    let p = match p {
        Pattern::Ik => "IK",
        Pattern::IkPsk2 => "IKpsk2",
        Pattern::NnPsk0 => "NNpsk0",
    };
    let c = match c {
        Cipher::ChaChaPoly => "ChaChaPoly",
        Cipher::AesGcm => "AESGCM",
    };
    format!("Noise_{p}_25519_{c}_BLAKE2s")
        .parse()
        .expect("valid")
}

fn prologue(mode: u8) -> Vec<u8> {
    let mut p = b"wanmux v1".to_vec();
    p.push(mode);
    p
}

/// Message 2's status byte from a payload's `flags`: mostly 0 or "routed messages agreed"
/// (`0x80`), sometimes any byte.
fn status(flags: u8) -> u8 {
    if flags & 0x40 != 0 {
        flags
    } else {
        flags & 0x80
    }
}

/// The plaintext of message 1 (`hello`) or 2 (not `hello`) of a link of `kind`, in the
/// protocol's layout; `secret` is the dialler's session secret.
fn payload(kind: Kind, hello: bool, p: &Payload, secret: &SessionSecret) -> Vec<u8> {
    let (id, seq, flags, value, node) = match p {
        Payload::Raw(b) => return b.clone(),
        Payload::Valid {
            id,
            seq,
            flags,
            value,
            node,
        } => (id, seq, flags, value, node),
    };
    let mut out = Vec::new();
    match (kind, hello) {
        (Kind::Client, true) => {
            // version 3 | session id | link seq | flags | timestamp
            out.push(3);
            out.extend_from_slice(&id.unwrap_or_else(|| secret.id()));
            out.extend_from_slice(&seq.to_be_bytes());
            out.push(*flags);
            out.extend_from_slice(&value.to_be_bytes());
        }
        (Kind::Peer, true) => {
            // version 4 | role 2 | node id | instance | timestamp
            out.extend_from_slice(&[4, 2]);
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&value.to_be_bytes());
            out.extend_from_slice(&u64::from(*seq).to_be_bytes());
        }
        (_, false) => {
            out.push(reply_version(kind));
            out.extend_from_slice(&node.to_be_bytes());
            out.push(status(*flags));
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
    out
}

fn pipe() -> ((BoxRead, BoxWrite), DuplexStream) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (rd, wr) = tokio::io::split(a);
    ((Box::new(rd), Box::new(wr)), b)
}

/// Reads `len | message` (at most [`MAX_MSG`]); `None` at EOF or a longer length.
async fn read_msg(s: &mut DuplexStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_MSG {
        return None;
    }
    let mut m = vec![0u8; len];
    s.read_exact(&mut m).await.ok()?;
    Some(m)
}

/// Sends the transport messages of `tail`, sealed from nonce `nonce` on, then its garbage.
/// Returns the plaintexts a reader must yield: those up to the first damaged one.
async fn send_tail(
    s: &mut DuplexStream,
    state: &snow::StatelessTransportState,
    mut nonce: u64,
    tail: &Tail,
) -> Vec<Vec<u8>> {
    let mut expect = Vec::new();
    let mut intact = true;
    let mut buf = vec![0u8; 65_535];
    for (plain, damage) in tail.messages.iter().take(8) {
        let plain = &plain[..plain.len().min(2048)];
        let Ok(n) = state.write_message(nonce, plain, &mut buf) else {
            return expect;
        };
        nonce += 1;
        intact &= damage.is_none();
        if intact {
            expect.push(plain.to_vec());
        }
        if s.write_all(&damage.frame(&buf[..n])).await.is_err() {
            return expect;
        }
    }
    let _ = s
        .write_all(&tail.garbage[..tail.garbage.len().min(16 << 10)])
        .await;
    expect
}

/// Reads what the crate's reader yields and checks it against `expect`: that, in order, then
/// anything but another message of the fuzzer's (an error, or the end).
async fn check_reader(mut reader: LinkReader, expect: Vec<Vec<u8>>) {
    for want in &expect {
        match reader.recv().await {
            Ok(Some(got)) => assert_eq!(&got[..], &want[..], "a transport message changed"),
            other => panic!("reader lost an intact message: {other:?}"),
        }
    }
    // What follows is damaged or garbage: whatever the reader makes of it, it ends.
    for _ in 0..64 {
        match reader.recv().await {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
}

/// A client hello in the protocol's layout (`version 3 | session id | link seq | flags |
/// timestamp`, 30 bytes; flag bit 0 a lane, bit 1 routed messages, the others ignored).
fn parse_client_hello(p: &[u8]) -> Option<ReceivedHello> {
    if p.len() != 30 || p[0] != 3 {
        return None;
    }
    Some(ReceivedHello {
        session_id: p[1..17].try_into().ok()?,
        link_seq: u32::from_be_bytes(p[17..21].try_into().ok()?),
        lane: p[21] & 1 != 0,
        relay: p[21] & 2 != 0,
        timestamp: u64::from_be_bytes(p[22..30].try_into().ok()?),
    })
}

/// A peer hello (`version 4 | role 2 | node id | instance | timestamp`) and its timestamp.
fn parse_peer_hello(p: &[u8]) -> Option<(PeerHello, u64)> {
    if p.len() != 20 || p[0] != 4 || p[1] != 2 {
        return None;
    }
    let hello = PeerHello {
        node_id: u16::from_be_bytes([p[2], p[3]]),
        instance: u64::from_be_bytes(p[4..12].try_into().ok()?),
    };
    Some((hello, u64::from_be_bytes(p[12..20].try_into().ok()?)))
}

/// The version byte of message 2: 3 on client links, 4 (the peer protocol's) on peer links.
fn reply_version(kind: Kind) -> u8 {
    match kind {
        Kind::Client => 3,
        Kind::Peer => 4,
    }
}

/// Message 2's payload (`version | node id | status | value`): node id, value, and whether
/// the node agreed to routed messages (status `0x80`, client links only; otherwise status 0).
fn parse_reply(kind: Kind, p: &[u8]) -> Option<(u16, u64, bool)> {
    if p.len() != 12 || p[0] != reply_version(kind) {
        return None;
    }
    let relay = match (kind, p[3]) {
        (_, 0) => false,
        (Kind::Client, 0x80) => true,
        _ => return None,
    };
    Some((
        u16::from_be_bytes([p[1], p[2]]),
        u64::from_be_bytes(p[4..12].try_into().ok()?),
        relay,
    ))
}

async fn dial(s: Scenario) {
    let Scenario::Dial {
        kind,
        server,
        pattern,
        cipher,
        mode_byte: wire_mode,
        local,
        remote,
        psk,
        secret,
        hello,
        msg1,
        refuse,
        confirm,
        msg3,
        tail,
    } = s
    else {
        unreachable!()
    };
    let k = keys();
    let auth = server_auth(server);
    let ((rd, wr), mut fz) = pipe();
    // The timestamp of a valid peer hello: the one a refusing guard took before.
    let refused_ts = match &hello {
        Payload::Valid { seq, .. } => u64::from(*seq),
        Payload::Raw(_) => 0,
    };
    let crate_side = async move {
        let (first, reader, got_client, got_peer, key) = match kind {
            Kind::Client => {
                let r = noise::accept_stream_with(rd, wr, &auth, TIMEOUT, |h, _| {
                    if refuse {
                        return Err(LinkError::Replayed);
                    }
                    Ok(ServerHello {
                        node_id: 7,
                        epoch: 9,
                        relay: h.relay,
                    })
                })
                .await;
                let Ok(a) = r else { return None };
                (a.first, a.reader, Some(a.hello), None, a.client_key)
            }
            Kind::Peer => {
                // With `refuse`, the guard took the timestamp a valid hello carries before.
                let replays = std::sync::Mutex::new(noise::ReplayGuard::default());
                if refuse {
                    let who = noise::Identity::Peer(k.client.public_key());
                    replays.lock().unwrap().take(who, refused_ts).unwrap();
                }
                let r = noise::accept_peer_stream(rd, wr, &auth, &replays, TIMEOUT, |_, _| {
                    Ok(PeerHello {
                        node_id: 7,
                        instance: 9,
                    })
                })
                .await;
                let Ok(a) = r else { return None };
                (a.first, a.reader, None, Some(a.hello), Some(a.key))
            }
        };
        Some((first, reader, got_client, got_peer, key))
    };
    let secret = SessionSecret::from_bytes(secret);
    let sent_hello = payload(kind, true, &hello, &secret);
    let hello_bytes = sent_hello.clone();
    let confirm = match confirm {
        Confirm::Secret(frames) => {
            let mut c = secret.as_bytes().to_vec();
            c.extend_from_slice(&frames);
            c
        }
        Confirm::Raw(c) => c,
    };
    let fuzz_side = async move {
        let mode = mode_byte(pattern, cipher);
        let local_key = match local {
            KeyChoice::Right => &k.client,
            KeyChoice::Wrong => &k.other,
        };
        let remote_key = match remote {
            KeyChoice::Right => k.server.public_key(),
            KeyChoice::Wrong => k.other.public_key(),
        };
        let psk_key = match psk {
            KeyChoice::Right => &k.psk,
            KeyChoice::Wrong => &k.other_psk,
        };
        let pro = prologue(mode);
        let b = snow::Builder::new(params(pattern, cipher))
            .prologue(&pro)
            .expect("prologue");
        let hs = match pattern {
            Pattern::Ik => b
                .local_private_key(local_key.as_bytes())
                .and_then(|b| b.remote_public_key(remote_key.as_bytes()))
                .and_then(|b| b.build_initiator()),
            Pattern::IkPsk2 => b
                .local_private_key(local_key.as_bytes())
                .and_then(|b| b.remote_public_key(remote_key.as_bytes()))
                .and_then(|b| b.psk(2, psk_key.as_bytes()))
                .and_then(|b| b.build_initiator()),
            Pattern::NnPsk0 => b
                .psk(0, psk_key.as_bytes())
                .and_then(|b| b.build_initiator()),
        };
        let mut hs = hs.expect("initiator");
        let mut buf = vec![0u8; 65_535];
        let Ok(n) = hs.write_message(&hello_bytes, &mut buf) else {
            return None;
        };
        let mut out = vec![wire_mode.unwrap_or(mode)];
        out.extend_from_slice(&msg1.frame(&buf[..n]));
        fz.write_all(&out).await.ok()?;
        let m2 = read_msg(&mut fz).await?;
        let mut plain = vec![0u8; 65_535];
        // In `IKpsk2` the PSK is mixed in after message 1, so the crate's side answers a dialler
        // with the wrong one, whose reply then does not decrypt here.
        let n = match hs.read_message(&m2, &mut plain) {
            Ok(n) => n,
            Err(_) => {
                assert!(
                    pattern == Pattern::IkPsk2 && matches!(psk, KeyChoice::Wrong),
                    "message 2 from the crate did not decrypt"
                );
                return None;
            }
        };
        let reply = plain[..n].to_vec();
        let state = hs.into_stateless_transport_mode().expect("transport");
        let confirm = &confirm[..confirm.len().min(MAX_MSG - 16)];
        let n = state.write_message(0, confirm, &mut buf).expect("seal");
        fz.write_all(&msg3.frame(&buf[..n])).await.ok()?;
        let expect = send_tail(&mut fz, &state, 1, &tail).await;
        drop(fz);
        Some((reply, confirm.to_vec(), expect))
    };
    let (crate_end, fuzz_end) = tokio::join!(crate_side, fuzz_side);
    let Some((first, reader, got_client, got_peer, key)) = crate_end else {
        return;
    };
    // Accepted: the fuzzer's side must have sent a valid hello, in an allowed mode, with the
    // right keys, and its confirmation intact.
    let (reply, confirm, expect) = fuzz_end.expect("accepted a dialler that gave up");
    let mode = mode_byte(pattern, cipher);
    assert!(
        wire_mode.is_none_or(|m| m == mode),
        "accepted another mode byte"
    );
    assert_eq!(pattern, server, "accepted another mode than configured");
    if pattern != Pattern::NnPsk0 {
        assert_eq!(key, Some(k.client.public_key()), "accepted another key");
    }
    assert!(
        !matches!(psk, KeyChoice::Wrong) || pattern == Pattern::Ik,
        "wrong PSK accepted"
    );
    let relay = match kind {
        Kind::Client => {
            assert!(!refuse, "accepted a dialler the callback refused");
            let want = parse_client_hello(&sent_hello);
            assert_eq!(got_client, want, "client hello");
            let want = want.expect("a client hello");
            // The key confirmation: the session secret whose id message 1 named, then frames.
            let (proof, frames) = confirm
                .split_first_chunk::<SESSION_SECRET_LEN>()
                .expect("accepted a key confirmation shorter than a session secret");
            assert_eq!(
                SessionSecret::from_bytes(*proof).id(),
                want.session_id,
                "accepted a key confirmation without the session's secret"
            );
            assert_eq!(&first[..], frames, "key confirmation changed");
            want.relay
        }
        Kind::Peer => {
            let (want, ts) = parse_peer_hello(&sent_hello).expect("accepted a malformed hello");
            assert_eq!(got_peer, Some(want), "peer hello");
            // A refusing guard took `refused_ts`: it and everything a window or more below it
            // are replays.
            let floor = refused_ts.saturating_sub(noise::replay::WINDOW);
            assert!(
                !refuse || (ts != refused_ts && ts > floor),
                "accepted a replayed peer hello (timestamp {ts}, taken {refused_ts})"
            );
            assert_eq!(&first[..], &confirm[..], "key confirmation changed");
            false
        }
    };
    assert_eq!(parse_reply(kind, &reply), Some((7, 9, relay)), "reply");
    check_reader(reader, expect).await;
}

async fn accept(s: Scenario) {
    let Scenario::Accept {
        kind,
        client,
        relay,
        local,
        psk,
        reply,
        msg2,
        raw,
        tail,
    } = s
    else {
        unreachable!()
    };
    if matches!(kind, Kind::Peer) && client == Pattern::NnPsk0 {
        return;
    }
    let k = keys();
    // The crate's side is honest: its own key and the PSK are right; the fuzzer's are chosen.
    let auth = client_auth(client, KeyChoice::Right, KeyChoice::Right);
    let ((rd, wr), mut fz) = pipe();
    let secret = SessionSecret::from_bytes([6; SESSION_SECRET_LEN]);
    let session = secret.clone();
    let crate_side = async move {
        match kind {
            Kind::Client => {
                let hello = ClientHello {
                    session,
                    link_seq: 1,
                    lane: false,
                    relay,
                };
                let (reader, _w, reply) =
                    noise::connect_stream(rd, wr, &auth, &hello, b"first", TIMEOUT)
                        .await
                        .ok()?;
                Some((reader, (reply.node_id, reply.epoch, reply.relay)))
            }
            Kind::Peer => {
                let hello = PeerHello {
                    node_id: 1,
                    instance: 2,
                };
                let (reader, _w, reply) =
                    noise::connect_peer_stream(rd, wr, &auth, &hello, b"first", TIMEOUT)
                        .await
                        .ok()?;
                Some((reader, (reply.node_id, reply.instance, false)))
            }
        }
    };
    let sent_reply = payload(kind, false, &reply, &secret);
    let reply_bytes = sent_reply.clone();
    let fuzz_side = async move {
        let mut mode = [0u8; 1];
        fz.read_exact(&mut mode).await.ok()?;
        let m1 = read_msg(&mut fz).await?;
        let (pattern, cipher) = from_mode_byte(mode[0]).expect("the crate sends a valid mode");
        let server_key = match local {
            KeyChoice::Right => &k.server,
            KeyChoice::Wrong => &k.other,
        };
        let psk_key = match psk {
            KeyChoice::Right => &k.psk,
            KeyChoice::Wrong => &k.other_psk,
        };
        let pro = prologue(mode[0]);
        let b = snow::Builder::new(params(pattern, cipher))
            .prologue(&pro)
            .expect("prologue");
        let hs = match pattern {
            Pattern::Ik => b
                .local_private_key(server_key.as_bytes())
                .and_then(|b| b.build_responder()),
            Pattern::IkPsk2 => b
                .local_private_key(server_key.as_bytes())
                .and_then(|b| b.psk(2, psk_key.as_bytes()))
                .and_then(|b| b.build_responder()),
            Pattern::NnPsk0 => b
                .psk(0, psk_key.as_bytes())
                .and_then(|b| b.build_responder()),
        };
        let mut hs = hs.expect("responder");
        let mut buf = vec![0u8; 65_535];
        let read = hs.read_message(&m1, &mut buf);
        if let Ok(n) = read {
            // The crate's hello, in the protocol's layout.
            match kind {
                Kind::Client => {
                    let got = parse_client_hello(&buf[..n]).expect("the crate's client hello");
                    assert_eq!(got.session_id, secret.id(), "session id");
                    assert_eq!(
                        (got.link_seq, got.lane, got.relay),
                        (1, false, relay),
                        "client hello"
                    );
                }
                Kind::Peer => assert_eq!(
                    parse_peer_hello(&buf[..n]).map(|(h, _)| h),
                    Some(PeerHello {
                        node_id: 1,
                        instance: 2
                    }),
                    "peer hello"
                ),
            }
        }
        if let Some(raw) = raw {
            fz.write_all(&raw).await.ok()?;
            drop(fz);
            return None;
        }
        read.ok()?;
        let n = hs.write_message(&reply_bytes, &mut buf).ok()?;
        fz.write_all(&msg2.frame(&buf[..n])).await.ok()?;
        let state = hs.into_stateless_transport_mode().expect("transport");
        let m3 = read_msg(&mut fz).await?;
        let mut plain = vec![0u8; 65_535];
        let n = state
            .read_message(0, &m3, &mut plain)
            .expect("the crate's key confirmation decrypts");
        // On a client link: the session secret, then the caller's frames.
        let mut want = Vec::new();
        if matches!(kind, Kind::Client) {
            want.extend_from_slice(secret.as_bytes());
        }
        want.extend_from_slice(b"first");
        assert_eq!(&plain[..n], &want[..], "the crate's key confirmation");
        let expect = send_tail(&mut fz, &state, 0, &tail).await;
        drop(fz);
        Some(expect)
    };
    let (crate_end, fuzz_end) = tokio::join!(crate_side, fuzz_side);
    let Some((reader, got)) = crate_end else {
        return;
    };
    let expect = fuzz_end.expect("the crate's side finished a handshake the fuzzer did not");
    assert!(
        matches!(local, KeyChoice::Right) || client == Pattern::NnPsk0,
        "accepted another server key"
    );
    assert!(
        matches!(psk, KeyChoice::Right) || client == Pattern::Ik,
        "accepted another PSK"
    );
    assert_eq!(Some(got), parse_reply(kind, &sent_reply), "reply");
    check_reader(reader, expect).await;
}

/// Copies `from` to `to`, XORing the bytes at the offsets in `flips`, then shuts `to` down.
async fn damaging_copy<R, W>(mut from: R, mut to: W, flips: Vec<(usize, u8)>)
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut at = 0usize;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &(off, x) in &flips {
            if off >= at && off < at + n {
                buf[off - at] ^= x;
            }
        }
        at += n;
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

async fn both(s: Scenario) {
    let Scenario::Both {
        kind,
        pattern,
        relay,
        bound,
        flips,
        messages,
    } = s
    else {
        unreachable!()
    };
    if matches!(kind, Kind::Peer) && pattern == Pattern::NnPsk0 {
        return;
    }
    // Peer links run over TCP only: never bound.
    let bound = bound.filter(|_| matches!(kind, Kind::Client));
    let binding = |b: u8| noise::ChannelBinding::from_bytes([b; noise::CHANNEL_BINDING_LEN]);
    let (c_bind, s_bind) = (bound.map(|b| binding(b.0)), bound.map(|b| binding(b.1)));
    let mismatched = bound.is_some_and(|(c, s)| c != s);
    let damaged = flips.iter().any(|&(_, _, x)| x != 0);
    let split = |up: bool| -> Vec<(usize, u8)> {
        flips
            .iter()
            .filter(|f| f.0 == up)
            .map(|f| (usize::from(f.1), f.2))
            .collect()
    };
    let (up, down) = (split(true), split(false));
    let ((crd, cwr), c_far) = pipe();
    let ((srd, swr), s_far) = pipe();
    let (c_far_rd, c_far_wr) = tokio::io::split(c_far);
    let (s_far_rd, s_far_wr) = tokio::io::split(s_far);
    let auth_c = client_auth(pattern, KeyChoice::Right, KeyChoice::Right);
    let auth_s = server_auth(pattern);
    let messages: Vec<Vec<u8>> = messages
        .into_iter()
        .take(8)
        .map(|m| m[..m.len().min(noise::MAX_PLAINTEXT)].to_vec())
        .collect();
    let sent = messages.clone();
    let client = async move {
        let (reader, mut writer) = match kind {
            Kind::Client => {
                let hello = ClientHello {
                    session: SessionSecret::from_bytes([6; SESSION_SECRET_LEN]),
                    link_seq: 1,
                    lane: true,
                    relay,
                };
                let (r, w, _) = match &c_bind {
                    Some(b) => {
                        noise::connect_bound_stream(crd, cwr, b, &auth_c, &hello, b"hi", TIMEOUT)
                            .await
                    }
                    None => noise::connect_stream(crd, cwr, &auth_c, &hello, b"hi", TIMEOUT).await,
                }
                .ok()?;
                assert_eq!(w.encrypts(), c_bind.is_none());
                (r, w)
            }
            Kind::Peer => {
                let hello = PeerHello {
                    node_id: 1,
                    instance: 2,
                };
                let (r, w, _) =
                    noise::connect_peer_stream(crd, cwr, &auth_c, &hello, b"hi", TIMEOUT)
                        .await
                        .ok()?;
                (r, w)
            }
        };
        for m in &messages {
            writer.seal(m).ok()?;
        }
        writer.flush().await.ok()?;
        writer.shutdown().await;
        Some(reader)
    };
    let server = async move {
        let (first, mut reader) = match kind {
            Kind::Client => {
                let respond = |h: &ReceivedHello, _: Option<&PublicKey>| {
                    Ok(ServerHello {
                        node_id: 1,
                        epoch: 2,
                        relay: h.relay,
                    })
                };
                let a = match &s_bind {
                    Some(b) => {
                        noise::accept_bound_stream_with(srd, swr, b, &auth_s, TIMEOUT, respond)
                            .await
                    }
                    None => noise::accept_stream_with(srd, swr, &auth_s, TIMEOUT, respond).await,
                }
                .ok()?;
                assert!(
                    !mismatched,
                    "a handshake bound to another exporter was taken"
                );
                assert_eq!(a.reader.decrypts(), s_bind.is_none());
                // The key confirmation proved the secret behind message 1's id.
                assert_eq!(
                    a.hello.session_id,
                    SessionSecret::from_bytes([6; SESSION_SECRET_LEN]).id()
                );
                (a.first, a.reader)
            }
            Kind::Peer => {
                let replays = std::sync::Mutex::new(noise::ReplayGuard::default());
                let a = noise::accept_peer_stream(srd, swr, &auth_s, &replays, TIMEOUT, |h, _| {
                    Ok(PeerHello {
                        node_id: h.node_id.wrapping_add(1),
                        instance: 3,
                    })
                })
                .await
                .ok()?;
                (a.first, a.reader)
            }
        };
        let mut got: Vec<Bytes> = Vec::new();
        loop {
            match reader.recv().await {
                Ok(Some(m)) => got.push(m),
                Ok(None) => return Some((first, got, true)),
                Err(_) => return Some((first, got, false)),
            }
        }
    };
    let (_client, server, (), ()) = tokio::join!(
        client,
        server,
        damaging_copy(c_far_rd, s_far_wr, up),
        damaging_copy(s_far_rd, c_far_wr, down),
    );
    if mismatched {
        assert!(server.is_none());
    } else if !damaged {
        let (first, got, clean) = server.expect("two honest sides failed their handshake");
        assert_eq!(&first[..], b"hi");
        assert!(clean, "an undamaged link ended in an error");
        assert_eq!(got.len(), sent.len(), "messages lost");
        for (g, w) in got.iter().zip(&sent) {
            assert_eq!(&g[..], &w[..]);
        }
    } else if bound.is_some() {
        // A clear link has no integrity of its own (TLS gives it on QUIC): damage after the
        // handshake may change what arrives, which must only not panic or overrun.
    } else if let Some((first, got, _)) = server {
        // Whatever was damaged, what was delivered is what was sent, in order.
        assert_eq!(&first[..], b"hi");
        assert!(got.len() <= sent.len());
        for (g, w) in got.iter().zip(&sent) {
            assert_eq!(&g[..], &w[..], "a damaged link delivered changed bytes");
        }
    }
}

/// PKI mode's hello both ways (see [`Scenario::Pki`]). Checked: nothing panics; the crate's node
/// takes a hello only if its secret derives the id it names, and hands on exactly the hello's
/// fields; the crate's client takes a reply only as it decodes.
async fn pki(s: Scenario) {
    let Scenario::Pki {
        secret,
        id,
        flags,
        version,
        raw,
        refuse,
        reply,
        tail,
    } = s
    else {
        unreachable!()
    };
    let secret_bytes = secret;
    let secret = SessionSecret::from_bytes(secret);
    let named = id.unwrap_or(secret.id());
    let sent = match &raw {
        Some(raw) => raw.clone(),
        None => {
            let mut h = vec![noise::PKI_MODE, version.unwrap_or(4)];
            h.extend_from_slice(&named);
            h.extend_from_slice(&7u32.to_be_bytes());
            h.push(flags.unwrap_or(2));
            h.extend_from_slice(secret.as_bytes());
            h
        }
    };
    // The crate's node.
    let ((rd, wr), mut fz) = pipe();
    let client = PublicKey::from_bytes([5; 32]);
    let node = noise::accept_pki_stream(rd, wr, client, TIMEOUT, |h, c| {
        assert_eq!(c, Some(&client));
        if refuse {
            return Err(LinkError::Replayed);
        }
        Ok(ServerHello {
            node_id: 7,
            epoch: 9,
            relay: h.relay,
        })
    });
    let mut wire = sent.clone();
    wire.extend_from_slice(&tail);
    // Only writes: the pipe holds the node's reply, and nothing waits for the node to close.
    let fuzzer = async move {
        let _ = fz.write_all(&wire).await;
        let _ = fz.shutdown().await;
        fz
    };
    let (accepted, _fz) = tokio::join!(node, fuzzer);
    if let Ok(a) = accepted {
        assert!(raw.is_some() || !refuse, "a refused hello was taken");
        assert!(sent.len() >= 55 && sent[0] == noise::PKI_MODE && sent[1] == 4);
        assert_eq!(a.hello.session_id[..], sent[2..18]);
        assert_eq!(
            SessionSecret::from_bytes(sent[23..55].try_into().unwrap()).id(),
            a.hello.session_id,
            "a hello whose secret does not derive its id was taken"
        );
        assert_eq!(
            a.hello.link_seq,
            u32::from_be_bytes(sent[18..22].try_into().unwrap())
        );
        assert_eq!(a.hello.lane, sent[22] & 1 != 0);
        assert_eq!(a.hello.relay, sent[22] & 2 != 0);
        let mut reader = a.reader;
        while let Ok(Some(m)) = reader.recv().await {
            assert!(m.len() <= 65_519);
        }
    }

    // The crate's client.
    let ((rd, wr), mut fz) = pipe();
    let hello = ClientHello {
        session: secret,
        link_seq: 1,
        lane: false,
        relay: true,
    };
    let dial = noise::connect_pki_stream(rd, wr, &hello, b"hi", TIMEOUT);
    let answer = reply.clone();
    let fuzzer = async move {
        let _ = fz.write_all(&answer).await;
        let _ = fz.shutdown().await;
        fz
    };
    let (dialled, mut fz) = tokio::join!(dial, fuzzer);
    if let Ok((mut reader, _, got)) = dialled {
        assert_eq!(u16::from_be_bytes([reply[1], reply[2]]), got.node_id);
        assert_eq!(
            u64::from_be_bytes(reply[4..12].try_into().unwrap()),
            got.epoch
        );
        while let Ok(Some(m)) = reader.recv().await {
            assert!(m.len() <= 65_519);
        }
    }
    // Every end of the crate's client is dropped: what it sent reads to the end.
    let mut hello_out = Vec::new();
    let _ = fz.read_to_end(&mut hello_out).await;
    assert!(hello_out.len() >= 55 && hello_out[0] == noise::PKI_MODE);
    assert_eq!(hello_out[23..55], secret_bytes[..]);
}

fuzz_target!(|s: Scenario| {
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{s:#?}");
    }
    runtime().block_on(async move {
        match s {
            s @ Scenario::Dial { .. } => dial(s).await,
            s @ Scenario::Accept { .. } => accept(s).await,
            s @ Scenario::Both { .. } => both(s).await,
            s @ Scenario::Pki { .. } => pki(s).await,
        }
    });
});
