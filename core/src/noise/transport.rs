//! The two halves of an established link: length-prefixed Noise transport messages with one
//! explicit nonce counter per direction, or, on a QUIC link whose handshake was bound to its TLS
//! connection (ALPN `wanmux/2`), length-prefixed messages in the clear inside TLS ([`Seal`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::cipher::DirectionKey;
use super::{BoxRead, BoxWrite, LinkError, MAX_PENDING, MAX_PLAINTEXT, READ_CHUNK, TAG_LEN};

/// Length of the `len: u16` prefix of every message.
pub(super) const LEN_PREFIX: usize = 2;

/// What protects one direction of a link's messages once its handshake is done.
#[allow(
    clippy::large_enum_variant,
    reason = "one per link half; a box would cost a pointer chase per message"
)]
pub(super) enum Seal {
    /// Noise transport messages: `len | ciphertext`, sealed with the handshake's key for this
    /// direction (TCP links, and QUIC links on `wanmux/1`).
    Noise(DirectionKey),
    /// `len | frames` in the clear: a QUIC link on `wanmux/2`, whose TLS encrypts every byte
    /// and whose Noise handshake was bound to that TLS connection
    /// (`docs/PROTOCOL.md`, "QUIC links with one encryption"). The Noise keys were dropped
    /// after the key confirmation.
    Clear,
}

/// A stream's read half with its receive buffer. The handshake reads through it with a small
/// chunk size and hands it, with whatever bytes arrived early, to the [`LinkReader`].
pub(super) struct InBuf {
    rd: BoxRead,
    pub(super) buf: BytesMut,
    chunk: usize,
}

impl InBuf {
    /// Wraps a read half; each read asks for about `chunk` bytes.
    pub(super) fn new(rd: BoxRead, chunk: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::with_capacity(chunk),
            chunk,
        }
    }

    /// Reads once, appending to the buffer. Returns `false` at EOF.
    ///
    /// The buffer never grows past one chunk: callers read only while the buffer lacks one
    /// complete message, which is at most 64 KiB, half a data-path chunk, so a block of one
    /// chunk leaves room for a large read. When the room left is short, `try_reclaim` moves that
    /// partial message to the front of the block if no slice split off the block is still held
    /// ([`LinkReader`] hands its messages out as such slices) and the bytes consumed before it
    /// are at least as many as its own, so a steady stream whose messages are consumed as they
    /// come reuses one block; else the partial message moves to a new block of one chunk and
    /// the old one lives as long as its slices. (`reserve` would double a block it cannot reuse
    /// that way instead.) A handshake's chunk is smaller than a message; its reads grow the
    /// buffer to the message, within [`super::MAX_HANDSHAKE_MESSAGE`].
    async fn read_more(&mut self) -> io::Result<bool> {
        let len = self.buf.len();
        if self.buf.capacity() - len < self.chunk / 4 {
            let room = self.chunk.saturating_sub(len).max(self.chunk / 4);
            if !self.buf.try_reclaim(room) {
                let mut block = BytesMut::with_capacity(len + room);
                block.extend_from_slice(&self.buf);
                self.buf = block;
            }
        }
        Ok(self.rd.read_buf(&mut self.buf).await? != 0)
    }

    /// Reads until at least `n` bytes are buffered; EOF before that is [`LinkError::Closed`].
    pub(super) async fn fill(&mut self, n: usize) -> Result<(), LinkError> {
        while self.buf.len() < n {
            if !self.read_more().await? {
                return Err(LinkError::Closed);
            }
        }
        Ok(())
    }

    /// The big-endian `u16` at the front of the buffer (the caller filled 2 bytes).
    pub(super) fn peek_len(&self) -> usize {
        usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]))
    }
}

