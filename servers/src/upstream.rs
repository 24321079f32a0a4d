//! The companions' view of their upstream (the embedded model or a real Ollama): where it
//! is, and a token stream from its `/api/chat` for the relays.

use crate::http::UpstreamClient;
use crate::protocol::ollama_stream::{LineSplitter, StreamItem, parse_ndjson_line_timed};
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use std::collections::VecDeque;

/// Longest NDJSON line accepted from upstream.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream URL {0:?}: expected http://HOST:PORT (Ollama speaks plain HTTP)")]
    BadUrl(String),
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    #[error("upstream answered {status}: {message}")]
    Status { status: StatusCode, message: String },
    #[error("upstream stream failed: {0}")]
    Body(String),
    #[error("upstream sent a malformed line: {0}")]
    Malformed(String),
    #[error("upstream reported an error: {0}")]
    Reported(String),
    #[error("upstream closed the stream before it was done")]
    EndedEarly,
}

/// An upstream Ollama API.
#[derive(Clone)]
pub struct Upstream {
    scheme_authority: Uri,
    client: UpstreamClient,
}

impl Upstream {
    /// Parses `http://host:port` (a trailing `/` is fine; a path is not); keeps at most
    /// [`crate::http::UPSTREAM_IDLE_MAX`] idle connections.
    pub fn new(url: &str) -> Result<Self, UpstreamError> {
        Self::with_idle_max(url, crate::http::UPSTREAM_IDLE_MAX)
    }

    /// The same, keeping at most `idle_max` idle connections for reuse.
    pub fn with_idle_max(url: &str, idle_max: usize) -> Result<Self, UpstreamError> {
        let bad = || UpstreamError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(bad());
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(bad());
        }
        Ok(Self {
            scheme_authority: uri,
            client: crate::http::upstream_client(idle_max),
        })
    }

    /// The upstream URI for `path_and_query` (which starts with `/`).
    pub fn uri(&self, path_and_query: &str) -> Result<Uri, UpstreamError> {
        let mut parts = self.scheme_authority.clone().into_parts();
        parts.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|_| UpstreamError::BadUrl(path_and_query.to_owned()))?,
        );
        Uri::from_parts(parts).map_err(|_| UpstreamError::BadUrl(path_and_query.to_owned()))
    }

    pub fn authority(&self) -> &str {
        self.scheme_authority.authority().map_or("", |a| a.as_str())
    }

    pub fn client(&self) -> &UpstreamClient {
        &self.client
    }

    /// Starts a streamed `/api/chat` with one user message.
    pub async fn chat(&self, model: &str, prompt: &str) -> Result<ChatStream, UpstreamError> {
        let body = serde_json::json!({
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "stream": true,
        });
        let req = Request::post(self.uri("/api/chat")?)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| UpstreamError::Unreachable(e.to_string()))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| UpstreamError::Unreachable(error_chain(&e)))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned()
                });
            return Err(UpstreamError::Status { status, message });
        }
        Ok(ChatStream {
            body: resp.into_body(),
            lines: LineSplitter::new(MAX_LINE),
            pending: VecDeque::new(),
            done: false,
        })
    }
}

/// The whole source chain of an error, for messages that say what really failed.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// What a chat stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// A piece of text, with when the upstream sent it (its line's `created_at`, Unix
    /// nanoseconds) where the line says: the relays measure their added delay from it.
    Token {
        text: String,
        sent_unix_ns: Option<u64>,
    },
    Done {
        tokens: Option<u64>,
    },
}

/// Tokens of one upstream `/api/chat` stream. Dropping it closes the upstream request,
/// which cancels the generation there.
pub struct ChatStream {
    body: Incoming,
    lines: LineSplitter,
    pending: VecDeque<Result<ChatEvent, UpstreamError>>,
    done: bool,
}

impl ChatStream {
    /// The next event; `None` after `Done` or an error.
    pub async fn next(&mut self) -> Option<Result<ChatEvent, UpstreamError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                if !matches!(ev, Ok(ChatEvent::Token { .. })) {
                    self.done = true;
                    self.pending.clear();
                }
                return Some(ev);
            }
            if self.done {
                return None;
            }
            match self.body.frame().await {
                None => {
                    self.done = true;
                    return Some(Err(UpstreamError::EndedEarly));
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(UpstreamError::Body(error_chain(&e))));
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let pending = &mut self.pending;
                    let fed = self.lines.feed(&data, |line| {
                        if line.iter().all(u8::is_ascii_whitespace) {
                            return;
                        }
                        pending.push_back(match parse_ndjson_line_timed(line) {
                            Ok((StreamItem::Token(text), sent_unix_ns)) => {
                                Ok(ChatEvent::Token { text, sent_unix_ns })
                            }
                            Ok((StreamItem::Done { tokens }, _)) => Ok(ChatEvent::Done { tokens }),
                            Ok((StreamItem::Error(e), _)) => Err(UpstreamError::Reported(e)),
                            Ok((StreamItem::Other, _)) => return,
                            Err(e) => Err(UpstreamError::Malformed(e.to_string())),
                        });
                    });
                    if let Err(e) = fed {
                        self.pending
                            .push_back(Err(UpstreamError::Malformed(e.to_string())));
                    }
                }
            }
        }
    }
}
