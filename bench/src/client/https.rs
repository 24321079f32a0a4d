//! An HTTPS client (HTTP/1.1, or HTTP/2 for `sse-h2`) that owns its connection, so the
//! benchmark controls and counts connections exactly: reuse keeps one (each response is
//! read to its end, so the connection is free for the next request), fresh opens one per
//! request. Over HTTP/2 too, one client runs one request at a time on its connection:
//! concurrent workers each hold their own, as over HTTP/1.1, so the two compare like for
//! like (streams multiplexed on one connection are the probe's shared periods, tested on
//! their own).

use super::ClientError;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection's request half, by HTTP version.
enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, ClientError> {
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        match self {
            Sender::H1(s) => {
                s.ready().await.map_err(http)?;
                s.send_request(req).await.map_err(http)
            }
            Sender::H2(s) => {
                s.ready().await.map_err(http)?;
                s.send_request(req).await.map_err(http)
            }
        }
    }
}

/// A TCP connection to `addr` with TCP_NODELAY, or why there is none.
pub(super) async fn connect_tcp(addr: SocketAddr) -> Result<TcpStream, ClientError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| ClientError::ConnectTimeout {
            target: addr.to_string(),
            after: CONNECT_TIMEOUT,
        })?
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ClientError::Refused {
                target: addr.to_string(),
                reason: e.to_string(),
            },
            _ => ClientError::Connect {
                addr,
                reason: e.to_string(),
            },
        })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Any byte stream a client's TLS runs on (TCP, or TCP with delayed ACKs allowed).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A TCP connection to `addr` ([`connect_tcp`]), letting the kernel delay its ACKs when
/// `delayed_acks` ([`super::delayed_ack`]).
pub(super) async fn connect_io(
    addr: SocketAddr,
    delayed_acks: bool,
) -> Result<Box<dyn Io>, ClientError> {
    let tcp = connect_tcp(addr).await?;
    Ok(if delayed_acks {
        Box::new(super::delayed_ack::DelayedAcks(tcp))
    } else {
        Box::new(tcp)
    })
}

/// TLS with `host` as the server name on a connected stream.
pub(super) async fn connect_tls<S>(
    connector: &tokio_rustls::TlsConnector,
    host: &str,
    addr: SocketAddr,
    stream: S,
) -> Result<tokio_rustls::client::TlsStream<S>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let name = ServerName::try_from(host.to_owned()).map_err(|e| ClientError::Connect {
        addr,
        reason: format!("server name: {e}"),
    })?;
    connector
        .connect(name, stream)
        .await
        .map_err(|e| ClientError::Tls {
            addr,
            reason: e.to_string(),
        })
}

pub struct HttpsClient {
    addr: SocketAddr,
    host: String,
    tls: tokio_rustls::TlsConnector,
    /// HTTP/2: the TLS configuration must offer `h2`, and the server must take it.
    http2: bool,
    sender: Option<Sender>,
    /// Connections opened so far.
    pub connections: u64,
    /// Headers added to every request.
    pub extra_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A request that does not reuse its connection says `Connection: close` (as Go's
    /// client did for the reference's fresh mode).
    pub close_when_fresh: bool,
    /// Let the kernel delay ACKs ([`super::delayed_ack`]).
    pub delayed_acks: bool,
}

impl HttpsClient {
    /// `host` is the TLS server name and Host header (e.g. `localhost`).
    pub fn new(addr: SocketAddr, host: &str, tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            addr,
            host: host.to_owned(),
            http2: tls.alpn_protocols.iter().any(|p| p == b"h2"),
            tls: tokio_rustls::TlsConnector::from(tls),
            sender: None,
            connections: 0,
            extra_headers: Vec::new(),
            close_when_fresh: false,
            delayed_acks: false,
        }
    }

    async fn connect(&mut self) -> Result<Sender, ClientError> {
        let io = connect_io(self.addr, self.delayed_acks).await?;
        let sender = self.handshake(io).await?;
        self.connections += 1;
        Ok(sender)
    }

    /// TLS and HTTP/1.1 or HTTP/2 on a connected stream; the connection runs in a task of
    /// its own.
    async fn handshake<S>(&self, stream: S) -> Result<Sender, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let tls = connect_tls(&self.tls, &self.host, self.addr, stream).await?;
        let http = |e: hyper::Error| ClientError::Http(e.to_string());
        if !self.http2 {
            let (sender, conn) = http1::handshake(TokioIo::new(tls)).await.map_err(http)?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(Sender::H1(sender));
        }
        // A server without h2 would make this HTTP/1.1 quietly: measured as sse-h2, it
        // would be a wrong figure, so it is an error.
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ClientError::Http(format!(
                "{} did not take HTTP/2 (ALPN h2); is it the sse-h2 listener?",
                self.addr
            )));
        }
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H2(sender))
    }

    /// Sends a POST with a JSON body. With `reuse`, the open connection carries it (a new
    /// one is opened only if the server closed the old); otherwise a new connection does.
    pub async fn post_json(
        &mut self,
        path: &str,
        body: String,
        reuse: bool,
    ) -> Result<Response<Incoming>, ClientError> {
        self.request(Method::POST, path, Bytes::from(body), reuse)
            .await
    }

    /// Sends any request (see [`Self::post_json`] for `reuse`).
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        reuse: bool,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut sender = match self.sender.take() {
            Some(s) if reuse && !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let mut req = Request::builder().method(method);
        req = match sender {
            // HTTP/2 names the authority in the request itself (`:authority`).
            Sender::H2(_) => req.uri(format!("https://{}:{}{path}", self.host, self.addr.port())),
            Sender::H1(_) => req.uri(path).header(header::HOST, &self.host),
        };
        req = req.header(header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.extra_headers {
            req = req.header(name, value);
        }
        if !reuse && self.close_when_fresh && matches!(sender, Sender::H1(_)) {
            req = req.header(header::CONNECTION, "close");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender.send(req).await?;
        if reuse {
            self.sender = Some(sender);
        }
        Ok(resp)
    }
}
