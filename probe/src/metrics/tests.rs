//! `metrics`'s unit tests.

use super::*;
use crate::attribution::{Quality, RequestRecord};
use crate::spans::Outcome;

fn record(approach: &str, tokens: u64, wire_bytes: u64) -> RequestRecord {
    let per_token = |x: u64| (tokens > 0).then(|| x as f64 / tokens as f64);
    RequestRecord {
        id: "r".into(),
        approach: approach.into(),
        transport: "tls",
        client: "127.0.0.1:1".parse().unwrap(),
        server: "127.0.0.1:2".parse().unwrap(),
        seq_on_connection: 1,
        start_unix_ns: 0,
        cut_unix_ns: 0,
        first_token_unix_ns: None,
        end_unix_ns: None,
        ttft_ms: None,
        tokens,
        app_bytes: 0,
        outcome: Some(Outcome::Ok),
        to_server: Counters::default(),
        to_client: Counters::default(),
        wire_bytes,
        packets: 0,
        bytes_per_token: per_token(wire_bytes),
        packets_per_token: per_token(0),
        attribution: Quality::Exact,
        includes_connection_overhead: false,
        is_final: true,
        source: crate::llm::Source::Spans,
        passive: None,
    }
}

fn scrape(m: &Metrics, wire: &BTreeMap<WireKey, Counters>, spans: &SpanCounts) -> String {
    m.render(&State {
        wire,
        spans,
        health: &Health::default(),
        backend: "pcap",
        passive: &crate::passive::PassiveCounts::default(),
        interfaces: "lo",
        connections: 0,
        evictions: 0,
        scrape_seconds: 0.001,
    })
    .unwrap()
}

#[test]
fn histogram_buckets_are_cumulative_in_the_output() {
    let m = Metrics::new();
    let a = "a.b";
    m.observe(&Event::Started { approach: a.into() });
    // 20, 60, 60 and 5000 bytes per token; a zero-token request has none.
    for (tokens, bytes) in [(1, 20), (1, 60), (2, 120), (1, 5000), (0, 10)] {
        m.observe(&Event::Request(record(a, tokens, bytes)));
    }
    let text = scrape(&m, &BTreeMap::new(), &SpanCounts::default());
    for line in [
        r#"tokenwire_request_bytes_per_token_bucket{approach="a.b",le="25"} 1"#,
        r#"tokenwire_request_bytes_per_token_bucket{approach="a.b",le="75"} 3"#,
        r#"tokenwire_request_bytes_per_token_bucket{approach="a.b",le="+Inf"} 4"#,
        r#"tokenwire_request_bytes_per_token_count{approach="a.b"} 4"#,
        r#"tokenwire_request_wire_bytes_count{approach="a.b"} 5"#,
        r#"tokenwire_tokens_total{approach="a.b"} 0"#,
        r#"tokenwire_requests_active{approach="a.b"} 1"#,
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
    }
}

#[test]
fn loop_lag_is_a_histogram_in_seconds() {
    let m = Metrics::new();
    let text = scrape(&m, &BTreeMap::new(), &SpanCounts::default());
    assert!(
        text.contains("tokenwire_probe_loop_lag_seconds_count 0\n"),
        "{text}"
    );
    m.observe_loop_lag(std::time::Duration::from_micros(300));
    m.observe_loop_lag(std::time::Duration::from_millis(30));
    let text = scrape(&m, &BTreeMap::new(), &SpanCounts::default());
    for line in [
        r#"tokenwire_probe_loop_lag_seconds_bucket{le="0.00025"} 0"#,
        r#"tokenwire_probe_loop_lag_seconds_bucket{le="0.0005"} 1"#,
        r#"tokenwire_probe_loop_lag_seconds_bucket{le="0.025"} 1"#,
        r#"tokenwire_probe_loop_lag_seconds_bucket{le="0.05"} 2"#,
        "tokenwire_probe_loop_lag_seconds_count 2",
    ] {
        assert!(text.contains(&format!("{line}\n")), "{line} in\n{text}");
    }
}

#[test]
fn state_is_read_at_scrape_time_and_every_reason_is_listed() {
    let m = Metrics::new();
    let mut wire = BTreeMap::new();
    wire.insert(
        ("sse".to_owned(), "tls", "to_server"),
        Counters {
            packets: 3,
            ip_bytes: 300,
            link_bytes: 342,
        },
    );
    let mut spans = SpanCounts::default();
    spans.reject(RejectReason::DuplicateEnd);
    let text = scrape(&m, &wire, &spans);
    assert!(text.contains(
        "tokenwire_wire_bytes_total{approach=\"sse\",transport=\"tls\",direction=\"to_server\"} 300\n"
    ));
    assert!(text.contains("tokenwire_probe_spans_rejected_total{reason=\"duplicate_end\"} 1\n"));
    for r in RejectReason::all() {
        assert!(text.contains(&format!(
            "tokenwire_probe_spans_rejected_total{{reason=\"{}\"}}",
            r.as_str()
        )));
    }
    // No requests yet: no request series (and no empty family that would fail encoding).
    assert!(!text.contains("tokenwire_tokens_total{"));
    assert!(text.contains("tokenwire_probe_info{backend=\"pcap\",interfaces=\"lo\""));
}
