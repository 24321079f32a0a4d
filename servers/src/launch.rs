//! Binding and starting each server, for the binary and for tests alike: bind first (so a
//! busy port is a clear error before anything runs), then serve in a task until shutdown.

use crate::certs::Identity;
use crate::grpc_relay::GrpcRelay;
use crate::model::{Model, ModelConfig};
use crate::raw::RawProxy;
use crate::spans::SpanSink;
use crate::sse_relay::SseRelay;
use crate::stats::Stats;
use crate::tuning::{AckFrequency, Knob, LEAN_ACK_FREQUENCY, LEAN_SERVER_CID_LEN, Tuning};
use crate::upstream::{Upstream, UpstreamError};
use crate::ws_relay::WsRelay;
use crate::wt_relay::WtRelay;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokenwire_probe_common::approach::Approach;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// What the relays share.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Base URL of the Ollama API to relay (`http://HOST:PORT`).
    pub upstream: String,
    /// Model name the `sse` and `wt` relays ask the upstream for.
    pub model: String,
    /// Largest request body (`raw`, `sse`) accepted.
    pub max_body: usize,
    /// Largest WebTransport frame accepted.
    pub max_frame: usize,
    /// How long a WebTransport client may take to send its whole prompt frame.
    pub stall: Duration,
    /// Where request spans go (docs/spans.md).
    pub spans: SpanSink,
    /// Length of the WebTransport server's QUIC connection IDs (quinn's default is 8;
    /// quic-go, which the reference ran, uses 4). Every short-header packet the server
    /// receives carries one.
    pub quic_cid_len: usize,
    /// How often the WebTransport server sends a keep-alive PING on an idle session
    /// (`None`: never). 3 s by default; quic-go's server in the reference used 30 s.
    pub wt_keep_alive: Option<Duration>,
    /// Whether the WebTransport server reads received packets' ECN bits and reports them
    /// in its ACKs (quinn's default); quic-go on macOS, the reference's, does not
    /// (`crate::quic_socket`).
    pub quic_ecn: bool,
    /// Receive and send buffer of the WebTransport server's UDP socket, bytes
    /// (`crate::quic_socket`).
    pub quic_socket_buffer: usize,
    /// WebTransport sessions open at once; past it a new one gets 429.
    pub max_sessions: usize,
    /// Streams (prompts) running at once on one WebTransport session; a client opening
    /// one more waits for one to finish (QUIC stream credit), nothing is refused.
    pub max_streams_per_session: u32,
    /// Connections each TLS companion (raw, sse) holds open at once; past it, 503.
    pub max_connections: usize,
    /// Idle upstream connections each relay keeps for reuse (each stream in flight holds
    /// one of its own).
    pub upstream_idle_max: usize,
    /// Where the SSE relay's browser page finds the other companions and the probe
    /// (`None`: no page at `GET /`).
    pub page: Option<crate::page::PageLinks>,
    /// The ACK frequency the WebTransport server asks its clients for (`None`: it asks
    /// nothing; [`crate::tuning::Knob::AckFrequency`]).
    pub quic_ack_frequency: Option<AckFrequency>,
    /// The relays (sse, wt) send the tokens arriving within this long of the first unsent
    /// one together ([`crate::coalesce`]); zero sends each as it arrives.
    pub coalesce: Duration,
    /// `TCP_NOTSENT_LOWAT` of the TLS companions' connections (raw, sse), bytes: how much
    /// unsent data a connection buffers before the server stops writing to it (`None`:
    /// the kernel's `net.ipv4.tcp_notsent_lowat`).
    pub tcp_notsent_lowat: Option<u32>,
}

