//! What `run` and `browser` print and write alike: each request's line, the summary table,
//! the probe's wire table, the CSV and the JSON document's common part.

use anyhow::{Context, Result};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::record::RequestRecord;
use tokenwire_bench::report::{self, Summary};
use tokenwire_bench::runner::ApproachRun;
use tokenwire_bench::wire;

/// A run's figures: every request, each approach's summary, and the probe's wire figures
/// (`None` without a probe).
pub struct Figures {
    pub all: Vec<RequestRecord>,
    pub summaries: Vec<Summary>,
    pub wire: Option<Vec<wire::WireSummary>>,
}

/// Prints the requests (unless `quiet`), the summary table and, with a probe, the wire
/// table; returns the figures.
pub async fn figures(
    runs: &[ApproachRun],
    quiet: bool,
    reuse: bool,
    median: report::Median,
    probe: Option<SocketAddr>,
    count_end_frame: bool,
) -> Figures {
    print_requests(runs, quiet, reuse);
    let all: Vec<RequestRecord> = runs
        .iter()
        .flat_map(|r| r.records.iter().cloned())
        .collect();
    let summaries: Vec<Summary> = runs
        .iter()
        .map(|r| report::summarise_with(r.approach, &all, r.connections, median))
        .collect();
    println!("\n{}", report::markdown(&summaries));
    let wire = match probe {
        Some(addr) => Some(wire_table(addr, runs, &summaries, count_end_frame).await),
        None => None,
    };
    Figures {
        all,
        summaries,
        wire,
    }
}

/// What both JSON documents begin with: the tool, when and how it ran, what it streamed.
#[derive(Serialize)]
pub struct Head<'a> {
    pub tool: &'static str,
    pub version: &'static str,
    pub started_at: String,
    pub mode: &'static str,
    pub approaches: &'a [Approach],
    pub prompts: Vec<&'a str>,
    pub limit: Option<usize>,
    pub repeat: usize,
    pub warmup: bool,
}

/// What both JSON documents end with: the summaries, the wire figures (absent without a
/// probe) and every request.
#[derive(Serialize)]
pub struct Tail<'a> {
    pub summaries: &'a [Summary],
    pub wire: Option<&'a [wire::WireSummary]>,
    pub runs: &'a [ApproachRun],
}

impl<'a> Tail<'a> {
    pub fn of(figures: &'a Figures, runs: &'a [ApproachRun]) -> Self {
        Self {
            summaries: &figures.summaries,
            wire: figures.wire.as_deref(),
            runs,
        }
    }
}

/// Now, as RFC 3339.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The CSV (one row per request) and the JSON document, where asked for.
pub fn write_files(
    csv: Option<&Path>,
    json: Option<&Path>,
    all: &[RequestRecord],
    doc: &impl Serialize,
) -> Result<()> {
    if let Some(path) = csv {
        std::fs::write(path, report::csv(all))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(doc).context("serialising the JSON report")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The probe's address if one answers there (and is wanted); otherwise says why once.
pub async fn reachable_probe(addr: SocketAddr, unwanted: bool) -> Option<SocketAddr> {
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
pub fn print_requests(runs: &[ApproachRun], quiet: bool, reuse: bool) {
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
pub async fn wire_table(
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
