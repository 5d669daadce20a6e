//! Peer frame codec: the typed records on a peer link, the link between two server nodes of a
//! cluster (`docs/PROTOCOL.md`, "Frames on a peer link").
//!
//! A peer link carries `PING`, `PONG` and `CLOSE` with the core frame codes (decoded by
//! [`Frame::decode`], so both links read them alike) and the cluster frames `BIND`, `UNBIND`,
//! `RELAY`, `VIA_UP`, `VIA_DOWN` and `NO_SESSION` (`0x20..=0x25`). Stream frames (`OPEN`,
//! `DATA`, `WINDOW`, ...) travel only inside a `RELAY`, so on a peer link itself they are a
//! protocol error, as is an unknown core type; an extension frame (`0x80..`) is skipped.
//!
//! As in [`crate::frame`], a message holds whole frames back to back, a truncated frame is an
//! error, decoding checks the length before every read and never panics, and a `RELAY`'s payload
//! is a zero-copy slice of the message: nothing is allocated from a length the peer sent.

use crate::frame::{take_bytes, take_u16, Frame, FrameError, MAX_MESSAGE};
use crate::ids::SessionId;
use crate::keys::{PublicKey, KEY_LEN};
use bytes::{Buf, BufMut, Bytes};

const BIND: u8 = 0x20;
const UNBIND: u8 = 0x21;
const RELAY: u8 = 0x22;
const VIA_UP: u8 = 0x23;
const VIA_DOWN: u8 = 0x24;
const NO_SESSION: u8 = 0x25;
const VIA_CREDIT: u8 = 0x26;
const RELAY_DOWN: u8 = 0x27;
/// Core frames a peer link carries: `PING`, `PONG`, `CLOSE`.
const CORE_ON_PEER_LINK: std::ops::RangeInclusive<u8> = 0x01..=0x03;
const EXTENSION_MIN: u8 = 0x80;

/// Bytes a `RELAY` header takes: type, handle, via, epoch, length.
pub const RELAY_HEADER: usize = 1 + 4 + 4 + 8 + 2;

/// Largest payload of one `RELAY` (the frames of one client link message, or the part of them
/// for one owner): what is left of a message after the header. A client message can be longer,
/// so a relay splits such a run at frame boundaries into several `RELAY`s; every single frame
/// fits, since the longest (`DATA` with [`crate::frame::MAX_DATA`] bytes) is 65,519 bytes less
/// the message's other frames.
pub const MAX_RELAY: usize = MAX_MESSAGE - RELAY_HEADER;

/// A session's handle on one direction of a peer link, bound by `BIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Handle(pub u32);

/// A client link as the relaying node numbers it (the `via` of `RELAY` and `VIA_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Via(pub u32);

