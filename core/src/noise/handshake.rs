//! The link handshake: mode byte, Noise messages 1 and 2, key confirmation.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use snow::params::NoiseParams;
use snow::HandshakeState;

use super::cipher::{DirectionKey, TransportKeys};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use zeroize::Zeroizing;

use super::transport::{InBuf, LinkReader, LinkWriter, Seal, LEN_PREFIX};
use super::{
    configure_socket, Accepted, BoxRead, BoxWrite, ChannelBinding, ClientAuth, ClientHello,
    LinkError, ReceivedHello, ServerAuth, ServerHello, SessionSecret, MAX_FIRST_PLAINTEXT,
    MAX_HANDSHAKE_MESSAGE, SESSION_SECRET_LEN, TAG_LEN,
};
use crate::keys::{PublicKey, KEY_LEN};

/// Version byte of both handshake payloads. Version 2 raised the initial stream credit from
/// 256 KiB to 2 MiB (`engine::INITIAL_STREAM_CREDIT`); version 3 added message 1's timestamp
/// and the session secret in the key confirmation. A peer of another version would misread
/// them, so the hello refuses it instead.
const VERSION: u8 = 3;
/// `version | session_id | link_seq | flags | timestamp`.
const CLIENT_HELLO_LEN: usize = 1 + 16 + 4 + 1 + 8;
/// `version | node_id | status | epoch`.
const SERVER_HELLO_LEN: usize = 1 + 2 + 1 + 8;
/// The prologue is this string followed by the mode byte (and, on a QUIC link bound to its TLS
/// connection, the [`ChannelBinding`]).
const PROLOGUE_PREFIX: &[u8; 9] = b"wanmux v1";
/// Read chunk during the handshake: enough for the largest handshake message and its header,
/// small enough that half-open connections cost little.
const HANDSHAKE_CHUNK: usize = 2 * 1024;

/// Noise handshake pattern, the high nibble of the mode byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pattern {
    Ik,
    IkPsk2,
    NnPsk0,
}

/// AEAD cipher, the low nibble of the mode byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cipher {
    ChaChaPoly,
    AesGcm,
}

impl Cipher {
    /// AES-GCM where the CPU has AES and carry-less multiply instructions (x86_64), else
    /// ChaCha20-Poly1305, which is faster in software.
    pub(super) fn preferred() -> Cipher {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq") {
            return Cipher::AesGcm;
        }
        Cipher::ChaChaPoly
    }
}

/// Pattern and cipher of a link, sent as the first byte of the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mode {
    pub(super) pattern: Pattern,
    pub(super) cipher: Cipher,
}

impl Mode {
    pub(super) fn to_byte(self) -> u8 {
        let pattern = match self.pattern {
            Pattern::Ik => 1,
            Pattern::IkPsk2 => 2,
            Pattern::NnPsk0 => 3,
        };
        let cipher = match self.cipher {
            Cipher::ChaChaPoly => 1,
            Cipher::AesGcm => 2,
        };
        pattern << 4 | cipher
    }

    pub(super) fn from_byte(byte: u8) -> Result<Mode, LinkError> {
        let pattern = match byte >> 4 {
            1 => Pattern::Ik,
            2 => Pattern::IkPsk2,
            3 => Pattern::NnPsk0,
            _ => {
                return Err(LinkError::Protocol(
                    "unknown handshake pattern in mode byte",
                ))
            }
        };
        let cipher = match byte & 0x0f {
            1 => Cipher::ChaChaPoly,
            2 => Cipher::AesGcm,
            _ => return Err(LinkError::Protocol("unknown cipher in mode byte")),
        };
        Ok(Mode { pattern, cipher })
    }

    /// `Noise_<pattern>_25519_<cipher>_BLAKE2s`.
    pub(super) fn params(self) -> NoiseParams {
        let pattern = match self.pattern {
            Pattern::Ik => "IK",
            Pattern::IkPsk2 => "IKpsk2",
            Pattern::NnPsk0 => "NNpsk0",
        };
        let cipher = match self.cipher {
            Cipher::ChaChaPoly => "ChaChaPoly",
            Cipher::AesGcm => "AESGCM",
        };
        format!("Noise_{pattern}_25519_{cipher}_BLAKE2s")
            .parse()
            // Six fixed names, all valid; the test `every_mode_round_trips` builds each one.
            .expect("wanmux Noise protocol names are valid")
    }

