//! The Prometheus exposition (text format 0.0.4) on the `prometheus` crate. Two kinds of
//! figures, each kept once:
//!
//! - Aggregates of requests (tokens, requests by outcome, active requests, the per-request
//!   histograms), in the crate's own metric vectors, fed by attribution's events
//!   ([`Metrics::observe`]): a histogram is observed when its request is final.
//! - The capture's state (wire counters, the probe's health, span counts), which the engine
//!   already holds: a custom [`Collector`] reads it at scrape time ([`StateCollector`]).
//!
//! Names and meanings: docs/metrics.md. Labels are bounded (approach, transport, direction,
//! outcome, reason): never a request or a connection. Platform-free.

use crate::attribution::Event;
use crate::flow::Counters;
use crate::health::Health;
use crate::spans::{RejectReason, SpanCounts};
use crate::table::WireKey;
use prometheus::core::{Collector, Desc};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
};
use std::collections::BTreeMap;

pub const WIRE_BYTES_BUCKETS: &[f64] = &[
    1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6, 2e6, 5e6, 1e7,
];
pub const BYTES_PER_TOKEN_BUCKETS: &[f64] = &[
    25.0, 50.0, 75.0, 100.0, 125.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 750.0, 1000.0, 2000.0,
];
pub const PACKETS_PER_TOKEN_BUCKETS: &[f64] =
    &[0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0];
pub const TTFT_BUCKETS: &[f64] = &[
    0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0,
];
/// OpenTelemetry GenAI semantic conventions' advised boundaries for
/// `gen_ai.server.time_to_first_token` (seconds).
pub const GEN_AI_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// ... for `gen_ai.server.time_per_output_token` (seconds).
pub const GEN_AI_TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// ... for `gen_ai.client.token.usage` (tokens).
pub const GEN_AI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
pub const LOOP_LAG_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

#[derive(Debug, thiserror::Error)]
#[error("encoding the metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// The request aggregates, by approach.
pub struct Metrics {
    tokens: IntCounterVec,
    requests: IntCounterVec,
    active: IntGaugeVec,
    wire_bytes: HistogramVec,
    bytes_per_token: HistogramVec,
    packets_per_token: HistogramVec,
    ttft_seconds: HistogramVec,
    /// How late the live probe's loop ran its periodic tick (its other work delays it).
    loop_lag_seconds: Histogram,
    /// OpenTelemetry GenAI names, for span-fed and passive records alike.
    gen_ai_ttft: HistogramVec,
    gen_ai_tpot: HistogramVec,
    gen_ai_tokens: HistogramVec,
}

/// The OpenTelemetry GenAI attributes the gen_ai_* histograms carry, beside `approach`
/// and `source`: bounded (the model name is not one of them).
const GEN_AI_LABELS: &[&str] = &[
    "approach",
    "source",
    "gen_ai_operation_name",
    "gen_ai_provider_name",
];

