//! Engine unit tests: hostile and malformed peer input, and the small state machines. The
//! many-link behaviour is tested by the simulation in `tests/`.

mod lanes;
mod peer;
mod windows;

use super::link::KEEPALIVE;
use super::*;
use crate::budget::{Budget, Pool};
use crate::frame::reset;
use bytes::{Bytes, BytesMut};

pub(super) const NODE: NodeId = NodeId(1);
pub(super) const LINK: LinkId = LinkId(1);

pub(super) fn server(max_streams: usize) -> (Session, Instant) {
    let now = Instant::now();
    let cfg = Config {
        stream_window: INITIAL_STREAM_CREDIT,
        session_window: INITIAL_SESSION_CREDIT,
        max_streams,
    };
    let mut s = Session::new(Role::Server(NODE), cfg);
    s.add_link(now, LINK);
    (s, now)
}

pub(super) fn msg(frames: &[Frame]) -> Bytes {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b);
    }
    b.freeze()
}

pub(super) fn data(stream: StreamId, offset: u64, len: usize, fin: bool) -> Frame {
    Frame::Data {
        stream,
        offset,
        fin,
        data: Bytes::from(vec![0xAB; len]),
    }
}

pub(super) fn sid(counter: u64) -> StreamId {
    StreamId::new(NODE, counter)
}

/// Every frame of one message `link` would send now.
pub(super) fn sent(s: &mut Session, now: Instant, link: LinkId) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    if s.poll_transmit(now, link, &mut buf) {
        let mut b = buf.freeze();
        while let Some(f) = Frame::decode(&mut b).expect("own frames decode") {
            out.push(f);
        }
    }
    out
}