    /// `wanmux v1` followed by the mode byte, so a changed mode byte breaks the handshake, and
    /// then the TLS exporter of a bound link (`binding`), so a handshake relayed onto another
    /// TLS connection breaks too.
    pub(super) fn prologue(self, binding: Option<&ChannelBinding>) -> Zeroizing<Vec<u8>> {
        let mut p = Zeroizing::new(Vec::with_capacity(10 + super::CHANNEL_BINDING_LEN));
        p.extend_from_slice(PROLOGUE_PREFIX);
        p.push(self.to_byte());
        if let Some(b) = binding {
            p.extend_from_slice(b.as_bytes());
        }
        p
    }
}

/// A snow error on our side (handshake state setup, RNG): local trouble, not the peer's.
fn local(e: snow::Error) -> LinkError {
    LinkError::Io(io::Error::other(e))
}

/// Runs the client side of the handshake on `tcp` and sends `first` as the key confirmation:
/// [`connect_stream`] on the two halves of `tcp`, after [`configure_socket`]. The halves
/// remember the peer's address ([`LinkReader::peer_addr`]).
pub async fn connect(
    tcp: TcpStream,
    auth: &ClientAuth,
    hello: &ClientHello,
    first: &[u8],
    timeout: Duration,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    connect_with(tcp, auth, hello, first, timeout, Cipher::preferred()).await
}

/// A TCP link's socket options set, its peer noted and its halves boxed for the stream
/// handshakes.
pub(super) fn tcp_halves(
    tcp: TcpStream,
) -> Result<(BoxRead, BoxWrite, Option<SocketAddr>), LinkError> {
    configure_socket(&tcp)?;
    let peer = tcp.peer_addr().ok();
    let (rd, wr) = tcp.into_split();
    Ok((Box::new(rd), Box::new(wr), peer))
}

/// [`connect`] with the cipher chosen by the caller (tests force each one).
pub(super) async fn connect_with(
    tcp: TcpStream,
    auth: &ClientAuth,
    hello: &ClientHello,
    first: &[u8],
    timeout: Duration,
    cipher: Cipher,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    let (rd, wr, peer) = tcp_halves(tcp)?;
    let (mut reader, mut writer, server_hello) =
        connect_stream_with(rd, wr, None, auth, hello, first, timeout, cipher).await?;
    reader.peer = peer;
    writer.peer = peer;
    Ok((reader, writer, server_hello))
}

/// Runs the client side of the handshake over any reliable, ordered byte stream (a TCP
/// connection, a QUIC bidirectional stream), given as its two halves, and sends `first` as the
/// key confirmation.
///
/// The cipher is AES-GCM where the CPU accelerates it, ChaCha20-Poly1305 elsewhere. `first`
/// (one `PING` frame in the protocol) may be at most [`MAX_FIRST_PLAINTEXT`] bytes, since the
/// server reads the key confirmation as a handshake message.
///
/// Errors: [`LinkError::Closed`] (or a reset as [`LinkError::Io`]) when the server refuses the
/// client, which it does by closing without a reply; [`LinkError::Auth`] when message 2 does not
/// decrypt (wrong server key or PSK); [`LinkError::Timeout`] after `timeout`.
pub async fn connect_stream(
    rd: BoxRead,
    wr: BoxWrite,
    auth: &ClientAuth,
    hello: &ClientHello,
    first: &[u8],
    timeout: Duration,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    connect_stream_with(
        rd,
        wr,
        None,
        auth,
        hello,
        first,
        timeout,
        Cipher::preferred(),
    )
    .await
}

