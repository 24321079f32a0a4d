//! `cargo xtask bench-probe`: the probe's overhead on loopback, measured side by side in
//! one session (these machines are shared and noisy, so modes are interleaved per round
//! and compared as ratios of medians).

use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PORT: &str = "5299";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Bare,
    Probe,
    /// The probe with the kernel's BPF run-time statistics on: its ns per packet. The
    /// statistics cost every program run two clock reads, so throughput is judged from
    /// `Probe`, as users run it.
    ProbeStats,
    Pcap,
    Tcpdump,
}

const MODES: [Mode; 5] = [
    Mode::Bare,
    Mode::Probe,
    Mode::ProbeStats,
    Mode::Pcap,
    Mode::Tcpdump,
];

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Bare => "nothing attached",
            Mode::Probe => "tokenwire-probe (eBPF)",
            Mode::ProbeStats => "tokenwire-probe (eBPF) --bpf-stats",
            Mode::Pcap => "tokenwire-probe --backend pcap",
            Mode::Tcpdump => "tcpdump -w /dev/null",
        }
    }
}

#[derive(Default, Debug)]
struct Sample {
    tcp_gbps: f64,
    udp_pps: f64,
    udp_sent: u64,
    /// Datagrams to the iperf3 port the probe counted (probe mode).
    probe_udp: Option<u64>,
    ns_per_packet: Option<f64>,
    /// Kernel drops the capture reported (pcap, tcpdump).
    drops: Option<u64>,
}

