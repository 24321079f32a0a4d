//! `sse-h3`: the SSE relay ([`crate::sse_relay`]) over HTTP/3, as browsers reach hosted
//! LLM APIs that offer it. HTTP/3 (the `h3` crate) on QUIC (quinn, through `h3-quinn`) on
//! a UDP port of its own; the same port number on TCP serves the relay over HTTP/2 and
//! HTTP/1.1 with `Alt-Svc: h3=":PORT"`, which is how a client learns of HTTP/3 (those TCP
//! requests are labelled by their version, `sse_h2` or `sse`, never `sse_h3`).
//!
//! Each request's body is read whole (up to `--max-body`), then the relay answers it as it
//! answers HTTP/1.1 and HTTP/2 (same errors, spans labelled by `Version::HTTP_3`, CORS), and
//! each of its body frames (one SSE event per token) goes out as one HTTP/3 DATA frame. A
//! client that goes away mid-answer fails the next write: the answer is dropped, its span
//! ends as aborted and the upstream generation stops. The probe hears each QUIC
//! connection's end (a close span, as for WebTransport).

use crate::http::{Body, BoxError, ConnInfo};
use crate::spans::SpanSink;
use crate::sse_relay::SseRelay;
use crate::stats::Stats;
use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokenwire_probe_common::approach::Transport;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The ALPN of HTTP/3 (RFC 9114).
pub const ALPN_H3: &[&[u8]] = &[b"h3"];

/// The HTTP/3 half of the `sse-h3` companion.
pub struct H3Relay {
    pub relay: SseRelay,
    pub stats: Arc<Stats>,
    pub spans: SpanSink,
    /// Largest request body accepted; past it, the relay's 413.
    pub max_body: usize,
}

impl H3Relay {
    /// Accepts connections until `shutdown`, then gives in-flight answers `grace`.
    pub async fn serve(
        self,
        endpoint: quinn::Endpoint,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let this = Arc::new(self);
        let tracker = TaskTracker::new();
        let local = endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let (this, stop) = (this.clone(), shutdown.clone());
            tracker.spawn(async move {
                let peer = incoming.remote_address();
                if let Err(e) = this.connection(incoming, local, stop).await {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                }
            });
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace period over; closing the remaining HTTP/3 connections");
        }
        endpoint.close(quinn::VarInt::from_u32(0), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    async fn connection(
        self: Arc<Self>,
        incoming: quinn::Incoming,
        local: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<(), BoxError> {
        let conn = incoming.await?;
        self.stats.add_connection();
        let peer = conn.remote_address();
        // The probe hears when the connection is over, however it ends.
        struct Closed(SpanSink, SocketAddr, SocketAddr);
        impl Drop for Closed {
            fn drop(&mut self) {
                self.0.close(Transport::Quic, self.1, self.2);
            }
        }
        let _closed = Closed(self.spans.clone(), peer, local);
        let info = ConnInfo { peer, local };
        let mut h3 =
            h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(conn)).await?;
        // The connection's requests: dropping `h3` closes the QUIC connection, so it lives
        // until they are done.
        let running = TaskTracker::new();
        let ended = loop {
            let resolver = tokio::select! {
                _ = shutdown.cancelled() => {
                    // GOAWAY: no new requests; those running finish within the grace.
                    break h3.shutdown(0).await.map_err(BoxError::from);
                }
                r = h3.accept() => match r {
                    Ok(Some(r)) => r,
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e.into()),
                },
            };
            let this = self.clone();
            running.spawn(async move {
                if let Err(e) = this.request(resolver, info).await {
                    tracing::debug!(peer = %info.peer, error = %e, "HTTP/3 request ended early");
                }
            });
        };
        running.close();
        running.wait().await;
        drop(h3);
        ended
    }

    async fn request<C>(
        &self,
        resolver: h3::server::RequestResolver<C, Bytes>,
        conn: ConnInfo,
    ) -> Result<(), BoxError>
    where
        C: h3::quic::Connection<Bytes>,
    {
        let (head, mut stream) = resolver.resolve_request().await?;
        let mut body = BytesMut::new();
        let mut too_large = false;
        while let Some(mut chunk) = stream.recv_data().await? {
            if body.len() + chunk.remaining() > self.max_body {
                too_large = true;
                break;
            }
            body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
        }
        let mut req: Request<Full<Bytes>> = head.map(|()| Full::new(body.freeze()));
        if too_large {
            // Declared over the limit, the relay refuses it (413) as it refuses an HTTP/1.1
            // body over the limit, under a span of its own.
            *req.body_mut() = Full::new(Bytes::new());
            req.headers_mut().insert(
                header::CONTENT_LENGTH,
                header::HeaderValue::from(self.max_body + 1),
            );
        }
        let answer: Response<Body> = self.relay.handle(req, conn).await;
        let (parts, mut body) = answer.into_parts();
        stream
            .send_response(Response::from_parts(parts, ()))
            .await?;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        stream.send_data(data).await?;
                    }
                }
                Err(e) => {
                    stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    return Err(e);
                }
            }
        }
        stream.finish().await?;
        Ok(())
    }
}
