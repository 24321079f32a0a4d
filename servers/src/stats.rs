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
    /// The relays' added delay per token: from the upstream sending it (its NDJSON line's
    /// `created_at`) to the relay handing it to the client's connection.
    pub relay_delay: DelayHistogram,
}

/// Sub-buckets per power of two of [`DelayHistogram`]: quantiles within 1/8 (12.5%).
const SUB: usize = 8;
/// Powers of two of microseconds covered: up to 2^30 µs (18 minutes); longer goes in the
/// last bucket.
const POWERS: usize = 28;

/// A lock-free histogram of durations, log-linear buckets over microseconds (like HDR
/// histograms, coarser): recording is two atomic adds and a max, whatever the load.
#[derive(Debug)]
pub struct DelayHistogram {
    buckets: [AtomicU64; SUB * POWERS],
    count: AtomicU64,
    sum_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for DelayHistogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// What a [`DelayHistogram`] holds, in milliseconds (quantiles: their bucket's upper bound).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DelaySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl DelayHistogram {
    fn index(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let power = 63 - us.leading_zeros() as usize; // us >= 8: power >= 3
        let sub = ((us >> (power - 3)) & (SUB as u64 - 1)) as usize;
        ((power - 2) * SUB + sub).min(SUB * POWERS - 1)
    }

    /// The largest microseconds value of bucket `i`.
    fn upper_us(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let power = i / SUB + 2;
        let sub = (i % SUB) as u64;
        ((SUB as u64 + sub + 1) << (power - 3)) - 1
    }

    pub fn record(&self, ns: u64) {
        self.buckets[Self::index(ns / 1000)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// `None` before anything was recorded.
    pub fn summary(&self) -> Option<DelaySummary> {
        let now = self.snapshot();
        summarise(
            &now.counts,
            now.sum_ns,
            self.max_ns.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// What the histogram holds now, to summarise what comes after it
    /// ([`Self::summary_since`]).
    pub fn snapshot(&self) -> DelaySnapshot {
        DelaySnapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }

    /// What was recorded after `earlier`; its max is the largest bucket's upper bound
    /// (the exact max is kept for the whole life only). `None` if nothing was.
    pub fn summary_since(&self, earlier: &DelaySnapshot) -> Option<DelaySummary> {
        let now = self.snapshot();
        let counts: Vec<u64> = now
            .counts
            .iter()
            .zip(earlier.counts.iter().chain(std::iter::repeat(&0)))
            .map(|(n, e)| n.saturating_sub(*e))
            .collect();
        let max_ms = counts
            .iter()
            .rposition(|&c| c > 0)
            .map_or(0.0, |i| Self::upper_us(i) as f64 / 1e3);
        summarise(&counts, now.sum_ns.saturating_sub(earlier.sum_ns), max_ms)
    }
}

/// The counts of a [`DelayHistogram`] at one moment.
#[derive(Debug, Clone, Default)]
pub struct DelaySnapshot {
    counts: Vec<u64>,
    sum_ns: u64,
}

/// Count, mean and quantiles of bucket counts (`None` when they are all zero).
fn summarise(counts: &[u64], sum_ns: u64, max_ms: f64) -> Option<DelaySummary> {
    let count: u64 = counts.iter().sum();
    if count == 0 {
        return None;
    }
    let quantile = |q: f64| {
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return DelayHistogram::upper_us(i) as f64 / 1e3;
            }
        }
        f64::NAN
    };
    Some(DelaySummary {
        count,
        mean_ms: sum_ns as f64 / count as f64 / 1e6,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        max_ms,
    })
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

    /// A token the relay just handed to its client, sent by the upstream at
    /// `sent_unix_ns` (nothing recorded without it, or with a clock that went back).
    pub(crate) fn relayed_at(&self, sent_unix_ns: Option<u64>) {
        let Some(sent) = sent_unix_ns else { return };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        if let Some(d) = now.checked_sub(sent) {
            self.relay_delay.record(d);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_within_an_eighth() {
        let mut last = 0;
        for us in (0..5_000_000u64).step_by(997) {
            let i = DelayHistogram::index(us);
            assert!(i >= last, "{us}");
            last = i;
            let upper = DelayHistogram::upper_us(i);
            assert!(us <= upper, "{us} > {upper}");
            assert!(upper as f64 <= us as f64 * 1.125 + 1.0, "{us}: {upper}");
        }
    }

    #[test]
    fn summarises_quantiles_mean_and_max() {
        let h = DelayHistogram::default();
        assert_eq!(h.summary(), None);
        for ms in 1..=100u64 {
            h.record(ms * 1_000_000);
        }
        let s = h.summary().unwrap();
        assert_eq!(s.count, 100);
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert!((50.0..=50.0 * 1.125).contains(&s.p50_ms), "{s:?}");
        assert!((99.0..=99.0 * 1.125).contains(&s.p99_ms), "{s:?}");
        assert_eq!(s.max_ms, 100.0);
    }

    #[test]
    fn summarises_what_came_after_a_snapshot() {
        let h = DelayHistogram::default();
        for _ in 0..50 {
            h.record(90_000_000);
        }
        let before = h.snapshot();
        assert_eq!(h.summary_since(&before), None);
        for ms in 1..=10u64 {
            h.record(ms * 1_000_000);
        }
        let s = h.summary_since(&before).unwrap();
        assert_eq!(s.count, 10);
        assert!((s.mean_ms - 5.5).abs() < 1e-9, "{s:?}");
        assert!((10.0..=10.0 * 1.125).contains(&s.max_ms), "{s:?}");
        assert!((10.0..=10.0 * 1.125).contains(&s.p99_ms), "{s:?}");
    }
}