/// One frame on a peer link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerFrame {
    /// Liveness probe (core `PING`); answered with `Pong` on the same link.
    Ping(u64),
    /// Answer to a `Ping`, echoing its token (core `PONG`).
    Pong(u64),
    /// The sender is closing this peer link on purpose (core `CLOSE`).
    Close(u16),
    /// `handle` names (client key, session id) on this direction of the link from now on.
    Bind {
        /// The sender's handle.
        handle: Handle,
        /// The client's static public key (all zero for a PSK-only client).
        client: PublicKey,
        /// The client's session id.
        session: SessionId,
    },
    /// The session bound to `handle` ended at the sender.
    Unbind {
        /// The handle.
        handle: Handle,
    },
    /// The frames of one sub-link message (a `ROUTE` section), unchanged.
    Relay {
        /// The session.
        handle: Handle,
        /// The client link at the relaying node.
        via: Via,
        /// The owner's epoch of the session, as the client knows it.
        epoch: u64,
        /// Owner to relay (`RELAY_DOWN`, a virtual link's message for the client link `via`
        /// of the receiver), rather than relay to owner (`RELAY`, a section the client sent).
        down: bool,
        /// Core frames, back to back; at most [`MAX_RELAY`] bytes.
        frames: Bytes,
    },
    /// The sender has client link `via` in the session: the owner may send through it.
    ViaUp {
        /// The session.
        handle: Handle,
        /// The client link.
        via: Via,
    },
    /// Client link `via` of the session died at the sender.
    ViaDown {
        /// The session.
        handle: Handle,
        /// The client link.
        via: Via,
    },
    /// The owner has no such session or epoch (code 1), or refused the frames of a sub-link
    /// (code 2: the client link breaks the protocol); the relay tells the client, or closes
    /// its link.
    NoSession {
        /// The relay's handle of the session.
        handle: Handle,
        /// The client link the refused frames came on.
        via: Via,
        /// The epoch the refused frames named.
        epoch: u64,
        /// Why.
        code: u16,
    },
    /// The relay wrote `bytes` of the receiver's sections onto client link `via`: the receiver
    /// may send that much more through it.
    ViaCredit {
        /// The session.
        handle: Handle,
        /// The client link.
        via: Via,
        /// Bytes of section payload written.
        bytes: u32,
    },
    /// An extension frame (`0x80..`) this version does not know; it was skipped.
    Unknown(u8),
}

/// Malformed peer frame bytes. Every one of them closes the peer link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFrameError {
    /// The message ended inside a frame.
    #[error("truncated {0} frame")]
    Truncated(&'static str),
    /// A core frame type this version does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame that exists, but not on a peer link (stream frames travel inside `RELAY`).
    #[error("frame type {0:#04x} is not allowed on a peer link")]
    NotOnPeerLink(u8),
}

impl From<FrameError> for PeerFrameError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Truncated(what) => PeerFrameError::Truncated(what),
            FrameError::UnknownType(t) => PeerFrameError::UnknownType(t),
            // Only `OPEN` has a service name, and it is refused before it is decoded.
            FrameError::BadServiceName => PeerFrameError::NotOnPeerLink(0x10),
        }
    }
}

impl PeerFrame {
    /// Decodes the next frame of a message. `Ok(None)` when the message is used up.
    pub fn decode(buf: &mut Bytes) -> Result<Option<PeerFrame>, PeerFrameError> {
        let Some(&ty) = buf.first() else {
            return Ok(None);
        };
        if CORE_ON_PEER_LINK.contains(&ty) || ty >= EXTENSION_MIN {
            return Ok(match Frame::decode(buf)? {
                Some(Frame::Ping(t)) => Some(PeerFrame::Ping(t)),
                Some(Frame::Pong(t)) => Some(PeerFrame::Pong(t)),
                Some(Frame::Close(c)) => Some(PeerFrame::Close(c)),
                Some(Frame::Unknown(t)) => Some(PeerFrame::Unknown(t)),
                // The type byte was checked above: only these four decode from it.
                Some(_) | None => return Err(PeerFrameError::NotOnPeerLink(ty)),
            });
        }
        buf.advance(1);
        let frame = match ty {
            BIND => {
                let handle = take_handle(buf, "BIND")?;
                let client = take_bytes(buf, KEY_LEN, "BIND")?;
                let session = take_bytes(buf, 16, "BIND")?;
                PeerFrame::Bind {
                    handle,
                    // Both lengths were checked by `take_bytes`.
                    client: PublicKey::from_bytes(array(&client)),
                    session: SessionId(array(&session)),
                }
            }
            UNBIND => PeerFrame::Unbind {
                handle: take_handle(buf, "UNBIND")?,
            },
            RELAY | RELAY_DOWN => {
                let handle = take_handle(buf, "RELAY")?;
                let via = Via(take_u32(buf, "RELAY")?);
                let epoch = take_u64(buf, "RELAY")?;
                let len = usize::from(take_u16(buf, "RELAY")?);
                PeerFrame::Relay {
                    handle,
                    via,
                    epoch,
                    down: ty == RELAY_DOWN,
                    frames: take_bytes(buf, len, "RELAY")?,
                }
            }
            VIA_UP => PeerFrame::ViaUp {
                handle: take_handle(buf, "VIA_UP")?,
                via: Via(take_u32(buf, "VIA_UP")?),
            },
            VIA_DOWN => PeerFrame::ViaDown {
                handle: take_handle(buf, "VIA_DOWN")?,
                via: Via(take_u32(buf, "VIA_DOWN")?),
            },
            NO_SESSION => PeerFrame::NoSession {
                handle: take_handle(buf, "NO_SESSION")?,
                via: Via(take_u32(buf, "NO_SESSION")?),
                epoch: take_u64(buf, "NO_SESSION")?,
                code: take_u16(buf, "NO_SESSION")?,
            },
            VIA_CREDIT => PeerFrame::ViaCredit {
                handle: take_handle(buf, "VIA_CREDIT")?,
                via: Via(take_u32(buf, "VIA_CREDIT")?),
                bytes: take_u32(buf, "VIA_CREDIT")?,
            },
            // `MORE_LINKS`, `ROUTE`, `ROUTE_DOWN`, and the stream frames `OPEN` to `OPEN_PIN`.
            0x04 | 0x07 | 0x08 | 0x10..=0x16 => return Err(PeerFrameError::NotOnPeerLink(ty)),
            t => return Err(PeerFrameError::UnknownType(t)),
        };
        Ok(Some(frame))
    }

