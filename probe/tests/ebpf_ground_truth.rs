//! The eBPF backend against tcpdump on the same interface at the same time: per flow and
//! direction, packets and IP bytes equal exactly. Traffic: TLS over TCP (the raw and sse
//! companions and their plain-HTTP upstream), QUIC (the wt companion), plain UDP, a refused
//! TCP connection, and IPv6 on ::1. Runs as root.

mod common;

use common::{Tcpdump, Truth, port_filter, require_root};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::client::{ApproachClient, Targets};
use tokenwire_probe::backend::Backend;
use tokenwire_probe::backend::ebpf::EbpfBackend;
use tokenwire_probe::backend::pcap::{PcapBackend, PcapOptions};
use tokenwire_probe::flow::{Counters, Direction, Transport};
use tokenwire_probe::labels::Labels;
use tokenwire_probe::packet::LinkType;
use tokenwire_probe::table::FlowTable;
use tokenwire_servers::launch;
use tokenwire_servers::model::{ModelConfig, Timing};
use tokenwire_servers::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebpf_counts_equal_tcpdump_on_loopback() {
    require_root();
    let id = common::identity("probe");
    let model_cfg = ModelConfig {
        timing: Timing {
            speed: 20.0,
            mean_tokens: 120,
            ..Timing::default()
        },
        ..ModelConfig::default()
    };
    let stack = Stack::ephemeral()
        .model(model_cfg)
        .start(&id)
        .await
        .unwrap();
    let (model, raw, sse, wt) = (
        stack.model_run(),
        &stack[Approach::Raw],
        &stack[Approach::Sse],
        &stack[Approach::Wt],
    );
    let sse6 = launch::start_sse(
        Approach::Sse,
        "[::1]:0".parse().unwrap(),
        &id,
        &stack.relay,
        stack.shutdown.clone(),
        Duration::from_secs(1),
    )
    .await
    .unwrap();
    let udp_server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_port = refused.local_addr().unwrap().port();
    drop(refused);
    let ports = [
        model.addr.port(),
        raw.addr.port(),
        sse.addr.port(),
        wt.addr.port(),
        sse6.addr.port(),
        udp_server.local_addr().unwrap().port(),
        refused_port,
    ];

    // Label the test's ports as the companions' so the table names approaches.
    let labels = Labels::with_overrides(
        [
            format!("{}=raw_api", raw.addr.port()),
            format!("{}=sse", sse.addr.port()),
            format!("{}=webtransport", wt.addr.port()),
            format!("{}=upstream", model.addr.port()),
            format!("{}=sse6", sse6.addr.port()),
            format!("{}=udp_echo", udp_server.local_addr().unwrap().port()),
        ]
        .iter()
        .map(String::as_str),
    )
    .unwrap();
    let dump = Tcpdump::start("lo", &port_filter(&ports), "lo");
    let mut probe = EbpfBackend::start(&["lo".to_owned()], 65_536, false).unwrap();
    // The libpcap backend on the same traffic, side by side.
    let mut pcap = PcapBackend::start(&["lo".to_owned()], &PcapOptions::default()).unwrap();

    // --- traffic ---
    let trust = Trust::Pinned(id.cert_der.clone());
    let targets = Targets::of(&stack);
    for approach in Approach::ALL {
        let mut c = ApproachClient::new(approach, &targets, &trust).unwrap();
        for i in 0..2 {
            let r = c.stream("count me", i, true, Duration::from_secs(30)).await;
            assert!(r.ok(), "{approach}: {:?}", r.error);
        }
        c.shutdown().await;
    }
    let t6 = Targets {
        host: "localhost".into(),
        ..targets.clone().with(Approach::Sse, sse6.addr)
    };
    let r = ApproachClient::new(Approach::Sse, &t6, &trust)
        .unwrap()
        .stream("six", 0, false, Duration::from_secs(30))
        .await;
    assert!(r.ok(), "IPv6: {:?}", r.error);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..20u8 {
        client
            .send_to(
                &vec![i; 100 + usize::from(i)],
                udp_server.local_addr().unwrap(),
            )
            .unwrap();
        let mut buf = [0u8; 512];
        let (n, from) = udp_server.recv_from(&mut buf).unwrap();
        udp_server.send_to(&buf[..n], from).unwrap();
        client.recv_from(&mut buf).unwrap();
    }
    assert!(std::net::TcpStream::connect(("127.0.0.1", refused_port)).is_err());
    // Let trailing ACKs and connection closes land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.shutdown.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut table = FlowTable::new(labels.clone());
    probe.poll(&mut table, Instant::now()).unwrap();
    // The counts below come from batch reads of the flow keys (BPF_MAP_LOOKUP_BATCH).
    assert!(
        probe.reads_keys_in_batches(),
        "the kernel refused batch reads"
    );
    let mut pcap_table = FlowTable::new(labels.clone());
    pcap.poll(&mut pcap_table, Instant::now()).unwrap();
    assert_eq!(pcap.health().kernel_drops, 0, "libpcap dropped packets");
    let (truth, file) = dump.stop_keep(LinkType::Ethernet);
    drop(probe);
    drop(pcap);
    // analyze on tcpdump's file.
    let analysis = tokenwire_probe::analyze::analyze(
        std::fs::File::open(&file).unwrap(),
        labels,
        Vec::new(),
        Default::default(),
    )
    .unwrap();
    let _ = std::fs::remove_file(&file);
    assert!(analysis.error.is_none());

    // --- compare per (proto, src, dst) ---
    let rows = table.rows();
    let mut seen: Truth = BTreeMap::new();
    for r in &rows {
        if !(ports.contains(&r.client.port()) || ports.contains(&r.server.port()))
            || r.client.port() == 0
        {
            continue;
        }
        let (src, dst) = match r.direction {
            Direction::ToServer => (r.client, r.server),
            Direction::ToClient => (r.server, r.client),
        };
        *seen.entry((r.proto, src, dst)).or_default() += r.counters;
    }
    let strip = |t: &Truth| -> BTreeMap<(u8, SocketAddr, SocketAddr), (u64, u64)> {
        t.iter()
            .map(|(k, c)| (*k, (c.packets, c.ip_bytes)))
            .collect()
    };
    assert_eq!(
        strip(&seen),
        strip(&truth),
        "probe (left) vs tcpdump (right): (packets, IP bytes) per direction"
    );
    let link = |t: &Truth| t.values().map(|c: &Counters| c.link_bytes).sum::<u64>();
    assert_eq!(
        link(&seen),
        link(&truth),
        "link bytes equal tcpdump's lengths"
    );

    // The mix is really there, classified.
    let has = |approach: &str, transport: Transport| {
        rows.iter()
            .any(|r| r.approach == approach && r.transport == transport)
    };
    assert!(has("raw_api", Transport::Tls), "{rows:#?}");
    assert!(has("sse", Transport::Tls));
    assert!(has("sse6", Transport::Tls));
    assert!(has("webtransport", Transport::Quic));
    assert!(has("upstream", Transport::Http));
    assert!(has("udp_echo", Transport::Udp));
    assert!(
        rows.iter()
            .any(|r| r.server.port() == refused_port && r.transport == Transport::Tcp && r.closed)
    );
    assert!(rows.iter().any(|r| r.approach == "sse"
        && r.sni.as_deref() == Some("localhost")
        && r.alpn == ["http/1.1"]));
    assert!(rows.iter().any(|r| r.client.is_ipv6()));
    assert!(truth.len() >= 16, "{} flow directions", truth.len());
}
