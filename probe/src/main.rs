//! tokenwire-probe: count every packet on an interface per flow and direction, classified
//! by transport and approach.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::time::{Duration, Instant};
use tokenwire_probe::backend::Health;
use tokenwire_probe::backend::pcap::{PcapBackend, PcapOptions};
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
    /// Read a capture file (pcap from tcpdump -w, or pcapng from tshark/Wireshark) and print
    /// the same table (or JSON lines) as a live run. A truncated or corrupt file prints
    /// the totals up to the broken packet, then says where it broke (exit status 1).
    Analyze(AnalyzeArgs),
}

#[derive(clap::Args)]
struct AnalyzeArgs {
    /// The capture file.
    file: std::path::PathBuf,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
    /// Server port to approach name, e.g. 9000=my-server (repeatable).
    #[arg(long = "label")]
    labels: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backend {
    /// eBPF where it can load and attach, else libpcap (says which, and why).
    Auto,
    /// A TC classifier counting in the kernel (Linux, root or CAP_BPF + CAP_NET_ADMIN).
    Ebpf,
    /// libpcap: headers copied to user space and counted there (needs CAP_NET_RAW).
    Pcap,
}

#[cfg(target_os = "macos")]
const DEFAULT_IFACE: &str = "lo0";
#[cfg(not(target_os = "macos"))]
const DEFAULT_IFACE: &str = "lo";

#[derive(clap::Args)]
struct RunArgs {
    /// Interfaces to capture (repeatable). Loopback is counted on egress only (each packet
    /// passes it once); others on ingress and egress.
    #[arg(long = "iface", default_value = DEFAULT_IFACE)]
    ifaces: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    backend: Backend,
    /// Seconds between printed tables.
    #[arg(long, default_value_t = 2.0)]
    interval: f64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Print JSON lines instead of tables: one object per flow direction and one `health`
    /// object per snapshot, each with the snapshot number and `final` on the last one.
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
    /// pcap: bytes kept of each packet (headers and the first payload bytes suffice).
    #[arg(long, default_value_t = tokenwire_probe::backend::pcap::DEFAULT_SNAPLEN)]
    snaplen: i32,
    /// pcap: kernel buffer size in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    buffer_size: i32,
    /// pcap: a BPF capture filter (tcpdump syntax), e.g. "port 8080 or port 4433".
    #[arg(long)]
    filter: Option<String>,
    /// pcap: capture only the labelled ports (a filter built from the labels).
    #[arg(long, conflicts_with = "filter")]
    filter_labelled: bool,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let args = match Cli::parse().command {
        Command::Run(args) => args,
        Command::Analyze(args) => return analyze(args),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(args))
}

/// The backend a live run uses.
enum Live {
    #[cfg(target_os = "linux")]
    Ebpf(Box<tokenwire_probe::backend::ebpf::EbpfBackend>),
    Pcap(PcapBackend),
}

impl Live {
    fn name(&self) -> &'static str {
        match self {
            #[cfg(target_os = "linux")]
            Live::Ebpf(_) => "ebpf",
            Live::Pcap(_) => "pcap",
        }
    }

    fn ifaces(&self) -> Vec<(u32, String)> {
        match self {
            #[cfg(target_os = "linux")]
            Live::Ebpf(b) => b
                .ifaces()
                .iter()
                .map(|i| (i.index, i.name.clone()))
                .collect(),
            Live::Pcap(b) => b.ifaces.clone(),
        }
    }

    fn drain(&mut self, table: &mut FlowTable) {
        #[cfg(target_os = "linux")]
        if let Live::Ebpf(b) = self {
            b.drain_events(table);
        }
        let _ = table;
    }

