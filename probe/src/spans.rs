//! The spans protocol (docs/spans.md): what servers tell the probe about requests, one JSON
//! object per datagram. This module parses and validates messages; it never trusts them to
//! be well formed, small, or of a version it knows. Platform-free.

use std::net::{IpAddr, SocketAddr};
pub use tokenwire_probe_common::spans::{DEFAULT_SOCKET, SOCKET_ENV, VERSION};
use tokenwire_probe_common::spans::{EndOutcome, Message};
/// Largest message accepted, bytes. Larger datagrams are rejected whole.
pub const MAX_SPAN_BYTES: usize = 4096;
/// Longest request id accepted.
pub const MAX_ID_LEN: usize = 128;
/// Longest approach name accepted (names become Prometheus label values).
pub const MAX_APPROACH_LEN: usize = 64;

/// The transport a span says its connection uses: TCP-based or UDP-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpanTransport {
    Tcp,
    Udp,
}

impl SpanTransport {
    pub fn proto(self) -> u8 {
        match self {
            SpanTransport::Tcp => crate::flow::IPPROTO_TCP,
            SpanTransport::Udp => crate::flow::IPPROTO_UDP,
        }
    }
}

/// A connection as a server names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    pub transport: SpanTransport,
    pub client: SocketAddr,
    /// The server's address; an unspecified IP (a wildcard bind) matches any address with
    /// the port.
    pub server: SocketAddr,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// The client went away before the end.
    Aborted,
    /// The server failed it (bad input, upstream failure).
    Error,
    /// The connection ended without an end span (the probe's own verdict).
    Unknown,
}

impl From<EndOutcome> for Outcome {
    fn from(o: EndOutcome) -> Self {
        match o {
            EndOutcome::Ok => Outcome::Ok,
            EndOutcome::Aborted => Outcome::Aborted,
            EndOutcome::Error => Outcome::Error,
        }
    }
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Aborted => "aborted",
            Outcome::Error => "error",
            Outcome::Unknown => "unknown",
        }
    }
}

/// One message.
#[derive(Debug, Clone, PartialEq)]
pub enum Span {
    Start {
        id: String,
        approach: String,
        conn: ConnRef,
        /// The transport as the server named it: tls, tcp, http, quic or udp.
        transport: &'static str,
        time_ns: u64,
    },
    FirstToken {
        id: String,
        time_ns: u64,
    },
    End {
        id: String,
        time_ns: u64,
        tokens: u64,
        app_bytes: u64,
        outcome: Outcome,
    },
    /// The connection ended (the server closed it or saw it close).
    Close {
        conn: ConnRef,
        time_ns: u64,
    },
}

impl Span {
    /// The sender's clock.
    pub fn time_ns(&self) -> u64 {
        match self {
            Span::Start { time_ns, .. }
            | Span::FirstToken { time_ns, .. }
            | Span::End { time_ns, .. }
            | Span::Close { time_ns, .. } => *time_ns,
        }
    }
}

/// Reads a spans file: one message per line (what `run --spans-log` writes). Bad lines
/// are returned as (line number, error) and skipped; spans come back in time order.
pub fn read_lines(text: &str) -> (Vec<Span>, Vec<(usize, SpanError)>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match parse(line.as_bytes()) {
            Ok(s) => ok.push(s),
            Err(e) => bad.push((i + 1, e)),
        }
    }
    ok.sort_by_key(Span::time_ns);
    (ok, bad)
}

/// Why a message was rejected; each has a stable `reason` for the rejection counter.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpanError {
    #[error("message of {0} bytes is over the {MAX_SPAN_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a JSON object: {0}")]
    Json(String),
    #[error("unknown protocol version {0} (this probe speaks {VERSION})")]
    Version(u64),
    #[error("unknown span type {0:?}")]
    UnknownType(String),
    #[error("field {0:?} missing or invalid")]
    Field(&'static str),
}

