//! `cargo xtask`: set-up, certificates, the demo and the tests, so a fresh machine needs
//! two commands (README). Every step is idempotent and says what it does.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        /// Approaches, in this order.
        #[arg(long, value_delimiter = ',', default_value = "raw,sse,wt")]
        approaches: Vec<String>,
        /// Run without the probe beside the servers (by default a release probe, eBPF on
        /// lo, takes the relay's spans and its figures get a table of their own).
        #[arg(long)]
        no_probe: bool,
    },
}

/// Debian packages the project needs: libpcap for the probe's pcap backend, tcpdump as
/// the ground truth of byte counts, prometheus for promtool and the real server the
/// dashboard test queries, python3 for the span-access test's unprivileged sender,
/// chromium for `tokenwire-bench browser` and its test.
const APT_PACKAGES: [&str; 8] = [
    "libpcap-dev",
    "tcpdump",
    "iproute2",
    "prometheus",
    "python3",
    "python3-venv",
    "curl",
    "chromium",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The probe's pcap fallback must keep building for macOS: `test` checks and lints it for
/// these targets (the probe only: the servers and bench need the macOS SDK for ring).
const MACOS_TARGETS: [&str; 2] = ["x86_64-apple-darwin", "aarch64-apple-darwin"];

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
        Task::Setup => setup(),
        Task::BuildEbpf => {
            rust_src()?;
            bpf_linker()?;
            build_ebpf()
        }
        Task::Certs { force } => certs(force),
        Task::Demo {
            prompts,
            mean_tokens,
            speed,
            linger,
        } => {
            setup()?;
            demo(prompts, mean_tokens, speed, linger)
        }
        Task::Test => {
            setup()?;
            test()
        }
        Task::Bench { full, out } => {
            setup()?;
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
            setup()?;
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
            rust_src()?;
            bpf_linker()?;
            rust_targets(&[STATIC_TARGET])?;
            build_ebpf()?;
            static_probe()
        }
        Task::Fleet { nodes } => {
            setup()?;
            fleet::run(nodes)
        }
        Task::Soak { minutes } => {
            setup()?;
            soak::run(minutes)
        }
        Task::Fuzz { minutes } => {
            rust_src()?;
            fuzz::run(minutes)
        }
        Task::BenchSpans { spans, backend } => {
            setup()?;
            bench_spans::run(spans, &backend)
        }
        Task::BenchCapacity {
            steps,
            hold_secs,
            ramp_secs,
            approaches,
            no_probe,
        } => {
            setup()?;
            bench_capacity::run(&steps, hold_secs, ramp_secs, &approaches, !no_probe)
        }
    }
}

mod bench_capacity;
mod bench_probe;
mod bench_spans;
mod fleet;
mod fuzz;
mod observe;
mod probe_process;
mod soak;

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

fn setup() -> Result<()> {
    apt_install(&APT_PACKAGES)?;
    rust_src()?;
    rust_targets(&MACOS_TARGETS)?;
    bpf_linker()?;
    deploy_tools()?;
    build_ebpf()?;
    certs(false)
}

/// The Python tools the tests use (PyPI), in a venv of their own: the offline validator of
/// deploy/'s Kubernetes manifests, and the real LLM clients the passive-accounting test
/// streams with (probe/tests/passive.rs).
const PYTHON_TOOLS: [&str; 4] = [
    "kubernetes-validate==1.37.0",
    "ollama==0.6.3",
    "openai==3.63.0",
    "httpx==0.29.0",
];

fn deploy_tools() -> Result<()> {
    let venv = workspace_root().join("target/tools-venv");
    let python = venv.join("bin/python");
    let have = Command::new(&python)
        .args(["-c", "import kubernetes_validate, ollama, openai, httpx"])
        .output();
    if have.is_ok_and(|o| o.status.success()) {
        eprintln!("xtask: python tools present ({})", PYTHON_TOOLS.join(", "));
        return Ok(());
    }
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet"])
        .args(PYTHON_TOOLS))
}

