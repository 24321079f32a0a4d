//! What the client measures for one request.

use crate::approach::Approach;
use std::time::{Duration, Instant};

/// Measurements of one streamed request, from the client's side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestRecord {
    pub approach: Approach,
    pub prompt_index: usize,
    /// Send (or connect, in fresh mode) to the first content token.
    #[serde(with = "secs")]
    pub ttft: Option<Duration>,
    /// Gaps between consecutive content tokens.
    #[serde(skip)]
    pub gaps: Vec<Duration>,
    #[serde(with = "secs")]
    pub total: Option<Duration>,
    /// Content tokens received.
    pub tokens: u64,
    /// The server's own count, where the stream carries one (usage, eval_count).
    pub tokens_reported: Option<u64>,
    /// Application bytes received (response body or stream bytes).
    pub app_bytes: u64,
    /// The streamed text, tokens joined.
    #[serde(skip)]
    pub text: String,
    /// Why the request failed or ended incomplete.
    pub error: Option<String>,
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Builds a record while a stream arrives.
pub struct Recorder {
    rec: RequestRecord,
    start: Instant,
    last: Option<Instant>,
}

impl Recorder {
    pub fn new(approach: Approach, prompt_index: usize, start: Instant) -> Self {
        Self {
            rec: RequestRecord {
                approach,
                prompt_index,
                ttft: None,
                gaps: Vec::new(),
                total: None,
                tokens: 0,
                tokens_reported: None,
                app_bytes: 0,
                text: String::new(),
                error: None,
            },
            start,
            last: None,
        }
    }

    pub fn bytes(&mut self, n: usize) {
        self.rec.app_bytes += n as u64;
    }

    pub fn token(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => self.rec.ttft = Some(now - self.start),
            Some(prev) => self.rec.gaps.push(now - prev),
        }
        self.last = Some(now);
        self.rec.tokens += 1;
        self.rec.text.push_str(text);
    }

    pub fn reported(&mut self, tokens: u64) {
        self.rec.tokens_reported = Some(tokens);
    }

    pub fn finish(mut self) -> RequestRecord {
        self.rec.total = Some(self.start.elapsed());
        self.rec
    }

    pub fn fail(mut self, error: impl std::fmt::Display) -> RequestRecord {
        self.rec.total = Some(self.start.elapsed());
        self.rec.error = Some(error.to_string());
        self.rec
    }
}

mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64(d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}