fn gen_ai_histogram(name: &str, help: &str, buckets: &[f64], extra: &[&str]) -> HistogramVec {
    let labels: Vec<&str> = GEN_AI_LABELS.iter().chain(extra).copied().collect();
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &labels,
    )
    .expect("a valid histogram definition")
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &["approach"],
    )
    .expect("a valid histogram definition")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The definitions are constants of this module: they cannot fail at run time.
        Self {
            tokens: IntCounterVec::new(
                Opts::new(
                    "tokenwire_tokens_total",
                    "Tokens of each request, counted when it ends: as its server reported them (spans), or counted in its answer (passive).",
                ),
                &["approach"],
            )
            .expect("a valid counter definition"),
            requests: IntCounterVec::new(
                Opts::new(
                    "tokenwire_requests_total",
                    "Requests ended, by outcome (ok, aborted, error, unknown).",
                ),
                &["approach", "outcome"],
            )
            .expect("a valid counter definition"),
            active: IntGaugeVec::new(
                Opts::new(
                    "tokenwire_requests_active",
                    "Requests started and not yet ended.",
                ),
                &["approach"],
            )
            .expect("a valid gauge definition"),
            wire_bytes: histogram(
                "tokenwire_request_wire_bytes",
                "IP bytes charged to each finished request, both directions.",
                WIRE_BYTES_BUCKETS,
            ),
            bytes_per_token: histogram(
                "tokenwire_request_bytes_per_token",
                "Each finished request's IP bytes divided by its tokens (requests with tokens only).",
                BYTES_PER_TOKEN_BUCKETS,
            ),
            packets_per_token: histogram(
                "tokenwire_request_packets_per_token",
                "Each finished request's packets divided by its tokens (requests with tokens only).",
                PACKETS_PER_TOKEN_BUCKETS,
            ),
            ttft_seconds: histogram(
                "tokenwire_request_ttft_seconds",
                "Time to first token as the server saw it.",
                TTFT_BUCKETS,
            ),
            loop_lag_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tokenwire_probe_loop_lag_seconds",
                    "How late the live probe's loop ran its 100 ms tick: the time spans, \
                     queries and counter reads kept it busy (live runs only).",
                )
                .buckets(LOOP_LAG_BUCKETS.to_vec()),
            )
            .expect("a valid histogram definition"),
            gen_ai_ttft: gen_ai_histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "Time to generate the first token (OpenTelemetry GenAI): from the server's \
                 spans, or from the request's last packet to the first token's packet.",
                GEN_AI_TTFT_BUCKETS,
                &[],
            ),
            gen_ai_tpot: gen_ai_histogram(
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token after the first (OpenTelemetry GenAI): (last token - \
                 first token) / (tokens - 1), per request with two tokens or more.",
                GEN_AI_TPOT_BUCKETS,
                &[],
            ),
            gen_ai_tokens: gen_ai_histogram(
                "gen_ai_client_token_usage",
                "Tokens per request by type (OpenTelemetry GenAI): output as counted, input \
                 as the server reported it (passive records only).",
                GEN_AI_TOKEN_BUCKETS,
                &["gen_ai_token_type"],
            ),
        }
    }

    /// Records how late the loop ran a tick that was due.
    pub fn observe_loop_lag(&self, lag: std::time::Duration) {
        self.loop_lag_seconds.observe(lag.as_secs_f64());
    }

    /// Feeds one of attribution's events into the aggregates.
    pub fn observe(&self, e: &Event) {
        let observe = |h: &HistogramVec, a: &str, v: f64| {
            // A NaN or infinite figure would poison the sum; there is none to record.
            if v.is_finite() {
                h.with_label_values(&[a]).observe(v);
            }
        };
        match e {
            Event::Started { approach } => {
                let a = approach.as_str();
                self.active.with_label_values(&[a]).inc();
                // Every series of an approach exists from its first request on, so rate()
                // and histogram_quantile() see it start from zero.
                self.tokens.with_label_values(&[a]);
                for h in self.histograms() {
                    h.with_label_values(&[a]);
                }
            }
            Event::Ended {
                approach,
                tokens,
                outcome,
                ttft_seconds,
            } => {
                let a = approach.as_str();
                self.tokens.with_label_values(&[a]).inc_by(*tokens);
                self.requests
                    .with_label_values(&[a, outcome.as_str()])
                    .inc();
                let active = self.active.with_label_values(&[a]);
                if active.get() > 0 {
                    active.dec();
                }
                if let Some(t) = ttft_seconds {
                    observe(&self.ttft_seconds, a, *t);
                }
            }
            Event::Request(r) => {
                let a = r.approach.as_str();
                observe(&self.wire_bytes, a, r.wire_bytes as f64);
                if let Some(b) = r.bytes_per_token {
                    observe(&self.bytes_per_token, a, b);
                }
                if let Some(p) = r.packets_per_token {
                    observe(&self.packets_per_token, a, p);
                }
                self.observe_gen_ai(r);
            }
            Event::Connection(_) => {}
        }
    }

    /// A final record's figures under the OpenTelemetry GenAI names.
    fn observe_gen_ai(&self, r: &crate::attribution::RequestRecord) {
        let (op, provider) = crate::llm::gen_ai_names(&r.approach);
        let base = [r.approach.as_str(), r.source.as_str(), op, provider];
        let observe = |h: &HistogramVec, extra: Option<&str>, v: f64| {
            if v.is_finite() {
                let mut labels: Vec<&str> = base.to_vec();
                labels.extend(extra);
                h.with_label_values(&labels).observe(v);
            }
        };
        if let Some(ms) = r.ttft_ms {
            observe(&self.gen_ai_ttft, None, ms / 1e3);
        }
        if let (Some(first), Some(last)) = (r.first_token_unix_ns, r.last_token_unix_ns())
            && r.tokens > 1
        {
            let per = last.saturating_sub(first) as f64 / 1e9 / (r.tokens - 1) as f64;
            observe(&self.gen_ai_tpot, None, per);
        }
        observe(&self.gen_ai_tokens, Some("output"), r.tokens as f64);
        if let Some(input) = r.passive.as_ref().and_then(|p| p.server_input_tokens) {
            observe(&self.gen_ai_tokens, Some("input"), input as f64);
        }
    }

    fn histograms(&self) -> [&HistogramVec; 4] {
        [
            &self.wire_bytes,
            &self.bytes_per_token,
            &self.packets_per_token,
            &self.ttft_seconds,
        ]
    }

    /// The whole exposition: the aggregates and the state, families in name order.
    pub fn render(&self, state: &State) -> Result<String, MetricsError> {
        let mut families: Vec<MetricFamily> = [&self.tokens, &self.requests]
            .into_iter()
            .flat_map(Collector::collect)
            .chain(self.active.collect())
            .chain(self.histograms().into_iter().flat_map(Collector::collect))
            .chain(self.loop_lag_seconds.collect())
            .chain(
                [&self.gen_ai_ttft, &self.gen_ai_tpot, &self.gen_ai_tokens]
                    .into_iter()
                    .flat_map(Collector::collect),
            )
            .chain(StateCollector::new(state).collect())
            .filter(|f| !f.get_metric().is_empty())
            .collect();
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::with_capacity(16 * 1024);
        prometheus::TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// What the engine holds that a scrape shows as it is.
pub struct State<'a> {
    /// Wire totals by (approach, transport, direction), retired connections included.
    pub wire: &'a BTreeMap<WireKey, Counters>,
    pub spans: &'a SpanCounts,
    pub health: &'a Health,
    pub backend: &'a str,
    pub interfaces: &'a str,
    pub connections: u64,
    pub evictions: u64,
    pub scrape_seconds: f64,
    /// Passive reading's counts.
    pub passive: &'a crate::passive::PassiveCounts,
}

