//! The `grpc` companion over real TLS and HTTP/2 on loopback: the answer as gRPC frames it
//! (one length-prefixed message per token, the status in the trailers), its statuses for
//! bad input and a missing upstream, a listener that speaks only h2, and a client that
//! vanishes mid-answer.

mod common;

use common::{eventually, stack, stack_with, trust};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use std::net::SocketAddr;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::{ApproachClient, Targets};
use tokenwire_bench::prompts::DEFAULT_PROMPTS;
use tokenwire_bench::record::Failure;
use tokenwire_servers::launch::RelayOptions;
use tokenwire_servers::protocol::grpc::{ChatRequest, MESSAGE_PREFIX, Token};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn h2(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Full<bytes::Bytes>> {
    let cfg = trust().client_config_offering(&[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A gRPC call by hand: `message` length-prefixed as gRPC frames it.
fn call(addr: SocketAddr, path: &str, message: &str) -> Request<Full<bytes::Bytes>> {
    let msg = ChatRequest {
        message: message.to_owned(),
    }
    .encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(&msg);
    Request::post(format!("https://localhost:{}{path}", addr.port()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body.into()))
        .unwrap()
}

#[tokio::test]
async fn one_message_per_token_and_the_status_in_the_trailers() {
    let s = stack().await;
    let addr = s[Approach::Grpc].addr;
    let want = s.model().expected_text(DEFAULT_PROMPTS[0], None);
    let resp = h2(addr)
        .await
        .send_request(call(addr, Approach::Grpc.path(), DEFAULT_PROMPTS[0]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    // The body is nothing but length-prefixed Token messages, one per token.
    let bytes = body.to_bytes();
    let (mut rest, mut text, mut messages) = (&bytes[..], String::new(), 0u64);
    while !rest.is_empty() {
        assert_eq!(rest[0], 0, "uncompressed");
        let len = u32::from_be_bytes(rest[1..MESSAGE_PREFIX].try_into().unwrap()) as usize;
        let token = Token::decode(&rest[MESSAGE_PREFIX..MESSAGE_PREFIX + len]).unwrap();
        assert!(!token.text.is_empty());
        text.push_str(&token.text);
        messages += 1;
        rest = &rest[MESSAGE_PREFIX + len..];
    }
    assert_eq!(text, want);
    assert_eq!(messages, s[Approach::Grpc].stats.tokens());
    // The bench's client (tonic's) reads the same, and counts the same bytes.
    let mut c = ApproachClient::new(Approach::Grpc, &Targets::of(&s), &trust()).unwrap();
    let rec = c.stream(DEFAULT_PROMPTS[0], 0, true, TIMEOUT).await;
    assert!(rec.ok(), "{:?}", rec.error);
    assert_eq!(rec.text, want);
    assert_eq!(rec.app_bytes, bytes.len() as u64);
}

#[tokio::test]
async fn bad_calls_get_a_status_that_says_why() {
    let opts = RelayOptions {
        max_body: 1000,
        ..RelayOptions::default()
    };
    let s = stack_with(common::fast_model(), opts, Duration::from_secs(5)).await;
    let addr = s[Approach::Grpc].addr;
    let mut c = ApproachClient::new(Approach::Grpc, &Targets::of(&s), &trust()).unwrap();
    // An empty prompt.
    let rec = c.stream("  ", 0, true, TIMEOUT).await;
    let e = rec.error.expect("an error");
    assert!(e.contains("InvalidArgument") && e.contains("empty"), "{e}");
    assert_eq!(rec.failure, Some(Failure::ServerReported));
    // A prompt over the limit.
    let rec = c.stream(&"x".repeat(2000), 0, true, TIMEOUT).await;
    let e = rec.error.expect("an error");
    assert!(
        e.contains("OutOfRange") || e.contains("ResourceExhausted"),
        "{e}"
    );
    // A method the service has not: UNIMPLEMENTED (12), in the headers of an empty answer.
    let resp = h2(addr)
        .await
        .send_request(call(addr, "/tokenwire.v1.Chat/Nope", "hi"))
        .await
        .unwrap();
    assert_eq!(resp.headers()["grpc-status"], "12");
    // The listener offers h2 alone: a client offering only HTTP/1.1 finds no protocol.
    let cfg = trust().client_config().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await;
    let Err(e) = refused else {
        panic!("a handshake offering only http/1.1 succeeded")
    };
    let e = e.to_string();
    assert!(
        e.contains("NoApplicationProtocol") || e.contains("protocol"),
        "{e}"
    );
    // The connection still serves a good call after all that.
    let rec = c.stream("hi", 0, true, TIMEOUT).await;
    assert!(rec.ok(), "{:?}", rec.error);
    assert_eq!(
        c.connections(),
        1,
        "the bad calls did not cost the connection"
    );
}

#[tokio::test]
async fn no_upstream_is_unavailable() {
    let opts = RelayOptions {
        upstream: "http://127.0.0.1:9".into(),
        ..RelayOptions::default()
    };
    let s = common::relays(&opts).await;
    let mut c = ApproachClient::new(Approach::Grpc, &Targets::of(&s), &trust()).unwrap();
    let rec = c.stream("hi", 0, true, TIMEOUT).await;
    let e = rec.error.expect("an error");
    assert!(e.contains("Unavailable"), "{e}");
    assert_eq!(rec.failure, Some(Failure::ServerReported));
}

#[tokio::test]
async fn a_client_vanishing_mid_answer_stops_the_generation() {
    // Real pace: a generation would otherwise run ~17 s.
    let cfg = tokenwire_servers::model::ModelConfig::default();
    let s = stack_with(cfg, RelayOptions::default(), Duration::from_secs(1)).await;
    let addr = s[Approach::Grpc].addr;
    let resp = h2(addr)
        .await
        .send_request(call(addr, Approach::Grpc.path(), "go"))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let mut seen = 0;
    while seen < 3 * (MESSAGE_PREFIX + 2) {
        let frame = body.frame().await.unwrap().unwrap();
        seen += frame.into_data().map(|d| d.len()).unwrap_or(0);
    }
    assert_eq!(s.model_run().stats.active(), 1);
    drop(body);
    assert!(
        eventually(Duration::from_secs(1), || s.model_run().stats.active() == 0).await,
        "model still generating"
    );
    assert!(
        eventually(Duration::from_secs(1), || s[Approach::Grpc].stats.aborted()
            == 1)
        .await,
        "the request is not counted aborted"
    );
}
