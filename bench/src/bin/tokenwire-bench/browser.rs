//! `tokenwire-bench browser`: prompts through the approaches from headless Chromium.

use crate::args::BrowserArgs;
use crate::output::{self, Head, Tail};
use anyhow::{Result, bail};
use serde::Serialize;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::report;

/// The browser's JSON document.
#[derive(Serialize)]
struct BrowserJsonReport<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    page: &'a str,
    browser: &'a tokenwire_bench::browser::BrowserFacts,
    #[serde(flatten)]
    tail: Tail<'a>,
}

pub async fn browser(args: BrowserArgs) -> Result<()> {
    use tokenwire_bench::browser::{self, BrowserConfig};
    let (prompts, jobs, mut approaches) = args.workload.load()?;
    // gRPC has no browser API (its trailers are out of a page's reach): left out, said so.
    let (kept, left): (Vec<Approach>, Vec<Approach>) =
        approaches.iter().partition(|a| a.spec().browser);
    if !left.is_empty() {
        let names: Vec<String> = left.iter().map(|a| a.to_string()).collect();
        eprintln!(
            "tokenwire-bench browser: {} left out: no browser API streams it",
            names.join(", ")
        );
    }
    if kept.is_empty() {
        bail!("none of the approaches asked for is a browser's");
    }
    approaches = kept;
    let probe = output::reachable_probe(args.probe, args.no_probe).await;
    let cfg = BrowserConfig {
        page_url: args.page.clone(),
        approaches: approaches.clone(),
        jobs,
        reuse: args.reuse,
        timeout: Duration::from_secs(args.timeout_secs),
        warmup: !args.no_warmup,
        chromium: args.chromium.clone(),
        cert: args.cert.clone(),
        quic_origins: vec![
            args.h3_origin
                .clone()
                .unwrap_or_else(|| browser::default_h3_origin(&args.page)),
        ],
        probe,
        screenshot: args.screenshot.clone(),
    };
    let started_at = output::now_rfc3339();
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
    let figures = output::figures(
        &runs,
        args.quiet,
        args.reuse,
        report::Median::NearestRank,
        probe,
        false,
    )
    .await;
    if let Some(path) = &args.screenshot {
        eprintln!("tokenwire-bench: screenshot in {}", path.display());
    }
    let doc = BrowserJsonReport {
        head: Head {
            tool: "tokenwire-bench browser",
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
            warmup: !args.no_warmup,
        },
        page: &args.page,
        browser: &run.facts,
        tail: Tail::of(&figures, &runs),
    };
    output::write_files(
        args.csv.as_deref(),
        args.json.as_deref(),
        &figures.all,
        &doc,
    )?;
    // A page is a fixed client on a local stack: any failed request is a fault (unlike
    // `run`, whose failures under an emulated link are part of what it measures).
    let failed: Vec<String> = figures
        .summaries
        .iter()
        .filter(|s| s.failed > 0)
        .map(|s| format!("{} ({} of {})", s.approach, s.failed, s.requests))
        .collect();
    if !failed.is_empty() {
        bail!("failed requests in the browser: {}", failed.join(", "));
    }
    Ok(())
}
