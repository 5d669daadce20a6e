//! The `VIA_CREDIT` a relay owes the owners on one peer link, kept apart from the link's queue.
//!
//! A relay returns an owner's credit as its client link takes the owner's sections. Queued like
//! any message, the credit waited behind what already filled the link (the sections the same
//! relay forwards upstream, up to `cluster.relay_queue`), and when the queue was full it was
//! not queued at all until the relay's next poll or tick: an owner that had spent its credit
//! sent nothing through that relay for up to a second. Here credit adds up per virtual link
//! and the link's writer seals it ahead of queued messages, so it is never refused and never
//! waits behind data. What is owed is bounded by the virtual links, one entry each.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::Notify;
use wanmux_core::frame::MAX_MESSAGE;
use wanmux_core::peer::{Handle, PeerFrame, Via};

/// Credit owed per (session handle, client link), and a wake-up for the link's writer.
#[derive(Debug, Default)]
pub(crate) struct Credits {
    owed: Mutex<HashMap<(Handle, Via), u64>>,
    more: Notify,
}

impl Credits {
    /// Owes the owner `bytes` more on virtual link (`handle`, `via`).
    pub(crate) fn give(&self, handle: Handle, via: Via, bytes: u64) {
        if bytes == 0 {
            return;
        }
        {
            // Only map operations run under this lock.
            let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
            let b = owed.entry((handle, via)).or_insert(0);
            *b = b.saturating_add(bytes);
        }
        self.more.notify_one();
    }

    /// Waits until credit may be owed (a wake-up can find nothing: [`take`](Self::take) again).
    pub(crate) async fn wait(&self) {
        self.more.notified().await;
    }

    /// Appends `VIA_CREDIT` frames for what is owed to `out`, as long as `out` stays within one
    /// message, and forgets what it appended. True when more is owed than fitted.
    pub(crate) fn take(&self, out: &mut bytes::BytesMut) -> bool {
        let len = PeerFrame::ViaCredit {
            handle: Handle(0),
            via: Via(0),
            bytes: 0,
        }
        .encoded_len();
        let mut owed = self.owed.lock().unwrap_or_else(|e| e.into_inner());
        owed.retain(|&(handle, via), bytes| {
            while *bytes > 0 && out.len() + len <= MAX_MESSAGE {
                let now = (*bytes).min(u64::from(u32::MAX));
                PeerFrame::ViaCredit {
                    handle,
                    via,
                    bytes: now as u32,
                }
                .encode(out);
                *bytes -= now;
            }
            *bytes > 0
        });
        !owed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn frames(mut b: bytes::Bytes) -> Vec<PeerFrame> {
        let mut out = Vec::new();
        while let Some(f) = PeerFrame::decode(&mut b).expect("decodes") {
            out.push(f);
        }
        out
    }

    #[test]
    fn credit_adds_up_per_virtual_link_and_is_taken_once() {
        let c = Credits::default();
        c.give(Handle(1), Via(7), 1000);
        c.give(Handle(1), Via(7), 500);
        c.give(Handle(2), Via(7), 0);
        let mut out = BytesMut::new();
        assert!(!c.take(&mut out));
        assert_eq!(
            frames(out.freeze()),
            vec![PeerFrame::ViaCredit {
                handle: Handle(1),
                via: Via(7),
                bytes: 1500
            }]
        );
        let mut out = BytesMut::new();
        assert!(!c.take(&mut out));
        assert!(out.is_empty(), "nothing is owed twice");
    }

    #[test]
    fn what_does_not_fit_one_message_stays_owed() {
        let c = Credits::default();
        let n = MAX_MESSAGE / 13 + 10;
        for v in 0..n {
            c.give(Handle(1), Via(v as u32), 1);
        }
        c.give(Handle(2), Via(0), u64::from(u32::MAX) + 5);
        let (mut total, mut sum, mut rounds) = (0, 0u64, 0);
        loop {
            let mut out = BytesMut::new();
            let more = c.take(&mut out);
            assert!(out.len() <= MAX_MESSAGE);
            for f in frames(out.freeze()) {
                let PeerFrame::ViaCredit { bytes, .. } = f else {
                    panic!("only credit")
                };
                total += 1;
                sum += u64::from(bytes);
            }
            rounds += 1;
            if !more {
                break;
            }
        }
        assert_eq!(rounds, 2);
        assert_eq!(total, n + 2, "the large credit is split in two frames");
        assert_eq!(sum, n as u64 + u64::from(u32::MAX) + 5);
    }
}
