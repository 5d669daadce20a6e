//! One daemon's memory cap for buffered stream bytes, shared by all of its sessions.
//!
//! Windows bound what one stream and one session may buffer; a [`Budget`] bounds the sum over
//! every session of the daemon (`limits.memory`). It has two pools of half the cap each:
//!
//! - **receive**: every byte of stream credit granted to a peer and not yet read by the
//!   application is reserved here *before* it is granted, so the peer can never make the
//!   daemon hold more than was reserved;
//! - **send**: every byte an application wrote that the peer has not yet acknowledged.
//!
//! Two pools, not one, so that neither direction can starve the other: if send buffers could
//! use up the memory that receive credit needs, two daemons with full send buffers would wait
//! for each other's credit forever.
//!
//! The first 2 MiB of credit of every stream are not reserved (the protocol grants them before
//! any window update, and an idle stream should cost the budget nothing), so the receive side
//! can hold at most the receive pool plus 2 MiB per open stream (at most the session credit
//! per session). Written bytes are counted after the application's capacity check, so the send
//! pool can run over by one socket read per stream that was reading at that moment.
//!
//! **Fair shares.** A server's peers are not one party: a client that never acknowledges what it
//! is sent would otherwise fill the send pool with its streams' unacknowledged bytes, and every
//! other client's replies would wait for memory that never comes back. So the sessions of one
//! client share an *account* ([`Budget::account`]), and an account may take from a pool only
//! while it holds no more than the pool keeps free (the dynamic threshold of shared switch
//! buffers, Choudhury and Hahne): one client holds at most half of a pool, and `n` clients that
//! hold all they can hold `n / (n + 1)` of it together, so the rest always has room, of which a
//! newcomer takes half. A budget handle without an account (the client daemon's: its sessions
//! are all its own) takes the whole pool.
//!
//! A session that finds a pool empty registers as waiting; the session whose release comes next
//! reports it as an engine output ([`crate::engine::Event::BudgetReleased`]), its driver wakes
//! every session of the daemon, and each retries ([`crate::engine::Session::retry_budget`]).
//! It flags the wait first and then looks at the pool again, so a release that came between its
//! first look and the flag (and woke nobody) is not lost.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A pool of a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Credit granted to peers and not yet read.
    Recv,
    /// Bytes written by applications and not yet acknowledged.
    Send,
}

struct Inner {
    /// Cap of each pool.
    cap: u64,
    used: [AtomicU64; 2],
    waiting: AtomicBool,
}

/// What the sessions of one client hold of each pool.
#[derive(Debug, Default)]
struct Account {
    held: [AtomicU64; 2],
}

/// A daemon-wide memory cap; cheap to clone (all clones share it, and the clones of a handle
/// with an account share that account).
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
    /// The fair share this handle draws within; none takes the whole pool.
    account: Option<Arc<Account>>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("cap_per_pool", &self.inner.cap)
            .field("recv", &self.used(Pool::Recv))
            .field("send", &self.used(Pool::Send))
            .finish()
    }
}

impl Budget {
    /// A budget of `total` bytes: `total / 2` for each pool.
    pub fn new(total: u64) -> Self {
        Budget {
            inner: Arc::new(Inner {
                cap: total / 2,
                used: [AtomicU64::new(0), AtomicU64::new(0)],
                waiting: AtomicBool::new(false),
            }),
            account: None,
        }
    }

    /// A handle on the same pools for one client's sessions: what they hold together is
    /// limited to a fair share of each pool (see the module doc). Its clones share the account.
    pub fn account(&self) -> Budget {
        Budget {
            inner: Arc::clone(&self.inner),
            account: Some(Arc::default()),
        }
    }

    /// No cap (tests, simulations).
    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    fn pool(&self, pool: Pool) -> &AtomicU64 {
        &self.inner.used[pool as usize]
    }

    /// What this handle's account holds of `pool` (zero without an account).
    pub fn account_used(&self, pool: Pool) -> u64 {
        self.account
            .as_ref()
            .map_or(0, |a| a.held[pool as usize].load(Ordering::Relaxed))
    }

