//! The agent's in-pod listeners and what they do with a connection.
//!
//! - outbound (127.0.0.1:15001, [::1]:15001): connections the connect hooks captured; the
//!   original destination comes from the eBPF map, the onward leg from `onward`.
//! - inbound (:15006): connections sk_lookup steered; delivered to the application.
//! - HBONE (:15008): the mTLS tunnel endpoint.

pub mod copy;
pub mod hbone;
pub mod inbound;
pub mod listeners;
pub mod onward;
pub mod outbound;

use std::{net::IpAddr, sync::Arc};

use tokio::{net::TcpStream, task::JoinHandle};

pub use listeners::InpodListeners;

use crate::{netns::Netns, redirect::Maps, state::PodKey};

/// What a connection handler knows about the pod it serves.
pub struct PodContext {
    pub key: PodKey,
    pub ip: IpAddr,
    pub netns: Netns,
    pub maps: Arc<Maps>,
}

/// Starts the accept loops of a pod's listeners. Aborting the returned tasks closes the
/// listeners; connections already accepted run on in their own tasks.
pub fn serve(ctx: Arc<PodContext>, listeners: InpodListeners) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for l in listeners.outbound {
        tasks.push(tokio::spawn(outbound::serve(ctx.clone(), l)));
    }
    for l in listeners.inbound {
        tasks.push(tokio::spawn(inbound::serve(ctx.clone(), l)));
    }
    for l in listeners.hbone {
        tasks.push(tokio::spawn(hbone::serve(ctx.clone(), l)));
    }
    tasks
}

/// Copies both ways until the connection ends and logs its one closing line (bytes, duration):
/// the per-connection record, inside the caller's span.
pub async fn relay(down: TcpStream, up: TcpStream, start: std::time::Instant) {
    let duration_ms = |s: std::time::Instant| s.elapsed().as_millis() as u64;
    match copy::bidirectional(down, up).await {
        Ok(t) => tracing::info!(
            sent = t.sent,
            received = t.received,
            duration_ms = duration_ms(start),
            "connection closed"
        ),
        Err(e) => tracing::info!(error = %e, duration_ms = duration_ms(start), "connection reset"),
    }
}

/// Closes a connection with a reset, so the client sees a refusal at once instead of a hang or
/// a clean end of stream that would look like success.
pub fn reset(stream: TcpStream) {
    // A zero linger turns close into RST; it never blocks.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    drop(stream);
}
