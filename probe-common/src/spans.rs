//! The spans protocol's wire format (docs/spans.md): one JSON object per datagram, from a
//! server to the probe. Both sides use these types: the companions build messages with the
//! constructors, the probe reads datagrams into [`Message`] and validates each field
//! (`tokenwire_probe::spans`), so the two cannot drift apart.
//!
//! Needs `std` (strings, addresses) and serde: the `spans` feature.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::string::{String, ToString};

/// The protocol version.
pub const VERSION: u64 = 1;
/// The socket path servers send to unless told otherwise (`--spans`, [`SOCKET_ENV`]).
pub const DEFAULT_SOCKET: &str = "/tmp/tokenwire/spans.sock";
/// The environment variable naming the socket path, for servers and the probe alike.
pub const SOCKET_ENV: &str = "TOKENWIRE_SPANS";

/// How a request ended, as its server says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndOutcome {
    Ok,
    /// The client went away before the end.
    Aborted,
    /// The server failed it (bad input, upstream failure).
    Error,
}

impl EndOutcome {
    pub const ALL: [EndOutcome; 3] = [EndOutcome::Ok, EndOutcome::Aborted, EndOutcome::Error];

    pub const fn as_str(self) -> &'static str {
        match self {
            EndOutcome::Ok => "ok",
            EndOutcome::Aborted => "aborted",
            EndOutcome::Error => "error",
        }
    }
}

/// One message, as it is on the wire. Every field is optional here so that the reader can
/// say which one a bad message lacks; the constructors fill in what each type carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<u64>,
    /// `start`, `first_token`, `end` or `close`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The request's id, unique among the sender's open requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The approach's probe label (`Approach::label`), or a label of the server's own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approach: Option<String>,
    /// `tls`, `tcp`, `http`, `quic` or `udp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The sender's wall clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_unix_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

impl Message {
    fn of(kind: &str, time_unix_ns: u64) -> Self {
        Self {
            v: Some(VERSION),
            kind: Some(kind.into()),
            time_unix_ns: Some(time_unix_ns),
            ..Self::default()
        }
    }

    /// A request began on the connection `client` -> `server`.
    pub fn start(
        id: &str,
        approach: &str,
        transport: &str,
        client: SocketAddr,
        server: SocketAddr,
        time_unix_ns: u64,
    ) -> Self {
        Self {
            id: Some(id.into()),
            approach: Some(approach.into()),
            transport: Some(transport.into()),
            client: Some(client.to_string()),
            server: Some(server.to_string()),
            ..Self::of("start", time_unix_ns)
        }
    }

    /// The request's first token went to the client.
    pub fn first_token(id: &str, time_unix_ns: u64) -> Self {
        Self {
            id: Some(id.into()),
            ..Self::of("first_token", time_unix_ns)
        }
    }

    /// The request ended, having sent `tokens` tokens in `app_bytes` bytes of answer.
    pub fn end(
        id: &str,
        tokens: u64,
        app_bytes: u64,
        outcome: EndOutcome,
        time_unix_ns: u64,
    ) -> Self {
        Self {
            id: Some(id.into()),
            tokens: Some(tokens),
            app_bytes: Some(app_bytes),
            outcome: Some(outcome.as_str().into()),
            ..Self::of("end", time_unix_ns)
        }
    }

    /// The connection `client` -> `server` ended.
    pub fn close(
        transport: &str,
        client: SocketAddr,
        server: SocketAddr,
        time_unix_ns: u64,
    ) -> Self {
        Self {
            transport: Some(transport.into()),
            client: Some(client.to_string()),
            server: Some(server.to_string()),
            ..Self::of("close", time_unix_ns)
        }
    }
}
