//! `cargo xtask test`, what CI runs: set-up, fmt, clippy, the macOS lint, every test, the
//! fleet, two minutes of chaos.

use crate::setup::check_macos;
use crate::{cargo, describe, fleet, run};
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::process::Stdio;

pub(crate) fn test() -> Result<()> {
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
    fleet::run(3)?;
    // Kills and restarts of the probe, the model and the companions under the demo's
    // workload (docs/reliability.md, "Faults").
    eprintln!("xtask: chaos for 2 minutes");
    crate::chaos::run(2.0, 1)
}

/// The number just before `word` in a `test result:` line, e.g. `ok. 18 passed; 0 failed`.
pub(crate) fn count_before(line: &str, word: &str) -> u64 {
    line.find(word)
        .and_then(|i| line[..i].rsplit([' ', '.']).next()?.parse().ok())
        .unwrap_or(0)
}
