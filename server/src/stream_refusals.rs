//! Streams the node refused (no such service, the service unreachable, a drain, the stream
//! limit, memory, no `OPEN`): counted for `status` and the metrics
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
    /// The session had `limits.max_streams` streams.
    StreamLimit,
    /// The stream's data did not fit in `limits.memory`, or came in too many pieces.
    Memory,
    /// The stream's data came, its `OPEN` did not.
    NoOpen,
}

impl Why {
    /// Every reason, in declaration order: `why as usize` is its place here.
    const ALL: [Why; 7] = [
        Why::UnknownService,
        Why::ConnectFailed,
        Why::ConnectTimeout,
        Why::Draining,
        Why::StreamLimit,
        Why::Memory,
        Why::NoOpen,
    ];

    /// Its label in `status` and the metrics.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Why::UnknownService => "unknown_service",
            Why::ConnectFailed => "service_connect_failed",
            Why::ConnectTimeout => "service_connect_timeout",
            Why::Draining => "draining",
            Why::StreamLimit => "stream_limit",
            Why::Memory => "memory",
            Why::NoOpen => "no_open",
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
    counts: [AtomicU64; Why::ALL.len()],
    unknown: Tally<String>,
    /// The engine's own refusals, by reason; the detail is the session's id.
    limit: Tally<String>,
    memory: Tally<String>,
    no_open: Tally<String>,
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
                    // The client's text, quoted and escaped (line breaks, terminal escapes).
                    last = ?service,
                    "a client asked for a service this node does not have (the client's \
                     map.service must name one of the node's [[service]]): streams refused"
                );
            }),
            connect: Mutex::new(HashMap::new()),
            limit: Tally::new(LOG_EVERY, |n, session| {
                warn!(
                    streams = n,
                    last_session = %session,
                    "a client had limits.max_streams streams open at once (a stream counts \
                     until both ends have finished it, about a round trip after its connections \
                     closed): new streams refused"
                );
            }),
            memory: Tally::new(LOG_EVERY, |n, session| {
                warn!(
                    streams = n,
                    last_session = %session,
                    "a stream's data did not fit in limits.memory, or came in too many pieces: \
                     streams refused"
                );
            }),
            no_open: Tally::new(LOG_EVERY, |n, session| {
                warn!(
                    streams = n,
                    last_session = %session,
                    "a stream's data came without its OPEN (a broken or hostile client): \
                     streams refused"
                );
            }),
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

    /// A stream of session `session` the engine refused on its own account, with `RESET`
    /// code `code` ([`wanmux_core::engine::Event::Refused`]).
    pub(crate) fn engine(&self, code: u16, session: &str) {
        use wanmux_core::frame::reset;
        let (why, tally) = match code {
            reset::TOO_MANY_STREAMS => (Why::StreamLimit, &self.limit),
            reset::NO_MEMORY => (Why::Memory, &self.memory),
            reset::NO_OPEN => (Why::NoOpen, &self.no_open),
            _ => return,
        };
        self.count(why);
        tally.hit(session.to_owned());
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
