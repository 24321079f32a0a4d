//! The `sse-h3` companion over real QUIC on loopback: HTTP/3 answers labelled by their
//! version, `Alt-Svc` from the TCP listener on the same port, the relay's refusals over
//! HTTP/3, and a client that vanishes mid-answer.

mod common;

use common::{eventually, stack, stack_with, trust};
use http::{StatusCode, Version};
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::https::HttpsClient;
use tokenwire_bench::client::{ApproachClient, Targets};
use tokenwire_bench::prompts::DEFAULT_PROMPTS;
use tokenwire_bench::record::Failure;
use tokenwire_servers::launch::RelayOptions;

const TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn http3_streams_and_the_tcp_listener_points_to_it() {
    let s = stack().await;
    let addr = s[Approach::SseH3].addr;
    let want = s.model().expected_text(DEFAULT_PROMPTS[0], None);
    let mut c = ApproachClient::new(Approach::SseH3, &Targets::of(&s), &trust()).unwrap();
    for i in 0..2 {
        let rec = c.stream(DEFAULT_PROMPTS[0], i, true, TIMEOUT).await;
        assert!(rec.ok(), "{:?}", rec.error);
        assert_eq!(rec.text, want);
    }
    assert_eq!(c.connections(), 1, "reuse keeps one QUIC connection");
    // TCP on the same port: HTTP/2, with Alt-Svc naming the UDP port.
    let h2 = trust().client_config_offering(&[b"h2"]).unwrap();
    let resp = HttpsClient::new(addr, "localhost", h2)
        .post_json("/chat", r#"{"message":"hi"}"#.into(), false)
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(
        resp.headers()["alt-svc"],
        format!("h3=\":{}\"; ma=86400", addr.port()).as_str()
    );
}

#[tokio::test]
async fn bad_requests_over_http3_get_the_relays_answers() {
    let opts = RelayOptions {
        max_body: 1000,
        ..RelayOptions::default()
    };
    let s = stack_with(common::fast_model(), opts, Duration::from_secs(5)).await;
    let mut c = ApproachClient::new(Approach::SseH3, &Targets::of(&s), &trust()).unwrap();
    let rec = c.stream("  ", 0, true, TIMEOUT).await;
    assert_eq!(rec.failure, Some(Failure::HttpStatus), "{:?}", rec.error);
    assert!(rec.error.unwrap().contains("empty message"));
    let rec = c.stream(&"x".repeat(5000), 0, true, TIMEOUT).await;
    assert!(
        rec.error
            .as_deref()
            .is_some_and(|e| e.contains(StatusCode::PAYLOAD_TOO_LARGE.as_str())),
        "{:?}",
        rec.error
    );
    // The connection carries on.
    let rec = c.stream("hi", 0, true, TIMEOUT).await;
    assert!(rec.ok(), "{:?}", rec.error);
    assert_eq!(c.connections(), 1);
}

#[tokio::test]
async fn a_client_vanishing_mid_answer_stops_the_generation() {
    // Real pace: a generation would otherwise run ~17 s.
    let cfg = tokenwire_servers::model::ModelConfig::default();
    let s = stack_with(cfg, RelayOptions::default(), Duration::from_secs(1)).await;
    let t = Targets::of(&s);
    let task = tokio::spawn(async move {
        let mut c = ApproachClient::new(Approach::SseH3, &t, &trust()).unwrap();
        c.stream("go", 0, true, TIMEOUT).await
    });
    assert!(
        eventually(Duration::from_secs(5), || s[Approach::SseH3].stats.tokens()
            >= 3)
        .await,
        "no tokens"
    );
    assert_eq!(s.model_run().stats.active(), 1);
    task.abort();
    assert!(
        eventually(Duration::from_secs(2), || s.model_run().stats.active() == 0).await,
        "model still generating"
    );
    assert!(
        eventually(Duration::from_secs(1), || s[Approach::SseH3]
            .stats
            .aborted()
            == 1)
        .await
    );
}
