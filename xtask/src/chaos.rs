//! `cargo xtask chaos --minutes N` (as root): the demo's workload under faults, and a
//! check that nothing is lost or left hanging. The model, each companion and the probe run
//! as processes of their own; while `tokenwire-bench` streams prompts through all seven
//! approaches (two users each, reused and fresh connections in turn) and curl cuts SSE
//! clients mid-stream, a fault is injected every few seconds at random (seeded): the probe
//! stopped with SIGTERM or killed with -9 (it runs with `--pin`, so its successor adopts
//! the classifier), the model killed, or one companion killed, each restarted a moment
//! later. At the end:
//!
//! - every request a client made got the full answer or a clear error, none hung;
//! - every request that reached a server has exactly one record at the probe (polled every
//!   300 ms, so a probe's records are read before it dies), except those that ran while
//!   no probe did, which are counted as lost; no record is left without its request;
//! - the wire counters never went down across a probe restart, and the packets of each
//!   outage were counted;
//! - no process panicked, and those alive at the end hold no more descriptors or memory
//!   than after their start-up (with a margin).
//!
//! Prints the figures for docs/reliability.md; exits non-zero when a check fails.

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokenwire_probe_common::approach::Approach;
use tokenwire_probe_common::launch::{ProbeLaunch, ServersLaunch, Started};

const API: &str = "127.0.0.1:19466";
const PIN: &str = "/sys/fs/bpf/tokenwire-chaos";
/// How often the probe's records are read.
const POLL: Duration = Duration::from_millis(300);
/// The probe's idle timeout here: a request whose companion died without its end span is
/// ended `unknown` this long after its connection goes quiet.
const IDLE_SECS: u64 = 10;
/// How long after a client's due time a server may first see its request: a fresh QUIC
/// connection to a companion that has just restarted waits out its first Initial's loss
/// (1 s, then 2 s).
const WINDOW_NS: u64 = 3_500_000_000;
/// Descriptors a process may hold beyond its count after start-up, and memory growth.
const FD_SLACK: usize = 16;
const RSS_SLACK_KIB: u64 = 48 * 1024;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// GET `path` from the probe; `None` while no probe answers.
fn get(path: &str) -> Option<String> {
    crate::observe::get(API.parse().ok()?, path).ok()
}

fn wire_packets() -> Option<u64> {
    let text = get("/metrics")?;
    Some(crate::observe::sample(
        &text,
        "tokenwire_wire_packets_total{",
    ))
}

/// One process the chaos kills and restarts, and what it looked like after start-up.
struct Proc<T> {
    name: String,
    command: Box<dyn Fn() -> Command + Send>,
    running: Option<Started<T>>,
    /// (pid, descriptors, RSS KiB) a few seconds after its latest start.
    baseline: Option<(u32, usize, u64)>,
    started_at: Instant,
    starts: u32,
    log: PathBuf,
}

impl<T: serde::de::DeserializeOwned> Proc<T> {
    fn start(
        &mut self,
        launch: impl Fn(Command) -> tokenwire_probe_common::launch::Launch<T>,
    ) -> Result<()> {
        let started = launch((self.command)())
            .log_to(&self.log)
            .start()
            .with_context(|| format!("starting {}", self.name))?;
        self.running = Some(started);
        self.baseline = None;
        self.started_at = Instant::now();
        self.starts += 1;
        Ok(())
    }

    fn stop(&mut self, signal: &str) {
        if let Some(mut r) = self.running.take() {
            r.stop(signal);
        }
    }

    fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    /// Takes the baseline once the process has run a few seconds.
    fn settle(&mut self) {
        if self.baseline.is_none()
            && self.started_at.elapsed() > Duration::from_secs(3)
            && let Some(pid) = self.pid()
        {
            self.baseline = Some((
                pid,
                crate::observe::fds(pid),
                crate::observe::status_kib(pid, "VmRSS:"),
            ));
        }
    }

