//! Counters each server keeps about itself. Tests read them to prove connection reuse and
//! cancellation; per-request figures go to the probe as spans (`crate::spans`).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections (or QUIC connections, for `wt`) accepted.
    pub connections: AtomicU64,
    /// Requests (HTTP requests, or WebTransport streams) started.
    pub requests: AtomicU64,
    /// Streams in progress: generations in the model, relayed streams in the companions.
    pub active: AtomicI64,
    /// Content tokens sent (model) or relayed (companions).
    pub tokens: AtomicU64,
    /// Requests that ended early: client gone, upstream failed, bad input.
    pub aborted: AtomicU64,
}

impl Stats {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn active(&self) -> i64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn tokens(&self) -> u64 {
        self.tokens.load(Ordering::Relaxed)
    }

    pub fn aborted(&self) -> u64 {
        self.aborted.load(Ordering::Relaxed)
    }

    pub(crate) fn add_connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_tokens(&self, n: u64) {
        self.tokens.fetch_add(n, Ordering::Relaxed);
    }
}

/// Marks one stream active for as long as it lives; dropping it (stream finished, or the
/// body dropped because the client went away) ends it. Unless [`Active::complete`] was
/// called first, the drop counts as an abort.
#[derive(Debug)]
pub struct Active {
    stats: Arc<Stats>,
    completed: bool,
}

impl Active {
    pub fn new(stats: &Arc<Stats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        Self {
            stats: stats.clone(),
            completed: false,
        }
    }

    pub fn complete(&mut self) {
        self.completed = true;
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
        if !self.completed {
            self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        }
    }
}
