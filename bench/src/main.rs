//! tokenwire-bench: stream prompts through the companions and report what a user sees.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::https::HttpsClient;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::client::{ReferenceClient, Targets};
use tokenwire_bench::report::{self, Summary};
use tokenwire_bench::runner::{self, ApproachRun, RunConfig};
use tokenwire_bench::{server_info, wire, workload};
use tokenwire_servers::tuning::{Knob, Tuning};

/// Streams prompts through the three approaches — raw (the Ollama API through the TLS
/// proxy), sse (HTTPS SSE relay), wt (WebTransport) — and reports time to first token,
/// time between tokens, tokens and application bytes per approach, in the reference
/// study's columns, with wire bytes from tokenwire-probe when one runs. `shape` and
/// `matrix` run them behind an emulated link (delay, loss, bandwidth).
#[derive(Parser)]
#[command(name = "tokenwire-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run prompts through the chosen approaches and print a summary table.
    Run(Box<RunArgs>),
    /// Run COMMAND on the client side of an emulated link (like mahimahi's shells): a
    /// network namespace joined to this host by TUN devices, with loss, a droptail queue,
    /// a bandwidth and a delay applied to the chosen directions (docs/emulator.md). The
    /// host side's address is printed and given to COMMAND as TOKENWIRE_SERVER_ADDR; the
    /// servers must listen there (or on 0.0.0.0). Exits with COMMAND's status and removes
    /// everything it set up. Needs root.
    Shape(ShapeArgs),
    /// Every profile x direction x mode (reuse, fresh) x approach through the link
    /// emulator, with the probe's wire accounting; writes a report directory (RESULTS.md
    /// laid out like the reference, results.json, SVG charts). Starts its own model,
    /// companions and probe in a server namespace and the client in another. The quick
    /// default takes under ten minutes; --full is the reference's whole run. Needs root.
    Matrix(MatrixArgs),
    /// The three approaches from a real browser: launches headless Chromium (the system's
    /// `chromium`), opens the SSE relay's page (GET /) and streams each prompt with the
    /// browser's own fetch and WebTransport, timed in the page (performance.now()). Prints
    /// the same tables as `run`, with the probe's wire figures for the browser's requests
    /// (docs/browser.md).
    Browser(Box<BrowserArgs>),
}

