//! Accounting from the packets alone (docs/passive.md): the embedded model on its own
//! port, no companion and no spans, streamed by real unmodified clients — curl, and the
//! Python `ollama`, `openai` (with and without `include_usage`) and `httpx` packages from
//! PyPI, each keeping its connection alive as it does by default. The eBPF probe reads the
//! port passively; every request the clients made has one record whose tokens equal what
//! the client received, whose TTFT is within 2 ms of the client's, and whose connection's
//! wire bytes equal tcpdump's. The same capture read by `analyze` (the capture-file path,
//! the same decoders) gives the same records. Runs as root.

mod common;

use common::live::{Probe, Stack, spans_path};
use common::{Tcpdump, require_root};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::ApproachClient;
use tokenwire_probe::packet::LinkType;
use tokenwire_probe::passive::PassiveOptions;
use tokenwire_servers::launch;
use tokenwire_servers::model::{ModelConfig, Timing};
use tokenwire_servers::spans::SpanSink;
use tokio_util::sync::CancellationToken;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Requests per Python client (four of them) and per curl endpoint (two).
const PER_CLIENT: usize = 10;
const PER_CURL: usize = 5;

/// One request as its client saw it.
#[derive(Debug)]
struct Seen {
    client: String,
    addr: SocketAddr,
    /// 1 for the connection's first request, ...
    seq: u32,
    tokens: u64,
    usage: Option<u64>,
    ttft_ms: Option<f64>,
    warmup: bool,
}

/// Tokens (pieces with content) in a streamed answer as curl printed it.
fn curl_tokens(body: &str) -> u64 {
    body.lines()
        .filter_map(|l| {
            let l = l.strip_prefix("data: ").unwrap_or(l);
            serde_json::from_str::<Value>(l).ok()
        })
        .filter(|v| {
            let chat = v["message"]["content"].as_str();
            let openai = v["choices"][0]["delta"]["content"].as_str();
            chat.or(openai).is_some_and(|c| !c.is_empty())
        })
        .count() as u64
}

fn curl(base: &str, path: &str, body: &str) -> Seen {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-N",
            "--fail",
            "-H",
            "Content-Type: application/json",
        ])
        .args(["-w", "\n%{local_ip}:%{local_port}\n", "-d", body])
        .arg(format!("{base}{path}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {path}: {:?}", out);
    let text = String::from_utf8(out.stdout).unwrap();
    let addr = text.trim_end().lines().last().unwrap().parse().unwrap();
    Seen {
        client: format!("curl {path}"),
        addr,
        seq: 1,
        tokens: curl_tokens(&text),
        usage: None,
        ttft_ms: None,
        warmup: false,
    }
}

