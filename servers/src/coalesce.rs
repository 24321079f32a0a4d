//! Token coalescing (`--coalesce-ms`): the relays send the tokens that arrive within a
//! window of the first unsent one as one frame (WebTransport) or one event (SSE), so they
//! share one packet and one acknowledgement. A window of zero sends each token alone, as it
//! arrives. The first token of a batch waits up to the window; the relays' delay histogram
//! (`crate::stats`) records each token's wait when its batch leaves.

use crate::upstream::{ChatEvent, ChatStream, UpstreamError};
use std::time::Duration;

/// What a relay writes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// One or more tokens' text, joined, and when the upstream sent each of them.
    Tokens {
        text: String,
        sent_unix_ns: Vec<Option<u64>>,
    },
    /// The upstream's end.
    Done,
}

/// An upstream token stream read in batches.
pub struct Coalescer {
    stream: ChatStream,
    window: Duration,
    /// The end or error that closed the previous batch, sent after it.
    held: Option<Result<ChatEvent, UpstreamError>>,
}

impl Coalescer {
    pub fn new(stream: ChatStream, window: Duration) -> Self {
        Self {
            stream,
            window,
            held: None,
        }
    }

    /// The next piece; `None` when the upstream stream is over. Cancelling it mid-batch
    /// drops that batch: the relays cancel it only when their client has gone.
    pub async fn next(&mut self) -> Option<Result<Piece, UpstreamError>> {
        let first = match self.held.take() {
            Some(ev) => ev,
            None => self.stream.next().await?,
        };
        let (mut text, sent) = match first {
            Ok(ChatEvent::Token { text, sent_unix_ns }) => (text, sent_unix_ns),
            Ok(ChatEvent::Done { .. }) => return Some(Ok(Piece::Done)),
            Err(e) => return Some(Err(e)),
        };
        let mut sent_unix_ns = vec![sent];
        if !self.window.is_zero() {
            let deadline = tokio::time::Instant::now() + self.window;
            while let Ok(ev) = tokio::time::timeout_at(deadline, self.stream.next()).await {
                match ev {
                    Some(Ok(ChatEvent::Token {
                        text: more,
                        sent_unix_ns: at,
                    })) => {
                        text.push_str(&more);
                        sent_unix_ns.push(at);
                    }
                    // The end goes right after this batch: no reason to wait for it.
                    Some(other) => {
                        self.held = Some(other);
                        break;
                    }
                    None => break,
                }
            }
        }
        Some(Ok(Piece::Tokens { text, sent_unix_ns }))
    }
}
