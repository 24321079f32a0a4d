//! The Prometheus text exposition (format 0.0.4) of what the probe knows: wire counters by
//! approach, transport and direction; tokens, requests and per-request histograms by
//! approach; and the probe's own health. Names and meanings: docs/metrics.md. Labels are
//! bounded (approach, transport, direction, outcome, reason): never a request or a
//! connection. Platform-free.

use crate::attribution::{ApproachMetrics, SpanCounts};
use crate::backend::Health;
use crate::flow::Counters;
use std::collections::BTreeMap;
use std::fmt::Write;

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

/// A cumulative histogram with fixed upper bounds.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// Wire totals for one (approach, transport, direction).
pub type WireKey = (String, &'static str, &'static str);

/// Everything one scrape shows.
pub struct Exposition<'a> {
    pub wire: &'a BTreeMap<WireKey, Counters>,
    pub approaches: &'a BTreeMap<String, ApproachMetrics>,
    pub spans: &'a SpanCounts,
    pub health: &'a Health,
    pub backend: &'a str,
    pub interfaces: &'a str,
    pub connections: u64,
    pub evictions: u64,
    pub scrape_seconds: f64,
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, help: &str, rows: Vec<(&str, &Histogram)>) {
    header(out, name, "histogram", help);
    for (approach, h) in rows {
        let a = esc(approach);
        let mut cum = 0;
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{approach=\"{a}\",le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{approach=\"{a}\",le=\"+Inf\"}} {}\n{name}_sum{{approach=\"{a}\"}} {}\n{name}_count{{approach=\"{a}\"}} {}",
            h.count, h.sum, h.count
        );
    }
}

