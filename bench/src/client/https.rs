//! An HTTP/1.1-over-TLS client that owns its connection, so the benchmark controls and
//! counts connections exactly: reuse keeps one (each response is read to its end, so the
//! connection is free for the next request), fresh opens one per request.

use super::ClientError;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpsClient {
    addr: SocketAddr,
    host: String,
    tls: tokio_rustls::TlsConnector,
    sender: Option<SendRequest<Full<Bytes>>>,
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
            tls: tokio_rustls::TlsConnector::from(tls),
            sender: None,
            connections: 0,
            extra_headers: Vec::new(),
            close_when_fresh: false,
            delayed_acks: false,
        }
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let addr = self.addr;
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
        let sender = if self.delayed_acks {
            self.handshake(super::delayed_ack::DelayedAcks(tcp)).await?
        } else {
            self.handshake(tcp).await?
        };
        self.connections += 1;
        Ok(sender)
    }

    /// TLS and HTTP/1.1 on a connected stream; the connection runs in a task of its own.
    async fn handshake<S>(&self, stream: S) -> Result<SendRequest<Full<Bytes>>, ClientError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let addr = self.addr;
        let name = ServerName::try_from(self.host.clone()).map_err(|e| ClientError::Connect {
            addr,
            reason: format!("server name: {e}"),
        })?;
        let tls = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|e| ClientError::Tls {
                addr,
                reason: e.to_string(),
            })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
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
        sender
            .ready()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json");
        for (name, value) in &self.extra_headers {
            req = req.header(name, value);
        }
        if !reuse && self.close_when_fresh {
            req = req.header(header::CONNECTION, "close");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        if reuse {
            self.sender = Some(sender);
        }
        Ok(resp)
    }
}
