//! Traffic counters of a driver: what the application sockets and the links moved, counted as
//! it happens, so totals survive the links and streams they came from (for metrics and status);
//! and how long the sessions' locks were held and waited for.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Running totals, shared by the tasks of one or more sessions (a daemon may give every
/// session the same counters).
#[derive(Debug, Default)]
pub struct Counters {
    app_read: AtomicU64,
    app_written: AtomicU64,
    link_sent: AtomicU64,
    link_received: AtomicU64,
    streams: AtomicU64,
    links: AtomicU64,
    lock_held_ns: AtomicU64,
    lock_waited_ns: AtomicU64,
    /// Session engines in memory now (see [`Counters::engines`]).
    engines: AtomicU64,
}

/// A copy of [`Counters`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Bytes read from application sockets (this end's uploads into the tunnel).
    pub app_read: u64,
    /// Bytes written to application sockets (what the tunnel delivered here).
    pub app_written: u64,
    /// Plaintext bytes of the messages sent on links (frames, before encryption).
    pub link_sent: u64,
    /// Plaintext bytes of the messages received on links.
    pub link_received: u64,
    /// Streams that had a task here (opened by either side).
    pub streams: u64,
    /// Links added to a session (the client adds a link once its handshake completed; the
    /// node may still refuse it its session).
    pub links: u64,
    /// Nanoseconds the sessions' locks were held: the engine's work, which one session does on
    /// one thread at a time. Against the wall-clock time, the share of one CPU a session's
    /// serial part takes (summed over the daemon's sessions).
    pub lock_held_ns: u64,
    /// Nanoseconds tasks waited for a session's lock that another task held.
    pub lock_waited_ns: u64,
}

impl Counters {
    pub(crate) fn app_read(&self, n: usize) {
        self.app_read.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn app_written(&self, n: usize) {
        self.app_written.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn link_sent(&self, n: usize) {
        self.link_sent.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn link_received(&self, n: usize) {
        self.link_received.fetch_add(n as u64, Relaxed);
    }

    pub(crate) fn stream(&self) {
        self.streams.fetch_add(1, Relaxed);
    }

    pub(crate) fn link(&self) {
        self.links.fetch_add(1, Relaxed);
    }

    pub(crate) fn lock_held(&self, d: Duration) {
        self.lock_held_ns.fetch_add(nanos(d), Relaxed);
    }

    pub(crate) fn lock_waited(&self, d: Duration) {
        self.lock_waited_ns.fetch_add(nanos(d), Relaxed);
    }

    pub(crate) fn engine_made(&self) {
        self.engines.fetch_add(1, Relaxed);
    }

    pub(crate) fn engine_freed(&self) {
        self.engines.fetch_sub(1, Relaxed);
    }

    /// Session engines counting into these counters that are in memory now: the sessions
    /// running, and those that ended but whose tasks still hold them (briefly: a session whose
    /// engine outlives its end for good is a leak, which this shows).
    pub fn engines(&self) -> u64 {
        self.engines.load(Relaxed)
    }

    /// The totals now.
    pub fn totals(&self) -> Totals {
        Totals {
            app_read: self.app_read.load(Relaxed),
            app_written: self.app_written.load(Relaxed),
            link_sent: self.link_sent.load(Relaxed),
            link_received: self.link_received.load(Relaxed),
            streams: self.streams.load(Relaxed),
            links: self.links.load(Relaxed),
            lock_held_ns: self.lock_held_ns.load(Relaxed),
            lock_waited_ns: self.lock_waited_ns.load(Relaxed),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl std::ops::Add for Totals {
    type Output = Totals;

    fn add(self, o: Totals) -> Totals {
        Totals {
            app_read: self.app_read + o.app_read,
            app_written: self.app_written + o.app_written,
            link_sent: self.link_sent + o.link_sent,
            link_received: self.link_received + o.link_received,
            streams: self.streams + o.streams,
            links: self.links + o.links,
            lock_held_ns: self.lock_held_ns + o.lock_held_ns,
            lock_waited_ns: self.lock_waited_ns + o.lock_waited_ns,
        }
    }
}
