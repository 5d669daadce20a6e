//! The hello of a QUIC link in PKI mode (`docs/PROTOCOL.md`, "PKI mode"): no Noise at all. TLS
//! authenticated both ends by their certificates, so the stream opens with a clear hello inside
//! TLS and then carries `len: u16 | frames` messages, as a `wanmux/2` link after its key
//! confirmation. It lives here because it makes the same link halves ([`LinkReader`],
//! [`LinkWriter`] in the clear) as the bound Noise handshake.
//!
//! ```text
//! client -> node   mode: u8 (= 0x40) | version: u8 (= 4) | session_id: [u8; 16] |
//!                  link_seq: u32 | flags: u8 | session_secret: [u8; 32]
//! node -> client   version: u8 (= 4) | node_id: u16 | status: u8 | epoch: u64
//! ```

use std::time::Duration;

use bytes::Buf;
use tokio::io::AsyncWriteExt;
use zeroize::Zeroizing;

use super::handshake::{decode_reply, encode_reply};
use super::transport::{InBuf, LinkReader, LinkWriter, Seal};
use super::{
    Accepted, BoxRead, BoxWrite, ClientHello, LinkError, ReceivedHello, ServerHello, SessionSecret,
    MAX_FIRST_PLAINTEXT, SESSION_SECRET_LEN,
};
use crate::keys::PublicKey;

/// The mode byte of a PKI-mode hello: a high nibble no Noise pattern uses.
pub const PKI_MODE: u8 = 0x40;
/// The hello's version byte.
const VERSION: u8 = 4;
/// `mode | version | session_id | link_seq | flags | session_secret`.
const HELLO_LEN: usize = 1 + 1 + 16 + 4 + 1 + SESSION_SECRET_LEN;
/// `version | node_id | status | epoch`.
const REPLY_LEN: usize = 1 + 2 + 1 + 8;
const FLAG_LANE: u8 = 1;
const FLAG_RELAY: u8 = 2;
const STATUS_RELAY: u8 = 0x80;

/// The client's side on a PKI-mode QUIC link's stream (TLS verified the node's certificate, and
/// the node the client's): sends the hello and `first` (unless empty) as the first clear
/// message at once, then reads the node's reply. Errors as [`super::connect_stream`]'s (the node refuses by closing).
pub async fn connect_pki_stream(
    rd: BoxRead,
    mut wr: BoxWrite,
    hello: &ClientHello,
    first: &[u8],
    timeout: Duration,
) -> Result<(LinkReader, LinkWriter, ServerHello), LinkError> {
    if first.len() > MAX_FIRST_PLAINTEXT {
        return Err(LinkError::Misuse(
            "first message longer than MAX_FIRST_PLAINTEXT",
        ));
    }
    let run = async {
        let mut out = Zeroizing::new([0u8; HELLO_LEN]);
        out[0] = PKI_MODE;
        out[1] = VERSION;
        out[2..18].copy_from_slice(&hello.session.id());
        out[18..22].copy_from_slice(&hello.link_seq.to_be_bytes());
        out[22] = (u8::from(hello.lane) * FLAG_LANE) | (u8::from(hello.relay) * FLAG_RELAY);
        out[23..].copy_from_slice(hello.session.as_bytes());
        wr.write_all(&out[..]).await?;
        let mut writer = LinkWriter::new(wr, Seal::Clear, 0);
        if !first.is_empty() {
            writer.seal(first)?;
        }
        writer.flush().await?;

        let mut inb = InBuf::new(rd, 2 * 1024);
        inb.fill(REPLY_LEN).await?;
        let mut reply = [0u8; REPLY_LEN];
        reply.copy_from_slice(&inb.buf[..REPLY_LEN]);
        inb.buf.advance(REPLY_LEN);
        let relay = reply[3] == STATUS_RELAY;
        if relay {
            reply[3] = 0;
        }
        let (node_id, epoch) = decode_reply(&reply, VERSION)?;
        let reader = LinkReader::new(inb, Seal::Clear, 0);
        Ok((
            reader,
            writer,
            ServerHello {
                node_id,
                epoch,
                relay,
            },
        ))
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| LinkError::Timeout)?
}

/// The node's side on a PKI-mode QUIC link's stream whose client presented a certificate TLS
/// verified, with identity `client` (the SHA-256 of its SubjectPublicKeyInfo, carried in a
/// [`PublicKey`]'s 32 bytes). Reads the hello, checks that its secret derives its session id
/// (constant time), asks `respond` for the reply (which may refuse the client: it then gets
/// nothing) and sends it. [`Accepted::first`] is empty: the client's first frames are the
/// reader's first message. Errors: [`LinkError::Protocol`] for another mode byte or version,
/// [`LinkError::Auth`] for a secret that does not derive the id.
pub async fn accept_pki_stream<F>(
    rd: BoxRead,
    mut wr: BoxWrite,
    client: PublicKey,
    timeout: Duration,
    respond: F,
) -> Result<Accepted, LinkError>
where
    F: FnOnce(&ReceivedHello, Option<&PublicKey>) -> Result<ServerHello, LinkError>,
{
    let run = async {
        let mut inb = InBuf::new(rd, 2 * 1024);
        inb.fill(1).await?;
        if inb.buf[0] != PKI_MODE {
            // A Noise mode byte (or garbage) from a client that presented a certificate.
            return Err(LinkError::Protocol(
                "a client with a certificate must open with the PKI hello (mode 0x40)",
            ));
        }
        inb.fill(2).await?;
        if inb.buf[1] != VERSION {
            return Err(LinkError::Protocol("PKI hello has an unknown version"));
        }
        inb.fill(HELLO_LEN).await?;
        let p = Zeroizing::new(
            <[u8; HELLO_LEN]>::try_from(&inb.buf[..HELLO_LEN])
                .map_err(|_| LinkError::Protocol("PKI hello has the wrong length"))?,
        );
        // The secret is zeroed in the buffer too once read.
        zeroize::Zeroize::zeroize(&mut inb.buf[..HELLO_LEN]);
        inb.buf.advance(HELLO_LEN);
        let mut session_id = [0u8; 16];
        session_id.copy_from_slice(&p[2..18]);
        let secret = SessionSecret::from_bytes(
            p[23..]
                .try_into()
                .map_err(|_| LinkError::Protocol("PKI hello has the wrong length"))?,
        );
        {
            use subtle::ConstantTimeEq as _;
            if !bool::from(secret.id().ct_eq(&session_id)) {
                return Err(LinkError::Auth(
                    "PKI hello: session_secret does not derive session_id",
                ));
            }
        }
        let hello = ReceivedHello {
            session_id,
            link_seq: u32::from_be_bytes([p[18], p[19], p[20], p[21]]),
            lane: p[22] & FLAG_LANE != 0,
            relay: p[22] & FLAG_RELAY != 0,
            // TLS 1.3 without early data cannot be replayed: no clock needed.
            timestamp: 0,
        };
        let reply = respond(&hello, Some(&client))?;
        let mut out = encode_reply(VERSION, reply.node_id, reply.epoch);
        if reply.relay {
            out[3] = STATUS_RELAY;
        }
        wr.write_all(&out).await?;
        wr.flush().await?;
        Ok(Accepted {
            hello,
            client_key: Some(client),
            pki: true,
            first: bytes::Bytes::new(),
            reader: LinkReader::new(inb, Seal::Clear, 0),
            writer: LinkWriter::new(wr, Seal::Clear, 0),
        })
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| LinkError::Timeout)?
}
