//! File descriptors: a daemon raises its soft `RLIMIT_NOFILE` to the hard limit at start, and
//! keeps a reserve for what it already carries: the node refuses a new link while the open
//! descriptors are within the reserve of the limit (its sessions' new streams each need one for
//! their service connection), the client refuses a new application connection (its lost links
//! need them to be dialled again).

use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The open descriptors are counted again at most this often.
const RECOUNT_EVERY: Duration = Duration::from_millis(100);

/// The descriptor limit and how many of them are in use.
#[derive(Debug)]
pub struct Fds {
    limit: u64,
    reserve: u64,
    /// When the open descriptors were last counted, and how many there were.
    counted: Mutex<(Instant, u64)>,
}

impl Fds {
    /// Raises the soft limit to the hard one (logged, with `refused`: what is refused within
    /// the reserve), and sizes the reserve: an eighth of the limit, at least 16.
    pub fn raise(refused: &'static str) -> Fds {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(limit) => limit,
            Err(e) => {
                warn!(
                    target: crate::tune::LOG_TARGET,
                    error = %e,
                    "cannot read or raise the open-file limit (RLIMIT_NOFILE)"
                );
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
            }
        };
        let reserve = (limit / 8).max(16);
        info!(
            target: crate::tune::LOG_TARGET,
            limit,
            reserve,
            "open-file limit; {refused} are refused within the reserve of it"
        );
        Fds {
            limit,
            reserve,
            counted: Mutex::new((Instant::now() - RECOUNT_EVERY, 0)),
        }
    }

    /// Whether something new may take a descriptor: the open ones leave the reserve free.
    pub fn room(&self) -> bool {
        let open = {
            // Only a count and a time change under this lock; the count itself reads /proc.
            let mut counted = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            if counted.0.elapsed() >= RECOUNT_EVERY {
                let open = match open_fds() {
                    Ok(n) => n,
                    // Reading the count takes a descriptor: none left is the answer.
                    Err(e) if super::out_of_fds(&e) => self.limit,
                    Err(_) => counted.1,
                };
                *counted = (Instant::now(), open);
            }
            counted.1
        };
        open + self.reserve < self.limit
    }

    /// The limit, for log lines.
    pub fn limit(&self) -> u64 {
        self.limit
    }
}

/// Descriptors this process has open (Linux: `/proc/self/fd`).
fn open_fds() -> std::io::Result<u64> {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_process_descriptors() {
        let before = open_fds().expect("/proc/self/fd");
        let files: Vec<_> = (0..10)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        assert!(open_fds().unwrap() >= before + 10);
        drop(files);
    }
}
