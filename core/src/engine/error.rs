//! Errors of the engine, split by who is at fault: the peer, or the application.

use crate::frame::FrameError;
use crate::ids::StreamId;

/// Application-side misuse or a stream that no longer exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stream was reset (by either side) or never existed.
    #[error("stream closed")]
    Closed,
    /// Write after finish.
    #[error("stream already finished")]
    Finished,
    /// More bytes than `stream_send_capacity` allowed.
    #[error("write exceeds send capacity")]
    Full,
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// Service names are at most 255 bytes.
    #[error("service name longer than 255 bytes")]
    NameTooLong,
    /// Only clients open streams.
    #[error("only the client opens streams")]
    NotClient,
    /// The per-owner stream counter is used up (2^48 streams).
    #[error("stream ids exhausted")]
    IdsExhausted,
}

/// The peer broke the protocol; close the link the frame came on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// Malformed frame bytes.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// Data beyond the stream credit we granted.
    #[error("stream {0} exceeded its credit")]
    CreditExceeded(StreamId),
    /// Data beyond the session credit we granted.
    #[error("session credit exceeded")]
    SessionCreditExceeded,
    /// Data past the final size, or a final size that changed.
    #[error("stream {0} final size violated")]
    FinalSize(StreamId),
    /// An ack for bytes never sent.
    #[error("stream {0} ack beyond sent data")]
    AckBeyondSent(StreamId),
    /// A stream owned by another node.
    #[error("stream {0} is not owned by this node")]
    NotOwner(StreamId),
    /// The server tried to open a stream.
    #[error("unexpected OPEN from a server")]
    UnexpectedOpen,
    /// A message on a link the engine does not know.
    #[error("unknown link")]
    UnknownLink,
    /// Far more refused streams than the limit allows.
    #[error("too many streams")]
    TooManyStreams,
    /// An offset or length that overflows.
    #[error("stream {0} offset overflow")]
    Overflow(StreamId),
    /// The peer's frames (resets to answer, streams to refuse) left more control frames
    /// waiting to be sent than it can need: it sends them faster than it reads the answers.
    #[error("more than {0} control frames waiting to be sent")]
    ControlBacklog(usize),
}