/// What `run` and `browser` stream: which approaches, which prompts, how many times.
#[derive(clap::Args)]
struct WorkloadArgs {
    /// Approaches to run, in this order: any of raw, sse, wt.
    #[arg(long, value_delimiter = ',', default_value = "raw,sse,wt")]
    approach: Vec<Approach>,
    /// File of prompts, one per line (# comments and blank lines skipped); default: the
    /// reference's ten.
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Use only the first N prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Run the prompt list N times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

impl WorkloadArgs {
    /// The prompts, the jobs, and the approaches (each once, in the order given).
    fn load(&self) -> Result<(Vec<String>, Vec<workload::Job>, Vec<Approach>)> {
        let prompts = match &self.prompts {
            Some(p) => workload::read_prompts(p)?,
            None => workload::default_prompts(),
        };
        let jobs = workload::jobs(&prompts, self.limit, self.repeat)?;
        let mut approaches = Vec::new();
        for a in &self.approach {
            if !approaches.contains(a) {
                approaches.push(*a);
            }
        }
        Ok((prompts, jobs, approaches))
    }
}

#[derive(clap::Args)]
struct BrowserArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// One page for every prompt: the browser keeps its connections and one WebTransport
    /// session. Without it every prompt opens the page in a new browser context (an
    /// incognito profile), so each pays its connections' handshakes, as a first visit.
    #[arg(long)]
    reuse: bool,
    /// The SSE relay's page (`tokenwire-servers all` serves it; it knows where the raw
    /// proxy and the WebTransport relay are; append ?raw=URL&wt=URL to override).
    #[arg(long, default_value = "https://127.0.0.1:8080/")]
    page: String,
    /// The companions' certificate: Chromium trusts its public key (and only it) for raw
    /// and sse; WebTransport pins it by hash.
    #[arg(long, default_value = "certs/cert.pem")]
    cert: PathBuf,
    /// Chromium's executable (default: chromium, chromium-browser or google-chrome on PATH).
    #[arg(long)]
    chromium: Option<PathBuf>,
    /// The probe's API address: the page shows each request's wire figures from it, and
    /// the wire table comes from its records.
    #[arg(long, default_value = "127.0.0.1:9464")]
    probe: SocketAddr,
    /// Do not ask a probe for wire figures.
    #[arg(long, conflicts_with = "probe")]
    no_probe: bool,
    /// After the measured prompts, stream the first prompt in all three panels at once and
    /// write a PNG of the page mid-stream here.
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// Skip the uncounted warm-up prompt per approach.
    #[arg(long)]
    no_warmup: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// Write the run's metadata, the browser's facts and every request's detail as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per request.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// No per-request lines.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct MatrixArgs {
    /// The reference's run: its ten prompts, full-length answers (~480 tokens).
    #[arg(long)]
    full: bool,
    /// Profiles to run (default: all five).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,latency-200ms,loss-5pct,bw-100kbps,degraded"
    )]
    profiles: Vec<String>,
    /// Directions shaped, each a full pass over the profiles: up reproduces the
    /// reference; both shapes the token stream too.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "up,both")]
    directions: Vec<tokenwire_bench::netem::profile::Direction>,
    /// Connection modes.
    #[arg(long, value_delimiter = ',', default_value = "reuse,fresh")]
    modes: Vec<String>,
    /// Prompts per approach (default 2, or 10 with --full).
    #[arg(long)]
    limit: Option<usize>,
    /// Mean answer length in tokens (default 60, or 480 with --full).
    #[arg(long)]
    mean_tokens: Option<u32>,
    /// Model speed factor (1 = the reference model's pace).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Seed of the links' loss draws and the model's answers.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TCP congestion control in both namespaces (cubic, as on the reference's macOS).
    #[arg(long, default_value = "cubic")]
    congestion_control: String,
    /// Report directory.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// The reference study's setup (docs/reference.md), as `run --reference` with
    /// `tokenwire-servers all --reference`: the link carries IPv6 too and SSE travels over
    /// it, 4-byte QUIC connection IDs, no ECN, 30 s server keep-alives, legacy chunks, the
    /// reference's client and P50.
    #[arg(long)]
    reference: bool,
    /// Transport settings to compare, each on links of its own (docs/wire-efficiency.md):
    /// `default`, `lean` (every knob; both ends, and TCP timestamps off in both
    /// namespaces), or one knob alone: client-cid0, server-cid4, no-ecn, ack-frequency,
    /// delayed-acks, no-timestamps. The main tables show the first; RESULTS.md gains a
    /// tuning table and charts when there are several.
    #[arg(long, value_delimiter = ',', default_value = "default", value_parser = parse_tuning)]
    tuning: Vec<Tuning>,
    /// The relays' coalescing windows to compare, ms (tokens arriving within the window
    /// of the first unsent one leave together), e.g. 0,10,35,70. Each window runs with each
    /// tuning.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    coalesce_ms: Vec<u64>,
}

#[derive(clap::Args, Clone)]
pub struct LinkArgs {
    /// A reference profile: baseline, latency-200ms, loss-5pct, bw-100kbps, degraded
    /// (default: baseline, changed by the flags below).
    #[arg(long, default_value = "baseline")]
    profile: String,
    /// Directions shaped: up (client to server, what the reference did), down, both.
    #[arg(long, value_enum, default_value = "both")]
    direction: tokenwire_bench::netem::profile::Direction,
    /// One-way delay per shaped direction, e.g. 50ms (overrides the profile's).
    #[arg(long, value_parser = tokenwire_bench::netem::profile::parse_delay)]
    delay: Option<Duration>,
    /// Bernoulli loss per shaped direction, e.g. 1% (overrides the profile's).
    #[arg(long, value_parser = tokenwire_bench::netem::profile::parse_loss)]
    loss: Option<f64>,
    /// Bandwidth per shaped direction, e.g. 2mbit, 100kbit (overrides the profile's).
    #[arg(long)]
    rate: Option<tokenwire_bench::netem::profile::Rate>,
    /// Droptail queue limit in packets (default 50, as dummynet).
    #[arg(long, conflicts_with = "queue_bytes")]
    queue: Option<usize>,
    /// Droptail queue limit in bytes instead.
    #[arg(long)]
    queue_bytes: Option<usize>,
    /// Seed of the loss draws (logged; the same seed loses the same packets).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// TCP congestion control on the client side.
    #[arg(long, default_value = "cubic")]
    congestion_control: String,
}

