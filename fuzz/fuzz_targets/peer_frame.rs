//! The peer link frame decoder (the frames between two server nodes) on any message a peer
//! node could send: it never panics, consumes exactly what the frame it returns takes, every
//! frame but an extension one encodes back to its bytes, and a `RELAY`'s payload decodes as the
//! client frames the owner node would apply, again without a panic.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use wanmux_core::frame::{Frame, MAX_MESSAGE};
use wanmux_core::peer::PeerFrame;

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_MESSAGE {
        return;
    }
    let mut buf = Bytes::copy_from_slice(data);
    loop {
        let at = data.len() - buf.len();
        match PeerFrame::decode(&mut buf) {
            Ok(None) => {
                assert!(buf.is_empty(), "Ok(None) with bytes left");
                return;
            }
            Err(_) => return,
            Ok(Some(frame)) => {
                let used = data.len() - buf.len() - at;
                assert!(used > 0, "{frame:?} consumed nothing");
                if let PeerFrame::Relay { frames, .. } = &frame {
                    let mut inner = frames.clone();
                    while let Ok(Some(_)) = Frame::decode(&mut inner) {}
                }
                if matches!(frame, PeerFrame::Unknown(_)) {
                    continue;
                }
                assert_eq!(used, frame.encoded_len(), "{frame:?}");
                let mut out = BytesMut::new();
                frame.encode(&mut out);
                assert_eq!(&out[..], &data[at..at + used], "{frame:?} re-encoded");
            }
        }
    }
});
