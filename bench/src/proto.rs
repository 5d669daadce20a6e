//! Wire format between a bench client and a bench server (see `bench/README.md`).
//!
//! Everything is big-endian. A connection starts with one [`Header`] from the client; what follows
//! depends on the mode. Bulk data is a sequence of records `u32 len | payload`, ended by a
//! zero-length record and a [`Trailer`]; the receiver answers with a [`Verdict`].

use std::io;
use std::time::Duration;

use crate::pattern;

/// First bytes of every connection: "WMXB".
pub(crate) const MAGIC: [u8; 4] = *b"WMXB";
/// Protocol version this build speaks. A server rejects any other.
pub(crate) const VERSION: u8 = 1;
/// Encoded size of [`Header`].
pub(crate) const HEADER_LEN: usize = 32;
/// Encoded size of [`Trailer`], not counting the zero-length record before it.
pub(crate) const TRAILER_LEN: usize = 12;
/// Encoded size of [`Verdict`].
pub(crate) const VERDICT_LEN: usize = 29;
/// Largest payload of one bulk record. A receiver treats a larger length as a malformed stream,
/// which bounds what a peer can make it expect in one record.
pub const MAX_RECORD: usize = 128 * 1024;
// A record is sent from, and compared against, one contiguous slice of the pattern.
const _: () = assert!(MAX_RECORD <= pattern::MAX_SLICE);
/// Largest request/response message. The server allocates one buffer of this size per rr
/// connection, so this bounds its memory per connection.
pub const MAX_RR_SIZE: usize = 1024 * 1024;

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Client sends bulk data, server verifies and answers with a verdict.
    Upload,
    /// Server sends bulk data, client verifies and answers with a verdict.
    Download,
    /// Client sends `size`-byte messages, server echoes each one.
    Rr,
}

impl Mode {
    fn to_wire(self) -> u8 {
        match self {
            Mode::Upload => 1,
            Mode::Download => 2,
            Mode::Rr => 3,
        }
    }
}

/// When the bulk sender stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireLimit {
    /// Send for this long, measured by the sender from the start of its stream.
    Duration(Duration),
    /// Send exactly this many payload bytes.
    Bytes(u64),
    /// rr: the number of round trips the client plans (informational; the server echoes until
    /// end of stream).
    Rounds(u64),
}

/// The client's opening message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) mode: Mode,
    pub(crate) limit: WireLimit,
    /// Bulk: largest record payload the sender uses. rr: message size.
    pub(crate) size: u32,
    /// Seed of the data pattern (see `pattern.rs`).
    pub(crate) seed: u64,
    /// Pattern offset of the first payload byte, `< PERIOD`. Streams of one run start at
    /// different offsets, so data delivered on the wrong stream does not verify.
    pub(crate) start: u32,
}

impl Header {
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let (kind, value) = match self.limit {
            WireLimit::Duration(d) => (0u8, u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            WireLimit::Bytes(n) => (1, n),
            WireLimit::Rounds(n) => (2, n),
        };
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5] = self.mode.to_wire();
        b[6] = kind;
        b[7] = 0;
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..20].copy_from_slice(&value.to_be_bytes());
        b[20..28].copy_from_slice(&self.seed.to_be_bytes());
        b[28..32].copy_from_slice(&self.start.to_be_bytes());
        b
    }

    /// Parses and checks a header; the error text is for the server's log.
    pub(crate) fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, String> {
        if b[0..4] != MAGIC {
            return Err("bad magic (not a wanmux-bench client?)".into());
        }
        if b[4] != VERSION {
            return Err(format!(
                "unsupported protocol version {} (this server speaks {VERSION})",
                b[4]
            ));
        }
        let mode = match b[5] {
            1 => Mode::Upload,
            2 => Mode::Download,
            3 => Mode::Rr,
            m => return Err(format!("unknown mode {m}")),
        };
        let size = u32::from_be_bytes(b[8..12].try_into().expect("4-byte slice"));
        let value = u64::from_be_bytes(b[12..20].try_into().expect("8-byte slice"));
        let limit = match (mode, b[6]) {
            (Mode::Rr, 2) => WireLimit::Rounds(value),
            (Mode::Upload | Mode::Download, 0) => WireLimit::Duration(Duration::from_millis(value)),
            (Mode::Upload | Mode::Download, 1) => WireLimit::Bytes(value),
            (_, k) => return Err(format!("limit kind {k} is invalid for {mode:?}")),
        };
        let max = if mode == Mode::Rr {
            MAX_RR_SIZE
        } else {
            MAX_RECORD
        };
        if size == 0 || size as usize > max {
            return Err(format!("size {size} out of range 1..={max}"));
        }
        let seed = u64::from_be_bytes(b[20..28].try_into().expect("8-byte slice"));
        let start = u32::from_be_bytes(b[28..32].try_into().expect("4-byte slice"));
        if start as usize >= pattern::PERIOD {
            return Err(format!("pattern start {start} out of range"));
        }
        Ok(Header {
            mode,
            limit,
            size,
            seed,
            start,
        })
    }
}

/// What the sender claims after its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trailer {
    pub(crate) total_bytes: u64,
    pub(crate) crc: u32,
}

