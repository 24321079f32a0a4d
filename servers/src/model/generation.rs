//! What the embedded model says and when: a deterministic plan of pieces for a
//! (prompt, seed) pair, and a clock that releases them at model-like pace.

use super::corpus::{corpus, count_tokens};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use tokio::time::Instant;

/// Pace and length of generations.
#[derive(Debug, Clone)]
pub struct Timing {
    /// Prompt evaluation: the time to first token.
    pub ttft: Duration,
    /// Time between tokens.
    pub tbt: Duration,
    /// Relative jitter on each wait, 0.0..1.0 (0.1 = ±10%).
    pub jitter: f64,
    /// Divides every wait (2.0 = twice as fast; tests use large factors).
    pub speed: f64,
    /// Mean response length in tokens (lengths spread ±30% around it).
    pub mean_tokens: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            ttft: Duration::from_millis(250),
            tbt: Duration::from_millis(35),
            jitter: 0.1,
            speed: 1.0,
            mean_tokens: 480,
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoneReason {
    Stop,
    Length,
}

impl DoneReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DoneReason::Stop => "stop",
            DoneReason::Length => "length",
        }
    }
}

/// The full answer for one request, decided before the first token leaves.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Indices into the corpus.
    pub tokens: Vec<usize>,
    pub reason: DoneReason,
}

impl Plan {
    /// Decides the answer for `prompt` and `seed`: a paragraph of the corpus to start at and
    /// a length, both from a ChaCha8 stream seeded by FNV-1a(prompt) and the seed, so the
    /// same pair always gives the same text. `limit` is `num_predict` / `max_tokens`
    /// (values < 1 mean no limit, as in Ollama).
    pub fn new(prompt: &str, seed: u64, mean_tokens: u32, limit: Option<i64>) -> Plan {
        let c = corpus();
        let mut rng = ChaCha8Rng::seed_from_u64(fnv1a(prompt.as_bytes()) ^ seed.rotate_left(17));
        let start = c.starts[rng.random_range(0..c.starts.len())];
        let mean = f64::from(mean_tokens.max(1));
        // Sum of two uniforms: a triangular spread of ±30% around the mean.
        let len =
            mean * 0.7 + rng.random_range(0.0..mean * 0.3) + rng.random_range(0.0..mean * 0.3);
        let natural = (len.round() as usize).max(1);
        let (n, reason) = match limit {
            Some(l) if l >= 1 && (l as u64) < natural as u64 => (l as usize, DoneReason::Length),
            _ => (natural, DoneReason::Stop),
        };
        let tokens = (0..n).map(|i| (start + i) % c.pieces.len()).collect();
        Plan { tokens, reason }
    }

    /// The answer's text.
    pub fn text(&self) -> String {
        let c = corpus();
        self.tokens.iter().map(|&i| c.pieces[i].as_str()).collect()
    }

    pub fn piece(&self, i: usize) -> &'static str {
        corpus().pieces[self.tokens[i]].as_str()
    }

    /// o200k_base ids of the answer.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.tokens.iter().map(|&i| corpus().ids[i])
    }
}

/// Ollama's prompt_eval_count stand-in: the messages' tokens plus a chat-template overhead
/// of 4 tokens per message and 2 for the assistant turn.
pub fn prompt_tokens<'a>(messages: impl IntoIterator<Item = &'a str>) -> u64 {
    let mut n = 2;
    for m in messages {
        n += 4 + count_tokens(m) as u64;
    }
    n
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Releases a plan's tokens at model pace: the first after the prompt-evaluation time,
/// the others one gap apart, each with jitter. Deadlines are absolute, so a late wake-up
/// does not push every later token back.
pub struct Clock {
    timing: Timing,
    rng: ChaCha8Rng,
    next: Instant,
}

impl Clock {
    pub fn new(timing: Timing, jitter_seed: u64) -> Self {
        let mut c = Self {
            rng: ChaCha8Rng::seed_from_u64(jitter_seed),
            next: Instant::now(),
            timing,
        };
        let first = c.jittered(c.timing.ttft);
        c.next += first;
        c
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        let j = self.timing.jitter.clamp(0.0, 0.99);
        let f = if j > 0.0 {
            1.0 + self.rng.random_range(-j..=j)
        } else {
            1.0
        };
        let speed = if self.timing.speed > 0.0 {
            self.timing.speed
        } else {
            1.0
        };
        d.mul_f64(f / speed)
    }

    /// Waits for the next token's time, then schedules the one after it.
    pub async fn tick(&mut self) {
        tokio::time::sleep_until(self.next).await;
        let gap = self.jittered(self.timing.tbt);
        self.next += gap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_and_vary() {
        let a = Plan::new("Why is the sky blue?", 0, 480, None);
        let b = Plan::new("Why is the sky blue?", 0, 480, None);
        assert_eq!(a.text(), b.text());
        let c = Plan::new("Why is the sky blue?", 1, 480, None);
        let d = Plan::new("What is a hash table?", 0, 480, None);
        assert!(a.text() != c.text() || a.text() != d.text());
        assert_eq!(a.reason, DoneReason::Stop);
    }

    #[test]
    fn lengths_average_near_the_mean_and_honour_limits() {
        let n = 400;
        let total: usize = (0..n)
            .map(|i| Plan::new(&format!("prompt {i}"), 7, 480, None).tokens.len())
            .sum();
        let mean = total as f64 / f64::from(n);
        assert!((455.0..505.0).contains(&mean), "mean {mean}");
        let p = Plan::new("x", 0, 480, Some(5));
        assert_eq!((p.tokens.len(), p.reason), (5, DoneReason::Length));
        let p = Plan::new("x", 0, 480, Some(-1));
        assert_eq!(p.reason, DoneReason::Stop);
    }
}