/// [`connect_stream`] on a QUIC link on ALPN `wanmux/2`: the handshake's prologue ends with
/// `binding`, the link's TLS exporter, and after the key confirmation the link's messages go in
/// the clear inside TLS, both ways (`docs/PROTOCOL.md`, "QUIC links with one encryption"). The
/// node must run [`accept_bound_stream_with`] with the same binding, which only the other end
/// of the same TLS connection has: a handshake relayed onto another connection fails.
pub async fn connect_bound_stream(
    rd: BoxRead,
    wr: BoxWrite,
    binding: &ChannelBinding,
    auth: &ClientAuth,
    hello: &ClientHello,
    first: &[u8],
    timeout: Duration,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    let cipher = Cipher::preferred();
    connect_stream_with(rd, wr, Some(binding), auth, hello, first, timeout, cipher).await
}

/// [`connect_stream`] with the cipher chosen by the caller, bound to `binding` if given.
#[allow(
    clippy::too_many_arguments,
    reason = "the public entry points' arguments, passed on"
)]
async fn connect_stream_with(
    rd: BoxRead,
    wr: BoxWrite,
    binding: Option<&ChannelBinding>,
    auth: &ClientAuth,
    hello: &ClientHello,
    first: &[u8],
    timeout: Duration,
    cipher: Cipher,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    if first.len() > MAX_FIRST_PLAINTEXT {
        return Err(LinkError::Misuse(
            "first message longer than MAX_FIRST_PLAINTEXT",
        ));
    }
    // The key confirmation: the session secret, then the caller's frames.
    let mut confirm = Zeroizing::new(Vec::with_capacity(SESSION_SECRET_LEN + first.len()));
    confirm.extend_from_slice(hello.session.as_bytes());
    confirm.extend_from_slice(first);
    let handshake = initiate::<ClientLink>(rd, wr, binding, auth, hello, &confirm, cipher);
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// The payloads of one kind of link's handshake: message 1's (the dialler's hello) and message
/// 2's (the reply). Client links and peer links run the same handshake with different payloads
/// (`docs/PROTOCOL.md`, "Peer links"), and neither decodes the other's: the lengths differ and so
/// does the version byte.
pub(super) trait Payloads {
    /// Message 1's payload, as the dialler gives it.
    type Hello;
    /// Message 1's payload, as the acceptor reads it.
    type Received;
    /// Message 2's payload.
    type Reply;
    /// Why a static key that is not on the acceptor's allow-list is refused.
    fn unknown_key(key: PublicKey) -> LinkError;
    fn encode_hello(hello: &Self::Hello) -> Vec<u8>;
    fn decode_hello(p: &[u8]) -> Result<Self::Received, LinkError>;
    fn encode_reply(reply: &Self::Reply) -> Vec<u8>;
    fn decode_reply(p: &[u8]) -> Result<Self::Reply, LinkError>;
}

/// A client link's payloads: [`ClientHello`] and [`ServerHello`].
pub(super) struct ClientLink;

impl Payloads for ClientLink {
    type Hello = ClientHello;
    type Received = ReceivedHello;
    type Reply = ServerHello;
    fn unknown_key(key: PublicKey) -> LinkError {
        // The key is public: the node's log names it, so an operator can allow it.
        LinkError::UnknownClient(key)
    }
    fn encode_hello(hello: &ClientHello) -> Vec<u8> {
        encode_client_hello(hello, timestamp_now()).to_vec()
    }
    fn decode_hello(p: &[u8]) -> Result<ReceivedHello, LinkError> {
        decode_client_hello(p)
    }
    fn encode_reply(reply: &ServerHello) -> Vec<u8> {
        encode_server_hello(reply).to_vec()
    }
    fn decode_reply(p: &[u8]) -> Result<ServerHello, LinkError> {
        decode_server_hello(p)
    }
}

/// The dialling side of the handshake with `P`'s payloads: mode byte and message 1, message 2,
/// then `first` as the key confirmation. With a `binding` the prologue ends with it and the
/// link's halves drop their keys after the key confirmation ([`Seal::Clear`]).
pub(super) async fn initiate<P: Payloads>(
    rd: BoxRead,
    mut wr: BoxWrite,
    binding: Option<&ChannelBinding>,
    auth: &ClientAuth,
    hello: &P::Hello,
    first: &[u8],
    cipher: Cipher,
) -> Result<(LinkReader, LinkWriter, P::Reply), LinkError> {
    let pattern = match auth {
        ClientAuth::Static { psk: None, .. } => Pattern::Ik,
        ClientAuth::Static { psk: Some(_), .. } => Pattern::IkPsk2,
        ClientAuth::Psk(_) => Pattern::NnPsk0,
        ClientAuth::Pki { .. } => {
            return Err(LinkError::Misuse(
                "PKI mode has no Noise handshake: it runs on QUIC links only",
            ))
        }
    };
    let mode = Mode { pattern, cipher };
    let mut hs = client_state(mode, auth, binding).map_err(local)?;

    let mut msg = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .write_message(&P::encode_hello(hello), &mut msg)
        .map_err(local)?;
    let mut out = BytesMut::with_capacity(1 + LEN_PREFIX + n);
    out.put_u8(mode.to_byte());
    put_message(&mut out, &msg[..n]);

    wr.write_all(&out).await?;
    wr.flush().await?;

    let mut inb = InBuf::new(rd, HANDSHAKE_CHUNK);
    let len = read_handshake_message(&mut inb, &mut msg).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .read_message(&msg[..len], &mut payload)
        .map_err(|_| LinkError::Auth("handshake message 2 did not decrypt"))?;
    let reply = P::decode_reply(&payload[..n])?;

    let keys = TransportKeys::split(&mut hs, mode.cipher).map_err(local)?;
    // Nonce 0 of each direction: the dialler's goes to the key confirmation, sealed right here;
    // the acceptor's first transport message is the reader's.
    let mut writer = LinkWriter::new(wr, Seal::Noise(keys.send), 0);
    writer.seal(first)?;
    let reader = if binding.is_some() {
        // The key confirmation was the last message Noise encrypts: TLS carries the rest.
        writer.drop_key();
        LinkReader::new(inb, Seal::Clear, 0)
    } else {
        LinkReader::new(inb, Seal::Noise(keys.recv), 0)
    };
    writer.flush().await?;
    Ok((reader, writer, reply))
}

pub(super) fn client_state(
    mode: Mode,
    auth: &ClientAuth,
    binding: Option<&ChannelBinding>,
) -> Result<HandshakeState, snow::Error> {
    let prologue = mode.prologue(binding);
    let builder = snow::Builder::new(mode.params()).prologue(&prologue)?;
    match auth {
        ClientAuth::Static { local, server, psk } => {
            let builder = builder
                .local_private_key(local.as_bytes())?
                .remote_public_key(server.as_bytes())?;
            match psk {
                Some(psk) => builder.psk(2, psk.as_bytes())?.build_initiator(),
                None => builder.build_initiator(),
            }
        }
        ClientAuth::Psk(psk) => builder.psk(0, psk.as_bytes())?.build_initiator(),
        // `initiate` refuses PKI mode before it gets here.
        ClientAuth::Pki { .. } => Err(snow::Error::Init(
            snow::error::InitStage::ValidateKeyLengths,
        )),
    }
}

/// Runs the server side of the handshake on `tcp`, as node `node_id`: [`accept_with`] with
/// epoch 0 in message 2, and no replay protection (tests).
pub async fn accept(
    tcp: TcpStream,
    auth: &ServerAuth,
    node_id: u16,
    timeout: Duration,
) -> Result<Accepted, LinkError> {
    accept_with(tcp, auth, timeout, |_, _| {
        Ok(ServerHello {
            node_id,
            epoch: 0,
            relay: false,
        })
    })
    .await
}

/// [`accept_stream_with`] on the two halves of `tcp`, after [`configure_socket`]. The halves
/// remember the peer's address ([`LinkReader::peer_addr`]).
pub async fn accept_with<F>(
    tcp: TcpStream,
    auth: &ServerAuth,
    timeout: Duration,
    respond: F,
) -> Result<Accepted, LinkError>
where
    F: FnOnce(&ReceivedHello, Option<&PublicKey>) -> Result<ServerHello, LinkError>,
{
    let (rd, wr, peer) = tcp_halves(tcp)?;
    let mut accepted = accept_stream_with(rd, wr, auth, timeout, respond).await?;
    accepted.reader.peer = peer;
    accepted.writer.peer = peer;
    Ok(accepted)
}

/// Runs the server side of the handshake over any reliable, ordered byte stream (a TCP
/// connection, a QUIC bidirectional stream), given as its two halves. Message 2's payload is
/// chosen by `respond` once message 1 has been authenticated: the server uses it to tell the
/// client the epoch of the session the link joins, so a client learns before sending anything
/// that the server lost its session. `respond` may refuse the client instead (a replayed
/// message 1: [`LinkError::Replayed`], see [`super::ReplayGuard`]); it then gets nothing.
///
/// Returns once the client's key confirmation decrypted and proved the session's secret (see
/// [`SessionSecret`]); its frames are [`Accepted::first`].
/// On any failure the server has sent nothing but (possibly) message 2 and the stream is closed
/// when its halves drop; the error says why, for the caller's log line:
/// [`LinkError::UnknownClient`] for a client key not on the allow-list; [`LinkError::Auth`] for a
/// mode this server does not take, a wrong PSK or server key, a key confirmation without the
/// session's secret, or a replayed message 1 that `respond` let through;
/// [`LinkError::Protocol`] for malformed bytes; [`LinkError::Closed`] if the client hung up;
/// [`LinkError::Timeout`] after `timeout`.
pub async fn accept_stream_with<F>(
    rd: BoxRead,
    wr: BoxWrite,
    auth: &ServerAuth,
    timeout: Duration,
    respond: F,
) -> Result<Accepted, LinkError>
where
    F: FnOnce(&ReceivedHello, Option<&PublicKey>) -> Result<ServerHello, LinkError>,
{
    tokio::time::timeout(timeout, server_handshake(rd, wr, None, auth, respond))
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// [`accept_stream_with`] on a QUIC link on ALPN `wanmux/2`, the node's side of
/// [`connect_bound_stream`]: the prologue ends with `binding`, the link's TLS exporter, so a
/// message 1 made for another TLS connection does not decrypt (refused as
/// [`LinkError::Auth`]), and once the key confirmation decrypted, the link's messages go in
/// the clear inside TLS, both ways.
pub async fn accept_bound_stream_with<F>(
    rd: BoxRead,
    wr: BoxWrite,
    binding: &ChannelBinding,
    auth: &ServerAuth,
    timeout: Duration,
    respond: F,
) -> Result<Accepted, LinkError>
where
    F: FnOnce(&ReceivedHello, Option<&PublicKey>) -> Result<ServerHello, LinkError>,
{
    tokio::time::timeout(
        timeout,
        server_handshake(rd, wr, Some(binding), auth, respond),
    )
    .await
    .map_err(|_| LinkError::Timeout)?
}

async fn server_handshake<F>(
    rd: BoxRead,
    wr: BoxWrite,
    binding: Option<&ChannelBinding>,
    auth: &ServerAuth,
    respond: F,
) -> Result<Accepted, LinkError>
where
    F: FnOnce(&ReceivedHello, Option<&PublicKey>) -> Result<ServerHello, LinkError>,
{
    let r = respond_to::<ClientLink, _>(rd, wr, binding, auth, respond).await?;
    let first = session_frames(&r.hello, &r.first)?;
    Ok(Accepted {
        hello: r.hello,
        client_key: r.key,
        pki: false,
        first,
        reader: r.reader,
        writer: r.writer,
    })
}

/// The frames of a client link's key confirmation `confirm`, after the session secret, which
/// must derive the session id of message 1 (compared in constant time).
fn session_frames(hello: &ReceivedHello, confirm: &[u8]) -> Result<Bytes, LinkError> {
    use subtle::ConstantTimeEq as _;
    let denied = LinkError::Auth("key confirmation does not hold the session's secret");
    let Some((secret, frames)) = confirm.split_first_chunk::<SESSION_SECRET_LEN>() else {
        return Err(denied);
    };
    let secret = SessionSecret::from_bytes(*secret);
    if bool::from(secret.id().ct_eq(&hello.session_id)) {
        Ok(Bytes::copy_from_slice(frames))
    } else {
        Err(denied)
    }
}

/// What [`respond_to`] returns: the dialler's hello and static key, its key confirmation's
/// plaintext, and the link's halves.
pub(super) struct Responded<H> {
    pub(super) hello: H,
    pub(super) key: Option<PublicKey>,
    pub(super) first: Zeroizing<Vec<u8>>,
    pub(super) reader: LinkReader,
    pub(super) writer: LinkWriter,
}

/// The accepting side of the handshake with `P`'s payloads. `respond` sees the authenticated
/// message 1 and chooses message 2, or refuses the dialler, which then gets nothing. With a
/// `binding`, as [`initiate`].
pub(super) async fn respond_to<P, F>(
    rd: BoxRead,
    mut wr: BoxWrite,
    binding: Option<&ChannelBinding>,
    auth: &ServerAuth,
    respond: F,
) -> Result<Responded<P::Received>, LinkError>
where
    P: Payloads,
    F: FnOnce(&P::Received, Option<&PublicKey>) -> Result<P::Reply, LinkError>,
{
    let mut inb = InBuf::new(rd, HANDSHAKE_CHUNK);

    inb.fill(1).await?;
    let mode = Mode::from_byte(inb.buf[0])?;
    if !allows(auth, mode.pattern) {
        return Err(LinkError::Auth("handshake mode not allowed by this server"));
    }
    inb.buf.advance(1);
    let mut hs = server_state(mode, auth, binding).map_err(local)?;

    let mut msg = [0u8; MAX_HANDSHAKE_MESSAGE];
    let len = read_handshake_message(&mut inb, &mut msg).await?;
    let mut payload = [0u8; MAX_HANDSHAKE_MESSAGE];
    let n = hs
        .read_message(&msg[..len], &mut payload)
        .map_err(|_| LinkError::Auth("handshake message 1 did not decrypt"))?;
    let key = match mode.pattern {
        Pattern::Ik | Pattern::IkPsk2 => {
            let key = remote_static(&hs)
                .ok_or(LinkError::Protocol("no client static key after message 1"))?;
            if !auth.allowed_clients.contains(&key) {
                return Err(P::unknown_key(key));
            }
            Some(key)
        }
        Pattern::NnPsk0 => None,
    };
    let hello = P::decode_hello(&payload[..n])?;

    let reply = respond(&hello, key.as_ref())?;
    let n = hs
        .write_message(&P::encode_reply(&reply), &mut msg)
        .map_err(local)?;
    let mut out = BytesMut::with_capacity(LEN_PREFIX + n);
    put_message(&mut out, &msg[..n]);
    wr.write_all(&out).await?;
    wr.flush().await?;

    let keys = TransportKeys::split(&mut hs, mode.cipher).map_err(local)?;
    let first = read_key_confirmation(&mut inb, &keys.recv).await?;
    // The dialler's nonce 0 was the key confirmation; the acceptor has sent nothing yet. A bound
    // link drops the keys here: TLS carries the rest.
    let (reader, writer) = if binding.is_some() {
        (
            LinkReader::new(inb, Seal::Clear, 1),
            LinkWriter::new(wr, Seal::Clear, 0),
        )
    } else {
        (
            LinkReader::new(inb, Seal::Noise(keys.recv), 1),
            LinkWriter::new(wr, Seal::Noise(keys.send), 0),
        )
    };
    Ok(Responded {
        hello,
        key,
        first,
        reader,
        writer,
    })
}

/// Whether a server configured as `auth` takes `pattern` (see [`ServerAuth`]).
fn allows(auth: &ServerAuth, pattern: Pattern) -> bool {
    match pattern {
        Pattern::Ik => auth.private_key.is_some() && auth.psk.is_none(),
        Pattern::IkPsk2 => auth.private_key.is_some() && auth.psk.is_some(),
        Pattern::NnPsk0 => auth.private_key.is_none() && auth.psk.is_some(),
    }
}

/// The responder state for `mode`; the caller checked [`allows`] first, so the keys it needs are
/// configured (a missing one is reported by snow as an error, never a panic).
fn server_state(
    mode: Mode,
    auth: &ServerAuth,
    binding: Option<&ChannelBinding>,
) -> Result<HandshakeState, snow::Error> {
    let prologue = mode.prologue(binding);
    let mut builder = snow::Builder::new(mode.params()).prologue(&prologue)?;
    if let (Pattern::Ik | Pattern::IkPsk2, Some(key)) = (mode.pattern, &auth.private_key) {
        builder = builder.local_private_key(key.as_bytes())?;
    }
    match (mode.pattern, &auth.psk) {
        (Pattern::IkPsk2, Some(psk)) => builder.psk(2, psk.as_bytes())?.build_responder(),
        (Pattern::NnPsk0, Some(psk)) => builder.psk(0, psk.as_bytes())?.build_responder(),
        _ => builder.build_responder(),
    }
}

/// The peer's static key, once message 1 of `IK` delivered it.
fn remote_static(hs: &HandshakeState) -> Option<PublicKey> {
    let key = <[u8; KEY_LEN]>::try_from(hs.get_remote_static()?).ok()?;
    Some(PublicKey::from_bytes(key))
}

/// Appends `len: u16 | message`; `message` is at most [`MAX_HANDSHAKE_MESSAGE`] bytes.
fn put_message(out: &mut BytesMut, message: &[u8]) {
    debug_assert!(message.len() <= MAX_HANDSHAKE_MESSAGE);
    out.put_u16(message.len() as u16);
    out.extend_from_slice(message);
}

/// Reads one `len: u16 | message` into `msg` and returns `len`. A length over
/// [`MAX_HANDSHAKE_MESSAGE`] is refused before any of the message is read.
async fn read_handshake_message(
    inb: &mut InBuf,
    msg: &mut [u8; MAX_HANDSHAKE_MESSAGE],
) -> Result<usize, LinkError> {
    inb.fill(LEN_PREFIX).await?;
    let len = inb.peek_len();
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(LinkError::Protocol(
            "handshake message longer than 1024 bytes",
        ));
    }
    inb.fill(LEN_PREFIX + len).await?;
    msg[..len].copy_from_slice(&inb.buf[LEN_PREFIX..LEN_PREFIX + len]);
    inb.buf.advance(LEN_PREFIX + len);
    Ok(len)
}

/// Reads and decrypts the client's first transport message (nonce 0). The plaintext holds the
/// session secret on a client link: it is zeroed when dropped.
async fn read_key_confirmation(
    inb: &mut InBuf,
    key: &DirectionKey,
) -> Result<Zeroizing<Vec<u8>>, LinkError> {
    let mut msg = Zeroizing::new([0u8; MAX_HANDSHAKE_MESSAGE]);
    let len = read_handshake_message(inb, &mut msg).await?;
    if len < TAG_LEN {
        return Err(LinkError::Protocol(
            "transport message shorter than its tag",
        ));
    }
    let n = key
        .open(0, &mut msg[..len])
        .ok_or(LinkError::Auth("key confirmation did not decrypt"))?;
    Ok(Zeroizing::new(msg[..n].to_vec()))
}

/// Message 1's payload for `hello`, written at `timestamp` ([`timestamp_now`]).
pub(super) fn encode_client_hello(hello: &ClientHello, timestamp: u64) -> [u8; CLIENT_HELLO_LEN] {
    let mut p = [0u8; CLIENT_HELLO_LEN];
    p[0] = VERSION;
    p[1..17].copy_from_slice(&hello.session.id());
    p[17..21].copy_from_slice(&hello.link_seq.to_be_bytes());
    p[21] = (u8::from(hello.lane) * FLAG_LANE) | (u8::from(hello.relay) * FLAG_RELAY);
    p[22..30].copy_from_slice(&timestamp.to_be_bytes());
    p
}

/// The clock of message 1: nanoseconds since the Unix epoch, strictly increasing within this
/// process (a clock that steps back, or two links in the same nanosecond, still give each
/// message 1 a timestamp above the last), so a node can tell a replay by it
/// (`docs/PROTOCOL.md`, "Replay").
pub(super) fn timestamp_now() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let next = |last: u64| Some(now.max(last.saturating_add(1)));
    match LAST.fetch_update(Ordering::AcqRel, Ordering::Acquire, next) {
        // `next` always returns `Some`, so the update succeeded; the closure's value is stored.
        Ok(last) | Err(last) => now.max(last.saturating_add(1)),
    }
}

