//! `tokenwire-bench run`: prompts through the approaches, from this process.

use crate::args::RunArgs;
use crate::output::{self, Head, Tail};
use anyhow::{Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::https::HttpsClient;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::client::{ReferenceClient, Targets};
use tokenwire_bench::report;
use tokenwire_bench::runner::{self, RunConfig};
use tokenwire_bench::server_info;
use tokenwire_servers::tuning::Knob;

/// The JSON document: what ran, against what, and every request.
#[derive(Serialize)]
struct JsonReport<'a> {
    #[serde(flatten)]
    head: Head<'a>,
    concurrency: Option<usize>,
    ramp_secs: f64,
    rate: Option<f64>,
    seed: u64,
    targets: serde_json::Value,
    server: server_info::ServerInfo,
    #[serde(flatten)]
    tail: Tail<'a>,
}

pub async fn run(args: RunArgs) -> Result<()> {
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
    let mut addrs: BTreeMap<Approach, SocketAddr> = Approach::ALL
        .map(|a| (a, SocketAddr::new(args.server, a.port())))
        .into();
    addrs.extend(args.at.iter().copied());
    if r || args.sse_v6 {
        let sse = addrs[&Approach::Sse];
        addrs.insert(
            Approach::Sse,
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), sse.port()),
        );
    }
    let targets = Targets {
        addrs,
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
    let probe = output::reachable_probe(args.probe, args.no_probe).await;
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
    let started_at = output::now_rfc3339();
    let runs = runner::run(&cfg).await;
    let count_end_frame = reference.count_end_frame;
    let figures = output::figures(&runs, args.quiet, args.reuse, p50, probe, count_end_frame).await;
    let server = match (&args.json, trust.client_config()) {
        (Some(_), Ok(tls)) => {
            let raw = targets.addr(Approach::Raw);
            server_info::fetch(&mut HttpsClient::new(raw, &targets.host, tls)).await
        }
        _ => server_info::ServerInfo::default(),
    };
    let urls: BTreeMap<Approach, String> =
        approaches.iter().map(|&a| (a, targets.url(a))).collect();
    let doc = JsonReport {
        head: Head {
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
            warmup: !args.no_warmup,
        },
        concurrency: args.rate.is_none().then_some(args.concurrency),
        ramp_secs: args.ramp_secs,
        rate: args.rate,
        seed: args.seed,
        targets: serde_json::json!({
            "urls": urls,
            "host": targets.host, "model": targets.model,
            "reference": targets.reference, "p50_mean": p50 == report::Median::MeanOfMiddle,
            "tuning": targets.tuning.name,
            "tuning_knobs": targets.tuning.knobs.iter().map(|k| k.name()).collect::<Vec<_>>(),
        }),
        server,
        tail: Tail::of(&figures, &runs),
    };
    output::write_files(
        args.csv.as_deref(),
        args.json.as_deref(),
        &figures.all,
        &doc,
    )?;
    // Failures are part of what a run measures (under loss, some are expected): it fails
    // only when an approach had no successful request at all (its servers are not up).
    let dead: Vec<String> = figures
        .summaries
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