/// The kernel object, where probe/build.rs looks for it.
fn build_ebpf() -> Result<()> {
    let target_dir = workspace_root().join("target/bpf");
    run(Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--quiet",
            "--release",
            "--target",
            "bpfel-unknown-none",
        ])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(&target_dir)
        .current_dir(workspace_root().join("probe-ebpf"))
        // The workspace's stable settings must not leak into the nightly build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO")
        .env_remove("RUSTUP_TOOLCHAIN"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    if !Path::new("/usr/bin/dpkg-query").exists() {
        eprintln!(
            "xtask: not a Debian system; install by hand: {}",
            packages.join(" ")
        );
        return Ok(());
    }
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages present: {}", packages.join(" "));
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `sudo apt-get install -y {}`",
            missing.join(" "),
            missing.join(" ")
        );
    }
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn rust_src() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output();
    match installed {
        Ok(o)
            if o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with("rust-src")) =>
        {
            eprintln!("xtask: nightly rust-src present");
            Ok(())
        }
        Ok(o) if o.status.success() => run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ])),
        _ => bail!(
            "no nightly toolchain (the eBPF crate needs it): `rustup toolchain install nightly --component rust-src`"
        ),
    }
}

/// The static probe's target.
const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// tokenwire-probe built static for `STATIC_TARGET`, eBPF only; checks it is static.
fn static_probe() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--target",
        STATIC_TARGET,
        "-p",
        "tokenwire-probe",
        "--no-default-features",
    ]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let path = target
        .join(STATIC_TARGET)
        .join("release")
        .join("tokenwire-probe");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    // A dynamically linked ELF names its interpreter (ld.so) in a PT_INTERP segment.
    if bytes.windows(b"ld-linux".len()).any(|w| w == b"ld-linux") {
        bail!("{} is not static: it names ld-linux", path.display());
    }
    println!(
        "{} ({:.1} MiB, static, eBPF object embedded, no libpcap)",
        path.display(),
        bytes.len() as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// The standard library for `targets` on the stable toolchain (rustup), for cross-checking.
fn rust_targets(targets: &[&str]) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    let have = String::from_utf8_lossy(&installed.stdout).into_owned();
    let missing: Vec<&str> = targets
        .iter()
        .copied()
        .filter(|t| !have.lines().any(|l| l.trim() == *t))
        .collect();
    if missing.is_empty() {
        eprintln!("xtask: rustup targets present: {}", targets.join(" "));
        return Ok(());
    }
    run(Command::new("rustup")
        .args(["target", "add"])
        .args(&missing))
}

