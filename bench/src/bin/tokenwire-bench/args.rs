//! The commands' flags.

use anyhow::Result;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::workload;
use tokenwire_servers::tuning::Tuning;

/// What `run` and `browser` stream: which approaches, which prompts, how many times.
#[derive(clap::Args)]
pub struct WorkloadArgs {
    /// Approaches to run, in this order (docs/architecture.md lists them).
    #[arg(long, value_delimiter = ',', default_values_t = Approach::ALL, value_parser = approach_parser())]
    pub approach: Vec<Approach>,
    /// File of prompts, one per line (# comments and blank lines skipped); default: the
    /// reference's ten.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Use only the first N prompts.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Run the prompt list N times.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

impl WorkloadArgs {
    /// The prompts, the jobs, and the approaches (each once, in the order given).
    pub fn load(&self) -> Result<(Vec<String>, Vec<workload::Job>, Vec<Approach>)> {
        let prompts = match &self.prompts {
            Some(p) => workload::read_prompts(p)?,
            None => workload::default_prompts(),
        };
        let jobs = workload::jobs(&prompts, self.limit, self.repeat)?;
        let mut approaches = Vec::new();
        for a in &self.approach {
            if !approaches.contains(a) {
                approaches.push(*a);
            }
        }
        Ok((prompts, jobs, approaches))
    }
}

#[derive(clap::Args)]
pub struct BrowserArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// One page for every prompt: the browser keeps its connections and one WebTransport
    /// session. Without it every prompt opens the page in a new browser context (an
    /// incognito profile), so each pays its connections' handshakes, as a first visit.
    #[arg(long)]
    pub reuse: bool,
    /// The SSE relay's page (`tokenwire-servers all` serves it; it knows where the raw
    /// proxy and the WebTransport relay are; append ?raw=URL&wt=URL to override).
    #[arg(long, default_value = "https://127.0.0.1:8080/")]
    pub page: String,
    /// The companions' certificate: Chromium trusts its public key (and only it) for raw
    /// and sse; WebTransport pins it by hash.
    #[arg(long, default_value = "certs/cert.pem")]
    pub cert: PathBuf,
    /// Where the sse-h3 companion listens (HOST:PORT, UDP): Chromium is told to reach it
    /// over QUIC from the first request (--origin-to-force-quic-on), as it would after an
    /// Alt-Svc. Default: the page's host, port 8444
    #[arg(long, value_name = "HOST:PORT")]
    pub h3_origin: Option<String>,
    /// Chromium's executable (default: chromium, chromium-browser or google-chrome on PATH).
    #[arg(long)]
    pub chromium: Option<PathBuf>,
    /// The probe's API address: the page shows each request's wire figures from it, and
    /// the wire table comes from its records.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub probe: SocketAddr,
    /// Do not ask a probe for wire figures.
    #[arg(long, conflicts_with = "probe")]
    pub no_probe: bool,
    /// After the measured prompts, stream the first prompt in all three panels at once and
    /// write a PNG of the page mid-stream here.
    #[arg(long)]
    pub screenshot: Option<PathBuf>,
    /// Skip the uncounted warm-up prompt per approach.
    #[arg(long)]
    pub no_warmup: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// Write the run's metadata, the browser's facts and every request's detail as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one CSV row per request.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// No per-request lines.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(clap::Args)]
pub struct MatrixArgs {
    /// The reference's run: its ten prompts, full-length answers (~480 tokens).
    #[arg(long)]
    pub full: bool,
    /// Profiles to run (default: all five).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "baseline,latency-200ms,loss-5pct,bw-100kbps,degraded"
    )]
    pub profiles: Vec<String>,
    /// Directions shaped, each a full pass over the profiles: up reproduces the
    /// reference; both shapes the token stream too.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "up,both")]
    pub directions: Vec<tokenwire_bench::netem::profile::Direction>,
    /// Connection modes.
    #[arg(long, value_delimiter = ',', default_value = "reuse,fresh")]
    pub modes: Vec<String>,
    /// Prompts per approach (default 2, or 10 with --full).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Mean answer length in tokens (default 60, or 480 with --full).
    #[arg(long)]
    pub mean_tokens: Option<u32>,
    /// Model speed factor (1 = the reference model's pace).
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Seed of the links' loss draws and the model's answers.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TCP congestion control in both namespaces (cubic, as on the reference's macOS).
    #[arg(long, default_value = "cubic")]
    pub congestion_control: String,
    /// Report directory.
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// The reference study's setup (docs/reference.md), as `run --reference` with
    /// `tokenwire-servers all --reference`: the link carries IPv6 too and SSE travels over
    /// it, 4-byte QUIC connection IDs, no ECN, 30 s server keep-alives, legacy chunks, the
    /// reference's client and P50.
    #[arg(long)]
    pub reference: bool,
    /// Transport settings to compare, each on links of its own (docs/wire-efficiency.md):
    /// `default`, `lean` (every knob; both ends, and TCP timestamps off in both
    /// namespaces), or one knob alone: client-cid0, server-cid4, no-ecn, ack-frequency,
    /// delayed-acks, no-timestamps. The main tables show the first; RESULTS.md gains a
    /// tuning table and charts when there are several.
    #[arg(long, value_delimiter = ',', default_value = "default", value_parser = parse_tuning)]
    pub tuning: Vec<Tuning>,
    /// The relays' coalescing windows to compare, ms (tokens arriving within the window
    /// of the first unsent one leave together), e.g. 0,10,35,70. Each window runs with each
    /// tuning.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub coalesce_ms: Vec<u64>,
}

