//! Log lines for events a peer or an application can repeat as fast as it likes (refused
//! connections, failed service connects): at most one line per interval, each with the count of
//! events it stands for, and none lost. The first event after a quiet interval is logged at
//! once; the ones that follow within the interval are counted, and a line with their count
//! comes when the interval ends, whether or not another event comes then.

use crate::bucket::Bucket;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// One kind of event, logged by `log(count, details of the last)` at most once per `every`.
#[derive(Debug)]
pub struct Tally<D> {
    every: Duration,
    log: fn(u64, &D),
    state: Arc<Mutex<State<D>>>,
}

#[derive(Debug)]
struct State<D> {
    /// When the last line was logged.
    logged: Option<Instant>,
    /// Events not logged yet, and the details of the last of them.
    pending: u64,
    last: Option<D>,
    /// A line for the pending events is due at the end of the interval.
    due: bool,
}

impl<D: Send + 'static> Tally<D> {
    /// A tally that logs with `log`, at most once per `every`.
    pub fn new(every: Duration, log: fn(u64, &D)) -> Tally<D> {
        Tally {
            every,
            log,
            state: Arc::new(Mutex::new(State {
                logged: None,
                pending: 0,
                last: None,
                due: false,
            })),
        }
    }

    /// Counts one event with `details`: logs it now, or with the others at the end of the
    /// interval (a task of the current tokio runtime waits for it).
    pub fn hit(&self, details: D) {
        let mut st = lock(&self.state);
        st.pending += 1;
        st.last = Some(details);
        if st.due {
            return;
        }
        let now = Instant::now();
        match st.logged.map(|t| t + self.every).filter(|&end| now < end) {
            Some(end) => {
                st.due = true;
                let (state, log) = (self.state.clone(), self.log);
                tokio::spawn(async move {
                    tokio::time::sleep_until(end).await;
                    let mut st = lock(&state);
                    st.due = false;
                    flush(&mut st, log);
                });
            }
            None => flush(&mut st, self.log),
        }
    }
}

/// Logs what `st` holds (under its lock: lines of one tally come out in order).
fn flush<D>(st: &mut State<D>, log: fn(u64, &D)) {
    let n = std::mem::take(&mut st.pending);
    if let (true, Some(last)) = (n > 0, st.last.take()) {
        st.logged = Some(Instant::now());
        log(n, &last);
    }
}

fn lock<D>(m: &Mutex<State<D>>) -> MutexGuard<'_, State<D>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A share of log lines for the events one peer can repeat as fast as it likes although each
/// is worth a line on its own (an authenticated client's sessions and links, each started and
/// ended): `per_minute` lines a minute, in bursts of as many. Past it, [`LineBudget::allow`]
/// says no (the caller logs at `debug` instead) and the lines left out are counted in one line a
/// minute that names `who`.
#[derive(Debug, Clone)]
pub struct LineBudget {
    per_minute: f64,
    bucket: Arc<Mutex<Bucket>>,
    left_out: Arc<Tally<String>>,
    who: Arc<str>,
}

impl LineBudget {
    /// A budget of `per_minute` lines a minute (at least 1) about `who`.
    pub fn new(per_minute: u32, who: &str) -> LineBudget {
        let per_minute = f64::from(per_minute.max(1));
        LineBudget {
            per_minute,
            bucket: Arc::new(Mutex::new(Bucket::full(per_minute, now()))),
            left_out: Arc::new(Tally::new(Duration::from_secs(60), |n, who: &String| {
                let lines = if n == 1 { "log line" } else { "log lines" };
                tracing::info!(
                    "{n} {lines} about {who} left out: more than its share a minute (logged at \
                     debug)"
                )
            })),
            who: who.into(),
        }
    }

    /// Takes a line from the budget: `false` when it is spent (the line is counted as left out;
    /// call from within a tokio runtime).
    pub fn allow(&self) -> bool {
        let (rate, burst) = (self.per_minute / 60.0, self.per_minute);
        let taken =
            (self.bucket.lock().unwrap_or_else(|e| e.into_inner())).take(now(), rate, burst);
        if !taken {
            self.left_out.hit(self.who.to_string());
        }
        taken
    }

    /// No line was taken for a minute or more: the budget is as new, and a table of budgets
    /// may drop it.
    pub fn is_full(&self) -> bool {
        let b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        b.is_full(now(), self.per_minute / 60.0, self.per_minute)
    }
}

/// Now, on tokio's clock (which tests may pause), as the buckets count time.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    static LINES: AtomicU64 = AtomicU64::new(0);
    static COUNTED: AtomicU64 = AtomicU64::new(0);

    fn log(n: u64, _: &u32) {
        LINES.fetch_add(1, Ordering::SeqCst);
        COUNTED.fetch_add(n, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_line_budget_allows_its_share_a_minute_and_refills() {
        let b = LineBudget::new(3, "a client");
        assert!((0..3).all(|_| b.allow()), "a burst of its share");
        assert!(!b.allow(), "spent");
        assert!(!b.is_full());
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(b.allow(), "a third of a minute gives one line back");
        assert!(!b.allow());
        tokio::time::sleep(Duration::from_secs(61)).await;
        assert!(b.is_full(), "a minute unused fills it");
        assert!((0..3).all(|_| b.allow()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_is_logged_at_once_the_rest_as_a_count_when_the_interval_ends() {
        let t = Tally::new(Duration::from_secs(10), log);
        t.hit(1);
        assert_eq!(LINES.load(Ordering::SeqCst), 1);
        for i in 0..5 {
            t.hit(i);
        }
        assert_eq!(LINES.load(Ordering::SeqCst), 1, "counted, not logged yet");
        // No event after them: their line comes anyway, once.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(
            (LINES.load(Ordering::SeqCst), COUNTED.load(Ordering::SeqCst)),
            (2, 6)
        );
        // A quiet interval later, the next is logged at once again.
        tokio::time::sleep(Duration::from_secs(11)).await;
        t.hit(9);
        assert_eq!(
            (LINES.load(Ordering::SeqCst), COUNTED.load(Ordering::SeqCst)),
            (3, 7)
        );
    }
}
