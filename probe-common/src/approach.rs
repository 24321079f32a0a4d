//! The approach registry: every way of streaming tokens that tokenwire compares, with all
//! that the crates know of it, in one table.
//!
//! The companions (servers), the bench's clients, the probe's default port labels, xtask,
//! the browser page (the SSE relay serves it this table) and the dashboard (whose
//! `approach` variable takes the labels) all read it. Adding an approach is an entry here,
//! a relay module and a client module (docs/architecture.md, "Adding an approach"); the
//! matches over [`Approach`] have no catch-all arm, so the compiler lists every place
//! that must say what the new one does.
//!
//! `no_std` like the rest of the crate (the kernel side never reads it): plain constants.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use core::str::FromStr;

/// One way of streaming tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Approach {
    /// POST /v1/chat/completions (stream) through the TLS reverse proxy to Ollama's API.
    Raw,
    /// POST /chat on the HTTPS SSE relay, over HTTP/1.1.
    Sse,
    /// The same over HTTP/2 (TLS ALPN `h2`), on a listener of its own.
    SseH2,
    /// The same over HTTP/3 (QUIC, ALPN `h3`), on a UDP port of its own.
    SseH3,
    /// WebSocket over TLS: a prompt in, one text message per token out.
    Ws,
    /// gRPC server-streaming over TLS and HTTP/2: one message per token.
    Grpc,
    /// One bidirectional stream per prompt on a WebTransport session.
    Wt,
}

/// What carries an approach's bytes, as the companions' spans name it (docs/spans.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Transport {
    /// TLS over TCP.
    Tls,
    /// QUIC over UDP.
    Quic,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Quic => "quic",
        }
    }
}

/// Everything the crates know of one approach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The command-line name: `--approach NAME`, `tokenwire-servers NAME`, the bench's
    /// results and the browser page.
    pub name: &'static str,
    /// The probe's name for it: the companions' spans, the probe's default port label and
    /// Prometheus' `approach` label.
    pub label: &'static str,
    /// The reference study's name for it, for tables and charts.
    pub title: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The companion's default port on 127.0.0.1.
    pub port: u16,
    /// The path a client asks for.
    pub path: &'static str,
    pub transport: Transport,
    /// A browser can stream through it (the page and `tokenwire-bench browser`).
    pub browser: bool,
}

const RAW: Spec = Spec {
    name: "raw",
    label: "raw_api",
    title: "Raw API",
    about: "TLS reverse proxy to the upstream's whole Ollama API",
    port: 11435,
    path: "/v1/chat/completions",
    transport: Transport::Tls,
    browser: true,
};

const SSE: Spec = Spec {
    name: "sse",
    label: "sse",
    title: "HTTP SSE",
    about: "HTTPS SSE relay: POST /chat {\"message\": \"...\"}, and the browser page at GET /",
    port: 8080,
    path: "/chat",
    transport: Transport::Tls,
    browser: true,
};

/// A listener of its own, not the `sse` one's: a browser takes `h2` wherever it is offered,
/// so the `sse` listener offers only `http/1.1` and this one `h2` first.
const SSE_H2: Spec = Spec {
    name: "sse-h2",
    label: "sse_h2",
    title: "HTTP/2 SSE",
    about: "The SSE relay over HTTP/2 (TLS ALPN h2, http/1.1 as fallback): POST /chat",
    port: 8443,
    path: "/chat",
    transport: Transport::Tls,
    browser: true,
};

/// UDP, and TCP on the same port number for clients that learn of HTTP/3 from the TCP
/// listener's `Alt-Svc` (those requests are labelled by their HTTP version: `sse`/`sse_h2`).
const SSE_H3: Spec = Spec {
    name: "sse-h3",
    label: "sse_h3",
    title: "HTTP/3 SSE",
    about: "The SSE relay over HTTP/3 (QUIC on UDP, Alt-Svc from TCP on the same port): POST /chat",
    port: 8444,
    path: "/chat",
    transport: Transport::Quic,
    browser: true,
};

const WS: Spec = Spec {
    name: "ws",
    label: "websocket",
    title: "WebSocket",
    about: "WebSocket relay over TLS (wss://.../ws): {\"message\": \"...\"} in, one text message per token out, an empty one at the end",
    port: 8081,
    path: "/ws",
    transport: Transport::Tls,
    browser: true,
};

