//! The old agent's side of a hand-over (or of SIGTERM): stop accepting and let go of the UDP
//! sockets at once, then let connections and L7 workers finish until the deadline, and close
//! what is left cleanly.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::handover::Draining;
use crate::{l7::L7Pool, proxy::lifecycle::Lifecycle};

/// How long the QUIC endpoints may take to close and stop reading.
const UDP_RELEASE: Duration = Duration::from_secs(5);
/// How long connections closed at the deadline may take to send their end.
const CLOSE_AT_DEADLINE: Duration = Duration::from_secs(2);

/// Stops accepting (accept loops end, HBONE servers send GOAWAY) and closes the QUIC endpoints;
/// returns once they no longer read the pods' UDP sockets, with what a successor is told.
pub async fn begin(lifecycle: &Lifecycle, deadline: Duration) -> Draining {
    lifecycle.drain.cancel();
    if tokio::time::timeout(UDP_RELEASE, lifecycle.quic_endpoints.zero())
        .await
        .is_err()
    {
        warn!(
            endpoints = lifecycle.quic_endpoints.get(),
            "QUIC endpoints still open after {UDP_RELEASE:?}"
        );
    }
    Draining {
        deadline,
        carrying: lifecycle.connections.get(),
    }
}

/// Waits until every connection and L7 worker has finished, or the deadline; then closes the
/// connections left (FIN / END_STREAM, not reset) and says how many. `stop` (a second
/// SIGTERM) ends the wait early.
pub async fn finish(
    lifecycle: &Lifecycle,
    pool: Option<&L7Pool>,
    deadline: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    let started = Instant::now();
    let carrying = lifecycle.connections.get();
    info!(
        connections = carrying,
        deadline_secs = deadline.as_secs_f64(),
        "draining: no longer accepting; open connections may finish until the deadline"
    );
    let all = async {
        let workers = async {
            if let Some(p) = pool {
                p.drain(deadline).await
            }
        };
        tokio::join!(lifecycle.connections.zero(), workers);
    };
    let finished = tokio::select! {
        r = tokio::time::timeout(deadline, all) => r.is_ok(),
        _ = stop => false,
    };
    if finished {
        return info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drained: every connection finished"
        );
    }
    let left = lifecycle.connections.get();
    lifecycle.deadline.cancel();
    let _ = tokio::time::timeout(CLOSE_AT_DEADLINE, lifecycle.connections.zero()).await;
    warn!(
        closed = left,
        of = carrying,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "drain deadline reached: closed the connections still open"
    );
}
