//! Streams the node could not connect to a service: counted for `status` and the metrics
//! (`wanmux_stream_refusals_total`), and logged at `warn` at most once per 10 s per kind and
//! service, with counts (`core::lograte`). An operator with a typo in a service name, or a
//! service that is down, sees it in the log at the default level; a client that asks for
//! streams as fast as it likes gets a line a few times a minute, not one per stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tracing::warn;
use wanmux_core::lograte::Tally;

/// At most one log line per kind (and service) this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why a stream was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Why {
    /// The client asked for a service the node does not have.
    UnknownService,
    /// The service's target refused the connection or could not be reached.
    ConnectFailed,
    /// The service's target did not answer within `server.connect_timeout_ms`.
    ConnectTimeout,
    /// The node drains: it takes no new stream.
    Draining,
}

impl Why {
    /// Every reason, in declaration order: `why as usize` is its place here.
    const ALL: [Why; 4] = [
        Why::UnknownService,
        Why::ConnectFailed,
        Why::ConnectTimeout,
        Why::Draining,
    ];

    /// Its label in `status` and the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Why::UnknownService => "unknown_service",
            Why::ConnectFailed => "service_connect_failed",
            Why::ConnectTimeout => "service_connect_timeout",
            Why::Draining => "draining",
        }
    }
}

/// A failed connect to a service, as logged.
#[derive(Debug)]
struct Connect {
    service: String,
    target: String,
    error: String,
}

/// The node's refused streams.
#[derive(Debug)]
pub(crate) struct StreamRefusals {
    counts: [AtomicU64; 4],
    unknown: Tally<String>,
    /// One tally per service that failed (services are the node's own: a bounded set).
    connect: Mutex<HashMap<String, Tally<Connect>>>,
}

impl Default for StreamRefusals {
    fn default() -> Self {
        StreamRefusals {
            counts: Default::default(),
            unknown: Tally::new(LOG_EVERY, |n, service| {
                warn!(
                    streams = n,
                    last = %service,
                    "a client asked for a service this node does not have (the client's \
                     map.service must name one of the node's [[service]]): streams refused"
                );
            }),
            connect: Mutex::new(HashMap::new()),
        }
    }
}

impl StreamRefusals {
    /// A stream asked for `service`, which this node does not have.
    pub(crate) fn unknown_service(&self, service: &str) {
        self.count(Why::UnknownService);
        self.unknown.hit(service.to_owned());
    }

    /// A stream of `service` could not be connected to `target`: `error`, or no answer within
    /// the connect timeout when `None`.
    pub(crate) fn connect_failed(&self, service: &str, target: &str, error: Option<String>) {
        self.count(if error.is_some() {
            Why::ConnectFailed
        } else {
            Why::ConnectTimeout
        });
        let details = Connect {
            service: service.to_owned(),
            target: target.to_owned(),
            error: error.unwrap_or_else(|| "no answer within server.connect_timeout_ms".into()),
        };
        let mut tallies = self.connect.lock().unwrap_or_else(|e| e.into_inner());
        tallies
            .entry(service.to_owned())
            .or_insert_with(|| {
                Tally::new(LOG_EVERY, |n, c: &Connect| {
                    warn!(
                        streams = n,
                        service = %c.service,
                        target = %c.target,
                        error = %c.error,
                        "cannot connect to the service: its streams are reset"
                    );
                })
            })
            .hit(details);
    }

    /// A stream refused by a draining node (not logged: the drain is).
    pub(crate) fn draining(&self) {
        self.count(Why::Draining);
    }

    fn count(&self, why: Why) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Every reason with its count since start.
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        Why::ALL
            .iter()
            .zip(&self.counts)
            .map(|(w, n)| (w.label().to_owned(), n.load(Ordering::Relaxed)))
            .collect()
    }
}
