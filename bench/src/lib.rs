//! tokenwire-bench: the benchmark client. Streams prompts through the `raw`, `sse` and `wt`
//! approaches, with fresh or reused connections, and measures what a user sees.

pub mod approach;
pub mod client;
pub mod prompts;
pub mod record;
pub mod report;
pub mod runner;
pub mod server_info;
pub mod wire;
pub mod workload;
