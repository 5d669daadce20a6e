//! The link pool of one node: `links.min` slots always, more while every link is busy, up to
//! `links.max`; extra links that stay idle are closed again.
//!
//! "Busy" is seen from the sending side: a link whose writer has found data every time it
//! looked for `GROW_AFTER` has a full socket, and if the session still has data waiting, one
//! more link (one more congestion window) moves more of it. The client checks its own links
//! (upload); the server checks its side and sends `MORE_LINKS` (download).
//!
//! Each slot has an index, the lowest one free when it opens; it picks the slot's home address
//! among the node's (`dial`), so the links of a node with several addresses spread over them,
//! extra links included, and a link opened after an extra one closed takes its place.

use crate::dial::Slot;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, Instrument};
use wanmux_config::Links;
use wanmux_core::ids::LinkId;

/// Every link busy this long (and data waiting) opens another.
const GROW_AFTER: Duration = Duration::from_millis(200);
/// An extra link idle this long is closed.
const RETIRE_AFTER: Duration = Duration::from_secs(30);
/// An extra slot that has not connected within this long is given up.
const CONNECT_GRACE: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);

struct Running {
    task: JoinHandle<()>,
    link: Arc<AtomicU64>,
    started: Instant,
    /// The slot's index (`Slot::index`).
    index: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs the pool until aborted; aborting it closes every link it opened.
pub(crate) async fn run(template: Slot, links: Links) {
    let mut next_seq = template.link_seq;
    let mut spawn = |slots: &mut Vec<Running>| {
        let mut slot = template.clone();
        slot.link = Arc::new(AtomicU64::new(0));
        slot.link_seq = next_seq;
        next_seq += 1;
        slot.index = lowest_free_index(slots);
        let index = slot.index;
        let link = slot.link.clone();
        let task = tokio::spawn(slot.run().in_current_span());
        slots.push(Running {
            task,
            link,
            started: Instant::now(),
            index,
        });
    };
    let mut slots = Vec::new();
    for _ in 0..links.min {
        spawn(&mut slots);
    }
    let driver = template.driver.clone();
    loop {
        let asked = tokio::select! {
            () = tokio::time::sleep(TICK) => false,
            () = driver.more_links_wanted() => true,
        };
        if links.max == links.min {
            continue;
        }
        let now = Instant::now();
        let activity = driver.link_activity();
        let busy = |id: u64| {
            activity
                .iter()
                .find(|(l, _)| *l == LinkId(id))
                .is_some_and(|(_, a)| a.busy && now - a.since >= GROW_AFTER)
        };
        let dialing = slots.iter().any(|s| s.link.load(Relaxed) == 0);
        let all_busy = slots.iter().all(|s| busy(s.link.load(Relaxed)));
        let grow = asked || (all_busy && driver.wants_transmit());
        if slots.len() < usize::from(links.max) && !dialing && grow {
            debug!(
                links = slots.len() + 1,
                asked, "every link busy: opening another"
            );
            spawn(&mut slots);
            continue;
        }
        // Retire one extra slot per tick: the newest that is idle too long or never connected.
        let retire = slots
            .iter()
            .enumerate()
            .skip(usize::from(links.min))
            .rev()
            .find(|(_, s)| match s.link.load(Relaxed) {
                0 => now - s.started >= CONNECT_GRACE,
                id => activity
                    .iter()
                    .find(|(l, _)| *l == LinkId(id))
                    .is_some_and(|(_, a)| !a.busy && now - a.since >= RETIRE_AFTER),
            });
        if let Some((i, _)) = retire {
            debug!(links = slots.len() - 1, "closing an idle extra link");
            slots.remove(i);
        }
    }
}

/// The lowest index no slot has (of `0..=slots.len()`, so there always is one).
fn lowest_free_index(slots: &[Running]) -> usize {
    (0..slots.len())
        .find(|i| slots.iter().all(|s| s.index != *i))
        .unwrap_or(slots.len())
}
