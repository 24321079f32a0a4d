//! `cargo xtask bench-capacity`: how many concurrent streams each approach holds on this
//! machine, release builds, at the reference's pace (250 ms to the first token, 35 ms
//! between tokens, ~480 tokens an answer).
//!
//! The embedded model and each relay run as processes of their own (`tokenwire-servers
//! model`, then `raw`, `sse` or `wt` relaying it), so the CPU each one uses is its own.
//! For each approach and each step N, `tokenwire-bench run` starts N closed-loop users
//! over the ramp, each reusing one connection for answer after answer until the hold
//! time is covered. Per step: failures by reason, P50/P99 TTFT, P99 gap, and the CPU (as
//! a share of one core over the step) and peak memory of the model, the relay and the
//! bench, and the relay's added delay per token (P50/P99, from the upstream's `created_at`
//! to the hand-over to the client, as the relay logs it when it stops; sse and wt), and
//! how busy the whole machine was. The knee of an approach is the first step whose P99
//! gap exceeds 50 ms or where anything failed.
//!
//! Unless `--no-probe`, a release `tokenwire-probe run` (eBPF on lo) runs beside them
//! and the relay sends it its spans, as in a deployment: per step, the spans it took per
//! second and refused, its loop's lag (P99 and worst bucket of
//! `tokenwire_probe_loop_lag_seconds`), its CPU and memory, and whether it holds a final
//! record for every request the bench made.

use crate::observe::{histogram, quantile_between};
use crate::probe_process::Probe;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokenwire_probe_common::approach::Approach;

/// P99 gap past which a step is over the knee.
const KNEE_GAP_MS: f64 = 50.0;

/// The window of the machine's peak busy share.
const PEAK_WINDOW: Duration = Duration::from_secs(5);

/// The share of the machine's CPU time that was busy between two `machine_ticks` readings.
fn busy_share(from: (u64, u64), to: (u64, u64)) -> f64 {
    to.0.saturating_sub(from.0) as f64 / (to.1.saturating_sub(from.1) as f64).max(1.0)
}

