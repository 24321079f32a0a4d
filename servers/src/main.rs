//! tokenwire-servers: run the embedded model and the companions from the command line.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokenwire_probe_common::approach::Approach;
use tokenwire_servers::approach_args::{CompanionCommand, Listens};
use tokenwire_servers::certs;
use tokenwire_servers::launch::{self, RelayOptions, Running};
use tokenwire_servers::model::{ModelConfig, OpenAiFormat, Timing};
use tokenwire_servers::page::PageLinks;
use tokenwire_servers::spans::SpanSink;
use tokenwire_servers::tuning::{AckFrequency, Tuning};
use tokio_util::sync::CancellationToken;

/// The embedded Ollama-compatible model and the companions that stream its tokens, one per
/// approach (below; docs/architecture.md lists them). TLS servers use certs/cert.pem and certs/key.pem, generated
/// when missing. Logs go to stderr (RUST_LOG=debug for more).
#[derive(Parser)]
#[command(name = "tokenwire-servers", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The embedded Ollama-compatible model on plain HTTP (default 127.0.0.1:11434).
    Model {
        #[arg(long, default_value = "127.0.0.1:11434")]
        listen: SocketAddr,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// One approach's companion (the approach registry's: docs/architecture.md).
    #[command(flatten)]
    Companion(CompanionCommand<CompanionArgs>),
    /// The model and every approach's companion in one process (the demo). With
    /// --upstream, the companions relay that Ollama instead and no embedded model is
    /// started.
    All {
        #[arg(long, default_value = "127.0.0.1:11434")]
        model_listen: SocketAddr,
        #[command(flatten)]
        listens: Listens,
        /// A real Ollama to relay (e.g. http://127.0.0.1:11434); default: the embedded model.
        #[arg(long)]
        upstream: Option<String>,
        /// The reference study's server side (docs/reference.md): the SSE relay also on
        /// [::1] at --sse-listen's port (its client reached SSE over IPv6), 4-byte QUIC
        /// connection IDs, keep-alive PINGs every 30 s and no ECN (its quic-go server's on
        /// macOS), and the model's legacy /v1 chunk format. Pair with
        /// `tokenwire-bench run --reference`.
        #[arg(long)]
        reference: bool,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        relay: RelayTuning,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Create certs/cert.pem and certs/key.pem (ECDSA P-256, localhost/127.0.0.1/::1,
    /// 14 days) and print the SHA-256 for WebTransport serverCertificateHashes.
    Certs {
        /// Directory of cert.pem and key.pem.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Replace an existing, still valid pair.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct ModelArgs {
    /// Model names to answer to (comma-separated); others get Ollama's 404.
    #[arg(long, value_delimiter = ',', default_value = "gemma3:12b")]
    models: Vec<String>,
    /// Seed for requests that do not set options.seed / seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Prompt evaluation time: time to first token, in milliseconds.
    #[arg(long, default_value_t = 250)]
    ttft_ms: u64,
    /// Time between tokens, in milliseconds.
    #[arg(long, default_value_t = 35)]
    tbt_ms: u64,
    /// Relative jitter on each wait (0.1 = ±10%).
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Speed factor dividing every wait (10 = ten times faster).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Mean response length in tokens (lengths spread ±30%; num_predict/max_tokens cap it).
    #[arg(long, default_value_t = 480)]
    mean_tokens: u32,
    /// /v1/chat/completions chunk format: current (Ollama >= 0.32.6) or legacy (<= 0.32.5).
    #[arg(long, value_enum, default_value = "current")]
    openai_format: OpenAiFormat,
}

impl ModelArgs {
    fn config(&self) -> Result<ModelConfig> {
        anyhow::ensure!(self.speed > 0.0, "--speed must be positive");
        anyhow::ensure!(
            (0.0..1.0).contains(&self.jitter),
            "--jitter must be in 0..1"
        );
        anyhow::ensure!(!self.models.is_empty(), "--models needs at least one name");
        let version = match self.openai_format {
            OpenAiFormat::Current => "0.32.6",
            OpenAiFormat::Legacy => "0.32.5",
        };
        Ok(ModelConfig {
            models: self.models.clone(),
            seed: self.seed,
            timing: Timing {
                ttft: Duration::from_millis(self.ttft_ms),
                tbt: Duration::from_millis(self.tbt_ms),
                jitter: self.jitter,
                speed: self.speed,
                mean_tokens: self.mean_tokens.max(1),
            },
            openai_format: self.openai_format,
            version: version.to_owned(),
            ..ModelConfig::default()
        })
    }
}

// A companion's own arguments.
#[derive(Args, Debug)]
struct CompanionArgs {
    #[command(flatten)]
    relay: RelayArgs,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args, Debug)]
struct RelayArgs {
    /// The Ollama API to relay (plain HTTP, as Ollama serves).
    #[arg(long, default_value = "http://127.0.0.1:11434")]
    upstream: String,
    #[command(flatten)]
    tuning: RelayTuning,
}

#[derive(Args, Debug)]
struct RelayTuning {
    /// Model the sse and wt relays ask the upstream for.
    #[arg(long = "model", default_value = "gemma3:12b")]
    relay_model: String,
    /// Directory of cert.pem and key.pem (generated when missing or expired).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Largest request body, in bytes (larger: 413).
    #[arg(long, default_value_t = 1 << 20)]
    max_body: usize,
    /// Largest WebTransport frame, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_frame: usize,
    /// Seconds a WebTransport client may take to send its prompt frame.
    #[arg(long, default_value_t = 10)]
    stall_secs: u64,
    /// The probe's Unix datagram socket: each request's start, first token and end, and
    /// each connection's close, are sent there (docs/spans.md). Sending never blocks or
    /// fails a request, whether or not a probe listens.
    #[arg(long, env = tokenwire_servers::spans::SOCKET_ENV, default_value = tokenwire_servers::spans::DEFAULT_SOCKET)]
    spans: PathBuf,
    /// Send no spans.
    #[arg(long, conflicts_with = "spans")]
    no_spans: bool,
    /// Transport settings (docs/wire-efficiency.md): `default`, or `lean`, the server's
    /// settings that lower wire bytes per token without holding any token back: 4-byte QUIC
    /// connection IDs, no ECN, and asking clients to acknowledge every 10th packet (ACK
    /// frequency extension). The flags below override it. Pair it with
    /// `tokenwire-bench run --tuning lean`.
    #[arg(long, default_value = "default", value_parser = parse_tuning)]
    tuning: Tuning,
    /// Length of the WebTransport server's QUIC connection IDs, 0 to 20 bytes [default: 8,
    /// 4 with --tuning lean] (quic-go, which the reference ran, uses 4). With 0 the server
    /// tells sessions apart by the client's address and port alone: two sessions from one
    /// client socket (clients that share a socket) break each other.
    #[arg(long, value_parser = clap::value_parser!(u8).range(0..=20))]
    quic_cid_len: Option<u8>,
    /// Ask WebTransport clients to acknowledge only every N+1th packet (ACK frequency
    /// extension; clients without it ignore the request). quinn 0.11 asks for a delay of at
    /// most max(RTT, 25 ms), so tokens further apart than that are each acknowledged.
    #[arg(long)]
    quic_ack_threshold: Option<u32>,
    /// With --quic-ack-threshold: the longest a client may wait before acknowledging,
    /// milliseconds (capped as said there) [default: the client's own, 25 ms for quinn].
    #[arg(long, requires = "quic_ack_threshold")]
    quic_max_ack_delay_ms: Option<u64>,
    /// The sse and wt relays send the tokens that arrive within this many milliseconds of
    /// the first unsent one as one event or frame: fewer packets and ACKs, but the first
    /// token of each batch waits up to this long. 0 sends each token as it arrives.
    #[arg(long, default_value_t = 0)]
    coalesce_ms: u64,
    /// TCP_NOTSENT_LOWAT of the raw and sse companions' connections, bytes: unsent data a
    /// connection buffers before the server stops writing to it [default: the kernel's].
    #[arg(long)]
    tcp_notsent_lowat: Option<u32>,
    /// Seconds between the WebTransport server's keep-alive PINGs on an idle session; 0
    /// sends none (quic-go's server in the reference used 30).
    #[arg(long, default_value_t = 3)]
    wt_keepalive_secs: u64,
    /// The WebTransport server neither reads nor reports ECN marks: its ACKs carry no ECN
    /// counters (about 4 bytes each) and clients stop marking, as with quic-go on macOS,
    /// the reference's stack.
    #[arg(long)]
    no_quic_ecn: bool,
    /// Receive and send buffer of the WebTransport server's UDP socket, bytes. Every
    /// session's packets arrive on it; a burst of new sessions overflows a small one
    /// (forced past net.core.rmem_max when running as root).
    #[arg(long, default_value_t = tokenwire_servers::quic_socket::DEFAULT_BUFFER)]
    quic_socket_buffer: usize,
    /// WebTransport sessions open at once; a session past it is refused with 429.
    #[arg(long, default_value_t = tokenwire_servers::wt_relay::DEFAULT_MAX_SESSIONS)]
    max_sessions: usize,
    /// Prompts (WebTransport streams) running at once on one session; a client opening
    /// one more waits until one finishes (QUIC stream credit), nothing is refused.
    #[arg(long, default_value_t = tokenwire_servers::wt_relay::DEFAULT_MAX_STREAMS_PER_SESSION, value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_session: u32,
    /// Connections each TLS companion (raw, sse) holds open at once; requests on a
    /// connection past it are answered 503 with `Retry-After: 1` and the connection closes.
    #[arg(long, default_value_t = tokenwire_servers::http::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Idle upstream connections each relay keeps for reuse, for 30 s (each stream in
    /// flight holds one of its own; after a burst only this many stay open).
    #[arg(long, default_value_t = tokenwire_servers::http::UPSTREAM_IDLE_MAX)]
    upstream_idle_max: usize,
    /// The SSE relay serves no browser page at GET / (docs/browser.md).
    #[arg(long)]
    no_page: bool,
    /// Port of the probe's API (`tokenwire-probe run --listen`) on the page's host: the
    /// browser page asks it for each request's wire bytes and packets.
    #[arg(long, default_value_t = tokenwire_servers::page::DEFAULT_PROBE_PORT)]
    page_probe_port: u16,
}

impl RelayTuning {
    fn options(&self, upstream: String) -> Result<RelayOptions> {
        let spans = if self.no_spans {
            SpanSink::disabled()
        } else {
            SpanSink::to_path(&self.spans).context("creating the spans socket")?
        };
        let mut opts = RelayOptions {
            upstream,
            model: self.relay_model.clone(),
            max_body: self.max_body,
            max_frame: self.max_frame,
            stall: Duration::from_secs(self.stall_secs),
            spans,
            quic_cid_len: launch::DEFAULT_QUIC_CID_LEN,
            wt_keep_alive: (self.wt_keepalive_secs > 0)
                .then(|| Duration::from_secs(self.wt_keepalive_secs)),
            quic_ecn: true,
            quic_socket_buffer: self.quic_socket_buffer,
            max_sessions: self.max_sessions,
            max_streams_per_session: self.max_streams_per_session,
            max_connections: self.max_connections,
            upstream_idle_max: self.upstream_idle_max,
            page: (!self.no_page).then(|| PageLinks {
                probe_port: self.page_probe_port,
                ..PageLinks::default()
            }),
            quic_ack_frequency: None,
            coalesce: Duration::from_millis(self.coalesce_ms),
            tcp_notsent_lowat: self.tcp_notsent_lowat,
        };
        opts.apply_tuning(&self.tuning);
        if !self.tuning.knobs.is_empty() || self.coalesce_ms > 0 {
            tracing::info!(
                tuning = %self.tuning,
                coalesce_ms = self.coalesce_ms,
                "transport settings (docs/wire-efficiency.md)"
            );
        }
        if self.no_quic_ecn {
            opts.quic_ecn = false;
        }
        if let Some(len) = self.quic_cid_len {
            opts.quic_cid_len = usize::from(len);
        }
        if let Some(threshold) = self.quic_ack_threshold {
            opts.quic_ack_frequency = Some(AckFrequency {
                threshold,
                max_delay: self.quic_max_ack_delay_ms.map(Duration::from_millis),
            });
        }
        Ok(opts)
    }
}

fn parse_tuning(s: &str) -> Result<Tuning, String> {
    Tuning::parse(s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Seconds in-flight streams get to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    grace_secs: u64,
    /// Once every server listens, write FILE (atomically: whole or not at all): one JSON
    /// object, `pid` and `servers` (each server's name, `model` or the approach's, to its
    /// URL). What launchers wait for, rather than reading the log.
    #[arg(long)]
    ready_file: Option<PathBuf>,
}

fn main() {
    // Errors are for people: one line with its causes, no backtrace.
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    tokenwire_servers::logging::init("info");
    let _ = tokenwire_servers::limits::raise_open_files();
    let cli = Cli::parse();
    if let Command::Certs { dir, force } = &cli.command {
        let id = if *force {
            certs::generate(dir)
        } else {
            certs::ensure(dir)
        }?;
        println!("{}", id.cert_path.display());
        println!("{}", id.key_path.display());
        println!("valid until {}", id.not_after_rfc3339());
        println!("SHA-256 {}", id.sha256_hex());
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(run(cli.command))
}

async fn run(command: Command) -> Result<()> {
    let shutdown = CancellationToken::new();
    let mut running: Vec<Running> = Vec::new();
    let grace;
    let ready_file;
    match command {
        Command::Model {
            listen,
            model,
            common,
        } => {
            grace = Duration::from_secs(common.grace_secs);
            ready_file = common.ready_file.clone();
            running.push(
                launch::start_model(listen, model.config()?, shutdown.clone(), grace)
                    .await?
                    .0,
            );
        }
        Command::Companion(CompanionCommand {
            approach,
            listen,
            args: CompanionArgs { relay, common },
        }) => {
            grace = Duration::from_secs(common.grace_secs);
            ready_file = common.ready_file.clone();
            running.push(companion(approach, listen, &relay, &shutdown, grace).await?);
        }
        Command::All {
            model_listen,
            listens,
            upstream,
            reference,
            mut model,
            relay,
            common,
        } => {
            grace = Duration::from_secs(common.grace_secs);
            ready_file = common.ready_file.clone();
            let id = identity(&relay.certs)?;
            if reference {
                model.openai_format = OpenAiFormat::Legacy;
            }
            let upstream = match upstream {
                Some(u) => u,
                None => {
                    let (m, _) =
                        launch::start_model(model_listen, model.config()?, shutdown.clone(), grace)
                            .await?;
                    let url = m.url.clone();
                    running.push(m);
                    url
                }
            };
            let mut opts = relay.options(upstream)?;
            if let Some(links) = &mut opts.page {
                for a in Approach::ALL {
                    links.ports.insert(a, listens.get(a).port());
                }
            }
            let mut listeners: Vec<(Approach, SocketAddr)> =
                Approach::ALL.map(|a| (a, listens.get(a))).to_vec();
            if reference {
                opts.quic_cid_len = 4;
                opts.wt_keep_alive = Some(Duration::from_secs(30));
                opts.quic_ecn = false;
                let sse = listens.get(Approach::Sse);
                let v6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), sse.port());
                if v6 != sse {
                    listeners.push((Approach::Sse, v6));
                }
            }
            for (kind, addr) in listeners {
                running.push(
                    launch::start_companion(kind, addr, &id, &opts, shutdown.clone(), grace)
                        .await?,
                );
            }
        }
        Command::Certs { .. } => unreachable!("handled before the runtime starts"),
    }
    for r in &running {
        tracing::info!(server = r.name, url = %r.url, "listening");
        if r.page {
            tracing::info!(url = %format!("https://{}/", r.addr), "browser page (docs/browser.md)");
        }
    }
    let urls: Vec<String> = running
        .iter()
        .map(|r| format!("{} {}", r.name, r.url))
        .collect();
    // One line on stdout for people and scripts; launchers wait for --ready-file.
    println!("tokenwire-servers ready: {}", urls.join(", "));
    if let Some(path) = &ready_file {
        // A name's first server (with --reference, sse's IPv4 one, not its [::1] twin).
        let mut servers = serde_json::Map::new();
        for r in &running {
            servers
                .entry(r.name)
                .or_insert_with(|| r.url.clone().into());
        }
        let ready = serde_json::json!({ "pid": std::process::id(), "servers": servers });
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, ready.to_string())
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("writing {} (--ready-file)", path.display()))?;
    }
    wait_for_signal().await;
    tracing::info!(
        grace_secs = grace.as_secs(),
        "shutting down: finishing in-flight streams"
    );
    shutdown.cancel();
    for r in running {
        let _ = r.task.await;
        tracing::info!(
            server = r.name,
            connections = r.stats.connections(),
            requests = r.stats.requests(),
            tokens = r.stats.tokens(),
            aborted = r.stats.aborted(),
            "stopped"
        );
        // The relays' added delay per token (upstream sent -> handed to the client).
        if let Some(d) = r.stats.relay_delay.summary() {
            tracing::info!(
                server = r.name,
                tokens = d.count,
                relay_delay_mean_ms = format!("{:.3}", d.mean_ms),
                relay_delay_p50_ms = format!("{:.3}", d.p50_ms),
                relay_delay_p99_ms = format!("{:.3}", d.p99_ms),
                relay_delay_max_ms = format!("{:.3}", d.max_ms),
                "relay added delay per token"
            );
        }
    }
    Ok(())
}

async fn companion(
    kind: Approach,
    listen: SocketAddr,
    relay: &RelayArgs,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Result<Running> {
    let id = identity(&relay.tuning.certs)?;
    let opts = relay.tuning.options(relay.upstream.clone())?;
    Ok(launch::start_companion(kind, listen, &id, &opts, shutdown.clone(), grace).await?)
}

fn identity(dir: &std::path::Path) -> Result<certs::Identity> {
    let id = certs::ensure(dir)
        .with_context(|| format!("loading the TLS certificate from {}", dir.display()))?;
    tracing::info!(
        cert = %id.cert_path.display(),
        not_after = %id.not_after_rfc3339(),
        sha256 = %id.sha256_hex(),
        "TLS certificate (the SHA-256 is WebTransport's serverCertificateHashes value)"
    );
    Ok(id)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
