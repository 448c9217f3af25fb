//! Where this agent is in its life, as the data path sees it: whether it may read its pods'
//! QUIC sockets yet (a successor waits until its predecessor has let go of them), whether it
//! drains (accept loops end, tunnel servers send GOAWAY, QUIC endpoints close), and how many
//! connections it still carries, so a draining agent knows when it may exit. The drain
//! deadline closes what is left cleanly (FIN, END_STREAM), never with a reset.

use std::sync::{
    atomic::{AtomicUsize, Ordering::SeqCst},
    Arc,
};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

pub struct Lifecycle {
    /// Cancelled when the agent starts draining.
    pub drain: CancellationToken,
    /// Cancelled at the drain deadline: connections still open are closed cleanly.
    pub deadline: CancellationToken,
    quic: watch::Sender<bool>,
    accept: watch::Sender<bool>,
    /// Connections being relayed (both directions of one connection count once).
    pub connections: Count,
    /// QUIC endpoints still reading their pods' UDP sockets.
    pub quic_endpoints: Count,
}

impl Lifecycle {
    /// `first`: whether this agent is the node's only one. If not (it takes over from a
    /// predecessor), its accept loops wait for `open_accept` (the agent is ready: its L7 workers
    /// configured) and its QUIC endpoints for `open_quic` (the predecessor let go of the UDP
    /// sockets); the predecessor serves meanwhile.
    pub fn new(first: bool) -> Self {
        Self {
            drain: CancellationToken::new(),
            deadline: CancellationToken::new(),
            quic: watch::channel(first).0,
            accept: watch::channel(first).0,
            connections: Count::default(),
            quic_endpoints: Count::default(),
        }
    }

    /// This agent is ready to take connections: its accept loops start.
    pub fn open_accept(&self) {
        self.accept.send_replace(true);
    }

    /// Resolves once this agent may accept.
    pub async fn accepting(&self) {
        let mut rx = self.accept.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }

    /// The predecessor has closed its QUIC endpoints: this agent's may start.
    pub fn open_quic(&self) {
        self.quic.send_replace(true);
    }

    /// Resolves once this agent may read its pods' UDP sockets.
    pub async fn quic_opened(&self) {
        let mut rx = self.quic.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// A count of things in flight and a way to wait for none.
#[derive(Default, Clone)]
pub struct Count(Arc<CountInner>);

#[derive(Default)]
struct CountInner {
    n: AtomicUsize,
    zero: Notify,
}

/// One thing counted while it lives.
pub struct Counted(Arc<CountInner>);

impl Count {
    pub fn enter(&self) -> Counted {
        self.0.n.fetch_add(1, SeqCst);
        Counted(self.0.clone())
    }

    pub fn get(&self) -> usize {
        self.0.n.load(SeqCst)
    }

    /// Resolves when the count is zero.
    pub async fn zero(&self) {
        loop {
            let notified = self.0.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn zero_resolves_when_the_last_counted_thing_ends() {
        let c = Count::default();
        c.zero().await;
        let a = c.enter();
        let b = c.enter();
        let waiter = tokio::spawn({
            let c = c.clone();
            async move { c.zero().await }
        });
        drop(a);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("zero after the last")
            .unwrap();
    }

    #[tokio::test]
    async fn quic_waits_until_opened() {
        let l = Arc::new(Lifecycle::new(false));
        let w = tokio::spawn({
            let l = l.clone();
            async move { l.quic_opened().await }
        });
        tokio::task::yield_now().await;
        assert!(!w.is_finished());
        l.open_quic();
        w.await.unwrap();
        Lifecycle::new(true).quic_opened().await;
    }
}