/// Receive half of a link. Yields one decrypted message per [`recv`](Self::recv).
pub struct LinkReader {
    inb: InBuf,
    seal: Seal,
    /// Nonce of the next message to decrypt (in the clear: the count of messages received).
    nonce: u64,
    /// Set after an error or EOF: the stream position is lost, so every later call fails.
    done: bool,
    /// The peer's address when the link runs over TCP, for [`peer_addr`](Self::peer_addr) and
    /// `Debug`; set by the TCP entry points after the handshake.
    pub(super) peer: Option<SocketAddr>,
}

impl LinkReader {
    pub(super) fn new(mut inb: InBuf, seal: Seal, nonce: u64) -> Self {
        // The handshake ran with small reads; the data path wants large ones.
        inb.chunk = READ_CHUNK;
        Self {
            inb,
            seal,
            nonce,
            done: false,
            peer: None,
        }
    }

    /// A reader of clear messages from `rd`, as a link's reader after its handshake: for the
    /// driver's tests.
    #[cfg(test)]
    pub(crate) fn clear(rd: super::BoxRead) -> Self {
        Self::new(InBuf::new(rd, READ_CHUNK), Seal::Clear, 0)
    }

    /// Receives and decrypts the next message (on a clear link: receives it).
    ///
    /// Returns `Ok(None)` when the peer closed its sending direction cleanly at a message boundary.
    /// EOF inside a message is [`LinkError::Closed`]; a length below the tag size or a message
    /// that fails to decrypt (a clear link: a length over [`MAX_PLAINTEXT`]) is
    /// [`LinkError::Protocol`]. After `Ok(None)` or an error, every later call returns
    /// [`LinkError::Closed`].
    ///
    /// Cancel safe: bytes read before the future is dropped stay buffered for the next call.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, LinkError> {
        if self.done {
            return Err(LinkError::Closed);
        }
        let result = self.recv_inner().await;
        if !matches!(result, Ok(Some(_))) {
            self.done = true;
        }
        result
    }

    /// The next message if the bytes read so far hold all of it: never waits for more. `Ok(None)`
    /// when they do not (or after the link ended); errors as [`LinkReader::recv`]'s. A reader
    /// takes what one read brought in one go this way (a peer that sends many small messages
    /// costs one pass over the session for each batch, not for each message).
    pub fn recv_buffered(&mut self) -> Result<Option<Bytes>, LinkError> {
        if self.done {
            return Ok(None);
        }
        let result = self.buffered();
        if result.is_err() {
            self.done = true;
        }
        result
    }

    /// The complete message at the front of the buffer, if there is one.
    fn buffered(&mut self) -> Result<Option<Bytes>, LinkError> {
        if self.inb.buf.len() < LEN_PREFIX {
            return Ok(None);
        }
        let len = self.inb.peek_len();
        match self.seal {
            Seal::Noise(_) if len < TAG_LEN => {
                return Err(LinkError::Protocol(
                    "transport message shorter than its tag",
                ))
            }
            // The same bound as a sealed message's plaintext: one message holds at most what
            // one Noise message could.
            Seal::Clear if len > MAX_PLAINTEXT => {
                return Err(LinkError::Protocol(
                    "clear message longer than 65,519 bytes",
                ))
            }
            _ => {}
        }
        if self.inb.buf.len() >= LEN_PREFIX + len {
            return self.open(len).map(Some);
        }
        Ok(None)
    }

    async fn recv_inner(&mut self) -> Result<Option<Bytes>, LinkError> {
        loop {
            if let Some(msg) = self.buffered()? {
                return Ok(Some(msg));
            }
            if !self.inb.read_more().await? {
                return if self.inb.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(LinkError::Closed)
                };
            }
        }
    }

    /// Decrypts the complete message of `len` ciphertext bytes at the front of the buffer where
    /// it lies and splits it off (on a clear link: splits its `len` bytes off).
    ///
    /// The slice handed out shares the read buffer's block ([`READ_CHUNK`] bytes): once a block
    /// has slices held, the next read that needs room moves to a new block, and a block whose
    /// slices are all gone is reused ([`InBuf::read_more`]). So a message costs no copy and no
    /// allocation of its own, and a held slice pins at most one read chunk.
    fn open(&mut self, len: usize) -> Result<Bytes, LinkError> {
        let mut msg = self.inb.buf.split_to(LEN_PREFIX + len);
        msg.advance(LEN_PREFIX);
        if let Seal::Noise(key) = &self.seal {
            let Some(n) = key.open(self.nonce, &mut msg) else {
                return Err(LinkError::Protocol("transport message failed to decrypt"));
            };
            msg.truncate(n);
        }
        // The counter cannot wrap: the sender stops before u64::MAX (`LinkWriter::seal`).
        self.nonce += 1;
        Ok(msg.freeze())
    }

    /// What the read buffer holds room for now, from its unread bytes on (tests).
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.inb.buf.capacity()
    }

    /// Address of the peer, as it was when the link was set up over TCP; `None` for a link set
    /// up over another stream (the caller knows its peer).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Whether this half decrypts Noise transport messages: `false` on a QUIC link on
    /// `wanmux/2`, whose messages arrive in the clear inside TLS.
    pub fn decrypts(&self) -> bool {
        matches!(self.seal, Seal::Noise(_))
    }
}

