//! A real browser: headless Chromium (the Debian package) streams through every approach a
//! browser can use (the registry's `browser` ones) from the SSE relay's page, and the probe
//! attributes each of its requests. Runs as root (the probe's eBPF backend).

mod common;

use common::live::{Probe, Stack, spans_path};
use common::require_root;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use tokenwire_bench::approach::Approach;
use tokenwire_bench::browser::{self, BrowserConfig};
use tokenwire_bench::workload;
use tokenwire_servers::model::{Model, ModelConfig, Timing};
use tokenwire_servers::spans::SpanSink;
use tokenwire_servers::stats::Stats;

/// The approaches a browser can stream through.
fn browser_approaches() -> Vec<Approach> {
    Approach::ALL
        .into_iter()
        .filter(|a| a.spec().browser)
        .collect()
}

/// The probe's records of `approach` that started in [from, to], once all are final.
fn records(probe: &Probe, approach: &str, from: u64, to: u64, expected: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let all = probe.json(&format!(
            "/api/requests?limit=100000&approach={approach}&since_unix_ns={from}"
        ));
        let recs: Vec<Value> = all["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["start_unix_ns"].as_u64().unwrap() <= to)
            .cloned()
            .collect();
        if recs.len() >= expected && recs.iter().all(|r| r["final"] == true) {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{approach}: {} records, not all final: {recs:?}",
            recs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The bench binary, built next to the probe's by `cargo test --workspace`.
fn bench_bin() -> PathBuf {
    let bin =
        PathBuf::from(env!("CARGO_BIN_EXE_tokenwire-probe")).with_file_name("tokenwire-bench");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (cargo xtask test)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_streams_every_browser_approach_and_the_probe_attributes_each_request() {
    require_root();
    let path = spans_path("browser");
    // The reference's pace, short answers: the screenshot catches the streams midway.
    let model = ModelConfig {
        timing: Timing {
            mean_tokens: 60,
            ..Timing::default()
        },
        ..ModelConfig::default()
    };
    let stack =
        Stack::start_with("browser", SpanSink::to_path(&path).unwrap(), model.clone()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let page_url = format!("https://127.0.0.1:{}/", stack[Approach::Sse].addr.port());
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-midstream.png");
    let _ = std::fs::remove_file(&shot);

    // The library, in-process: one prompt per approach, its text compared with the model's.
    let prompts = workload::default_prompts();
    let cfg = BrowserConfig {
        page_url: page_url.clone(),
        approaches: browser_approaches(),
        jobs: workload::jobs(&prompts, Some(1), 1).unwrap(),
        reuse: true,
        timeout: Duration::from_secs(60),
        warmup: false,
        chromium: None,
        cert: stack.cert.clone(),
        quic_origins: vec![format!("127.0.0.1:{}", stack[Approach::SseH3].addr.port())],
        probe: Some(probe.api),
        screenshot: Some(shot.clone()),
    };
    let run = browser::run(&cfg).await.expect("the browser run");
    let expected = Model::new(model, Stats::new()).expected_text(&prompts[0], None);
    assert!(run.facts.product.contains("Chrome/"), "{:?}", run.facts);
    for r in &run.runs {
        assert!(
            r.unreachable.is_none(),
            "{}: {:?}",
            r.approach,
            r.unreachable
        );
        assert_eq!(r.records.len(), 1);
        let rec = &r.records[0];
        assert!(rec.ok(), "{}: {:?}", r.approach, rec.error);
        assert!(rec.tokens_counted > 0 && rec.ttft.is_some());
        assert_eq!(rec.text, expected, "{}: the browser's text", r.approach);
        // Each measured request: one record of the probe's, with the server's tokens
        // and the wire bytes of its own connection or stream.
        let recs = records(
            &probe,
            r.approach.label(),
            r.measured_from_unix_ns,
            r.measured_to_unix_ns,
            1,
        );
        assert_eq!(recs.len(), 1, "{}: {recs:?}", r.approach);
        assert_eq!(recs[0]["tokens"].as_u64(), Some(rec.tokens_counted));
        assert!(recs[0]["wire_bytes"].as_u64().unwrap() > rec.app_bytes);
        assert!(recs[0]["packets"].as_u64().unwrap() > rec.tokens_counted);
    }
    let facts = |a: Approach| {
        run.facts
            .approaches
            .iter()
            .find(|f| f.approach == a)
            .unwrap()
    };
    assert_eq!(facts(Approach::Sse).protocols, ["http/1.1"]);
    assert_eq!(facts(Approach::Raw).protocols, ["http/1.1"]);
    assert_eq!(facts(Approach::SseH2).protocols, ["h2"]);
    assert_eq!(facts(Approach::SseH3).protocols, ["h3"]);
    assert_eq!(facts(Approach::Wt).connections, 1);
    // The page itself is a request of its own, never counted as an SSE request's bytes.
    let page = probe.json("/api/requests?limit=100000&approach=page");
    assert!(!page["requests"].as_array().unwrap().is_empty(), "{page}");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        png.len()
    );
    // Taken mid-stream: every panel had tokens and the probe's live figures, none had ended.
    let at = run
        .screenshot
        .as_ref()
        .expect("the page's state at the screenshot");
    for (approach, p) in at {
        assert_eq!(p.state, "streaming", "{approach}: {at:?}");
        assert!(p.tokens > 0 && p.wire, "{approach}: {at:?}");
    }

    // The command, as a user runs it: two prompts, the tables and the wire table.
    let json = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-run.json");
    let (bench, cert, api, doc_path) = (bench_bin(), stack.cert.clone(), probe.api, json.clone());
    let h3 = format!("127.0.0.1:{}", stack[Approach::SseH3].addr.port());
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bench)
            .args([
                "browser", "--limit", "2", "--quiet", "--page", &page_url, "--cert",
            ])
            .arg(&cert)
            .args(["--h3-origin", &h3])
            .args(["--probe", &api.to_string(), "--json"])
            .arg(&doc_path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for a in browser_approaches() {
        let row = format!("| {} |", a.title());
        assert!(stdout.contains(&row), "no {row:?} in:\n{stdout}");
    }
    assert!(stdout.contains("Wire (from tokenwire-probe"), "{stdout}");
    let doc: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(doc["mode"], "fresh");
    for s in doc["summaries"].as_array().unwrap() {
        assert_eq!(s["requests"], 2, "{s}");
        assert_eq!(s["failed"], 0, "{s}");
    }
    let wire = doc["wire"].as_array().unwrap();
    assert_eq!(wire.len(), browser_approaches().len());
    for w in wire {
        assert_eq!(w["requests"], 2, "{w}");
        assert!(w["tokens"].as_u64().unwrap() > 0, "{w}");
        assert!(w["bytes_per_token"].as_f64().unwrap() > 50.0, "{w}");
        assert_eq!(w["incomplete"], false, "{w}");
    }
}