impl LinkArgs {
    fn profile(&self) -> Result<tokenwire_bench::netem::profile::Profile> {
        let mut p = tokenwire_bench::netem::profile::Profile::named(&self.profile)?;
        let custom = self.delay.is_some()
            || self.loss.is_some()
            || self.rate.is_some()
            || self.queue.is_some()
            || self.queue_bytes.is_some();
        if let Some(d) = self.delay {
            p.delay = d;
        }
        if let Some(l) = self.loss {
            p.loss = l;
        }
        if let Some(r) = self.rate {
            p.rate_bps = Some(r.0);
        }
        p.queue_packets = self.queue.or(p.queue_packets);
        p.queue_bytes = self.queue_bytes.or(p.queue_bytes);
        if custom {
            p.name = format!("{}+custom", p.name);
        }
        Ok(p)
    }
}

#[derive(clap::Args)]
struct ShapeArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// Print the commands that set the same link with tc netem (Linux with sch_netem) or
    /// dnctl/pfctl (macOS), then exit; nothing is set up (not tested here).
    #[arg(long, value_enum)]
    print_commands: Option<tokenwire_bench::netem::profile::CommandSet>,
    /// The command and its arguments (after --).
    #[arg(last = true, required_unless_present = "print_commands")]
    command: Vec<String>,
}

#[derive(clap::Args)]
struct RunArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Keep one connection (or WebTransport session) per user for all its prompts;
    /// without it every prompt opens a new one and pays the handshakes.
    #[arg(long)]
    reuse: bool,
    /// Closed loop: N users at once per approach, each with its own connection.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Closed loop: start the users evenly over this many seconds, not all at once.
    #[arg(long, default_value_t = 0.0, value_parser = parse_secs)]
    ramp_secs: f64,
    /// Open loop: Poisson arrivals at R requests/s; latency counts from each scheduled
    /// send time, so client-side queueing is included.
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Seed of the open loop's arrival times.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the run's metadata and every request's detail as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per request.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// No progress bar (also off when stdout is not a terminal) and no per-request lines.
    #[arg(long)]
    quiet: bool,
    /// Skip the uncounted warm-up request per approach (it is also the ready check).
    #[arg(long)]
    no_warmup: bool,
    /// Address of the raw TLS proxy.
    #[arg(long, default_value = "127.0.0.1:11435")]
    raw: SocketAddr,
    /// Address of the SSE relay.
    #[arg(long, default_value = "127.0.0.1:8080")]
    sse: SocketAddr,
    /// WebTransport session URL.
    #[arg(long, default_value = "https://127.0.0.1:4433/wt")]
    wt_url: String,
    /// TLS server name and Host header for raw and sse.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Model name for the raw approach.
    #[arg(long, default_value = "gemma3:12b")]
    model: String,
    /// Certificate to trust (pinned): the companions' certs/cert.pem.
    #[arg(long, default_value = "certs/cert.pem")]
    cert: PathBuf,
    /// Do not verify the servers' certificates (what the reference did).
    #[arg(long)]
    insecure: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// The probe's API address (`tokenwire-probe run --listen`): its per-request records
    /// add the wire table (bytes, packets, bytes per token). Without a probe there, the
    /// run says so and reports application figures only.
    #[arg(long, default_value = "127.0.0.1:9464")]
    probe: SocketAddr,
    /// The reference study's client (docs/reference.md): all of --no-usage,
    /// --legacy-chunks, --count-end-frame, --p50-mean, --connection-close, --short-cids,
    /// --no-keepalive, --no-ecn and --sse-v6. Start the servers with `--reference` too
    /// (SSE also on [::1], 4-byte QUIC connection IDs, no ECN).
    #[arg(long)]
    reference: bool,
    /// raw: no `stream_options.include_usage` (the reference never sent it): no usage chunk;
    /// tokens counted from the chunks.
    #[arg(long)]
    no_usage: bool,
    /// raw: ask the model for /v1 chunks in the legacy format (role in every chunk), as the
    /// Ollama of the reference sent them (a request header the embedded model honours).
    #[arg(long)]
    legacy_chunks: bool,
    /// wt: count the `0:` end frame as a token, as the reference did.
    #[arg(long)]
    count_end_frame: bool,
    /// P50 as the mean of the two middle values (the reference's), not the nearest rank.
    #[arg(long)]
    p50_mean: bool,
    /// raw and sse without --reuse: send `Connection: close` (the reference's fresh mode).
    #[arg(long)]
    connection_close: bool,
    /// wt: 4-byte QUIC connection IDs for the client, as quic-go (the reference's client)
    /// uses; the servers' own are `tokenwire-servers --quic-cid-len`.
    #[arg(long)]
    short_cids: bool,
    /// wt: no keep-alive PINGs from the client (the reference's client sent none).
    #[arg(long)]
    no_keepalive: bool,
    /// wt: the client neither reads nor reports ECN marks, so its ACKs carry no ECN
    /// counters (about 4 bytes each) and the server stops marking; quic-go on macOS, the
    /// reference's client, does not use ECN. The servers' own: `--no-quic-ecn`.
    #[arg(long)]
    no_ecn: bool,
    /// sse over IPv6 loopback ([::1] at --sse's port): the reference's SSE client dialled
    /// `localhost`, which macOS resolves to ::1 first (its other clients used IPv4).
    #[arg(long)]
    sse_v6: bool,
    /// Do not ask a probe for wire figures.
    #[arg(long, conflicts_with = "probe")]
    no_probe: bool,
    /// The client's transport settings (docs/wire-efficiency.md): `default`, or `lean`:
    /// zero-length QUIC connection IDs (a UDP socket per session), no ECN, and TCP delayed
    /// ACKs. Lean also wants TCP timestamps off, a network namespace's setting
    /// (net.ipv4.tcp_timestamps=0) that the run reports but does not change; `matrix`
    /// sets it in its namespaces. One knob's name (e.g. delayed-acks) applies that knob
    /// alone. Pair it with `tokenwire-servers --tuning lean`.
    #[arg(long, default_value = "default", value_parser = parse_tuning)]
    tuning: Tuning,
}

