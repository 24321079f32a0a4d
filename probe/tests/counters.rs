//! Counter semantics against a real Prometheus: while 1,000 TLS connections are opened to
//! the SSE relay (each scraped as plain `tcp` between its TCP handshake and its
//! ClientHello, then classified `tls`), Prometheus scrapes the probe every 200 ms, and no
//! tokenwire counter ever resets or vanishes (docs/metrics.md, "Counters"). Runs as root.

mod common;

use common::live::{Probe, Stack, spans_path};
use common::prometheus::Prometheus;
use common::require_root;
use rustls::pki_types::ServerName;
use std::time::{Duration, Instant};
use tokenwire_bench::approach::Approach;
use tokenwire_servers::spans::SpanSink;

const CONNECTIONS: usize = 1_000;
const AT_ONCE: usize = 50;
/// Counters and the histograms' counter parts.
const COUNTERS: &str = r#"{__name__=~"tokenwire_.+(_total|_bucket|_count|_sum)"}"#;

fn value(r: &serde_json::Value) -> f64 {
    r["value"][1].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_counter_resets_or_vanishes_across_a_thousand_tls_handshakes() {
    require_root();
    let path = spans_path("counters");
    let stack = Stack::start("counters", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let prom = Prometheus::start(probe.api, "200ms");
    let connector = tokio_rustls::TlsConnector::from(stack.trust.client_config().unwrap());
    let started = Instant::now();
    let mut done = 0;
    while done < CONNECTIONS {
        let mut batch = Vec::new();
        for _ in 0..AT_ONCE.min(CONNECTIONS - done) {
            let (connector, addr) = (connector.clone(), stack[Approach::Sse].addr);
            batch.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                // Long enough for a scrape to see the connection before its ClientHello.
                tokio::time::sleep(Duration::from_millis(250)).await;
                let name = ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                drop(tls);
            }));
        }
        done += batch.len();
        for t in batch {
            t.await.unwrap();
        }
    }
    // The last scrapes, after the connections closed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = format!("{}s", started.elapsed().as_secs() + 5);
    let series = prom.query(&format!("last_over_time({COUNTERS}[{window}])"));
    assert!(series.len() > 20, "{} series", series.len());
    // resets() drops the metric name: one query per name keeps label sets apart.
    let names = prom.query(&format!("count by (__name__) ({COUNTERS})"));
    assert!(names.len() > 10, "{names:#?}");
    for n in &names {
        let name = n["metric"]["__name__"].as_str().unwrap();
        let resets = prom.query(&format!("resets({name}[{window}]) > 0"));
        assert!(resets.is_empty(), "{name} went down: {resets:#?}");
    }
    let now = prom.query(COUNTERS);
    assert_eq!(now.len(), series.len(), "every series seen is still there");
    // The scrapes did catch connections before their ClientHello: the rule was exercised.
    let early = prom.query(r#"tokenwire_wire_bytes_total{approach="sse",transport="tcp"}"#);
    assert!(early.iter().any(|r| value(r) > 0.0), "{early:#?}");
    let tls = prom.query(
        r#"sum(tokenwire_wire_packets_total{approach="sse",transport="tls",direction="to_server"})"#,
    );
    assert!(value(&tls[0]) >= CONNECTIONS as f64, "{tls:#?}");
}
