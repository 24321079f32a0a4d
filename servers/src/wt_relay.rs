//! `wt`: the reference study's WebTransport relay. One bidirectional stream per prompt: the
//! client writes `<len>:<prompt>` and finishes; the server writes each token as
//! `<len>:<token>` (with `--coalesce-ms`, each batch of tokens as one frame,
//! [`crate::coalesce`]), then an empty frame `0:`, then finishes. Bad frames, oversized frames,
//! stalled clients and upstream failures reset that stream with an application error code
//! ([`codes`]); the session and its other streams carry on.

use crate::coalesce::{Coalescer, Piece};
use crate::logging::RateLimited;
use crate::protocol::framing::{FrameDecoder, FrameError, encode};
use crate::spans::{Outcome, RequestSpan, SpanSink};
use crate::stats::{Active, Stats};
use crate::upstream::Upstream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokenwire_probe_common::approach::{Approach, Transport};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::{Endpoint, VarInt};

/// WebTransport application error codes the relay resets streams with.
pub mod codes {
    /// The prompt frame's length prefix is not `<decimal digits>:`, the prompt is not
    /// UTF-8, is empty, or bytes follow it.
    pub const BAD_FRAME: u32 = 0x01;
    /// The prompt frame is longer than the limit (1 MiB by default).
    pub const FRAME_TOO_LARGE: u32 = 0x02;
    /// The prompt did not arrive whole within the stall timeout.
    pub const STALLED: u32 = 0x03;
    /// The upstream could not be reached or failed mid-stream.
    pub const UPSTREAM_FAILED: u32 = 0x04;
    /// The server is shutting down.
    pub const SHUTTING_DOWN: u32 = 0x05;
}

/// The URL path sessions must ask for.
pub const PATH: &str = Approach::Wt.path();

/// Sessions open at once by default (`--max-sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;
/// Streams running at once on one session (quinn's default for bidirectional streams).
pub const DEFAULT_MAX_STREAMS_PER_SESSION: u32 = 100;

#[derive(Clone)]
pub struct WtRelay {
    upstream: Upstream,
    model: String,
    stats: Arc<Stats>,
    max_frame: usize,
    stall: Duration,
    spans: SpanSink,
    /// Past this many open sessions, a new one is refused with 429.
    max_sessions: usize,
    sessions: Arc<AtomicUsize>,
    /// Tokens arriving within this long of the first unsent one leave in one frame.
    coalesce: Duration,
    /// Refused and failed sessions: a warning a second at most, under load.
    refused: Arc<RateLimited>,
    failed: Arc<RateLimited>,
}