#[derive(clap::Args, Clone)]
pub struct LinkArgs {
    /// A reference profile: baseline, latency-200ms, loss-5pct, bw-100kbps, degraded
    /// (default: baseline, changed by the flags below).
    #[arg(long, default_value = "baseline")]
    pub profile: String,
    /// Directions shaped: up (client to server, what the reference did), down, both.
    #[arg(long, value_enum, default_value = "both")]
    pub direction: tokenwire_bench::netem::profile::Direction,
    /// One-way delay per shaped direction, e.g. 50ms (overrides the profile's).
    #[arg(long, value_parser = tokenwire_bench::netem::profile::parse_delay)]
    pub delay: Option<Duration>,
    /// Bernoulli loss per shaped direction, e.g. 1% (overrides the profile's).
    #[arg(long, value_parser = tokenwire_bench::netem::profile::parse_loss)]
    pub loss: Option<f64>,
    /// Bandwidth per shaped direction, e.g. 2mbit, 100kbit (overrides the profile's).
    #[arg(long)]
    pub rate: Option<tokenwire_bench::netem::profile::Rate>,
    /// Droptail queue limit in packets (default 50, as dummynet).
    #[arg(long, conflicts_with = "queue_bytes")]
    pub queue: Option<usize>,
    /// Droptail queue limit in bytes instead.
    #[arg(long)]
    pub queue_bytes: Option<usize>,
    /// Seed of the loss draws (logged; the same seed loses the same packets).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TCP congestion control on the client side.
    #[arg(long, default_value = "cubic")]
    pub congestion_control: String,
}

impl LinkArgs {
    pub fn profile(&self) -> Result<tokenwire_bench::netem::profile::Profile> {
        let mut p = tokenwire_bench::netem::profile::Profile::named(&self.profile)?;
        let custom = self.delay.is_some()
            || self.loss.is_some()
            || self.rate.is_some()
            || self.queue.is_some()
            || self.queue_bytes.is_some();
        if let Some(d) = self.delay {
            p.delay = d;
        }
        if let Some(l) = self.loss {
            p.loss = l;
        }
        if let Some(r) = self.rate {
            p.rate_bps = Some(r.0);
        }
        p.queue_packets = self.queue.or(p.queue_packets);
        p.queue_bytes = self.queue_bytes.or(p.queue_bytes);
        if custom {
            p.name = format!("{}+custom", p.name);
        }
        Ok(p)
    }
}

