//! tokenwire-bench: stream prompts through the companions and report what a user sees.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::client::{ApproachClient, Targets};
use tokenwire_bench::prompts::DEFAULT_PROMPTS;
use tokenwire_bench::summary::{markdown, summarise};

/// Streams prompts through the three approaches — raw (Ollama API through the TLS
/// proxy), sse (HTTPS SSE relay), wt (WebTransport) — one request at a time, and reports
/// time to first token, time between tokens, tokens and application bytes per approach.
#[derive(Parser)]
#[command(name = "tokenwire-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run prompts through the chosen approaches and print a summary table.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Approaches to run, in this order: any of raw, sse, wt.
    #[arg(long, value_delimiter = ',', default_value = "raw,sse,wt")]
    approach: Vec<Approach>,
    /// Keep one connection (or WebTransport session) per approach for all prompts;
    /// without it every prompt opens a new one and pays its handshakes.
    #[arg(long)]
    reuse: bool,
    /// Run only the first N of the reference's ten prompts.
    #[arg(long)]
    limit: Option<usize>,
    /// Address of the raw TLS proxy.
    #[arg(long, default_value = "127.0.0.1:11435")]
    raw: SocketAddr,
    /// Address of the SSE relay.
    #[arg(long, default_value = "127.0.0.1:8080")]
    sse: SocketAddr,
    /// WebTransport session URL.
    #[arg(long, default_value = "https://127.0.0.1:4433/wt")]
    wt_url: String,
    /// Model name for the raw approach.
    #[arg(long, default_value = "gemma3:12b")]
    model: String,
    /// Certificate to trust (pinned): the companions' certs/cert.pem.
    #[arg(long, default_value = "certs/cert.pem")]
    cert: PathBuf,
    /// Do not verify the servers' certificates (what the reference did).
    #[arg(long, conflicts_with = "cert")]
    insecure: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
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
    rt.block_on(run(args))
}

async fn run(args: RunArgs) -> Result<()> {
    let trust = if args.insecure {
        Trust::Insecure
    } else {
        Trust::from_pem_file(&args.cert)?
    };
    let targets = Targets {
        raw: args.raw,
        sse: args.sse,
        wt_url: args.wt_url.clone(),
        model: args.model.clone(),
        ..Targets::default()
    };
    let prompts = &DEFAULT_PROMPTS[..args
        .limit
        .unwrap_or(DEFAULT_PROMPTS.len())
        .min(DEFAULT_PROMPTS.len())];
    if prompts.is_empty() {
        bail!("--limit 0 leaves no prompt to run");
    }
    let mut approaches = args.approach.clone();
    approaches.dedup();
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut records = Vec::new();
    for &approach in &approaches {
        let mut client = ApproachClient::new(approach, &targets, &trust)?;
        for (i, prompt) in prompts.iter().enumerate() {
            let rec = client.stream(prompt, i, args.reuse, timeout).await;
            match &rec.error {
                None => println!(
                    "{:<4} prompt {:>2}  TTFT {:>7.1} ms  {:>4} tokens  {:>7} app bytes  {:>6.2} s",
                    approach,
                    i + 1,
                    rec.ttft.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                    rec.tokens,
                    rec.app_bytes,
                    rec.total.map_or(0.0, |d| d.as_secs_f64()),
                ),
                Some(e) => println!("{approach:<4} prompt {:>2}  FAILED: {e}", i + 1),
            }
            records.push(rec);
        }
        println!(
            "{approach:<4} {} connection(s) for {} prompt(s) ({})",
            client.connections(),
            prompts.len(),
            if args.reuse { "reused" } else { "fresh" }
        );
        client.shutdown().await;
    }
    let summaries: Vec<_> = approaches.iter().map(|&a| summarise(a, &records)).collect();
    println!("\n{}", markdown(&summaries));
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
