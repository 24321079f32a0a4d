//! `tokenwire-bench matrix`: every setting x profile x direction x mode x approach.

use crate::args::MatrixArgs;
use anyhow::{Result, bail};
#[cfg(target_os = "linux")]
use {anyhow::Context, std::time::Duration, tokenwire_bench::workload};

#[cfg(target_os = "linux")]
pub fn matrix(args: MatrixArgs) -> Result<()> {
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
pub fn matrix(_args: MatrixArgs) -> Result<()> {
    bail!("the matrix needs the link emulator, which needs Linux (docs/emulator.md)")
}
