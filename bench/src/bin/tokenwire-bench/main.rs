//! tokenwire-bench's command line: one module per command (`run`, `browser`, `shape`,
//! `matrix`), their flags in `args`, and in `output` what `run` and `browser` print and
//! write alike.

mod args;
mod browser;
mod matrix;
mod output;
mod run;
mod shape;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Streams prompts through the approaches — raw (the Ollama API through the TLS proxy),
/// sse (HTTPS SSE relay), wt (WebTransport): docs/architecture.md lists them — and reports time to first token,
/// time between tokens, tokens and application bytes per approach, in the reference
/// study's columns, with wire bytes from tokenwire-probe when one runs. `shape` and
/// `matrix` run them behind an emulated link (delay, loss, bandwidth).
#[derive(Parser)]
#[command(name = "tokenwire-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run prompts through the chosen approaches and print a summary table. Exits non-zero
    /// only when an approach had no successful request (its servers are not up): failures
    /// under an emulated link are part of what it measures.
    Run(Box<args::RunArgs>),
    /// Run COMMAND on the client side of an emulated link (like mahimahi's shells): a
    /// network namespace joined to this host by TUN devices, with loss, a droptail queue,
    /// a bandwidth and a delay applied to the chosen directions (docs/emulator.md). The
    /// host side's address is printed and given to COMMAND as TOKENWIRE_SERVER_ADDR; the
    /// servers must listen there (or on 0.0.0.0). Exits with COMMAND's status and removes
    /// everything it set up. Needs root.
    Shape(args::ShapeArgs),
    /// Every profile x direction x mode (reuse, fresh) x approach through the link
    /// emulator, with the probe's wire accounting; writes a report directory (RESULTS.md
    /// laid out like the reference, results.json, SVG charts). Starts its own model,
    /// companions and probe in a server namespace and the client in another. The quick
    /// default takes under ten minutes; --full is the reference's whole run. Needs root.
    Matrix(args::MatrixArgs),
    /// The approaches from a real browser: launches headless Chromium (the system's
    /// `chromium`), opens the SSE relay's page (GET /) and streams each prompt with the
    /// browser's own fetch and WebTransport, timed in the page (performance.now()). Prints
    /// the same tables as `run`, with the probe's wire figures for the browser's requests
    /// (docs/browser.md). Exits non-zero on any failed request: a page on a local stack
    /// that fails one is a fault.
    Browser(Box<args::BrowserArgs>),
}

fn main() {
    // Errors are for people: one line with its causes, no backtrace.
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    // chromiumoxide warns of every DevTools event newer than its protocol tables; harmless.
    tokenwire_servers::logging::init("warn,chromiumoxide=error");
    let _ = tokenwire_servers::limits::raise_open_files();
    match Cli::parse().command {
        Command::Run(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(run::run(*args))
        }
        Command::Browser(args) => {
            let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            rt.block_on(browser::browser(*args))
        }
        Command::Shape(args) => shape::shape(args),
        Command::Matrix(args) => matrix::matrix(args),
    }
}