    /// Bytes this frame takes when encoded.
    pub fn encoded_len(&self) -> usize {
        match self {
            PeerFrame::Ping(_) | PeerFrame::Pong(_) => crate::frame::PING_LEN,
            PeerFrame::Close(_) | PeerFrame::Unknown(_) => 3,
            PeerFrame::Bind { .. } => 1 + 4 + KEY_LEN + 16,
            PeerFrame::Unbind { .. } => 1 + 4,
            PeerFrame::Relay { frames, .. } => RELAY_HEADER + frames.len(),
            PeerFrame::ViaUp { .. } | PeerFrame::ViaDown { .. } => 1 + 4 + 4,
            PeerFrame::NoSession { .. } => 1 + 4 + 4 + 8 + 2,
            PeerFrame::ViaCredit { .. } => 1 + 4 + 4 + 4,
        }
    }

    /// Appends the encoded frame. A `RELAY` payload over [`MAX_RELAY`] bytes is a local bug:
    /// the relay splits runs before building one.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            PeerFrame::Ping(t) => Frame::Ping(*t).encode(out),
            PeerFrame::Pong(t) => Frame::Pong(*t).encode(out),
            PeerFrame::Close(c) => Frame::Close(*c).encode(out),
            PeerFrame::Unknown(t) => Frame::Unknown(*t).encode(out),
            PeerFrame::Bind {
                handle,
                client,
                session,
            } => {
                out.put_u8(BIND);
                out.put_u32(handle.0);
                out.put_slice(client.as_bytes());
                out.put_slice(&session.0);
            }
            PeerFrame::Unbind { handle } => {
                out.put_u8(UNBIND);
                out.put_u32(handle.0);
            }
            PeerFrame::Relay {
                handle,
                via,
                epoch,
                down,
                frames,
            } => {
                encode_relay_header(out, *handle, *via, *epoch, *down, frames.len());
                out.put_slice(frames);
            }
            PeerFrame::ViaUp { handle, via } | PeerFrame::ViaDown { handle, via } => {
                let ty = if matches!(self, PeerFrame::ViaUp { .. }) {
                    VIA_UP
                } else {
                    VIA_DOWN
                };
                out.put_u8(ty);
                out.put_u32(handle.0);
                out.put_u32(via.0);
            }
            PeerFrame::NoSession {
                handle,
                via,
                epoch,
                code,
            } => {
                out.put_u8(NO_SESSION);
                out.put_u32(handle.0);
                out.put_u32(via.0);
                out.put_u64(*epoch);
                out.put_u16(*code);
            }
            PeerFrame::ViaCredit { handle, via, bytes } => {
                out.put_u8(VIA_CREDIT);
                out.put_u32(handle.0);
                out.put_u32(via.0);
                out.put_u32(*bytes);
            }
        }
    }

    /// The frame's name, for log lines.
    pub fn name(&self) -> &'static str {
        match self {
            PeerFrame::Ping(_) => "PING",
            PeerFrame::Pong(_) => "PONG",
            PeerFrame::Close(_) => "CLOSE",
            PeerFrame::Bind { .. } => "BIND",
            PeerFrame::Unbind { .. } => "UNBIND",
            PeerFrame::Relay { .. } => "RELAY",
            PeerFrame::ViaUp { .. } => "VIA_UP",
            PeerFrame::ViaDown { .. } => "VIA_DOWN",
            PeerFrame::NoSession { .. } => "NO_SESSION",
            PeerFrame::ViaCredit { .. } => "VIA_CREDIT",
            PeerFrame::Unknown(_) => "extension",
        }
    }
}

