//! A short `run --reuse --reference` against the reference's server side, with the probe:
//! the SSE relay reached over IPv6 loopback, 4-byte QUIC connection IDs, the raw request
//! without `stream_options` and with legacy chunks, WebTransport's end frame counted as a
//! token, P50 as the mean of the middle pair, and the wire table's lo0 column (IP bytes
//! plus 4 per packet), and QUIC without ECN on either side, as quic-go ran on macOS; a
//! session with quinn's default ECN beside it shows the switch is what removes the marks
//! (tcpdump counts the ECN-capable packets) — docs/reference.md. Runs as root.

mod common;

use common::live::{Probe, spans_path};
use common::{Tcpdump, Truth, require_root};
use std::net::SocketAddr;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::client::{ReferenceClient, Targets};
use tokenwire_bench::report::{Median, summarise_with};
use tokenwire_bench::runner::{RunConfig, run};
use tokenwire_bench::wire;
use tokenwire_bench::workload::{default_prompts, jobs};
use tokenwire_probe::packet::LinkType;
use tokenwire_servers::launch::{self, RelayOptions};
use tokenwire_servers::model::{ModelConfig, Timing};
use tokenwire_servers::spans::SpanSink;
use tokenwire_servers::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_reference_run_has_the_references_setup_and_lo0_figures() {
    require_root();
    let path = spans_path("reference");
    let grace = Duration::from_secs(1);
    let id = common::identity("ref");
    let cfg = ModelConfig {
        timing: Timing {
            speed: 10.0,
            mean_tokens: 40,
            ..Timing::default()
        },
        ..ModelConfig::default()
    };
    let stack = Stack::ephemeral()
        .model(cfg)
        .relay(RelayOptions {
            spans: SpanSink::to_path(&path).unwrap(),
            quic_cid_len: 4,
            quic_ecn: false,
            ..RelayOptions::default()
        })
        .start(&id)
        .await
        .unwrap();
    let (opts, shutdown) = (&stack.relay, &stack.shutdown);
    let (sse, wt) = (&stack[Approach::Sse], &stack[Approach::Wt]);
    // The reference's SSE client reached the relay over IPv6 (macOS resolves localhost
    // to ::1 first): the relay listens there too, on the same port.
    let sse6_addr: SocketAddr = format!("[::1]:{}", sse.addr.port()).parse().unwrap();
    let sse6 = launch::start_sse(Approach::Sse, sse6_addr, &id, opts, shutdown.clone(), grace)
        .await
        .unwrap();
    let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // quinn's defaults (ECN on), for the comparison.
    let wt_ecn = launch::start_wt(
        v4,
        &id,
        &RelayOptions {
            quic_ecn: true,
            ..opts.clone()
        },
        shutdown.clone(),
        grace,
    )
    .await
    .unwrap();
    let udp = format!(
        "udp port {} or udp port {}",
        wt.addr.port(),
        wt_ecn.addr.port()
    );
    let all_udp = Tcpdump::start("lo", &udp, "ref-udp");
    let ect_udp = Tcpdump::start("lo", &format!("({udp}) and ip[1] & 3 != 0"), "ref-ect");
    let probe = Probe::start("ebpf", &path, &stack.labels());
    let reference = ReferenceClient::ALL;
    let targets = Targets {
        reference,
        ..Targets::of(&stack).with(Approach::Sse, sse6.addr)
    };
    let cfg = RunConfig {
        reuse: true,
        jobs: jobs(&default_prompts(), Some(2), 1).unwrap(),
        ..RunConfig::new(targets, Trust::Pinned(id.cert_der.clone()))
    };
    let runs = run(&cfg).await;
    let ecn_run = RunConfig {
        approaches: vec![Approach::Wt],
        targets: Targets::default().with(Approach::Wt, wt_ecn.addr),
        ..cfg.clone()
    };
    let ecn_runs = run(&ecn_run).await;
    assert!(ecn_runs[0].records.iter().all(|r| r.error.is_none()));
    // Packets to or from each WebTransport port: all of them, and those marked ECN-capable.
    let per_port = |truth: &Truth, port: u16| -> u64 {
        truth
            .iter()
            .filter(|((_, s, d), _)| s.port() == port || d.port() == port)
            .map(|(_, c)| c.packets)
            .sum()
    };
    let (all, ect) = (
        all_udp.stop(LinkType::Ethernet),
        ect_udp.stop(LinkType::Ethernet),
    );
    let (quiet, marked) = (wt.addr.port(), wt_ecn.addr.port());
    let (quiet_all, quiet_ect) = (per_port(&all, quiet), per_port(&ect, quiet));
    let (marked_all, marked_ect) = (per_port(&all, marked), per_port(&ect, marked));
    eprintln!(
        "ECN-capable packets: {quiet_ect} of {quiet_all} without ECN reports, {marked_ect} of {marked_all} with"
    );
    // Without ECN reports, each side stops marking at the peer's first ACK: a handful of
    // packets of the handshake at most. quinn's default marks nearly every packet.
    assert!(
        quiet_all > 100 && quiet_ect <= 8,
        "{quiet_ect} of {quiet_all} marked"
    );
    assert!(
        marked_ect * 10 >= marked_all * 9,
        "{marked_ect} of {marked_all} marked"
    );
    let all: Vec<_> = runs.iter().flat_map(|r| r.records.clone()).collect();
    for r in &runs {
        let s = summarise_with(r.approach, &all, r.connections, Median::MeanOfMiddle);
        assert_eq!(
            s.failed,
            0,
            "{:?}",
            r.records.iter().find_map(|x| x.error.clone())
        );
        // Two requests: the P50 is the mean of both.
        let ttfts: Vec<f64> = r
            .records
            .iter()
            .map(|x| x.ttft.unwrap().as_secs_f64() * 1e3)
            .collect();
        let mean = (ttfts[0] + ttfts[1]) / 2.0;
        assert!((s.p50_ttft_ms.unwrap() - mean).abs() < 1e-9);
        let mut w = wire::collect(probe.api, r, Duration::from_secs(15))
            .await
            .unwrap();
        assert_eq!(w.requests, 2);
        let server_tokens = w.tokens;
        match r.approach {
            // No usage chunk: the tokens are the chunks the client counted.
            Approach::Raw => {
                assert!(r.records.iter().all(|x| x.tokens_reported.is_none()));
                let counted: u64 = r.records.iter().map(|x| x.tokens_counted).sum();
                assert_eq!(counted, server_tokens);
            }
            // The end frame counts as a token, as the reference counted it.
            Approach::Wt => {
                let counted: u64 = r.records.iter().map(|x| x.tokens()).sum();
                assert_eq!(counted, server_tokens + 2);
                w.add_tokens_per_request(1);
                assert_eq!(w.tokens, counted);
            }
            // The reference's client behaviours are raw's and wt's only.
            Approach::Sse | Approach::SseH2 | Approach::SseH3 | Approach::Ws | Approach::Grpc => {}
        }
        let lo0 = (w.wire_bytes + 4 * w.packets) as f64 / w.tokens as f64;
        assert!((w.lo0_bytes_per_token.unwrap() - lo0).abs() < 1e-9);
        assert!(w.lo0_bytes_per_token > w.bytes_per_token);
    }
    // The SSE requests (the warm-up's and the two measured) travelled over IPv6.
    let reqs = probe.json("/api/requests?approach=sse");
    let reqs = reqs["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 3);
    assert!(
        reqs.iter()
            .all(|r| r["client"].as_str().unwrap().starts_with("[::1]")),
        "{reqs:#?}"
    );
    shutdown.cancel();
}
