//! tokenwire-probe: count every packet on an interface per flow and direction, classified
//! by transport and approach.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::time::{Duration, Instant};
use tokenwire_probe::labels::Labels;
use tokenwire_probe::output;
use tokenwire_probe::table::FlowTable;

/// Attributes every packet on an interface to a flow, a transport (tls, http, tcp, quic,
/// udp) and an approach (by server port), and prints live per-flow packet and byte counts.
#[derive(Parser)]
#[command(name = "tokenwire-probe", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Capture live and print a table per flow and direction every --interval and on exit
    /// (SIGINT/SIGTERM or --duration).
    Run(RunArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// eBPF where it can load and attach (the only backend so far).
    Auto,
    /// A TC classifier counting in the kernel (Linux, root or CAP_BPF + CAP_NET_ADMIN).
    Ebpf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Interfaces to capture (repeatable). Loopback is counted on egress only (each packet
    /// passes it once); others on ingress and egress.
    #[arg(long = "iface", default_value = "lo")]
    ifaces: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Seconds between printed tables.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Print JSON lines instead of tables (one object per flow direction, with the
    /// snapshot number and `final` on the last snapshot).
    #[arg(long)]
    json: bool,
    /// Most flow keys the kernel map holds; packets of flows beyond it are counted as
    /// "map full", never dropped.
    #[arg(long, default_value_t = 65_536)]
    max_flows: u32,
    /// Seconds without packets after which a key leaves the kernel map (its totals stay).
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// The same once its connection closed (FIN/RST).
    #[arg(long, default_value_t = 30)]
    closed_timeout: u64,
    /// Turn on the kernel's BPF run-time statistics while running and report the probe's
    /// own cost in ns per packet.
    #[arg(long)]
    bpf_stats: bool,
    /// Server port to approach name, e.g. 9000=my-server (repeatable). Defaults:
    /// 11435=raw_api 8080=sse 4433=webtransport 11434=upstream.
    #[arg(long = "label")]
    labels: Vec<String>,
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    tokenwire_servers::logging::init("warn");
    let Command::Run(args) = Cli::parse().command;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

#[cfg(not(target_os = "linux"))]
async fn run(_args: RunArgs) -> Result<()> {
    bail!("the eBPF backend needs Linux; the pcap backend is not built yet")
}

#[cfg(target_os = "linux")]
async fn run(args: RunArgs) -> Result<()> {
    use tokenwire_probe::backend::ebpf::EbpfBackend;
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let _ = args.backend; // auto and ebpf are the same until the pcap backend exists
    let mut backend = EbpfBackend::start(&args.ifaces, args.max_flows)?;
    let _stats = if args.bpf_stats {
        Some(EbpfBackend::enable_stats()?)
    } else {
        None
    };
    eprintln!(
        "tokenwire-probe: backend ebpf on {}",
        backend
            .ifaces()
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let names: Vec<(u32, String)> = backend
        .ifaces()
        .iter()
        .map(|i| (i.index, i.name.clone()))
        .collect();
    let mut table = FlowTable::new(labels);
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|d| started + Duration::from_secs_f64(d.max(0.0)));
    let mut print = tokio::time::interval(Duration::from_secs_f64(args.interval));
    print.tick().await;
    let mut drain = tokio::time::interval(Duration::from_millis(100));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut snapshot = 0u64;
    let idle = Duration::from_secs(args.idle_timeout);
    let closed = Duration::from_secs(args.closed_timeout);
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = drain.tick() => backend.drain_events(&mut table),
            _ = print.tick() => {
                let now = Instant::now();
                let tracked = backend.poll(&mut table, now)?;
                let stale = table.idle_keys(now, idle, closed);
                if !stale.is_empty() {
                    backend.evict(&mut table, &stale);
                }
                snapshot += 1;
                emit(&args, &table, &names, snapshot, false, &backend.health(tracked));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = &mut until => break,
        }
    }
    let tracked = backend.poll(&mut table, Instant::now())?;
    snapshot += 1;
    emit(
        &args,
        &table,
        &names,
        snapshot,
        true,
        &backend.health(tracked),
    );
    Ok(())
}

fn emit(
    args: &RunArgs,
    table: &FlowTable,
    names: &[(u32, String)],
    snapshot: u64,
    is_final: bool,
    health: &tokenwire_probe::backend::Health,
) {
    let rows = table.rows();
    if args.json {
        print!("{}", output::json_lines(&rows, names, snapshot, is_final));
        print!(
            "{}",
            output::health_json(health, table.evictions, snapshot, is_final)
        );
    } else {
        println!(
            "{}{}  evictions {}\n",
            output::table(&rows, names),
            output::health_line(health),
            table.evictions
        );
    }
}
