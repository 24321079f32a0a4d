//! Load and abuse, bounded in time, on loopback, each asserting that nothing is lost:
//! 200,000 span messages from 8 senders while traffic flows, 100,000 distinct flows
//! through a small flow map on each backend, and hundreds of concurrent streams (100 on
//! one WebTransport session), each with one complete record. Runs as root.

mod common;

use common::live::{Probe, Stack, spans_path, wt_stream_together};
use common::{Tcpdump, isolated, require_root};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::ApproachClient;
use tokenwire_probe::packet::LinkType;
use tokenwire_servers::spans::SpanSink;

/// A sample's value from an exposition.
fn sample(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64)
        .sum()
}

const SENDERS: usize = 8;
const PER_SENDER: usize = 25_000;

/// One sender's messages: start/end pairs on connections of its own, and every kind of
/// bad message.
fn messages(sender: usize) -> Vec<String> {
    (0..PER_SENDER)
        .map(|i| {
            let id = format!("f{sender}-{}", i / 2);
            let client = format!("127.0.{}.{}:{}", sender + 1, 1 + i % 200, 1024 + i / 400);
            match i % 10 {
                7 => "garbage".to_owned(),
                8 => format!(r#"{{"v":1,"type":"end","id":"nobody-{sender}-{i}","time_unix_ns":1,"tokens":1,"app_bytes":1,"outcome":"ok"}}"#),
                _ if i % 2 == 0 => format!(
                    r#"{{"v":1,"type":"start","id":"{id}","approach":"flood","transport":"tcp","client":"{client}","server":"127.0.0.1:9","time_unix_ns":1}}"#
                ),
                _ => format!(
                    r#"{{"v":1,"type":"end","id":"{id}","time_unix_ns":2,"tokens":3,"app_bytes":30,"outcome":"ok"}}"#
                ),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_spans_from_eight_senders_while_traffic_flows() {
    require_root();
    let path = spans_path("flood");
    // The servers send no spans here: every message the probe sees is one of ours.
    let stack = Stack::start("flood", SpanSink::disabled()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let dump = Tcpdump::start(
        "lo",
        &format!("port {}", stack[Approach::Sse].addr.port()),
        "flood",
    );
    let started = Instant::now();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            let path = path.clone();
            std::thread::spawn(move || {
                let tx = UnixDatagram::unbound().unwrap();
                for m in messages(s) {
                    tx.send_to(m.as_bytes(), &path).unwrap();
                }
            })
        })
        .collect();
    let mut c = ApproachClient::new(Approach::Sse, &stack.targets(), &stack.trust).unwrap();
    let mut requests = 0;
    while !senders.iter().all(|s| s.is_finished()) || requests < 3 {
        let r = c
            .stream("under load", requests, true, Duration::from_secs(30))
            .await;
        assert!(r.ok(), "{:?}", r.error);
        requests += 1;
    }
    for s in senders {
        s.join().unwrap();
    }
    c.shutdown().await;
    let sent = (SENDERS * PER_SENDER) as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let (_, m) = probe.get("/metrics");
        let seen = sample(&m, "tokenwire_probe_spans_accepted_total")
            + sample(&m, "tokenwire_probe_spans_rejected_total{");
        if seen >= sent || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let accepted = sample(&metrics, "tokenwire_probe_spans_accepted_total");
    let rejected = sample(&metrics, "tokenwire_probe_spans_rejected_total{");
    eprintln!(
        "{sent} spans in {:.1} s: {accepted} accepted, {rejected} rejected; {requests} SSE requests",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(accepted + rejected, sent, "every span accepted or counted");
    assert_eq!(
        sample(
            &metrics,
            "tokenwire_probe_spans_rejected_total{reason=\"malformed\"}"
        ),
        sent / 10
    );
    assert!(accepted >= sent / 2, "{accepted}");
    // The kernel's counts of the real traffic still equal tcpdump's.
    let truth = dump.stop(LinkType::Ethernet);
    let flows: Value = probe.json("/api/flows");
    let mut counted = 0;
    for f in flows["flows"].as_array().unwrap() {
        let server: SocketAddr = f["server"].as_str().unwrap().parse().unwrap();
        if server != stack[Approach::Sse].addr {
            continue;
        }
        let client: SocketAddr = f["client"].as_str().unwrap().parse().unwrap();
        let (src, dst) = match f["direction"].as_str().unwrap() {
            "to_server" => (client, server),
            _ => (server, client),
        };
        let t = truth[&(6, src, dst)];
        assert_eq!(
            (
                f["packets"].as_u64().unwrap(),
                f["ip_bytes"].as_u64().unwrap()
            ),
            (t.packets, t.ip_bytes),
            "{src} -> {dst}"
        );
        counted += 1;
    }
    assert_eq!(counted, truth.len(), "every direction tcpdump saw");
}

const WAVES: u16 = 10;
const PER_WAVE: u16 = 10_000;
const MAX_FLOWS: u32 = 16_384;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// 100,000 UDP flows (distinct source address and port), in waves of 10,000 with pauses
/// longer than the idle timeout: the probe must evict each wave's keys to take the next
/// (its map holds 16,384), count every eviction, keep every packet, and stay flat in memory.
/// The flow tests run one at a time: each backend would see the other's traffic on lo.
/// So does the many-streams test: every eBPF probe on lo sees a wave's 10,000 new keys,
/// and a ring buffer full of their events drops the events of the streams' connections
/// (the probe then learns their keys at its next counter read, after some cuts).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn hundred_thousand_flows(backend: &str) {
    require_root();
    let _alone = ONE_AT_A_TIME.blocking_lock();
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = sink.local_addr().unwrap().port();
    let label = format!("{port}=flows");
    let args = isolated(&format!("flows-{backend}"));
    let extra: Vec<String> = [
        "--max-flows",
        &MAX_FLOWS.to_string(),
        "--idle-timeout",
        "1",
        "--closed-timeout",
        "1",
        "--filter",
        &format!("udp port {port}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let extra: Vec<String> = if backend == "pcap" {
        extra
    } else {
        extra[..6].to_vec()
    };
    let probe = Probe::start_with(backend, std::path::Path::new(&args[3]), &[label], &extra);
    let payload = [7u8; 40];
    let mut rss = Vec::new();
    for wave in 0..WAVES {
        for i in 0..PER_WAVE {
            // 127.1.<wave>.<i / 250 + 1>: 40 addresses x 250 ports per wave.
            let ip = Ipv4Addr::new(127, 1, wave as u8, (i / 250 + 1) as u8);
            let s = UdpSocket::bind((ip, 20_000 + i % 250)).unwrap();
            s.send_to(&payload, ("127.0.0.1", port)).unwrap();
        }
        // Idle for longer than the timeout and the refresh tick: the wave is evicted.
        std::thread::sleep(Duration::from_millis(2_500));
        let (_, m) = probe.get("/metrics");
        rss.push(rss_kib(probe.pid()));
        eprintln!(
            "{backend} wave {wave}: evictions {} tracked {} rss {} KiB",
            sample(&m, "tokenwire_probe_evictions_total"),
            sample(&m, "tokenwire_probe_flows_tracked"),
            rss[rss.len() - 1]
        );
    }
    let (_, m) = probe.get("/metrics");
    let total = u64::from(WAVES) * u64::from(PER_WAVE);
    // UDP only: the eBPF probe sees every test's traffic on lo, and another test's TCP
    // connection may have the sink's port number as its ephemeral port.
    let packets = sample(
        &m,
        "tokenwire_wire_packets_total{approach=\"flows\",transport=\"udp\"",
    );
    let bytes = sample(
        &m,
        "tokenwire_wire_bytes_total{approach=\"flows\",transport=\"udp\"",
    );
    assert_eq!(packets, total, "every datagram counted");
    assert_eq!(bytes, total * (20 + 8 + payload.len() as u64));
    assert_eq!(
        sample(
            &m,
            "tokenwire_probe_unattributed_packets_total{reason=\"map_full\"}"
        ),
        0
    );
    let evictions = sample(&m, "tokenwire_probe_evictions_total");
    assert!(
        evictions >= total - u64::from(PER_WAVE),
        "evictions {evictions}"
    );
    assert!(sample(&m, "tokenwire_probe_flows_tracked") <= u64::from(MAX_FLOWS));
    // Memory: what the probe holds is bounded by the flow map, not by the flows seen: the
    // table keeps at most about a wave's connections, whatever came before.
    let conns = sample(&m, "tokenwire_probe_connections");
    assert!(
        conns <= u64::from(PER_WAVE),
        "{conns} connections still in the table"
    );
    // A backstop on the process as a whole: the last half of the waves peaks within 32 MiB of
    // the first (the libpcap ring and the allocators take memory in large steps, so the
    // connection bound above is the precise check).
    let half = rss.len() / 2;
    let first = rss[..half].iter().max().copied().unwrap_or(0);
    let second = rss[half..].iter().max().copied().unwrap_or(0);
    assert!(second <= first + 32 * 1024, "RSS by wave, KiB: {rss:?}");
}

#[test]
fn a_hundred_thousand_flows_through_ebpf_lose_nothing_and_stay_bounded() {
    hundred_thousand_flows("ebpf");
}

#[test]
fn a_hundred_thousand_flows_through_pcap_lose_nothing_and_stay_bounded() {
    hundred_thousand_flows("pcap");
}

/// Hundreds of concurrent streams on each approach, each on a kept-alive connection of
/// its user's, and 100 concurrent streams on one WebTransport session: every request gets
/// exactly one record, final, with its tokens (the bench's count) and its bytes; no span
/// is refused; on the shared session the requests, setup and teardown add up to the
/// connection's total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_concurrent_streams_each_get_one_complete_record() {
    require_root();
    let _alone = ONE_AT_A_TIME.lock().await;
    const USERS: usize = 200;
    let path = spans_path("many");
    let stack = Stack::start("many", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let cfg = tokenwire_bench::runner::RunConfig {
        reuse: true,
        jobs: tokenwire_bench::workload::jobs(
            &tokenwire_bench::workload::default_prompts(),
            None,
            USERS / 10,
        )
        .unwrap(),
        concurrency: USERS,
        warmup: false,
        ..tokenwire_bench::runner::RunConfig::new(stack.targets(), stack.trust.clone())
    };
    let runs = tokenwire_bench::runner::run(&cfg).await;

    // 100 streams at once on one WebTransport session.
    let mut client =
        tokenwire_bench::client::wt::WtClient::new(&stack[Approach::Wt].url, &stack.trust).unwrap();
    let session = client.session(true).await.unwrap();
    // All open before any prompt goes: the hundred run at once even on a loaded machine.
    let together = std::sync::Arc::new(tokio::sync::Barrier::new(100));
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (session, together) = (session.clone(), together.clone());
        streams.spawn(async move {
            let prompt = format!("stream {i} of a hundred on one session");
            wt_stream_together(&session, &prompt, &together).await
        });
    }
    while let Some(n) = streams.join_next().await {
        assert!(n.unwrap() > 0);
    }
    client.shutdown().await;

    // Every connection closed: wait for every record to be final.
    let expected = Approach::ALL.len() * USERS + 100;
    let deadline = Instant::now() + Duration::from_secs(30);
    let records: Vec<Value> = loop {
        let r = probe.json(&format!("/api/requests?limit={}", expected + 10))["requests"]
            .as_array()
            .unwrap()
            .clone();
        if r.len() >= expected && r.iter().all(|x| x["final"] == true) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {expected} records, {} final",
            r.len(),
            r.iter().filter(|x| x["final"] == true).count()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(records.len(), expected);
    // Each run's records are those that started in its window; the shared session's, the
    // WebTransport records after the bench's last. (Clients share UDP sockets, a hundred
    // users to a socket, so a client address does not tell a user from the shared
    // session.)
    let started = |r: &Value| r["start_unix_ns"].as_u64().unwrap();
    let wt_end = runs
        .iter()
        .find(|r| r.approach == Approach::Wt)
        .unwrap()
        .measured_to_unix_ns;
    for run in &runs {
        let name = run.approach.label();
        assert!(
            run.records.iter().all(|r| r.error.is_none()),
            "{name} failed"
        );
        let bench_tokens: u64 = run.records.iter().map(|r| r.tokens()).sum();
        let mine: Vec<&Value> = records
            .iter()
            .filter(|r| {
                r["approach"] == name
                    && (run.measured_from_unix_ns..=run.measured_to_unix_ns).contains(&started(r))
            })
            .collect();
        assert_eq!(mine.len(), USERS, "{name}");
        for r in &mine {
            assert_eq!(r["outcome"], "ok", "{r:#}");
            assert!(r["tokens"].as_u64().unwrap() > 0, "{r:#}");
            assert!(r["wire_bytes"].as_u64().unwrap() > 0, "{r:#}");
        }
        let probe_tokens: u64 = mine.iter().map(|r| r["tokens"].as_u64().unwrap()).sum();
        assert_eq!(probe_tokens, bench_tokens, "{name}: tokens");
    }
    // The shared session: its 100 requests, setup and teardown are its whole total.
    let shared: Vec<&Value> = records
        .iter()
        .filter(|r| r["approach"] == "webtransport" && started(r) > wt_end)
        .collect();
    assert_eq!(shared.len(), 100);
    let client_addr = shared[0]["client"].as_str().unwrap().to_owned();
    assert!(shared.iter().all(|r| r["client"] == client_addr.as_str()));
    assert!(shared.iter().all(|r| r["attribution"] == "shared"));
    let (conn, reqs) = probe.settled(client_addr.parse().unwrap());
    assert_eq!(reqs.len(), 100);
    let bytes = |v: &Value| {
        v["to_server"]["ip_bytes"].as_u64().unwrap() + v["to_client"]["ip_bytes"].as_u64().unwrap()
    };
    let parts: u64 =
        bytes(&conn["setup"]) + bytes(&conn["teardown"]) + reqs.iter().map(&bytes).sum::<u64>();
    assert_eq!(parts, bytes(&conn["total"]), "{conn:#}");
    let (_, m) = probe.get("/metrics");
    assert_eq!(
        sample(&m, "tokenwire_probe_spans_rejected_total"),
        0,
        "no span refused"
    );
}
