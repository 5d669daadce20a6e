//! Where [`Session::poll_transmit`](super::Session::poll_transmit) builds a message: in one
//! buffer, copying stream data in as it goes ([`BytesMut`]), or as frames with the stream data
//! referenced ([`Gathered`]), copied later by whoever sends the message. The driver gathers, so
//! that the copy of a message's payload (the only work per byte in building it) is done after
//! the session's lock is released, not under it.

use bytes::{BufMut, Bytes, BytesMut};

/// Payload pieces a [`Gathered`] keeps room for between messages.
const KEEP_PIECES: usize = 64;

/// A message being built.
pub trait MessageBuf {
    /// Bytes in the message so far.
    fn len(&self) -> usize;

    /// Whether the message is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Empties it.
    fn clear(&mut self);

    /// Where the next frame (or the header of a DATA frame) is encoded, at the end.
    fn frames(&mut self) -> &mut BytesMut;

    /// Appends `chunk[start..end]`, a DATA frame's payload.
    fn payload(&mut self, chunk: &Bytes, start: usize, end: usize);
}

impl MessageBuf for BytesMut {
    fn len(&self) -> usize {
        BytesMut::len(self)
    }

    fn clear(&mut self) {
        BytesMut::clear(self);
    }

    fn frames(&mut self) -> &mut BytesMut {
        self
    }

    fn payload(&mut self, chunk: &Bytes, start: usize, end: usize) {
        self.put_slice(&chunk[start..end]);
    }
}

/// A message as its encoded frames and, between them, references to stream data: nothing of
/// the payload is copied until [`Gathered::copy_to`].
#[derive(Debug, Default)]
pub struct Gathered {
    /// Every byte of the message that is not payload, in order.
    frames: BytesMut,
    /// Each payload piece and where in `frames` it goes (before the byte at that index).
    pieces: Vec<(usize, Bytes)>,
    /// Bytes in `pieces`.
    payload: usize,
}

impl Gathered {
    /// Room for frames one keeps between messages ([`Gathered::release`]): a bulk message's
    /// frames (its DATA headers, a ping) take a few dozen bytes.
    pub const KEPT_FRAMES: usize = 4096;

    /// Appends the whole message to `out`, in order.
    pub fn copy_to(&self, out: &mut BytesMut) {
        out.reserve(self.len());
        let mut done = 0;
        for (at, piece) in &self.pieces {
            out.put_slice(&self.frames[done..*at]);
            out.put_slice(piece);
            done = *at;
        }
        out.put_slice(&self.frames[done..]);
    }

    /// Lets go of the stream data it refers to, and of the room a message of many frames (a
    /// burst of control frames) left behind: what a link keeps between messages stays small.
    pub fn release(&mut self) {
        self.clear();
        if self.frames.capacity() > Self::KEPT_FRAMES {
            self.frames = BytesMut::new();
        }
        if self.pieces.capacity() > KEEP_PIECES {
            self.pieces = Vec::new();
        }
    }
}

impl MessageBuf for Gathered {
    fn len(&self) -> usize {
        self.frames.len() + self.payload
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.pieces.clear();
        self.payload = 0;
    }

    fn frames(&mut self) -> &mut BytesMut {
        &mut self.frames
    }

    fn payload(&mut self, chunk: &Bytes, start: usize, end: usize) {
        if start < end {
            self.pieces
                .push((self.frames.len(), chunk.slice(start..end)));
            self.payload += end - start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gathered_message_copies_to_what_one_buffer_would_hold() {
        let data = Bytes::from_static(b"0123456789abcdef");
        let (mut one, mut gathered) = (BytesMut::new(), Gathered::default());
        for m in [&mut one as &mut dyn MessageBuf, &mut gathered] {
            m.frames().put_slice(b"<h1>");
            m.payload(&data, 2, 7);
            m.payload(&data, 7, 7); // an empty piece
            m.frames().put_slice(b"<h2>");
            m.payload(&data, 10, 16);
            m.payload(&data, 0, 1);
            m.frames().put_slice(b"<end>");
        }
        assert_eq!(gathered.len(), one.len());
        let mut out = BytesMut::from(&b"before:"[..]);
        gathered.copy_to(&mut out);
        assert_eq!(&out[..], &[&b"before:"[..], &one[..]].concat()[..]);
        assert_eq!(&one[..], b"<h1>23456<h2>abcdef0<end>");
        gathered.release();
        assert!(gathered.is_empty());
    }
}