/// quinn's connection ID length.
pub const DEFAULT_QUIC_CID_LEN: usize = 8;

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            upstream: "http://127.0.0.1:11434".to_owned(),
            model: "gemma3:12b".to_owned(),
            max_body: 1 << 20,
            max_frame: crate::protocol::framing::MAX_FRAME,
            stall: Duration::from_secs(10),
            spans: SpanSink::disabled(),
            quic_cid_len: DEFAULT_QUIC_CID_LEN,
            wt_keep_alive: Some(Duration::from_secs(3)),
            quic_ecn: true,
            quic_socket_buffer: crate::quic_socket::DEFAULT_BUFFER,
            max_sessions: crate::wt_relay::DEFAULT_MAX_SESSIONS,
            max_streams_per_session: crate::wt_relay::DEFAULT_MAX_STREAMS_PER_SESSION,
            max_connections: crate::http::DEFAULT_MAX_CONNECTIONS,
            upstream_idle_max: crate::http::UPSTREAM_IDLE_MAX,
            page: Some(crate::page::PageLinks::default()),
            quic_ack_frequency: None,
            coalesce: Duration::ZERO,
            tcp_notsent_lowat: None,
        }
    }
}

impl RelayOptions {
    /// The server's knobs of `tuning` on these options (docs/wire-efficiency.md).
    pub fn apply_tuning(&mut self, tuning: &Tuning) {
        if tuning.has(Knob::ServerCid4) {
            self.quic_cid_len = LEAN_SERVER_CID_LEN;
        }
        if tuning.has(Knob::NoEcn) {
            self.quic_ecn = false;
        }
        if tuning.has(Knob::AckFrequency) {
            self.quic_ack_frequency = Some(LEAN_ACK_FREQUENCY);
        }
    }
}

/// A started server.
pub struct Running {
    pub name: &'static str,
    pub url: String,
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    pub task: JoinHandle<()>,
    /// The server serves the browser page at `GET /` (the SSE relay).
    pub page: bool,
}

async fn bind_tcp(addr: SocketAddr) -> Result<TcpListener, LaunchError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| LaunchError::Bind { addr, source })
}

fn local(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}

