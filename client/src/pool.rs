//! The link pool of one node: `links.min` slots always, more while every link is busy, up to
//! `links.max`; extra links that stay idle are closed again.
//!
//! The engine decides when to open one more link and which extra link to close
//! ([`Session::plan_links`](wanmux_core::engine::Session::plan_links)); this pool carries it
//! out, and gives up an extra slot that never connected.
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
use wanmux_core::engine::{LinkPlan, PoolView};
use wanmux_core::ids::LinkId;

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
    let (min, max) = (usize::from(links.min), usize::from(links.max));
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = driver.more_links_wanted() => {}
        };
        let now = Instant::now();
        // A slot that has not connected within the grace is given up (the newest first).
        let stuck = slots
            .iter()
            .enumerate()
            .skip(min)
            .rev()
            .find(|(_, s)| s.link.load(Relaxed) == 0 && now - s.started >= CONNECT_GRACE);
        if let Some((i, _)) = stuck {
            debug!(
                links = slots.len() - 1,
                "giving up an extra link that did not connect"
            );
            slots.remove(i);
            continue;
        }
        let extra: Vec<LinkId> = slots
            .iter()
            .skip(min)
            .map(|s| s.link.load(Relaxed))
            .filter(|&id| id != 0)
            .map(LinkId)
            .collect();
        let view = PoolView {
            min,
            max,
            slots: slots.len(),
            dialing: slots.iter().any(|s| s.link.load(Relaxed) == 0),
            extra: &extra,
        };
        match driver.with(|s, now| s.plan_links(now, view)) {
            LinkPlan::Hold => {}
            LinkPlan::Open => {
                debug!(links = slots.len() + 1, "every link busy: opening another");
                spawn(&mut slots);
            }
            LinkPlan::Close(id) => {
                if let Some(i) = slots.iter().position(|s| s.link.load(Relaxed) == id.0) {
                    debug!(links = slots.len() - 1, "closing an idle extra link");
                    slots.remove(i);
                }
            }
        }
    }
}

/// The lowest index no slot has (of `0..=slots.len()`, so there always is one).
fn lowest_free_index(slots: &[Running]) -> usize {
    (0..slots.len())
        .find(|i| slots.iter().all(|s| s.index != *i))
        .unwrap_or(slots.len())
}