/// Appends the header of a `RELAY` (or, `down`, a `RELAY_DOWN`) frame carrying `len` bytes of
/// frames; the caller appends the frames. `len` over [`MAX_RELAY`] is a local bug, as in
/// [`PeerFrame::encode`].
pub fn encode_relay_header(
    out: &mut impl BufMut,
    handle: Handle,
    via: Via,
    epoch: u64,
    down: bool,
    len: usize,
) {
    debug_assert!(len <= MAX_RELAY);
    out.put_u8(if down { RELAY_DOWN } else { RELAY });
    out.put_u32(handle.0);
    out.put_u32(via.0);
    out.put_u64(epoch);
    out.put_u16(len as u16);
}

fn take_u32(buf: &mut Bytes, what: &'static str) -> Result<u32, PeerFrameError> {
    buf.try_get_u32()
        .map_err(|_| PeerFrameError::Truncated(what))
}

fn take_u64(buf: &mut Bytes, what: &'static str) -> Result<u64, PeerFrameError> {
    buf.try_get_u64()
        .map_err(|_| PeerFrameError::Truncated(what))
}

fn take_handle(buf: &mut Bytes, what: &'static str) -> Result<Handle, PeerFrameError> {
    take_u32(buf, what).map(Handle)
}

/// The bytes of a slice whose length the caller checked.
fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(b);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rand::{Rng, SeedableRng};

    fn samples() -> Vec<PeerFrame> {
        let mut relayed = BytesMut::new();
        Frame::Ping(5).encode(&mut relayed);
        vec![
            PeerFrame::Ping(1),
            PeerFrame::Pong(u64::MAX),
            PeerFrame::Close(7),
            PeerFrame::Bind {
                handle: Handle(1),
                client: PublicKey::from_bytes([9; 32]),
                session: SessionId([3; 16]),
            },
            PeerFrame::Unbind {
                handle: Handle(u32::MAX),
            },
            PeerFrame::Relay {
                handle: Handle(2),
                via: Via(3),
                epoch: 11,
                down: false,
                frames: relayed.freeze(),
            },
            PeerFrame::Relay {
                handle: Handle(2),
                via: Via(3),
                epoch: u64::MAX,
                down: true,
                frames: vec![0x55; MAX_RELAY].into(),
            },
            PeerFrame::Relay {
                handle: Handle(0),
                via: Via(0),
                epoch: 0,
                down: false,
                frames: Bytes::new(),
            },
            PeerFrame::ViaUp {
                handle: Handle(4),
                via: Via(5),
            },
            PeerFrame::ViaDown {
                handle: Handle(6),
                via: Via(u32::MAX),
            },
            PeerFrame::NoSession {
                handle: Handle(8),
                via: Via(1),
                epoch: 99,
                code: 4,
            },
            PeerFrame::ViaCredit {
                handle: Handle(8),
                via: Via(2),
                bytes: 65_000,
            },
            PeerFrame::Unknown(0x80),
        ]
    }

    fn encode(f: &PeerFrame) -> BytesMut {
        let mut b = BytesMut::new();
        f.encode(&mut b);
        b
    }

    #[test]
    fn round_trip_each_and_batched() {
        let mut all = BytesMut::new();
        for f in samples() {
            let one = encode(&f);
            assert_eq!(one.len(), f.encoded_len(), "{f:?}");
            let mut b = one.clone().freeze();
            assert_eq!(PeerFrame::decode(&mut b).unwrap(), Some(f.clone()));
            assert_eq!(PeerFrame::decode(&mut b).unwrap(), None);
            all.extend_from_slice(&one);
        }
        let mut b = all.freeze();
        let mut got = Vec::new();
        while let Some(f) = PeerFrame::decode(&mut b).unwrap() {
            got.push(f);
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn the_longest_relay_fits_one_message() {
        let f = &samples()[6];
        assert_eq!(f.encoded_len(), MAX_MESSAGE);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for f in samples() {
            let one = encode(&f).freeze();
            for cut in 1..one.len() {
                let mut b = one.slice(..cut);
                assert!(
                    matches!(PeerFrame::decode(&mut b), Err(PeerFrameError::Truncated(_))),
                    "{f:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn a_relay_longer_than_its_message_is_truncated() {
        // The declared length is far past the bytes that follow: refused, nothing allocated.
        let mut b = Bytes::from_static(&[RELAY, 0, 0, 0, 1, 0, 0, 0, 2, 0xff, 0xff, 1, 2, 3]);
        assert_eq!(
            PeerFrame::decode(&mut b),
            Err(PeerFrameError::Truncated("RELAY"))
        );
    }

    #[test]
    fn stream_frames_and_unknown_types_are_refused() {
        let mut data = BytesMut::new();
        Frame::Data {
            stream: crate::ids::StreamId(1),
            offset: 0,
            fin: false,
            data: Bytes::from_static(b"x"),
        }
        .encode(&mut data);
        for ty in [0x04, 0x07, 0x08, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16] {
            let mut b = Bytes::from(vec![ty; 40]);
            assert_eq!(
                PeerFrame::decode(&mut b),
                Err(PeerFrameError::NotOnPeerLink(ty))
            );
        }
        assert_eq!(
            PeerFrame::decode(&mut data.freeze()),
            Err(PeerFrameError::NotOnPeerLink(0x11))
        );
        for ty in [0x00, 0x05, 0x17, 0x1f, 0x28, 0x7f] {
            let mut b = Bytes::from(vec![ty; 40]);
            assert_eq!(
                PeerFrame::decode(&mut b),
                Err(PeerFrameError::UnknownType(ty))
            );
        }
        // Extensions are skipped, and what follows them is read.
        let mut b = Bytes::from_static(&[0x91, 0, 1, 0xaa, UNBIND, 0, 0, 0, 9]);
        assert_eq!(
            PeerFrame::decode(&mut b).unwrap(),
            Some(PeerFrame::Unknown(0x91))
        );
        assert_eq!(
            PeerFrame::decode(&mut b).unwrap(),
            Some(PeerFrame::Unbind { handle: Handle(9) })
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..20_000 {
            let len = rng.random_range(0..80);
            let mut v: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Bias the first byte toward the peer frame types.
            if let Some(first) = v.first_mut() {
                if rng.random_bool(0.5) {
                    *first = rng.random_range(0x20..=0x27);
                }
            }
            let mut b = Bytes::from(v);
            while let Ok(Some(_)) = PeerFrame::decode(&mut b) {}
        }
    }
}