/// The embedded model on plain HTTP, as Ollama serves.
pub async fn start_model(
    addr: SocketAddr,
    cfg: ModelConfig,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(Running, Model), LaunchError> {
    let listener = bind_tcp(addr).await?;
    let addr = local(&listener, addr);
    // Tokenise the corpus now, not on the first request.
    tokio::task::spawn_blocking(crate::model::corpus::corpus)
        .await
        .ok();
    let stats = Stats::new();
    let model = Model::new(cfg, stats.clone());
    let m = model.clone();
    let opts = crate::http::ServeOptions {
        tls: None,
        spans: SpanSink::disabled(),
        max_connections: usize::MAX,
        notsent_lowat: None,
    };
    let task = tokio::spawn(crate::http::serve(
        listener,
        opts,
        stats.clone(),
        shutdown,
        grace,
        move |req, conn| {
            let m = m.clone();
            async move { m.handle(req, conn).await }
        },
    ));
    let running = Running {
        name: "model",
        url: format!("http://{addr}"),
        addr,
        stats,
        task,
        page: false,
    };
    Ok((running, model))
}

fn acceptor(id: &Identity, alpn: &[&[u8]]) -> Result<tokio_rustls::TlsAcceptor, LaunchError> {
    let cfg = crate::tls::server_config(id, alpn).map_err(|e| LaunchError::Tls(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(cfg))
}

/// Starts the companion of one approach (the registry's, [`Approach`]).
pub async fn start_companion(
    kind: Approach,
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    match kind {
        Approach::Raw => start_raw(addr, id, opts, shutdown, grace).await,
        Approach::Sse | Approach::SseH2 => start_sse(kind, addr, id, opts, shutdown, grace).await,
        Approach::SseH3 => start_sse_h3(addr, id, opts, shutdown, grace).await,
        Approach::Ws => start_ws(addr, id, opts, shutdown, grace).await,
        Approach::Grpc => start_grpc(addr, id, opts, shutdown, grace).await,
        Approach::Wt => start_wt(addr, id, opts, shutdown, grace).await,
    }
}

/// Binds `addr` and serves, over TLS, the handler `make` builds around the server's stats.
#[allow(clippy::too_many_arguments)] // each is one of the server's settings; a struct would only rename them
async fn start_https<H, Fut>(
    name: &'static str,
    path: &str,
    alpn: &[&[u8]],
    addr: SocketAddr,
    id: &Identity,
    shutdown: CancellationToken,
    grace: Duration,
    relay: &RelayOptions,
    make: impl FnOnce(Arc<Stats>) -> H,
) -> Result<Running, LaunchError>
where
    H: Fn(http::Request<hyper::body::Incoming>, crate::http::ConnInfo) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = http::Response<crate::http::Body>> + Send + 'static,
{
    let tls = acceptor(id, alpn)?;
    let listener = bind_tcp(addr).await?;
    let addr = local(&listener, addr);
    let stats = Stats::new();
    let handler = make(stats.clone());
    let opts = crate::http::ServeOptions {
        tls: Some(tls),
        spans: relay.spans.clone(),
        max_connections: relay.max_connections,
        notsent_lowat: relay.tcp_notsent_lowat,
    };
    let task = tokio::spawn(crate::http::serve(
        listener,
        opts,
        stats.clone(),
        shutdown,
        grace,
        handler,
    ));
    Ok(Running {
        name,
        url: format!("https://{addr}{path}"),
        addr,
        stats,
        task,
        page: false,
    })
}

/// The TLS reverse proxy.
pub async fn start_raw(
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    let upstream = Upstream::with_idle_max(&opts.upstream, opts.upstream_idle_max)?;
    let (max_body, spans) = (opts.max_body, opts.spans.clone());
    // Its URL is the whole API's base: it proxies every path, not only its approach's.
    let name = Approach::Raw.as_str();
    let alpn = crate::tls::ALPN_HTTP1;
    start_https(
        name,
        "",
        alpn,
        addr,
        id,
        shutdown,
        grace,
        opts,
        move |stats| {
            let proxy = RawProxy::new(upstream, stats, max_body, spans);
            move |req, conn| {
                let p = proxy.clone();
                async move { p.handle(req, conn).await }
            }
        },
    )
    .await
}

/// The HTTPS SSE relay: `sse` offers HTTP/1.1 only and serves the browser page, `sse-h2`
/// offers HTTP/2 first (each request is labelled by the version it came in).
pub async fn start_sse(
    kind: Approach,
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    let upstream = Upstream::with_idle_max(&opts.upstream, opts.upstream_idle_max)?;
    let (model, max_body, spans) = (opts.model.clone(), opts.max_body, opts.spans.clone());
    let page = opts
        .page
        .as_ref()
        .filter(|_| kind == Approach::Sse)
        .map(|links| {
            crate::page::PageConfig::new(links.clone(), id.sha256_hex(), model.clone()).html()
        });
    let alpn = match kind {
        Approach::SseH2 => crate::tls::ALPN_H2,
        _ => crate::tls::ALPN_HTTP1,
    };
    let coalesce = opts.coalesce;
    let serves_page = page.is_some();
    let mut running = start_https(
        kind.as_str(),
        kind.path(),
        alpn,
        addr,
        id,
        shutdown,
        grace,
        opts,
        move |stats| {
            let mut relay =
                SseRelay::new(upstream, model, stats, max_body, spans).with_coalescing(coalesce);
            if let Some(html) = page {
                relay = relay.with_page(html);
            }
            move |req, conn| {
                let r = relay.clone();
                async move { r.handle(req, conn).await }
            }
        },
    )
    .await?;
    running.page = serves_page;
    Ok(running)
}

/// The SSE relay over HTTP/3 on UDP `addr`, and over HTTP/2 and HTTP/1.1 with `Alt-Svc`
/// on TCP at the same port number ([`crate::h3_relay`]). With port 0, TCP takes the port
/// UDP got, or another when that one is taken on TCP.
pub async fn start_sse_h3(
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    let tls = |e: &dyn std::fmt::Display| LaunchError::Tls(e.to_string());
    let crypto = crate::tls::server_config(id, crate::h3_relay::ALPN_H3).map_err(|e| tls(&e))?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| tls(&e))?;
    let server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let bound = crate::quic_socket::bind(addr, opts.quic_socket_buffer)
        .map_err(|source| LaunchError::Bind { addr, source })?;
    let mut endpoint_config = quinn::EndpointConfig::default();
    let cid_len = opts.quic_cid_len;
    if cid_len != DEFAULT_QUIC_CID_LEN {
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::RandomConnectionIdGenerator::new(cid_len))
        });
    }
    let endpoint = quinn::Endpoint::new(
        endpoint_config,
        Some(server),
        bound.socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| LaunchError::Bind { addr, source })?;
    if !opts.quic_ecn {
        crate::quic_socket::ignore_received_ecn(&bound.handle)
            .map_err(|source| LaunchError::Bind { addr, source })?;
    }
    let udp = endpoint.local_addr().unwrap_or(addr);
    let tcp_addr = SocketAddr::new(addr.ip(), udp.port());
    let tcp_addr = match TcpListener::bind(tcp_addr).await {
        Ok(probe) => {
            drop(probe);
            tcp_addr
        }
        Err(_) if addr.port() == 0 => addr,
        Err(source) => {
            return Err(LaunchError::Bind {
                addr: tcp_addr,
                source,
            });
        }
    };
    let upstream = Upstream::with_idle_max(&opts.upstream, opts.upstream_idle_max)?;
    let (model, max_body, spans) = (opts.model.clone(), opts.max_body, opts.spans.clone());
    let coalesce = opts.coalesce;
    let mut relay = None;
    let tcp = start_https(
        Approach::SseH3.as_str(),
        Approach::SseH3.path(),
        crate::tls::ALPN_H2,
        tcp_addr,
        id,
        shutdown.clone(),
        grace,
        opts,
        |stats| {
            let r = SseRelay::new(upstream, model, stats, max_body, spans)
                .with_coalescing(coalesce)
                .with_alt_svc(udp.port());
            relay = Some(r.clone());
            move |req, conn| {
                let r = r.clone();
                async move { r.handle(req, conn).await }
            }
        },
    )
    .await?;
    let Some(relay) = relay else {
        return Err(LaunchError::Tls("the relay was not built".into()));
    };
    let h3 = crate::h3_relay::H3Relay {
        relay,
        stats: tcp.stats.clone(),
        spans: opts.spans.clone(),
        max_body: opts.max_body,
    };
    let quic = tokio::spawn(h3.serve(endpoint, shutdown, grace));
    let tcp_task = tcp.task;
    let task = tokio::spawn(async move {
        let _ = tokio::join!(quic, tcp_task);
    });
    Ok(Running {
        name: Approach::SseH3.as_str(),
        url: format!("https://{udp}{}", Approach::SseH3.path()),
        addr: udp,
        stats: tcp.stats,
        task,
        page: false,
    })
}

