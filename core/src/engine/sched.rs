//! Stream scheduler: which stream's bytes go into the next frame.
//!
//! Two round-robin queues. A stream whose backlog is small when it is queued (a game's
//! packets, a request) goes to the interactive queue, which is always served first; a bulk
//! stream goes to the bulk queue. Each turn a stream sends at most one quantum when others are
//! waiting, so one bulk stream cannot hold a link for long.

use crate::ids::StreamId;
use std::collections::VecDeque;

/// A stream whose backlog is at most this many bytes is interactive.
pub(crate) const INTERACTIVE_BACKLOG: u64 = 16 * 1024;

/// Bytes a stream may send per turn while other streams wait.
pub(crate) const QUANTUM: usize = 16 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    interactive: VecDeque<StreamId>,
    bulk: VecDeque<StreamId>,
}

impl Scheduler {
    /// Queues a stream; the caller keeps a flag so a stream is queued at most once. Returns
    /// whether it went to the interactive queue.
    pub(crate) fn push(&mut self, id: StreamId, backlog: u64) -> bool {
        if backlog <= INTERACTIVE_BACKLOG {
            self.interactive.push_back(id);
            true
        } else {
            self.bulk.push_back(id);
            false
        }
    }

    pub(crate) fn pop(&mut self) -> Option<StreamId> {
        self.interactive
            .pop_front()
            .or_else(|| self.bulk.pop_front())
    }

    pub(crate) fn pop_interactive(&mut self) -> Option<StreamId> {
        self.interactive.pop_front()
    }

    pub(crate) fn pop_bulk(&mut self) -> Option<StreamId> {
        self.bulk.pop_front()
    }

    pub(crate) fn has_interactive(&self) -> bool {
        !self.interactive.is_empty()
    }

    pub(crate) fn has_bulk(&self) -> bool {
        !self.bulk.is_empty()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.interactive.is_empty() && self.bulk.is_empty()
    }
}