/// One open session, counted while it lives.
struct SessionSlot(Arc<AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WtRelay {
    pub fn new(
        upstream: Upstream,
        model: String,
        stats: Arc<Stats>,
        max_frame: usize,
        stall: Duration,
        spans: SpanSink,
    ) -> Self {
        Self {
            upstream,
            model,
            stats,
            max_frame,
            stall,
            spans,
            max_sessions: DEFAULT_MAX_SESSIONS,
            sessions: Arc::new(AtomicUsize::new(0)),
            coalesce: Duration::ZERO,
            refused: Arc::new(RateLimited::new(Duration::from_secs(1))),
            failed: Arc::new(RateLimited::new(Duration::from_secs(1))),
        }
    }

    /// Refuses sessions past `max` open at once (429 to the CONNECT request).
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Sends the tokens that arrive within `window` of the first unsent one as one frame
    /// ([`crate::coalesce`]).
    pub fn with_coalescing(mut self, window: Duration) -> Self {
        self.coalesce = window;
        self
    }

    /// Accepts sessions until `shutdown`, then gives in-flight streams `grace` to finish.
    pub async fn serve(
        self,
        endpoint: Endpoint<Server>,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let tracker = TaskTracker::new();
        // The address spans name (unspecified for a wildcard bind: the probe matches the
        // port then).
        let local = endpoint
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = endpoint.accept() => i,
            };
            let relay = self.clone();
            let tracker2 = tracker.clone();
            let shutdown2 = shutdown.clone();
            tracker.spawn(async move {
                let peer = incoming.remote_address();
                if let Err(e) = relay.session(incoming, local, tracker2, shutdown2).await {
                    relay.failed.warn(|held_back| {
                        tracing::warn!(%peer, error = %e, held_back, "WebTransport session failed to open");
                    });
                }
            });
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("shutdown grace period over; closing the remaining sessions");
        }
        endpoint.close(VarInt::from_u32(0), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    async fn session(
        &self,
        incoming: wtransport::endpoint::IncomingSession,
        local: SocketAddr,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<(), crate::http::BoxError> {
        let request = incoming.await?;
        if request.path() != PATH {
            tracing::debug!(path = request.path(), "session for an unknown path");
            request.not_found().await;
            return Ok(());
        }
        let slot = SessionSlot(self.sessions.clone());
        let open = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        if open > self.max_sessions {
            let peer = request.remote_address();
            self.refused.warn(|held_back| {
                tracing::warn!(%peer, open, max = self.max_sessions, held_back, "WebTransport session refused (429): too many open sessions");
            });
            request.too_many_requests().await;
            drop(slot);
            return Ok(());
        }
        let conn = request.accept().await?;
        self.stats.add_connection();
        let peer = conn.remote_address();
        // The probe hears when the session is over, however it ends.
        struct Closed(SpanSink, SocketAddr, SocketAddr);
        impl Drop for Closed {
            fn drop(&mut self) {
                self.0.close(Transport::Quic, self.1, self.2);
            }
        }
        let _closed = Closed(self.spans.clone(), peer, local);
        let _slot = slot;
        loop {
            let (send, recv) = tokio::select! {
                // Stop taking new streams; the tracker waits for the running ones.
                _ = shutdown.cancelled() => return Ok(()),
                s = conn.accept_bi() => match s {
                    Ok(s) => s,
                    // The client closed the session, or it timed out: its normal end.
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "session ended");
                        return Ok(());
                    }
                },
            };
            let relay = self.clone();
            // Each stream holds the session, so it outlives this loop during shutdown.
            let session = conn.clone();
            tracker.spawn(async move {
                let span = relay.spans.request(Approach::Wt, peer, local);
                relay.stream(send, recv, peer, span).await;
                drop(session);
            });
        }
    }

    async fn stream(
        &self,
        mut send: wtransport::SendStream,
        mut recv: wtransport::RecvStream,
        peer: SocketAddr,
        mut span: RequestSpan,
    ) {
        self.stats.add_request();
        let mut active = Active::new(&self.stats);
        let prompt =
            match tokio::time::timeout(self.stall, read_prompt(&mut recv, self.max_frame)).await {
                Ok(Ok(p)) => p,
                Ok(Err(code)) => return reject(send, recv, code, peer, span),
                Err(_) => return reject(send, recv, codes::STALLED, peer, span),
            };
        let mut upstream = match self.upstream.chat(&self.model, &prompt).await {
            Ok(s) => Coalescer::new(s, self.coalesce),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "upstream request failed");
                return reject(send, recv, codes::UPSTREAM_FAILED, peer, span);
            }
        };
        loop {
            let ev = tokio::select! {
                ev = upstream.next() => ev,
                // The client stopped reading or vanished: drop the upstream stream at once.
                e = send.stopped() => {
                    tracing::debug!(%peer, error = %e, "client went away mid-stream");
                    return;
                }
            };
            let written = match ev {
                Some(Ok(Piece::Tokens { text, sent_unix_ns })) => {
                    let frame = encode(text.as_bytes());
                    let r = send.write_all(&frame).await;
                    if r.is_ok() {
                        for sent in &sent_unix_ns {
                            self.stats.relayed_at(*sent);
                        }
                        let n = sent_unix_ns.len() as u64;
                        self.stats.add_tokens(n);
                        span.tokens(n);
                        span.bytes(frame.len());
                    }
                    r
                }
                Some(Ok(Piece::Done)) => {
                    // finish() resolves once the client has acknowledged everything; a client
                    // that vanished would hold this task until the idle timeout.
                    let end = encode(b"");
                    let r = send.write_all(&end).await;
                    if r.is_ok() {
                        active.complete();
                        span.bytes(end.len());
                        span.finish(Outcome::Ok);
                        let _ = tokio::time::timeout(self.stall, send.finish()).await;
                    }
                    return;
                }
                Some(Err(e)) => {
                    tracing::warn!(%peer, error = %e, "upstream failed mid-stream");
                    return reject(send, recv, codes::UPSTREAM_FAILED, peer, span);
                }
                None => return,
            };
            if let Err(e) = written {
                tracing::debug!(%peer, error = %e, "client went away mid-stream");
                return;
            }
        }
    }
}

/// Reads one prompt frame: the whole frame, nothing after it.
async fn read_prompt(recv: &mut wtransport::RecvStream, max: usize) -> Result<String, u32> {
    let mut dec = FrameDecoder::new(max);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match dec.next_frame() {
            Ok(Some(frame)) => {
                if dec.buffered() > 0 {
                    return Err(codes::BAD_FRAME);
                }
                let prompt = String::from_utf8(frame.to_vec()).map_err(|_| codes::BAD_FRAME)?;
                if prompt.trim().is_empty() {
                    return Err(codes::BAD_FRAME);
                }
                return Ok(prompt);
            }
            Ok(None) => {}
            Err(FrameError::TooLarge { .. }) => return Err(codes::FRAME_TOO_LARGE),
            Err(FrameError::BadPrefix(_)) => return Err(codes::BAD_FRAME),
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.extend(&buf[..n]),
            // Finished before a whole frame arrived, or the stream failed.
            Ok(None) | Err(_) => return Err(codes::BAD_FRAME),
        }
    }
}

fn reject(
    mut send: wtransport::SendStream,
    recv: wtransport::RecvStream,
    code: u32,
    peer: SocketAddr,
    mut span: RequestSpan,
) {
    span.finish(Outcome::Error);
    tracing::debug!(%peer, code, "resetting stream");
    let _ = send.reset(VarInt::from_u32(code));
    recv.stop(VarInt::from_u32(code));
}
