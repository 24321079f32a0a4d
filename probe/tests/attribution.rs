//! Per-request attribution end to end: the real probe binary (eBPF or libpcap on lo), the
//! real companions sending real spans over the Unix socket, the real bench client, and
//! tcpdump as the ground truth, cut at the probe's own cut times. Runs as root.

mod common;

use common::live::{Probe, Stack, spans_path, wt_stream};
use common::{Tcpdump, client_of, figures, promtool_check, require_root, sum, window};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::ApproachClient;
use tokenwire_probe::packet::LinkType;
use tokenwire_servers::spans::SpanSink;

async fn keepalive_split(backend: &str) {
    require_root();
    let path = spans_path(&format!("keepalive-{backend}"));
    let stack = Stack::start(backend, SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start(backend, &path, &stack.labels());
    let dump = Tcpdump::start(
        "lo",
        &format!("port {}", stack[Approach::Sse].addr.port()),
        backend,
    );
    let mut c = ApproachClient::new(Approach::Sse, &stack.targets(), &stack.trust).unwrap();
    for i in 0..3 {
        let r = c.stream("split me", i, true, Duration::from_secs(30)).await;
        assert!(r.ok(), "{:?}", r.error);
    }
    c.shutdown().await;
    let reqs = probe.json("/api/requests")["requests"].clone();
    let client = client_of(&reqs[0]);
    let (conn, reqs) = probe.settled(client);
    let pkts = dump.stop_packets(LinkType::Ethernet);
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
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
    if backend == "ebpf" {
        assert_eq!(
            total,
            window(&pkts, client, 0, cuts[0]),
            "setup (handshakes) = tcpdump before the first cut"
        );
    }
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r["attribution"], "exact");
        assert_eq!(r["transport"], "tls");
        assert_eq!(r["outcome"], "ok");
        assert_eq!(r["final"], true);
        assert_eq!(r["includes_connection_overhead"], false);
        assert!(r["tokens"].as_u64().unwrap() > 0);
        let truth = window(&pkts, client, cuts[i], cuts[i + 1]);
        if backend == "ebpf" && figures(r) != truth {
            for p in pkts.iter().filter(|p| {
                (p.src == client || p.dst == client)
                    && cuts.iter().any(|c| p.ts_ns.abs_diff(*c) < 5_000_000)
            }) {
                eprintln!(
                    "{} {} -> {} {} (cuts {:?})",
                    p.ts_ns, p.src, p.dst, p.ip_bytes, cuts
                );
            }
            panic!(
                "request {} against tcpdump: {:?} != {:?}",
                i + 1,
                figures(r),
                truth
            );
        }
        total = sum(total, figures(r));
    }
    total = sum(total, figures(&conn["teardown"]));
    let everything = window(&pkts, client, 0, u64::MAX);
    assert_eq!(total, everything, "requests + setup + teardown = tcpdump");
    assert_eq!(figures(&conn["total"]), everything);
    assert!(everything[0] > 0 && everything[2] > 0);
    // Flows and metrics agree with the records.
    let (status, metrics) = probe.get("/metrics");
    assert_eq!(status, 200);
    assert!(metrics.contains("tokenwire_request_bytes_per_token_count{approach=\"sse\"} 3"));
    promtool_check(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_split_exactly_at_the_cuts_ebpf() {
    keepalive_split("ebpf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_requests_sum_exactly_pcap() {
    keepalive_split("pcap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_connections_carry_their_setup_and_teardown() {
    require_root();
    let path = spans_path("fresh");
    let stack = Stack::start("fresh", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let dump = Tcpdump::start(
        "lo",
        &format!("port {}", stack[Approach::Raw].addr.port()),
        "fresh",
    );
    let mut c = ApproachClient::new(Approach::Raw, &stack.targets(), &stack.trust).unwrap();
    for i in 0..2 {
        let r = c.stream("fresh", i, false, Duration::from_secs(30)).await;
        assert!(r.ok(), "{:?}", r.error);
    }
    c.shutdown().await;
    let reqs = probe.json("/api/requests")["requests"].clone();
    let clients: Vec<SocketAddr> = reqs.as_array().unwrap().iter().map(client_of).collect();
    assert_eq!(clients.len(), 2);
    assert_ne!(clients[0], clients[1], "fresh mode opens a connection each");
    let settled: Vec<(Value, Vec<Value>)> = clients.iter().map(|c| probe.settled(*c)).collect();
    let pkts = dump.stop_packets(LinkType::Ethernet);
    for (client, (conn, reqs)) in clients.iter().zip(&settled) {
        assert_eq!(reqs.len(), 1);
        let r = &reqs[0];
        assert_eq!(r["includes_connection_overhead"], true);
        assert_eq!(r["attribution"], "exact");
        let everything = window(&pkts, *client, 0, u64::MAX);
        assert_eq!(
            figures(r),
            everything,
            "the whole connection is the request's"
        );
        assert_eq!(figures(&conn["total"]), everything);
        assert!(
            figures(&conn["setup"])[0] >= 3,
            "handshake packets in setup"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_webtransport_streams_are_shared_and_sum_exactly() {
    require_root();
    let path = spans_path("shared");
    let stack = Stack::start("shared", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let dump = Tcpdump::start(
        "lo",
        &format!("port {}", stack[Approach::Wt].addr.port()),
        "shared",
    );
    let mut client =
        tokenwire_bench::client::wt::WtClient::new(&stack[Approach::Wt].url, &stack.trust).unwrap();
    let session = client.session(true).await.unwrap();
    let (a, b) = tokio::join!(
        wt_stream(&session, "first of two"),
        wt_stream(&session, "second of two, longer")
    );
    assert!(a > 0 && b > 0);
    client.shutdown().await;
    let reqs = probe.json("/api/requests")["requests"].clone();
    let client_addr = client_of(&reqs[0]);
    let (conn, reqs) = probe.settled(client_addr);
    let pkts = dump.stop_packets(LinkType::Ethernet);
    assert_eq!(reqs.len(), 2);
    let mut total = sum(figures(&conn["setup"]), figures(&conn["teardown"]));
    for r in &reqs {
        assert_eq!(r["attribution"], "shared", "{r:#}");
        assert_eq!(r["transport"], "quic");
        assert_eq!(r["outcome"], "ok");
        total = sum(total, figures(r));
    }
    let everything = window(&pkts, client_addr, 0, u64::MAX);
    assert_eq!(total, everything, "shared split still sums to tcpdump");
    assert_eq!(figures(&conn["total"]), everything);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http2_streams_are_shared_and_sum_exactly() {
    require_root();
    let path = spans_path("h2shared");
    let stack = Stack::start("h2shared", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let addr = stack[Approach::SseH2].addr;
    let dump = Tcpdump::start("lo", &format!("port {}", addr.port()), "h2shared");
    // Two streams at once on one HTTP/2 connection.
    let cfg = stack.trust.client_config_offering(&[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let io = hyper_util::rt::TokioIo::new(tls);
    let (sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let driver = tokio::spawn(conn);
    let one = |prompt: &'static str| {
        let mut sender = sender.clone();
        async move {
            let req = http::Request::post(format!("https://localhost:{}/chat", addr.port()))
                .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                    "{{\"message\":\"{prompt}\"}}"
                ))))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            use http_body_util::BodyExt;
            resp.into_body().collect().await.unwrap().to_bytes().len()
        }
    };
    let (a, b) = tokio::join!(one("first of two"), one("second of two, longer"));
    assert!(a > 0 && b > 0);
    drop(sender);
    let _ = driver.await;
    let reqs = probe.json("/api/requests?approach=sse_h2")["requests"].clone();
    let client_addr = client_of(&reqs[0]);
    let (conn, reqs) = probe.settled(client_addr);
    let pkts = dump.stop_packets(LinkType::Ethernet);
    assert_eq!(reqs.len(), 2);
    let mut total = sum(figures(&conn["setup"]), figures(&conn["teardown"]));
    for r in &reqs {
        assert_eq!(r["approach"], "sse_h2", "{r:#}");
        assert_eq!(r["attribution"], "shared", "{r:#}");
        assert_eq!(r["transport"], "tls");
        assert_eq!(r["outcome"], "ok");
        total = sum(total, figures(r));
    }
    let everything = window(&pkts, client_addr, 0, u64::MAX);
    assert_eq!(total, everything, "shared split still sums to tcpdump");
    assert_eq!(figures(&conn["total"]), everything);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_spans_still_has_its_flows_counted() {
    require_root();
    let path = spans_path("silent");
    let stack = Stack::start("silent", SpanSink::disabled()).await;
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let mut c = ApproachClient::new(Approach::Sse, &stack.targets(), &stack.trust).unwrap();
    let r = c.stream("quiet", 0, true, Duration::from_secs(30)).await;
    assert!(r.ok(), "{:?}", r.error);
    c.shutdown().await;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        probe.json("/api/requests")["requests"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let flows = probe.json("/api/flows");
    let sse: Vec<&Value> = flows["flows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["approach"] == "sse")
        .collect();
    assert_eq!(sse.len(), 2, "both directions: {flows:#}");
    assert!(sse.iter().all(|f| f["packets"].as_u64().unwrap() > 0));
    let (_, metrics) = probe.get("/metrics");
    assert!(metrics.contains(
        "tokenwire_wire_bytes_total{approach=\"sse\",transport=\"tls\",direction=\"to_client\"}"
    ));
    assert!(!metrics.contains("tokenwire_tokens_total{"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_span_messages_are_counted_and_dropped() {
    require_root();
    let path = spans_path("bad");
    let probe = Probe::start("ebpf", &path, &[]);
    let tx = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let big = vec![b'x'; 5000];
    let bad: [&[u8]; 7] = [
        &big,
        b"garbage",
        br#"{"v":9,"type":"start"}"#,
        br#"{"v":1,"type":"dance","time_unix_ns":1}"#,
        br#"{"v":1,"type":"start","id":"x","approach":"a b","transport":"tls","client":"127.0.0.1:1","server":"127.0.0.1:2","time_unix_ns":1}"#,
        br#"{"v":1,"type":"end","id":"nobody","time_unix_ns":1,"tokens":1,"app_bytes":1,"outcome":"ok"}"#,
        b"",
    ];
    for m in bad {
        tx.send_to(m, &path).unwrap();
    }
    // A good one after the bad ones is still taken.
    tx.send_to(
        br#"{"v":1,"type":"start","id":"good","approach":"sse","transport":"tls","client":"127.0.0.1:1","server":"127.0.0.1:2","time_unix_ns":1}"#,
        &path,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (status, metrics) = probe.get("/metrics");
    assert_eq!(status, 200);
    for (reason, n) in [
        ("too_large", 1),
        ("malformed", 2),
        ("version", 1),
        ("unknown_type", 1),
        ("invalid_field", 1),
        ("unknown_request", 1),
    ] {
        let line = format!("tokenwire_probe_spans_rejected_total{{reason=\"{reason}\"}} {n}\n");
        assert!(metrics.contains(&line), "{line}in\n{metrics}");
    }
    assert!(metrics.contains("tokenwire_probe_spans_accepted_total 1\n"));
    assert!(metrics.contains("tokenwire_requests_active{approach=\"sse\"} 1\n"));
    assert_eq!(probe.json("/healthz")["status"], "ok");
    let (status, _) = probe.get("/nope");
    assert_eq!(status, 404);
    promtool_check(&metrics);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_charges_a_capture_file_with_the_spans_log() {
    require_root();
    let path = spans_path("offline");
    let log = path.with_file_name("spans.jsonl");
    let stack = Stack::start("offline", SpanSink::to_path(&path).unwrap()).await;
    let probe = Probe::start_with(
        "ebpf",
        &path,
        &stack.labels(),
        &["--spans-log".into(), log.display().to_string()],
    );
    let ports = format!(
        "port {} or port {}",
        stack[Approach::Sse].addr.port(),
        stack[Approach::Raw].addr.port()
    );
    let dump = Tcpdump::start("lo", &ports, "offline");
    let mut sse = ApproachClient::new(Approach::Sse, &stack.targets(), &stack.trust).unwrap();
    for i in 0..2 {
        assert!(
            sse.stream("offline", i, true, Duration::from_secs(30))
                .await
                .ok()
        );
    }
    sse.shutdown().await;
    let mut raw = ApproachClient::new(Approach::Raw, &stack.targets(), &stack.trust).unwrap();
    assert!(
        raw.stream("offline", 0, false, Duration::from_secs(30))
            .await
            .ok()
    );
    raw.shutdown().await;
    let live = probe.json("/api/requests")["requests"].clone();
    for r in live.as_array().unwrap() {
        probe.settled(client_of(r));
    }
    let (_, file) = dump.stop_keep(LinkType::Ethernet);
    drop(probe);
    // A bad line in the log is reported and skipped, not fatal.
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("not a span\n");
    std::fs::write(&log, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwire-probe"))
        .args(["analyze", "--json", "--spans"])
        .arg(&log)
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped"));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reqs: Vec<&Value> = lines.iter().filter_map(|l| l.get("request")).collect();
    let conns: Vec<&Value> = lines.iter().filter_map(|l| l.get("connection")).collect();
    assert_eq!(reqs.len(), 3, "{lines:#?}");
    assert_eq!(conns.len(), 2);
    // Offline cuts are at the servers' own times; per connection, the requests with the
    // setup and teardown still add up to every packet of it, and the lone raw request
    // carries its connection whole.
    for c in &conns {
        let mut total = sum(figures(&c["setup"]), figures(&c["teardown"]));
        for r in reqs.iter().filter(|r| r["client"] == c["client"]) {
            assert!(r["tokens"].as_u64().unwrap() > 0);
            assert_eq!(r["final"], true);
            total = sum(total, figures(r));
        }
        if c["requests"] == 1 {
            let r = reqs.iter().find(|r| r["client"] == c["client"]).unwrap();
            assert_eq!(r["includes_connection_overhead"], true);
            total = figures(r);
        }
        assert_eq!(total, figures(&c["total"]), "{c:#}");
    }
    // And the offline figures agree with the live ones per request within the span's
    // delivery time: the same tokens, bytes within a packet or two.
    for r in &reqs {
        let l = live
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == r["id"])
            .unwrap();
        assert_eq!(l["tokens"], r["tokens"]);
    }
}
