//! Errors of a bench run, split by who is at fault: options (the caller), I/O (the local side or
//! the path), the peer's protocol, and data verification (the path between the ends).

use std::fmt;
use std::io;

/// Which end found a problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// This process (the bench client).
    Client,
    /// The bench server, which reported it in its verdict.
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// How received data differed from what was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyFailure {
    /// The payload byte at this stream offset differs from the expected pattern: data was
    /// corrupted, reordered, duplicated, dropped, or belongs to another stream.
    Pattern {
        /// Offset of the first bad byte in the stream's payload.
        offset: u64,
    },
    /// The sender's byte count differs from the receiver's.
    ByteCount {
        /// What the sender says it sent.
        sent: u64,
        /// What the receiver counted.
        received: u64,
    },
    /// The sender's crc32 differs from the receiver's.
    Checksum {
        /// The sender's crc32 of its payload.
        sent: u32,
        /// The receiver's crc32 of the payload it got.
        received: u32,
    },
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VerifyFailure::Pattern { offset } => write!(
                f,
                "payload byte {offset} differs from the expected pattern \
                 (corrupted, reordered, lost or misrouted data)"
            ),
            VerifyFailure::ByteCount { sent, received } => {
                write!(f, "sender sent {sent} bytes but receiver got {received}")
            }
            VerifyFailure::Checksum { sent, received } => {
                write!(
                    f,
                    "crc32 mismatch: sender {sent:08x}, receiver {received:08x}"
                )
            }
        }
    }
}

/// Why a bench run failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BenchError {
    /// The options make no sense (for example zero streams).
    InvalidOptions(String),
    /// Could not connect to the target.
    Connect {
        /// The address as given.
        addr: String,
        /// The connect error.
        source: io::Error,
    },
    /// A socket error during the test (reset, broken pipe, ...).
    Io {
        /// Index of the stream (connection) it happened on.
        stream: usize,
        /// The I/O error.
        source: io::Error,
    },
    /// The connection ended before the test was complete.
    Truncated {
        /// Index of the stream.
        stream: usize,
        /// What was still expected, and how far the stream got.
        detail: String,
    },
    /// The peer sent something that does not follow the protocol.
    Protocol {
        /// Index of the stream.
        stream: usize,
        /// What was wrong.
        detail: String,
    },
    /// Data arrived but did not match what was sent.
    Verify {
        /// Index of the stream.
        stream: usize,
        /// Which end noticed.
        side: Side,
        /// What differed.
        failure: VerifyFailure,
    },
    /// Nothing moved for too long.
    Stalled {
        /// Index of the stream, if one stream is known to be stuck.
        stream: Option<usize>,
        /// How long nothing moved.
        seconds: f64,
    },
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchError::InvalidOptions(s) => write!(f, "invalid options: {s}"),
            BenchError::Connect { addr, source } => write!(f, "cannot connect to {addr}: {source}"),
            BenchError::Io { stream, source } => write!(f, "stream {stream}: i/o error: {source}"),
            BenchError::Truncated { stream, detail } => {
                write!(f, "stream {stream}: connection ended early: {detail}")
            }
            BenchError::Protocol { stream, detail } => {
                write!(f, "stream {stream}: protocol error: {detail}")
            }
            BenchError::Verify {
                stream,
                side,
                failure,
            } => {
                write!(
                    f,
                    "stream {stream}: DATA VERIFICATION FAILED (detected by {side}): {failure}"
                )
            }
            BenchError::Stalled {
                stream: Some(s),
                seconds,
            } => {
                write!(f, "stream {s}: no progress for {seconds:.1} s")
            }
            BenchError::Stalled {
                stream: None,
                seconds,
            } => {
                write!(f, "no progress for {seconds:.1} s")
            }
        }
    }
}

impl std::error::Error for BenchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BenchError::Connect { source, .. } | BenchError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl BenchError {
    /// True if the run failed because data did not verify (as opposed to a connection or
    /// protocol problem).
    pub fn is_verification_failure(&self) -> bool {
        matches!(self, BenchError::Verify { .. })
    }

    /// Maps an I/O error on `stream`, turning an unexpected end of stream into `Truncated`.
    pub(crate) fn io(stream: usize, what: &str, e: io::Error) -> BenchError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            BenchError::Truncated {
                stream,
                detail: format!("end of stream while {what}"),
            }
        } else {
            BenchError::Io { stream, source: e }
        }
    }
}