impl fmt::Debug for LinkReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkReader")
            .field("peer", &self.peer)
            .field("messages", &self.nonce)
            .field("encrypted", &self.decrypts())
            .field("buffered", &self.inb.buf.len())
            .finish_non_exhaustive()
    }
}

/// Send half of a link. [`seal`](Self::seal) encrypts messages into an output buffer and
/// [`flush`](Self::flush) writes the buffer out, so many messages share one syscall.
pub struct LinkWriter {
    wr: BoxWrite,
    seal: Seal,
    /// Nonce of the next message to seal (in the clear: the count of messages sent).
    nonce: u64,
    /// Messages, each with its length prefix, not yet written: sealed, except those listed in
    /// `unsealed`.
    out: BytesMut,
    /// Where in `out` the messages [`commit`](Self::commit)ted but not yet sealed begin (after
    /// their prefix), oldest first; sealed before anything else is sealed or written.
    unsealed: Vec<usize>,
    /// Set after a failed write or a shutdown: the peer may have seen part of a message.
    done: bool,
    /// As [`LinkReader`]'s.
    pub(super) peer: Option<SocketAddr>,
}

impl LinkWriter {
    pub(super) fn new(wr: BoxWrite, seal: Seal, nonce: u64) -> Self {
        Self {
            wr,
            seal,
            nonce,
            // Grows with the first messages sealed: an idle link holds nothing here.
            out: BytesMut::new(),
            unsealed: Vec::new(),
            done: false,
            peer: None,
        }
    }

    /// Starts a message built where it will be sent: appends its length prefix to the output
    /// buffer and returns the empty buffer its plaintext goes in, the rest of the same
    /// allocation, with room for a plaintext of [`MAX_PLAINTEXT`] bytes and its tag. Hand it
    /// back to [`commit`](Self::commit) before anything else is done with this writer. The
    /// plaintext is then sealed where it lies by the next [`flush`](Self::flush) (or
    /// [`seal`](Self::seal)): [`seal`](Self::seal) without copying the plaintext.
    ///
    /// [`LinkError::Closed`] after a failed flush or a shutdown; [`LinkError::Misuse`] when the
    /// output buffer has no room for a whole message under [`MAX_PENDING`].
    pub fn begin(&mut self) -> Result<BytesMut, LinkError> {
        if self.done {
            return Err(LinkError::Closed);
        }
        let room = LEN_PREFIX + MAX_PLAINTEXT + TAG_LEN;
        if self.out.len() + room > MAX_PENDING {
            return Err(LinkError::Misuse(
                "output buffer over MAX_PENDING: flush first",
            ));
        }
        self.out.reserve(room);
        self.out.put_u16(0);
        Ok(self.out.split_off(self.out.len()))
    }

