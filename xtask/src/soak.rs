//! `cargo xtask soak --minutes N`: the demo's workload for N minutes (the embedded model,
//! the three companions, the benchmark client in a loop, alternating reused and fresh
//! connections so the probe's table keeps turning over) with the probe's resident memory
//! and open file descriptors sampled every 10 s. Prints a table for docs/reliability.md and
//! whether both stayed flat (the last samples within 10% of those after the first minute).

use anyhow::{Context, Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokenwire_probe_common::launch::{ProbeLaunch, RunningProbe, RunningServers, ServersLaunch};

const API: &str = "127.0.0.1:19464";

/// One sample of a metric from the probe's exposition (0 while it does not answer).
fn metric(name: &str) -> u64 {
    let api = API.parse().expect("a constant address");
    crate::observe::metrics(api).map_or(0, |text| crate::observe::sample(&text, name))
}

/// Stops the probe and the servers (SIGINT) when dropped.
struct Stop(RunningProbe, RunningServers);

impl Drop for Stop {
    fn drop(&mut self) {
        self.1.stop("INT");
        self.0.stop("INT");
    }
}

pub fn run(minutes: f64) -> Result<()> {
    let spans = std::env::temp_dir().join(format!("tokenwire-soak-{}", std::process::id()));
    let spans_sock = spans.join("spans.sock");
    let mut cmd = Command::new(crate::bin("tokenwire-probe"));
    cmd.args(["run", "--quiet", "--backend", "auto", "--listen", API])
        .args(["--idle-timeout", "30", "--closed-timeout", "5", "--spans"])
        .arg(&spans_sock)
        .stdout(Stdio::null());
    let mut probe = ProbeLaunch::new(cmd)
        .start()
        .context("starting tokenwire-probe")?;
    let pid = probe.child.id();
    let mut cmd = Command::new(crate::bin("tokenwire-servers"));
    cmd.args([
        "all",
        "--speed",
        "4",
        "--mean-tokens",
        "120",
        "--grace-secs",
        "2",
    ])
    .env("TOKENWIRE_SPANS", &spans_sock)
    .stdout(Stdio::null());
    let servers = match ServersLaunch::new(cmd).start() {
        Ok(s) => s,
        Err(e) => {
            probe.stop("INT");
            bail!("{e} (is a port in use?)");
        }
    };
    let _stop = Stop(probe, servers);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(minutes * 60.0);
    let bench = crate::bin("tokenwire-bench");
    let client = std::thread::spawn(move || {
        let mut runs = 0u64;
        while Instant::now() < until {
            let mut cmd = Command::new(&bench);
            cmd.args([
                "run",
                "--limit",
                "10",
                "--no-warmup",
                "--quiet",
                "--probe",
                API,
            ]);
            if runs.is_multiple_of(2) {
                cmd.arg("--reuse");
            }
            let ok = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(runs);
            }
            runs += 1;
        }
        Ok(runs)
    });
    let mut samples = Vec::new();
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(10));
        samples.push((
            started.elapsed().as_secs(),
            crate::observe::status_kib(pid, "VmRSS:"),
            crate::observe::fds(pid),
            metric("tokenwire_probe_connections"),
            metric("tokenwire_requests_total{"),
        ));
    }
    let runs = client
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
        .map_err(|n| anyhow::anyhow!("a benchmark run failed after {n} runs"))?;
    println!("| minute | probe RSS MiB | open fds | connections in table | requests so far |");
    println!("|---|---|---|---|---|");
    for (t, rss, fd, conns, reqs) in samples.iter().filter(|s| s.0 % 60 < 10) {
        println!(
            "| {:.0} | {:.1} | {fd} | {conns} | {reqs} |",
            *t as f64 / 60.0,
            *rss as f64 / 1024.0
        );
    }
    // Flat: the last minute against the second (after start-up and the first turnover).
    let window = |from: u64, to: u64| -> (f64, f64) {
        let s: Vec<_> = samples.iter().filter(|s| s.0 >= from && s.0 < to).collect();
        let n = s.len().max(1) as f64;
        (
            s.iter().map(|s| s.1 as f64).sum::<f64>() / n,
            s.iter().map(|s| s.2 as f64).sum::<f64>() / n,
        )
    };
    let end = started.elapsed().as_secs();
    let (rss0, fd0) = window(60, 120);
    let (rss1, fd1) = window(end.saturating_sub(60), end + 1);
    println!(
        "\n{runs} benchmark runs; probe RSS {:.1} -> {:.1} MiB ({:+.1}%), open fds {fd0:.1} -> {fd1:.1} ({:+.1}%)",
        rss0 / 1024.0,
        rss1 / 1024.0,
        (rss1 / rss0 - 1.0) * 100.0,
        (fd1 / fd0 - 1.0) * 100.0
    );
    if rss1 > rss0 * 1.1 || fd1 > fd0 * 1.1 {
        bail!("the probe's memory or descriptors grew by more than 10%");
    }
    Ok(())
}
