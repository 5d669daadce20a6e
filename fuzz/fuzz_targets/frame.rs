//! The link frame decoder on any message a peer could send: it never panics, consumes exactly
//! what the frame it returns takes, and every frame but an extension one encodes back to the
//! bytes it was decoded from. A message that starts with `ROUTE` or `ROUTE_DOWN` is a routed one
//! (`core/src/route.rs`), as the link layer tells them apart: its routed frames are checked the
//! same way, and each section's frames as a message of their own.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wanmux_core::frame::{Frame, MAX_MESSAGE};
use wanmux_core::route::{self, Routed};

fuzz_target!(|data: &[u8]| {
    // A link message is at most this long; the link layer refuses longer ones.
    if data.len() > MAX_MESSAGE {
        return;
    }
    if route::is_routed(data) {
        routed(data);
    } else {
        frames(data);
    }
});

/// A routed message: `ROUTE` and `ROUTE_DOWN` frames only.
fn routed(data: &[u8]) {
    let mut buf = Bytes::copy_from_slice(data);
    loop {
        let at = data.len() - buf.len();
        match Routed::decode(&mut buf) {
            Ok(None) => {
                assert!(buf.is_empty(), "Ok(None) with bytes left");
                return;
            }
            Err(_) => return,
            Ok(Some(r)) => {
                let used = data.len() - buf.len() - at;
                let mut out = BytesMut::new();
                r.encode(&mut out);
                assert_eq!(&out[..], &data[at..at + used], "{r:?} re-encoded");
                if let Routed::Section { frames: f, .. } = &r {
                    frames(f);
                }
            }
        }
    }
}

/// A message of core frames.
fn frames(data: &[u8]) {
    let mut buf = Bytes::copy_from_slice(data);
    loop {
        let at = data.len() - buf.len();
        match Frame::decode(&mut buf) {
            Ok(None) => {
                assert!(buf.is_empty(), "Ok(None) with bytes left");
                return;
            }
            Err(_) => return,
            Ok(Some(frame)) => {
                let used = data.len() - buf.len() - at;
                assert!(used > 0, "{frame:?} consumed nothing");
                if matches!(frame, Frame::Unknown(_)) {
                    continue;
                }
                assert_eq!(used, frame.encoded_len(), "{frame:?}");
                let mut out = BytesMut::new();
                frame.encode(&mut out);
                assert_eq!(&out[..], &data[at..at + used], "{frame:?} re-encoded");
            }
        }
    }
}
