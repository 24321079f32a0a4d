//! `tokenwire-bench matrix`: every profile x direction x mode x approach through the link
//! emulator, with the probe's per-request wire accounting, into a report directory
//! (RESULTS.md, results.json, SVG charts; see [`crate::results`]).
//!
//! Each (direction, profile) gets a fresh link: a client and a server namespace joined by
//! the emulator, the embedded model and the three companions in the server namespace (at
//! the companions' default ports on the server side's address), and tokenwire-probe there
//! too, on the server-side device (the client legs) and on lo (the upstream leg). The
//! bench client runs in the client namespace.
//!
//! Each transport setting compared (`--tuning`, `--coalesce-ms`: a [`Variant`]) gets links
//! of its own: the servers take its server-side knobs, the client its client-side ones, and
//! `no-timestamps` is set in both namespaces (docs/wire-efficiency.md).
//!
//! With `reference`, every part of the reference's setup that `run --reference` reproduces
//! (docs/reference.md) is reproduced here too: the link also carries IPv6 and the SSE
//! client reaches its relay over it, the servers' QUIC uses 4-byte connection IDs, 30 s
//! keep-alives and no ECN, the model sends legacy chunks, and the client is the reference's.

use crate::approach::Approach;
use crate::client::tls::Trust;
use crate::client::{ReferenceClient, Targets};
use crate::netem::emulator::{Emulator, EmulatorConfig, EmulatorReport};
use crate::netem::netns::runtime_in;
use crate::netem::profile::{Direction, Profile};
use crate::report::{self, Summary};
use crate::runner::{self, RunConfig};
use crate::wire::{self, WireSummary};
use crate::workload::Job;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokenwire_probe_common::launch::{ProbeLaunch, RunningProbe};
use tokenwire_servers::launch::{self, RelayOptions};
use tokenwire_servers::model::{ModelConfig, OpenAiFormat, Timing};
use tokenwire_servers::spans::SpanSink;
use tokenwire_servers::stack::Stack;
use tokenwire_servers::tuning::{Knob, Tuning};

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    #[error(transparent)]
    Emulator(#[from] crate::netem::emulator::EmulatorError),
    #[error("{0}")]
    Setup(String),
}

pub struct MatrixConfig {
    pub profiles: Vec<Profile>,
    pub directions: Vec<Direction>,
    /// `true` = reuse, `false` = fresh.
    pub modes: Vec<bool>,
    pub jobs: Vec<Job>,
    pub timing: Timing,
    pub seed: u64,
    pub timeout: Duration,
    pub congestion_control: String,
    /// tokenwire-probe; `None` runs without wire figures.
    pub probe_bin: Option<PathBuf>,
    pub work_dir: PathBuf,
    /// The reference's setup instead of tokenwire's default (module comment).
    pub reference: bool,
    /// Transport settings to compare, each on links of its own (docs/wire-efficiency.md);
    /// the first is the one the main tables show.
    pub tunings: Vec<Tuning>,
    /// Coalescing windows of the relays to compare (0: none).
    pub coalesce_ms: Vec<u64>,
}

/// One (tuning, coalescing window) the matrix runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Variant {
    pub tuning: String,
    pub knobs: Vec<&'static str>,
    pub coalesce_ms: u64,
}

impl Variant {
    /// `lean`, `default, coalesce 35 ms`.
    pub fn label(&self) -> String {
        if self.coalesce_ms == 0 {
            self.tuning.clone()
        } else {
            format!("{}, coalesce {} ms", self.tuning, self.coalesce_ms)
        }
    }
}

/// Added delay per token in a relay (model sent it -> relay handed it on), ms.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RelayDelay {
    pub tokens: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// One approach in one (profile, direction, mode).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    /// [`Variant::label`].
    pub variant: String,
    pub profile: String,
    pub direction: Direction,
    pub mode: &'static str,
    pub approach: Approach,
    pub summary: Summary,
    pub wire: Option<WireSummary>,
    /// Gap percentiles (10, 50, 90, 99), ms, for the TBT distribution chart.
    pub gap_percentiles_ms: Vec<f64>,
    pub ttfts_ms: Vec<f64>,
    /// The relay's added delay per token (sse and wt; the raw proxy does not time tokens).
    pub relay_delay: Option<RelayDelay>,
}

