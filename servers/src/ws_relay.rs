//! `ws`: the WebSocket relay, as chat front ends stream. `GET /ws` upgrades the connection
//! (RFC 6455, over TLS); then each prompt is one text message `{"message": "..."}`, and its
//! answer one text message per token (with `--coalesce-ms`, per batch of tokens,
//! [`crate::coalesce`]) and an empty text message at the end. One prompt at a time per
//! socket; the next may follow on the same socket (`--reuse`).
//!
//! Failures close the socket with a close code and the reason: 1007 for a prompt that is
//! not `{"message": "..."}` with some text, 1003 for a binary message, 1008 for a message
//! sent while an answer streams, 1009 (tungstenite's) for one over the limit, 1011 when the
//! upstream fails, 1001 when the server shuts down. A client that goes away mid-answer
//! ends its request as aborted.
//!
//! hyper answers the upgrade and then lets go of the connection, so the relay keeps the
//! connection's [`ConnLife`] until the socket is done: the probe's close span comes when
//! the TCP connection really ends.

use crate::coalesce::{Coalescer, Piece};
use crate::http::{Body, ConnInfo, ConnLife, full, json_error};
use crate::spans::{Outcome, RequestSpan, SpanSink};
use crate::stats::{Active, Stats};
use crate::upstream::Upstream;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use tokenwire_probe_common::approach::Approach;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_util::sync::CancellationToken;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

#[derive(Clone)]
pub struct WsRelay {
    upstream: Upstream,
    model: String,
    stats: Arc<Stats>,
    /// Largest message (prompt) accepted.
    max_message: usize,
    spans: SpanSink,
    /// Sockets close (1001) when it fires, between answers.
    shutdown: CancellationToken,
    /// Tokens arriving within this long of the first unsent one leave in one message.
    coalesce: Duration,
}

#[derive(Deserialize)]
struct Prompt {
    message: Option<String>,
}

/// Why a socket ends, as its close frame says.
struct Close(CloseCode, String);

