//! Starting the real servers in-process on ephemeral loopback ports, for the tests: the
//! library's [`Stack`] with this binary's certificate.
#![allow(dead_code)] // each test file uses a different part

use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokenwire_bench::client::tls::Trust;
use tokenwire_servers::certs::{self, Identity};
use tokenwire_servers::launch::RelayOptions;
use tokenwire_servers::model::{ModelConfig, Timing};
pub use tokenwire_servers::stack::Stack;

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

/// The model running `model` and every companion with `opts`.
pub async fn stack_with(model: ModelConfig, opts: RelayOptions, grace: Duration) -> Stack {
    Stack::ephemeral()
        .model(model)
        .relay(opts)
        .grace(grace)
        .start(identity())
        .await
        .unwrap()
}

pub async fn stack() -> Stack {
    stack_with(
        fast_model(),
        RelayOptions::default(),
        Duration::from_secs(5),
    )
    .await
}

/// Every companion relaying `opts.upstream`, with no model of their own.
pub async fn relays(opts: &RelayOptions) -> Stack {
    Stack::ephemeral()
        .no_model()
        .relay(opts.clone())
        .start(identity())
        .await
        .unwrap()
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