    /// Takes back the buffer [`begin`](Self::begin) returned, holding the message's plaintext.
    /// An empty one is dropped with its prefix; one over [`MAX_PLAINTEXT`] is dropped too and
    /// is [`LinkError::Misuse`].
    pub fn commit(&mut self, mut body: BytesMut) -> Result<(), LinkError> {
        let start = self.out.len();
        let len = body.len();
        if len == 0 || len > MAX_PLAINTEXT {
            self.out.truncate(start - LEN_PREFIX);
            return if len == 0 {
                Ok(())
            } else {
                Err(LinkError::Misuse("plaintext longer than MAX_PLAINTEXT"))
            };
        }
        let wire = match self.seal {
            Seal::Noise(_) => {
                // The tag's room, zeroed, within the room `begin` reserved.
                body.put_bytes(0, TAG_LEN);
                self.unsealed.push(start);
                len + TAG_LEN
            }
            Seal::Clear => {
                self.nonce = self.nonce.saturating_add(1);
                len
            }
        };
        // At most MAX_PLAINTEXT + TAG_LEN = u16::MAX, checked above.
        self.out[start - LEN_PREFIX..start].copy_from_slice(&(wire as u16).to_be_bytes());
        // The body is the rest of `out`'s allocation unless it outgrew it: then this copies.
        self.out.unsplit(body);
        Ok(())
    }

    /// Seals, in order, the messages committed since the last call, where they lie.
    fn seal_committed(&mut self) -> Result<(), LinkError> {
        if self.unsealed.is_empty() {
            return Ok(());
        }
        let Self {
            seal,
            nonce,
            out,
            unsealed,
            done,
            ..
        } = self;
        let Seal::Noise(key) = seal else {
            // Only a Noise link lists messages to seal, and its key is dropped only during
            // its handshake, before any is committed.
            unsealed.clear();
            return Ok(());
        };
        for start in unsealed.drain(..) {
            if *nonce == u64::MAX {
                *done = true;
                return Err(LinkError::Closed);
            }
            let wire = usize::from(u16::from_be_bytes([out[start - 2], out[start - 1]]));
            key.seal(*nonce, &mut out[start..start + wire]);
            *nonce += 1;
        }
        Ok(())
    }

