//! The probe's command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokenwire_probe::attribution::Limits;
use tokenwire_probe::backend::{self, BackendKind, LiveOptions};
use tokenwire_probe::engine::EngineOptions;
use tokenwire_probe::labels::Labels;
use tokenwire_probe::passive::PassiveOptions;
use tokenwire_probe::spans;

/// Attributes every packet on an interface to a flow, a transport (tls, http, tcp, quic,
/// udp) and an approach (by server port), and prints live per-flow packet and byte counts.
/// With the servers' spans (docs/spans.md) it charges packets to requests, and it serves
/// Prometheus metrics and JSON on --listen (docs/metrics.md).
#[derive(Parser)]
#[command(name = "tokenwire-probe", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Capture live and print a table per flow and direction every --interval and on exit
    /// (SIGINT/SIGTERM or --duration).
    Run(Box<RunArgs>),
    /// Read a capture file (pcap from tcpdump -w, or pcapng from tshark/Wireshark) and print
    /// the same table (or JSON lines) as a live run. A truncated or corrupt file prints
    /// the totals up to the broken packet, then says where it broke (exit status 1).
    Analyze(AnalyzeArgs),
    /// Time the kernel path (Linux, as root): run the eBPF programs, loaded but attached
    /// nowhere, over a fixed set of packets with BPF_PROG_TEST_RUN, and an empty program
    /// under the same harness. Prints ns per packet and the probe's own part of it (minus
    /// the empty program); no traffic, so the figures hold still on a busy machine.
    KernelBench(KernelBenchArgs),
    /// Print the bcrypt hash of a password read from standard input (its first line), for
    /// `basic_auth_users` in a --web-config file: `tokenwire-probe hash-password <
    /// password.txt`. The same hashes as `htpasswd -nBC 10`.
    HashPassword(HashPasswordArgs),
    /// Detach a classifier pinned by `run --pin` and remove its maps and its carried state
    /// (their counts go). Refused while a probe runs with the directory.
    Detach(DetachArgs),
}

#[derive(clap::Args)]
pub struct DetachArgs {
    /// The pin directory `run --pin` used.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_value = backend::DEFAULT_PIN_DIR, default_missing_value = backend::DEFAULT_PIN_DIR)]
    pub pin: PathBuf,
}

#[derive(clap::Args)]
pub struct HashPasswordArgs {
    /// bcrypt's cost (4–31): each step doubles the time a check takes, for the probe at
    /// every scrape (it caches a verified header) and for anyone guessing.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(4..=31))]
    pub cost: u32,
}

#[derive(clap::Args)]
pub struct KernelBenchArgs {
    /// Runs per measurement, inside the kernel.
    #[arg(long, default_value_t = 1_000_000)]
    pub repeat: u32,
    /// Interleaved rounds; each figure is the median over them.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Single runs per round for the packet that creates its key (the map emptied before
    /// each).
    #[arg(long, default_value_t = 2_000)]
    pub first_runs: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Time this kernel object instead of the embedded one (e.g. an older build of
    /// probe-ebpf, to compare two builds side by side on the same machine and day).
    #[arg(long)]
    pub object: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct AnalyzeArgs {
    /// The capture file.
    pub file: PathBuf,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Server port to approach name, e.g. 9000=my-server (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub passive: PassiveArgs,
    /// The spans sent during the capture, one JSON message per line (what `run
    /// --spans-log` writes): adds the per-request records, with connections cut at each
    /// span's own time. Bad lines are reported and skipped.
    #[arg(long)]
    pub spans: Option<PathBuf>,
}

/// Passive reading (docs/passive.md): requests and tokens from the packets alone.
#[derive(clap::Args)]
pub struct PassiveArgs {
    /// Server ports whose plaintext HTTP/1.1 connections are read passively: each LLM
    /// request (Ollama /api/chat, /api/generate; OpenAI /v1/chat/completions,
    /// /v1/completions) becomes a record with `source: passive`, its tokens counted from
    /// the answer's body, with no span from the server. Comma-separated; `none` reads none.
    /// Connections whose server sends spans keep the spans' records.
    #[arg(long, default_value_t = PortList(tokenwire_probe::passive::DEFAULT_HTTP_PORTS.into()), value_parser = parse_ports)]
    pub http_ports: PortList,
    /// Connections read passively at once; more are counted (outcome
    /// `connection_limit`) and not read.
    #[arg(long, default_value_t = 65_536)]
    pub max_passive_connections: usize,
}

/// A set of ports from the command line.
#[derive(Debug, Clone)]
pub struct PortList(pub std::collections::BTreeSet<u16>);

impl std::fmt::Display for PortList {
    /// As `--http-ports` takes it: comma-separated, or `none`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let ports: Vec<String> = self.0.iter().map(u16::to_string).collect();
        f.write_str(&ports.join(","))
    }
}

fn parse_ports(s: &str) -> Result<PortList, String> {
    if s.trim().eq_ignore_ascii_case("none") || s.trim().is_empty() {
        return Ok(PortList(Default::default()));
    }
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{p:?} is not a port (1-65535); use `none` to read none"))
        })
        .collect::<Result<_, _>>()
        .map(PortList)
}

