//! Frame codec: the typed records carried in the plaintext of a link message.
//!
//! A message holds one or more whole frames back to back; a frame never spans messages, so a
//! truncated frame is an error, not a request for more bytes. The layout is in
//! `docs/PROTOCOL.md`. Decoding checks `remaining()` before every read and never panics on
//! peer bytes; data payloads are zero-copy slices of the message.

use crate::ids::StreamId;
use bytes::{Buf, BufMut, Bytes};

/// Largest plaintext of one link message (a Noise message is at most 65,535 bytes, 16 of
/// which are the tag).
pub const MAX_MESSAGE: usize = 65_519;

/// Bytes a `DATA` frame header takes: type, stream, offset, length.
pub const DATA_HEADER: usize = 1 + 8 + 8 + 2;

/// Largest payload of one `DATA` frame.
pub const MAX_DATA: usize = MAX_MESSAGE - DATA_HEADER;

/// Bytes a `PING` or `PONG` frame takes: type, token.
pub const PING_LEN: usize = 1 + 8;

/// Bytes a `WINDOW` frame takes: type, stream, acked, max.
pub const WINDOW_LEN: usize = 1 + 8 + 8 + 8;

/// Bytes a `SESSION_WINDOW` frame takes: type, max.
pub const SESSION_WINDOW_LEN: usize = 1 + 8;

/// Largest service name in an `OPEN` frame.
pub const MAX_SERVICE_NAME: usize = 255;

const PING: u8 = 0x01;
const PONG: u8 = 0x02;
const CLOSE: u8 = 0x03;
const MORE_LINKS: u8 = 0x04;
const DRAINING: u8 = 0x05;
const OPEN: u8 = 0x10;
const DATA: u8 = 0x11;
const DATA_FIN: u8 = 0x12;
const RESET: u8 = 0x13;
const WINDOW: u8 = 0x14;
const SESSION_WINDOW: u8 = 0x15;
const OPEN_PIN: u8 = 0x16;
const EXTENSION_MIN: u8 = 0x80;
/// An extension frame: a node that does not know it skips it.
const FORGET: u8 = 0x80;
/// The length of `FORGET`'s payload: a session secret.
const FORGET_LEN: usize = 32;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Liveness and RTT probe; answered with `Pong` on the same link.
    Ping(u64),
    /// Answer to a `Ping`, echoing its token.
    Pong(u64),
    /// The sender is closing this link on purpose.
    Close(u16),
    /// Server to client: every link is busy and data is waiting; open another link if the
    /// client's `links.max` allows.
    MoreLinks,
    /// Server to client: the node is stopping and refuses new streams; open them on other
    /// nodes. Once per session; a client that does not know it ignores it.
    Draining,
    /// Opens a stream to a named service (client to server).
    Open {
        /// The new stream.
        stream: StreamId,
        /// Service name, at most 255 bytes of UTF-8.
        service: String,
        /// The client keeps the stream's frames on its owner's links (`spread = "pin"`) and
        /// asks the owner to do the same downstream (encoded as type `OPEN_PIN`).
        pin: bool,
    },
    /// Stream bytes `[offset, offset + data.len())`; with `fin`, the stream ends after them.
    Data {
        /// The stream.
        stream: StreamId,
        /// Byte offset of the first payload byte.
        offset: u64,
        /// Whether the stream's send side ends after this payload.
        fin: bool,
        /// The payload.
        data: Bytes,
    },
    /// Abortive close of both directions of a stream.
    Reset {
        /// The stream.
        stream: StreamId,
        /// Why (see `reset` codes).
        code: u16,
        /// The sender's highest sent offset on this stream, so the receiver can account
        /// session credit for bytes it will now never see.
        final_size: u64,
    },
    /// End-to-end ack and stream credit.
    Window {
        /// The stream.
        stream: StreamId,
        /// Every byte below this arrived; the FIN counts as one byte at the final offset.
        acked: u64,
        /// The sender may send bytes below this offset.
        max: u64,
    },
    /// Session credit: the sum over streams of the highest offset sent may not exceed `max`.
    SessionWindow {
        /// The limit.
        max: u64,
    },
    /// Client to node, extension type `0x80`: the client gave up the session whose secret this
    /// is (it had no link to the node for its grace) and this session replaces it; the node
    /// ends that one at once if it still holds it. A node that does not know it skips it.
    Forget(SecretBytes),
    /// An extension frame this version does not know; it was skipped.
    Unknown(u8),
}

/// A session secret in a frame ([`Frame::Forget`]): redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub [u8; FORGET_LEN]);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBytes(..)")
    }
}

