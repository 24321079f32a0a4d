//! `sse`: the reference study's HTTP SSE relay. `POST /chat` with `{"message": "..."}`
//! answers `text/event-stream` with one `data: <token>` event per token (multi-line tokens
//! as several `data:` lines) and `data: [DONE]` at the end; upstream failures during the
//! stream become an `event: error`.

use crate::http::{Body, BodyError, BoxError, ConnInfo, read_body, response};
use crate::protocol::sse;
use crate::stats::{Active, Stats};
use crate::upstream::{ChatEvent, ChatStream, Upstream};
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Clone)]
pub struct SseRelay {
    upstream: Upstream,
    model: String,
    stats: Arc<Stats>,
    max_body: usize,
}

#[derive(Deserialize)]
struct ChatBody {
    message: Option<String>,
}

impl SseRelay {
    pub fn new(upstream: Upstream, model: String, stats: Arc<Stats>, max_body: usize) -> Self {
        Self {
            upstream,
            model,
            stats,
            max_body,
        }
    }

    pub async fn handle(&self, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        self.stats.add_request();
        if req.uri().path() != "/chat" {
            return error(
                StatusCode::NOT_FOUND,
                "not found: the SSE relay serves POST /chat",
            );
        }
        if req.method() != Method::POST {
            let mut r = error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: use POST /chat",
            );
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
            return r;
        }
        let body = match read_body(req, self.max_body).await {
            Ok(b) => b,
            Err(e @ BodyError::TooLarge(_)) => {
                return error(StatusCode::PAYLOAD_TOO_LARGE, &e.to_string());
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, &e.to_string()),
        };
        let message = match serde_json::from_slice::<ChatBody>(&body) {
            Ok(ChatBody { message: Some(m) }) if !m.trim().is_empty() => m,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "empty message: send {\"message\": \"...\"}",
                );
            }
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("invalid JSON body: {e}")),
        };
        let stream = match self.upstream.chat(&self.model, &message).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %conn.peer, error = %e, "upstream request failed");
                return error(StatusCode::BAD_GATEWAY, &e.to_string());
            }
        };
        let mut r = Response::new(events(stream, Active::new(&self.stats), self.stats.clone()));
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
}

fn error(status: StatusCode, msg: &str) -> Response<Body> {
    response(
        status,
        "application/json",
        serde_json::json!({ "error": msg }).to_string(),
    )
}

/// One SSE event (one body frame, one flush) per upstream token.
fn events(stream: ChatStream, active: Active, stats: Arc<Stats>) -> Body {
    let frames = futures_util::stream::unfold(
        (Some(stream), active, stats),
        |(stream, mut active, stats)| async move {
            let mut s = stream?;
            let bytes = match s.next().await {
                Some(Ok(ChatEvent::Token(t))) => {
                    stats.add_tokens(1);
                    return Some((
                        Ok::<_, BoxError>(Frame::data(sse::encode_data(&t))),
                        (Some(s), active, stats),
                    ));
                }
                Some(Ok(ChatEvent::Done { .. })) => {
                    active.complete();
                    sse::encode_data("[DONE]")
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "upstream failed mid-stream");
                    sse::encode_event(Some("error"), &e.to_string())
                }
                None => return None,
            };
            // The last event: drop the upstream stream now, end after this frame.
            Some((Ok(Frame::data(bytes)), (None, active, stats)))
        },
    );
    StreamBody::new(frames.boxed()).boxed_unsync()
}