    fn poll(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64> {
        match self {
            #[cfg(target_os = "linux")]
            Live::Ebpf(b) => Ok(b.poll(table, now)?),
            Live::Pcap(b) => {
                if let Some(e) = b.error() {
                    bail!("the capture stopped: {e}");
                }
                Ok(b.poll(table, now))
            }
        }
    }

    fn evict(&mut self, table: &mut FlowTable, keys: &[tokenwire_probe::flow::PacketKey]) {
        match self {
            #[cfg(target_os = "linux")]
            Live::Ebpf(b) => b.evict(table, keys),
            Live::Pcap(b) => b.evict(table, keys),
        }
    }

    fn health(&self, tracked: u64) -> Health {
        match self {
            #[cfg(target_os = "linux")]
            Live::Ebpf(b) => b.health(tracked),
            Live::Pcap(b) => b.health(),
        }
    }
}

fn start_pcap(args: &RunArgs, labels: &Labels) -> Result<Live> {
    let filter = if args.filter_labelled {
        Some(
            labels
                .ports()
                .map(|p| format!("port {p}"))
                .collect::<Vec<_>>()
                .join(" or "),
        )
    } else {
        args.filter.clone()
    };
    let opts = PcapOptions {
        snaplen: args.snaplen,
        buffer_size: args.buffer_size,
        filter,
    };
    Ok(Live::Pcap(PcapBackend::start(&args.ifaces, &opts)?))
}

fn start(args: &RunArgs, labels: &Labels) -> Result<Live> {
    match args.backend {
        Backend::Pcap => start_pcap(args, labels),
        #[cfg(target_os = "linux")]
        Backend::Ebpf => Ok(Live::Ebpf(Box::new(
            tokenwire_probe::backend::ebpf::EbpfBackend::start(&args.ifaces, args.max_flows)?,
        ))),
        #[cfg(not(target_os = "linux"))]
        Backend::Ebpf => bail!("the eBPF backend needs Linux; use --backend pcap"),
        #[cfg(target_os = "linux")]
        Backend::Auto => {
            match tokenwire_probe::backend::ebpf::EbpfBackend::start(&args.ifaces, args.max_flows) {
                Ok(b) => Ok(Live::Ebpf(Box::new(b))),
                Err(e @ tokenwire_probe::backend::ebpf::EbpfError::NoInterface(_)) => Err(e.into()),
                Err(e) => {
                    eprintln!(
                        "tokenwire-probe: eBPF unavailable ({e}); falling back to the pcap backend"
                    );
                    start_pcap(args, labels)
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        Backend::Auto => start_pcap(args, labels),
    }
}

async fn run(args: RunArgs) -> Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let mut backend = start(&args, &labels)?;
    #[cfg(target_os = "linux")]
    let _stats = match (&backend, args.bpf_stats) {
        (Live::Ebpf(_), true) => Some(tokenwire_probe::backend::ebpf::EbpfBackend::enable_stats()?),
        _ => None,
    };
    let names = backend.ifaces();
    eprintln!(
        "tokenwire-probe: backend {} on {}",
        backend.name(),
        names
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut table = FlowTable::new(labels);
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|d| started + Duration::from_secs_f64(d.max(0.0)));
    let mut print = tokio::time::interval(Duration::from_secs_f64(args.interval));
    print.tick().await;
    let mut drain = tokio::time::interval(Duration::from_millis(100));
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
    let terminated = terminate_signal();
    tokio::pin!(terminated);
    loop {
        tokio::select! {
            _ = drain.tick() => backend.drain(&mut table),
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
            _ = &mut terminated => break,
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

/// SIGINT or SIGTERM.
async fn terminate_signal() {
    #[cfg(unix)]
    {
        if let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn analyze(args: AnalyzeArgs) -> Result<()> {
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let a = tokenwire_probe::analyze::analyze(std::io::BufReader::new(file), labels)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let rows = a.table.rows();
    if args.json {
        print!("{}", output::json_lines(&rows, &[], 1, true));
        print!("{}", output::health_json(&a.acc.health, 0, 1, true));
    } else {
        println!(
            "{}{}  packets {}",
            output::table(&rows, &[]),
            output::health_line(&a.acc.health),
            a.packets
        );
    }
    if let Some(e) = a.error {
        bail!(
            "{}: {e} (the totals above count the {} packets before it)",
            args.file.display(),
            a.packets
        );
    }
    Ok(())
}

fn emit(
    args: &RunArgs,
    table: &FlowTable,
    names: &[(u32, String)],
    snapshot: u64,
    is_final: bool,
    health: &Health,
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