/// The JSON document: what ran, against what, and every request.
#[derive(serde::Serialize)]
struct JsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    started_at: String,
    mode: &'static str,
    approaches: &'a [Approach],
    prompts: Vec<&'a str>,
    limit: Option<usize>,
    repeat: usize,
    concurrency: Option<usize>,
    ramp_secs: f64,
    rate: Option<f64>,
    seed: u64,
    warmup: bool,
    targets: serde_json::Value,
    server: server_info::ServerInfo,
    summaries: &'a [Summary],
    /// From the probe's records; absent without a probe.
    wire: Option<&'a [wire::WireSummary]>,
    runs: &'a [ApproachRun],
}

fn main() {
    // Errors are for people: one line with its causes, no backtrace.
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    // chromiumoxide warns of every DevTools event newer than its protocol tables; harmless.
    tokenwire_servers::logging::init("warn,chromiumoxide=error");
    let _ = tokenwire_servers::limits::raise_open_files();
    match Cli::parse().command {
        Command::Run(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(run(*args))
        }
        Command::Browser(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(browser(*args))
        }
        Command::Shape(args) => shape(args),
        Command::Matrix(args) => matrix(args),
    }
}

#[cfg(target_os = "linux")]
fn matrix(args: MatrixArgs) -> Result<()> {
    use tokenwire_bench::matrix::{self, MatrixConfig};
    use tokenwire_bench::netem::profile::{DEFAULT_QUEUE, Profile};
    let profiles = args
        .profiles
        .iter()
        .map(|p| Profile::named(p))
        .collect::<Result<Vec<_>, _>>()?;
    let modes = args
        .modes
        .iter()
        .map(|m| match m.as_str() {
            "reuse" => Ok(true),
            "fresh" => Ok(false),
            other => bail!("unknown mode {other:?}: reuse or fresh"),
        })
        .collect::<Result<Vec<_>>>()?;
    let limit = args.limit.unwrap_or(if args.full { 10 } else { 2 });
    let mean_tokens = args.mean_tokens.unwrap_or(if args.full { 480 } else { 60 });
    let jobs = workload::jobs(&workload::default_prompts(), Some(limit), 1)?;
    let timing = tokenwire_servers::model::Timing {
        speed: args.speed,
        mean_tokens,
        ..Default::default()
    };
    // The probe next to this binary (cargo puts them together).
    let probe_bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tokenwire-probe")))
        .filter(|p| p.exists());
    if probe_bin.is_none() {
        eprintln!(
            "tokenwire-bench matrix: no tokenwire-probe next to this binary; no wire figures (cargo build -p tokenwire-probe)"
        );
    }
    let work_dir = std::env::temp_dir().join(format!("tokenwire-matrix-{}", std::process::id()));
    let cfg = MatrixConfig {
        profiles,
        directions: args.directions.clone(),
        modes,
        jobs,
        timing: timing.clone(),
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout_secs),
        congestion_control: args.congestion_control.clone(),
        probe_bin,
        work_dir: work_dir.clone(),
        reference: args.reference,
        tunings: args.tuning.clone(),
        coalesce_ms: args.coalesce_ms.clone(),
    };
    let variants = cfg.variants();
    let cells = variants.len() * cfg.profiles.len() * cfg.directions.len() * cfg.modes.len();
    eprintln!(
        "tokenwire-bench matrix: {} settings ({}) x {} profiles x {} directions x {} modes x 3 approaches, {limit} prompts of ~{mean_tokens} tokens each",
        variants.len(),
        variants
            .iter()
            .map(|v| v.label())
            .collect::<Vec<_>>()
            .join("; "),
        cfg.profiles.len(),
        cfg.directions.len(),
        cfg.modes.len()
    );
    let mut done = 0;
    let started = std::time::Instant::now();
    let results = matrix::run(&cfg, |line| {
        done += 1;
        eprintln!(
            "[{done}/{cells} {:>4.0}s] {line}",
            started.elapsed().as_secs_f64()
        );
    })?;
    let _ = std::fs::remove_dir_all(&work_dir);
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let methodology = tokenwire_bench::results::Methodology {
        date: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        machine: format!(
            "{} CPUs, {cpu}",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ),
        kernel: read("/proc/sys/kernel/osrelease"),
        emulator: "tokenwire's userspace emulator over TUN devices between network namespaces: Bernoulli loss -> droptail queue -> serialisation -> delay, per direction".into(),
        probe_backend: results
            .links
            .iter()
            .find_map(|l| l.probe_backend.clone()),
        mtu: 1500,
        queue: format!("{DEFAULT_QUEUE} packets per shaped direction"),
        congestion_control: args.congestion_control.clone(),
        model: format!(
            "embedded, TTFT {} ms, TBT {} ms (speed x{})",
            timing.ttft.as_millis(),
            timing.tbt.as_millis(),
            timing.speed
        ),
        prompts: limit,
        mean_tokens,
        seed: args.seed,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        setup: if args.reference {
            "the reference's (`--reference`, docs/reference.md): SSE over IPv6, the others over IPv4; 4-byte QUIC connection IDs, no ECN, keep-alives every 30 s from the server and none from the client; legacy /v1 chunks, no `stream_options`; WebTransport's end frame counted as a token; P50 the mean of the middle pair".to_owned()
        } else {
            "tokenwire's default: IPv4 for every approach, quinn's QUIC defaults, the current /v1 chunk format, nearest-rank P50".to_owned()
        } + &if variants.len() > 1 || variants.first().is_some_and(|v| v.label() != "default") {
            format!(
                "; transport settings compared: {} (the main tables show the first; docs/wire-efficiency.md)",
                variants.iter().map(|v| v.label()).collect::<Vec<_>>().join("; ")
            )
        } else {
            String::new()
        },
    };
    tokenwire_bench::results::write(&args.out, &results, &methodology)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!(
        "{}",
        tokenwire_bench::results::analysis(&results).join("\n")
    );
    eprintln!(
        "tokenwire-bench matrix: report in {} (RESULTS.md, results.json, *.svg) after {:.0} s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn matrix(_args: MatrixArgs) -> Result<()> {
    bail!("the matrix needs the link emulator, which needs Linux (docs/emulator.md)")
}