/// Bit of message 1's flags byte: the link is a dedicated lane.
const FLAG_LANE: u8 = 1;
/// Bit of message 1's flags byte: the client sends and takes routed messages on this link.
const FLAG_RELAY: u8 = 2;
/// Bit of message 2's status byte: the node agrees to routed messages on this link. Sent only
/// to a client that asked ([`FLAG_RELAY`]), so a client that did not ask sees status 0.
const STATUS_RELAY: u8 = 0x80;

/// Parses message 1's payload. Flag bits other than [`FLAG_LANE`] and [`FLAG_RELAY`] are ignored (sent as 0), so a
/// later version can use them without breaking this one.
pub(super) fn decode_client_hello(p: &[u8]) -> Result<ReceivedHello, LinkError> {
    let p: &[u8; CLIENT_HELLO_LEN] = p
        .try_into()
        .map_err(|_| LinkError::Protocol("client hello has the wrong length"))?;
    if p[0] != VERSION {
        return Err(LinkError::Protocol("client hello has an unknown version"));
    }
    let mut session_id = [0u8; 16];
    session_id.copy_from_slice(&p[1..17]);
    let link_seq = u32::from_be_bytes([p[17], p[18], p[19], p[20]]);
    let mut timestamp = [0u8; 8];
    timestamp.copy_from_slice(&p[22..30]);
    Ok(ReceivedHello {
        session_id,
        link_seq,
        lane: p[21] & FLAG_LANE != 0,
        relay: p[21] & FLAG_RELAY != 0,
        timestamp: u64::from_be_bytes(timestamp),
    })
}

