//! tokenwire-bench: stream prompts through the companions and report what a user sees.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::Targets;
use tokenwire_bench::client::https::HttpsClient;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::report::{self, Summary};
use tokenwire_bench::runner::{self, ApproachRun, RunConfig};
use tokenwire_bench::{server_info, wire, workload};

/// Streams prompts through the three approaches — raw (the Ollama API through the TLS
/// proxy), sse (HTTPS SSE relay), wt (WebTransport) — and reports time to first token,
/// time between tokens, tokens and application bytes per approach, in the reference
/// study's columns.
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
}

#[derive(clap::Args)]
struct RunArgs {
    /// Approaches to run, in this order: any of raw, sse, wt.
    #[arg(long, value_delimiter = ',', default_value = "raw,sse,wt")]
    approach: Vec<Approach>,
    /// Keep one connection (or WebTransport session) per user for all its prompts;
    /// without it every prompt opens a new one and pays the handshakes.
    #[arg(long)]
    reuse: bool,
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
    /// Closed loop: N users at once per approach, each with its own connection.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
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
    /// Do not ask a probe for wire figures.
    #[arg(long, conflicts_with = "probe")]
    no_probe: bool,
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
    tokenwire_servers::logging::init("warn");
    let Command::Run(args) = Cli::parse().command;
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(run(*args))
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
    let prompts = match &args.prompts {
        Some(p) => workload::read_prompts(p)?,
        None => workload::default_prompts(),
    };
    let jobs = workload::jobs(&prompts, args.limit, args.repeat)?;
    let mut approaches = Vec::new();
    for a in &args.approach {
        if !approaches.contains(a) {
            approaches.push(*a);
        }
    }
    let targets = Targets {
        raw: args.raw,
        sse: args.sse,
        wt_url: args.wt_url.clone(),
        host: args.host.clone(),
        model: args.model.clone(),
    };
    let show = !args.quiet && std::io::stdout().is_terminal();
    // Ask the probe first: a run of minutes should not end in "no probe".
    let probe = if args.no_probe {
        None
    } else {
        match wire::check(args.probe).await {
            Ok(()) => Some(args.probe),
            Err(e) => {
                eprintln!(
                    "tokenwire-bench: {e}; wire figures left out (start `tokenwire-probe run`, or pass --no-probe)"
                );
                None
            }
        }
    };
    let cfg = RunConfig {
        approaches: approaches.clone(),
        reuse: args.reuse,
        jobs,
        concurrency: args.concurrency,
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

    for run in &runs {
        if let Some(why) = &run.unreachable {
            eprintln!("{}: skipped: {why}", run.approach);
            continue;
        }
        if !args.quiet {
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
            if args.reuse { "reused" } else { "fresh" }
        );
    }
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
        Some(addr) => {
            let mut out = Vec::new();
            for run in runs.iter().filter(|r| r.unreachable.is_none()) {
                match wire::collect(addr, run, Duration::from_secs(10)).await {
                    Ok(w) => out.push(w),
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
            Some(out)
        }
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
                .take(args.limit.unwrap_or(usize::MAX))
                .map(String::as_str)
                .collect(),
            limit: args.limit,
            repeat: args.repeat,
            concurrency: args.rate.is_none().then_some(args.concurrency),
            rate: args.rate,
            seed: args.seed,
            warmup: !args.no_warmup,
            targets: serde_json::json!({
                "raw": targets.raw, "sse": targets.sse, "wt": targets.wt_url,
                "host": targets.host, "model": targets.model,
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
