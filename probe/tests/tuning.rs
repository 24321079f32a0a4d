//! The transport settings of docs/wire-efficiency.md, measured with tcpdump on loopback:
//! the same prompts at the reference's pace through relays with quinn's and the kernel's
//! defaults, through relays and a client with `--tuning lean`, and through relays that
//! coalesce tokens. Lean must cost fewer bytes (WebTransport) and packets (SSE) per token
//! and deliver the same text with no token held back; coalescing must cost fewer packets,
//! deliver the same text, and hold tokens no longer than its window. Runs as root.

mod common;

use common::{Tcpdump, Truth, port_filter, require_root};
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::Targets;
use tokenwire_bench::client::tls::Trust;
use tokenwire_bench::record::RequestRecord;
use tokenwire_bench::runner::{RunConfig, run};
use tokenwire_bench::workload::{default_prompts, jobs};
use tokenwire_probe::packet::LinkType;
use tokenwire_servers::launch::{self, RelayOptions, Running};
use tokenwire_servers::model::{ModelConfig, Timing};
use tokenwire_servers::stack::Stack;
use tokenwire_servers::tuning::Tuning;
use tokio_util::sync::CancellationToken;

/// One set of relays (sse and wt, relaying `opts.upstream`) and what went through them.
struct Relays(Stack);

impl Relays {
    async fn start(id: &tokenwire_servers::certs::Identity, opts: &RelayOptions) -> Self {
        let stack = Stack::ephemeral()
            .no_model()
            .only(&[Approach::Sse, Approach::Wt])
            .relay(opts.clone())
            .start(id)
            .await
            .unwrap();
        Self(stack)
    }

    fn sse(&self) -> &Running {
        &self.0[Approach::Sse]
    }

    fn wt(&self) -> &Running {
        &self.0[Approach::Wt]
    }

    fn targets(&self, tuning: Tuning) -> Targets {
        Targets {
            tuning,
            ..Targets::of(&self.0)
        }
    }
}

/// Packets the client sent to `port` (its ACKs, mostly), per token the relay sent.
fn client_packets_per_token(truth: &Truth, port: u16, relay: &Running) -> f64 {
    let packets: u64 = truth
        .iter()
        .filter(|((_, _, d), _)| d.port() == port)
        .map(|(_, c)| c.packets)
        .sum();
    packets as f64 / relay.stats.tokens() as f64
}

/// IP bytes and packets to or from `port`, per token the relay sent.
fn per_token(truth: &Truth, port: u16, relay: &Running) -> (f64, f64) {
    let (bytes, packets) = truth
        .iter()
        .filter(|((_, s, d), _)| s.port() == port || d.port() == port)
        .fold((0, 0), |(b, p), (_, c)| (b + c.ip_bytes, p + c.packets));
    let tokens = relay.stats.tokens() as f64;
    assert!(tokens > 0.0, "{} relayed no token", relay.name);
    (bytes as f64 / tokens, packets as f64 / tokens)
}