/// `cargo clippy -D warnings` of the probe (and probe-common) for each macOS target: the
/// libpcap fallback and capture files, no aya, no Linux-only item. Clippy runs the whole of
/// `cargo check` first (type and borrow checking of every item), so a separate check pass
/// would only compile the dependencies a second time.
fn check_macos() -> Result<()> {
    for target in MACOS_TARGETS {
        run(cargo()
            .args(["clippy", "--quiet", "--target", target])
            .args(["-p", "tokenwire-probe", "-p", "tokenwire-probe-common"])
            .args(["--", "-D", "warnings"]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly toolchain's own libLLVM (Debian's LLVM is older
/// than rustc's), as ../shared/ebpf-toolchain.md describes.
fn bpf_linker() -> Result<()> {
    let have = Command::new("bpf-linker").arg("--version").output();
    if let Ok(o) = &have
        && o.status.success()
        && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
    {
        eprintln!("xtask: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    let out = |args: &[&str]| -> Result<String> {
        let o = Command::new("rustc")
            .args(args)
            .output()
            .context("running rustc +nightly")?;
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    };
    let sysroot = out(&["+nightly", "--print", "sysroot"])?.trim().to_owned();
    let llvm_major = out(&["+nightly", "-vV"])?
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .map(str::to_owned)
        .context("reading the nightly toolchain's LLVM version")?;
    let lib_dir = Path::new(&sysroot).join("lib");
    let lib = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("listing {}", lib_dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .context("no libLLVM*.so in the nightly sysroot")?;
    let lib = lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_owned();
    let rustflags = format!(
        "-L {dir} -l dylib={lib} -C link-arg=-Wl,-rpath,{dir}",
        dir = lib_dir.display()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .args(["--features", &format!("llvm-{llvm_major},no-llvm-linking")])
        .env("RUSTFLAGS", rustflags))
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

pub(crate) fn bin(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("debug").join(name)
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

/// The probe as the demo runs it: eBPF when it can, else pcap; `None` (with the reason
/// printed) when neither can capture here.
fn start_probe() -> Option<Child> {
    let mut child = match Command::new(bin("tokenwire-probe"))
        .args(["run", "--quiet", "--backend", "auto"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "xtask: cannot start tokenwire-probe ({e}); the demo runs without wire figures"
            );
            return None;
        }
    };
    let stderr = child.stderr.take()?;
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    while let Some(Ok(line)) = lines.next() {
        println!("{line}");
        if line.contains("receiving spans on") {
            // Keep its stderr flowing to ours.
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    eprintln!("{line}");
                }
            });
            return Some(child);
        }
        said.push(line);
    }
    let _ = child.wait();
    eprintln!(
        "xtask: the probe could not start ({}); the demo runs without wire figures (run it as root for eBPF or libpcap)",
        said.last().map_or("no reason given", String::as_str)
    );
    None
}

fn demo(prompts: usize, mean_tokens: u32, speed: f64, linger: u64) -> Result<()> {
    let mut probe = start_probe();
    let mut servers = Command::new(bin("tokenwire-servers"))
        .args(["all", "--speed", &speed.to_string(), "--grace-secs", "5"])
        .args(["--mean-tokens", &mean_tokens.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .spawn()
        .context("starting tokenwire-servers")?;
    let result = (|| {
        let stdout = servers.stdout.take().context("servers' stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let started = Instant::now();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("tokenwire-servers ready") => {
                    println!("{line}");
                    break;
                }
                Some(Ok(_)) => {}
                _ => bail!("tokenwire-servers exited before it was ready (is a port in use?)"),
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("tokenwire-servers not ready after 60 s");
            }
        }
        let mut bench = Command::new(bin("tokenwire-bench"));
        bench.args(["run", "--reuse", "--limit", &prompts.to_string()]);
        if probe.is_none() {
            bench.arg("--no-probe");
        }
        run(&mut bench)?;
        if probe.is_some() && linger > 0 {
            println!(
                "\nThe probe's exporter stays up for {linger} s (Ctrl-C to stop now): \
                 http://127.0.0.1:9464/metrics, /api/requests, /api/connections, /api/flows\n\
                 Prometheus: prometheus --config.file=grafana/prometheus.yml --storage.tsdb.path=/tmp/tokenwire-prometheus\n\
                 Grafana:    TOKENWIRE_DIR=$PWD grafana-server --homepath /usr/share/grafana \
                 cfg:default.paths.provisioning=$PWD/grafana/provisioning\n\
                 (the dashboard 'tokenwire: bytes per token' is provisioned; docs/metrics.md has the queries)"
            );
            // Ctrl-C reaches the whole process group: the probe and the servers stop
            // themselves cleanly, and so does this wait.
            std::thread::sleep(Duration::from_secs(linger));
        }
        Ok(())
    })();
    // SIGINT: the servers finish in-flight streams and exit; the probe prints its table.
    for child in std::iter::once(&mut servers).chain(probe.as_mut()) {
        let _ = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status();
        let _ = child.wait();
    }
    result
}

fn test() -> Result<()> {
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--quiet",
        "--",
        "-D",
        "warnings",
    ]))?;
    check_macos()?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace"]);
    eprintln!("xtask: $ {}", describe(&cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    // Echo cargo's output and add up its per-binary results for one closing line.
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            passed += count_before(rest, " passed");
            failed += count_before(rest, " failed");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if passed == 0 {
        bail!("cargo test ran no test");
    }
    // The fleet: three nodes (namespaces) into a central Prometheus, checked against
    // each node's own probe (about 40 s).
    eprintln!("xtask: fleet of 3 nodes");
    fleet::run(3)
}

/// The number just before `word` in a `test result:` line, e.g. `ok. 18 passed; 0 failed`.
fn count_before(line: &str, word: &str) -> u64 {
    line.find(word)
        .and_then(|i| line[..i].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}