    /// Encrypts `plaintext` as one transport message and appends it to the output buffer (on a
    /// clear link: appends `len | plaintext`). Nothing is written until [`flush`](Self::flush).
    ///
    /// A plaintext over [`MAX_PLAINTEXT`], or one that would take the output buffer over
    /// [`MAX_PENDING`], is [`LinkError::Misuse`] and seals nothing. After a failed flush or a
    /// shutdown this returns [`LinkError::Closed`].
    pub fn seal(&mut self, plaintext: &[u8]) -> Result<(), LinkError> {
        if self.done {
            return Err(LinkError::Closed);
        }
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(LinkError::Misuse("plaintext longer than MAX_PLAINTEXT"));
        }
        // Nonces follow the order of the messages in the buffer.
        self.seal_committed()?;
        let key = match &self.seal {
            Seal::Noise(key) => key,
            Seal::Clear => return self.put_clear(plaintext),
        };
        let ct_len = plaintext.len() + TAG_LEN;
        let start = self.out.len();
        if start + LEN_PREFIX + ct_len > MAX_PENDING {
            return Err(LinkError::Misuse(
                "output buffer over MAX_PENDING: flush first",
            ));
        }
        if self.nonce == u64::MAX {
            // Noise reserves the last nonce: 2^64 - 1 messages and the link is done.
            self.done = true;
            return Err(LinkError::Closed);
        }
        self.out.reserve(LEN_PREFIX + ct_len);
        // `ct_len` <= MAX_PLAINTEXT + TAG_LEN = u16::MAX, checked above.
        self.out.put_u16(ct_len as u16);
        // The plaintext is copied in once and sealed where it lies; the tag's room is zeroed.
        self.out.extend_from_slice(plaintext);
        self.out.put_bytes(0, TAG_LEN);
        key.seal(self.nonce, &mut self.out[start + LEN_PREFIX..]);
        self.nonce += 1;
        Ok(())
    }

    /// [`seal`](Self::seal) on a clear link: `len | plaintext`, the caller checked the length.
    fn put_clear(&mut self, plaintext: &[u8]) -> Result<(), LinkError> {
        if self.out.len() + LEN_PREFIX + plaintext.len() > MAX_PENDING {
            return Err(LinkError::Misuse(
                "output buffer over MAX_PENDING: flush first",
            ));
        }
        self.out.reserve(LEN_PREFIX + plaintext.len());
        // At most MAX_PLAINTEXT, checked by `seal`.
        self.out.put_u16(plaintext.len() as u16);
        self.out.extend_from_slice(plaintext);
        self.nonce = self.nonce.saturating_add(1);
        Ok(())
    }

    /// Gives back the output buffer's memory when nothing waits in it (an idle link); the next
    /// message sealed allocates it again.
    pub fn free_buffer(&mut self) {
        if self.out.is_empty() && self.unsealed.is_empty() {
            self.out = BytesMut::new();
        }
    }

    /// Drops this half's Noise key: what it sends from now on goes in the clear. Called once the
    /// key confirmation is sealed, on a link bound to its TLS connection.
    pub(super) fn drop_key(&mut self) {
        debug_assert!(self.unsealed.is_empty());
        self.seal = Seal::Clear;
    }

    /// Whether this half encrypts what it sends as Noise transport messages: `false` on a QUIC
    /// link on `wanmux/2`, whose TLS is the one encryption.
    pub fn encrypts(&self) -> bool {
        matches!(self.seal, Seal::Noise(_))
    }

    /// Writes every sealed message to the stream.
    ///
    /// Cancel safe: what was written before the future is dropped is removed from the buffer,
    /// the rest stays for the next call. After an I/O error the writer is closed: the peer may
    /// have seen part of a message.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        if self.done {
            return Err(LinkError::Closed);
        }
        self.seal_committed()?;
        // `AsyncWrite` lets a stream buffer what it accepted until `flush`. TCP and QUIC streams
        // do not (their `poll_flush` returns at once), so this costs no syscall.
        let written = match self.wr.write_all_buf(&mut self.out).await {
            Ok(()) => self.wr.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.done = true;
            return Err(LinkError::Io(e));
        }
        Ok(())
    }

    /// Bytes sealed but not yet flushed (ciphertext with length prefixes).
    pub fn pending(&self) -> usize {
        self.out.len()
    }

    /// Seals one message and flushes it together with anything sealed before.
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), LinkError> {
        self.seal(plaintext)?;
        self.flush().await
    }

    /// Flushes what is pending (best effort) and shuts down the sending direction of the stream
    /// (a TCP `FIN`, or a QUIC stream's `FIN`), so the peer's reader sees a clean EOF. The
    /// receiving direction stays open.
    pub async fn shutdown(&mut self) {
        if !self.done {
            // Best effort by contract: a failure here leaves nothing for the caller to do.
            // Never a plaintext out: what cannot be sealed is not written.
            if self.seal_committed().is_ok() {
                let _ = self.wr.write_all_buf(&mut self.out).await;
            }
            self.done = true;
        }
        let _ = self.wr.shutdown().await;
    }

    /// Address of the peer, as [`LinkReader::peer_addr`].
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Test hook: the raw write half, to put arbitrary bytes on the wire.
    #[cfg(test)]
    pub(super) fn raw(&mut self) -> &mut BoxWrite {
        &mut self.wr
    }

    /// Test hook: the sealed, unflushed bytes, to corrupt them.
    #[cfg(test)]
    pub(super) fn out_mut(&mut self) -> &mut BytesMut {
        &mut self.out
    }
}

impl fmt::Debug for LinkWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkWriter")
            .field("peer", &self.peer)
            .field("messages", &self.nonce)
            .field("encrypted", &self.encrypts())
            .field("pending", &self.out.len())
            .finish_non_exhaustive()
    }
}