fn texts(records: &[RequestRecord]) -> Vec<String> {
    for r in records {
        assert!(r.error.is_none(), "{:?}: {:?}", r.approach, r.error);
    }
    records.iter().map(|r| r.text.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_settings_cost_fewer_bytes_and_packets_and_coalescing_fewer_packets() {
    require_root();
    let shutdown = CancellationToken::new();
    let id = common::identity("tuning");
    // The reference's pace (35 ms between tokens): when ACKs go out depends on it.
    let cfg = ModelConfig {
        timing: Timing {
            mean_tokens: 60,
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
    let base = RelayOptions {
        upstream: model.url.clone(),
        ..RelayOptions::default()
    };
    let mut lean_opts = base.clone();
    lean_opts.apply_tuning(&Tuning::lean());
    let coalesce_opts = RelayOptions {
        coalesce: Duration::from_millis(70),
        ..base.clone()
    };
    let default = Relays::start(&id, &base).await;
    let lean = Relays::start(&id, &lean_opts).await;
    let coalesced = Relays::start(&id, &coalesce_opts).await;
    let ports: Vec<u16> = [&default, &lean, &coalesced]
        .iter()
        .flat_map(|r| [r.sse().addr.port(), r.wt().addr.port()])
        .collect();
    let dump = Tcpdump::start("lo", &port_filter(&ports), "tuning");

    let cfg = RunConfig {
        approaches: vec![Approach::Sse, Approach::Wt],
        reuse: true,
        jobs: jobs(&default_prompts(), Some(2), 1).unwrap(),
        warmup: false,
        ..RunConfig::new(
            default.targets(Tuning::standard()),
            Trust::Pinned(id.cert_der.clone()),
        )
    };
    let with = |targets: Targets| RunConfig {
        targets,
        ..cfg.clone()
    };
    let default_runs = run(&cfg).await;
    let lean_runs = run(&with(lean.targets(Tuning::lean()))).await;
    let coalesced_runs = run(&with(coalesced.targets(Tuning::standard()))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let truth = dump.stop(LinkType::Ethernet);

    for i in 0..2 {
        let want = texts(&default_runs[i].records);
        assert_eq!(texts(&lean_runs[i].records), want, "lean: same text");
        assert_eq!(
            texts(&coalesced_runs[i].records),
            want,
            "coalesced: same text"
        );
    }
    // Every relay sent the same tokens (the model's count), whatever it batched.
    let tokens = default.sse().stats.tokens();
    for r in [&default, &lean, &coalesced] {
        assert_eq!(r.sse().stats.tokens(), tokens, "sse tokens");
        assert_eq!(r.wt().stats.tokens(), tokens, "wt tokens");
    }

    // WebTransport: lean's packets carry no client connection ID (8 bytes in each token's
    // packet), a 4-byte server ID in each ACK (8 by default) and no ECN counters.
    let (wt_default, wt_default_pkts) = per_token(&truth, default.wt().addr.port(), default.wt());
    let (wt_lean, wt_lean_pkts) = per_token(&truth, lean.wt().addr.port(), lean.wt());
    assert!(
        wt_lean <= wt_default - 12.0,
        "wt: lean {wt_lean:.1} B/tok, default {wt_default:.1} ({wt_lean_pkts:.2} vs {wt_default_pkts:.2} pkts/tok)"
    );
    // SSE on loopback (TCP timestamps stay on: the root namespace's setting): delayed ACKs
    // acknowledge about every other token rather than each.
    let (sse_default, sse_default_pkts) =
        per_token(&truth, default.sse().addr.port(), default.sse());
    let (sse_lean, sse_lean_pkts) = per_token(&truth, lean.sse().addr.port(), lean.sse());
    let acks_default = client_packets_per_token(&truth, default.sse().addr.port(), default.sse());
    let acks_lean = client_packets_per_token(&truth, lean.sse().addr.port(), lean.sse());
    eprintln!("sse client packets per token: default {acks_default:.2}, lean {acks_lean:.2}");
    assert!(
        acks_lean <= acks_default * 0.8 && sse_lean < sse_default,
        "sse: lean {acks_lean:.2} client pkts/tok, {sse_lean:.1} B/tok; default {acks_default:.2}, {sse_default:.1}"
    );
    eprintln!(
        "per token, default -> lean: wt {wt_default:.1} -> {wt_lean:.1} B ({wt_default_pkts:.2} -> {wt_lean_pkts:.2} pkts), sse {sse_default:.1} -> {sse_lean:.1} B ({sse_default_pkts:.2} -> {sse_lean_pkts:.2} pkts)"
    );
    // Lean holds no token back: the relays hand each on as it arrives.
    for r in [lean.sse(), lean.wt()] {
        let d = r.stats.relay_delay.summary().unwrap();
        assert!(d.p99_ms < 20.0, "{}: {d:?}", r.name);
    }

    // Coalescing within 70 ms: about two tokens per packet, each held at most the window.
    for (relay, port) in [
        (coalesced.sse(), coalesced.sse().addr.port()),
        (coalesced.wt(), coalesced.wt().addr.port()),
    ] {
        let (bytes, pkts) = per_token(&truth, port, relay);
        let d = relay.stats.relay_delay.summary().unwrap();
        eprintln!(
            "{} coalesced within 70 ms: {bytes:.1} B, {pkts:.2} pkts per token; added delay {d:?}",
            relay.name
        );
        assert_eq!(d.count, tokens, "{}: one timing per token", relay.name);
        assert!(
            pkts < 1.5,
            "{}: {pkts:.2} packets per token coalesced",
            relay.name
        );
        assert!(
            d.p50_ms > 1.0 && d.max_ms < 70.0 * 1.125 + 20.0,
            "{}: {d:?}",
            relay.name
        );
    }
    shutdown.cancel();
}
