//! The `ws` client: a WebSocket over TLS (`wss://HOST:PORT/ws`), as a chat front end's
//! browser holds one. Each prompt is a text message `{"message": "..."}`; the answer is one
//! text message per token and an empty one at the end. Reuse keeps the socket for the next
//! prompt; fresh opens one per prompt and closes it (close frames both ways) after the
//! answer. The client's frames are masked, as RFC 6455 requires (tungstenite does it).
//!
//! Stream bytes are the messages' payloads: the WebSocket frame headers belong to the
//! transport, like HTTP/1.1's chunk lines and HTTP/2's frame headers for SSE.

use super::ClientError;
use super::https::{Io, connect_io, connect_tls};
use crate::record::Recorder;
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

type Socket = WebSocketStream<tokio_rustls::client::TlsStream<Box<dyn Io>>>;

/// How long a polite close may take before the socket is just dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

pub struct WsClient {
    addr: SocketAddr,
    host: String,
    path: &'static str,
    tls: tokio_rustls::TlsConnector,
    /// Boxed: a socket holds its TLS state and buffers, over a kilobyte.
    socket: Option<Box<Socket>>,
    /// Largest message accepted from the server.
    max_message: usize,
    /// Sockets opened so far.
    pub connections: u64,
    /// Let the kernel delay ACKs ([`super::delayed_ack`]).
    pub delayed_acks: bool,
}

impl WsClient {
    /// `host` is the TLS server name and the URL's host (e.g. `localhost`).
    pub fn new(
        addr: SocketAddr,
        host: &str,
        path: &'static str,
        tls: Arc<rustls::ClientConfig>,
        max_message: usize,
    ) -> Self {
        Self {
            addr,
            host: host.to_owned(),
            path,
            tls: tokio_rustls::TlsConnector::from(tls),
            socket: None,
            max_message,
            connections: 0,
            delayed_acks: false,
        }
    }

    async fn connect(&mut self) -> Result<Box<Socket>, ClientError> {
        let io = connect_io(self.addr, self.delayed_acks).await?;
        let tls = connect_tls(&self.tls, &self.host, self.addr, io).await?;
        let url = format!("wss://{}:{}{}", self.host, self.addr.port(), self.path);
        let config = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let (socket, _) = tokio_tungstenite::client_async_with_config(url, tls, Some(config))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => ClientError::Status {
                    status: resp.status(),
                    body: resp
                        .body()
                        .as_deref()
                        .map(|b| String::from_utf8_lossy(&b[..b.len().min(300)]).into_owned())
                        .unwrap_or_default(),
                },
                e => ClientError::Http(format!("WebSocket handshake: {e}")),
            })?;
        self.connections += 1;
        Ok(Box::new(socket))
    }

    /// Streams one prompt's answer into `rec`. With `reuse`, the open socket carries it
    /// (a new one only if there is none); otherwise a new socket does, closed after it.
    pub async fn stream(
        &mut self,
        prompt: &str,
        reuse: bool,
        rec: &mut Recorder,
    ) -> Result<(), ClientError> {
        let mut socket = match self.socket.take() {
            Some(s) if reuse => s,
            _ => self.connect().await?,
        };
        let result = answer(&mut socket, prompt, rec).await;
        match (&result, reuse) {
            (Ok(()), true) => self.socket = Some(socket),
            (Ok(()), false) => {
                let _ = tokio::time::timeout(CLOSE_WAIT, (*socket).close(None)).await;
            }
            // A failed socket is not used again.
            (Err(_), _) => {}
        }
        result
    }

    /// Closes the kept socket, if any.
    pub async fn shutdown(&mut self) {
        if let Some(mut s) = self.socket.take() {
            let _ = tokio::time::timeout(CLOSE_WAIT, (*s).close(None)).await;
        }
    }
}

/// Sends the prompt and reads its answer to the empty end message.
async fn answer(socket: &mut Socket, prompt: &str, rec: &mut Recorder) -> Result<(), ClientError> {
    let body = serde_json::json!({ "message": prompt }).to_string();
    socket
        .send(Message::text(body))
        .await
        .map_err(|e| ClientError::Lost(e.to_string()))?;
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(t))) if t.is_empty() => return Ok(()),
            Some(Ok(Message::Text(t))) => {
                rec.bytes(t.len());
                rec.token(t.as_str());
            }
            Some(Ok(Message::Binary(_))) => {
                return Err(ClientError::Stream("a binary message in the answer".into()));
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(match frame {
                    Some(f) if f.code != CloseCode::Normal => {
                        ClientError::Reported(format!("closed ({}): {}", f.code, f.reason))
                    }
                    _ => ClientError::Lost("the server closed the socket mid-answer".into()),
                });
            }
            Some(Ok(_)) => {} // ping, pong: tungstenite answers pings
            Some(Err(tungstenite::Error::Capacity(e))) => {
                return Err(ClientError::Stream(e.to_string()));
            }
            Some(Err(tungstenite::Error::Protocol(e))) => {
                return Err(ClientError::Stream(e.to_string()));
            }
            Some(Err(e)) => return Err(ClientError::Lost(e.to_string())),
            None => {
                return Err(ClientError::Lost("the connection closed mid-answer".into()));
            }
        }
    }
}