/// Codes carried by `Frame::Close` on a session's link. A peer that does not know a code takes
/// the frame as the link closing (code 0).
pub mod close {
    /// The link closes; the session goes on.
    pub const LINK: u16 = 0;
    /// Node to client, the only message on a link that authenticated: the node refuses the
    /// link its session, which has `limits.max_links_per_session` links.
    pub const MAX_LINKS: u16 = 1;
    /// The same: the node has `limits.max_sessions` sessions.
    pub const MAX_SESSIONS: u16 = 2;
    /// The same: the node has `limits.max_sessions_per_client` sessions of this client.
    pub const MAX_CLIENT_SESSIONS: u16 = 3;
    /// The same: the client's share of `limits.memory` cannot cover another link.
    pub const NO_MEMORY: u16 = 4;
    /// Client to node: the client stops; the session is over, and the node ends it at once
    /// instead of keeping it for `server.session_grace_ms`.
    pub const SESSION_OVER: u16 = 0x10;
    /// Client to node, after the handshake: the node's `server.node_id` is not the `node.id`
    /// this client has for the address it dialled, so the client will not use the link. The
    /// session goes on (its id may be the client's session with the node it did reach).
    pub const WRONG_NODE: u16 = 0x11;

    /// What a client's log says of a node's refusal `code`, if it is one.
    pub fn refusal(code: u16) -> Option<&'static str> {
        Some(match code {
            MAX_LINKS => {
                "the node refused the link: the session has limits.max_links_per_session links \
                 there (lower links.count, or raise the node's limit)"
            }
            MAX_SESSIONS => "the node refused the session: it has limits.max_sessions sessions",
            MAX_CLIENT_SESSIONS => {
                "the node refused the session: it has limits.max_sessions_per_client sessions of \
                 this client (a client that restarted often leaves its old sessions there for the \
                 node's server.session_grace_ms, unless it stopped in order)"
            }
            NO_MEMORY => {
                "the node refused the link: this client's share of its limits.memory cannot \
                 cover another link"
            }
            _ => return None,
        })
    }
}

/// Reset codes carried by `Frame::Reset`.
pub mod reset {
    /// The application reset its connection.
    pub const APP: u16 = 0;
    /// The server has no service by that name.
    pub const UNKNOWN_SERVICE: u16 = 1;
    /// The service refused the connection or could not be reached.
    pub const CONNECT_FAILED: u16 = 2;
    /// The session is at its stream limit.
    pub const TOO_MANY_STREAMS: u16 = 3;
    /// The session or link is shutting down.
    pub const SHUTDOWN: u16 = 4;
    /// The receiver refused the stream's data: its memory cap is reached, or the data beyond
    /// the stream's in-order point is in too many pieces (see `docs/PROTOCOL.md`).
    pub const NO_MEMORY: u16 = 5;
    /// The stream's data came, its `OPEN` did not, within the receiver's pending lifetime.
    pub const NO_OPEN: u16 = 6;
    /// No path carries the stream's data: a pinned stream (`spread = "pin"`) whose node the
    /// client has had no link of its own to for its grace.
    pub const NO_PATH: u16 = 7;
}

/// Malformed frame bytes from the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The message ended inside a frame.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// A core frame type this version does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A service name that is not UTF-8.
    #[error("service name is not UTF-8")]
    BadServiceName,
}

impl Frame {
    /// Decodes the next frame of a message. `Ok(None)` when the message is used up.
    pub fn decode(buf: &mut Bytes) -> Result<Option<Frame>, FrameError> {
        if !buf.has_remaining() {
            return Ok(None);
        }
        let ty = buf.get_u8();
        let frame = match ty {
            PING => Frame::Ping(take_u64(buf, "PING")?),
            PONG => Frame::Pong(take_u64(buf, "PONG")?),
            CLOSE => Frame::Close(take_u16(buf, "CLOSE")?),
            MORE_LINKS => Frame::MoreLinks,
            DRAINING => Frame::Draining,
            OPEN | OPEN_PIN => {
                let stream = StreamId(take_u64(buf, "OPEN")?);
                let len = usize::from(take_u8(buf, "OPEN")?);
                let name = take_bytes(buf, len, "OPEN")?;
                let service =
                    String::from_utf8(name.to_vec()).map_err(|_| FrameError::BadServiceName)?;
                Frame::Open {
                    stream,
                    service,
                    pin: ty == OPEN_PIN,
                }
            }
            DATA | DATA_FIN => {
                let stream = StreamId(take_u64(buf, "DATA")?);
                let offset = take_u64(buf, "DATA")?;
                let len = usize::from(take_u16(buf, "DATA")?);
                let data = take_bytes(buf, len, "DATA")?;
                Frame::Data {
                    stream,
                    offset,
                    fin: ty == DATA_FIN,
                    data,
                }
            }
            RESET => {
                let stream = StreamId(take_u64(buf, "RESET")?);
                let code = take_u16(buf, "RESET")?;
                Frame::Reset {
                    stream,
                    code,
                    final_size: take_u64(buf, "RESET")?,
                }
            }
            WINDOW => {
                let stream = StreamId(take_u64(buf, "WINDOW")?);
                let acked = take_u64(buf, "WINDOW")?;
                Frame::Window {
                    stream,
                    acked,
                    max: take_u64(buf, "WINDOW")?,
                }
            }
            SESSION_WINDOW => Frame::SessionWindow {
                max: take_u64(buf, "SESSION_WINDOW")?,
            },
            t if t >= EXTENSION_MIN => {
                let len = usize::from(take_u16(buf, "extension")?);
                let body = take_bytes(buf, len, "extension")?;
                match (t, <[u8; FORGET_LEN]>::try_from(&body[..])) {
                    (FORGET, Ok(secret)) => Frame::Forget(SecretBytes(secret)),
                    // A length this version does not expect: skipped like an unknown type.
                    _ => Frame::Unknown(t),
                }
            }
            t => return Err(FrameError::UnknownType(t)),
        };
        Ok(Some(frame))
    }

