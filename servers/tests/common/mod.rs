//! Starting the real servers in-process on ephemeral loopback ports, for the tests.
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokenwire_bench::client::Targets;
use tokenwire_bench::client::tls::Trust;
use tokenwire_servers::certs::{self, Identity};
use tokenwire_servers::launch::{self, RelayOptions, Running};
use tokenwire_servers::model::{Model, ModelConfig, Timing};
use tokio_util::sync::CancellationToken;

pub const ANY: &str = "127.0.0.1:0";

/// One certificate pair per test binary.
pub fn identity() -> &'static Identity {
    static ID: OnceLock<Identity> = OnceLock::new();
    ID.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tokenwire-test-certs-{}", std::process::id()));
        certs::ensure(&dir).expect("test certificate")
    })
}

pub fn trust() -> Trust {
    Trust::Pinned(identity().cert_der.clone())
}

/// A model fast enough for tests: ~5 ms to first token, ~0.7 ms between tokens.
pub fn fast_model() -> ModelConfig {
    ModelConfig {
        timing: Timing {
            speed: 50.0,
            ..Timing::default()
        },
        ..ModelConfig::default()
    }
}

pub struct Stack {
    pub model: Model,
    pub model_run: Running,
    pub raw: Running,
    pub sse: Running,
    pub wt: Running,
    pub shutdown: CancellationToken,
}

impl Stack {
    pub fn targets(&self) -> Targets {
        Targets {
            raw: self.raw.addr,
            sse: self.sse.addr,
            wt_url: self.wt.url.clone(),
            ..Targets::default()
        }
    }
}

pub async fn stack_with(model: ModelConfig, opts: RelayOptions, grace: Duration) -> Stack {
    let shutdown = CancellationToken::new();
    let addr: SocketAddr = ANY.parse().unwrap();
    let (model_run, model) = launch::start_model(addr, model, shutdown.clone(), grace)
        .await
        .unwrap();
    let opts = RelayOptions {
        upstream: model_run.url.clone(),
        ..opts
    };
    let (raw, sse, wt) = relays(&opts, &shutdown, grace).await;
    Stack {
        model,
        model_run,
        raw,
        sse,
        wt,
        shutdown,
    }
}

pub async fn stack() -> Stack {
    stack_with(
        fast_model(),
        RelayOptions::default(),
        Duration::from_secs(5),
    )
    .await
}

/// The three companions relaying `opts.upstream`.
pub async fn relays(
    opts: &RelayOptions,
    shutdown: &CancellationToken,
    grace: Duration,
) -> (Running, Running, Running) {
    let addr: SocketAddr = ANY.parse().unwrap();
    let id = identity();
    let raw = launch::start_raw(addr, id, opts, shutdown.clone(), grace)
        .await
        .unwrap();
    let sse = launch::start_sse(addr, id, opts, shutdown.clone(), grace)
        .await
        .unwrap();
    let wt = launch::start_wt(addr, id, opts, shutdown.clone(), grace)
        .await
        .unwrap();
    (raw, sse, wt)
}

/// Polls `cond` every 10 ms until it holds or `within` passes; returns whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > within {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
