//! `cargo xtask setup` and what it installs: Debian packages, rust-src, bpf-linker, the
//! macOS and static targets, the Python tools; `build-ebpf`.

use crate::{cargo, certs, run, workspace_root};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Debian packages the project needs: libpcap for the probe's pcap backend, tcpdump as
/// the ground truth of byte counts, prometheus for promtool and the real server the
/// dashboard test queries, python3 for the span-access test's unprivileged sender, curl
/// for the clients `chaos` cuts mid-stream, chromium for `tokenwire-bench browser` and its
/// test.
pub(crate) const APT_PACKAGES: [&str; 8] = [
    "libpcap-dev",
    "tcpdump",
    "iproute2",
    "prometheus",
    "python3",
    "python3-venv",
    "curl",
    "chromium",
];
pub(crate) const BPF_LINKER_VERSION: &str = "0.13.0";
/// The probe's pcap fallback must keep building for macOS: `test` checks and lints it for
/// these targets (the probe only: the servers and bench need the macOS SDK for ring).
pub(crate) const MACOS_TARGETS: [&str; 2] = ["x86_64-apple-darwin", "aarch64-apple-darwin"];

pub(crate) fn setup() -> Result<()> {
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
pub(crate) const PYTHON_TOOLS: [&str; 4] = [
    "kubernetes-validate==1.37.0",
    "ollama==0.6.3",
    "openai==3.63.0",
    "httpx==0.29.0",
];

pub(crate) fn deploy_tools() -> Result<()> {
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
pub(crate) fn build_ebpf() -> Result<()> {
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

pub(crate) fn is_root() -> bool {
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

pub(crate) fn rust_src() -> Result<()> {
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
pub(crate) const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// tokenwire-probe built static for `STATIC_TARGET`, eBPF only; checks it is static.
pub(crate) fn static_probe() -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "--locked",
        "--target",
        STATIC_TARGET,
        "-p",
        "tokenwire-probe",
        "--no-default-features",
        // eBPF only (no libpcap to link), with the exporter's TLS for --web-config.
        "--features",
        "web-tls",
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
pub(crate) fn rust_targets(targets: &[&str]) -> Result<()> {
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
pub(crate) fn check_macos() -> Result<()> {
    for target in MACOS_TARGETS {
        run(cargo()
            .args(["clippy", "--quiet", "--target", target])
            .args(["-p", "tokenwire-probe", "-p", "tokenwire-probe-common"])
            // Not web-tls: ring's C part needs the macOS SDK (the pcap backend is what the
            // macOS build is about; a Mac builds ring with its own SDK).
            .args([
                "--no-default-features",
                "--features",
                "tokenwire-probe/pcap",
            ])
            .args(["--", "-D", "warnings"]))?;
    }
    Ok(())
}

/// bpf-linker built against the nightly toolchain's own libLLVM (Debian's LLVM is older
/// than rustc's), as ../shared/ebpf-toolchain.md describes.
pub(crate) fn bpf_linker() -> Result<()> {
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
