//! What the client measures for one request.

use crate::approach::Approach;
use std::time::{Duration, Instant};

/// Measurements of one streamed request, from the client's side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RequestRecord {
    pub approach: Approach,
    pub prompt_index: usize,
    /// Repetition of the prompt list (0-based).
    pub round: usize,
    /// When the request was due, seconds after the approach's run began (open loop: its
    /// scheduled time; otherwise when it was sent).
    pub start_offset_s: f64,
    /// When it was due, Unix nanoseconds (to line it up with the probe's records and
    /// other processes' logs).
    pub start_unix_ns: u64,
    /// Due time (send, or connect in fresh mode) to the first content token.
    #[serde(rename = "ttft_s", with = "secs")]
    pub ttft: Option<Duration>,
    /// Gaps between consecutive content tokens.
    #[serde(rename = "gaps_s", with = "secs_vec")]
    pub gaps: Vec<Duration>,
    #[serde(rename = "total_s", with = "secs")]
    pub total: Option<Duration>,
    /// Content tokens received (role-only and finish chunks are not tokens).
    pub tokens_counted: u64,
    /// The server's own count, where the stream carries one (usage, eval_count).
    pub tokens_reported: Option<u64>,
    /// Application bytes received (response body or stream bytes).
    pub app_bytes: u64,
    /// The streamed text, tokens joined.
    #[serde(skip)]
    pub text: String,
    /// Why the request failed or ended incomplete.
    pub error: Option<String>,
    /// The kind of failure, for counting (`error` has the details).
    pub failure: Option<Failure>,
}

/// Why a request failed, by kind: the bench counts failures per kind under its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// No connection (TCP, or the QUIC and WebTransport handshakes) within the connect
    /// timeout: a server or a network dropping or queueing new connections.
    ConnectTimeout,
    /// The server refused the connection or session: TCP RST, a WebTransport session
    /// answered 429 or another non-2xx, or closed during its handshake.
    Refused,
    /// Another error before the request was sent (address, local socket).
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// The server answered an HTTP error status.
    HttpStatus,
    /// The server reset the WebTransport stream (its code is in the error).
    Reset,
    /// The connection or session closed while the request was in flight.
    ConnectionLost,
    /// The server reported an error in the stream (an upstream failure).
    ServerReported,
    /// The stream broke the protocol or ended early.
    Malformed,
    /// The request did not finish within --timeout-secs.
    Timeout,
    /// The approach was not run (its warm-up or client set-up failed).
    NotRun,
}

impl Failure {
    const ALL: [Failure; 11] = [
        Failure::ConnectTimeout,
        Failure::Refused,
        Failure::Connect,
        Failure::Tls,
        Failure::HttpStatus,
        Failure::Reset,
        Failure::ConnectionLost,
        Failure::ServerReported,
        Failure::Malformed,
        Failure::Timeout,
        Failure::NotRun,
    ];

    /// The kind [`Failure::as_str`] names (the browser page reports kinds by name).
    pub fn from_name(name: &str) -> Option<Failure> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Failure::ConnectTimeout => "connect-timeout",
            Failure::Refused => "refused",
            Failure::Connect => "connect",
            Failure::Tls => "tls",
            Failure::HttpStatus => "http-status",
            Failure::Reset => "reset",
            Failure::ConnectionLost => "connection-lost",
            Failure::ServerReported => "server-reported",
            Failure::Malformed => "malformed",
            Failure::Timeout => "timeout",
            Failure::NotRun => "not-run",
        }
    }
}

impl RequestRecord {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// The token count: the server's where the protocol carries it, else counted.
    pub fn tokens(&self) -> u64 {
        self.tokens_reported.unwrap_or(self.tokens_counted)
    }

    /// Mean gap between this request's tokens.
    pub fn mean_gap(&self) -> Option<Duration> {
        let n = u32::try_from(self.gaps.len()).ok().filter(|&n| n > 0)?;
        Some(self.gaps.iter().sum::<Duration>() / n)
    }
}

/// Builds a record while a stream arrives.
pub struct Recorder {
    rec: RequestRecord,
    start: Instant,
    last: Option<Instant>,
}

/// The wall clock at `at` (a moment now or earlier), Unix nanoseconds.
fn unix_ns_at(at: Instant) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.saturating_sub(at.elapsed()).as_nanos() as u64
}

impl Recorder {
    /// `start` is when the request was due: TTFT and total count from it.
    pub fn new(approach: Approach, prompt_index: usize, start: Instant) -> Self {
        Self {
            rec: RequestRecord {
                approach,
                prompt_index,
                round: 0,
                start_offset_s: 0.0,
                start_unix_ns: unix_ns_at(start),
                ttft: None,
                gaps: Vec::new(),
                total: None,
                tokens_counted: 0,
                tokens_reported: None,
                app_bytes: 0,
                text: String::new(),
                error: None,
                failure: None,
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
        self.rec.tokens_counted += 1;
        self.rec.text.push_str(text);
    }

    /// Counts a token that carries no text (the reference counted WebTransport's `0:` end
    /// frame as one): the count only, no timing.
    pub fn uncounted_as_text(&mut self) {
        self.rec.tokens_counted += 1;
    }

    pub fn reported(&mut self, tokens: u64) {
        self.rec.tokens_reported = Some(tokens);
    }

    pub fn finish(mut self) -> RequestRecord {
        self.rec.total = Some(self.start.elapsed());
        self.rec
    }

    pub fn fail(mut self, failure: Failure, error: impl std::fmt::Display) -> RequestRecord {
        self.rec.total = Some(self.start.elapsed());
        self.rec.error = Some(error.to_string());
        self.rec.failure = Some(failure);
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

mod secs_vec {
    use serde::Serializer;
    use serde::ser::SerializeSeq;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for d in v {
            seq.serialize_element(&d.as_secs_f64())?;
        }
        seq.end()
    }
}
