//! A burst of new flows overflows the eBPF probe's event ring while requests run on a
//! connection that opened inside the burst (its first-packet and first-payload events are
//! among those a full ring drops). A span's cut reads the connection's keys from its
//! addresses, not only from events, so every request is `exact` with bytes equal to
//! tcpdump's between its cuts, and the drops are counted. Runs as root.

mod common;

use common::live::{Probe, Stack, spans_path};
use common::{Tcpdump, client_of, figures, require_root, sum, window};
use std::net::UdpSocket;
use std::time::{Duration, Instant};
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::ApproachClient;
use tokenwire_probe::packet::LinkType;
use tokenwire_servers::spans::SpanSink;

/// New flows in the burst (UDP datagrams to as many ports of another loopback address).
const FLOWS: u32 = 20_000;
const REQUESTS: usize = 10;

fn drops(probe: &Probe) -> u64 {
    let (_, text) = probe.get("/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix("tokenwire_probe_event_drops_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_new_flows_leaves_every_request_exact() {
    require_root();
    let path = spans_path("burst");
    let stack = Stack::start("burst", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let dump = Tcpdump::start(
        "lo",
        &format!("tcp port {}", stack[Approach::Sse].addr.port()),
        "burst",
    );
    let before = drops(&probe);

    let burst = std::thread::spawn(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let started = Instant::now();
        for i in 0..FLOWS {
            let _ = s.send_to(b"x", ("127.0.0.2", 20_000 + i as u16));
        }
        started.elapsed()
    });
    // The connection opens while the ring is full.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut c = ApproachClient::new(Approach::Sse, &stack.targets(), &stack.trust).unwrap();
    for i in 0..REQUESTS {
        let r = c.stream("burst", i, true, Duration::from_secs(30)).await;
        assert!(r.ok(), "{:?}", r.error);
    }
    c.shutdown().await;
    let took = burst.join().unwrap();

    let reqs = probe.json("/api/requests")["requests"].clone();
    let client = client_of(&reqs[0]);
    let (conn, reqs) = probe.settled(client);
    let pkts = dump.stop_packets(LinkType::Ethernet);
    let dropped = drops(&probe) - before;
    eprintln!("burst: {FLOWS} flows in {took:?}, {dropped} events dropped");
    assert!(dropped > 0, "the burst must overflow the event ring");
    assert_eq!(reqs.len(), REQUESTS, "{reqs:#?}");
    let mut cuts: Vec<u64> = reqs
        .iter()
        .map(|r| r["cut_unix_ns"].as_u64().unwrap())
        .collect();
    cuts.push(
        conn["closed_unix_ns"]
            .as_u64()
            .expect("a close span arrived"),
    );
    let mut total = figures(&conn["setup"]);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r["attribution"], "exact", "{r}");
        assert_eq!(r["outcome"], "ok", "{r}");
        assert_eq!(
            figures(r),
            window(&pkts, client, cuts[i], cuts[i + 1]),
            "request {} against tcpdump between its cuts",
            i + 1
        );
        total = sum(total, figures(r));
    }
    total = sum(total, figures(&conn["teardown"]));
    assert_eq!(
        total,
        window(&pkts, client, 0, u64::MAX),
        "the whole connection"
    );
    drop(probe);
    stack.shutdown.cancel();
}
