//! What the HTTP servers (model, raw proxy, SSE relay over HTTP/1.1 and HTTP/2, WebSocket
//! relay) share: the accept loop with TCP_NODELAY, optional TLS, HTTP/1.1 (with upgrades)
//! or HTTP/2 as the client speaks, connection counting and graceful shutdown, and small
//! response and body helpers.

use crate::spans::SpanSink;
use crate::stats::Stats;
use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokenwire_probe_common::approach::Transport;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: a whole buffer or a stream of frames.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// How long a TLS handshake may take before the connection is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Addresses of the connection a request arrived on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

/// A JSON error answer, `{"error": msg}` (the relays' refusals).
pub fn json_error(status: StatusCode, msg: &str) -> Response<Body> {
    response(
        status,
        "application/json",
        serde_json::json!({ "error": msg }).to_string(),
    )
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    #[error("reading the request body: {0}")]
    Read(BoxError),
}

/// Reads a whole request body, refusing more than `limit` bytes (a declared
/// Content-Length over the limit is refused before reading anything).
pub async fn read_body<B>(req: http::Request<B>, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    let mut body = req.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|e| BodyError::Read(e.into()))?.into_data() {
            if out.len() + data.len() > limit {
                return Err(BodyError::TooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.into())
}

/// How an HTTP server takes its connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// TLS, or plain HTTP.
    pub tls: Option<TlsAcceptor>,
    /// Where each connection's close span goes.
    pub spans: SpanSink,
    /// Connections open at once; each one past it gets 503 to every request, with
    /// `Connection: close` and `Retry-After: 1`.
    pub max_connections: usize,
    /// `TCP_NOTSENT_LOWAT` of each accepted connection, bytes (`None`: the kernel's).
    pub notsent_lowat: Option<u32>,
}

/// Connections each TLS companion holds open at once by default (`--max-connections`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The answer to every request on a connection past the limit.
fn busy(open: usize, max: usize) -> Response<Body> {
    let mut r = response(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        serde_json::json!({
            "error": format!("server busy: {open} connections open, at most {max}")
        })
        .to_string(),
    );
    let h = r.headers_mut();
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    h.insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}

/// One open connection, counted while it lives.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A connection's life: while a clone is held, it counts as open, and when the last one
/// goes, its close span is sent. Every request carries one in its extensions, so a
/// handler that takes the connection over (a WebSocket upgrade, after which hyper lets go
/// of it) keeps it open for as long as it uses it.
#[derive(Clone)]
pub struct ConnLife(#[allow(dead_code)] Arc<LifeInner>);

struct LifeInner {
    _slot: Slot,
    spans: SpanSink,
    info: ConnInfo,
}

impl Drop for LifeInner {
    fn drop(&mut self) {
        // Tell the probe when the connection is over, however it ends.
        self.spans
            .close(Transport::Tls, self.info.peer, self.info.local);
    }
}

/// Serves HTTP/1.1 and HTTP/2 (by what the client's first bytes are; under TLS, what ALPN
/// chose) on `listener` until `shutdown` fires, then lets in-flight requests
/// finish for up to `grace` and closes the rest. Each connection's end is a close span;
/// connections past the limit are answered 503 ([`ServeOptions`]).
pub async fn serve<H, Fut>(
    listener: TcpListener,
    opts: ServeOptions,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    grace: Duration,
    handler: H,
) where
    H: Fn(http::Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(crate::logging::RateLimited::new(Duration::from_secs(1)));
    let max = opts.max_connections;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        if let Some(bytes) = opts.notsent_lowat {
            set_notsent_lowat(&tcp, bytes);
        }
        let Ok(local) = tcp.local_addr() else {
            continue;
        };
        stats.add_connection();
        let slot = Slot(open.clone());
        let now_open = open.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let over = now_open > max;
        if over {
            refused.warn(|held_back| {
                tracing::warn!(%peer, open = now_open, max, held_back, "connection refused (503): too many open connections");
            });
        }
        let info = ConnInfo { peer, local };
        let handler = handler.clone();
        let tls = opts.tls.clone();
        let watcher = graceful.watcher();
        let spans = opts.spans.clone();
        tokio::spawn(async move {
            let life = ConnLife(Arc::new(LifeInner {
                _slot: slot,
                spans,
                info,
            }));
            let request_life = life.clone();
            let svc = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let h = handler.clone();
                req.extensions_mut().insert(request_life.clone());
                async move {
                    if over {
                        return Ok::<_, Infallible>(busy(now_open, max));
                    }
                    Ok::<_, Infallible>(h(req, info).await)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let result = match tls {
                Some(acceptor) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc))
                        .await
                }
                None => {
                    watcher
                        .watch(builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc))
                        .await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(life);
        });
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; closing the remaining connections");
    }
}

/// A pooled HTTP/1 client for upstream requests (plain HTTP, as Ollama speaks), with
/// TCP_NODELAY.
pub type UpstreamClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// Idle upstream connections kept for reuse by default (each stream in flight holds one
/// of its own; after a burst of thousands, only this many stay open, for `UPSTREAM_IDLE`;
/// `--upstream-idle-max`).
pub const UPSTREAM_IDLE_MAX: usize = 256;
pub const UPSTREAM_IDLE: Duration = Duration::from_secs(30);

pub fn upstream_client(idle_max: usize) -> UpstreamClient {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle_max)
        .pool_idle_timeout(UPSTREAM_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// Sets `TCP_NOTSENT_LOWAT` (Linux and macOS; a no-op elsewhere). A connection that
/// refuses it keeps the kernel's setting, which changes no byte on the wire.
fn set_notsent_lowat(tcp: &tokio::net::TcpStream, bytes: u32) {
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    {
        use std::os::fd::AsRawFd;
        let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket, an int option and its size.
        let r = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "TCP_NOTSENT_LOWAT refused");
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    let _ = (tcp, bytes);
}
