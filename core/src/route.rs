//! Routed messages on a client link (`docs/PROTOCOL.md`, "Routing"): the sections of sub-links.
//!
//! A client link L to node P carries the messages of P's own engine and, on a link whose
//! handshake agreed to it, **routed messages**: messages whose frames are `ROUTE` sections (the
//! whole message of sub-link (L, N) for another owner N, with the client's session id and the
//! epoch of N it names) and `ROUTE_DOWN` notices (the sub-link cannot be used). A routed message
//! starts with one of these two types and holds nothing else; an engine never sees one (to an
//! engine they are unknown core types, which close the link).
//!
//! Decoding checks lengths before every read and never panics; a section's frames are a
//! zero-copy slice of the message.

use crate::frame::{take_bytes, take_u16, FrameError, MAX_MESSAGE};
use crate::ids::SessionId;
use bytes::{Buf, BufMut, Bytes};

/// Type of a `ROUTE` section.
pub const ROUTE: u8 = 0x07;
/// Type of a `ROUTE_DOWN` notice.
pub const ROUTE_DOWN: u8 = 0x08;
/// Bytes a `ROUTE` header takes: type, node, session, epoch, length.
pub const ROUTE_HEADER: usize = 1 + 2 + 16 + 8 + 2;
/// Bytes a `ROUTE_DOWN` takes: type, node, session, epoch, code.
pub const ROUTE_DOWN_LEN: usize = 1 + 2 + 16 + 8 + 2;
/// Largest message of a sub-link or a virtual link: one `ROUTE` section fills a link message,
/// and the same bytes fit one `RELAY` on a peer link ([`crate::peer::MAX_RELAY`] is larger).
pub const MAX_SECTION: usize = MAX_MESSAGE - ROUTE_HEADER;

/// `ROUTE_DOWN` code: the relay has no peer link to the owner now.
pub const DOWN_NO_PEER: u16 = 0;
/// `ROUTE_DOWN` code: the owner has no session with that id and epoch.
pub const DOWN_NO_SESSION: u16 = 1;
/// `ROUTE_DOWN` code, from a node on its own client link: its peer link to `node` (a relay of
/// its streams) ended, so the sub-links of its engine through `node` are dead. `session` and
/// `epoch` are the sender's own (the session the link belongs to), not `node`'s.
pub const DOWN_RELAY_LOST: u16 = 3;

/// One frame of a routed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// The message of sub-link (this link, `node`).
    Section {
        /// The owner.
        node: u16,
        /// The client's session id at the owner.
        session: SessionId,
        /// The owner's epoch of that session.
        epoch: u64,
        /// The sub-link's message: core frames, back to back.
        frames: Bytes,
    },
    /// Sub-link (this link, `node`) cannot carry the session named.
    Down {
        /// The owner.
        node: u16,
        /// The client's session id at the owner.
        session: SessionId,
        /// The epoch the refused section named.
        epoch: u64,
        /// [`DOWN_NO_PEER`], [`DOWN_NO_SESSION`] or [`DOWN_RELAY_LOST`] (others are ignored).
        code: u16,
    },
}

/// Whether a decrypted message is a routed one (its first frame is `ROUTE` or `ROUTE_DOWN`).
pub fn is_routed(msg: &[u8]) -> bool {
    matches!(msg.first(), Some(&ROUTE) | Some(&ROUTE_DOWN))
}

/// Appends a `ROUTE` header for `len` bytes of frames; the caller appends the frames.
pub fn encode_section_header(
    out: &mut impl BufMut,
    node: u16,
    session: SessionId,
    epoch: u64,
    len: usize,
) {
    debug_assert!(len <= MAX_SECTION);
    out.put_u8(ROUTE);
    out.put_u16(node);
    out.put_slice(&session.0);
    out.put_u64(epoch);
    out.put_u16(len as u16);
}

impl Routed {
    /// Appends the encoded frame.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Routed::Section {
                node,
                session,
                epoch,
                frames,
            } => {
                encode_section_header(out, *node, *session, *epoch, frames.len());
                out.put_slice(frames);
            }
            Routed::Down {
                node,
                session,
                epoch,
                code,
            } => {
                out.put_u8(ROUTE_DOWN);
                out.put_u16(*node);
                out.put_slice(&session.0);
                out.put_u64(*epoch);
                out.put_u16(*code);
            }
        }
    }

    /// Decodes the next frame of a routed message; `Ok(None)` when the message is used up. Any
    /// other frame type in a routed message is an error.
    pub fn decode(buf: &mut Bytes) -> Result<Option<Routed>, FrameError> {
        let Some(&ty) = buf.first() else {
            return Ok(None);
        };
        if ty != ROUTE && ty != ROUTE_DOWN {
            return Err(FrameError::UnknownType(ty));
        }
        buf.advance(1);
        let node = take_u16(buf, "ROUTE")?;
        let session = take_bytes(buf, 16, "ROUTE")?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&session);
        let epoch = buf
            .try_get_u64()
            .map_err(|_| FrameError::Truncated("ROUTE"))?;
        let word = take_u16(buf, "ROUTE")?;
        Ok(Some(if ty == ROUTE {
            Routed::Section {
                node,
                session: SessionId(id),
                epoch,
                frames: take_bytes(buf, usize::from(word), "ROUTE")?,
            }
        } else {
            Routed::Down {
                node,
                session: SessionId(id),
                epoch,
                code: word,
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn samples() -> Vec<Routed> {
        vec![
            Routed::Section {
                node: 3,
                session: SessionId([7; 16]),
                epoch: 42,
                frames: Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 9]),
            },
            Routed::Section {
                node: u16::MAX,
                session: SessionId([0; 16]),
                epoch: u64::MAX,
                frames: vec![0x11; MAX_SECTION].into(),
            },
            Routed::Down {
                node: 2,
                session: SessionId([1; 16]),
                epoch: 5,
                code: DOWN_NO_SESSION,
            },
        ]
    }

    #[test]
    fn round_trip_and_every_truncation_is_an_error() {
        for f in samples() {
            let mut b = BytesMut::new();
            f.encode(&mut b);
            assert!(b.len() <= MAX_MESSAGE);
            assert!(is_routed(&b));
            let one = b.freeze();
            let mut all = one.clone();
            assert_eq!(Routed::decode(&mut all).unwrap(), Some(f.clone()));
            assert_eq!(Routed::decode(&mut all).unwrap(), None);
            for cut in 1..one.len().min(64) {
                let mut b = one.slice(..cut);
                assert!(
                    matches!(Routed::decode(&mut b), Err(FrameError::Truncated(_))),
                    "{f:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn other_frames_in_a_routed_message_are_refused() {
        let mut b = BytesMut::new();
        samples()[2].encode(&mut b);
        b.extend_from_slice(&[0x01, 0, 0, 0, 0, 0, 0, 0, 1]);
        let mut b = b.freeze();
        assert!(Routed::decode(&mut b).unwrap().is_some());
        assert_eq!(Routed::decode(&mut b), Err(FrameError::UnknownType(0x01)));
        assert!(!is_routed(&[0x01]));
        assert!(!is_routed(&[]));
    }
}
