//! Counting the streams open on one pooled tunnel connection, so that a client opens another
//! connection instead of queueing behind the server's `MAX_STREAMS` (a queued CONNECT would
//! wait for a stream to end, and time out).

use std::sync::{
    atomic::{AtomicUsize, Ordering::Relaxed},
    Arc,
};

use super::MAX_STREAMS;

/// The stream count of one connection.
#[derive(Debug, Clone, Default)]
pub struct Streams(Arc<AtomicUsize>);

impl Streams {
    /// Takes a slot if the connection has room for one more stream.
    pub fn take(&self) -> Option<Slot> {
        let limit = MAX_STREAMS as usize;
        self.0
            .fetch_update(Relaxed, Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| Slot(self.0.clone()))
    }

    pub fn open(&self) -> usize {
        self.0.load(Relaxed)
    }
}

/// One open stream; its slot is given back when the stream (which holds it) is dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_stream_limit_and_come_back_when_dropped() {
        let s = Streams::default();
        let held: Vec<Slot> = (0..MAX_STREAMS).map(|_| s.take().expect("room")).collect();
        assert!(s.take().is_none(), "one more than MAX_STREAMS");
        drop(held);
        assert_eq!(s.open(), 0);
        assert!(s.take().is_some());
    }
}