    /// Bytes this frame takes when encoded.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Ping(_) | Frame::Pong(_) => PING_LEN,
            Frame::Close(_) => 3,
            Frame::MoreLinks | Frame::Draining => 1,
            Frame::Open { service, .. } => 10 + service.len(),
            Frame::Data { data, .. } => DATA_HEADER + data.len(),
            Frame::Reset { .. } => 19,
            Frame::Window { .. } => WINDOW_LEN,
            Frame::SessionWindow { .. } => SESSION_WINDOW_LEN,
            Frame::Forget(_) => 3 + FORGET_LEN,
            Frame::Unknown(_) => 3,
        }
    }

    /// Appends the encoded frame. Service names longer than 255 bytes and payloads longer
    /// than `MAX_DATA` are local bugs: the engine never builds them.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Frame::Ping(t) => {
                out.put_u8(PING);
                out.put_u64(*t);
            }
            Frame::Pong(t) => {
                out.put_u8(PONG);
                out.put_u64(*t);
            }
            Frame::MoreLinks => out.put_u8(MORE_LINKS),
            Frame::Draining => out.put_u8(DRAINING),
            Frame::Close(code) => {
                out.put_u8(CLOSE);
                out.put_u16(*code);
            }
            Frame::Open {
                stream,
                service,
                pin,
            } => {
                debug_assert!(service.len() <= MAX_SERVICE_NAME);
                out.put_u8(if *pin { OPEN_PIN } else { OPEN });
                out.put_u64(stream.0);
                out.put_u8(service.len() as u8);
                out.put_slice(service.as_bytes());
            }
            Frame::Data {
                stream,
                offset,
                fin,
                data,
            } => {
                encode_data_header(out, *stream, *offset, data.len(), *fin);
                out.put_slice(data);
            }
            Frame::Reset {
                stream,
                code,
                final_size,
            } => {
                out.put_u8(RESET);
                out.put_u64(stream.0);
                out.put_u16(*code);
                out.put_u64(*final_size);
            }
            Frame::Window { stream, acked, max } => {
                out.put_u8(WINDOW);
                out.put_u64(stream.0);
                out.put_u64(*acked);
                out.put_u64(*max);
            }
            Frame::SessionWindow { max } => {
                out.put_u8(SESSION_WINDOW);
                out.put_u64(*max);
            }
            Frame::Forget(secret) => {
                out.put_u8(FORGET);
                out.put_u16(FORGET_LEN as u16);
                out.put_slice(&secret.0);
            }
            Frame::Unknown(t) => {
                out.put_u8(*t);
                out.put_u16(0);
            }
        }
    }
}

/// Writes a `DATA` or `DATA_FIN` header; the caller appends `len` payload bytes, which lets
/// the engine copy payload straight from its send buffer into the message.
pub fn encode_data_header(
    out: &mut impl BufMut,
    stream: StreamId,
    offset: u64,
    len: usize,
    fin: bool,
) {
    debug_assert!(len <= MAX_DATA);
    out.put_u8(if fin { DATA_FIN } else { DATA });
    out.put_u64(stream.0);
    out.put_u64(offset);
    out.put_u16(len as u16);
}

fn take_u8(buf: &mut Bytes, what: &'static str) -> Result<u8, FrameError> {
    buf.try_get_u8().map_err(|_| FrameError::Truncated(what))
}

