//! `sse`: the reference study's HTTP SSE relay. `POST /chat` with `{"message": "..."}`
//! answers `text/event-stream` with one `data: <token>` event per token (multi-line tokens
//! as several `data:` lines; with `--coalesce-ms`, one event per batch of tokens,
//! [`crate::coalesce`]) and `data: [DONE]` at the end; upstream failures during the
//! stream become an `event: error`. `GET /` is the browser page ([`crate::page`]).
//!
//! The same relay serves `sse-h2`: on its own listener, which offers `h2` by ALPN; each
//! request is labelled by the HTTP version it came in (`sse` for HTTP/1.x, `sse-h2` for
//! HTTP/2). Pages from a loopback origin may read its answers across origins (the page
//! is served from the `sse` listener, another port). It serves `sse-h3` too: HTTP/3
//! requests reach it through [`crate::h3_relay`] (labelled `sse-h3`), and the same port's
//! TCP listener answers with `Alt-Svc`.

use crate::coalesce::{Coalescer, Piece};
use crate::http::{Body, BodyError, BoxError, ConnInfo, json_error, read_body, response};
use crate::protocol::sse;
use crate::spans::{Outcome, RequestSpan, SpanSink};
use crate::stats::{Active, Stats};
use crate::upstream::{ChatStream, Upstream};
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde::Deserialize;
use std::sync::Arc;
use tokenwire_probe_common::approach::{Approach, Transport};

#[derive(Clone)]
pub struct SseRelay {
    upstream: Upstream,
    model: String,
    stats: Arc<Stats>,
    max_body: usize,
    spans: SpanSink,
    /// The browser page, rendered once (each answer shares its bytes).
    page: Option<bytes::Bytes>,
    /// Tokens arriving within this long of the first unsent one leave in one event.
    coalesce: std::time::Duration,
    /// `Alt-Svc` on every answer: where the same relay speaks HTTP/3 (`sse-h3`'s TCP
    /// listener).
    alt_svc: Option<header::HeaderValue>,
}

#[derive(Deserialize)]
struct ChatBody {
    message: Option<String>,
}

impl SseRelay {
    pub fn new(
        upstream: Upstream,
        model: String,
        stats: Arc<Stats>,
        max_body: usize,
        spans: SpanSink,
    ) -> Self {
        Self {
            upstream,
            model,
            stats,
            max_body,
            spans,
            page: None,
            coalesce: std::time::Duration::ZERO,
            alt_svc: None,
        }
    }

    /// Sends the tokens that arrive within `window` of the first unsent one as one event
    /// ([`crate::coalesce`]).
    pub fn with_coalescing(mut self, window: std::time::Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// Advertises HTTP/3 on UDP `port` of the same host (`Alt-Svc: h3=":PORT"`).
    pub fn with_alt_svc(mut self, port: u16) -> Self {
        self.alt_svc = header::HeaderValue::from_str(&format!("h3=\":{port}\"; ma=86400")).ok();
        self
    }

    /// Serves `html` at `GET /`.
    pub fn with_page(mut self, html: String) -> Self {
        self.page = Some(bytes::Bytes::from(html));
        self
    }

    /// Answers one request, over HTTP/1.1 and HTTP/2 (hyper's bodies) or HTTP/3 (the
    /// `sse-h3` listener reads the body first, [`crate::h3_relay`]).
    pub async fn handle<B>(&self, req: Request<B>, conn: ConnInfo) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        if let Some(page) = &self.page
            && req.uri().path() == "/"
            && matches!(*req.method(), Method::GET | Method::HEAD)
        {
            return self.page(page, conn);
        }
        let approach = match req.version() {
            http::Version::HTTP_3 => Approach::SseH3,
            http::Version::HTTP_2 => Approach::SseH2,
            _ => Approach::Sse,
        };
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .filter(|o| {
                o.to_str()
                    .is_ok_and(tokenwire_probe_common::origin::loopback)
            })
            .cloned();
        let span = self.spans.request(approach, conn.peer, conn.local);
        let mut r = self.answer(req, conn, span).await;
        if let Some(origin) = origin {
            r.headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        }
        if let Some(alt_svc) = &self.alt_svc {
            r.headers_mut().insert(header::ALT_SVC, alt_svc.clone());
        }
        r
    }

