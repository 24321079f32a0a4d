//! Many WebTransport streams at once, on loopback: 500 concurrent sessions all complete,
//! and sessions past the relay's limit are refused cleanly (429, counted as `refused` by
//! the bench), as are connections past an HTTPS companion's (503), never left hanging. The capacity figures themselves come from
//! `cargo xtask bench-capacity` (release build), not from here.

mod common;

use common::{stack_with, trust};
use std::collections::BTreeMap;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::Targets;
use tokenwire_bench::record::Failure;
use tokenwire_bench::report::summarise;
use tokenwire_bench::runner::{RunConfig, run};
use tokenwire_bench::workload::{default_prompts, jobs};
use tokenwire_servers::launch::RelayOptions;
use tokenwire_servers::model::{ModelConfig, Timing};

/// `users` closed-loop WebTransport users with one short answer each, reused sessions.
fn users(targets: tokenwire_bench::client::Targets, users: usize, ramp: Duration) -> RunConfig {
    users_of(Approach::Wt, targets, users, ramp)
}

fn users_of(
    approach: Approach,
    targets: tokenwire_bench::client::Targets,
    users: usize,
    ramp: Duration,
) -> RunConfig {
    RunConfig {
        approaches: vec![approach],
        reuse: true,
        jobs: jobs(&default_prompts(), None, users.div_ceil(10)).unwrap(),
        concurrency: users,
        ramp,
        warmup: false,
        ..RunConfig::new(targets, trust())
    }
}

fn model(mean_tokens: u32) -> ModelConfig {
    ModelConfig {
        timing: Timing {
            mean_tokens,
            ..Timing::default()
        },
        ..ModelConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_webtransport_streams_all_complete() {
    // Answers of ~60 tokens (about 2.3 s) outlast the 1 s ramp: all 500 stream at once.
    let s = stack_with(model(60), RelayOptions::default(), Duration::from_secs(1)).await;
    let runs = run(&users(Targets::of(&s), 500, Duration::from_secs(1))).await;
    let r = &runs[0];
    let m = summarise(Approach::Wt, &r.records, r.connections);
    assert_eq!(m.requests, 500);
    assert_eq!(
        m.failed,
        0,
        "{:?}: {:?}",
        m.failures,
        r.records.iter().find_map(|x| x.error.clone())
    );
    // One session per user, all of them the relay's.
    assert_eq!(r.connections, 500);
    assert_eq!(s[Approach::Wt].stats.connections(), 500);
    assert!(r.records.iter().all(|x| x.tokens() > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_past_the_limit_are_refused_not_left_hanging() {
    let opts = RelayOptions {
        max_sessions: 10,
        ..RelayOptions::default()
    };
    // Answers of ~60 tokens (2 s) keep the first ten sessions open while the others ask.
    let s = stack_with(model(60), opts, Duration::from_secs(1)).await;
    let started = std::time::Instant::now();
    let runs = run(&users(Targets::of(&s), 20, Duration::ZERO)).await;
    let r = &runs[0];
    let m = summarise(Approach::Wt, &r.records, r.connections);
    assert_eq!(m.requests, 20);
    // Ten served; the others refused at once, each with its reason.
    assert_eq!(
        m.failures,
        BTreeMap::from([(Failure::Refused, 10)]),
        "{m:?}"
    );
    for x in r.records.iter().filter(|x| x.failure.is_some()) {
        let e = x.error.as_deref().unwrap_or_default();
        assert!(e.contains("refused"), "{e}");
        assert!(x.total.unwrap() < Duration::from_secs(2), "{x:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_get_503_at_once() {
    let opts = RelayOptions {
        max_connections: 5,
        ..RelayOptions::default()
    };
    let s = stack_with(model(60), opts, Duration::from_secs(1)).await;
    let runs = run(&users_of(
        Approach::Sse,
        Targets::of(&s),
        10,
        Duration::ZERO,
    ))
    .await;
    let r = &runs[0];
    let m = summarise(Approach::Sse, &r.records, r.connections);
    assert_eq!(
        m.failures,
        BTreeMap::from([(Failure::HttpStatus, 5)]),
        "{m:?}"
    );
    for x in r.records.iter().filter(|x| x.failure.is_some()) {
        let e = x.error.as_deref().unwrap_or_default();
        assert!(e.contains("503") && e.contains("at most 5"), "{e}");
        assert!(x.total.unwrap() < Duration::from_secs(2), "{x:?}");
    }
    // The refused connections never reached the relay's handler, nor the model.
    assert_eq!(s[Approach::Sse].stats.requests(), 5);
    assert_eq!(s[Approach::Sse].stats.connections(), 10);
}

/// With `--max-streams-per-session 1`, a client opening two streams at once on one
/// session gets the second only when the first has finished: both complete, in turn,
/// nothing refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_session_limit_wait_their_turn() {
    let opts = RelayOptions {
        max_streams_per_session: 1,
        ..RelayOptions::default()
    };
    let s = stack_with(model(20), opts, Duration::from_secs(1)).await;
    let mut client =
        tokenwire_bench::client::wt::WtClient::new(&s[Approach::Wt].url, &trust()).unwrap();
    let session = client.session(true).await.unwrap();
    let t0 = std::time::Instant::now();
    // One stream: when it opened and when its answer ended, after t0.
    let one = |prompt: &'static str| {
        let session = session.clone();
        async move {
            let mut opened = Duration::ZERO;
            let n = tokenwire_bench::client::wt::exchange(&session, prompt, || {
                opened = t0.elapsed();
                async {}
            })
            .await
            .unwrap();
            assert!(n > 0);
            (opened, t0.elapsed())
        }
    };
    let (a, b) = tokio::join!(one("first"), one("second"));
    let (first, second) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    // An answer of ~20 tokens takes hundreds of ms; the second stream opened only as the
    // first ended (the credit for it comes with the first stream's end).
    assert!(first.1 > Duration::from_millis(200), "{first:?}");
    assert!(
        second.0 + Duration::from_millis(50) >= first.1,
        "the second stream opened at {:?}, before the first ended at {:?}",
        second.0,
        first.1
    );
    client.shutdown().await;
}