/// The WebSocket relay (`wss://ADDR/ws`).
pub async fn start_ws(
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    let upstream = Upstream::with_idle_max(&opts.upstream, opts.upstream_idle_max)?;
    let (model, max_frame, spans) = (opts.model.clone(), opts.max_frame, opts.spans.clone());
    let (coalesce, stop) = (opts.coalesce, shutdown.clone());
    let name = Approach::Ws.as_str();
    let (path, alpn) = (Approach::Ws.path(), crate::tls::ALPN_HTTP1);
    start_https(
        name,
        path,
        alpn,
        addr,
        id,
        shutdown,
        grace,
        opts,
        move |stats| {
            let relay = WsRelay::new(upstream, model, stats, max_frame, spans, stop)
                .with_coalescing(coalesce);
            move |req, conn| {
                let r = relay.clone();
                async move { r.handle(req, conn).await }
            }
        },
    )
    .await
}

/// The gRPC relay (`tokenwire.v1.Chat/Stream` over TLS and HTTP/2).
pub async fn start_grpc(
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    let upstream = Upstream::with_idle_max(&opts.upstream, opts.upstream_idle_max)?;
    let (model, max_body, spans) = (opts.model.clone(), opts.max_body, opts.spans.clone());
    let coalesce = opts.coalesce;
    let (name, path) = (Approach::Grpc.as_str(), Approach::Grpc.path());
    start_https(
        name,
        path,
        crate::tls::ALPN_H2_ONLY,
        addr,
        id,
        shutdown,
        grace,
        opts,
        move |stats| {
            GrpcRelay::new(upstream, model, stats, spans)
                .with_coalescing(coalesce)
                .handler(max_body)
        },
    )
    .await
}

