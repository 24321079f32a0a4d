//! tokenwire-probe: attributes every packet on an interface to a flow, a transport and an
//! approach. The parsing, classification and flow table are platform-free; capture
//! backends (eBPF on Linux) feed them.

pub mod accumulate;
pub mod analyze;
pub mod api;
pub mod attribution;
pub mod backend;
pub mod capfile;
pub mod classify;
pub mod flow;
pub mod labels;
pub mod metrics;
pub mod output;
pub mod packet;
pub mod pcapfile;
pub mod pcapng;
#[cfg(unix)]
pub mod span_socket;
pub mod spans;
pub mod table;