    async fn answer<B>(
        &self,
        req: Request<B>,
        conn: ConnInfo,
        mut span: RequestSpan,
    ) -> Response<Body>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        match self.relay(req, conn).await {
            Ok(stream) => {
                let mut r = Response::new(events(
                    Coalescer::new(stream, self.coalesce),
                    Active::new(&self.stats),
                    self.stats.clone(),
                    span,
                ));
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/event-stream"),
                );
                h.insert(
                    header::CACHE_CONTROL,
                    header::HeaderValue::from_static("no-cache"),
                );
                r
            }
            Err(resp) => {
                span.finish(Outcome::Error);
                resp
            }
        }
    }

    /// The page, under a span of its own (approach `page`), on a connection of its own:
    /// `Connection: close` makes the browser open another for the SSE requests that
    /// follow, so the page's bytes are never counted as theirs (the probe cuts periods when
    /// a span arrives, and the whole page is on the wire by then).
    fn page(&self, page: &bytes::Bytes, conn: ConnInfo) -> Response<Body> {
        let mut span = self
            .spans
            .request_labelled("page", Transport::Tls, conn.peer, conn.local);
        span.bytes(page.len());
        span.finish(Outcome::Ok);
        let mut r = response(StatusCode::OK, "text/html; charset=utf-8", page.clone());
        // The page carries the certificate's hash, which changes when it is renewed.
        let h = r.headers_mut();
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        r
    }

    /// The upstream's token stream, or the error response.
    async fn relay<B>(&self, req: Request<B>, conn: ConnInfo) -> Result<ChatStream, Response<Body>>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        self.stats.add_request();
        if req.uri().path() != Approach::Sse.path() {
            return Err(json_error(
                StatusCode::NOT_FOUND,
                "not found: the SSE relay serves POST /chat (and the page at GET /)",
            ));
        }
        if req.method() != Method::POST {
            let mut r = json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST /chat",
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return Err(r);
        }
        let body = match read_body(req, self.max_body).await {
            Ok(b) => b,
            Err(e @ BodyError::TooLarge(_)) => {
                return Err(json_error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string()));
            }
            Err(e) => return Err(json_error(StatusCode::BAD_REQUEST, &e.to_string())),
        };
        let message = match serde_json::from_slice::<ChatBody>(&body) {
            Ok(ChatBody { message: Some(m) }) if !m.trim().is_empty() => m,
            Ok(_) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    "empty message: send {\"message\": \"...\"}",
                ));
            }
            Err(e) => {
                return Err(json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid JSON body: {e}"),
                ));
            }
        };
        self.upstream
            .chat(&self.model, &message)
            .await
            .map_err(|e| {
                tracing::warn!(peer = %conn.peer, error = %e, "upstream request failed");
                json_error(StatusCode::BAD_GATEWAY, &e.to_string())
            })
    }
}

/// One SSE event (one body frame, one flush) per upstream token, or per batch of tokens
/// when coalescing. The span ends with the last event, or as aborted when the body is
/// dropped (the client went away).
fn events(stream: Coalescer, active: Active, stats: Arc<Stats>, span: RequestSpan) -> Body {
    let frames = futures_util::stream::unfold(
        (Some(stream), active, stats, span),
        |(stream, mut active, stats, mut span)| async move {
            let mut s = stream?;
            let (bytes, outcome) = match s.next().await {
                Some(Ok(Piece::Tokens { text, sent_unix_ns })) => {
                    let n = sent_unix_ns.len() as u64;
                    stats.add_tokens(n);
                    let bytes = sse::encode_data(&text);
                    // Handed to hyper now, which writes it at once (one frame, one flush).
                    for sent in sent_unix_ns {
                        stats.relayed_at(sent);
                    }
                    span.tokens(n);
                    span.bytes(bytes.len());
                    return Some((
                        Ok::<_, BoxError>(Frame::data(bytes)),
                        (Some(s), active, stats, span),
                    ));
                }
                Some(Ok(Piece::Done)) => {
                    active.complete();
                    (sse::encode_data("[DONE]"), Outcome::Ok)
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream failed mid-stream");
                    (
                        sse::encode_event(Some("error"), &e.to_string()),
                        Outcome::Error,
                    )
                }
                None => return None,
            };
            // The last event: drop the upstream stream now, end after this frame.
            span.bytes(bytes.len());
            span.finish(outcome);
            Some((Ok(Frame::data(bytes)), (None, active, stats, span)))
        },
    );
    StreamBody::new(frames.boxed()).boxed_unsync()
}
