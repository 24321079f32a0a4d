//! One direction of an emulated link, as dummynet orders it: Bernoulli loss on arrival
//! (seeded) -> droptail queue -> serialisation at the bandwidth -> fixed delay. Pure: times
//! are durations since the link started, so tests drive it on a virtual clock and the
//! emulator on the monotonic one.
//!
//! ```text
//! departure = max(arrival, previous departure) + IP length x 8 / rate
//! delivery  = departure + delay
//! ```
//!
//! The queue holds the packets accepted and not yet serialised (departure > now),
//! including the one on the wire; a packet that finds `limit` of them is dropped.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::VecDeque;
use std::time::Duration;

/// The queue's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    Packets(usize),
    Bytes(usize),
}

/// What one direction does to packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    pub delay: Duration,
    /// Probability of dropping a packet on arrival, 0..=1.
    pub loss: f64,
    /// Bits per second; `None` = no serialisation (infinitely fast).
    pub rate_bps: Option<u64>,
    pub queue: QueueLimit,
}

impl Shape {
    /// A link that changes nothing.
    pub const NONE: Shape = Shape {
        delay: Duration::ZERO,
        loss: 0.0,
        rate_bps: None,
        queue: QueueLimit::Packets(50),
    };
}

/// What happened to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Leaves the link at this time.
    Deliver(Duration),
    /// Lost on arrival (the Bernoulli draw).
    Lost,
    /// The queue was full.
    QueueFull,
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct LinkStats {
    pub arrived: u64,
    pub delivered: u64,
    pub lost: u64,
    pub queue_drops: u64,
    pub bytes_delivered: u64,
}

pub struct LinkModel {
    shape: Shape,
    rng: ChaCha8Rng,
    last_departure: Duration,
    /// Departure times and sizes of the packets in the queue.
    queued: VecDeque<(Duration, usize)>,
    queued_bytes: usize,
    pub stats: LinkStats,
}

impl LinkModel {
    pub fn new(shape: Shape, seed: u64) -> Self {
        Self {
            shape,
            rng: ChaCha8Rng::seed_from_u64(seed),
            last_departure: Duration::ZERO,
            queued: VecDeque::new(),
            queued_bytes: 0,
            stats: LinkStats::default(),
        }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// A packet of `len` IP bytes arrives at `now` (times must not go back).
    pub fn arrive(&mut self, now: Duration, len: usize) -> Fate {
        self.stats.arrived += 1;
        if self.shape.loss > 0.0 && self.rng.random::<f64>() < self.shape.loss {
            self.stats.lost += 1;
            return Fate::Lost;
        }
        self.serialised_by(now);
        let full = match self.shape.queue {
            QueueLimit::Packets(n) => self.queued.len() >= n,
            QueueLimit::Bytes(b) => self.queued_bytes + len > b,
        };
        if full {
            self.stats.queue_drops += 1;
            return Fate::QueueFull;
        }
        let departure = match self.shape.rate_bps {
            Some(rate) if rate > 0 => {
                let ser = Duration::from_nanos(
                    u64::try_from(len as u128 * 8 * 1_000_000_000 / u128::from(rate))
                        .unwrap_or(u64::MAX),
                );
                now.max(self.last_departure) + ser
            }
            _ => now,
        };
        self.last_departure = departure;
        if departure > now {
            self.queued.push_back((departure, len));
            self.queued_bytes += len;
        }
        self.stats.delivered += 1;
        self.stats.bytes_delivered += len as u64;
        Fate::Deliver(departure + self.shape.delay)
    }

    /// Forgets the packets whose serialisation ended by `now`.
    fn serialised_by(&mut self, now: Duration) {
        while self.queued.front().is_some_and(|(d, _)| *d <= now) {
            if let Some((_, n)) = self.queued.pop_front() {
                self.queued_bytes -= n;
            }
        }
    }

    /// Packets in the queue at `now`.
    pub fn queue_len(&mut self, now: Duration) -> usize {
        self.serialised_by(now);
        self.queued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Duration {
        Duration::from_millis(x)
    }

    #[test]
    fn delay_only_delivers_after_the_delay() {
        let mut l = LinkModel::new(
            Shape {
                delay: ms(200),
                ..Shape::NONE
            },
            1,
        );
        assert_eq!(l.arrive(ms(5), 1500), Fate::Deliver(ms(205)));
        assert_eq!(l.arrive(ms(5), 40), Fate::Deliver(ms(205)));
    }

    #[test]
    fn serialisation_matches_the_closed_form() {
        // 1500 bytes at 100 kbit/s: 120 ms each.
        let mut l = LinkModel::new(
            Shape {
                delay: ms(10),
                rate_bps: Some(100_000),
                ..Shape::NONE
            },
            1,
        );
        assert_eq!(l.arrive(ms(0), 1500), Fate::Deliver(ms(130)));
        // Arrives while the first is on the wire: waits for it.
        assert_eq!(l.arrive(ms(50), 1500), Fate::Deliver(ms(250)));
        // Arrives after the link went idle: no waiting.
        assert_eq!(l.arrive(ms(1000), 125), Fate::Deliver(ms(1020)));
    }

    #[test]
    fn a_full_queue_drops_the_51st_packet() {
        let mut l = LinkModel::new(
            Shape {
                rate_bps: Some(1_000_000),
                ..Shape::NONE
            },
            1,
        );
        for i in 0..50u64 {
            // 1000 bytes at 1 Mbit/s: 8 ms each, back to back.
            assert_eq!(l.arrive(ms(0), 1000), Fate::Deliver(ms(8 * (i + 1))), "{i}");
        }
        assert_eq!(l.arrive(ms(0), 1000), Fate::QueueFull);
        assert_eq!(l.queue_len(ms(0)), 50);
        // One serialised: room for one more, behind the other 49.
        assert_eq!(l.arrive(ms(8), 1000), Fate::Deliver(ms(408)));
        assert_eq!(l.stats.queue_drops, 1);
    }

    #[test]
    fn a_byte_limit_counts_bytes() {
        let mut l = LinkModel::new(
            Shape {
                rate_bps: Some(8_000),
                queue: QueueLimit::Bytes(3000),
                ..Shape::NONE
            },
            1,
        );
        assert!(matches!(l.arrive(ms(0), 1500), Fate::Deliver(_)));
        assert!(matches!(l.arrive(ms(0), 1500), Fate::Deliver(_)));
        assert_eq!(l.arrive(ms(0), 1), Fate::QueueFull);
    }

    #[test]
    fn loss_is_seeded_and_near_its_rate() {
        let shape = Shape {
            loss: 0.05,
            ..Shape::NONE
        };
        let run = |seed| {
            let mut l = LinkModel::new(shape, seed);
            (0..20_000)
                .map(|i| l.arrive(ms(i), 100))
                .filter(|f| *f == Fate::Lost)
                .count()
        };
        assert_eq!(run(7), run(7), "same seed, same losses");
        let lost = run(7) as f64 / 20_000.0;
        // 95% interval of a binomial(20000, 0.05): 0.05 +- 0.003.
        assert!((0.047..=0.053).contains(&lost), "{lost}");
    }
}