pub(super) fn encode_server_hello(h: &ServerHello) -> [u8; SERVER_HELLO_LEN] {
    let mut out = encode_reply(VERSION, h.node_id, h.epoch);
    if h.relay {
        out[3] = STATUS_RELAY;
    }
    out
}

pub(super) fn decode_server_hello(p: &[u8]) -> Result<ServerHello, LinkError> {
    let relay = p.get(3) == Some(&STATUS_RELAY);
    let (node_id, epoch) = if relay {
        let mut plain = p.to_vec();
        plain[3] = 0;
        decode_reply(&plain, VERSION)?
    } else {
        decode_reply(p, VERSION)?
    };
    Ok(ServerHello {
        node_id,
        epoch,
        relay,
    })
}

/// Message 2's payload, the same layout on client and peer links: `version | node_id | status |
/// value`, where status 0 is the only one sent and the value is a client link's epoch or a peer's
/// instance.
pub(super) fn encode_reply(version: u8, node_id: u16, value: u64) -> [u8; SERVER_HELLO_LEN] {
    let mut out = [0u8; SERVER_HELLO_LEN];
    out[0] = version;
    out[1..3].copy_from_slice(&node_id.to_be_bytes());
    out[4..12].copy_from_slice(&value.to_be_bytes());
    out
}

/// Parses message 2's payload ([`encode_reply`]) of the given version: the node id and value.
pub(super) fn decode_reply(p: &[u8], version: u8) -> Result<(u16, u64), LinkError> {
    let p: &[u8; SERVER_HELLO_LEN] = p
        .try_into()
        .map_err(|_| LinkError::Protocol("server hello has the wrong length"))?;
    if p[0] != version {
        return Err(LinkError::Protocol("server hello has an unknown version"));
    }
    if p[3] != 0 {
        return Err(LinkError::Protocol("server hello has a non-zero status"));
    }
    let mut value = [0u8; 8];
    value.copy_from_slice(&p[4..12]);
    Ok((u16::from_be_bytes([p[1], p[2]]), u64::from_be_bytes(value)))
}
