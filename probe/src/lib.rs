//! tokenwire-probe: attributes every packet on an interface to a flow, a transport and an
//! approach, and with the servers' spans to the request it belongs to.
//!
//! Layers, each using only those above it (docs/architecture.md):
//!
//! 1. vocabulary and parsers: [`flow`], [`health`], [`labels`], [`packet`], [`classify`],
//!    [`spans`], [`capture_file`], [`api`] (queries);
//! 2. [`attribution`]: the period algorithm (cuts a connection's counters at spans);
//! 3. [`table`]: the flow table (keys -> connections, classified; the counts attribution reads);
//! 4. [`records`], [`metrics`], [`output`]: what comes out (records, Prometheus, tables);
//! 5. [`backend`]: where packets come from (eBPF, libpcap, capture-file replay);
//! 6. [`engine`]: the loop body that owns a backend, the table, attribution and metrics;
//!    [`analyze`] runs it over a capture file; the binary runs it live.
//!
//! [`span_socket`] and [`shutdown`] are the live binary's I/O; [`web_config`] and
//! [`web_tls`] guard its HTTP endpoints (`--web-config`).

pub mod analyze;
pub mod api;
pub mod attribution;
pub mod backend;
pub mod capture_file;
pub mod classify;
pub mod engine;
pub mod flow;
pub mod health;
pub mod labels;
pub mod llm;
pub mod metrics;
pub mod output;
pub mod packet;
pub mod passive;
pub mod records;
pub mod shutdown;
pub mod span_socket;
pub mod spans;
pub mod table;
pub mod web_config;
pub mod web_tls;