    /// What this handle may take of `pool` when `used` bytes of it are in use: what is free,
    /// and with an account at most so much that the account then holds no more than stays free
    /// (`held + x <= free - x`).
    fn room(&self, pool: Pool, used: u64) -> u64 {
        let free = self.inner.cap.saturating_sub(used);
        match &self.account {
            None => free,
            Some(_) => free.saturating_sub(self.account_used(pool)) / 2,
        }
    }

    fn account_add(&self, pool: Pool, n: u64) {
        if let Some(a) = &self.account {
            a.held[pool as usize].fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Bytes reserved in `pool` now.
    pub fn used(&self, pool: Pool) -> u64 {
        self.pool(pool).load(Ordering::Relaxed)
    }

    /// The cap of each pool.
    pub fn cap(&self) -> u64 {
        self.inner.cap
    }

    /// Bytes `pool` can still reserve.
    pub fn available(&self, pool: Pool) -> u64 {
        self.inner.cap.saturating_sub(self.used(pool))
    }

    /// Bytes this handle may still take of `pool`: [`Budget::available`], and with an account
    /// no more than its fair share allows.
    pub fn allowance(&self, pool: Pool) -> u64 {
        self.room(pool, self.used(pool))
    }

    /// Reserves up to `want` bytes, at least `min` (else nothing). Returns what it reserved.
    pub(crate) fn reserve_up_to(&self, pool: Pool, want: u64, min: u64) -> u64 {
        let used = self.pool(pool);
        let mut cur = used.load(Ordering::Relaxed);
        loop {
            let got = want.min(self.room(pool, cur));
            if got < min.min(want) || got == 0 {
                return 0;
            }
            match used.compare_exchange_weak(cur, cur + got, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    self.account_add(pool, got);
                    return got;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Reserves `n` bytes whatever the cap (the protocol already allows the peer to use them).
    pub(crate) fn force(&self, pool: Pool, n: u64) {
        self.pool(pool).fetch_add(n, Ordering::AcqRel);
        self.account_add(pool, n);
    }

    /// Returns `n` reserved bytes; true if a session was waiting for a release (the caller
    /// reports it so that the waiting sessions retry).
    #[must_use]
    pub(crate) fn release(&self, pool: Pool, n: u64) -> bool {
        if n == 0 {
            return false;
        }
        let prev = self.pool(pool).fetch_sub(n, Ordering::AcqRel);
        debug_assert!(prev >= n, "budget released more than reserved");
        if let Some(a) = &self.account {
            let prev = a.held[pool as usize].fetch_sub(n, Ordering::AcqRel);
            debug_assert!(prev >= n, "account released more than it held");
        }
        self.inner.waiting.swap(false, Ordering::AcqRel)
    }

    /// Reserves exactly `n` bytes of `pool` within this handle's allowance, or nothing: for
    /// memory a daemon holds outside any engine (a relay's queues). Give it back with
    /// [`Budget::give_back`].
    pub fn try_reserve(&self, pool: Pool, n: u64) -> bool {
        n == 0 || self.reserve_up_to(pool, n, n) == n
    }

    /// Gives back `n` bytes taken by [`Budget::try_reserve`]; true if a session was waiting for
    /// memory (the caller wakes the daemon's sessions: `BudgetSignal::wake_all`).
    #[must_use]
    pub fn give_back(&self, pool: Pool, n: u64) -> bool {
        self.release(pool, n)
    }

    /// A session could not reserve what it needed: wake it at the next release.
    pub(crate) fn set_waiting(&self) {
        self.inner.waiting.store(true, Ordering::Release);
    }
}

/// What one session holds in a [`Budget`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    budget: Budget,
    bytes: [u64; 2],
    /// A release found a session waiting; see [`Held::take_wake`].
    wake: bool,
}

impl Held {
    pub(crate) fn new(budget: Budget) -> Self {
        Held {
            budget,
            bytes: [0, 0],
            wake: false,
        }
    }

    pub(crate) fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Bytes held in `pool`.
    pub(crate) fn bytes(&self, pool: Pool) -> u64 {
        self.bytes[pool as usize]
    }

    pub(crate) fn reserve_up_to(&mut self, pool: Pool, want: u64, min: u64) -> u64 {
        let mut got = self.budget.reserve_up_to(pool, want, min);
        if got < want {
            // Flag the wait, then try again: a release between the first try and the flag
            // saw nobody waiting and woke nobody, and no other release may follow.
            self.budget.set_waiting();
            let min = if got == 0 { min } else { 1 };
            got += self.budget.reserve_up_to(pool, want - got, min);
        }
        self.bytes[pool as usize] += got;
        got
    }

    pub(crate) fn force(&mut self, pool: Pool, n: u64) {
        self.budget.force(pool, n);
        self.bytes[pool as usize] += n;
    }

    pub(crate) fn release(&mut self, pool: Pool, n: u64) {
        debug_assert!(
            self.bytes[pool as usize] >= n,
            "session released more than it held"
        );
        let n = n.min(self.bytes[pool as usize]);
        self.bytes[pool as usize] -= n;
        self.wake |= self.budget.release(pool, n);
    }

    /// Gives back everything held, as dropping does, but keeps the wake-up to report.
    pub(crate) fn release_all(&mut self) {
        for pool in [Pool::Recv, Pool::Send] {
            let n = self.bytes[pool as usize];
            self.release(pool, n);
        }
    }

    /// Keeps a wake-up to report (from the `Held` this one replaces).
    pub(crate) fn wake_later(&mut self, wake: bool) {
        self.wake |= wake;
    }

    /// Whether a release since the last call found sessions waiting for the budget.
    pub(crate) fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        for pool in [Pool::Recv, Pool::Send] {
            let n = self.bytes[pool as usize];
            self.bytes[pool as usize] = 0;
            // Nobody is left to report it: the driver of a session that ends wakes the
            // daemon's sessions itself.
            let _ = self.budget.release(pool, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_separate_and_capped() {
        let b = Budget::new(200);
        let mut h = Held::new(b.clone());
        assert_eq!(h.reserve_up_to(Pool::Recv, 150, 1), 100);
        assert_eq!(h.reserve_up_to(Pool::Recv, 10, 1), 0);
        assert_eq!(b.available(Pool::Recv), 0);
        assert_eq!(h.reserve_up_to(Pool::Send, 60, 1), 60);
        assert_eq!(
            h.reserve_up_to(Pool::Send, 60, 50),
            0,
            "below the minimum: nothing"
        );
        h.force(Pool::Send, 60);
        assert_eq!(b.used(Pool::Send), 120);
        h.release(Pool::Recv, 30);
        assert_eq!(b.available(Pool::Recv), 30);
        drop(h);
        assert_eq!(b.used(Pool::Recv), 0);
        assert_eq!(b.used(Pool::Send), 0);
    }

    #[test]
    fn an_account_takes_at_most_what_stays_free() {
        let b = Budget::new(2000);
        let (one, two) = (b.account(), b.account());
        let mut hog = Held::new(one.clone());
        // Alone: half of the pool, however it asks.
        assert_eq!(hog.reserve_up_to(Pool::Send, 900, 1), 500);
        assert_eq!(hog.reserve_up_to(Pool::Send, 100, 1), 0);
        // Forced bytes count toward its share: it may take nothing more.
        hog.force(Pool::Send, 100);
        assert_eq!(one.allowance(Pool::Send), 0);
        // Another session of the same client shares the account.
        let mut same = Held::new(one.clone());
        assert_eq!(same.reserve_up_to(Pool::Send, 10, 1), 0);
        // Another client still finds half of what is free.
        let mut other = Held::new(two.clone());
        assert_eq!(two.allowance(Pool::Send), 200);
        assert_eq!(other.reserve_up_to(Pool::Send, 1000, 1), 200);
        // The handle without an account takes whatever is free.
        assert_eq!(b.allowance(Pool::Send), 200);
        // The other pool is untouched.
        assert_eq!(one.allowance(Pool::Recv), 500);
        // Releases give the share back.
        hog.release(Pool::Send, 600);
        assert_eq!(one.account_used(Pool::Send), 0);
        assert_eq!(one.allowance(Pool::Send), 400);
        drop(other);
        assert_eq!(two.account_used(Pool::Send), 0);
        assert_eq!(b.used(Pool::Send), 0);
    }
}
