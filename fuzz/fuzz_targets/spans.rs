//! Span messages, one per datagram, into the probe's engine: arbitrary bytes split at NUL
//! into datagrams never panic the parser or attribution, and every datagram is either
//! accepted or counted as rejected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use tokenwire_probe::backend::replay::ReplayBackend;
use tokenwire_probe::engine::{Engine, EngineOptions};
use tokenwire_probe::labels::Labels;

fuzz_target!(|data: &[u8]| {
    let backend = ReplayBackend::new(Vec::new().into_iter(), Vec::new());
    let mut e = Engine::new(backend, Labels::default(), EngineOptions::default());
    let now = Instant::now();
    let mut n = 0;
    for datagram in data.split(|&b| b == 0) {
        let _ = tokenwire_probe::spans::parse(datagram);
        e.span_datagram(datagram, now);
        n += 1;
    }
    e.tick(now);
    let _ = e.finish_all(now);
    let counts = e.span_counts();
    let rejected: u64 = counts.rejected.values().sum();
    assert_eq!(counts.accepted + rejected, n, "every datagram accounted for");
    let _ = e.requests();
    let _ = e.metrics_text(0.0).expect("the exposition encodes");
});
