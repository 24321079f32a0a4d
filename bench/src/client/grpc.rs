//! The `grpc` client: tonic's generated `Chat` client (servers/proto/chat.proto) on an
//! HTTP/2 connection the client owns, as [`super::https`] owns its own: reuse keeps one
//! connection and runs one call at a time on it, fresh opens one per call (dropped after
//! the answer, which closes it). Stream bytes are the messages as gRPC frames them (the
//! 5-byte length prefix and the protobuf), not HTTP/2's frame headers or the trailers.

use super::ClientError;
use super::https::{connect_io, connect_tls};
use crate::record::Recorder;
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokenwire_servers::protocol::grpc::chat_client::ChatClient;
use tokenwire_servers::protocol::grpc::{ChatRequest, MESSAGE_PREFIX};
use tonic::Status;

/// An HTTP/2 connection's request half as the service tonic's client calls.
#[derive(Clone)]
struct Connection(http2::SendRequest<tonic::body::Body>);

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for Connection {
    type Response = http::Response<Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

pub struct GrpcClient {
    addr: SocketAddr,
    host: String,
    tls: tokio_rustls::TlsConnector,
    connection: Option<Connection>,
    /// Largest message accepted from the server.
    max_message: usize,
    /// Connections opened so far.
    pub connections: u64,
    /// Let the kernel delay ACKs ([`super::delayed_ack`]).
    pub delayed_acks: bool,
}

impl GrpcClient {
    /// `tls` must offer `h2`; `host` is the TLS server name and the `:authority`.
    pub fn new(
        addr: SocketAddr,
        host: &str,
        tls: Arc<rustls::ClientConfig>,
        max_message: usize,
    ) -> Self {
        Self {
            addr,
            host: host.to_owned(),
            tls: tokio_rustls::TlsConnector::from(tls),
            connection: None,
            max_message,
            connections: 0,
            delayed_acks: false,
        }
    }

    async fn connect(&mut self) -> Result<Connection, ClientError> {
        let io = connect_io(self.addr, self.delayed_acks).await?;
        let tls = connect_tls(&self.tls, &self.host, self.addr, io).await?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(ClientError::Http(format!(
                "{} did not take HTTP/2 (ALPN h2); is it the grpc listener?",
                self.addr
            )));
        }
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.connections += 1;
        Ok(Connection(sender))
    }

    /// Streams one prompt's answer into `rec`. With `reuse`, the open connection carries
    /// it (a new one only if there is none or the server closed it).
    pub async fn stream(
        &mut self,
        prompt: &str,
        reuse: bool,
        rec: &mut Recorder,
    ) -> Result<(), ClientError> {
        let connection = match self.connection.take() {
            Some(c) if reuse && !c.0.is_closed() => c,
            _ => self.connect().await?,
        };
        if reuse {
            self.connection = Some(connection.clone());
        }
        let origin = format!("https://{}:{}", self.host, self.addr.port())
            .parse()
            .map_err(|e| ClientError::Http(format!("origin: {e}")))?;
        let mut client =
            ChatClient::with_origin(connection, origin).max_decoding_message_size(self.max_message);
        let request = ChatRequest {
            message: prompt.to_owned(),
        };
        let mut answer = client
            .stream(request)
            .await
            .map_err(status_error)?
            .into_inner();
        while let Some(token) = answer.message().await.map_err(status_error)? {
            rec.bytes(MESSAGE_PREFIX + token.encoded_len());
            rec.token(&token.text);
        }
        Ok(())
    }
}

/// A status the server sent is its report; one tonic made of a broken connection is a
/// lost connection.
fn status_error(status: Status) -> ClientError {
    let from_connection =
        std::error::Error::source(&status).is_some_and(|e| e.is::<hyper::Error>());
    if from_connection {
        ClientError::Lost(status.to_string())
    } else {
        ClientError::Reported(format!("{:?}: {}", status.code(), status.message()))
    }
}
