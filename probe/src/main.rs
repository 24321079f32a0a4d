//! tokenwire-probe: count every packet on an interface per flow and direction, classified
//! by transport and approach; charge them to requests from the servers' spans; export it
//! all on /metrics and /api/*.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokenwire_probe::api::{self, Answer, Ask, Query};
use tokenwire_probe::attribution::Attributor;
use tokenwire_probe::backend::Health;
use tokenwire_probe::backend::pcap::{PcapBackend, PcapOptions};
use tokenwire_probe::labels::Labels;
use tokenwire_probe::output;
use tokenwire_probe::table::FlowTable;

/// Attributes every packet on an interface to a flow, a transport (tls, http, tcp, quic,
/// udp) and an approach (by server port), and prints live per-flow packet and byte counts.
/// With the servers' spans (docs/spans.md) it charges packets to requests, and it serves
/// Prometheus metrics and JSON on --listen (docs/metrics.md).
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
    /// The spans sent during the capture, one JSON message per line (what `run
    /// --spans-log` writes): adds the per-request records, with connections cut at each
    /// span's own time. Bad lines are reported and skipped.
    #[arg(long)]
    spans: Option<PathBuf>,
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
    /// Where to serve GET /metrics, /api/requests, /api/connections, /api/flows and
    /// /healthz; port 0 picks a free one (printed). The probe's own connections on it are
    /// never counted.
    #[arg(long, default_value = "127.0.0.1:9464")]
    listen: SocketAddr,
    /// Serve no HTTP endpoints.
    #[arg(long, conflicts_with = "listen")]
    no_listen: bool,
    /// The Unix datagram socket servers send spans to (docs/spans.md). A stale socket file
    /// is replaced; one another process receives on is an error.
    #[arg(long, env = tokenwire_probe::spans::SOCKET_ENV, default_value = tokenwire_probe::spans::DEFAULT_SOCKET)]
    spans: PathBuf,
    /// Receive no spans (flows are still counted; no per-request records).
    #[arg(long, conflicts_with = "spans")]
    no_spans: bool,
    /// Finished requests (and connections) kept for /api/requests.
    #[arg(long, default_value_t = 10_000)]
    keep_requests: usize,
    /// Print no tables (serve the endpoints only).
    #[arg(long, short)]
    quiet: bool,
    /// Append every accepted span to FILE, one JSON message per line (for `analyze
    /// --spans` next to a capture taken at the same time).
    #[arg(long)]
    spans_log: Option<PathBuf>,
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

    /// Brings the table's counters for `keys` up to now (a span's cut).
    fn refresh(
        &mut self,
        table: &mut FlowTable,
        keys: &[tokenwire_probe::flow::PacketKey],
        now: Instant,
    ) {
        match self {
            #[cfg(target_os = "linux")]
            Live::Ebpf(b) => b.refresh(table, keys, now),
            // Counted in user space: hand over everything counted so far.
            Live::Pcap(b) => {
                b.poll(table, now);
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

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Everything the capture loop owns.
struct State {
    backend: Live,
    table: FlowTable,
    attributor: Attributor,
    names: Vec<(u32, String)>,
    idle: Duration,
    closed: Duration,
    tracked: u64,
    /// Rejected spans not yet logged (the log is rate-limited).
    unlogged_rejects: u64,
    last_reject_log: Option<Instant>,
}

impl State {
    /// Reads every counter, evicts idle keys, retires finished connections.
    fn poll(&mut self) -> Result<()> {
        let now = Instant::now();
        self.tracked = self.backend.poll(&mut self.table, now)?;
        let stale = self.table.idle_keys(now, self.idle, self.closed);
        if !stale.is_empty() {
            self.backend.evict(&mut self.table, &stale);
            self.table.retire();
        }
        Ok(())
    }

    fn health(&self) -> Health {
        self.backend.health(self.tracked)
    }

    /// Applies one datagram; whether it parsed.
    fn on_span(&mut self, bytes: &[u8]) -> bool {
        let span = match tokenwire_probe::spans::parse(bytes) {
            Ok(s) => s,
            Err(e) => {
                self.attributor.reject(e.reason());
                self.unlogged_rejects += 1;
                let now = Instant::now();
                if self
                    .last_reject_log
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
                {
                    tracing::warn!(
                        rejected = self.unlogged_rejects,
                        "dropped span message(s); the latest: {e}"
                    );
                    self.unlogged_rejects = 0;
                    self.last_reject_log = Some(now);
                }
                return false;
            }
        };
        let now = Instant::now();
        let mut cut_ns = unix_ns();
        if let Some(conn) = self.attributor.conn_of(&span) {
            self.backend.drain(&mut self.table);
            let keys = self.table.keys_of(&conn);
            // The cut's time is taken right before the counters are read (a lookup per
            // key, microseconds): a capture cut at this time agrees with the read but for
            // a packet counted within those microseconds.
            cut_ns = unix_ns();
            self.backend.refresh(&mut self.table, &keys, now);
            tracing::debug!(?conn, keys = keys.len(), conns = self.table.len(), snapshot = ?tokenwire_probe::attribution::Counts::snapshot(&self.table, &conn), "span cut");
        }
        self.attributor.apply(span, &self.table, cut_ns, now);
        true
    }

    /// Finishes connections that closed (or went silent), with their final counters.
    fn settle(&mut self) {
        let now = Instant::now();
        for conn in self.attributor.due(&self.table, now) {
            let keys = self.table.keys_of(&conn);
            self.backend.refresh(&mut self.table, &keys, now);
            self.attributor.finish(&conn, &self.table);
        }
    }

    fn answer(&mut self, q: Query) -> Answer {
        let started = Instant::now();
        if let Err(e) = self.poll() {
            return (
                http::StatusCode::SERVICE_UNAVAILABLE,
                api::JSON_TYPE,
                serde_json::json!({ "error": format!("{e:#}") }).to_string(),
            );
        }
        self.settle();
        let json = |v: serde_json::Value| (http::StatusCode::OK, api::JSON_TYPE, v.to_string());
        let wanted = |a: &str, r: &Option<String>| r.as_deref().is_none_or(|w| w == a);
        match q {
            Query::Metrics => {
                let wire = self.table.wire_totals();
                let health = self.health();
                let interfaces = self
                    .names
                    .iter()
                    .map(|(_, n)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let text =
                    tokenwire_probe::metrics::render(&tokenwire_probe::metrics::Exposition {
                        wire: &wire,
                        approaches: &self.attributor.metrics,
                        spans: &self.attributor.spans,
                        health: &health,
                        backend: self.backend.name(),
                        interfaces: &interfaces,
                        connections: self.table.len() as u64,
                        evictions: self.table.evictions,
                        scrape_seconds: started.elapsed().as_secs_f64(),
                    });
                (http::StatusCode::OK, api::METRICS_TYPE, text)
            }
            Query::Requests {
                limit,
                approach,
                since_unix_ns,
            } => {
                let mut recs: Vec<_> = self
                    .attributor
                    .requests(&self.table)
                    .into_iter()
                    .filter(|r| wanted(&r.approach, &approach))
                    .filter(|r| since_unix_ns.is_none_or(|s| r.start_unix_ns >= s))
                    .collect();
                let skip = recs.len().saturating_sub(limit);
                recs.drain(..skip);
                json(serde_json::json!({ "requests": recs }))
            }
            Query::Connections {
                approach,
                since_unix_ns,
            } => {
                let conns: Vec<_> = self
                    .attributor
                    .connections(&self.table)
                    .into_iter()
                    .filter(|c| wanted(&c.approach, &approach))
                    .filter(|c| since_unix_ns.is_none_or(|s| c.first_start_unix_ns >= s))
                    .collect();
                json(serde_json::json!({ "connections": conns }))
            }
            Query::Flows => {
                let rows: Vec<serde_json::Value> = self
                    .table
                    .rows()
                    .iter()
                    .map(|r| {
                        let mut v = serde_json::to_value(r).unwrap_or_default();
                        if let Some(o) = v.as_object_mut() {
                            o.insert(
                                "iface".into(),
                                output::iface_name(r.ifindex, &self.names).into(),
                            );
                        }
                        v
                    })
                    .collect();
                json(serde_json::json!({ "flows": rows }))
            }
            Query::Health => json(serde_json::json!({
                "status": "ok",
                "backend": self.backend.name(),
                "interfaces": self.names.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
                "health": self.health(),
                "evictions": self.table.evictions,
                "connections": self.table.len(),
                "spans_accepted": self.attributor.spans.accepted,
                "spans_rejected": self.attributor.spans.rejected,
            })),
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    if !(args.interval.is_finite() && args.interval > 0.0) {
        bail!("--interval must be a positive number of seconds");
    }
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let terminated = terminate_signal();
    // Bind what can fail for ordinary reasons before attaching anything.
    let listener = if args.no_listen {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?,
        )
    };
    #[cfg(unix)]
    let span_socket = if args.no_spans {
        None
    } else {
        Some(tokenwire_probe::span_socket::SpanSocket::bind(&args.spans)?)
    };
    let backend = start(&args, &labels)?;
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
    let (ask_tx, mut ask_rx) = tokio::sync::mpsc::channel::<Ask>(16);
    let _api = match listener {
        Some(l) => {
            let addr = l.local_addr().context("reading the listen address")?;
            table.exclude(addr);
            eprintln!("tokenwire-probe: serving http://{addr}/metrics and /api/requests");
            Some(AbortOnDrop(tokio::spawn(api::serve(l, ask_tx))))
        }
        None => {
            drop(ask_tx);
            None
        }
    };
    #[cfg(unix)]
    if let Some(s) = &span_socket {
        eprintln!("tokenwire-probe: receiving spans on {}", s.path().display());
    }
    let mut attributor = Attributor::new(args.keep_requests);
    attributor.idle_limit = Duration::from_secs(args.idle_timeout);
    let mut st = State {
        backend,
        table,
        attributor,
        names,
        idle: Duration::from_secs(args.idle_timeout),
        closed: Duration::from_secs(args.closed_timeout),
        tracked: 0,
        unlogged_rejects: 0,
        last_reject_log: None,
    };
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|d| started + Duration::from_secs_f64(d.max(0.0)));
    let mut print = tokio::time::interval(Duration::from_secs_f64(args.interval));
    print.tick().await;
    let mut drain = tokio::time::interval(Duration::from_millis(100));
    let mut refresh = tokio::time::interval(Duration::from_secs_f64(args.interval.min(1.0)));
    let mut snapshot = 0u64;
    let until = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(until);
    tokio::pin!(terminated);
    let mut spans_log = match &args.spans_log {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {} (--spans-log)", p.display()))?,
        ),
        None => None,
    };
    let mut buf = vec![0u8; tokenwire_probe::spans::MAX_SPAN_BYTES + 1];
    loop {
        #[cfg(unix)]
        let span = async {
            match &span_socket {
                Some(s) => s.socket.recv(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let span = std::future::pending::<std::io::Result<usize>>();
        tokio::select! {
            r = span => match r {
                // A datagram that filled the buffer was longer than the limit.
                Ok(n) => {
                    if st.on_span(&buf[..n])
                        && let Some(f) = spans_log.as_mut()
                    {
                        use std::io::Write;
                        let line = [&buf[..n], b"\n"].concat();
                        if let Err(e) = f.write_all(&line) {
                            tracing::warn!(error = %e, "writing --spans-log; no more spans are logged");
                            spans_log = None;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "receiving spans"),
            },
            Some(ask) = ask_rx.recv() => {
                let answer = st.answer(ask.query);
                let _ = ask.reply.send(answer);
            }
            _ = drain.tick() => {
                st.backend.drain(&mut st.table);
                st.settle();
            }
            _ = refresh.tick() => st.poll()?,
            // The refresh tick (at least as often) keeps the table current: printing reads it.
            _ = print.tick() => {
                snapshot += 1;
                if !args.quiet {
                    emit(&args, &st.table, &st.names, snapshot, false, &st.health());
                }
            }
            _ = &mut terminated => break,
            _ = &mut until => break,
        }
    }
    st.poll()?;
    snapshot += 1;
    emit(&args, &st.table, &st.names, snapshot, true, &st.health());
    Ok(())
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGINT or SIGTERM. The handlers are installed when this is called, not when the future
/// is first polled: a signal right after start-up must stop the probe cleanly too.
fn terminate_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            match (term, int) {
                (Some(mut t), Some(mut i)) => {
                    tokio::select! {
                        _ = t.recv() => {}
                        _ = i.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn analyze(args: AnalyzeArgs) -> Result<()> {
    let labels = Labels::with_overrides(args.labels.iter().map(String::as_str))?;
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let spans = match &args.spans {
        None => Vec::new(),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading spans from {}", p.display()))?;
            let (spans, bad) = tokenwire_probe::spans::read_lines(&text);
            for (line, e) in bad.iter().take(5) {
                eprintln!("tokenwire-probe: {}:{line}: skipped: {e}", p.display());
            }
            if bad.len() > 5 {
                eprintln!(
                    "tokenwire-probe: {}: {} more bad lines skipped",
                    p.display(),
                    bad.len() - 5
                );
            }
            spans
        }
    };
    let a = tokenwire_probe::analyze::analyze(std::io::BufReader::new(file), labels, spans)
        .with_context(|| format!("reading {}", args.file.display()))?;
    let rows = a.table.rows();
    let requests = a.attributor.requests(&a.table);
    let connections = a.attributor.connections(&a.table);
    if args.json {
        print!("{}", output::json_lines(&rows, &[], 1, true));
        for r in &requests {
            println!("{}", serde_json::json!({ "request": r }));
        }
        for c in &connections {
            println!("{}", serde_json::json!({ "connection": c }));
        }
        print!("{}", output::health_json(&a.acc.health, 0, 1, true));
    } else {
        println!(
            "{}{}  packets {}",
            output::table(&rows, &[]),
            output::health_line(&a.acc.health),
            a.packets
        );
        if args.spans.is_some() {
            println!("\n{}", output::requests_table(&requests));
        }
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