/// The WebTransport relay.
pub async fn start_wt(
    addr: SocketAddr,
    id: &Identity,
    opts: &RelayOptions,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<Running, LaunchError> {
    let upstream = Upstream::with_idle_max(&opts.upstream, opts.upstream_idle_max)?;
    let identity = crate::tls::wt_identity(id).map_err(|e| LaunchError::Tls(e.to_string()))?;
    let bound = crate::quic_socket::bind(addr, opts.quic_socket_buffer)
        .map_err(|source| LaunchError::Bind { addr, source })?;
    if bound.recv_buffer / 2 < opts.quic_socket_buffer {
        tracing::warn!(
            asked = opts.quic_socket_buffer,
            granted = bound.recv_buffer / 2,
            "the WebTransport socket's receive buffer is smaller than asked (raise net.core.rmem_max, or run as root): bursts of new sessions may be dropped"
        );
    }
    let ecn_switch = (!opts.quic_ecn).then_some(bound.handle);
    let builder = wtransport::ServerConfig::builder().with_bind_socket(bound.socket);
    // The session's own CONNECT request is a bidirectional stream too, open for the
    // session's life: one more than the prompts allowed.
    let mut transport = wtransport::config::QuicTransportConfig::default();
    transport.max_concurrent_bidi_streams(quinn_proto::VarInt::from_u32(
        opts.max_streams_per_session.max(1).saturating_add(1),
    ));
    if let Some(af) = opts.quic_ack_frequency {
        let mut cfg = quinn_proto::AckFrequencyConfig::default();
        cfg.ack_eliciting_threshold(quinn_proto::VarInt::from_u32(af.threshold))
            .max_ack_delay(af.max_delay);
        transport.ack_frequency_config(Some(cfg));
    }
    let mut config = builder
        .with_custom_transport(identity, transport)
        .keep_alive_interval(opts.wt_keep_alive)
        .build();
    let cid_len = opts.quic_cid_len;
    if cid_len != DEFAULT_QUIC_CID_LEN {
        config.quic_endpoint_config_mut().cid_generator(move || {
            Box::new(quinn_proto::RandomConnectionIdGenerator::new(cid_len))
        });
    }
    let endpoint = wtransport::Endpoint::server(config)
        .map_err(|source| LaunchError::Bind { addr, source })?;
    if let Some(handle) = ecn_switch {
        crate::quic_socket::ignore_received_ecn(&handle)
            .map_err(|source| LaunchError::Bind { addr, source })?;
    }
    let addr = endpoint.local_addr().unwrap_or(addr);
    let stats = Stats::new();
    let relay = WtRelay::new(
        upstream,
        opts.model.clone(),
        stats.clone(),
        opts.max_frame,
        opts.stall,
        opts.spans.clone(),
    )
    .with_max_sessions(opts.max_sessions)
    .with_coalescing(opts.coalesce);
    let task = tokio::spawn(relay.serve(endpoint, shutdown, grace));
    Ok(Running {
        name: Approach::Wt.as_str(),
        url: format!("https://{addr}{}", Approach::Wt.path()),
        addr,
        stats,
        task,
        page: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lean_sets_the_servers_knobs_and_default_none() {
        let mut opts = RelayOptions::default();
        opts.apply_tuning(&Tuning::standard());
        assert_eq!(opts.quic_cid_len, DEFAULT_QUIC_CID_LEN);
        assert!(opts.quic_ecn && opts.quic_ack_frequency.is_none());
        opts.apply_tuning(&Tuning::lean());
        assert_eq!(opts.quic_cid_len, 4);
        assert!(!opts.quic_ecn);
        assert_eq!(opts.quic_ack_frequency, Some(LEAN_ACK_FREQUENCY));
    }
}
