//! `tokenwire-bench shape`: a command behind an emulated link.

use crate::args::ShapeArgs;
#[cfg(target_os = "linux")]
use anyhow::Context;
use anyhow::Result;
#[cfg(not(target_os = "linux"))]
use anyhow::bail;

#[cfg(target_os = "linux")]
pub fn shape(args: ShapeArgs) -> Result<()> {
    use tokenwire_bench::netem::emulator::{Emulator, EmulatorConfig};
    let profile = args.link.profile()?;
    if let Some(set) = args.print_commands {
        println!("{}", profile.commands(args.link.direction, set));
        return Ok(());
    }
    let (up, down) = profile.shapes(args.link.direction);
    let em = Emulator::start(&EmulatorConfig {
        up,
        down,
        seed: args.link.seed,
        congestion_control: args.link.congestion_control.clone(),
        ..EmulatorConfig::default()
    })?;
    eprintln!(
        "tokenwire-bench shape: {} ({}) on {}; servers at {} (TOKENWIRE_SERVER_ADDR), client {} in netns {}, loss seed {}",
        profile.name,
        profile.describe(),
        args.link.direction.as_str(),
        em.server_addr,
        em.client_addr,
        em.netns,
        args.link.seed
    );
    // SIGINT/SIGTERM go to COMMAND (same process group); this process waits for it and
    // tears down. A stale set-up after a crash is removed by the next start.
    let status = std::process::Command::new("ip")
        .args(em.exec_prefix())
        .args(&args.command)
        .env("TOKENWIRE_SERVER_ADDR", em.server_addr.to_string())
        .status()
        .with_context(|| format!("running {}", args.command.join(" ")))?;
    let report = em.report();
    eprintln!(
        "tokenwire-bench shape: up {} delivered, {} lost, {} queue drops; down {} delivered, {} lost, {} queue drops; late > 1 ms: {} up, {} down",
        report.up.stats.delivered,
        report.up.stats.lost,
        report.up.stats.queue_drops,
        report.down.stats.delivered,
        report.down.stats.lost,
        report.down.stats.queue_drops,
        report.up.late,
        report.down.late
    );
    drop(em);
    std::process::exit(status.code().unwrap_or(1));
}

#[cfg(not(target_os = "linux"))]
pub fn shape(args: ShapeArgs) -> Result<()> {
    let p = args.link.profile()?;
    if let Some(set) = args.print_commands {
        println!("{}", p.commands(args.link.direction, set));
        return Ok(());
    }
    bail!(
        "the link emulator needs Linux; on macOS set the same pipes with dnctl/pfctl (docs/emulator.md): {}",
        p.describe()
    )
}