impl SpanError {
    /// Its reason, for the rejection counter.
    pub fn reason(&self) -> RejectReason {
        match self {
            SpanError::TooLarge(_) => RejectReason::TooLarge,
            SpanError::Json(_) => RejectReason::Malformed,
            SpanError::Version(_) => RejectReason::Version,
            SpanError::UnknownType(_) => RejectReason::UnknownType,
            SpanError::Field(_) => RejectReason::InvalidField,
        }
    }
}

/// Every reason a span message is dropped, as `tokenwire_probe_spans_rejected_total`'s
/// `reason` label: those of a message that does not parse ([`SpanError`]) and those of a
/// parsed one that cannot apply. The exporter lists them all from here.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, strum::EnumIter, strum::IntoStaticStr,
)]
#[strum(serialize_all = "snake_case")]
pub enum RejectReason {
    TooLarge,
    Malformed,
    Version,
    UnknownType,
    InvalidField,
    /// An end or first token for a request the probe does not know.
    UnknownRequest,
    /// A start reusing a running request's id.
    DuplicateId,
    /// A second end for one request.
    DuplicateEnd,
    /// A start naming a new approach once the approach limit is reached.
    TooManyApproaches,
    /// A start while `--max-open-requests` requests are not yet final.
    TooManyRequests,
    /// A start on a new connection while `--max-span-connections` are followed.
    TooManyConnections,
    /// A start on a connection already running `--max-streams-per-connection` requests.
    TooManyStreams,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn all() -> impl Iterator<Item = RejectReason> {
        <Self as strum::IntoEnumIterator>::iter()
    }
}

/// Span messages taken and refused.
#[derive(Debug, Default, Clone)]
pub struct SpanCounts {
    pub accepted: u64,
    pub rejected: std::collections::BTreeMap<RejectReason, u64>,
}

impl SpanCounts {
    pub fn reject(&mut self, reason: RejectReason) {
        *self.rejected.entry(reason).or_default() += 1;
    }
}

/// Parses and validates one datagram.
pub fn parse(bytes: &[u8]) -> Result<Span, SpanError> {
    if bytes.len() > MAX_SPAN_BYTES {
        return Err(SpanError::TooLarge(bytes.len()));
    }
    let w: Message = serde_json::from_slice(bytes).map_err(|e| SpanError::Json(e.to_string()))?;
    match w.v {
        Some(VERSION) => {}
        Some(v) => return Err(SpanError::Version(v)),
        None => return Err(SpanError::Field("v")),
    }
    let kind = w.kind.as_deref().ok_or(SpanError::Field("type"))?;
    let time_ns = w.time_unix_ns.ok_or(SpanError::Field("time_unix_ns"))?;
    let id = || -> Result<String, SpanError> {
        match &w.id {
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => Ok(id.clone()),
            _ => Err(SpanError::Field("id")),
        }
    };
    let conn = || -> Result<ConnRef, SpanError> {
        let transport = match w.transport.as_deref() {
            Some("tcp" | "tls" | "http") => SpanTransport::Tcp,
            Some("udp" | "quic") => SpanTransport::Udp,
            _ => return Err(SpanError::Field("transport")),
        };
        let addr = |s: &Option<String>, f| {
            s.as_deref()
                .and_then(|s| s.parse::<SocketAddr>().ok())
                .map(canonical)
                .ok_or(SpanError::Field(f))
        };
        Ok(ConnRef {
            transport,
            client: addr(&w.client, "client")?,
            server: addr(&w.server, "server")?,
        })
    };
    match kind {
        "start" => {
            let approach = match &w.approach {
                Some(a) if valid_approach(a) => a.clone(),
                _ => return Err(SpanError::Field("approach")),
            };
            let transport = match w.transport.as_deref() {
                Some("tls") => "tls",
                Some("http") => "http",
                Some("quic") => "quic",
                Some("udp") => "udp",
                _ => "tcp",
            };
            Ok(Span::Start {
                id: id()?,
                approach,
                conn: conn()?,
                transport,
                time_ns,
            })
        }
        "first_token" => Ok(Span::FirstToken { id: id()?, time_ns }),
        "end" => {
            let outcome = EndOutcome::ALL
                .into_iter()
                .find(|o| w.outcome.as_deref() == Some(o.as_str()))
                .map(Outcome::from)
                .ok_or(SpanError::Field("outcome"))?;
            Ok(Span::End {
                id: id()?,
                time_ns,
                tokens: w.tokens.ok_or(SpanError::Field("tokens"))?,
                app_bytes: w.app_bytes.ok_or(SpanError::Field("app_bytes"))?,
                outcome,
            })
        }
        "close" => Ok(Span::Close {
            conn: conn()?,
            time_ns,
        }),
        other => Err(SpanError::UnknownType(other.chars().take(32).collect())),
    }
}

