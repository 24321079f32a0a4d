//! A WebTransport client that owns its session: reuse keeps one session (one QUIC
//! connection) for every prompt, fresh opens one per prompt.

use super::ClientError;
use super::tls::Trust;
use std::time::Duration;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::{ClientConfig, Connection, Endpoint};

/// The client's keep-alive PING interval by default.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);

pub struct WtClient {
    endpoint: Endpoint<Client>,
    url: String,
    session: Option<Connection>,
    /// Sessions (QUIC connections) opened so far.
    pub connections: u64,
}

impl WtClient {
    /// `url` is the session URL, e.g. `https://127.0.0.1:4433/wt`.
    pub fn new(url: &str, trust: &Trust) -> Result<Self, ClientError> {
        Self::with_options(url, trust, None, Some(KEEP_ALIVE))
    }

    /// Like [`Self::new`], with `cid_len`-byte connection IDs for this client (quinn's 8
    /// when `None`: the server puts the client's ID in every short-header packet it sends)
    /// and keep-alive PINGs every `keep_alive` (none when `None`).
    pub fn with_options(
        url: &str,
        trust: &Trust,
        cid_len: Option<usize>,
        keep_alive: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let builder = ClientConfig::builder().with_bind_default();
        let builder = match trust.sha256() {
            Some(hash) => {
                builder.with_server_certificate_hashes([wtransport::tls::Sha256Digest::new(hash)])
            }
            None => builder.with_no_cert_validation(),
        };
        let mut config = builder
            .keep_alive_interval(keep_alive)
            .max_idle_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| ClientError::Wt(e.to_string()))?
            .build();
        if let Some(len) = cid_len {
            config.quic_endpoint_config_mut().cid_generator(move || {
                Box::new(quinn_proto::RandomConnectionIdGenerator::new(len))
            });
        }
        let endpoint = Endpoint::client(config).map_err(|e| ClientError::Wt(e.to_string()))?;
        Ok(Self {
            endpoint,
            url: url.to_owned(),
            session: None,
            connections: 0,
        })
    }

    /// A session for the next prompt: the open one with `reuse`, else a new one.
    pub async fn session(&mut self, reuse: bool) -> Result<Connection, ClientError> {
        if reuse
            && let Some(s) = &self.session
            && s.quic_connection().close_reason().is_none()
        {
            return Ok(s.clone());
        }
        if let Some(old) = self.session.take() {
            old.close(wtransport::VarInt::from_u32(0), b"done");
        }
        let conn = tokio::time::timeout(Duration::from_secs(5), self.endpoint.connect(&self.url))
            .await
            .map_err(|_| ClientError::Wt(format!("connecting to {}: timed out", self.url)))?
            .map_err(|e| ClientError::Wt(format!("connecting to {}: {e}", self.url)))?;
        self.connections += 1;
        self.session = Some(conn.clone());
        Ok(conn)
    }

    /// Closes the current session (after a fresh-mode request).
    pub fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.close(wtransport::VarInt::from_u32(0), b"done");
        }
    }

    /// Closes the session and waits (briefly) until the server has acknowledged the close,
    /// so it does not keep the session until its idle timeout.
    pub async fn shutdown(&mut self) {
        self.close();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
