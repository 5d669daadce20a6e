//! Log capture for tests that check what the daemons log: [`capture`] installs a global
//! subscriber (once per test binary) that keeps every formatted line, and [`Logs`] reads them.
//! A test binary that uses it must not call [`crate::harness::init_tracing`] first: only one
//! global subscriber can be installed.

use std::io;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The lines logged so far, shared with the subscriber.
#[derive(Clone, Debug, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Every complete line logged so far.
    pub fn lines(&self) -> Vec<String> {
        let text = self.0.lock().expect("log buffer").clone();
        String::from_utf8_lossy(&text)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many lines were logged so far: a mark for [`Logs::since`].
    pub fn mark(&self) -> usize {
        self.lines().len()
    }

    /// The lines logged after `mark`.
    pub fn since(&self, mark: usize) -> Vec<String> {
        self.lines().into_iter().skip(mark).collect()
    }

    /// Waits up to `limit` for a line after `mark` that contains every one of `parts`.
    pub async fn wait_for(&self, mark: usize, parts: &[&str], limit: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(l) = self
                .since(mark)
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return Some(l);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures the logs of this test binary at `filter` (an `EnvFilter` directive such as
/// `"info"`), without colours; the first call installs the subscriber, later ones return the
/// same [`Logs`].
pub fn capture(filter: &str) -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let buf = logs.0.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_ansi(false)
            .with_writer(move || Writer(buf.clone()))
            .init();
        logs
    })
    .clone()
}
