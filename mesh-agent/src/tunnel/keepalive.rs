//! Liveness of an HTTP/2 tunnel connection: a PING every `KEEPALIVE_INTERVAL`, answered within
//! `KEEPALIVE_TIMEOUT`. A peer whose node died or whose wire was cut never answers; without
//! this, its connection would look open until TCP gave up (many minutes), and every new stream
//! pooled onto it would hang meanwhile.

use super::{KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};

/// Resolves, with the reason, once the peer has stopped answering PINGs. Runs alongside the
/// connection (which must be polled for the PONG to arrive); never resolves while it answers.
pub async fn dead(mut pings: h2::PingPong) -> String {
    let mut tick = tokio::time::interval(KEEPALIVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await; // the first tick is immediate: the handshake just proved the peer
    loop {
        tick.tick().await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("PING failed: {e}"),
            Err(_) => return format!("no answer to PING within {KEEPALIVE_TIMEOUT:?}"),
        }
    }
}
