//! The retry budget of a worker: retries may add at most a fifth to the requests of the last
//! second (and always a few), so a failing backend sees its load grow by 20%, not by the
//! attempts factor of every route that retries (Envoy's and Linkerd's retry budgets work the
//! same way).

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Instant,
};

/// Retries allowed per second whatever the request rate.
const MIN_RETRIES_PER_SECOND: u64 = 10;
/// Retries allowed as a share of requests: 1 in 5.
const RETRY_RATIO_DIVISOR: u64 = 5;

pub struct RetryBudget {
    epoch: Instant,
    /// Second (since `epoch`) the counters below belong to.
    window: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            window: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        }
    }
}

impl RetryBudget {
    fn roll(&self) {
        let now = self.epoch.elapsed().as_secs();
        let was = self.window.load(Relaxed);
        if now != was
            && self
                .window
                .compare_exchange(was, now, Relaxed, Relaxed)
                .is_ok()
        {
            self.requests.store(0, Relaxed);
            self.retries.store(0, Relaxed);
        }
    }

    /// A first try of a request.
    pub fn request(&self) {
        self.roll();
        self.requests.fetch_add(1, Relaxed);
    }

    /// Takes one retry from the budget; false: the budget is spent, do not retry.
    pub fn try_retry(&self) -> bool {
        self.roll();
        let allowed =
            (self.requests.load(Relaxed) / RETRY_RATIO_DIVISOR).max(MIN_RETRIES_PER_SECOND);
        let taken = self.retries.fetch_add(1, Relaxed);
        if taken >= allowed {
            self.retries.fetch_sub(1, Relaxed);
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_a_fifth_of_requests_with_a_floor() {
        let b = RetryBudget::default();
        // Few requests: the floor.
        let granted = (0..100).filter(|_| b.try_retry()).count() as u64;
        assert!(granted <= MIN_RETRIES_PER_SECOND, "{granted}");
        let b = RetryBudget::default();
        for _ in 0..1000 {
            b.request();
        }
        let granted = (0..1000).filter(|_| b.try_retry()).count() as u64;
        // The window may roll over during the test: then at most two windows' worth.
        assert!((200..=400).contains(&granted), "{granted}");
    }
}
