//! The benchmark's runner against the real servers: the reference's timing at default
//! pace, reuse versus fresh connections, closed and open loops, and a server killed
//! (SIGKILL, a real process) in the middle of a run.

mod common;

use common::{stack_with, trust};
use std::process::{Command, Stdio};
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::Targets;
use tokenwire_bench::record::Failure;
use tokenwire_bench::report::summarise;
use tokenwire_bench::runner::{RunConfig, run};
use tokenwire_bench::workload::{default_prompts, jobs};
use tokenwire_probe_common::launch::ServersLaunch;
use tokenwire_servers::launch::RelayOptions;
use tokenwire_servers::model::{ModelConfig, Timing};

fn config(targets: Targets, limit: usize, reuse: bool) -> RunConfig {
    RunConfig {
        reuse,
        jobs: jobs(&default_prompts(), Some(limit), 1).unwrap(),
        ..RunConfig::new(targets, trust())
    }
}

#[tokio::test]
async fn default_pace_reproduces_the_reference_timing_and_byte_order() {
    // The model's default timing (250 ms to first token, 35 ms between tokens); shorter
    // answers keep the test short.
    let model = ModelConfig {
        timing: Timing {
            mean_tokens: 60,
            ..Timing::default()
        },
        ..ModelConfig::default()
    };
    let s = stack_with(model, RelayOptions::default(), Duration::from_secs(1)).await;
    let runs = run(&config(Targets::of(&s), 2, true)).await;
    let all: Vec<_> = runs.iter().flat_map(|r| r.records.clone()).collect();
    let mut bpt = Vec::new();
    for r in &runs {
        let m = summarise(r.approach, &all, r.connections);
        assert_eq!(
            m.failed,
            0,
            "{:?}",
            r.records.iter().find_map(|r| r.error.clone())
        );
        let tbt = m.avg_tbt_ms.unwrap();
        assert!(
            (32.0..=38.0).contains(&tbt),
            "{}: avg TBT {tbt:.1} ms",
            r.approach
        );
        let ttft = m.p50_ttft_ms.unwrap();
        assert!(
            (ttft - 250.0).abs() <= 30.0,
            "{}: P50 TTFT {ttft:.0} ms",
            r.approach
        );
        if Approach::REFERENCE.contains(&r.approach) {
            bpt.push(m.app_bytes_per_token.unwrap());
        }
    }
    assert!(
        bpt[0] > bpt[1] && bpt[1] > bpt[2],
        "app B/tok raw > sse > wt: {bpt:?}"
    );
}

#[tokio::test]
async fn reuse_keeps_one_connection_fresh_opens_one_per_request() {
    let s = common::stack().await;
    for (reuse, want) in [(true, 1), (false, 4)] {
        let runs = run(&config(Targets::of(&s), 4, reuse)).await;
        for r in &runs {
            assert_eq!(r.records.len(), 4);
            assert!(r.records.iter().all(|r| r.ok()), "{:?}", r.records);
            assert_eq!(r.connections, want, "{} reuse={reuse}", r.approach);
        }
    }
    // Two closed-loop users: two connections, all prompts served once.
    let mut cfg = config(Targets::of(&s), 6, true);
    cfg.concurrency = 2;
    for r in run(&cfg).await {
        assert_eq!(r.connections, 2, "{}", r.approach);
        let mut idx: Vec<usize> = r.records.iter().map(|r| r.prompt_index).collect();
        idx.sort_unstable();
        assert_eq!(idx, (0..6).collect::<Vec<_>>());
    }
    // Open loop: seeded arrivals, latency from the scheduled time.
    let mut cfg = config(Targets::of(&s), 5, true);
    cfg.rate = Some(20.0);
    cfg.approaches = vec![Approach::Wt];
    let r = run(&cfg).await.remove(0);
    let offsets: Vec<f64> = r.records.iter().map(|r| r.start_offset_s).collect();
    let want: Vec<f64> = tokenwire_bench::runner::poisson_arrivals(5, 20.0, 1)
        .iter()
        .map(|d| d.as_secs_f64())
        .collect();
    assert_eq!(offsets, want);
    assert!(r.records.iter().all(|r| r.ok()));
}

#[tokio::test]
async fn a_server_killed_mid_run_is_reported_and_the_run_carries_on() {
    let id = common::identity();
    let certs_dir = id.cert_path.parent().unwrap().to_owned();
    // Every approach's companion on a port of the kernel's choosing: `--NAME-listen`.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokenwire-servers"));
    cmd.args(["all", "--speed", "10", "--mean-tokens", "200"])
        .args(["--model-listen", "127.0.0.1:0"]);
    for a in Approach::ALL {
        cmd.arg(format!("--{a}-listen")).arg("127.0.0.1:0");
    }
    cmd.arg("--certs")
        .arg(&certs_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut servers = ServersLaunch::new(cmd).start().unwrap();
    let targets = Approach::ALL.into_iter().fold(Targets::default(), |t, a| {
        let url = &servers.ready.servers[a.as_str()];
        let addr = url
            .trim_start_matches("https://")
            .trim_end_matches(a.path());
        t.with(a, addr.parse().unwrap())
    });
    let mut cfg = config(targets, 8, true);
    cfg.approaches = vec![Approach::Sse];
    cfg.timeout = Duration::from_secs(5);
    // Each answer takes ~0.7 s: kill the servers during the third.
    let pid = servers.child.id();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1900)).await;
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
    });
    let r = run(&cfg).await.remove(0);
    killer.await.unwrap();
    let _ = servers.child.wait();
    assert_eq!(r.records.len(), 8, "every job has a record");
    let ok = r.records.iter().filter(|r| r.ok()).count();
    assert!((1..8).contains(&ok), "{ok} of 8 succeeded");
    // The stream in flight is cut (connection lost, or a stream without its end), a
    // connection the dying server had accepted is reset in its handshake (tls), and the
    // requests after it find nobody listening (refused).
    for rec in r.records.iter().filter(|r| !r.ok()) {
        let e = rec.error.as_deref().unwrap();
        assert!(
            matches!(
                rec.failure,
                Some(
                    Failure::ConnectionLost | Failure::Malformed | Failure::Tls | Failure::Refused
                )
            ),
            "{:?}: {e}",
            rec.failure
        );
    }
    assert_eq!(r.records.last().unwrap().failure, Some(Failure::Refused));
    let m = summarise(Approach::Sse, &r.records, r.connections);
    assert_eq!(m.failed, 8 - ok);
    assert!(m.p50_ttft_ms.is_some());
}