#[cfg(target_os = "linux")]
fn shape(args: ShapeArgs) -> Result<()> {
    use tokenwire_bench::netem::emulator::{Emulator, EmulatorConfig};
    let profile = args.link.profile()?;
    if let Some(set) = args.print_commands {
        println!("{}", profile.commands(args.link.direction, set));
        return Ok(());
    }
    let (up, down) = profile.shapes(args.link.direction);
    let em = Emulator::start(&EmulatorConfig {
        up,
        down,
        seed: args.link.seed,
        congestion_control: args.link.congestion_control.clone(),
        ..EmulatorConfig::default()
    })?;
    eprintln!(
        "tokenwire-bench shape: {} ({}) on {}; servers at {} (TOKENWIRE_SERVER_ADDR), client {} in netns {}, loss seed {}",
        profile.name,
        profile.describe(),
        args.link.direction.as_str(),
        em.server_addr,
        em.client_addr,
        em.netns,
        args.link.seed
    );
    // SIGINT/SIGTERM go to COMMAND (same process group); this process waits for it and
    // tears down. A stale set-up after a crash is removed by the next start.
    let status = std::process::Command::new("ip")
        .args(em.exec_prefix())
        .args(&args.command)
        .env("TOKENWIRE_SERVER_ADDR", em.server_addr.to_string())
        .status()
        .with_context(|| format!("running {}", args.command.join(" ")))?;
    let report = em.report();
    eprintln!(
        "tokenwire-bench shape: up {} delivered, {} lost, {} queue drops; down {} delivered, {} lost, {} queue drops; late > 1 ms: {} up, {} down",
        report.up.stats.delivered,
        report.up.stats.lost,
        report.up.stats.queue_drops,
        report.down.stats.delivered,
        report.down.stats.lost,
        report.down.stats.queue_drops,
        report.up.late,
        report.down.late
    );
    drop(em);
    std::process::exit(status.code().unwrap_or(1));
}