fn python_clients(base: &str) -> Vec<Seen> {
    let python = Path::new(ROOT).join("target/tools-venv/bin/python");
    let script = Path::new(ROOT).join("probe/tests/clients/llm_clients.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([base, "gemma3:12b", &PER_CLIENT.to_string()])
        .output()
        .expect("the tools venv's python (`cargo xtask setup` makes it)");
    assert!(
        out.status.success(),
        "llm_clients.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut seq: BTreeMap<SocketAddr, u32> = BTreeMap::new();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
            let n = seq.entry(addr).or_default();
            *n += 1;
            Seen {
                client: v["client"].as_str().unwrap().to_owned(),
                addr,
                seq: *n,
                tokens: v["tokens"].as_u64().unwrap(),
                usage: v["usage"].as_u64(),
                ttft_ms: v["ttft_ms"].as_f64(),
                warmup: v["warmup"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

/// The probe's passive records, once `n` are final.
fn final_records(probe: &Probe, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recs: Vec<Value> = probe.json("/api/requests?limit=100000")["requests"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["source"] == "passive")
            .cloned()
            .collect();
        if recs.len() >= n && recs.iter().all(|r| r["final"] == true) {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "{} passive records ({} final) of {n}",
            recs.len(),
            recs.iter().filter(|r| r["final"] == true).count()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clients_beside_an_unmodified_server_are_accounted_from_packets() {
    require_root();
    let shutdown = CancellationToken::new();
    let cfg = ModelConfig {
        timing: Timing {
            speed: 5.0,
            mean_tokens: 40,
            ..Timing::default()
        },
        ..ModelConfig::default()
    };
    let (model, _) = launch::start_model(
        "127.0.0.1:0".parse().unwrap(),
        cfg,
        shutdown.clone(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let port = model.addr.port();
    let base = format!("http://{}", model.addr);
    let tcpdump = Tcpdump::start("lo", &format!("tcp port {port}"), "passive");
    let probe = Probe::start_with(
        "ebpf",
        &spans_path("passive"),
        &[],
        &["--http-ports".into(), port.to_string()],
    );

    let seen: Vec<Seen> = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let chat = r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"Why is the sky blue?"}]}"#;
        let openai = r#"{"model":"gemma3:12b","stream":true,"messages":[{"role":"user","content":"Why is the sky blue?"}]}"#;
        for _ in 0..PER_CURL {
            seen.push(curl(&base, "/api/chat", chat));
            seen.push(curl(&base, "/v1/chat/completions", openai));
        }
        seen.extend(python_clients(&base));
        seen
    })
    .await
    .unwrap();
    let measured = seen.iter().filter(|s| !s.warmup).count();
    assert_eq!(measured, 2 * PER_CURL + 4 * PER_CLIENT);

    let records = final_records(&probe, seen.len());
    assert_eq!(records.len(), seen.len(), "one record per request");
    let by_request: BTreeMap<(String, u64), &Value> = records
        .iter()
        .map(|r| {
            (
                (
                    r["client"].as_str().unwrap().to_owned(),
                    r["seq_on_connection"].as_u64().unwrap(),
                ),
                r,
            )
        })
        .collect();
    let mut ttft_diffs = Vec::new();
    for s in &seen {
        let r = by_request
            .get(&(s.addr.to_string(), u64::from(s.seq)))
            .unwrap_or_else(|| panic!("no record for {s:?}"));
        assert_eq!(r["tokens"].as_u64(), Some(s.tokens), "{s:?}: {r}");
        assert_eq!(r["outcome"], "ok", "{r}");
        assert!(r["passive"].get("incomplete").is_none(), "{r}");
        if let Some(u) = s.usage {
            assert_eq!(
                r["passive"]["server_output_tokens"].as_u64(),
                Some(u),
                "{r}"
            );
        }
        if let (Some(client), false) = (s.ttft_ms, s.warmup) {
            let probe = r["ttft_ms"].as_f64().unwrap();
            ttft_diffs.push((client - probe, s.client.clone()));
        }
    }
    // The client reads the first content after the packet carried it, so the difference
    // is positive, and within 2 ms: every one of them above -2 ms (a probe later than the
    // client is the probe's error), and all but one in twenty under 2 ms (a client thread
    // descheduled between its read and its clock, on this 2-core machine, is the client's
    // delay: seen once in a fresh clone's CI, 3.7 ms among 39 others under 0.5 ms).
    let late = ttft_diffs.iter().filter(|(d, _)| *d > 2.0).count();
    for (d, client) in &ttft_diffs {
        assert!(
            *d > -2.0,
            "{client}: client TTFT - probe TTFT = {d:.3} ms (all: {ttft_diffs:?})"
        );
    }
    assert!(
        late * 20 <= ttft_diffs.len(),
        "{late} of {} requests' client TTFT over 2 ms past the probe's: {ttft_diffs:?}",
        ttft_diffs.len()
    );
    let mut sorted: Vec<f64> = ttft_diffs.iter().map(|(d, _)| *d).collect();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(
        median.abs() <= 1.0,
        "median difference {median:.3} ms: {ttft_diffs:?}"
    );

    // Wire bytes: each connection's records (and its setup, when it served more than one)
    // add up to what tcpdump saw on it.
    let (truth, pcap) = tcpdump.stop_keep(LinkType::Ethernet);
    let mut on_wire: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    for ((_, src, dst), c) in &truth {
        let client = if src.port() == port { dst } else { src };
        *on_wire.entry(*client).or_default() += c.ip_bytes;
    }
    let conns: Vec<Value> = probe.json("/api/connections")["connections"]
        .as_array()
        .unwrap()
        .clone();
    let mut charged: BTreeMap<SocketAddr, u64> = BTreeMap::new();
    for r in &records {
        *charged
            .entry(r["client"].as_str().unwrap().parse().unwrap())
            .or_default() += r["wire_bytes"].as_u64().unwrap();
    }
    for c in &conns {
        let client: SocketAddr = c["client"].as_str().unwrap().parse().unwrap();
        let total = c["total"]["to_server"]["ip_bytes"].as_u64().unwrap()
            + c["total"]["to_client"]["ip_bytes"].as_u64().unwrap();
        assert_eq!(Some(&total), on_wire.get(&client), "connection {c}");
        if c["requests"].as_u64() > Some(1) {
            let setup = c["setup"]["to_server"]["ip_bytes"].as_u64().unwrap()
                + c["setup"]["to_client"]["ip_bytes"].as_u64().unwrap();
            *charged.get_mut(&client).unwrap() += setup;
        }
    }
    assert_eq!(
        charged, on_wire,
        "records (+ setup) against tcpdump, per connection"
    );

    // The capture file, read by `analyze`, gives the same records.
    let file = std::fs::File::open(&pcap).unwrap();
    let offline = tokenwire_probe::analyze::analyze(
        std::io::BufReader::new(file),
        Default::default(),
        Vec::new(),
        PassiveOptions {
            ports: [port].into_iter().collect(),
            ..PassiveOptions::default()
        },
    )
    .unwrap();
    let _ = std::fs::remove_file(&pcap);
    assert_eq!(offline.requests.len(), records.len());
    for o in &offline.requests {
        let live = by_request[&(o.client.to_string(), u64::from(o.seq_on_connection))];
        assert_eq!(Some(o.tokens), live["tokens"].as_u64(), "{live}");
        assert_eq!(Some(o.wire_bytes), live["wire_bytes"].as_u64(), "{live}");
        assert_eq!(Some(o.packets), live["packets"].as_u64(), "{live}");
    }
    let worst = ttft_diffs.iter().map(|(d, _)| d.abs()).fold(0.0, f64::max);
    let mut by_client: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    for (d, client) in &ttft_diffs {
        let e = by_client.entry(client).or_insert((f64::MAX, f64::MIN));
        *e = (e.0.min(*d), e.1.max(*d));
    }
    eprintln!("passive: client TTFT - probe TTFT (ms), min..max per client: {by_client:.3?}");
    eprintln!(
        "passive: {} requests, {} connections, TTFT |client - probe| <= {worst:.3} ms",
        records.len(),
        conns.len()
    );
    drop(probe);
    shutdown.cancel();
}

/// The relays' own upstream legs (relay -> model, plain HTTP) are read passively while
/// their client legs are span-fed: each passive record's tokens equal the span-fed record
/// of the request it served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_upstream_legs_carry_the_span_fed_tokens() {
    require_root();
    let path = spans_path("passive-legs");
    let stack = Stack::start("passive-legs", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start_with(
        "ebpf",
        &path,
        &stack.labels(),
        &["--http-ports".into(), stack.model.port().to_string()],
    );
    let approaches = [Approach::Raw, Approach::Sse, Approach::Wt];
    for a in approaches {
        let mut c = ApproachClient::new(a, &stack.targets(), &stack.trust).unwrap();
        for i in 0..3 {
            let r = c
                .stream("upstream legs", i, true, Duration::from_secs(30))
                .await;
            assert!(r.ok(), "{a:?}: {:?}", r.error);
        }
        c.shutdown().await;
    }
    // The relays keep their upstream connections pooled, so a leg's last record is not
    // final yet; its answer has ended (its tokens are all there).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (spans, legs) = loop {
        let all: Vec<Value> = probe.json("/api/requests?limit=1000")["requests"]
            .as_array()
            .unwrap()
            .clone();
        let mut spans: Vec<Value> = all
            .iter()
            .filter(|r| r["source"] == "spans" && r["final"] == true)
            .cloned()
            .collect();
        let mut legs: Vec<Value> = all
            .iter()
            .filter(|r| r["source"] == "passive" && r["end_unix_ns"].is_u64())
            .cloned()
            .collect();
        if spans.len() >= 9 && legs.len() >= 9 {
            let start = |r: &Value| r["start_unix_ns"].as_u64().unwrap();
            spans.sort_by_key(start);
            legs.sort_by_key(start);
            break (spans, legs);
        }
        assert!(
            Instant::now() < deadline,
            "{} span-fed and {} passive records",
            spans.len(),
            legs.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((spans.len(), legs.len()), (9, 9));
    // One request at a time: the n-th client request and the n-th upstream request pair.
    for (s, l) in spans.iter().zip(&legs) {
        assert!(s["tokens"].as_u64() > Some(0), "{s}");
        assert_eq!(s["tokens"], l["tokens"], "{}: {s}\nleg: {l}", s["approach"]);
        assert!(l["passive"].get("incomplete").is_none(), "{l}");
        assert_eq!(l["server"], stack.model.to_string());
    }
    drop(probe);
    stack.shutdown.cancel();
}
