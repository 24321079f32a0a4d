//! A WebTransport client that owns its session: reuse keeps one session (one QUIC
//! connection) for every prompt, fresh opens one per prompt.

use super::ClientError;
use super::tls::Trust;
use std::sync::Arc;
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

/// How the client's QUIC connection behaves (quinn's defaults but for the keep-alive).
#[derive(Debug, Clone, Copy)]
pub struct WtOptions {
    /// Length of the client's connection IDs (quinn's 8 when `None`): the server puts the
    /// client's ID in every short-header packet it sends.
    pub cid_len: Option<usize>,
    /// Keep-alive PINGs every this long (none when `None`).
    pub keep_alive: Option<Duration>,
    /// Read received packets' ECN bits and report them in ACKs (quinn's default; quic-go
    /// on macOS, the reference's client, does neither: `tokenwire_servers::quic_socket`).
    pub ecn: bool,
}

impl Default for WtOptions {
    fn default() -> Self {
        Self {
            cid_len: None,
            keep_alive: Some(KEEP_ALIVE),
            ecn: true,
        }
    }
}

impl WtClient {
    /// `url` is the session URL, e.g. `https://127.0.0.1:4433/wt`.
    pub fn new(url: &str, trust: &Trust) -> Result<Self, ClientError> {
        Self::with_options(url, trust, WtOptions::default())
    }

    /// Like [`Self::new`], with the connection's [`WtOptions`].
    pub fn with_options(url: &str, trust: &Trust, opts: WtOptions) -> Result<Self, ClientError> {
        use wtransport::tls::client::{
            NoServerVerification, ServerHashVerification, build_default_tls_config,
        };
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match trust.sha256() {
            Some(hash) => Arc::new(ServerHashVerification::new([
                wtransport::tls::Sha256Digest::new(hash),
            ])),
            None => Arc::new(NoServerVerification::new()),
        };
        let mut tls =
            build_default_tls_config(Arc::new(rustls::RootCertStore::empty()), Some(verifier));
        // Session keys go to $SSLKEYLOGFILE when it is set (nothing otherwise), so tshark
        // or Wireshark can decrypt a capture's QUIC frames.
        tls.key_log = Arc::new(rustls::KeyLogFile::new());
        let builder = ClientConfig::builder();
        let (builder, ecn_switch) = if opts.ecn {
            (builder.with_bind_default(), None)
        } else {
            // Dual-stack, as with_bind_default binds.
            let any = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
            let socket = socket2::Socket::new(
                socket2::Domain::IPV6,
                socket2::Type::DGRAM,
                Some(socket2::Protocol::UDP),
            )
            .and_then(|s| {
                s.set_only_v6(false)?;
                s.bind(&any.into())?;
                Ok(std::net::UdpSocket::from(s))
            })
            .and_then(|s| Ok((s.try_clone()?, s)))
            .map_err(|e| ClientError::Wt(format!("binding the QUIC socket: {e}")))?;
            (builder.with_bind_socket(socket.0), Some(socket.1))
        };
        let mut config = builder
            .with_custom_tls(tls)
            .keep_alive_interval(opts.keep_alive)
            .max_idle_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| ClientError::Wt(e.to_string()))?
            .build();
        if let Some(len) = opts.cid_len {
            config.quic_endpoint_config_mut().cid_generator(move || {
                Box::new(quinn_proto::RandomConnectionIdGenerator::new(len))
            });
        }
        let endpoint = Endpoint::client(config).map_err(|e| ClientError::Wt(e.to_string()))?;
        if let Some(handle) = ecn_switch {
            tokenwire_servers::quic_socket::ignore_received_ecn(&handle)
                .map_err(|e| ClientError::Wt(format!("switching ECN reports off: {e}")))?;
        }
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
