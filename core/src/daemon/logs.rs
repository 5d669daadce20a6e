//! The daemon's log: lines on stderr, filtered by `RUST_LOG` at start (default `info`), and a
//! filter an operator can change while the daemon runs (`log` on the control socket, the
//! `log` subcommand), without a restart and without losing a stream.

use std::sync::{Mutex, OnceLock};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{reload, EnvFilter, Layer as _, Registry};

use super::LogFormat;

/// The filter when `RUST_LOG` sets none.
const DEFAULT: &str = "info";
/// Longest filter accepted at runtime (a line of the control socket is shorter anyway).
const MAX_FILTER: usize = 200;

/// The running daemon's filter, once [`init`] ran.
static FILTER: OnceLock<Filter> = OnceLock::new();

struct Filter {
    handle: reload::Handle<EnvFilter, Registry>,
    /// What the daemon started with: [`reset`] goes back to it.
    start: String,
    /// In force now.
    current: Mutex<String>,
}

/// Sets up the daemon's log as the process's global subscriber: `format` on stderr (coloured
/// only on a terminal), filtered by `RUST_LOG`. A `RUST_LOG` that does not parse is said at
/// once, not quietly taken for the default.
pub(super) fn init(format: LogFormat) {
    let set = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let (filter, start, invalid) = match (&set, EnvFilter::try_from_default_env()) {
        (Some(v), Ok(filter)) => (filter, v.clone(), None),
        (None, _) => (EnvFilter::new(DEFAULT), DEFAULT.to_string(), None),
        (Some(v), Err(e)) => (
            EnvFilter::new(DEFAULT),
            DEFAULT.to_string(),
            Some((v.clone(), e)),
        ),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(ansi).boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .init();
    let _ = FILTER.set(Filter {
        handle,
        current: Mutex::new(start.clone()),
        start,
    });
    if let Some((value, e)) = invalid {
        tracing::warn!(RUST_LOG = %value, error = %e, "RUST_LOG does not parse: logging at info");
    }
}

/// The filter in force, when this process's log was set up by a daemon's `run`.
pub fn current() -> Option<String> {
    let f = FILTER.get()?;
    Some(lock(&f.current).clone())
}

/// Puts `directives` (`RUST_LOG`'s syntax: `debug`, `info,wanmux_core::driver=trace`) in force
/// and logs the change at `warn`, so that the log itself says why it grew. Returns the filter
/// now in force, or why not (it does not parse; the log is not a daemon's).
pub fn set(directives: &str) -> Result<String, String> {
    let directives = directives.trim();
    if directives.is_empty() {
        return Err("no filter given".into());
    }
    if directives.len() > MAX_FILTER {
        return Err(format!("a filter is at most {MAX_FILTER} characters"));
    }
    let filter = EnvFilter::try_new(directives)
        .map_err(|e| format!("{directives:?} is not a log filter: {e}"))?;
    apply(filter, directives, "set")
}

/// Puts back the filter the daemon started with (`RUST_LOG`, or `info`).
pub fn reset() -> Result<String, String> {
    let f = FILTER.get().ok_or(NOT_A_DAEMON)?;
    let start = f.start.clone();
    let filter = EnvFilter::try_new(&start).unwrap_or_else(|_| EnvFilter::new(DEFAULT));
    apply(filter, &start, "reset")
}

const NOT_A_DAEMON: &str = "this process's log was not set up by `run`";

fn apply(filter: EnvFilter, directives: &str, how: &str) -> Result<String, String> {
    let f = FILTER.get().ok_or(NOT_A_DAEMON)?;
    let mut current = lock(&f.current);
    f.handle
        .reload(filter)
        .map_err(|e| format!("the log filter cannot be changed: {e}"))?;
    let was = std::mem::replace(&mut *current, directives.to_string());
    drop(current);
    tracing::warn!(target: "wanmux::log", was = %was, now = %directives, "log filter {how} on the control socket");
    Ok(directives.to_string())
}

fn lock(m: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a daemon's log (tests, the library), the filter is not there to change: an error
    /// that says so, not a panic. A filter that does not parse is refused before that.
    #[test]
    fn outside_a_daemon_the_filter_is_not_settable_and_bad_filters_are_refused() {
        assert_eq!(current(), None);
        assert_eq!(set("debug"), Err(NOT_A_DAEMON.to_string()));
        assert_eq!(reset(), Err(NOT_A_DAEMON.to_string()));
        assert!(set("  ").unwrap_err().contains("no filter"));
        assert!(set("wanmux=loud").unwrap_err().contains("not a log filter"));
        assert!(set(&"a".repeat(MAX_FILTER + 1))
            .unwrap_err()
            .contains("at most"));
    }
}
