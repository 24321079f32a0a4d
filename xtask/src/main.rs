//! `cargo xtask`: set-up, certificates, the demo and the tests, so a fresh machine needs
//! two commands (README). Every step is idempotent and says what it does.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;
use tokenwire_probe_common::approach::Approach;

/// Project tasks: set-up, certificates, demo, tests.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (idempotent): Debian packages when root, rust-src
    /// for the nightly toolchain, bpf-linker, and the TLS certificate in certs/.
    Setup,
    /// Build the probe's kernel side (probe-ebpf, nightly, bpfel-unknown-none) into
    /// target/bpf; the probe embeds it. Installs the toolchain pieces first if missing.
    BuildEbpf,
    /// Create certs/cert.pem and certs/key.pem if missing or expired; print the SHA-256.
    Certs {
        /// Replace a still valid pair.
        #[arg(long)]
        force: bool,
    },
    /// Set up, start the probe (eBPF, else libpcap, else none, saying why), the embedded
    /// model and the three companions, run the benchmark (all three approaches, reused
    /// connections, the reference's ten prompts), print its summary and wire tables, keep
    /// the probe's exporter up for a while, then stop everything.
    Demo {
        /// Prompts per approach (of the reference's ten).
        #[arg(long, default_value_t = 10)]
        prompts: usize,
        /// Mean answer length in tokens (the model's own default is 480; shorter answers
        /// keep the demo near two and a half minutes at the reference model's pace).
        #[arg(long, default_value_t = 120)]
        mean_tokens: u32,
        /// Model speed factor (1 = the reference model's pace, ~29 tokens/s).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Seconds the probe's exporter stays up after the benchmark (Ctrl-C ends it).
        #[arg(long, default_value_t = 60)]
        linger: u64,
    },
    /// Set up, then check formatting and lints and run every test.
    Test,
    /// Set up, then run the benchmark matrix through the link emulator (as root): every
    /// profile x direction x mode x approach with the probe's wire accounting, into
    /// results/ (RESULTS.md, results.json, SVG charts). Quick by default (under ten
    /// minutes); --full is the reference's whole run (about an hour and a half).
    Bench {
        /// The reference's ten prompts at full length.
        #[arg(long)]
        full: bool,
        /// Report directory.
        #[arg(long, default_value = "results")]
        out: String,
    },
    /// Measure the probe's overhead on loopback (as root): iperf3 TCP throughput and UDP
    /// packet rate with nothing attached, with the probe (eBPF, and eBPF with the kernel's
    /// BPF statistics on for its ns per packet), with the pcap backend and with tcpdump
    /// -w /dev/null, interleaved over several rounds; and whether it counted every
    /// datagram. Prints a Markdown table for docs/performance.md.
    BenchProbe {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Rounds of (none, probe, tcpdump).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Instead: the kernel path alone, without traffic (`tokenwire-probe kernel-bench`:
        /// BPF_PROG_TEST_RUN over a fixed set of packets, minus an empty program). Prints
        /// a Markdown table, and the JSON with --json.
        #[arg(long)]
        test_run: bool,
        /// With --test-run: print the JSON ({"packets":[{"name","ns",..}],"empty_ns",..}).
        #[arg(long, requires = "test_run")]
        json: bool,
        /// With --test-run: time this other kernel object too (an older build of
        /// probe-ebpf), one round of each in turn, and print both side by side with their
        /// difference.
        #[arg(long, requires = "test_run", conflicts_with = "json")]
        compare_object: Option<std::path::PathBuf>,
        /// Instead: the libpcap backend's knee, stepping iperf3's offered rate of 64-byte
        /// UDP datagrams (packets per second, comma-separated) and reporting drops and
        /// datagrams counted at each step.
        #[arg(long, value_delimiter = ',', conflicts_with = "test_run")]
        pcap_knee: Option<Vec<u64>>,
    },
    /// A fleet on this machine (as root): N network namespaces as nodes, each running the
    /// companions on the embedded model, a probe and a Prometheus that scrapes it (the
    /// node's name as an external label), and a central Prometheus federating them; bench
    /// traffic on every node; then bytes and packets per token by node and approach from
    /// the central Prometheus, checked against each node's own probe. Torn down at the end.
    Fleet {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
    },
    /// The static probe for containers (what deploy/Containerfile runs): the eBPF object,
    /// then tokenwire-probe for x86_64-unknown-linux-musl without libpcap (eBPF only),
    /// statically linked with the object embedded. Prints where it is.
    StaticProbe,
    /// Fuzz every parser that takes outside input (cargo-fuzz, libFuzzer, nightly): the
    /// targets of fuzz/ in turn, sharing the time; prints a table for docs/reliability.md.
    /// A crash keeps its input in fuzz/artifacts/ and fails the task.
    Fuzz {
        /// Minutes for all targets together.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// The demo's workload for N minutes with the probe's memory and descriptors sampled
    /// every 10 s (as root): a table for docs/reliability.md, and an error if either grew
    /// by more than 10% from the second minute to the last.
    Soak {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
    },
    /// The demo's workload under faults for N minutes (as root): the model, each companion
    /// and the probe (pinned, so its successor adopts the classifier) killed and restarted
    /// at random, SSE clients cut mid-stream. Fails unless every request got its answer or
    /// a clear error, every request a server saw has one record at the probe (or ran
    /// during a probe outage, whose packets are still counted), no counter went down, no
    /// process panicked or grew. Prints a table for docs/reliability.md.
    Chaos {
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// Seed of the faults' times and kinds.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measure how fast a release-build probe takes spans and what they cost it in memory
    /// (as root): N starts naming one real connection (all but the per-connection limit
    /// refused), then N/2 start/end pairs on it. Prints a Markdown table for
    /// docs/performance.md.
    BenchSpans {
        /// Spans per workload.
        #[arg(long, default_value_t = 100_000)]
        spans: usize,
        /// The probe's backend.
        #[arg(long, default_value = "ebpf")]
        backend: String,
    },
    /// How many concurrent streams each approach holds (release builds): N closed-loop
    /// users per step at the reference's pace, ramped, holding for a minute; per step the
    /// failures by reason, P50/P99 TTFT, P99 gap, and the CPU and memory of the model, the
    /// relay and the bench, each its own process. Prints a Markdown table with the knee
    /// of each approach for docs/performance.md. Takes about 2 minutes per step.
    BenchCapacity {
        /// Concurrent users per step; an approach stops at its knee.
        #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,5000")]
        steps: Vec<usize>,
        /// Seconds every user keeps streaming (whole answers of ~17 s each).
        #[arg(long, default_value_t = 60)]
        hold_secs: u64,
        /// Seconds over which the users start.
        #[arg(long, default_value_t = 10)]
        ramp_secs: u64,
        /// Approaches, in this order (the registry's names: docs/architecture.md).
        #[arg(long, value_delimiter = ',', default_values_t = Approach::ALL)]
        approaches: Vec<Approach>,
        /// Run without the probe beside the servers (by default a release probe, eBPF on
        /// lo, takes the relay's spans and its figures get a table of their own).
        #[arg(long)]
        no_probe: bool,
    },
}

fn main() {
    // Errors are for people: one line with its causes, no backtrace.
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root).with_context(|| format!("cd {}", root.display()))?;
    match cli.command {
        Task::Setup => setup::setup(),
        Task::BuildEbpf => {
            setup::rust_src()?;
            setup::bpf_linker()?;
            setup::build_ebpf()
        }
        Task::Certs { force } => certs(force),
        Task::Demo {
            prompts,
            mean_tokens,
            speed,
            linger,
        } => {
            setup::setup()?;
            demo::demo(prompts, mean_tokens, speed, linger)
        }
        Task::Test => {
            setup::setup()?;
            test::test()
        }
        Task::Bench { full, out } => {
            setup::setup()?;
            let mut cmd = Command::new(bin("tokenwire-bench"));
            cmd.args(["matrix", "--out", &out]);
            if full {
                cmd.arg("--full");
            }
            run(&mut cmd)
        }
        Task::BenchProbe {
            seconds,
            rounds,
            test_run,
            json,
            compare_object,
            pcap_knee,
        } => {
            setup::setup()?;
            if let Some(other) = compare_object {
                bench_probe::test_run_against(rounds, &other)
            } else if test_run {
                bench_probe::test_run(rounds, json)
            } else if let Some(rates) = pcap_knee {
                bench_probe::pcap_knee(seconds, &rates)
            } else {
                bench_probe::run(seconds, rounds)
            }
        }
        Task::StaticProbe => {
            // musl-gcc: ring's C part (the exporter's TLS, --web-config) for the musl target.
            setup::apt_install(&["musl-tools"])?;
            setup::rust_src()?;
            setup::bpf_linker()?;
            setup::rust_targets(&[setup::STATIC_TARGET])?;
            setup::build_ebpf()?;
            setup::static_probe()
        }
        Task::Fleet { nodes } => {
            setup::setup()?;
            fleet::run(nodes)
        }
        Task::Chaos { minutes, seed } => {
            setup::setup()?;
            chaos::run(minutes, seed)
        }
        Task::Soak { minutes } => {
            setup::setup()?;
            soak::run(minutes)
        }
        Task::Fuzz { minutes } => {
            setup::rust_src()?;
            fuzz::run(minutes)
        }
        Task::BenchSpans { spans, backend } => {
            setup::setup()?;
            bench_spans::run(spans, &backend)
        }
        Task::BenchCapacity {
            steps,
            hold_secs,
            ramp_secs,
            approaches,
            no_probe,
        } => {
            setup::setup()?;
            bench_capacity::run(&steps, hold_secs, ramp_secs, &approaches, !no_probe)
        }
    }
}

mod bench_capacity;
mod bench_probe;
mod bench_spans;
mod chaos;
mod demo;
mod fleet;
mod fuzz;
mod observe;
mod probe_process;
mod setup;
mod soak;
mod test;

fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

pub(crate) fn cargo_cmd() -> Command {
    cargo()
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {}", describe(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", describe(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", describe(cmd));
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn build_binaries() -> Result<()> {
    run(cargo().args([
        "build",
        "--quiet",
        "-p",
        "tokenwire-servers",
        "-p",
        "tokenwire-bench",
        "-p",
        "tokenwire-probe",
    ]))
}

/// A debug build's binary, in `CARGO_TARGET_DIR` (default `target`).
pub(crate) fn bin(name: &str) -> PathBuf {
    target_dir().join("debug").join(name)
}

/// A release build's binary, in `CARGO_TARGET_DIR` (default `target`).
pub(crate) fn release_bin(name: &str) -> PathBuf {
    target_dir().join("release").join(name)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from)
}

fn certs(force: bool) -> Result<()> {
    build_binaries()?;
    let mut cmd = Command::new(bin("tokenwire-servers"));
    cmd.args(["certs", "--dir", "certs"]);
    if force {
        cmd.arg("--force");
    }
    run(&mut cmd)
}