#[derive(clap::Args)]
pub struct ShapeArgs {
    #[command(flatten)]
    pub link: LinkArgs,
    /// Print the commands that set the same link with tc netem (Linux with sch_netem) or
    /// dnctl/pfctl (macOS), then exit; nothing is set up (not tested here).
    #[arg(long, value_enum)]
    pub print_commands: Option<tokenwire_bench::netem::profile::CommandSet>,
    /// The command and its arguments (after --).
    #[arg(last = true, required_unless_present = "print_commands")]
    pub command: Vec<String>,
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Keep one connection (or WebTransport session) per user for all its prompts;
    /// without it every prompt opens a new one and pays the handshakes.
    #[arg(long)]
    pub reuse: bool,
    /// Closed loop: N users at once per approach, each with its own connection.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Closed loop: start the users evenly over this many seconds, not all at once.
    #[arg(long, default_value_t = 0.0, value_parser = parse_secs)]
    pub ramp_secs: f64,
    /// Open loop: Poisson arrivals at R requests/s; latency counts from each scheduled
    /// send time, so client-side queueing is included.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Seed of the open loop's arrival times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write the run's metadata and every request's detail as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one CSV row per request.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// No progress bar (also off when stdout is not a terminal) and no per-request lines.
    #[arg(long)]
    pub quiet: bool,
    /// Skip the uncounted warm-up request per approach (it is also the ready check).
    #[arg(long)]
    pub no_warmup: bool,
    /// The companions' host: each approach's companion at its default port there (raw
    /// 11435, sse 8080, wt 4433: docs/architecture.md lists them all).
    #[arg(long, default_value = "127.0.0.1")]
    pub server: std::net::IpAddr,
    /// One companion elsewhere, as NAME=HOST:PORT (e.g. wt=10.0.0.2:4433); repeatable.
    /// The path is always the approach's own (raw /v1/chat/completions, sse /chat, wt /wt).
    #[arg(long = "at", value_name = "NAME=ADDR", value_parser = parse_at)]
    pub at: Vec<(Approach, SocketAddr)>,
    /// TLS server name and Host header for raw and sse.
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Model name for the raw approach.
    #[arg(long, default_value = "gemma3:12b")]
    pub model: String,
    /// Certificate to trust (pinned): the companions' certs/cert.pem.
    #[arg(long, default_value = "certs/cert.pem")]
    pub cert: PathBuf,
    /// Do not verify the servers' certificates (what the reference did).
    #[arg(long)]
    pub insecure: bool,
    /// Seconds one request may take before it counts as failed.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
    /// The probe's API address (`tokenwire-probe run --listen`): its per-request records
    /// add the wire table (bytes, packets, bytes per token). Without a probe there, the
    /// run says so and reports application figures only.
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub probe: SocketAddr,
    /// The reference study's client (docs/reference.md): all of --no-usage,
    /// --legacy-chunks, --count-end-frame, --p50-mean, --connection-close, --short-cids,
    /// --no-keepalive, --no-ecn and --sse-v6. Start the servers with `--reference` too
    /// (SSE also on [::1], 4-byte QUIC connection IDs, no ECN).
    #[arg(long)]
    pub reference: bool,
    /// raw: no `stream_options.include_usage` (the reference never sent it): no usage chunk;
    /// tokens counted from the chunks.
    #[arg(long)]
    pub no_usage: bool,
    /// raw: ask the model for /v1 chunks in the legacy format (role in every chunk), as the
    /// Ollama of the reference sent them (a request header the embedded model honours).
    #[arg(long)]
    pub legacy_chunks: bool,
    /// wt: count the `0:` end frame as a token, as the reference did.
    #[arg(long)]
    pub count_end_frame: bool,
    /// P50 as the mean of the two middle values (the reference's), not the nearest rank.
    #[arg(long)]
    pub p50_mean: bool,
    /// raw and sse without --reuse: send `Connection: close` (the reference's fresh mode).
    #[arg(long)]
    pub connection_close: bool,
    /// wt: 4-byte QUIC connection IDs for the client, as quic-go (the reference's client)
    /// uses; the servers' own are `tokenwire-servers --quic-cid-len`.
    #[arg(long)]
    pub short_cids: bool,
    /// wt: no keep-alive PINGs from the client (the reference's client sent none).
    #[arg(long)]
    pub no_keepalive: bool,
    /// wt: the client neither reads nor reports ECN marks, so its ACKs carry no ECN
    /// counters (about 4 bytes each) and the server stops marking; quic-go on macOS, the
    /// reference's client, does not use ECN. The servers' own: `--no-quic-ecn`.
    #[arg(long)]
    pub no_ecn: bool,
    /// sse over IPv6 loopback ([::1] at sse's port): the reference's SSE client dialled
    /// `localhost`, which macOS resolves to ::1 first (its other clients used IPv4).
    #[arg(long)]
    pub sse_v6: bool,
    /// Do not ask a probe for wire figures.
    #[arg(long, conflicts_with = "probe")]
    pub no_probe: bool,
    /// The client's transport settings (docs/wire-efficiency.md): `default`, or `lean`:
    /// zero-length QUIC connection IDs (a UDP socket per session), no ECN, and TCP delayed
    /// ACKs. Lean also wants TCP timestamps off, a network namespace's setting
    /// (net.ipv4.tcp_timestamps=0) that the run reports but does not change; `matrix`
    /// sets it in its namespaces. One knob's name (e.g. delayed-acks) applies that knob
    /// alone. Pair it with `tokenwire-servers --tuning lean`.
    #[arg(long, default_value = "default", value_parser = parse_tuning)]
    pub tuning: Tuning,
}

/// Parses an approach's name, listing the registry's names in `--help` and in errors.
fn approach_parser() -> impl clap::builder::TypedValueParser<Value = Approach> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Approach::ALL.map(|a| a.as_str())).map(|name| {
        name.parse()
            .expect("a registry name: the parser admits no other")
    })
}

/// `NAME=HOST:PORT`: one approach's companion address.
fn parse_at(s: &str) -> Result<(Approach, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=HOST:PORT, e.g. wt=10.0.0.2:4433"))?;
    let approach = name
        .parse()
        .map_err(|e| format!("{name:?} in {s:?}: {e}"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} in {s:?}: {e} (expected HOST:PORT)"))?;
    Ok((approach, addr))
}

/// A transport setting's name (`default`, `lean` or one knob).
fn parse_tuning(s: &str) -> Result<Tuning, String> {
    Tuning::parse(s).map_err(|e| e.to_string())
}

/// A non-negative, finite number of seconds.
fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("{s:?}: expected seconds, a number 0 or more")),
    }
}
