//! `cargo xtask fuzz --minutes N`: every cargo-fuzz target of fuzz/ in turn (libFuzzer,
//! nightly), sharing N minutes, each from its kept corpus and its committed seeds; a table
//! of what each ran and found for docs/reliability.md. A crash leaves its input in
//! fuzz/artifacts/<target>/ and fails the task once every target has run.

use anyhow::{Context, Result, bail};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo").args(["fuzz", "--version"]).output();
    if have.is_ok_and(|o| o.status.success()) {
        eprintln!("xtask: cargo-fuzz present");
        return Ok(());
    }
    crate::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

/// The number after `key` in `text`'s last line that has it.
fn last_number(text: &str, key: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| {
        let rest = &l[l.find(key)? + key.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    })
}

struct Ran {
    target: String,
    seconds: f64,
    executed: Option<u64>,
    coverage: Option<u64>,
    corpus: Option<u64>,
    crashed: bool,
}

pub fn run(minutes: f64) -> Result<()> {
    cargo_fuzz()?;
    let dir = Path::new("fuzz");
    let list = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(dir)
        .output()
        .context("cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("cargo fuzz list found no targets in fuzz/");
    }
    let each = ((minutes * 60.0) / targets.len() as f64).max(10.0) as u64;
    eprintln!(
        "xtask: fuzzing {} targets for {each} s each: {}",
        targets.len(),
        targets.join(" ")
    );
    crate::run(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "build", "-O"])
            .current_dir(dir),
    )?;
    let mut ran = Vec::new();
    for t in &targets {
        let corpus = dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus)?;
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", "-O", t])
            .arg(format!("corpus/{t}"))
            .current_dir(dir);
        if dir.join("seeds").join(t).is_dir() {
            cmd.arg(format!("seeds/{t}"));
        }
        cmd.args([
            "--",
            &format!("-max_total_time={each}"),
            "-print_final_stats=1",
        ]);
        eprintln!("xtask: fuzzing {t}");
        let started = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("cargo fuzz run {t}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        ran.push(Ran {
            target: t.clone(),
            seconds: started.elapsed().as_secs_f64(),
            executed: last_number(&log, "stat::number_of_executed_units:"),
            coverage: last_number(&log, "cov:"),
            corpus: last_number(&log, "corp:"),
            crashed: !out.status.success(),
        });
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "xtask: {t} failed; the input is in fuzz/artifacts/{t}/\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    let show = |v: Option<u64>| v.map_or("-".to_owned(), |n| n.to_string());
    println!("| target | seconds | inputs executed | coverage (edges) | corpus | result |");
    println!("|---|---|---|---|---|---|");
    for r in &ran {
        println!(
            "| {} | {:.0} | {} | {} | {} | {} |",
            r.target,
            r.seconds,
            show(r.executed),
            show(r.coverage),
            show(r.corpus),
            if r.crashed { "CRASH" } else { "nothing found" }
        );
    }
    if ran.iter().any(|r| r.crashed) {
        bail!("a fuzz target crashed: see fuzz/artifacts/");
    }
    Ok(())
}