/// Not a browser's: gRPC needs HTTP/2 trailers, which no browser API exposes.
const GRPC: Spec = Spec {
    name: "grpc",
    label: "grpc",
    title: "gRPC",
    about: "gRPC server-streaming over TLS and HTTP/2 (tokenwire.v1.Chat/Stream, servers/proto/chat.proto): one message per token",
    port: 50051,
    path: "/tokenwire.v1.Chat/Stream",
    transport: Transport::Tls,
    browser: false,
};

const WT: Spec = Spec {
    name: "wt",
    label: "webtransport",
    title: "WebTransport",
    about: "WebTransport relay on UDP: one bidirectional stream per prompt",
    port: 4433,
    path: "/wt",
    transport: Transport::Quic,
    browser: true,
};

/// The port of the model's API (Ollama's default, and the embedded model's), the relays'
/// default upstream.
pub const MODEL_PORT: u16 = 11434;
/// The probe's label for [`MODEL_PORT`].
pub const MODEL_LABEL: &str = "upstream";
/// vLLM's OpenAI-compatible server's default port, read passively beside [`MODEL_PORT`].
pub const VLLM_PORT: u16 = 8000;

impl Approach {
    /// Every approach, in the order of tables and charts.
    pub const ALL: [Approach; 7] = [
        Approach::Raw,
        Approach::Sse,
        Approach::SseH2,
        Approach::SseH3,
        Approach::Ws,
        Approach::Grpc,
        Approach::Wt,
    ];

    /// The reference study's three, which its tables compare (`--approach raw,sse,wt`).
    pub const REFERENCE: [Approach; 3] = [Approach::Raw, Approach::Sse, Approach::Wt];

    pub const fn spec(self) -> &'static Spec {
        match self {
            Approach::Raw => &RAW,
            Approach::Sse => &SSE,
            Approach::SseH2 => &SSE_H2,
            Approach::SseH3 => &SSE_H3,
            Approach::Ws => &WS,
            Approach::Grpc => &GRPC,
            Approach::Wt => &WT,
        }
    }

    pub const fn as_str(self) -> &'static str {
        self.spec().name
    }

    pub const fn label(self) -> &'static str {
        self.spec().label
    }

    pub const fn title(self) -> &'static str {
        self.spec().title
    }

    pub const fn port(self) -> u16 {
        self.spec().port
    }

    pub const fn path(self) -> &'static str {
        self.spec().path
    }

    pub const fn transport(self) -> Transport {
        self.spec().transport
    }

    /// The companion's default address.
    pub const fn default_addr(self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port())
    }

    /// The approach the probe calls `label`.
    pub fn from_label(label: &str) -> Option<Approach> {
        Self::ALL.into_iter().find(|a| a.label() == label)
    }
}

impl fmt::Display for Approach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no approach's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownApproach;

impl fmt::Display for UnknownApproach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("unknown approach: expected ")?;
        for (i, a) in Approach::ALL.iter().enumerate() {
            let sep = match i {
                0 => "",
                _ if i + 1 == Approach::ALL.len() => " or ",
                _ => ", ",
            };
            write!(f, "{sep}{a}")?;
        }
        Ok(())
    }
}

impl core::error::Error for UnknownApproach {}

impl FromStr for Approach {
    type Err = UnknownApproach;
    fn from_str(s: &str) -> Result<Self, UnknownApproach> {
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or(UnknownApproach)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Approach {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Approach {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = Approach;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an approach's name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Approach, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_ports_are_each_one_approachs() {
        for (i, a) in Approach::ALL.iter().enumerate() {
            assert_eq!(a.as_str().parse(), Ok(*a));
            assert_eq!(Approach::from_label(a.label()), Some(*a));
            assert!(a.path().starts_with('/'), "{a}");
            for b in &Approach::ALL[i + 1..] {
                assert_ne!(a.as_str(), b.as_str());
                assert_ne!(a.label(), b.label());
                assert_ne!(a.title(), b.title());
                assert_ne!(a.port(), b.port(), "{a} and {b}: one port each");
            }
            assert_ne!(a.port(), MODEL_PORT);
            assert_ne!(a.label(), MODEL_LABEL);
        }
        assert_eq!("quic".parse::<Approach>(), Err(UnknownApproach));
    }
}