pub(crate) fn take_u16(buf: &mut Bytes, what: &'static str) -> Result<u16, FrameError> {
    buf.try_get_u16().map_err(|_| FrameError::Truncated(what))
}

fn take_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, FrameError> {
    buf.try_get_u64().map_err(|_| FrameError::Truncated(what))
}

pub(crate) fn take_bytes(
    buf: &mut Bytes,
    len: usize,
    what: &'static str,
) -> Result<Bytes, FrameError> {
    if buf.remaining() < len {
        return Err(FrameError::Truncated(what));
    }
    Ok(buf.split_to(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use bytes::BytesMut;
    use rand::{Rng, SeedableRng};

    fn samples() -> Vec<Frame> {
        let s = StreamId::new(NodeId(3), 77);
        vec![
            Frame::Ping(1),
            Frame::Pong(u64::MAX),
            Frame::Close(9),
            Frame::MoreLinks,
            Frame::Draining,
            Frame::Open {
                stream: s,
                service: "game".into(),
                pin: false,
            },
            Frame::Open {
                stream: s,
                service: "x".repeat(255),
                pin: false,
            },
            Frame::Open {
                stream: s,
                service: "bulk".into(),
                pin: true,
            },
            Frame::Data {
                stream: s,
                offset: 5,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream: s,
                offset: u64::MAX - 1,
                fin: true,
                data: Bytes::new(),
            },
            Frame::Data {
                stream: s,
                offset: 0,
                fin: false,
                data: vec![7u8; MAX_DATA].into(),
            },
            Frame::Reset {
                stream: s,
                code: reset::CONNECT_FAILED,
                final_size: 99,
            },
            Frame::Window {
                stream: s,
                acked: 10,
                max: 1 << 40,
            },
            Frame::SessionWindow { max: 123 },
            Frame::Forget(SecretBytes([9; FORGET_LEN])),
            Frame::Unknown(0x80),
            Frame::Unknown(0x81),
        ]
    }

    /// A `FORGET` of another length than a secret's (a later version's) is skipped like an
    /// unknown extension, and the frames after it are read; its secret never shows in `Debug`.
    #[test]
    fn a_forget_of_another_length_is_skipped() {
        let mut b = BytesMut::new();
        b.put_u8(FORGET);
        b.put_u16(33);
        b.put_slice(&[5; 33]);
        Frame::Ping(1).encode(&mut b);
        let mut b = b.freeze();
        assert_eq!(Frame::decode(&mut b).unwrap(), Some(Frame::Unknown(FORGET)));
        assert_eq!(Frame::decode(&mut b).unwrap(), Some(Frame::Ping(1)));
        let shown = format!("{:?}", Frame::Forget(SecretBytes([0xab; FORGET_LEN])));
        assert!(!shown.contains("171") && !shown.contains("ab"), "{shown}");
    }

    #[test]
    fn round_trip_each_and_batched() {
        let mut all = BytesMut::new();
        for f in samples() {
            let mut one = BytesMut::new();
            f.encode(&mut one);
            assert_eq!(one.len(), f.encoded_len(), "{f:?}");
            let mut b = one.clone().freeze();
            assert_eq!(Frame::decode(&mut b).unwrap(), Some(f.clone()));
            assert_eq!(Frame::decode(&mut b).unwrap(), None);
            all.extend_from_slice(&one);
        }
        let mut b = all.freeze();
        let mut n = 0;
        while let Some(f) = Frame::decode(&mut b).unwrap() {
            assert_eq!(f, samples()[n]);
            n += 1;
        }
        assert_eq!(n, samples().len());
    }

    #[test]
    fn every_truncation_is_an_error() {
        for f in samples() {
            let mut one = BytesMut::new();
            f.encode(&mut one);
            for cut in 1..one.len() {
                let mut b = one.clone().freeze().slice(..cut);
                assert!(Frame::decode(&mut b).is_err(), "{f:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn unknown_core_type_is_an_error_and_extensions_are_skipped() {
        let mut b = Bytes::from_static(&[0x7f]);
        assert_eq!(Frame::decode(&mut b), Err(FrameError::UnknownType(0x7f)));
        let mut b = Bytes::from_static(&[0x91, 0, 2, 0xaa, 0xbb, PING, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(Frame::decode(&mut b).unwrap(), Some(Frame::Unknown(0x91)));
        assert_eq!(Frame::decode(&mut b).unwrap(), Some(Frame::Ping(1)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let len = rng.random_range(0..64);
            let v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let mut b = Bytes::from(v);
            while let Ok(Some(_)) = Frame::decode(&mut b) {}
        }
    }
}