/// Reads [`State`] at scrape time (Prometheus's "custom collector" pattern: the values
/// live in the probe's own structures and are not copied into metric objects).
pub struct StateCollector<'a> {
    state: &'a State<'a>,
}

impl<'a> StateCollector<'a> {
    pub fn new(state: &'a State<'a>) -> Self {
        Self { state }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(n, v)| {
            let mut l = LabelPair::default();
            l.set_name((*n).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_owned());
    f.set_help(help.to_owned());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl Collector for StateCollector<'_> {
    /// Unchecked: the families are built fresh from the state on every scrape.
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let s = self.state;
        let h = s.health;
        let wire = |name: &str, help: &str, f: fn(&Counters) -> u64| {
            let metrics = s
                .wire
                .iter()
                .map(|((approach, transport, direction), c)| {
                    counter(
                        &[
                            ("approach", approach),
                            ("transport", transport),
                            ("direction", direction),
                        ],
                        f(c) as f64,
                    )
                })
                .collect();
            family(name, help, MetricType::COUNTER, metrics)
        };
        let single = |name: &str, help: &str, kind: MetricType, v: f64| {
            let m = match kind {
                MetricType::COUNTER => counter(&[], v),
                _ => gauge(&[], v),
            };
            family(name, help, kind, vec![m])
        };
        use MetricType::{COUNTER, GAUGE};
        vec![
            wire(
                "tokenwire_wire_bytes_total",
                "IP bytes (IP header onward) on the wire.",
                |c| c.ip_bytes,
            ),
            wire(
                "tokenwire_wire_packets_total",
                "Packets on the wire.",
                |c| c.packets,
            ),
            wire(
                "tokenwire_link_bytes_total",
                "Bytes including the link-layer header, as the device carries them.",
                |c| c.link_bytes,
            ),
            family(
                "tokenwire_probe_info",
                "The probe's capture backend and interfaces (always 1).",
                GAUGE,
                vec![gauge(
                    &[
                        ("backend", s.backend),
                        ("interfaces", s.interfaces),
                        ("version", env!("CARGO_PKG_VERSION")),
                    ],
                    1.0,
                )],
            ),
            single(
                "tokenwire_probe_flows_tracked",
                "Flow keys the capture currently holds (the kernel map, for eBPF).",
                GAUGE,
                h.flows_tracked as f64,
            ),
            single(
                "tokenwire_probe_connections",
                "Connections in the probe's flow table.",
                GAUGE,
                s.connections as f64,
            ),
            single(
                "tokenwire_probe_evictions_total",
                "Idle flow keys removed from the capture (their totals are kept).",
                COUNTER,
                s.evictions as f64,
            ),
            single(
                "tokenwire_probe_event_drops_total",
                "Capture events lost because the ring buffer was full (eBPF).",
                COUNTER,
                h.event_drops as f64,
            ),
            single(
                "tokenwire_probe_payload_copy_failures_total",
                "First-payload copies for classification that failed (eBPF).",
                COUNTER,
                h.payload_copy_failures as f64,
            ),
            single(
                "tokenwire_probe_kernel_drops_total",
                "Packets the kernel dropped before libpcap read them (pcap backend).",
                COUNTER,
                h.kernel_drops as f64,
            ),
            family(
                "tokenwire_probe_unattributed_packets_total",
                "Packets counted outside any flow: not IP, malformed, or the flow map was full.",
                COUNTER,
                h.unattributed()
                    .iter()
                    .map(|(reason, c)| counter(&[("reason", reason)], c.packets as f64))
                    .collect(),
            ),
            single(
                "tokenwire_probe_spans_accepted_total",
                "Span messages parsed and applied.",
                COUNTER,
                s.spans.accepted as f64,
            ),
            family(
                "tokenwire_probe_spans_rejected_total",
                "Span messages dropped, by reason.",
                COUNTER,
                RejectReason::all()
                    .map(|r| {
                        let n = s.spans.rejected.get(&r).copied().unwrap_or(0);
                        counter(&[("reason", r.as_str())], n as f64)
                    })
                    .collect(),
            ),
            single(
                "tokenwire_probe_bpf_run_seconds_total",
                "Kernel time in the probe's eBPF programs (0 unless BPF statistics are on).",
                COUNTER,
                h.bpf_run_time_ns as f64 / 1e9,
            ),
            single(
                "tokenwire_probe_bpf_runs_total",
                "Runs of the probe's eBPF programs (0 unless BPF statistics are on).",
                COUNTER,
                h.bpf_run_count as f64,
            ),
            single(
                "tokenwire_probe_passive_drops_total",
                "Passively read packets lost because their ring buffer was full (eBPF): the \
                 requests being read then are marked incomplete.",
                COUNTER,
                h.passive_drops as f64,
            ),
            single(
                "tokenwire_probe_passive_copy_failures_total",
                "Passively read packets whose payload copy failed (eBPF).",
                COUNTER,
                h.passive_copy_failures as f64,
            ),
            single(
                "tokenwire_passive_packets_total",
                "Packets read passively (TCP of the --http-ports).",
                COUNTER,
                s.passive.packets as f64,
            ),
            family(
                "tokenwire_passive_outcomes_total",
                "Passive reading's outcomes: requests recorded, and each reason something \
                 was not read (docs/passive.md).",
                COUNTER,
                crate::passive::OUTCOMES
                    .iter()
                    .map(|o| counter(&[("outcome", o)], s.passive.get(o) as f64))
                    .collect(),
            ),
            single(
                "tokenwire_probe_scrape_duration_seconds",
                "Time this scrape took to collect the figures.",
                GAUGE,
                s.scrape_seconds,
            ),
        ]
    }
}

#[cfg(test)]
mod tests;
