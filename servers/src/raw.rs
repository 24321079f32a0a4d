//! `raw`: a TLS reverse proxy to the upstream's whole Ollama API. Every upstream body
//! frame leaves as soon as it arrives (no buffering), and the tokens in the streams it
//! relays are counted from the plaintext it sees.

use crate::http::{Body, BodyError, BoxError, ConnInfo, read_body, response};
use crate::protocol::ollama_stream::{
    LineSplitter, StreamItem, parse_ndjson_line, parse_openai_data,
};
use crate::protocol::sse;
use crate::spans::{Outcome, RequestSpan, SpanSink};
use crate::stats::{Active, Stats};
use crate::upstream::{Upstream, error_chain};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::sync::Arc;
use tokenwire_probe_common::approach::Approach;

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

#[derive(Clone)]
pub struct RawProxy {
    upstream: Upstream,
    stats: Arc<Stats>,
    max_body: usize,
    spans: SpanSink,
}

impl RawProxy {
    pub fn new(upstream: Upstream, stats: Arc<Stats>, max_body: usize, spans: SpanSink) -> Self {
        Self {
            upstream,
            stats,
            max_body,
            spans,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let mut span = Some(self.spans.request(Approach::Raw, conn.peer, conn.local));
        match self.proxy(req, conn, &mut span).await {
            Ok(streaming) => streaming,
            Err(resp) => {
                if let Some(s) = span.as_mut() {
                    s.finish(Outcome::Error);
                }
                resp
            }
        }
    }

    /// The streaming response (which takes the span along), or an error response when the
    /// request failed before it.
    async fn proxy(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
        span: &mut Option<RequestSpan>,
    ) -> Result<Response<Body>, Response<Body>> {
        self.stats.add_request();
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let uri = match self.upstream.uri(&path) {
            Ok(u) => u,
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
        };
        // Prompts are small: take the whole body so an oversized one gets a clean 413.
        let body = match read_body(Request::from_parts(parts.clone(), body), self.max_body).await {
            Ok(b) => b,
            Err(e @ BodyError::TooLarge(_)) => {
                return Err(error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()));
            }
            Err(e) => return Err(error(StatusCode::BAD_REQUEST, &e.to_string())),
        };
        let mut up = Request::new(Full::new(body));
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = uri;
        copy_headers(&parts.headers, up.headers_mut());
        if let Ok(host) = header::HeaderValue::from_str(self.upstream.authority()) {
            up.headers_mut().insert(header::HOST, host);
        }
        let resp = match self.upstream.client().request(up).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(peer = %conn.peer, error = %error_chain(&e), "upstream unreachable");
                return Err(error(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream unreachable: {}", error_chain(&e)),
                ));
            }
        };
        let (rparts, rbody) = resp.into_parts();
        let counter = TokenCounter::for_content_type(
            rparts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let chunked = !rparts.headers.contains_key(header::CONTENT_LENGTH);
        let mut out = Response::new(relay_body(RelayState {
            upstream: rbody,
            counter,
            chunked,
            active: Active::new(&self.stats),
            stats: self.stats.clone(),
            conn,
            ended: false,
            span: span.take(),
        }));
        *out.status_mut() = rparts.status;
        copy_headers(&rparts.headers, out.headers_mut());
        Ok(out)
    }
}

fn copy_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::HOST {
            to.append(name.clone(), value.clone());
        }
    }
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": msg }).to_string();
    response(status, "application/json; charset=utf-8", body)
}

/// Passes upstream frames through one for one while counting tokens. If the upstream
/// fails mid-stream, a chunked NDJSON or SSE response ends with an error line/event in the
/// stream's own format; a fixed-length one is cut (the client sees a short body).
struct RelayState {
    upstream: Incoming,
    counter: TokenCounter,
    /// Chunked responses can carry an error line at the end; fixed-length ones cannot.
    chunked: bool,
    active: Active,
    stats: Arc<Stats>,
    conn: ConnInfo,
    ended: bool,
    span: Option<RequestSpan>,
}

fn relay_body(state: RelayState) -> Body {
    let frames = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.ended {
                return None;
            }
            match s.upstream.frame().await {
                None => {
                    s.ended = true;
                    s.active.complete();
                    if let Some(span) = s.span.as_mut() {
                        span.finish(Outcome::Ok);
                    }
                    tracing::debug!(peer = %s.conn.peer, tokens = s.counter.tokens, "relayed");
                    return None;
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    let before = s.counter.tokens;
                    s.counter.feed(&data);
                    s.stats.add_tokens(s.counter.tokens - before);
                    if let Some(span) = s.span.as_mut() {
                        span.tokens(s.counter.tokens - before);
                        span.bytes(data.len());
                    }
                    return Some((Ok::<_, BoxError>(Frame::data(data)), s));
                }
                Some(Err(e)) => {
                    s.ended = true;
                    let msg = format!("upstream stream failed: {}", error_chain(&e));
                    tracing::warn!(peer = %s.conn.peer, "{msg}");
                    if let Some(span) = s.span.as_mut() {
                        span.finish(Outcome::Error);
                    }
                    return match (s.chunked, s.counter.error_frame(&msg)) {
                        (true, Some(bytes)) => Some((Ok(Frame::data(bytes)), s)),
                        _ => Some((Err(msg.into()), s)),
                    };
                }
            }
        }
    });
    StreamBody::new(frames.boxed()).boxed_unsync()
}

/// Counts content tokens in a relayed NDJSON or SSE stream.
struct TokenCounter {
    format: Format,
    tokens: u64,
}

enum Format {
    Ndjson(LineSplitter),
    Sse(sse::Parser),
    Opaque,
}

impl TokenCounter {
    fn for_content_type(ct: Option<&str>) -> Self {
        let ct = ct.unwrap_or("").to_ascii_lowercase();
        let format = if ct.starts_with("application/x-ndjson") {
            Format::Ndjson(LineSplitter::new(1 << 20))
        } else if ct.starts_with("text/event-stream") {
            Format::Sse(sse::Parser::with_max_line(1 << 20))
        } else {
            Format::Opaque
        };
        Self { format, tokens: 0 }
    }

    fn feed(&mut self, data: &[u8]) {
        let tokens = &mut self.tokens;
        match &mut self.format {
            Format::Ndjson(lines) => {
                let r = lines.feed(data, |line| {
                    if let Ok(StreamItem::Token(_)) = parse_ndjson_line(line) {
                        *tokens += 1;
                    }
                });
                if r.is_err() {
                    self.format = Format::Opaque; // stop counting, keep relaying
                }
            }
            Format::Sse(parser) => match parser.feed(data) {
                Ok(events) => {
                    *tokens += events
                        .iter()
                        .filter(|e| matches!(parse_openai_data(&e.data), Ok(StreamItem::Token(_))))
                        .count() as u64;
                }
                Err(_) => self.format = Format::Opaque,
            },
            Format::Opaque => {}
        }
    }

    /// An error line in the stream's format, if it has one.
    fn error_frame(&self, msg: &str) -> Option<Bytes> {
        match self.format {
            Format::Ndjson(_) => {
                let mut line = serde_json::json!({ "error": msg }).to_string().into_bytes();
                line.push(b'\n');
                Some(line.into())
            }
            Format::Sse(_) => {
                let data = serde_json::json!({ "error": { "message": msg } }).to_string();
                Some(sse::encode_data(&data))
            }
            Format::Opaque => None,
        }
    }
}