/// A process's CPU seconds so far (user + system), from /proc.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// A server process that said it listens.
struct Server {
    child: Child,
    /// Its "relay added delay per token" line, once it stopped.
    delay_line: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl Server {
    fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(crate::release_bin("tokenwire-servers"))
            .args(args)
            .env("RUST_LOG", "warn,tokenwire_servers=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting the release tokenwire-servers")?;
        let stderr = child.stderr.take().context("the servers' stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        for line in lines.by_ref() {
            let line = line?;
            if line.contains("listening") {
                break;
            }
        }
        // Keep draining (and show warnings: refused or failed sessions say why).
        let delay_line = std::sync::Arc::new(std::sync::Mutex::new(None));
        let keep = delay_line.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("WARN") {
                    eprintln!("  servers: {line}");
                }
                if line.contains("relay added delay per token")
                    && let Ok(mut slot) = keep.lock()
                {
                    *slot = Some(line);
                }
            }
        });
        Ok(Self { child, delay_line })
    }

    /// Stops it and returns its relay delay P50 and P99, in ms, if it logged them.
    fn stop(self) -> Option<(f64, f64)> {
        let slot = self.delay_line.clone();
        drop(self);
        // The line follows the exit by the time the pipe drains.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(line) = slot.lock().ok().and_then(|s| s.clone()) {
                let plain = strip_ansi(&line);
                return Some((
                    field(&plain, "relay_delay_p50_ms")?,
                    field(&plain, "relay_delay_p99_ms")?,
                ));
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A log line without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name=value` from a tracing line, as a number (quotes allowed).
fn field(line: &str, name: &str) -> Option<f64> {
    let rest = line.split(&format!("{name}=")).nth(1)?;
    rest.split_whitespace()
        .next()?
        .trim_matches('"')
        .parse()
        .ok()
}

struct Step {
    approach: Approach,
    users: usize,
    requests: u64,
    failed: u64,
    failures: String,
    p50_ttft: f64,
    p99_ttft: f64,
    p99_gap: f64,
    wall: f64,
    model_cpu: f64,
    relay_cpu: f64,
    bench_cpu: f64,
    relay_rss_mib: f64,
    bench_rss_mib: f64,
    /// The relay's added delay per token, P50 and P99 (ms); raw times none.
    relay_delay: Option<(f64, f64)>,
    /// The machine's busy share of all its cores over the step, and in its busiest
    /// 5-second window (the ramp and the last answers' tail thin out the mean).
    machine_busy: f64,
    machine_peak: f64,
    probe: Option<ProbeStep>,
}

/// The probe's part of a step.
struct ProbeStep {
    spans_per_sec: f64,
    rejected: u64,
    /// P99 and the worst bucket of its loop's lag, in ms.
    lag_p99_ms: Option<f64>,
    lag_max_ms: Option<f64>,
    cpu: f64,
    rss_mib: f64,
    /// Final per-request records of the step's approach (the bench's requests are the
    /// count to match).
    records: u64,
    passive: Passive,
}

/// Passive reading of the relays' upstream legs (relay -> model on :11434, no spans).
#[derive(Debug, Clone, Copy, Default)]
struct Passive {
    /// Records of the legs.
    records: u64,
    /// Of them, those whose answer was not all read.
    incomplete: u64,
    /// Packets the kernel could not put in the passive ring.
    ring_drops: u64,
    /// Packets whose payload was not all captured.
    payload_lost: u64,
}

impl Passive {
    fn read(text: &str) -> Self {
        let outcome = |o: &str| {
            crate::observe::sample(
                text,
                &format!("tokenwire_passive_outcomes_total{{outcome=\"{o}\"}}"),
            )
        };
        Self {
            records: outcome("request"),
            incomplete: outcome("tokens_incomplete"),
            ring_drops: crate::observe::sample(text, "tokenwire_probe_passive_drops_total"),
            payload_lost: outcome("payload_lost"),
        }
    }

    fn since(&self, mark: &Self) -> Self {
        Self {
            records: self.records - mark.records,
            incomplete: self.incomplete - mark.incomplete,
            ring_drops: self.ring_drops - mark.ring_drops,
            payload_lost: self.payload_lost - mark.payload_lost,
        }
    }
}

/// The probe's readings at the start of a step.
struct ProbeMark {
    accepted: u64,
    rejected: u64,
    lag: Vec<(f64, u64)>,
    cpu: f64,
    records: u64,
    passive: Passive,
}

const LOOP_LAG: &str = "tokenwire_probe_loop_lag_seconds";

fn probe_mark(probe: &Probe, approach: Approach) -> Result<ProbeMark> {
    let text = probe.metrics()?;
    let (accepted, rejected) = crate::probe_process::span_counts(&text);
    Ok(ProbeMark {
        accepted,
        rejected: rejected.iter().map(|(_, n)| n).sum(),
        lag: histogram(&text, LOOP_LAG),
        cpu: cpu_secs(probe.pid()),
        records: crate::observe::sample(
            &text,
            &format!(
                "tokenwire_request_wire_bytes_count{{approach=\"{}\"}}",
                approach.label()
            ),
        ),
        passive: Passive::read(&text),
    })
}

/// What the probe did since `mark`, once it holds a final record for `requests` requests
/// or 15 s passed (a request's record is final when the next one on its connection starts
/// or the connection ends).
fn probe_step(
    probe: &Probe,
    approach: Approach,
    mark: &ProbeMark,
    requests: u64,
    wall: f64,
) -> Result<ProbeStep> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut now = probe_mark(probe, approach)?;
    // The legs' records are final once the relay's pooled upstream connections close (at
    // the relay's stop) or carry the next request: wait for them too, within the deadline.
    while (now.records - mark.records < requests
        || now.passive.records - mark.passive.records < requests)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(250));
        now = probe_mark(probe, approach)?;
    }
    let ms = |s: Option<f64>| s.map(|s| s * 1e3);
    Ok(ProbeStep {
        spans_per_sec: (now.accepted - mark.accepted) as f64 / wall.max(1e-9),
        rejected: now.rejected - mark.rejected,
        lag_p99_ms: ms(quantile_between(&mark.lag, &now.lag, 0.99)),
        lag_max_ms: ms(quantile_between(&mark.lag, &now.lag, 1.0)),
        cpu: now.cpu - mark.cpu,
        rss_mib: probe.rss_kib().1 as f64 / 1024.0,
        records: now.records - mark.records,
        passive: now.passive.since(&mark.passive),
    })
}

impl Step {
    fn over_knee(&self) -> bool {
        self.failed > 0 || self.p99_gap > KNEE_GAP_MS
    }
}

pub fn run(
    steps: &[usize],
    hold_secs: u64,
    ramp_secs: u64,
    approaches: &[Approach],
    with_probe: bool,
) -> Result<()> {
    crate::run(crate::cargo_cmd().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "tokenwire-servers",
        "-p",
        "tokenwire-bench",
        "-p",
        "tokenwire-probe",
    ]))?;
    let json = std::env::temp_dir().join(format!("tokenwire-capacity-{}.json", std::process::id()));
    let mut rows = Vec::new();
    for &approach in approaches {
        // `tokenwire-servers NAME` runs the approach's companion.
        let relay_cmd = approach.as_str();
        for &users in steps {
            // Fresh processes per step: each step's memory is its own.
            let model = Server::start(&["model"])?;
            // Enough room for every request of the largest step.
            let probe = if with_probe {
                Some(Probe::start("ebpf", &["--keep-requests", "100000"])?)
            } else {
                None
            };
            let spans = probe.as_ref().map(|p| p.spans_socket());
            let mut relay_args = vec![relay_cmd, "--upstream", "http://127.0.0.1:11434"];
            match &spans {
                Some(path) => relay_args.extend(["--spans", path.to_str().unwrap_or_default()]),
                None => relay_args.push("--no-spans"),
            }
            let relay = Server::start(&relay_args)?;
            // Answers take ~17 s at the reference's pace: enough rounds to cover the hold.
            let rounds = (hold_secs as f64 / 17.0).ceil().max(1.0) as usize;
            let repeat = (users * rounds).div_ceil(10);
            let (m0, r0) = (cpu_secs(model.pid()), cpu_secs(relay.pid()));
            let probe_start = probe
                .as_ref()
                .map(|p| probe_mark(p, approach))
                .transpose()?;
            let machine0 = crate::observe::machine_ticks();
            let started = Instant::now();
            let mut bench = Command::new(crate::release_bin("tokenwire-bench"))
                .args([
                    "run",
                    "--reuse",
                    "--no-warmup",
                    "--insecure",
                    "--no-probe",
                    "--quiet",
                ])
                .args(["--approach", approach.as_str()])
                .args(["--concurrency", &users.to_string()])
                .args(["--ramp-secs", &ramp_secs.to_string()])
                .args(["--repeat", &repeat.to_string(), "--timeout-secs", "300"])
                .arg("--json")
                .arg(&json)
                .stdout(Stdio::null())
                .spawn()
                .context("starting the release tokenwire-bench")?;
            let bench_pid = bench.id();
            let (mut bench_cpu, mut bench_rss, mut relay_rss) = (0.0, 0u64, 0u64);
            let (mut window, mut window_at, mut machine_peak) = (machine0, Instant::now(), 0.0f64);
            let status = loop {
                if let Some(s) = bench.try_wait()? {
                    break s;
                }
                if window_at.elapsed() >= PEAK_WINDOW {
                    let now = crate::observe::machine_ticks();
                    machine_peak = machine_peak.max(busy_share(window, now));
                    (window, window_at) = (now, Instant::now());
                }
                bench_cpu = cpu_secs(bench_pid).max(bench_cpu);
                bench_rss = bench_rss.max(crate::observe::status_kib(bench_pid, "VmHWM:"));
                relay_rss = relay_rss.max(crate::observe::status_kib(relay.pid(), "VmRSS:"));
                std::thread::sleep(Duration::from_millis(200));
            };
            let wall = started.elapsed().as_secs_f64();
            let (model_cpu, relay_cpu) = (cpu_secs(model.pid()) - m0, cpu_secs(relay.pid()) - r0);
            let machine1 = crate::observe::machine_ticks();
            let machine_busy = busy_share(machine0, machine1);
            if !status.success() {
                bail!("tokenwire-bench failed ({status}) at {users} {approach} users");
            }
            let doc: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(&json).context("reading the bench's JSON")?,
            )?;
            let s = &doc["summaries"][0];
            let f = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
            let failures = s["failures"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k} {v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let step = Step {
                approach,
                users,
                requests: s["requests"].as_u64().unwrap_or(0),
                failed: s["failed"].as_u64().unwrap_or(0),
                failures,
                p50_ttft: f("p50_ttft_ms"),
                p99_ttft: f("p99_ttft_ms"),
                p99_gap: f("p99_gap_ms"),
                wall,
                model_cpu,
                relay_cpu,
                bench_cpu,
                relay_rss_mib: relay_rss as f64 / 1024.0,
                bench_rss_mib: bench_rss as f64 / 1024.0,
                relay_delay: None,
                machine_busy,
                machine_peak,
                probe: None,
            };
            eprintln!(
                "{approach} {users}: {} failed, P99 gap {:.1} ms, {:.0} s",
                step.failed, step.p99_gap, wall
            );
            let over = step.over_knee();
            let mut step = step;
            // The relay goes first: its pooled upstream connections close, so the legs'
            // last records become final too.
            step.relay_delay = relay.stop();
            if let (Some(p), Some(mark)) = (&probe, &probe_start) {
                step.probe = Some(probe_step(p, approach, mark, step.requests, wall)?);
            }
            drop(model);
            drop(probe);
            rows.push(step);
            if over && users != *steps.last().unwrap_or(&users) {
                // Past the knee: the next steps only fail more (and take longest).
                eprintln!("{approach}: past the knee at {users}; its larger steps are skipped");
                break;
            }
        }
    }
    let _ = std::fs::remove_file(&json);
    println!("{}", table(&rows));
    Ok(())
}

fn table(rows: &[Step]) -> String {
    let mut s = String::from(
        "| approach | users | requests | failed (by reason) | P50 TTFT | P99 TTFT | P99 gap | relay delay P50 / P99 | machine busy (mean / peak 5 s) | model CPU | relay CPU | bench CPU | relay RSS | bench RSS |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let pct = |cpu: f64, wall: f64| format!("{:.0}%", 100.0 * cpu / wall.max(1e-9));
    for r in rows {
        let failed = if r.failed == 0 {
            "0".to_owned()
        } else {
            format!("{} ({})", r.failed, r.failures)
        };
        s.push_str(&format!(
            "| {} | {} | {} | {failed} | {:.0} ms | {:.0} ms | {:.1} ms{} | {} | {:.0}% / {:.0}% | {} | {} | {} | {:.0} MiB | {:.0} MiB |\n",
            r.approach,
            r.users,
            r.requests,
            r.p50_ttft,
            r.p99_ttft,
            r.p99_gap,
            if r.over_knee() { " (over)" } else { "" },
            r.relay_delay
                .map_or("-".to_owned(), |(p50, p99)| format!("{p50:.2} / {p99:.2} ms")),
            100.0 * r.machine_busy,
            100.0 * r.machine_peak,
            pct(r.model_cpu, r.wall),
            pct(r.relay_cpu, r.wall),
            pct(r.bench_cpu, r.wall),
            r.relay_rss_mib,
            r.bench_rss_mib,
        ));
    }
    for a in Approach::ALL {
        let mine: Vec<&Step> = rows.iter().filter(|r| r.approach == a).collect();
        if mine.is_empty() {
            continue;
        }
        match mine.iter().find(|r| r.over_knee()) {
            Some(k) => s.push_str(&format!(
                "\n{a}: knee at {} users (the first step with a failure or a P99 gap over {KNEE_GAP_MS} ms); the last step under it: {}.",
                k.users,
                mine.iter()
                    .rev()
                    .find(|r| !r.over_knee() && r.users < k.users)
                    .map_or("none".to_owned(), |r| r.users.to_string())
            )),
            None => s.push_str(&format!(
                "\n{a}: no knee up to {} users.",
                mine.last().map_or(0, |r| r.users)
            )),
        }
    }
    s.push_str(&probe_table(rows));
    s.push_str("\n\nMachine busy: the share of all the machine's cores not idle (kernel work included), over the step and in its busiest 5 s. CPU: share of one core over the step (the machine's cores are shared by all the processes). Relay delay: per token, from the model's `created_at` to the relay handing it to the client's connection (raw forwards /v1 chunks, whose timestamps are whole seconds: not timed).\n");
    s
}

/// The probe's columns, when it ran.
fn probe_table(rows: &[Step]) -> String {
    let with: Vec<(&Step, &ProbeStep)> = rows
        .iter()
        .filter_map(|r| Some((r, r.probe.as_ref()?)))
        .collect();
    if with.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "\n\nThe probe beside them (eBPF on lo, the relay's spans). Loop lag: how late its loop ran its 100 ms tick, as bucket bounds of `tokenwire_probe_loop_lag_seconds` (idle, about 1 ms: the timer's granularity). Final records: the probe's per-request records of the approach against the bench's requests (raw has 2 more, the bench's `/api/version` and `/tokenwire/model` through the proxy). Upstream legs: the relay's requests to the model on :11434, read passively from their packets (docs/passive.md): final records, of them incomplete, and packets lost to a full passive ring or without their whole payload:\n\n| approach | users | spans/s | spans refused | loop lag P99 / worst | probe CPU | probe peak RSS | final records / requests | upstream legs: records / incomplete / ring drops / payload lost |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let ms = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("≤ {v:.2} ms"),
        Some(_) => "> 1 s".to_owned(),
        None => "-".to_owned(),
    };
    for (r, p) in with {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} / {} | {:.0}% | {:.0} MiB | {} / {} | {} / {} / {} / {} |\n",
            r.approach,
            r.users,
            p.spans_per_sec,
            p.rejected,
            ms(p.lag_p99_ms),
            ms(p.lag_max_ms),
            100.0 * p.cpu / r.wall.max(1e-9),
            p.rss_mib,
            p.records,
            r.requests,
            p.passive.records,
            p.passive.incomplete,
            p.passive.ring_drops,
            p.passive.payload_lost,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_relay_delay_from_a_coloured_log_line() {
        let line = "\u{1b}[2m2026-11-29T22:00:00Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[3mrelay_delay_p50_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m0.412 \u{1b}[3mrelay_delay_p99_ms\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"1.250\" relay added delay per token";
        let plain = strip_ansi(line);
        assert_eq!(field(&plain, "relay_delay_p50_ms"), Some(0.412));
        assert_eq!(field(&plain, "relay_delay_p99_ms"), Some(1.25));
        assert_eq!(field(&plain, "relay_delay_max_ms"), None);
    }
}