    /// Descriptors and memory now against the baseline: an error line when it grew.
    fn leak(&self) -> Option<String> {
        let (pid, fd0, rss0) = self.baseline?;
        if self.pid() != Some(pid) {
            return None;
        }
        let (fd1, rss1) = (
            crate::observe::fds(pid),
            crate::observe::status_kib(pid, "VmRSS:"),
        );
        println!(
            "| {} | {} | {fd0} -> {fd1} | {:.1} -> {:.1} |",
            self.name,
            self.starts,
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0
        );
        (fd1 > fd0 + FD_SLACK || rss1 > rss0.max(1) * 2 + RSS_SLACK_KIB).then(|| {
            format!(
                "{}: descriptors {fd0} -> {fd1}, RSS {rss0} -> {rss1} KiB",
                self.name
            )
        })
    }
}

/// A request a client made: which approach, when, and whether a record must exist.
#[derive(Debug, Clone)]
struct Made {
    label: &'static str,
    start_ns: u64,
    end_ns: u64,
    /// It reached a server (a record is due), as far as the client can tell.
    reached: bool,
    /// How long after `start_ns` a server must have seen it.
    window_ns: u64,
}

/// A stretch without a probe: from its last read of the records to its successor's ready.
#[derive(Debug, Clone, Copy)]
struct Outage {
    from_ns: u64,
    to_ns: u64,
    /// Wire packets the successor's first read counted beyond the last read before.
    packets_during: i64,
}

pub fn run(minutes: f64, seed: u64) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tokenwire-chaos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let spans = dir.join("spans.sock");
    let _ = Command::new(crate::bin("tokenwire-probe"))
        .args(["detach", "--pin", PIN])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let bin = |n: &str| crate::bin(n);

    let spans_for_probe = spans.clone();
    let probe_bin = bin("tokenwire-probe");
    let mut probe: Proc<tokenwire_probe_common::launch::ProbeReady> = Proc {
        name: "probe".into(),
        command: Box::new(move || {
            let mut c = Command::new(&probe_bin);
            c.args(["run", "--quiet", "--backend", "ebpf", "--pin", PIN])
                .args(["--listen", API, "--interval", "3600"])
                .args([
                    "--idle-timeout",
                    &IDLE_SECS.to_string(),
                    "--closed-timeout",
                    "5",
                ])
                .arg("--spans")
                .arg(&spans_for_probe)
                .stdout(Stdio::null());
            c
        }),
        running: None,
        baseline: None,
        started_at: Instant::now(),
        starts: 0,
        log: dir.join("probe.log"),
    };
    let server =
        |name: &str, args: Vec<String>| -> Proc<tokenwire_probe_common::launch::ServersReady> {
            let (b, s) = (bin("tokenwire-servers"), spans.clone());
            Proc {
                name: name.to_owned(),
                command: Box::new(move || {
                    let mut c = Command::new(&b);
                    c.args(&args)
                        .env("TOKENWIRE_SPANS", &s)
                        .stdout(Stdio::null());
                    c
                }),
                running: None,
                baseline: None,
                started_at: Instant::now(),
                starts: 0,
                log: dir.join(format!("{name}.log")),
            }
        };
    let mut servers = vec![server(
        "model",
        [
            "model",
            "--speed",
            "4",
            "--mean-tokens",
            "60",
            "--grace-secs",
            "1",
        ]
        .map(String::from)
        .to_vec(),
    )];
    for a in Approach::ALL {
        servers.push(server(
            a.as_str(),
            vec![a.as_str().to_owned(), "--grace-secs".into(), "1".into()],
        ));
    }
    let cleanup = Cleanup;
    let result = probe
        .start(ProbeLaunch::new)
        .and_then(|()| {
            servers
                .iter_mut()
                .try_for_each(|s| s.start(ServersLaunch::new))
                .context("are the demo's ports free? (a `tokenwire-servers all` running?)")
        })
        .and_then(|()| chaos(minutes, seed, &dir, &mut probe, &mut servers));
    for s in &mut servers {
        s.stop("INT");
    }
    probe.stop("INT");
    drop(cleanup);
    result
}

/// Detaches the pinned classifier however the run ends.
struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new(crate::bin("tokenwire-probe"))
            .args(["detach", "--pin", PIN])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

type Records = Arc<Mutex<HashMap<String, Value>>>;

