//! tokenwire-probe: the packet-attribution sidecar.
//!
//! The capture backends (eBPF, libpcap), the flow table and the exporter are built in
//! their own issues; until then this binary only says so.
use clap::Parser;

/// Attributes every packet to a transport and an LLM request (not built yet).
#[derive(Parser)]
#[command(name = "tokenwire-probe", version)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    Cli::parse();
    anyhow::bail!("tokenwire-probe has no capture backend yet; see the project's issues")
}
