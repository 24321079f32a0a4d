//! The `sse-h3` client: `POST /chat` over HTTP/3 (the `h3` crate on quinn), read as the
//! `sse` client reads its answer. Each client has a QUIC endpoint (one UDP socket) of its
//! own; reuse keeps one connection for every prompt, fresh opens one per prompt and closes
//! it after the answer. Stream bytes are the SSE events (HTTP/3's frame headers are the
//! transport's, as HTTP/2's are for `sse-h2`).

use super::{ClientError, SseKind, SseReader, status_error};
use crate::record::Recorder;
use bytes::{Buf, Bytes};
use http::{Request, StatusCode, header};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a connection may take to open (QUIC handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

pub struct H3Client {
    addr: SocketAddr,
    host: String,
    config: quinn::ClientConfig,
    endpoint: Option<quinn::Endpoint>,
    connection: Option<(quinn::Connection, Sender)>,
    /// Connections opened so far.
    pub connections: u64,
}

impl H3Client {
    /// `tls` must offer `h3`; `host` is the TLS server name and the `:authority`.
    pub fn new(
        addr: SocketAddr,
        host: &str,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, ClientError> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClientError::Http(format!("TLS configuration for QUIC: {e}")))?;
        Ok(Self {
            addr,
            host: host.to_owned(),
            config: quinn::ClientConfig::new(Arc::new(crypto)),
            endpoint: None,
            connection: None,
            connections: 0,
        })
    }

    fn endpoint(&mut self) -> Result<quinn::Endpoint, ClientError> {
        if let Some(e) = &self.endpoint {
            return Ok(e.clone());
        }
        let local: SocketAddr = match self.addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let e = quinn::Endpoint::client(local).map_err(|e| ClientError::Connect {
            addr: self.addr,
            reason: format!("QUIC socket: {e}"),
        })?;
        self.endpoint = Some(e.clone());
        Ok(e)
    }

    async fn connect(&mut self) -> Result<(quinn::Connection, Sender), ClientError> {
        let endpoint = self.endpoint()?;
        let connecting = endpoint
            .connect_with(self.config.clone(), self.addr, &self.host)
            .map_err(|e| ClientError::Connect {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                target: self.addr.to_string(),
                after: CONNECT_TIMEOUT,
            })?
            .map_err(|e| ClientError::Connect {
                addr: self.addr,
                reason: e.to_string(),
            })?;
        let (mut driver, sender) = h3::client::new(h3_quinn::Connection::new(conn.clone()))
            .await
            .map_err(|e| ClientError::Http(format!("HTTP/3: {e}")))?;
        tokio::spawn(async move {
            let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
        });
        self.connections += 1;
        Ok((conn, sender))
    }

    /// Streams one prompt's answer into `rec`. With `reuse`, the open connection carries
    /// it (a new one only if there is none or it closed).
    pub async fn stream(
        &mut self,
        prompt: &str,
        reuse: bool,
        rec: &mut Recorder,
    ) -> Result<(), ClientError> {
        let (conn, mut sender) = match self.connection.take() {
            Some(c) if reuse && c.0.close_reason().is_none() => c,
            _ => self.connect().await?,
        };
        let result = self.post(&mut sender, prompt, rec).await;
        if reuse {
            self.connection = Some((conn, sender));
        } else {
            conn.close(quinn::VarInt::from_u32(0), b"");
        }
        result
    }

    async fn post(
        &self,
        sender: &mut Sender,
        prompt: &str,
        rec: &mut Recorder,
    ) -> Result<(), ClientError> {
        let lost = |e: &dyn std::fmt::Display| ClientError::Lost(e.to_string());
        let req = Request::post(format!(
            "https://{}:{}{}",
            self.host,
            self.addr.port(),
            crate::approach::Approach::SseH3.path()
        ))
        .header(header::CONTENT_TYPE, "application/json")
        .body(())
        .map_err(|e| ClientError::Http(e.to_string()))?;
        let mut stream = sender.send_request(req).await.map_err(|e| lost(&e))?;
        let body = serde_json::json!({ "message": prompt }).to_string();
        stream
            .send_data(Bytes::from(body))
            .await
            .map_err(|e| lost(&e))?;
        stream.finish().await.map_err(|e| lost(&e))?;
        let resp = stream.recv_response().await.map_err(|e| lost(&e))?;
        if resp.status() != StatusCode::OK {
            let mut body = Vec::new();
            while let Ok(Some(mut chunk)) = stream.recv_data().await {
                body.extend_from_slice(&chunk.copy_to_bytes(chunk.remaining()));
                if body.len() > 300 {
                    break;
                }
            }
            return Err(status_error(resp.status(), &body));
        }
        let mut reader = SseReader::new(SseKind::Relay);
        while let Some(mut chunk) = stream.recv_data().await.map_err(|e| lost(&e))? {
            let data = chunk.copy_to_bytes(chunk.remaining());
            reader.feed(&data, rec)?;
        }
        reader.end()
    }
}
