//! tokenwire-servers: the embedded Ollama-compatible model and the three companions that
//! stream its tokens to clients — `raw` (TLS reverse proxy), `sse` (HTTPS SSE relay) and
//! `wt` (WebTransport relay) — as a library (tests start them in-process) and a binary.

pub mod certs;
pub mod coalesce;
pub mod gojson;
pub mod http;
pub mod launch;
pub mod limits;
pub mod logging;
pub mod model;
pub mod page;
pub mod protocol;
pub mod quic_socket;
pub mod raw;
pub mod spans;
pub mod sse_relay;
pub mod stats;
pub mod tls;
pub mod tuning;
pub mod upstream;
pub mod wt_relay;
