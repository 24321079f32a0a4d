//! A WebTransport client that owns its session: reuse keeps one session (one QUIC
//! connection) for every prompt, fresh opens one per prompt.
//!
//! Clients share QUIC endpoints: up to [`CONNECTIONS_PER_ENDPOINT`] clients with the same
//! options use one endpoint (one UDP socket, one quinn driver), as a browser serves its
//! tabs from one process, so a thousand users open ten sockets rather than a thousand.
//! Each socket's buffers are sized for a burst of handshakes
//! (`tokenwire_servers::quic_socket`).

use super::ClientError;
use super::tls::Trust;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::{ConnectingError, ConnectionError};
use wtransport::{ClientConfig, Connection, Endpoint};

/// The client's keep-alive PING interval by default.
pub const KEEP_ALIVE: Duration = Duration::from_secs(3);

/// How long a session may take to open (QUIC and WebTransport handshakes).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Clients per shared endpoint.
pub const CONNECTIONS_PER_ENDPOINT: usize = 100;

pub struct WtClient {
    endpoint: Arc<Endpoint<Client>>,
    /// Zero-length connection IDs: quinn tells this client's sessions apart by the
    /// server's address alone, so the client has a socket of its own, and a new one for
    /// each new session.
    own_socket: Option<(Trust, WtOptions)>,
    url: String,
    session: Option<Connection>,
    /// Sessions (QUIC connections) opened so far.
    pub connections: u64,
}

/// What makes two clients' endpoints interchangeable: the same trust and options, the
/// same network namespace (a socket belongs to the namespace it was made in) and the same
/// tokio runtime (an endpoint's driver runs on the runtime that made it, and stops with it).
#[derive(PartialEq, Eq)]
struct EndpointKey {
    trust: Option<[u8; 32]>,
    cid_len: Option<usize>,
    keep_alive: Option<Duration>,
    ecn: bool,
    netns: u64,
    runtime: Option<tokio::runtime::Id>,
}

struct SharedEndpoint {
    key: EndpointKey,
    endpoint: Weak<Endpoint<Client>>,
    clients: usize,
}

/// Endpoints in use; an endpoint goes when its last client does.
static SHARED: Mutex<Vec<SharedEndpoint>> = Mutex::new(Vec::new());

/// The calling thread's network namespace (0 where there are none).
fn netns() -> u64 {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/proc/thread-self/ns/net").map_or(0, |m| m.ino())
    }
    #[cfg(not(target_os = "linux"))]
    0
}

/// How the client's QUIC connection behaves (quinn's defaults but for the keep-alive).
#[derive(Debug, Clone, Copy)]
pub struct WtOptions {
    /// Length of the client's connection IDs (quinn's 8 when `None`): the server puts the
    /// client's ID in every short-header packet it sends. With zero, each client has a
    /// socket of its own.
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
        if opts.cid_len == Some(0) {
            return Ok(Self {
                endpoint: Arc::new(Self::endpoint(trust, opts)?),
                own_socket: Some((trust.clone(), opts)),
                url: url.to_owned(),
                session: None,
                connections: 0,
            });
        }
        let key = EndpointKey {
            trust: trust.sha256(),
            cid_len: opts.cid_len,
            keep_alive: opts.keep_alive,
            ecn: opts.ecn,
            netns: netns(),
            runtime: tokio::runtime::Handle::try_current().ok().map(|h| h.id()),
        };
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        shared.retain(|s| s.endpoint.strong_count() > 0);
        let found = shared
            .iter_mut()
            .filter(|s| s.key == key && s.clients < CONNECTIONS_PER_ENDPOINT)
            .find_map(|s| {
                let e = s.endpoint.upgrade()?;
                s.clients += 1;
                Some(e)
            });
        let endpoint = match found {
            Some(e) => e,
            None => {
                let e = Arc::new(Self::endpoint(trust, opts)?);
                shared.push(SharedEndpoint {
                    key,
                    endpoint: Arc::downgrade(&e),
                    clients: 1,
                });
                e
            }
        };
        Ok(Self {
            endpoint,
            own_socket: None,
            url: url.to_owned(),
            session: None,
            connections: 0,
        })
    }

    /// A new client endpoint with these options.
    fn endpoint(trust: &Trust, opts: WtOptions) -> Result<Endpoint<Client>, ClientError> {
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
        // Dual-stack, as wtransport's own default binds.
        let any = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
        let bound = tokenwire_servers::quic_socket::bind(
            any,
            tokenwire_servers::quic_socket::DEFAULT_BUFFER,
        )
        .map_err(|e| ClientError::Wt(format!("binding the QUIC socket: {e}")))?;
        let ecn_switch = (!opts.ecn).then_some(bound.handle);
        let builder = ClientConfig::builder().with_bind_socket(bound.socket);
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
        Ok(endpoint)
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
        if let Some((trust, opts)) = &self.own_socket
            && self.connections > 0
        {
            self.endpoint = Arc::new(Self::endpoint(trust, *opts)?);
        }
        let url = &self.url;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, self.endpoint.connect(url))
            .await
            .map_err(|_| ClientError::ConnectTimeout {
                target: url.clone(),
                after: CONNECT_TIMEOUT,
            })?
            .map_err(|e| match e {
                ConnectingError::ConnectionError(ConnectionError::TimedOut) => {
                    ClientError::ConnectTimeout {
                        target: url.clone(),
                        after: CONNECT_TIMEOUT,
                    }
                }
                ConnectingError::SessionRejected
                | ConnectingError::ConnectionError(
                    ConnectionError::ConnectionClosed(_) | ConnectionError::ApplicationClosed(_),
                ) => ClientError::Refused {
                    target: url.clone(),
                    reason: e.to_string(),
                },
                e => ClientError::Wt(format!("connecting to {url}: {e}")),
            })?;
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
    /// The endpoint is shared: the last of its clients to shut down does the waiting.
    pub async fn shutdown(&mut self) {
        self.close();
        if Arc::strong_count(&self.endpoint) == 1 {
            let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        }
    }
}

/// One prompt as one bidirectional stream of `session`, its answer read to the end and
/// neither timed nor parsed: the bytes it returned. `opened` runs once the stream is open,
/// before the prompt goes (tests line streams up with it, or note when it opened).
pub async fn exchange<F: std::future::Future<Output = ()>>(
    session: &Connection,
    prompt: &str,
    opened: impl FnOnce() -> F,
) -> Result<usize, ClientError> {
    let wt = |e: &dyn std::fmt::Display| ClientError::Wt(e.to_string());
    let (mut send, mut recv) = session
        .open_bi()
        .await
        .map_err(|e| wt(&e))?
        .await
        .map_err(|e| wt(&e))?;
    opened().await;
    let frame = tokenwire_servers::protocol::framing::encode(prompt.as_bytes());
    send.write_all(&frame).await.map_err(|e| wt(&e))?;
    send.finish().await.map_err(|e| wt(&e))?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while let Some(k) = recv.read(&mut buf).await.map_err(|e| wt(&e))? {
        n += k;
    }
    Ok(n)
}