pub fn render(e: &Exposition) -> String {
    let mut out = String::with_capacity(16 * 1024);
    let wire = |out: &mut String, name: &str, help: &str, f: fn(&Counters) -> u64| {
        header(out, name, "counter", help);
        for ((approach, transport, direction), c) in e.wire {
            let _ = writeln!(
                out,
                "{name}{{approach=\"{}\",transport=\"{transport}\",direction=\"{direction}\"}} {}",
                esc(approach),
                f(c)
            );
        }
    };
    wire(
        &mut out,
        "tokenwire_wire_bytes_total",
        "IP bytes (IP header onward) on the wire.",
        |c| c.ip_bytes,
    );
    wire(
        &mut out,
        "tokenwire_wire_packets_total",
        "Packets on the wire.",
        |c| c.packets,
    );
    wire(
        &mut out,
        "tokenwire_link_bytes_total",
        "Bytes including the link-layer header, as the device carries them.",
        |c| c.link_bytes,
    );

    header(
        &mut out,
        "tokenwire_tokens_total",
        "counter",
        "Tokens servers reported sending, counted when each request ends.",
    );
    for (a, m) in e.approaches {
        let _ = writeln!(
            out,
            "tokenwire_tokens_total{{approach=\"{}\"}} {}",
            esc(a),
            m.tokens
        );
    }
    header(
        &mut out,
        "tokenwire_requests_total",
        "counter",
        "Requests ended, by outcome (ok, aborted, error, unknown).",
    );
    for (a, m) in e.approaches {
        for (o, n) in &m.requests {
            let _ = writeln!(
                out,
                "tokenwire_requests_total{{approach=\"{}\",outcome=\"{}\"}} {n}",
                esc(a),
                o.as_str()
            );
        }
    }
    header(
        &mut out,
        "tokenwire_requests_active",
        "gauge",
        "Requests started and not yet ended.",
    );
    for (a, m) in e.approaches {
        let _ = writeln!(
            out,
            "tokenwire_requests_active{{approach=\"{}\"}} {}",
            esc(a),
            m.active
        );
    }
    let rows = |f: fn(&ApproachMetrics) -> &Histogram| {
        e.approaches
            .iter()
            .map(|(a, m)| (a.as_str(), f(m)))
            .collect::<Vec<_>>()
    };
    histogram(
        &mut out,
        "tokenwire_request_wire_bytes",
        "IP bytes charged to each finished request, both directions.",
        rows(|m| &m.wire_bytes),
    );
    histogram(
        &mut out,
        "tokenwire_request_bytes_per_token",
        "Each finished request's IP bytes divided by its tokens (requests with tokens only).",
        rows(|m| &m.bytes_per_token),
    );
    histogram(
        &mut out,
        "tokenwire_request_packets_per_token",
        "Each finished request's packets divided by its tokens (requests with tokens only).",
        rows(|m| &m.packets_per_token),
    );
    histogram(
        &mut out,
        "tokenwire_request_ttft_seconds",
        "Time to first token as the server saw it.",
        rows(|m| &m.ttft_seconds),
    );

    let h = e.health;
    header(
        &mut out,
        "tokenwire_probe_info",
        "gauge",
        "The probe's capture backend and interfaces (always 1).",
    );
    let _ = writeln!(
        out,
        "tokenwire_probe_info{{backend=\"{}\",interfaces=\"{}\",version=\"{}\"}} 1",
        esc(e.backend),
        esc(e.interfaces),
        env!("CARGO_PKG_VERSION")
    );
    let single = |out: &mut String, name: &str, kind: &str, help: &str, v: String| {
        header(out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    };
    single(
        &mut out,
        "tokenwire_probe_flows_tracked",
        "gauge",
        "Flow keys the capture currently holds (the kernel map, for eBPF).",
        h.flows_tracked.to_string(),
    );
    single(
        &mut out,
        "tokenwire_probe_connections",
        "gauge",
        "Connections in the probe's flow table.",
        e.connections.to_string(),
    );
    single(
        &mut out,
        "tokenwire_probe_evictions_total",
        "counter",
        "Idle flow keys removed from the capture (their totals are kept).",
        e.evictions.to_string(),
    );
    single(
        &mut out,
        "tokenwire_probe_event_drops_total",
        "counter",
        "Capture events lost because the ring buffer was full (eBPF).",
        h.event_drops.to_string(),
    );
    single(
        &mut out,
        "tokenwire_probe_payload_copy_failures_total",
        "counter",
        "First-payload copies for classification that failed (eBPF).",
        h.payload_copy_failures.to_string(),
    );
    single(
        &mut out,
        "tokenwire_probe_kernel_drops_total",
        "counter",
        "Packets the kernel dropped before libpcap read them (pcap backend).",
        h.kernel_drops.to_string(),
    );
    header(
        &mut out,
        "tokenwire_probe_unattributed_packets_total",
        "counter",
        "Packets counted outside any flow: not IP, malformed, or the flow map was full.",
    );
    for (reason, c) in [
        ("not_ip", h.not_ip),
        ("malformed", h.malformed),
        ("map_full", h.map_full),
    ] {
        let _ = writeln!(
            out,
            "tokenwire_probe_unattributed_packets_total{{reason=\"{reason}\"}} {}",
            c.packets
        );
    }
    single(
        &mut out,
        "tokenwire_probe_spans_accepted_total",
        "counter",
        "Span messages parsed and applied.",
        e.spans.accepted.to_string(),
    );
    header(
        &mut out,
        "tokenwire_probe_spans_rejected_total",
        "counter",
        "Span messages dropped, by reason.",
    );
    for reason in [
        "too_large",
        "malformed",
        "version",
        "unknown_type",
        "invalid_field",
        "unknown_request",
        "duplicate_id",
        "duplicate_end",
        "too_many_approaches",
    ] {
        let n = e.spans.rejected.get(reason).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "tokenwire_probe_spans_rejected_total{{reason=\"{reason}\"}} {n}"
        );
    }
    single(
        &mut out,
        "tokenwire_probe_bpf_run_seconds_total",
        "counter",
        "Kernel time in the probe's eBPF programs (0 unless BPF statistics are on).",
        format!("{}", h.bpf_run_time_ns as f64 / 1e9),
    );
    single(
        &mut out,
        "tokenwire_probe_bpf_runs_total",
        "counter",
        "Runs of the probe's eBPF programs (0 unless BPF statistics are on).",
        h.bpf_run_count.to_string(),
    );
    single(
        &mut out,
        "tokenwire_probe_scrape_duration_seconds",
        "gauge",
        "Time this scrape took to collect the figures.",
        format!("{}", e.scrape_seconds),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_output() {
        let mut m = ApproachMetrics::default();
        for v in [20.0, 60.0, 60.0, 5000.0, f64::NAN] {
            m.bytes_per_token.observe(v);
        }
        let approaches = BTreeMap::from([("a\"b".to_owned(), m)]);
        let wire = BTreeMap::new();
        let text = render(&Exposition {
            wire: &wire,
            approaches: &approaches,
            spans: &SpanCounts::default(),
            health: &Health::default(),
            backend: "pcap",
            interfaces: "lo",
            connections: 0,
            evictions: 0,
            scrape_seconds: 0.001,
        });
        assert!(
            text.contains(r#"tokenwire_request_bytes_per_token_bucket{approach="a\"b",le="25"} 1"#)
        );
        assert!(
            text.contains(r#"tokenwire_request_bytes_per_token_bucket{approach="a\"b",le="75"} 3"#)
        );
        assert!(
            text.contains(
                r#"tokenwire_request_bytes_per_token_bucket{approach="a\"b",le="+Inf"} 4"#
            )
        );
        assert!(text.contains(r#"tokenwire_request_bytes_per_token_count{approach="a\"b"} 4"#));
    }
}