#[cfg(not(target_os = "linux"))]
fn shape(args: ShapeArgs) -> Result<()> {
    let p = args.link.profile()?;
    if let Some(set) = args.print_commands {
        println!("{}", p.commands(args.link.direction, set));
        return Ok(());
    }
    bail!(
        "the link emulator needs Linux; on macOS set the same pipes with dnctl/pfctl (docs/emulator.md): {}",
        p.describe()
    )
}

async fn run(args: RunArgs) -> Result<()> {
    if let Some(r) = args.rate
        && !(r.is_finite() && r > 0.0)
    {
        bail!("--rate must be a positive number of requests per second");
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let trust = if args.insecure {
        Trust::Insecure
    } else {
        Trust::from_pem_file(&args.cert)?
    };
    let (prompts, jobs, approaches) = args.workload.load()?;
    let r = args.reference;
    let reference = ReferenceClient {
        no_usage: r || args.no_usage,
        legacy_chunks: r || args.legacy_chunks,
        count_end_frame: r || args.count_end_frame,
        connection_close: r || args.connection_close,
        short_cids: r || args.short_cids,
        no_keepalive: r || args.no_keepalive,
        no_ecn: r || args.no_ecn,
    };
    let p50 = if r || args.p50_mean {
        report::Median::MeanOfMiddle
    } else {
        report::Median::NearestRank
    };
    let sse = if r || args.sse_v6 {
        SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), args.sse.port())
    } else {
        args.sse
    };
    let targets = Targets {
        raw: args.raw,
        sse,
        wt_url: args.wt_url.clone(),
        host: args.host.clone(),
        model: args.model.clone(),
        reference,
        tuning: args.tuning.clone(),
    };
    if args.tuning.has(Knob::NoTimestamps)
        && tokenwire_servers::tuning::tcp_timestamps_on() == Some(true)
    {
        eprintln!(
            "tokenwire-bench: --tuning {}: TCP timestamps are on in this network namespace (12 bytes in every segment); `sysctl -w net.ipv4.tcp_timestamps=0` turns them off for every connection in it, or run `matrix --tuning {}`",
            args.tuning, args.tuning
        );
    }
    let show = !args.quiet && std::io::stdout().is_terminal();
    // Ask the probe first: a run of minutes should not end in "no probe".
    let probe = reachable_probe(args.probe, args.no_probe).await;
    let cfg = RunConfig {
        approaches: approaches.clone(),
        reuse: args.reuse,
        jobs,
        concurrency: args.concurrency,
        ramp: Duration::from_secs_f64(args.ramp_secs),
        rate: args.rate,
        seed: args.seed,
        timeout: Duration::from_secs(args.timeout_secs),
        warmup: !args.no_warmup,
        targets: targets.clone(),
        trust: trust.clone(),
        progress: show,
    };
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let runs = runner::run(&cfg).await;

    print_requests(&runs, args.quiet, args.reuse);
    let all: Vec<_> = runs
        .iter()
        .flat_map(|r| r.records.iter().cloned())
        .collect();
    let summaries: Vec<Summary> = runs
        .iter()
        .map(|r| report::summarise_with(r.approach, &all, r.connections, p50))
        .collect();
    println!("\n{}", report::markdown(&summaries));
    let wire_figures = match probe {
        Some(addr) => Some(wire_table(addr, &runs, &summaries, reference.count_end_frame).await),
        None => None,
    };

    if let Some(path) = &args.csv {
        std::fs::write(path, report::csv(&all))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let server = match trust.client_config() {
            Ok(tls) => {
                server_info::fetch(&mut HttpsClient::new(targets.raw, &targets.host, tls)).await
            }
            Err(_) => server_info::ServerInfo::default(),
        };
        let doc = JsonReport {
            tool: "tokenwire-bench",
            version: env!("CARGO_PKG_VERSION"),
            started_at,
            mode: if args.reuse { "reuse" } else { "fresh" },
            approaches: &approaches,
            prompts: prompts
                .iter()
                .take(args.workload.limit.unwrap_or(usize::MAX))
                .map(String::as_str)
                .collect(),
            limit: args.workload.limit,
            repeat: args.workload.repeat,
            concurrency: args.rate.is_none().then_some(args.concurrency),
            ramp_secs: args.ramp_secs,
            rate: args.rate,
            seed: args.seed,
            warmup: !args.no_warmup,
            targets: serde_json::json!({
                "raw": targets.raw, "sse": targets.sse, "wt": targets.wt_url,
                "host": targets.host, "model": targets.model,
                "reference": targets.reference, "p50_mean": p50 == report::Median::MeanOfMiddle,
                "tuning": targets.tuning.name,
                "tuning_knobs": targets.tuning.knobs.iter().map(|k| k.name()).collect::<Vec<_>>(),
            }),
            server,
            summaries: &summaries,
            wire: wire_figures.as_deref(),
            runs: &runs,
        };
        let text = serde_json::to_string_pretty(&doc).context("serialising the JSON report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let dead: Vec<String> = summaries
        .iter()
        .filter(|s| s.requests == s.failed)
        .map(|s| s.approach.to_string())
        .collect();
    if !dead.is_empty() {
        bail!(
            "no successful request for: {} (are the servers up? `tokenwire-servers all`)",
            dead.join(", ")
        );
    }
    Ok(())
}

/// The browser's JSON document.
#[derive(serde::Serialize)]
struct BrowserJsonReport<'a> {
    tool: &'static str,
    version: &'static str,
    started_at: String,
    mode: &'static str,
    page: &'a str,
    browser: &'a tokenwire_bench::browser::BrowserFacts,
    approaches: &'a [Approach],
    prompts: Vec<&'a str>,
    limit: Option<usize>,
    repeat: usize,
    warmup: bool,
    summaries: &'a [Summary],
    wire: Option<&'a [wire::WireSummary]>,
    runs: &'a [ApproachRun],
}