/// Letters, digits, `_`, `-` and `.`: safe as a label value and in a table.
fn valid_approach(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= MAX_APPROACH_LEN
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// IPv4-mapped IPv6 addresses (a dual-stack socket's view of an IPv4 peer) as IPv4, the
/// way packets carry them.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_type() {
        let s = parse(br#"{"v":1,"type":"start","id":"r1","approach":"sse","transport":"tls","client":"[::ffff:127.0.0.1]:5000","server":"127.0.0.1:8080","time_unix_ns":5}"#).unwrap();
        assert_eq!(
            s,
            Span::Start {
                id: "r1".into(),
                approach: "sse".into(),
                conn: ConnRef {
                    transport: SpanTransport::Tcp,
                    client: "127.0.0.1:5000".parse().unwrap(),
                    server: "127.0.0.1:8080".parse().unwrap(),
                },
                transport: "tls",
                time_ns: 5
            }
        );
        assert!(matches!(
            parse(br#"{"v":1,"type":"first_token","id":"r1","time_unix_ns":6}"#),
            Ok(Span::FirstToken { time_ns: 6, .. })
        ));
        assert!(matches!(
            parse(br#"{"v":1,"type":"end","id":"r1","time_unix_ns":7,"tokens":3,"app_bytes":40,"outcome":"aborted","extra":"ignored"}"#),
            Ok(Span::End { tokens: 3, app_bytes: 40, outcome: Outcome::Aborted, .. })
        ));
        assert!(matches!(
            parse(br#"{"v":1,"type":"close","transport":"quic","client":"[::1]:1","server":"[::]:4433","time_unix_ns":8}"#),
            Ok(Span::Close { conn: ConnRef { transport: SpanTransport::Udp, .. }, .. })
        ));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let big = vec![b' '; MAX_SPAN_BYTES + 1];
        let cases: [(&[u8], &str); 9] = [
            (&big, "too_large"),
            (b"not json", "malformed"),
            (b"[1,2]", "malformed"),
            (br#"{"v":2,"type":"start"}"#, "version"),
            (br#"{"type":"start","time_unix_ns":1}"#, "invalid_field"),
            (br#"{"v":1,"type":"dance","time_unix_ns":1}"#, "unknown_type"),
            (
                br#"{"v":1,"type":"start","id":"x","approach":"bad label\"","transport":"tls","client":"127.0.0.1:1","server":"127.0.0.1:2","time_unix_ns":1}"#,
                "invalid_field",
            ),
            (
                br#"{"v":1,"type":"start","id":"x","approach":"a","transport":"sctp","client":"127.0.0.1:1","server":"127.0.0.1:2","time_unix_ns":1}"#,
                "invalid_field",
            ),
            (
                br#"{"v":1,"type":"end","id":"x","time_unix_ns":1,"tokens":-1,"app_bytes":0,"outcome":"ok"}"#,
                "malformed",
            ),
        ];
        for (input, reason) in cases {
            let e = parse(input).unwrap_err();
            assert_eq!(e.reason().as_str(), reason, "{e}");
        }
    }
}
