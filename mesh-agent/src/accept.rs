//! Accept errors, for every listener of the agent (the in-pod ones, `netns::socket`, and the
//! node's HTTP servers, `http_server`). An accept error never ends a loop: errors that belong to
//! one connection (it was reset before we took it) are skipped at once; errors of the process
//! (EMFILE, ENFILE, ENOBUFS, ENOMEM) back off exponentially, so a full descriptor table is not
//! polled in a hot loop; either kind is logged at most once per `LOG_INTERVAL`, with the count
//! held back.

use std::{
    io,
    time::{Duration, Instant},
};

use tracing::warn;

/// First pause after a process-level accept error; doubled on each further one.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause: the server answers again within this once descriptors are free.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A failing accept (or, for `http_server`, refusals over the cap) is logged at most once per
/// this.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What one accept loop does with its errors.
#[derive(Debug)]
pub struct AcceptErrors {
    /// Names the listener in the log line.
    server: &'static str,
    backoff: Duration,
    log: LogLimit,
}

impl AcceptErrors {
    pub fn new(server: &'static str) -> Self {
        Self {
            server,
            backoff: MIN_BACKOFF,
            log: LogLimit::new(LOG_INTERVAL),
        }
    }

    /// A connection was accepted: the next error starts the back-off anew.
    pub fn accepted(&mut self) {
        self.backoff = MIN_BACKOFF;
    }

    /// Logs `e` (within the limit) and, for an error of the process, waits before the next
    /// accept.
    pub async fn failed(&mut self, e: &io::Error) {
        let process_level = !per_connection(e);
        if let Some(suppressed) = self.log.allow(Instant::now()) {
            let retry_in_ms = if process_level {
                self.backoff.as_millis() as u64
            } else {
                0
            };
            warn!(server = self.server, error = %e, retry_in_ms, suppressed,
                "accept failed; still serving");
        }
        if process_level {
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Errors that concern only the connection being accepted: nothing to wait for.
fn per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Lets one event through per interval; says how many were held back since the last one.
#[derive(Debug)]
pub struct LogLimit {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(held back since the last allowed event)` when an event at `now` may be logged.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_logged_once_per_interval_with_the_count_held_back() {
        let t0 = Instant::now();
        let mut limit = LogLimit::new(Duration::from_secs(10));
        assert_eq!(limit.allow(t0), Some(0));
        for ms in [1, 500, 9_999] {
            assert_eq!(limit.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(limit.allow(t0 + Duration::from_secs(10)), Some(3));
        assert_eq!(limit.allow(t0 + Duration::from_secs(11)), None);
        assert_eq!(limit.allow(t0 + Duration::from_secs(25)), Some(1));
    }
}
