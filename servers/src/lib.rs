//! tokenwire-servers: the embedded Ollama-compatible model and the companions that stream
//! its tokens to clients, one per approach of the registry
//! (`tokenwire_probe_common::approach`) — `raw` (TLS reverse proxy), `sse`, `sse-h2` and
//! `sse-h3` (the SSE relay over HTTP/1.1, HTTP/2 and HTTP/3), `ws` (WebSocket relay),
//! `grpc` (gRPC relay), `wt` (WebTransport relay) — as a library (tests start them in-process, with
//! [`stack::Stack`]) and a binary.

pub mod approach_args;
pub mod certs;
pub mod coalesce;
pub mod gojson;
pub mod grpc_relay;
pub mod h3_relay;
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
pub mod stack;
pub mod stats;
pub mod tls;
pub mod tuning;
pub mod upstream;
pub mod ws_relay;
pub mod wt_relay;
