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

/// Bytes a stream may send per turn while other streams wait: about a whole message, so that a
/// bulk stream's bytes arrive in large pieces, each written to its application in one call and
/// waking it once (with 16 KiB, eight uploads through 4 links cost both daemons 1.63-1.68 CPU
/// s/GB on loopback against 1.55-1.56: `bench/RESULTS.md`, "Many streams"). Interactive streams
/// are served first whatever it is.
pub(crate) const QUANTUM: usize = 64 * 1024;

/// The stream queues. Streams pinned to their owner's links (`spread = "pin"`) wait in queues of
/// their own, which a relayed link (a sub-link or virtual link, see `Session::add_relayed_link`)
/// does not serve; a direct link serves both kinds in turn.
#[derive(Debug, Default)]
pub(crate) struct Scheduler {
    interactive: VecDeque<StreamId>,
    bulk: VecDeque<StreamId>,
    pinned_interactive: VecDeque<StreamId>,
    pinned_bulk: VecDeque<StreamId>,
    /// Which kind a direct link serves first next time (alternates).
    pinned_first: bool,
}

/// A pair of queues, spread then pinned, served in turn by a direct link.
fn pop_either(
    spread: &mut VecDeque<StreamId>,
    pinned: &mut VecDeque<StreamId>,
    relayed: bool,
    pinned_first: &mut bool,
) -> Option<StreamId> {
    if relayed {
        return spread.pop_front();
    }
    *pinned_first = !*pinned_first;
    if *pinned_first {
        pinned.pop_front().or_else(|| spread.pop_front())
    } else {
        spread.pop_front().or_else(|| pinned.pop_front())
    }
}

impl Scheduler {
    /// Queues a stream; the caller keeps a flag so a stream is queued at most once. Returns
    /// whether it went to an interactive queue.
    pub(crate) fn push(&mut self, id: StreamId, backlog: u64, pinned: bool) -> bool {
        let interactive = backlog <= INTERACTIVE_BACKLOG;
        match (interactive, pinned) {
            (true, false) => self.interactive.push_back(id),
            (false, false) => self.bulk.push_back(id),
            (true, true) => self.pinned_interactive.push_back(id),
            (false, true) => self.pinned_bulk.push_back(id),
        }
        interactive
    }

    /// The next stream for a link; a `relayed` one takes no pinned stream.
    pub(crate) fn pop(&mut self, relayed: bool) -> Option<StreamId> {
        self.pop_interactive(relayed)
            .or_else(|| self.pop_bulk(relayed))
    }

    pub(crate) fn pop_interactive(&mut self, relayed: bool) -> Option<StreamId> {
        pop_either(
            &mut self.interactive,
            &mut self.pinned_interactive,
            relayed,
            &mut self.pinned_first,
        )
    }

    pub(crate) fn pop_bulk(&mut self, relayed: bool) -> Option<StreamId> {
        pop_either(
            &mut self.bulk,
            &mut self.pinned_bulk,
            relayed,
            &mut self.pinned_first,
        )
    }

    pub(crate) fn has_interactive(&self, relayed: bool) -> bool {
        !self.interactive.is_empty() || (!relayed && !self.pinned_interactive.is_empty())
    }

    /// Whether a pinned stream waits in the interactive queue.
    pub(crate) fn has_pinned_interactive(&self) -> bool {
        !self.pinned_interactive.is_empty()
    }

    /// Streams waiting in the bulk queues.
    pub(crate) fn bulk_streams(&self) -> usize {
        self.bulk.len() + self.pinned_bulk.len()
    }

    pub(crate) fn has_bulk(&self, relayed: bool) -> bool {
        !self.bulk.is_empty() || (!relayed && !self.pinned_bulk.is_empty())
    }

    /// Whether no stream waits that a link of this kind could take.
    pub(crate) fn is_empty_for(&self, relayed: bool) -> bool {
        !self.has_interactive(relayed) && !self.has_bulk(relayed)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.is_empty_for(false)
    }
}