async fn browser(args: BrowserArgs) -> Result<()> {
    use tokenwire_bench::browser::{self, BrowserConfig};
    let (prompts, jobs, approaches) = args.workload.load()?;
    let probe = reachable_probe(args.probe, args.no_probe).await;
    let cfg = BrowserConfig {
        page_url: args.page.clone(),
        approaches: approaches.clone(),
        jobs,
        reuse: args.reuse,
        timeout: Duration::from_secs(args.timeout_secs),
        warmup: !args.no_warmup,
        chromium: args.chromium.clone(),
        cert: args.cert.clone(),
        probe,
        screenshot: args.screenshot.clone(),
    };
    let started_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let run = browser::run(&cfg).await?;
    let runs = run.runs;
    println!("Browser: {} ({})", run.facts.product, run.facts.user_agent);
    for f in &run.facts.approaches {
        println!(
            "{:<4} {} over {}, {} connection(s)",
            f.approach,
            if f.protocols.is_empty() {
                "?".to_owned()
            } else {
                f.protocols.join(", ")
            },
            if f.tls.is_empty() {
                "?".to_owned()
            } else {
                f.tls.join(", ")
            },
            f.connections
        );
    }
    print_requests(&runs, args.quiet, args.reuse);
    let all: Vec<_> = runs
        .iter()
        .flat_map(|r| r.records.iter().cloned())
        .collect();
    let summaries: Vec<Summary> = runs
        .iter()
        .map(|r| report::summarise(r.approach, &all, r.connections))
        .collect();
    println!("\n{}", report::markdown(&summaries));
    let wire_figures = match probe {
        Some(addr) => Some(wire_table(addr, &runs, &summaries, false).await),
        None => None,
    };
    if let Some(path) = &args.screenshot {
        eprintln!("tokenwire-bench: screenshot in {}", path.display());
    }
    if let Some(path) = &args.csv {
        std::fs::write(path, report::csv(&all))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        let doc = BrowserJsonReport {
            tool: "tokenwire-bench browser",
            version: env!("CARGO_PKG_VERSION"),
            started_at,
            mode: if args.reuse { "reuse" } else { "fresh" },
            page: &args.page,
            browser: &run.facts,
            approaches: &approaches,
            prompts: prompts
                .iter()
                .take(args.workload.limit.unwrap_or(usize::MAX))
                .map(String::as_str)
                .collect(),
            limit: args.workload.limit,
            repeat: args.workload.repeat,
            warmup: !args.no_warmup,
            summaries: &summaries,
            wire: wire_figures.as_deref(),
            runs: &runs,
        };
        let text = serde_json::to_string_pretty(&doc).context("serialising the JSON report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let failed: Vec<String> = summaries
        .iter()
        .filter(|s| s.failed > 0)
        .map(|s| format!("{} ({} of {})", s.approach, s.failed, s.requests))
        .collect();
    if !failed.is_empty() {
        bail!("failed requests in the browser: {}", failed.join(", "));
    }
    Ok(())
}

/// The probe's address if one answers there (and is wanted); otherwise says why once.
async fn reachable_probe(addr: SocketAddr, unwanted: bool) -> Option<SocketAddr> {
    if unwanted {
        return None;
    }
    match wire::check(addr).await {
        Ok(()) => Some(addr),
        Err(e) => {
            eprintln!(
                "tokenwire-bench: {e}; wire figures left out (start `tokenwire-probe run`, or pass --no-probe)"
            );
            None
        }
    }
}

/// Each request's line (unless quiet), and each approach's connection count.
fn print_requests(runs: &[ApproachRun], quiet: bool, reuse: bool) {
    for run in runs {
        if let Some(why) = &run.unreachable {
            eprintln!("{}: skipped: {why}", run.approach);
            continue;
        }
        if !quiet {
            for r in &run.records {
                match &r.error {
                    None => println!(
                        "{:<4} round {} prompt {:>2}  TTFT {:>7.1} ms  {:>4} tokens  {:>7} app bytes  {:>6.2} s",
                        r.approach,
                        r.round + 1,
                        r.prompt_index + 1,
                        r.ttft.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                        r.tokens(),
                        r.app_bytes,
                        r.total.map_or(0.0, |d| d.as_secs_f64()),
                    ),
                    Some(e) => println!(
                        "{:<4} round {} prompt {:>2}  FAILED: {e}",
                        r.approach,
                        r.round + 1,
                        r.prompt_index + 1
                    ),
                }
            }
        }
        println!(
            "{:<4} {} connection(s) for {} request(s) ({})",
            run.approach,
            run.connections,
            run.records.len(),
            if reuse { "reused" } else { "fresh" }
        );
    }
}

/// The probe's wire figures for the runs, printed as the wire table.
async fn wire_table(
    addr: SocketAddr,
    runs: &[ApproachRun],
    summaries: &[Summary],
    count_end_frame: bool,
) -> Vec<wire::WireSummary> {
    let mut out = Vec::new();
    for run in runs.iter().filter(|r| r.unreachable.is_none()) {
        match wire::collect(addr, run, Duration::from_secs(10)).await {
            Ok(mut w) => {
                if count_end_frame && run.approach == Approach::Wt {
                    w.add_tokens_per_request(1);
                }
                out.push(w)
            }
            Err(e) => eprintln!("{}: wire figures left out: {e}", run.approach),
        }
    }
    let app: Vec<_> = summaries
        .iter()
        .map(|s| (s.approach, s.app_bytes_per_token))
        .collect();
    if !out.is_empty() {
        println!(
            "Wire (from tokenwire-probe at {addr}: IP bytes incl. handshakes)\n\n{}",
            wire::markdown(&out, &app)
        );
    }
    out
}

/// A non-negative, finite number of seconds.
fn parse_tuning(s: &str) -> Result<Tuning, String> {
    Tuning::parse(s).map_err(|e| e.to_string())
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: expected seconds, a number 0 or more")),
    }
}