/// One (profile, direction): its link's own figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LinkRun {
    pub variant: String,
    pub profile: Profile,
    pub direction: Direction,
    pub emulator: EmulatorReport,
    pub probe_backend: Option<String>,
    pub wire_note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MatrixResults {
    /// In the order they ran; the first is what the main tables show.
    pub variants: Vec<Variant>,
    pub cells: Vec<Cell>,
    pub links: Vec<LinkRun>,
}

impl MatrixConfig {
    /// Every (tuning, coalescing window), tunings outermost.
    pub fn variants(&self) -> Vec<Variant> {
        let default_tuning = [Tuning::standard()];
        let tunings: &[Tuning] = if self.tunings.is_empty() {
            &default_tuning
        } else {
            &self.tunings
        };
        let windows: &[u64] = if self.coalesce_ms.is_empty() {
            &[0]
        } else {
            &self.coalesce_ms
        };
        tunings
            .iter()
            .flat_map(|t| {
                windows.iter().map(move |&w| Variant {
                    tuning: t.name.clone(),
                    knobs: t.knobs.iter().map(|k| k.name()).collect(),
                    coalesce_ms: w,
                })
            })
            .collect()
    }
}

/// Sets `net.ipv4.tcp_timestamps` in a network namespace (fresh per link, so nothing to
/// restore).
fn set_tcp_timestamps(netns: &str, on: bool) -> Result<(), MatrixError> {
    let value = format!("net.ipv4.tcp_timestamps={}", u8::from(on));
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "sysctl", "-qw", &value])
        .output()
        .map_err(|e| MatrixError::Setup(format!("sysctl {value} in {netns}: {e}")))?;
    if !out.status.success() {
        return Err(MatrixError::Setup(format!(
            "sysctl {value} in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn mode_name(reuse: bool) -> &'static str {
    if reuse { "reuse" } else { "fresh" }
}

/// The probe in the server namespace, ready (its ready file says which backend it chose).
fn start_probe(
    bin: &std::path::Path,
    em: &Emulator,
    srv_ns: &str,
    spans: &std::path::Path,
    api: SocketAddr,
) -> Result<RunningProbe, String> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", srv_ns])
        .arg(bin)
        .args(["run", "--quiet", "--iface", &em.server_if, "--iface", "lo"])
        .args(["--listen", &api.to_string(), "--spans"])
        .arg(spans)
        .stdout(Stdio::null());
    ProbeLaunch::new(cmd).start().map_err(|e| e.to_string())
}

/// Runs every cell; `progress` hears one line per finished (profile, direction, mode).
pub fn run(
    cfg: &MatrixConfig,
    mut progress: impl FnMut(&str),
) -> Result<MatrixResults, MatrixError> {
    std::fs::create_dir_all(&cfg.work_dir).map_err(|e| MatrixError::Setup(e.to_string()))?;
    let id = std::sync::Arc::new(
        tokenwire_servers::certs::ensure(&cfg.work_dir.join("certs"))
            .map_err(|e| MatrixError::Setup(format!("certificates: {e}")))?,
    );
    let trust = Trust::Pinned(id.cert_der.clone());
    let variants = cfg.variants();
    let mut out = MatrixResults {
        variants: variants.clone(),
        cells: Vec::new(),
        links: Vec::new(),
    };
    for variant in &variants {
        let tuning =
            Tuning::parse(&variant.tuning).map_err(|e| MatrixError::Setup(e.to_string()))?;
        for &direction in &cfg.directions {
            for profile in &cfg.profiles {
                let link = Link {
                    cfg,
                    id: &id,
                    trust: &trust,
                    variant,
                    tuning: &tuning,
                    direction,
                    profile,
                };
                run_link(&link, &mut out, &mut progress)?;
            }
        }
    }
    Ok(out)
}

/// What one link runs: a setting, a profile, a direction.
struct Link<'a> {
    cfg: &'a MatrixConfig,
    id: &'a std::sync::Arc<tokenwire_servers::certs::Identity>,
    trust: &'a Trust,
    variant: &'a Variant,
    tuning: &'a Tuning,
    direction: Direction,
    profile: &'a Profile,
}

/// One fresh link with its own servers and probe; every mode and approach over it.
fn run_link(
    link: &Link<'_>,
    out: &mut MatrixResults,
    progress: &mut impl FnMut(&str),
) -> Result<(), MatrixError> {
    let Link {
        cfg,
        id,
        trust,
        variant,
        tuning,
        direction,
        profile,
    } = *link;
    let label = variant.label();
    let (up, down) = profile.shapes(direction);
    let em = Emulator::start(&EmulatorConfig {
        up,
        down,
        seed: cfg.seed,
        congestion_control: cfg.congestion_control.clone(),
        server_netns: true,
        ipv6: cfg.reference,
        ..EmulatorConfig::default()
    })?;
    let srv_ns = em
        .server_netns
        .clone()
        .ok_or_else(|| MatrixError::Setup("no server namespace".into()))?;
    if tuning.has(Knob::NoTimestamps) {
        set_tcp_timestamps(&em.netns, false)?;
        set_tcp_timestamps(&srv_ns, false)?;
    }
    let srv_rt = runtime_in(&srv_ns).map_err(|e| MatrixError::Setup(e.to_string()))?;
    let cli_rt = runtime_in(&em.netns).map_err(|e| MatrixError::Setup(e.to_string()))?;
    let spans = cfg.work_dir.join("spans.sock");
    let api: SocketAddr = "127.0.0.1:9464"
        .parse()
        .map_err(|_| MatrixError::Setup("bad API address".into()))?;
    let (mut probe, backend, mut wire_note) = match &cfg.probe_bin {
        Some(bin) => match start_probe(bin, &em, &srv_ns, &spans, api) {
            Ok(p) => {
                let backend = p.ready.backend.clone();
                (Some(p), Some(backend), None)
            }
            Err(e) => (None, None, Some(format!("the probe did not start: {e}"))),
        },
        None => (None, None, Some("no tokenwire-probe binary".into())),
    };
    // The servers, in the server namespace.
    let server = em.server_addr;
    let sse6 = em
        .server_addr6
        .map(|a| SocketAddr::new(a.into(), Approach::Sse.port()));
    let mut model_cfg = ModelConfig {
        timing: cfg.timing.clone(),
        ..ModelConfig::default()
    };
    let mut opts = RelayOptions {
        spans: SpanSink::to_path(&spans).unwrap_or_default(),
        coalesce: Duration::from_millis(variant.coalesce_ms),
        ..RelayOptions::default()
    };
    if cfg.reference {
        model_cfg.openai_format = OpenAiFormat::Legacy;
        opts.quic_cid_len = 4;
        opts.wt_keep_alive = Some(Duration::from_secs(30));
        opts.quic_ecn = false;
    }
    opts.apply_tuning(tuning);
    let idc = id.clone();
    let started = srv_rt.block_on(srv_rt.spawn(async move {
        let grace = Duration::from_secs(2);
        let mut stack = Stack::on(server.into())
            .model(model_cfg)
            .relay(opts)
            .grace(grace)
            .start(&idc)
            .await?;
        if let Some(addr) = sse6 {
            // The SSE client goes over IPv6 then (module comment); the IPv4 one serves on.
            let (opts, sd) = (&stack.relay, stack.shutdown.clone());
            let sse = launch::start_sse(Approach::Sse, addr, &idc, opts, sd, grace).await?;
            stack.companions.insert(Approach::Sse, sse);
        }
        Ok::<_, launch::LaunchError>(stack)
    }));
    let stack = match started {
        Ok(Ok(stack)) => stack,
        Ok(Err(e)) => return Err(MatrixError::Setup(format!("servers: {e}"))),
        Err(e) => return Err(MatrixError::Setup(format!("servers: {e}"))),
    };
    let relay_stats: BTreeMap<Approach, _> = stack
        .companions
        .iter()
        .map(|(a, r)| (*a, r.stats.clone()))
        .collect();
    let targets = Targets {
        addrs: stack.addrs(),
        reference: if cfg.reference {
            ReferenceClient::ALL
        } else {
            ReferenceClient::default()
        },
        tuning: tuning.clone(),
        ..Targets::default()
    };
    let median = if cfg.reference {
        report::Median::MeanOfMiddle
    } else {
        report::Median::NearestRank
    };
    for &reuse in &cfg.modes {
        let rc = RunConfig {
            reuse,
            jobs: cfg.jobs.clone(),
            seed: cfg.seed,
            timeout: cfg.timeout,
            ..RunConfig::new(targets.clone(), trust.clone())
        };
        let before: BTreeMap<Approach, _> = relay_stats
            .iter()
            .map(|(a, stats)| (*a, stats.relay_delay.snapshot()))
            .collect();
        let runs = cli_rt
            .block_on(cli_rt.spawn(async move { runner::run(&rc).await }))
            .map_err(|e| MatrixError::Setup(format!("the bench client: {e}")))?;
        let all: Vec<_> = runs
            .iter()
            .flat_map(|r| r.records.iter().cloned())
            .collect();
        let mut line = format!(
            "{label:<12} {:<14} {:<4} {:<5}",
            profile.name,
            direction.as_str(),
            mode_name(reuse)
        );
        for run in &runs {
            let summary = report::summarise_with(run.approach, &all, run.connections, median);
            let w =
                if probe.is_some() && run.unreachable.is_none() {
                    let r = run.clone();
                    match srv_rt.block_on(srv_rt.spawn(async move {
                        wire::collect(api, &r, Duration::from_secs(15)).await
                    })) {
                        Ok(Ok(mut w)) => {
                            if targets.reference.count_end_frame && run.approach == Approach::Wt {
                                w.add_tokens_per_request(1);
                            }
                            Some(w)
                        }
                        Ok(Err(e)) => {
                            wire_note = Some(e.to_string());
                            None
                        }
                        Err(e) => {
                            wire_note = Some(e.to_string());
                            None
                        }
                    }
                } else {
                    None
                };
            let mut gaps: Vec<f64> = run
                .records
                .iter()
                .filter(|r| r.error.is_none())
                .flat_map(|r| r.gaps.iter().map(|g| g.as_secs_f64() * 1e3))
                .collect();
            gaps.sort_by(f64::total_cmp);
            let mut ttfts: Vec<f64> = run
                .records
                .iter()
                .filter(|r| r.error.is_none())
                .filter_map(|r| r.ttft.map(|t| t.as_secs_f64() * 1e3))
                .collect();
            ttfts.sort_by(f64::total_cmp);
            line.push_str(&format!(
                " | {} TTFT {} B/tok {} ({} failed)",
                run.approach,
                summary
                    .p50_ttft_ms
                    .map_or("-".into(), |t| format!("{t:.0}ms")),
                w.as_ref()
                    .and_then(|w| w.bytes_per_token)
                    .map_or("-".into(), |b| format!("{b:.0}")),
                summary.failed
            ));
            // Each relay runs one approach at a time, so what it timed since
            // this mode began is this cell's (its warm-up request included).
            let relay_delay = relay_stats
                .get(&run.approach)
                .zip(before.get(&run.approach))
                .and_then(|(stats, since)| stats.relay_delay.summary_since(since))
                .map(|d| RelayDelay {
                    tokens: d.count,
                    mean_ms: d.mean_ms,
                    p50_ms: d.p50_ms,
                    p99_ms: d.p99_ms,
                });
            out.cells.push(Cell {
                variant: label.clone(),
                profile: profile.name.clone(),
                direction,
                mode: mode_name(reuse),
                approach: run.approach,
                summary,
                wire: w,
                gap_percentiles_ms: [0.1, 0.5, 0.9, 0.99]
                    .iter()
                    .filter_map(|p| report::percentile(&gaps, *p))
                    .collect(),
                ttfts_ms: ttfts,
                relay_delay,
            });
        }
        progress(&line);
    }
    drop(stack);
    srv_rt.block_on(async { tokio::time::sleep(Duration::from_millis(300)).await });
    if let Some(p) = probe.as_mut() {
        p.stop("TERM");
    }
    out.links.push(LinkRun {
        variant: label.clone(),
        profile: profile.clone(),
        direction,
        emulator: em.report(),
        probe_backend: backend,
        wire_note,
    });
    // Every thread that carried traffic was inside its namespace, or the run is void.
    cli_rt
        .check()
        .and_then(|()| srv_rt.check())
        .map_err(|e| MatrixError::Setup(e.to_string()))?;
    drop(cli_rt);
    drop(srv_rt);
    drop(em);
    Ok(())
}
