//! Dialling a node name's addresses in turn, each a moment after the one before (RFC 8305's
//! connection attempt delay, "Happy Eyeballs"), the first connection winning.
//!
//! A TCP connect tries a name's addresses one after another, and a refused one fails at once.
//! A QUIC dial to an address where nothing listens gets no answer at all (quinn does not act on
//! ICMP), so a name with an IPv6 and an IPv4 address, the IPv6 one first, whose node listens on
//! `0.0.0.0` only, never got a QUIC link: the client waited out the QUIC answer window on the
//! IPv6 address and fell back to TCP links, warning that UDP was blocked.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

/// How long an attempt runs alone before the next address is tried beside it (RFC 8305
/// recommends 250 ms).
pub(crate) const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(250);

/// One attempt.
pub(crate) type Attempt<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// Runs `attempts` in order, each `after` the one before started (at once when every running
/// one failed), and returns the first success; the others are dropped. With none succeeding,
/// the first attempt's error (the first address's, as a plain connect would report it); with no
/// attempt, `none`.
pub(crate) async fn first_success<'a, T, E>(
    attempts: Vec<Attempt<'a, T, E>>,
    after: Duration,
    none: E,
) -> Result<T, E> {
    if attempts.is_empty() {
        return Err(none);
    }
    let mut waiting = attempts.into_iter();
    // The running attempts with their places in the order, and the first failure so far.
    let mut running: Vec<(usize, Attempt<'a, T, E>)> = Vec::new();
    let mut first_error: Option<(usize, E)> = None;
    let mut started = 0;
    let mut next = Box::pin(tokio::time::sleep(Duration::ZERO));
    std::future::poll_fn(|cx| loop {
        // Start the next attempt when its moment came, or when nothing runs.
        if running.is_empty() || next.as_mut().poll(cx).is_ready() {
            if let Some(attempt) = waiting.next() {
                running.push((started, attempt));
                started += 1;
                next.as_mut().reset(tokio::time::Instant::now() + after);
                continue;
            }
        }
        let mut i = 0;
        while i < running.len() {
            match running[i].1.as_mut().poll(cx) {
                Poll::Ready(Ok(done)) => return Poll::Ready(Ok(done)),
                Poll::Ready(Err(e)) => {
                    let (place, _) = running.swap_remove(i);
                    if first_error.as_ref().is_none_or(|(p, _)| place < *p) {
                        first_error = Some((place, e));
                    }
                }
                Poll::Pending => i += 1,
            }
        }
        if !running.is_empty() {
            return Poll::Pending;
        }
        if waiting.len() == 0 {
            let (_, e) = first_error.take().expect("every attempt failed");
            return Poll::Ready(Err(e));
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const AFTER: Duration = Duration::from_millis(50);

    fn after<'a>(ms: u64, result: Result<u32, &'static str>) -> Attempt<'a, u32, &'static str> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            result
        })
    }

    fn never<'a>() -> Attempt<'a, u32, &'static str> {
        Box::pin(std::future::pending())
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_that_never_answers_is_passed_by_the_next() {
        let t = Instant::now();
        let got = first_success(vec![never(), after(10, Ok(2))], AFTER, "none").await;
        assert_eq!(got, Ok(2));
        assert_eq!(t.elapsed(), AFTER + Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_answer_in_time_is_taken_and_the_next_never_tried() {
        let t = Instant::now();
        let got = first_success(vec![after(20, Ok(1)), after(0, Ok(2))], AFTER, "none").await;
        assert_eq!(got, Ok(1));
        assert_eq!(t.elapsed(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_address_starts_the_next_at_once() {
        let t = Instant::now();
        let got = first_success(
            vec![after(5, Err("refused")), after(10, Ok(2))],
            AFTER,
            "none",
        )
        .await;
        assert_eq!(got, Ok(2));
        assert_eq!(t.elapsed(), Duration::from_millis(15));
    }

    #[tokio::test(start_paused = true)]
    async fn when_all_fail_the_first_addresss_error_is_reported() {
        let got = first_success(
            vec![
                after(80, Err("first")),
                after(0, Err("second")),
                after(5, Err("third")),
            ],
            AFTER,
            "none",
        )
        .await;
        assert_eq!(got, Err("first"));
        assert_eq!(
            first_success::<u32, _>(Vec::new(), AFTER, "none").await,
            Err("none")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_still_runs_once_the_next_started() {
        // The second starts at 50 ms and would answer at 110; the first answers at 70.
        let got = first_success(vec![after(70, Ok(1)), after(60, Ok(2))], AFTER, "none").await;
        assert_eq!(got, Ok(1));
    }
}