impl WsRelay {
    pub fn new(
        upstream: Upstream,
        model: String,
        stats: Arc<Stats>,
        max_message: usize,
        spans: SpanSink,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            upstream,
            model,
            stats,
            max_message,
            spans,
            shutdown,
            coalesce: Duration::ZERO,
        }
    }

    /// Sends the tokens that arrive within `window` of the first unsent one as one
    /// message ([`crate::coalesce`]).
    pub fn with_coalescing(mut self, window: Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// Answers the upgrade request and takes the socket over; anything else is refused.
    pub async fn handle(&self, mut req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        if req.uri().path() != Approach::Ws.path() {
            return json_error(
                StatusCode::NOT_FOUND,
                "not found: the WebSocket relay serves GET /ws (an upgrade)",
            );
        }
        let key = match upgrade_key(&req) {
            Ok(key) => key,
            Err(resp) => return *resp,
        };
        let life = req.extensions().get::<ConnLife>().cloned();
        let upgrade = hyper::upgrade::on(&mut req);
        let relay = self.clone();
        tokio::spawn(async move {
            let _life = life;
            match upgrade.await {
                Ok(upgraded) => {
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(relay.max_message))
                        .max_frame_size(Some(relay.max_message));
                    let socket = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    relay.socket(socket, conn).await;
                }
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "WebSocket upgrade failed")
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = r.headers_mut();
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&key) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }

    /// Prompts and their answers, one after another, until the client closes, a failure
    /// closes the socket, or the server shuts down.
    async fn socket(&self, mut ws: Socket, conn: ConnInfo) {
        let end = loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = self.shutdown.cancelled() => {
                    break Some(Close(CloseCode::Away, "the server is shutting down".into()));
                }
            };
            let text = match msg {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Binary(_))) => {
                    break Some(Close(
                        CloseCode::Unsupported,
                        "prompts are text messages: {\"message\": \"...\"}".into(),
                    ));
                }
                Some(Ok(_)) => continue, // pings are answered by tungstenite
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    break Some(Close(CloseCode::Size, e.to_string()));
                }
                Some(Err(tungstenite::Error::Utf8(e))) => {
                    break Some(Close(CloseCode::Invalid, format!("text is not UTF-8: {e}")));
                }
                Some(Err(e)) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "WebSocket read failed");
                    break None;
                }
            };
            let span = self.spans.request(Approach::Ws, conn.peer, conn.local);
            match self.answer(&mut ws, text.as_str(), span, conn).await {
                Ok(()) => {}
                Err(close) => break close,
            }
        };
        if let Some(Close(code, reason)) = end {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(Some(frame))).await;
        }
    }

    /// Streams one prompt's answer. `Err(Some(..))` closes the socket with that frame,
    /// `Err(None)` drops it (the client is gone).
    async fn answer(
        &self,
        ws: &mut Socket,
        prompt: &str,
        mut span: RequestSpan,
        conn: ConnInfo,
    ) -> Result<(), Option<Close>> {
        self.stats.add_request();
        let message = match serde_json::from_str::<Prompt>(prompt) {
            Ok(Prompt { message: Some(m) }) if !m.trim().is_empty() => m,
            Ok(_) => {
                span.finish(Outcome::Error);
                let why = "empty message: send {\"message\": \"...\"}";
                return Err(Some(Close(CloseCode::Invalid, why.into())));
            }
            Err(e) => {
                span.finish(Outcome::Error);
                let why = format!("invalid JSON: {e}");
                return Err(Some(Close(CloseCode::Invalid, why)));
            }
        };
        let mut upstream = match self.upstream.chat(&self.model, &message).await {
            Ok(s) => Coalescer::new(s, self.coalesce),
            Err(e) => {
                tracing::warn!(peer = %conn.peer, error = %e, "upstream request failed");
                span.finish(Outcome::Error);
                return Err(Some(Close(CloseCode::Error, e.to_string())));
            }
        };
        let mut active = Active::new(&self.stats);
        loop {
            // The next piece, while watching the client: its close, a vanished socket, or a
            // prompt it should not send yet (pings are answered by tungstenite). The
            // piece's future lives across pings: dropping it mid-batch would lose tokens.
            let piece = {
                let next = upstream.next();
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        p = &mut next => break p,
                        m = ws.next() => match m {
                            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                            Some(Ok(Message::Text(_) | Message::Binary(_))) => {
                                let why = "one prompt at a time: wait for the empty message that ends the answer";
                                return Err(Some(Close(CloseCode::Policy, why.into())));
                            }
                            _ => {
                                tracing::debug!(peer = %conn.peer, "client went away mid-stream");
                                return Err(None);
                            }
                        },
                    }
                }
            };
            match piece {
                Some(Ok(Piece::Tokens { text, sent_unix_ns })) => {
                    let len = text.len();
                    send(ws, Message::text(text)).await?;
                    for sent in &sent_unix_ns {
                        self.stats.relayed_at(*sent);
                    }
                    let n = sent_unix_ns.len() as u64;
                    self.stats.add_tokens(n);
                    span.tokens(n);
                    span.bytes(len);
                }
                Some(Ok(Piece::Done)) => {
                    send(ws, Message::text("")).await?;
                    active.complete();
                    span.finish(Outcome::Ok);
                    return Ok(());
                }
                Some(Err(e)) => {
                    tracing::warn!(peer = %conn.peer, error = %e, "upstream failed mid-stream");
                    span.finish(Outcome::Error);
                    return Err(Some(Close(CloseCode::Error, e.to_string())));
                }
                None => return Err(None),
            }
        }
    }
}

/// One message, written and flushed at once (one TLS record).
async fn send(ws: &mut Socket, msg: Message) -> Result<(), Option<Close>> {
    ws.send(msg).await.map_err(|e| {
        tracing::debug!(error = %e, "client went away mid-stream");
        None
    })
}

/// The `Sec-WebSocket-Accept` of a valid upgrade request, or the answer to an invalid one.
fn upgrade_key(req: &Request<Incoming>) -> Result<String, Box<Response<Body>>> {
    let h = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.method() != Method::GET
        || req.version() != http::Version::HTTP_11
        || !has(header::UPGRADE, "websocket")
        || !has(header::CONNECTION, "upgrade")
    {
        let mut r = json_error(
            StatusCode::UPGRADE_REQUIRED,
            "a WebSocket endpoint: GET /ws with Upgrade: websocket (HTTP/1.1)",
        );
        r.headers_mut().insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        return Err(Box::new(r));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        let mut r = json_error(
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Version must be 13 (RFC 6455)",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            header::HeaderValue::from_static("13"),
        );
        return Err(Box::new(r));
    }
    match h.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) if !key.is_empty() => {
            Ok(tungstenite::handshake::derive_accept_key(key.as_bytes()))
        }
        _ => Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        ))),
    }
}