/// 64-byte UDP datagrams at `bits` of payload per second ("0": as fast as they go) for
/// `secs`: what iperf3 sent, into `s`; then a moment for the capture to catch up.
fn udp(bits: &str, secs: &str, s: &mut Sample) -> Result<()> {
    let udp = iperf(&["-u", "-b", bits, "-l", "64", "-t", secs])?;
    let sum = &udp["end"]["sum"];
    s.udp_sent = sum["packets"].as_u64().unwrap_or(0);
    s.udp_pps = s.udp_sent as f64 / sum["seconds"].as_f64().unwrap_or(1.0).max(1e-9);
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// iperf3 (installed if missing) serving on PORT, and the probe built.
fn iperf_server() -> Result<Child> {
    crate::setup::apt_install(&["iperf3"])?;
    crate::run(crate::cargo_cmd().args(["build", "--quiet", "-p", "tokenwire-probe"]))?;
    let server = Command::new("iperf3")
        .args(["-s", "-p", PORT])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 -s")?;
    std::thread::sleep(Duration::from_millis(300));
    Ok(server)
}

fn iperf(args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new("iperf3")
        .args(["-c", "127.0.0.1", "-p", PORT, "-J"])
        .args(args)
        .output()
        .context("running iperf3")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing iperf3 -J output")?;
    if let Some(e) = v.get("error") {
        bail!("iperf3: {e}");
    }
    Ok(v)
}

/// A started capture and the thread collecting its stderr.
struct Attached {
    child: Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts what a mode attaches; returns the process to stop afterwards.
fn attach(mode: Mode) -> Result<Option<Attached>> {
    let mut cmd = match mode {
        Mode::Bare => return Ok(None),
        Mode::Probe | Mode::ProbeStats => {
            let mut c = Command::new(crate::bin("tokenwire-probe"));
            c.args([
                "run",
                "--no-listen",
                "--no-spans",
                "--iface",
                "lo",
                "--json",
                "--interval",
                "3600",
            ]);
            if mode == Mode::ProbeStats {
                c.arg("--bpf-stats");
            }
            c
        }
        Mode::Pcap => {
            let mut c = Command::new(crate::bin("tokenwire-probe"));
            c.args([
                "run",
                "--no-listen",
                "--no-spans",
                "--backend",
                "pcap",
                "--iface",
                "lo",
                "--json",
                "--interval",
                "3600",
            ]);
            c
        }
        Mode::Tcpdump => {
            let mut c = Command::new("tcpdump");
            c.args([
                "-i",
                "lo",
                "-n",
                "-w",
                "/dev/null",
                "-B",
                "65536",
                "port",
                PORT,
            ]);
            c
        }
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the capture")?;
    let mut err = BufReader::new(child.stderr.take().context("stderr")?);
    let mut line = String::new();
    err.read_line(&mut line)?;
    if !(line.contains("backend ") || line.contains("listening on")) {
        bail!("{mode:?} did not start: {line}");
    }
    // Keep reading stderr so the process never blocks on it; give it back at stop time.
    let stderr = std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = err.read_to_string(&mut rest);
        rest
    });
    Ok(Some(Attached { child, stderr }))
}

fn stop(attached: Option<Attached>, sample: &mut Sample) -> Result<()> {
    let Some(Attached { mut child, stderr }) = attached else {
        return Ok(());
    };
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()?;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    child.wait()?;
    let err = stderr.join().unwrap_or_default();
    // tcpdump: "N packets dropped by kernel" on exit.
    if let Some(n) = err
        .lines()
        .find_map(|l| l.trim().strip_suffix(" packets dropped by kernel"))
    {
        sample.drops = n.trim().parse().ok();
    }
    for line in out.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["final"] != true {
            continue;
        }
        if let Some(h) = v.get("health") {
            let (n, t) = (
                h["bpf_run_count"].as_f64().unwrap_or(0.0),
                h["bpf_run_time_ns"].as_f64().unwrap_or(0.0),
            );
            sample.ns_per_packet = (n > 0.0).then(|| t / n);
            sample.drops = h["kernel_drops"].as_u64();
        } else if v["proto"] == 17
            && v["server"]
                .as_str()
                .is_some_and(|s| s.ends_with(&format!(":{PORT}")))
            && v["direction"] == "to_server"
        {
            *sample.probe_udp.get_or_insert(0) += v["packets"].as_u64().unwrap_or(0);
        }
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

pub fn run(seconds: u32, rounds: u32) -> Result<()> {
    let mut server = iperf_server()?;
    let secs = seconds.to_string();
    let mut samples: Vec<(Mode, Sample)> = Vec::new();
    let result = (|| -> Result<()> {
        for round in 1..=rounds {
            for mode in MODES {
                eprintln!("xtask: round {round}/{rounds}: {}", mode.name());
                let child = attach(mode)?;
                let mut s = Sample::default();
                let tcp = iperf(&["-t", &secs])?;
                s.tcp_gbps = tcp["end"]["sum_received"]["bits_per_second"]
                    .as_f64()
                    .unwrap_or(0.0)
                    / 1e9;
                udp("0", &secs, &mut s)?;
                stop(child, &mut s)?;
                samples.push((mode, s));
            }
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result?;

    let of = |m: Mode| samples.iter().filter(move |(x, _)| *x == m).map(|(_, s)| s);
    let bare_tcp = median(of(Mode::Bare).map(|s| s.tcp_gbps).collect());
    let bare_udp = median(of(Mode::Bare).map(|s| s.udp_pps).collect());
    println!(
        "| mode | TCP Gbit/s (median) | vs bare | UDP 64 B pkt/s (median) | vs bare | kernel ns/packet | datagrams counted / sent | kernel drops |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for mode in MODES {
        let tcp = median(of(mode).map(|s| s.tcp_gbps).collect());
        let udp = median(of(mode).map(|s| s.udp_pps).collect());
        let ns: Vec<f64> = of(mode).filter_map(|s| s.ns_per_packet).collect();
        let counted: Vec<String> = of(mode)
            .filter_map(|s| s.probe_udp.map(|c| format!("{c}/{}", s.udp_sent)))
            .collect();
        let drops: Vec<String> = of(mode)
            .filter_map(|s| s.drops.map(|d| d.to_string()))
            .collect();
        println!(
            "| {} | {tcp:.2} | {:.3} | {udp:.0} | {:.3} | {} | {} | {} |",
            mode.name(),
            tcp / bare_tcp.max(1e-9),
            udp / bare_udp.max(1e-9),
            if ns.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", median(ns))
            },
            if counted.is_empty() {
                "-".to_owned()
            } else {
                counted.join(", ")
            },
            if drops.is_empty() {
                "-".to_owned()
            } else {
                drops.join(", ")
            },
        );
    }
    Ok(())
}

/// One `tokenwire-probe kernel-bench --json` run (of `object`, else the embedded one).
fn kernel_bench(
    rounds: u32,
    object: Option<&std::path::Path>,
) -> Result<(String, serde_json::Value)> {
    let mut cmd = Command::new(crate::bin("tokenwire-probe"));
    cmd.args([
        "kernel-bench",
        "--json",
        "--rounds",
        &rounds.max(1).to_string(),
    ]);
    if let Some(o) = object {
        cmd.arg("--object").arg(o);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("running tokenwire-probe kernel-bench")?;
    if !out.status.success() {
        bail!("tokenwire-probe kernel-bench failed");
    }
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let v = serde_json::from_str(&text).context("parsing kernel-bench's JSON")?;
    Ok((text, v))
}

/// `--test-run --compare-object`: this build's kernel path and another object's, one round
/// of each in turn; medians per packet, side by side.
pub fn test_run_against(rounds: u32, other: &std::path::Path) -> Result<()> {
    crate::run(crate::cargo_cmd().args(["build", "--quiet", "-p", "tokenwire-probe"]))?;
    let mut ours: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut theirs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut order = Vec::new();
    for _ in 0..rounds.max(1) {
        for (object, into) in [(None, &mut ours), (Some(other), &mut theirs)] {
            let (_, v) = kernel_bench(1, object)?;
            for p in v["packets"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap_or("?").to_owned();
                if !order.contains(&name) {
                    order.push(name.clone());
                }
                into.entry(name)
                    .or_default()
                    .push(p["minus_empty_ns"].as_f64().unwrap_or(f64::NAN));
            }
        }
    }
    println!(
        "BPF_PROG_TEST_RUN, ns per run minus the empty program, median of {} alternating rounds; other object: {}\n",
        rounds.max(1),
        other.display()
    );
    println!("| packet | this build | other object | difference |");
    println!("|---|---|---|---|");
    let median = |v: Option<&Vec<f64>>| {
        v.map(|v| {
            let mut v = v.clone();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        })
    };
    for name in &order {
        let (a, b) = (median(ours.get(name)), median(theirs.get(name)));
        let show = |x: Option<f64>| x.map_or("-".to_owned(), |x| format!("{x:.1}"));
        let diff = match (a, b) {
            (Some(a), Some(b)) => format!("{:+.1}", a - b),
            _ => "-".to_owned(),
        };
        println!("| {name} | {} | {} | {diff} |", show(a), show(b));
    }
    Ok(())
}

/// `--test-run`: the kernel path without traffic, from `tokenwire-probe kernel-bench`.
pub fn test_run(rounds: u32, json: bool) -> Result<()> {
    crate::run(crate::cargo_cmd().args(["build", "--quiet", "-p", "tokenwire-probe"]))?;
    let (text, v) = kernel_bench(rounds, None)?;
    if json {
        println!("{text}");
        return Ok(());
    }
    println!(
        "BPF_PROG_TEST_RUN, median of {} rounds of {} runs (first packet: {} single runs per round)\n",
        v["rounds"], v["repeat"], v["first_runs"]
    );
    println!("| packet | ns per run | minus the empty program |");
    println!("|---|---|---|");
    for p in v["packets"].as_array().into_iter().flatten() {
        println!(
            "| {} | {:.1} | {:.1} |",
            p["name"].as_str().unwrap_or("?"),
            p["ns"].as_f64().unwrap_or(0.0),
            p["minus_empty_ns"].as_f64().unwrap_or(0.0)
        );
    }
    println!(
        "| empty program ({} runs) | {:.1} | |\n| empty program (single run) | {:.1} | |",
        v["repeat"],
        v["empty_ns"].as_f64().unwrap_or(0.0),
        v["empty_single_ns"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}

/// `--pcap-knee`: the libpcap backend under 64-byte UDP datagrams offered at each rate:
/// how many it sent, how many the probe counted, and what the kernel dropped before
/// libpcap read them. The knee is the highest rate with nothing dropped or missed.
pub fn pcap_knee(seconds: u32, rates: &[u64]) -> Result<()> {
    let mut server = iperf_server()?;
    let secs = seconds.to_string();
    let mut rows = Vec::new();
    let result = (|| -> Result<()> {
        for &rate in rates {
            eprintln!("xtask: pcap backend at {rate} datagrams/s offered");
            let child = attach(Mode::Pcap)?;
            let mut s = Sample::default();
            // iperf3's -b counts UDP payload bits.
            let bits = (rate * 64 * 8).to_string();
            udp(&bits, &secs, &mut s)?;
            stop(child, &mut s)?;
            rows.push((rate, s));
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result?;
    println!("| offered pkt/s | sent pkt/s | datagrams counted / sent | kernel drops | clean |");
    println!("|---|---|---|---|---|");
    let mut knee = None;
    for (rate, s) in &rows {
        let counted = s.probe_udp.unwrap_or(0);
        // The probe also counts iperf3's set-up datagram, which iperf3's own count leaves
        // out: one more than sent is every datagram.
        let clean = counted >= s.udp_sent && s.drops.unwrap_or(0) == 0;
        if clean {
            knee = Some(knee.map_or(s.udp_pps, |k: f64| k.max(s.udp_pps)));
        }
        println!(
            "| {rate} | {:.0} | {counted}/{} | {} | {} |",
            s.udp_pps,
            s.udp_sent,
            s.drops.map_or("-".to_owned(), |d| d.to_string()),
            if clean { "yes" } else { "no" }
        );
    }
    let all_clean = rows
        .iter()
        .all(|(_, s)| s.probe_udp.unwrap_or(0) >= s.udp_sent && s.drops.unwrap_or(0) == 0);
    match knee {
        Some(k) if all_clean => {
            // Did the sender get the highest rate it was asked for?
            let saturated = rows
                .last()
                .is_some_and(|(rate, s)| s.udp_pps < 0.9 * *rate as f64);
            println!(
                "\nno drops at any rate offered: the highest rate sent was {k:.0} datagrams/s{}",
                if saturated {
                    ", where the sender, sharing the cores with the capture, could go no faster"
                } else {
                    "; offer higher rates to find the knee"
                }
            )
        }
        Some(k) => {
            println!("\nknee: {k:.0} datagrams/s, the highest rate counted with nothing dropped")
        }
        None => println!("\nknee: below the lowest rate offered"),
    }
    Ok(())
}