impl PassiveArgs {
    pub fn options(&self) -> PassiveOptions {
        PassiveOptions {
            ports: self.http_ports.0.clone(),
            max_connections: self.max_passive_connections.max(1),
            ..PassiveOptions::default()
        }
    }
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Interfaces to capture (repeatable). Loopback is counted on egress only (each packet
    /// passes it once); others on ingress and egress.
    #[arg(long = "iface", default_value = backend::DEFAULT_IFACE)]
    pub ifaces: Vec<String>,
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendKind,
    /// Seconds between printed tables.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Print JSON lines instead of tables: one object per flow direction and one `health`
    /// object per snapshot, each with the snapshot number and `final` on the last one.
    #[arg(long)]
    pub json: bool,
    /// Flow keys the capture holds: the user-space table for pcap; for eBPF at least this
    /// many (a slot per key, the next power of two of them, and this many again for keys
    /// whose slot another key took). Packets of flows beyond are counted as "map full",
    /// never dropped.
    #[arg(long, default_value_t = 65_536)]
    pub max_flows: u32,
    /// Seconds without packets after which a key leaves the kernel map (its totals stay).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// The same once its connection closed (FIN/RST).
    #[arg(long, default_value_t = 30)]
    pub closed_timeout: u64,
    /// eBPF: KiB of the ring buffer of rare flow events (a key's first packet and first
    /// payload, its close), rounded up to a power of two. Events a full ring drops are
    /// counted (tokenwire_probe_event_drops_total); a span's cut looks the connection's
    /// keys up in the kernel map itself, so a dropped event never makes a request's bytes
    /// or label wrong.
    #[arg(long, default_value_t = 1024)]
    pub event_ring_kib: u32,
    /// eBPF: MiB of the ring buffer passively read packets go through (rounded up to a
    /// power of two). A full ring loses packets: counted
    /// (tokenwire_probe_passive_drops_total) and the requests then read marked incomplete.
    #[arg(long, default_value_t = 16)]
    pub passive_ring_mib: u32,
    /// eBPF: pin the classifier's links and maps in DIR, on a BPF filesystem (default
    /// /sys/fs/bpf/tokenwire), so they outlive this probe: stopped, killed or upgraded, it
    /// leaves the classifier attached and counting, and a probe started later with the same
    /// DIR and interfaces adopts it, its wire counters continuing from where they stood with
    /// the packets of the gap counted. One probe per DIR; Linux 6.6 or later (TCX links).
    /// `tokenwire-probe detach --pin DIR` removes them. docs/reliability.md.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = backend::DEFAULT_PIN_DIR)]
    pub pin: Option<PathBuf>,
    /// Turn on the kernel's BPF run-time statistics while running and report the probe's
    /// own cost in ns per packet.
    #[arg(long)]
    pub bpf_stats: bool,
    /// pcap: bytes kept of each packet (headers and the first payload bytes suffice to
    /// classify, and hold a streamed token's packet for passive reading; 65535 keeps whole
    /// packets, e.g. large non-streamed answers, at the cost of fewer packets buffered).
    #[arg(long, default_value_t = backend::pcap::DEFAULT_SNAPLEN)]
    pub snaplen: i32,
    /// pcap: kernel buffer size in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub buffer_size: i32,
    /// pcap: a BPF capture filter (tcpdump syntax), e.g. "port 8080 or port 4433".
    #[arg(long)]
    pub filter: Option<String>,
    /// pcap: capture only the labelled ports (a filter built from the labels).
    #[arg(long, conflicts_with = "filter")]
    pub filter_labelled: bool,
    /// Server port to approach name, e.g. 9000=my-server (repeatable). Defaults: each
    /// approach's port and label (11435=raw_api 8080=sse 4433=webtransport; the registry
    /// in docs/architecture.md) and 11434=upstream.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Where to serve GET /metrics, /api/requests, /api/connections, /api/flows and
    /// /healthz; port 0 picks a free one (printed). The probe's own connections on it are
    /// never counted.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Serve no HTTP endpoints.
    #[arg(long, conflicts_with = "listen")]
    pub no_listen: bool,
    /// TLS, client certificates and basic auth for the HTTP endpoints, from a file in the
    /// Prometheus exporter toolkit's format (`--web.config.file`; docs/deploy.md): its
    /// `tls_server_config` (cert_file, key_file, client_auth_type NoClientCert,
    /// VerifyClientCertIfGiven or RequireAndVerifyClientCert, client_ca_file, min_version)
    /// and `basic_auth_users` (bcrypt: `tokenwire-probe hash-password`). Without it: plain
    /// HTTP, no auth.
    #[arg(long, conflicts_with = "no_listen")]
    pub web_config: Option<PathBuf>,
    /// Serve /metrics and /healthz only: no /api/requests, /api/connections or /api/flows,
    /// whose records carry every client's address and port.
    #[arg(long, conflicts_with = "no_listen")]
    pub metrics_only: bool,
    /// The Unix datagram socket servers send spans to (docs/spans.md). A stale socket file
    /// is replaced; one another process receives on is an error.
    #[arg(long, env = spans::SOCKET_ENV, default_value = spans::DEFAULT_SOCKET)]
    pub spans: PathBuf,
    /// The group whose members may send spans (name or gid): the socket is mode 0660,
    /// owned by the probe's user and this group. Default: the probe's own group (root only,
    /// when the probe runs as root).
    #[arg(long, conflicts_with = "no_spans")]
    pub spans_group: Option<String>,
    /// Receive no spans (flows are still counted; no per-request records).
    #[arg(long, conflicts_with = "spans")]
    pub no_spans: bool,
    /// Requests not yet final the probe follows at once; starts beyond are refused and
    /// counted (`tokenwire_probe_spans_rejected_total{reason="too_many_requests"}`).
    #[arg(long, default_value_t = 100_000)]
    pub max_open_requests: usize,
    /// Connections the spans name that the probe follows at once (reason
    /// `too_many_connections` beyond).
    #[arg(long, default_value_t = 65_536)]
    pub max_span_connections: usize,
    /// Requests running at once on one connection, e.g. streams of one WebTransport
    /// session (reason `too_many_streams` beyond). Bounds the work of each span.
    #[arg(long, default_value_t = 1_024)]
    pub max_streams_per_connection: usize,
    /// Finished requests (and connections) kept for /api/requests.
    #[arg(long, default_value_t = 10_000)]
    pub keep_requests: usize,
    /// Print no tables (serve the endpoints only).
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub passive: PassiveArgs,
    /// Append every accepted span to FILE, one JSON message per line (for `analyze
    /// --spans` next to a capture taken at the same time).
    #[arg(long)]
    pub spans_log: Option<PathBuf>,
    /// Once attached, serving and receiving spans, write FILE (atomically: whole or not
    /// at all): one JSON object with `pid`, `backend`, `interfaces`, `api` (the address it
    /// serves on, null with --no-listen) and `spans` (the socket, null with --no-spans).
    /// What launchers wait for, rather than reading the log.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

impl RunArgs {
    /// How to open the live backend.
    pub fn live_options(&self, labels: &Labels) -> LiveOptions {
        let filter = if self.filter_labelled {
            let ports: Vec<String> = labels.ports().map(|p| format!("port {p}")).collect();
            Some(ports.join(" or "))
        } else {
            self.filter.clone()
        };
        LiveOptions {
            ifaces: self.ifaces.clone(),
            max_flows: self.max_flows,
            bpf_stats: self.bpf_stats,
            http_ports: self.passive.http_ports.0.clone(),
            passive_ring_bytes: self.passive_ring_mib.clamp(1, 1024) << 20,
            event_ring_bytes: self.event_ring_kib.clamp(4, 1 << 20) << 10,
            pin: self.pin.clone(),
            pcap: backend::pcap::PcapOptions {
                snaplen: self.snaplen,
                buffer_size: self.buffer_size,
                filter,
                max_flows: self.max_flows,
            },
        }
    }

    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            keep_requests: self.keep_requests,
            idle: Duration::from_secs(self.idle_timeout),
            closed: Duration::from_secs(self.closed_timeout),
            limits: Limits {
                open_requests: self.max_open_requests.max(1),
                connections: self.max_span_connections.max(1),
                streams_per_connection: self.max_streams_per_connection.max(1),
            },
            passive: self.passive.options(),
        }
    }
}