fn chaos(
    minutes: f64,
    seed: u64,
    dir: &Path,
    probe: &mut Proc<tokenwire_probe_common::launch::ProbeReady>,
    servers: &mut [Proc<tokenwire_probe_common::launch::ServersReady>],
) -> Result<()> {
    let until = Instant::now() + Duration::from_secs_f64(minutes * 60.0);
    let stop = Arc::new(AtomicBool::new(false));
    let polling = Arc::new(AtomicBool::new(true));
    let made = Arc::new(Mutex::new(Vec::<Made>::new()));
    let hangs = Arc::new(Mutex::new(Vec::<String>::new()));
    let failures = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let records: Records = Arc::new(Mutex::new(HashMap::new()));
    let last_read_ns = Arc::new(std::sync::atomic::AtomicU64::new(unix_ns()));

    // The probe's records, read every POLL and kept by id (the latest state wins).
    let poller = {
        let (polling, records, last) = (polling.clone(), records.clone(), last_read_ns.clone());
        std::thread::spawn(move || {
            while polling.load(Ordering::Relaxed) {
                if let Some(body) = get("/api/requests?limit=100000")
                    && let Ok(v) = serde_json::from_str::<Value>(&body)
                {
                    let mut r = records.lock().unwrap_or_else(|e| e.into_inner());
                    for rec in v["requests"].as_array().into_iter().flatten() {
                        if let Some(id) = rec["id"].as_str() {
                            r.insert(id.to_owned(), rec.clone());
                        }
                    }
                    last.store(unix_ns(), Ordering::Relaxed);
                }
                std::thread::sleep(POLL);
            }
        })
    };

    // The benchmark, round after round until the end.
    let bench = {
        let (stop, made, hangs, failures) =
            (stop.clone(), made.clone(), hangs.clone(), failures.clone());
        let (bench, dir) = (crate::bin("tokenwire-bench"), dir.to_owned());
        std::thread::spawn(move || -> Result<u64> {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let json = dir.join(format!("round-{round}.json"));
                let mut cmd = Command::new(&bench);
                cmd.args(["run", "--concurrency", "2", "--limit", "2", "--no-warmup"])
                    .args(["--quiet", "--no-probe", "--timeout-secs", "45", "--json"])
                    .arg(&json)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                if round.is_multiple_of(2) {
                    cmd.arg("--reuse");
                }
                cmd.status().context("running tokenwire-bench")?;
                let exited_ns = unix_ns();
                let text = std::fs::read_to_string(&json)
                    .with_context(|| format!("tokenwire-bench wrote no {}", json.display()))?;
                let v: Value = serde_json::from_str(&text)?;
                let mut reqs = Vec::new();
                requests_in(&v, &mut reqs);
                if reqs.is_empty() {
                    bail!("{}: no requests in it", json.display());
                }
                let mut last_end_ns = 0;
                for r in reqs {
                    last_end_ns = last_end_ns.max(account(&r, &made, &hangs, &failures));
                }
                // After its streams, the bench asks the raw proxy for the servers'
                // versions (GET /api/version, /tokenwire/model) for its JSON's metadata:
                // two requests more, which the proxy reports like any other.
                let answered = v["server"]["ollama_version"].is_string();
                let mut m = made.lock().unwrap_or_else(|e| e.into_inner());
                for _ in 0..2 {
                    m.push(Made {
                        label: Approach::Raw.label(),
                        start_ns: last_end_ns,
                        end_ns: exited_ns,
                        reached: answered,
                        window_ns: exited_ns.saturating_sub(last_end_ns) + 100_000_000,
                    });
                }
                round += 1;
                // A round that failed fast (a companion or the model down) is not retried
                // in a tight loop.
                std::thread::sleep(Duration::from_millis(300));
            }
            Ok(round)
        })
    };

    // Clients that vanish mid-stream: curl on the SSE relay, cut after 150 to 600 ms.
    let cutter = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
            let mut cuts = 0u64;
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let start_ns = unix_ns();
                let cut_ms = rng.random_range(150..600);
                let out = Command::new("curl")
                    .args([
                        "-sk",
                        "-N",
                        "--max-time",
                        &format!("{:.3}", cut_ms as f64 / 1e3),
                    ])
                    .args(["-H", "content-type: application/json", "-o", "/dev/null"])
                    .args(["-w", "%{http_code}"])
                    .args(["-d", r#"{"message":"tell me about the sea"}"#])
                    .arg(format!("https://localhost:{}/chat", Approach::Sse.port()))
                    .stderr(Stdio::null())
                    .output();
                let code = out.map(|o| String::from_utf8_lossy(&o.stdout).to_string());
                made.lock().unwrap_or_else(|e| e.into_inner()).push(Made {
                    label: Approach::Sse.label(),
                    start_ns,
                    end_ns: unix_ns(),
                    reached: code.is_ok_and(|c| c == "200"),
                    window_ns: WINDOW_NS,
                });
                cuts += 1;
                std::thread::sleep(Duration::from_millis(rng.random_range(500..1500)));
            }
            cuts
        })
    };

    // The faults.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut outages = Vec::<Outage>::new();
    let mut faults = BTreeMap::<String, u64>::new();
    let mut resets = Vec::<String>::new();
    while Instant::now() < until {
        let wait = Duration::from_millis(rng.random_range(3_000..7_000));
        let step = Instant::now() + wait.min(until.saturating_duration_since(Instant::now()));
        while Instant::now() < step {
            probe.settle();
            for s in servers.iter_mut() {
                s.settle();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if Instant::now() >= until {
            break;
        }
        let down = Duration::from_millis(rng.random_range(300..2_000));
        match rng.random_range(0..4) {
            0 | 1 => {
                // SIGTERM and kill -9 in turn: both are met whatever the seed.
                let signal = if outages.len().is_multiple_of(2) {
                    "TERM"
                } else {
                    "KILL"
                };
                let before = wire_packets();
                let from_ns = last_read_ns.load(Ordering::Relaxed);
                probe.stop(signal);
                std::thread::sleep(down);
                probe.start(ProbeLaunch::new)?;
                let after = wire_packets();
                let to_ns = unix_ns();
                if let (Some(b), Some(a)) = (before, after)
                    && a < b
                {
                    resets.push(format!("probe {signal}: wire packets {b} -> {a}"));
                }
                outages.push(Outage {
                    from_ns,
                    to_ns,
                    packets_during: after.unwrap_or(0) as i64 - before.unwrap_or(0) as i64,
                });
                *faults
                    .entry(format!("probe SIGTERM/kill -9: {signal}"))
                    .or_default() += 1;
            }
            2 => {
                let s = &mut servers[0];
                s.stop("KILL");
                std::thread::sleep(down);
                s.start(ServersLaunch::new)?;
                *faults.entry("model kill -9".into()).or_default() += 1;
            }
            _ => {
                let i = rng.random_range(1..servers.len());
                let s = &mut servers[i];
                s.stop("KILL");
                std::thread::sleep(down);
                s.start(ServersLaunch::new)?;
                *faults
                    .entry(format!("companion kill -9: {}", s.name))
                    .or_default() += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = bench
        .join()
        .map_err(|_| anyhow::anyhow!("the bench thread panicked"))??;
    let cuts = cutter
        .join()
        .map_err(|_| anyhow::anyhow!("the curl thread panicked"))?;
    // Requests whose companion died end when their connection has been quiet IDLE_SECS.
    let settle_until = Instant::now() + Duration::from_secs(IDLE_SECS + 8);
    while Instant::now() < settle_until {
        probe.settle();
        for s in servers.iter_mut() {
            s.settle();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    polling.store(false, Ordering::Relaxed);
    let _ = poller.join();

    // The checks.
    let mut problems = resets;
    println!(
        "\n| process | starts | open fds after start-up -> at the end | RSS MiB after start-up -> at the end |"
    );
    println!("|---|---|---|---|");
    problems.extend(probe.leak());
    for s in servers.iter() {
        problems.extend(s.leak());
    }
    for name in std::iter::once("probe".to_owned()).chain(servers.iter().map(|s| s.name.clone())) {
        let log = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
            problems.push(format!("{name} panicked: {line}"));
        }
    }
    problems.extend(
        hangs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned(),
    );
    let made = made.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let records: Vec<Value> = records
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let m = match_records(&made, &records, &outages);
    let dump: Vec<Value> = made
        .iter()
        .map(|m| {
            serde_json::json!({"approach": m.label, "start_unix_ns": m.start_ns,
                "end_unix_ns": m.end_ns, "reached": m.reached})
        })
        .collect();
    let _ = std::fs::write(dir.join("requests.json"), Value::Array(dump).to_string());
    let _ = std::fs::write(
        dir.join("records.json"),
        Value::Array(records.clone()).to_string(),
    );
    println!("\n| | count |\n|---|---|");
    println!("| benchmark rounds (7 approaches, 2 users, 2 prompts) | {rounds} |");
    println!("| requests made (bench and curl) | {} |", made.len());
    println!("| of which curl clients cut mid-stream | {cuts} |");
    for (kind, n) in failures.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("| bench requests that ended in `{kind}` | {n} |");
    }
    for (f, n) in &faults {
        println!("| faults: {f} | {n} |");
    }
    println!("| probe records read | {} |", records.len());
    println!("| requests with exactly one record | {} |", m.matched);
    println!(
        "| requests without one, while no probe ran (lost with the outage) | {} |",
        m.lost_in_outage
    );
    println!(
        "| requests without one that never reached a server (refused, TLS) | {} |",
        m.unreached
    );
    println!("| requests without one otherwise | {} |", m.missing.len());
    println!("| records without a request | {} |", m.orphans.len());
    let (ours, passive): (Vec<&Value>, Vec<&Value>) = records.iter().partition(|r| {
        r["approach"]
            .as_str()
            .is_some_and(|l| Approach::ALL.iter().any(|a| a.label() == l))
    });
    let outcomes = ours
        .iter()
        .fold(BTreeMap::<String, u64>::new(), |mut o, r| {
            *o.entry(r["outcome"].as_str().unwrap_or("(none yet)").to_owned())
                .or_default() += 1;
            o
        });
    for (o, n) in &outcomes {
        println!("| records with outcome `{o}` | {n} |");
    }
    println!(
        "| records read passively (the relays' own requests to the model) | {} |",
        passive.len()
    );
    // A request running when its probe stopped ends with that probe (SIGTERM: `unknown`,
    // kill -9: with its memory), after the last read of its records.
    let (cut, running): (Vec<&&Value>, Vec<&&Value>) = ours
        .iter()
        .filter(|r| r["final"] != Value::Bool(true))
        .partition(|r| {
            let start = r["start_unix_ns"].as_u64().unwrap_or(0);
            outages
                .iter()
                .any(|o| o.from_ns + POLL.as_nanos() as u64 >= start)
        });
    println!(
        "| records still running when their probe stopped | {} |",
        cut.len()
    );
    if !running.is_empty() {
        problems.push(format!(
            "{} records never ended (their connection quiet for {IDLE_SECS} s and more), e.g. {}",
            running.len(),
            running[0]
        ));
    }
    for o in &outages {
        println!(
            "| probe outage of {:.1} s: wire packets counted meanwhile | {} |",
            (o.to_ns.saturating_sub(o.from_ns)) as f64 / 1e9,
            o.packets_during
        );
    }
    if !m.missing.is_empty() {
        problems.push(format!(
            "{} requests reached a server while a probe ran and have no record, e.g. {:?}",
            m.missing.len(),
            m.missing.first()
        ));
    }
    if !m.orphans.is_empty() {
        problems.push(format!(
            "{} records match no request, e.g. {}",
            m.orphans.len(),
            m.orphans[0]
        ));
    }
    if outages.is_empty() {
        problems.push("no probe restart happened: run longer".into());
    }
    if problems.is_empty() {
        println!("\nchaos: every check passed");
        Ok(())
    } else {
        for p in &problems {
            eprintln!("chaos: {p}");
        }
        bail!(
            "{} checks failed (above); logs in {}",
            problems.len(),
            dir.display()
        )
    }
}

/// Every request record in a bench JSON document, wherever it sits.
fn requests_in(v: &Value, out: &mut Vec<Value>) {
    match v {
        Value::Object(o) if o.contains_key("start_unix_ns") && o.contains_key("tokens_counted") => {
            out.push(v.clone())
        }
        Value::Object(o) => o.values().for_each(|x| requests_in(x, out)),
        Value::Array(a) => a.iter().for_each(|x| requests_in(x, out)),
        _ => {}
    }
}

/// A bench request's line into the tallies: what it was, and whether it hung. Returns
/// when it ended, Unix ns.
fn account(
    r: &Value,
    made: &Mutex<Vec<Made>>,
    hangs: &Mutex<Vec<String>>,
    failures: &Mutex<BTreeMap<String, u64>>,
) -> u64 {
    let Some(a) = r["approach"]
        .as_str()
        .and_then(|n| Approach::ALL.into_iter().find(|a| a.as_str() == n))
    else {
        return 0;
    };
    let failure = r["failure"].as_str().map(str::to_owned);
    if failure.as_deref() == Some("not-run") {
        return 0;
    }
    let start_ns = r["start_unix_ns"].as_u64().unwrap_or(0);
    let total = r["total_s"].as_f64().unwrap_or(30.0);
    if let Some(f) = &failure {
        *failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(f.clone())
            .or_default() += 1;
        if f == "timeout" || r["error"].as_str().is_none_or(str::is_empty) {
            hangs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!(
                    "a {a} request {}: {}",
                    if f == "timeout" {
                        "hung"
                    } else {
                        "failed without saying why"
                    },
                    r["error"]
                ));
        }
    } else if r["tokens_counted"].as_u64().unwrap_or(0) == 0 {
        hangs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("a {a} request ended fine with no token"));
    }
    let reached = !matches!(
        failure.as_deref(),
        Some("connect-timeout" | "refused" | "connect" | "tls")
    );
    let end_ns = start_ns + (total * 1e9) as u64;
    made.lock().unwrap_or_else(|e| e.into_inner()).push(Made {
        label: a.label(),
        start_ns,
        end_ns,
        reached,
        window_ns: WINDOW_NS,
    });
    end_ns
}

#[derive(Debug, Default)]
struct Matched {
    matched: u64,
    lost_in_outage: u64,
    unreached: u64,
    missing: Vec<String>,
    orphans: Vec<String>,
}

/// Pairs requests with records of the same approach: each record whose start lies in a
/// request's window (from its due time, less a little clock slack, to when a server must
/// have seen it) is a candidate, and the pairs closest in time are taken first, each
/// request and record once. Closest first keeps a request whose record was lost (an
/// outage) from taking the next one's.
fn match_records(made: &[Made], records: &[Value], outages: &[Outage]) -> Matched {
    const SLACK: u64 = 50_000_000;
    let recs: Vec<(&str, u64, String)> = records
        .iter()
        .filter_map(|r| {
            let label = r["approach"].as_str()?;
            let a = Approach::ALL.into_iter().find(|a| a.label() == label)?;
            Some((
                a.label(),
                r["start_unix_ns"].as_u64().unwrap_or(0),
                r["id"].as_str().unwrap_or("").to_owned(),
            ))
        })
        .collect();
    let mut pairs = Vec::new();
    for (i, m) in made.iter().enumerate() {
        for (j, (label, start, _)) in recs.iter().enumerate() {
            if *label == m.label
                && *start + SLACK >= m.start_ns
                && *start <= m.start_ns + m.window_ns
            {
                pairs.push((start.abs_diff(m.start_ns), i, j));
            }
        }
    }
    pairs.sort_unstable();
    let (mut made_used, mut rec_used) = (vec![false; made.len()], vec![false; recs.len()]);
    let mut out = Matched::default();
    for (_, i, j) in pairs {
        if !made_used[i] && !rec_used[j] {
            made_used[i] = true;
            rec_used[j] = true;
            out.matched += 1;
        }
    }
    for (m, used) in made.iter().zip(&made_used) {
        if *used {
            continue;
        }
        if !m.reached {
            out.unreached += 1;
        } else if outages
            .iter()
            .any(|o| m.start_ns <= o.to_ns && m.end_ns + 1_000_000_000 >= o.from_ns)
        {
            out.lost_in_outage += 1;
        } else {
            out.missing.push(format!(
                "{} at {} ({} ms)",
                m.label,
                m.start_ns,
                (m.end_ns - m.start_ns) / 1_000_000
            ));
        }
    }
    for ((_, start, id), used) in recs.iter().zip(&rec_used) {
        if !used {
            out.orphans.push(format!("{id} at {start}"));
        }
    }
    out
}