impl Trailer {
    /// The zero-length end record followed by the trailer, ready to write in one go.
    pub(crate) fn encode_with_end(&self) -> [u8; 4 + TRAILER_LEN] {
        let mut b = [0u8; 4 + TRAILER_LEN];
        b[4..12].copy_from_slice(&self.total_bytes.to_be_bytes());
        b[12..16].copy_from_slice(&self.crc.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8; TRAILER_LEN]) -> Trailer {
        Trailer {
            total_bytes: u64::from_be_bytes(b[0..8].try_into().expect("8-byte slice")),
            crc: u32::from_be_bytes(b[8..12].try_into().expect("4-byte slice")),
        }
    }
}

/// Outcome code in a [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    /// A payload byte differed from the pattern; `detail` is its stream offset.
    PatternMismatch,
    /// The trailer's byte count differs from what arrived; `detail` is the trailer's count.
    CountMismatch,
    /// The trailer's checksum differs from the received data's; `detail` is the trailer's crc.
    ChecksumMismatch,
    /// A record length or the bytes after the trailer were invalid; `detail` is the offset.
    Malformed,
    /// The stream ended before the trailer; `detail` is the payload byte count so far.
    Truncated,
    /// A status this build does not know.
    Unknown(u8),
}

impl Status {
    fn to_wire(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::PatternMismatch => 1,
            Status::CountMismatch => 2,
            Status::ChecksumMismatch => 3,
            Status::Malformed => 4,
            Status::Truncated => 5,
            Status::Unknown(s) => s,
        }
    }

    fn from_wire(b: u8) -> Status {
        match b {
            0 => Status::Ok,
            1 => Status::PatternMismatch,
            2 => Status::CountMismatch,
            3 => Status::ChecksumMismatch,
            4 => Status::Malformed,
            5 => Status::Truncated,
            s => Status::Unknown(s),
        }
    }
}

/// The receiver's answer to a bulk stream: `u64 bytes | u32 crc | u8 status | u64 receive_micros
/// | u64 detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Payload bytes the receiver counted.
    pub(crate) bytes: u64,
    /// crc32 of the payload the receiver counted.
    pub(crate) crc: u32,
    pub(crate) status: Status,
    /// The receiver's own receive time, from the header to the trailer.
    pub(crate) receive_micros: u64,
    /// Status-specific detail (see [`Status`]).
    pub(crate) detail: u64,
}

impl Verdict {
    pub(crate) fn encode(&self) -> [u8; VERDICT_LEN] {
        let mut b = [0u8; VERDICT_LEN];
        b[0..8].copy_from_slice(&self.bytes.to_be_bytes());
        b[8..12].copy_from_slice(&self.crc.to_be_bytes());
        b[12] = self.status.to_wire();
        b[13..21].copy_from_slice(&self.receive_micros.to_be_bytes());
        b[21..29].copy_from_slice(&self.detail.to_be_bytes());
        b
    }

    pub(crate) fn decode(b: &[u8; VERDICT_LEN]) -> Verdict {
        Verdict {
            bytes: u64::from_be_bytes(b[0..8].try_into().expect("8-byte slice")),
            crc: u32::from_be_bytes(b[8..12].try_into().expect("4-byte slice")),
            status: Status::from_wire(b[12]),
            receive_micros: u64::from_be_bytes(b[13..21].try_into().expect("8-byte slice")),
            detail: u64::from_be_bytes(b[21..29].try_into().expect("8-byte slice")),
        }
    }
}

/// Writes all of `first` then all of `second` with vectored writes, so a record header and its
/// payload go out in one syscall without copying the payload.
pub(crate) async fn write_two<W>(w: &mut W, first: &[u8], second: &[u8]) -> io::Result<()>
where
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::AsyncWriteExt;
    let (mut a, mut b) = (first, second);
    while !a.is_empty() {
        let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
        let n = w.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        if n < a.len() {
            a = &a[n..];
        } else {
            b = &b[n - a.len()..];
            a = &[];
        }
    }
    if !b.is_empty() {
        w.write_all(b).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rejects() {
        let h = Header {
            mode: Mode::Download,
            limit: WireLimit::Bytes(12345),
            size: 65536,
            seed: 7,
            start: 99,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));
        let h = Header {
            mode: Mode::Rr,
            limit: WireLimit::Rounds(10),
            size: 64,
            seed: 1,
            start: 0,
        };
        assert_eq!(Header::decode(&h.encode()), Ok(h));

        let mut bad = h.encode();
        bad[0] = b'X';
        assert!(Header::decode(&bad).unwrap_err().contains("magic"));
        let mut bad = h.encode();
        bad[4] = 9;
        assert!(Header::decode(&bad).unwrap_err().contains("version"));
        let big = Header {
            size: MAX_RECORD as u32 + 1,
            mode: Mode::Upload,
            ..h
        };
        assert!(Header::decode(&big.encode()).is_err());
        let kind = Header {
            mode: Mode::Upload,
            ..h
        };
        assert!(Header::decode(&kind.encode()).is_err());
    }

    #[test]
    fn verdict_round_trip() {
        let v = Verdict {
            bytes: 1 << 40,
            crc: 0xdead_beef,
            status: Status::ChecksumMismatch,
            receive_micros: 3,
            detail: 4,
        };
        assert_eq!(Verdict::decode(&v.encode()), v);
        let t = Trailer {
            total_bytes: 5,
            crc: 6,
        };
        let enc = t.encode_with_end();
        assert_eq!(enc[..4], [0; 4]);
        assert_eq!(Trailer::decode(enc[4..].try_into().unwrap()), t);
    }
}
