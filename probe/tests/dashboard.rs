//! The shipped Grafana dashboard against a real Prometheus (Debian package prometheus) that
//! scrapes a real probe with the shipped grafana/prometheus.yml (its target pointed at the
//! test's probe): while every approach streams, each panel's PromQL returns data (each
//! approach of the registry with its own series), and
//! live bytes per token agrees with the probe's per-request records. Runs as root.

mod common;

use common::live::{Probe, Stack, spans_path};
use common::prometheus::Prometheus;
use common::require_root;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::ApproachClient;
use tokenwire_servers::spans::SpanSink;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every panel's queries, with Grafana's variables as the dashboard's "All" and a rate
/// window of `window`.
fn panel_queries(window: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("grafana/dashboards/tokenwire.json"))
        .expect("the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap().to_owned();
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "panel {title:?} has a unit"
        );
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$node", ".*")
                .replace("$approach", ".*")
                .replace("$transport", ".*")
                .replace("$__rate_interval", window);
            out.push((title.clone(), expr));
        }
    }
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(vars, ["node", "approach", "transport"]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_has_data_and_live_bytes_per_token_matches_the_records() {
    require_root();
    let path = spans_path("dashboard");
    let stack = Stack::start("dashboard", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let prom = Prometheus::start(probe.api, "1s");

    // Stream on every approach, each over one kept-alive connection, until told.
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for approach in Approach::ALL {
        let mut c = ApproachClient::new(approach, &stack.targets(), &stack.trust).unwrap();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = c
                    .stream("dashboard", i, true, Duration::from_secs(30))
                    .await;
                assert!(r.ok(), "{approach}: {:?}", r.error);
                i += 1;
            }
            c.shutdown().await;
            i
        }));
    }
    tokio::time::sleep(Duration::from_secs(20)).await;

    // During the run: every panel's every query returns data, and the values are numbers.
    for (title, expr) in panel_queries("10s") {
        let result = prom.query(&expr);
        assert!(!result.is_empty(), "panel {title:?}: no data for {expr}");
        for r in &result {
            let v: f64 = r["value"][1].as_str().unwrap().parse().unwrap();
            assert!(!v.is_nan(), "panel {title:?}: NaN from {expr}: {r}");
        }
    }
    let (by_approach, ttft): (BTreeMap<String, f64>, BTreeMap<String, f64>) = {
        let get = |expr: &str| {
            prom.query(expr)
                .iter()
                .map(|r| {
                    (
                        r["metric"]["approach"].as_str().unwrap().to_owned(),
                        r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
                    )
                })
                .collect::<BTreeMap<_, _>>()
        };
        (
            get(&panel_queries("10s")[0].1),
            get(
                "histogram_quantile(0.5, sum by (approach, le) (rate(tokenwire_request_ttft_seconds_bucket[10s])))",
            ),
        )
    };
    // Every approach of the registry has its series: a new approach whose companion sends
    // no spans, or whose label the probe does not know, fails here.
    let labels: Vec<&str> = Approach::ALL.iter().map(|a| a.label()).collect();
    assert_eq!(
        by_approach.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut l = labels.clone();
            l.sort();
            l
        },
        "{by_approach:?}"
    );
    for (a, t) in &ttft {
        // The stack's model: 250 ms / speed 20 = 12.5 ms to the first token.
        assert!(*t > 0.005 && *t < 0.2, "{a}: TTFT p50 {t}");
    }

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        assert!(t.await.unwrap() > 10);
    }
    // Let the last requests settle and be scraped, then compare over the whole run.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let records = probe.json("/api/requests?limit=100000");
    let mut wire: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for r in records["requests"].as_array().unwrap() {
        let e = wire
            .entry(r["approach"].as_str().unwrap().to_owned())
            .or_default();
        e.0 += r["wire_bytes"].as_f64().unwrap();
        e.1 += r["tokens"].as_f64().unwrap();
    }
    let live = panel_queries("2m")[0].1.clone();
    let whole: BTreeMap<String, f64> = prom
        .query(&live)
        .iter()
        .map(|r| {
            (
                r["metric"]["approach"].as_str().unwrap().to_owned(),
                r["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect();
    for (approach, (bytes, tokens)) in &wire {
        let records_bpt = bytes / tokens;
        let dash_bpt = whole[approach];
        let ratio = dash_bpt / records_bpt;
        eprintln!(
            "{approach}: dashboard {dash_bpt:.1} B/tok, records {records_bpt:.1} B/tok ({ratio:.3})"
        );
        assert!(
            (0.9..=1.1).contains(&ratio),
            "{approach}: live {dash_bpt:.1} B/tok vs records {records_bpt:.1}"
        );
    }
    // Ordering as in the reference: raw > sse > wt.
    assert!(wire["raw_api"].0 / wire["raw_api"].1 > wire["sse"].0 / wire["sse"].1);
    assert!(wire["sse"].0 / wire["sse"].1 > wire["webtransport"].0 / wire["webtransport"].1);
}
