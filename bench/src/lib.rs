//! tokenwire-bench: the benchmark client. Streams prompts through the `raw`, `sse` and `wt`
//! approaches, with fresh or reused connections, and measures what a user sees.

/// The approach registry, one home for every crate (docs/architecture.md).
pub use tokenwire_probe_common::approach;
pub mod browser;
pub mod client;
#[cfg(target_os = "linux")]
pub mod matrix;
pub mod netem;
pub mod prompts;
pub mod record;
pub mod report;
#[cfg(target_os = "linux")]
pub mod results;
pub mod runner;
pub mod server_info;
pub mod svg;
pub mod wire;
pub mod workload;
