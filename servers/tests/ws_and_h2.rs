//! The `sse-h2` and `ws` companions over real TLS on loopback: what each negotiates,
//! HTTP/2 streams at once on one connection, the WebSocket relay's answers to bad input
//! (close codes), one prompt at a time, clients that vanish mid-answer, and the
//! connection staying counted while its socket lives.

mod common;

use common::{eventually, stack, stack_with, trust};
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::https::HttpsClient;
use tokenwire_bench::client::{ApproachClient, Targets};
use tokenwire_bench::prompts::DEFAULT_PROMPTS;
use tokenwire_bench::record::Failure;
use tokenwire_servers::launch::RelayOptions;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const TIMEOUT: Duration = Duration::from_secs(30);

async fn tls(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let cfg = trust().client_config_offering(alpn).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap()
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn ws(addr: SocketAddr) -> Ws {
    let stream = tls(addr, &[b"http/1.1"]).await;
    let url = format!("wss://localhost:{}/ws", addr.port());
    tokio_tungstenite::client_async(url, stream)
        .await
        .unwrap()
        .0
}

/// The close frame the server ends with (after any token messages).
async fn close_code(ws: &mut Ws) -> (CloseCode, String) {
    loop {
        match tokio::time::timeout(TIMEOUT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
            Some(Ok(Message::Text(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn sse_h2_takes_http2_serves_http11_too_and_sse_offers_only_http11() {
    let s = stack().await;
    let want = s.model().expected_text(DEFAULT_PROMPTS[0], None);
    // The bench's sse-h2 client: HTTP/2, the exact text, labelled by its version.
    let mut c = ApproachClient::new(Approach::SseH2, &Targets::of(&s), &trust()).unwrap();
    let rec = c.stream(DEFAULT_PROMPTS[0], 0, true, TIMEOUT).await;
    assert!(rec.ok(), "{:?}", rec.error);
    assert_eq!(rec.text, want);
    let h2 = s[Approach::SseH2].addr;
    let resp = HttpsClient::new(
        h2,
        "localhost",
        trust().client_config_offering(&[b"h2"]).unwrap(),
    )
    .post_json("/chat", r#"{"message":"hi"}"#.into(), false)
    .await
    .unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    // A client without h2 gets HTTP/1.1 on the same listener.
    let mut h1 = HttpsClient::new(h2, "localhost", trust().client_config().unwrap());
    let resp = h1
        .post_json("/chat", r#"{"message":"hi"}"#.into(), false)
        .await
        .unwrap();
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.status(), StatusCode::OK);
    // The sse listener offers no h2 (a browser would take it): an h2-only client fails.
    let t = Targets::of(&s).with(Approach::SseH2, s[Approach::Sse].addr);
    let mut wrong = ApproachClient::new(Approach::SseH2, &t, &trust()).unwrap();
    let rec = wrong.stream("hi", 0, false, TIMEOUT).await;
    assert!(
        matches!(rec.error, Some(ref e) if e.contains("TLS") || e.contains("h2")),
        "{:?}",
        rec.error
    );
}

#[tokio::test]
async fn three_streams_at_once_on_one_http2_connection() {
    let s = stack().await;
    let io = TokioIo::new(tls(s[Approach::SseH2].addr, &[b"h2"]).await);
    let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let port = s[Approach::SseH2].addr.port();
    let one = |prompt: &'static str| {
        let mut sender = sender.clone();
        async move {
            let req = Request::post(format!("https://localhost:{port}/chat"))
                .body(Full::new(bytes::Bytes::from(
                    serde_json::json!({ "message": prompt }).to_string(),
                )))
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            assert_eq!(resp.version(), Version::HTTP_2);
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            let mut parser = tokenwire_servers::protocol::sse::Parser::with_max_line(1 << 20);
            let events = parser.feed(&body).unwrap();
            let text: String = events
                .iter()
                .map(|e| e.data.as_str())
                .filter(|d| *d != "[DONE]")
                .collect();
            assert_eq!(events.last().map(|e| e.data.as_str()), Some("[DONE]"));
            text
        }
    };
    let (a, b, c) = tokio::join!(
        one(DEFAULT_PROMPTS[0]),
        one(DEFAULT_PROMPTS[1]),
        one(DEFAULT_PROMPTS[2])
    );
    for (text, prompt) in [(a, 0), (b, 1), (c, 2)] {
        assert_eq!(text, s.model().expected_text(DEFAULT_PROMPTS[prompt], None));
    }
    assert_eq!(s[Approach::SseH2].stats.connections(), 1);
    assert_eq!(s[Approach::SseH2].stats.requests(), 3);
}

#[tokio::test]
async fn the_websocket_relay_closes_with_a_code_that_says_why() {
    let opts = RelayOptions {
        max_frame: 1024,
        ..RelayOptions::default()
    };
    let s = stack_with(common::fast_model(), opts, Duration::from_secs(1)).await;
    let addr = s[Approach::Ws].addr;
    let cases: [(Message, CloseCode, &str); 5] = [
        (
            Message::binary(vec![1, 2, 3]),
            CloseCode::Unsupported,
            "text",
        ),
        (
            Message::text("{not json"),
            CloseCode::Invalid,
            "invalid JSON",
        ),
        (
            Message::text(r#"{"message":"  "}"#),
            CloseCode::Invalid,
            "empty",
        ),
        (
            Message::text(r#"{"msg":"hi"}"#),
            CloseCode::Invalid,
            "empty",
        ),
        (Message::text(" ".repeat(4096)), CloseCode::Size, ""),
    ];
    for (msg, want, says) in cases {
        let mut w = ws(addr).await;
        w.send(msg.clone()).await.unwrap();
        let (code, reason) = close_code(&mut w).await;
        assert_eq!(code, want, "{msg:?}: {reason}");
        assert!(reason.contains(says), "{msg:?}: {reason}");
    }
    // A second prompt while the first streams breaks the one-at-a-time rule.
    let mut w = ws(addr).await;
    w.send(Message::text(r#"{"message":"one"}"#)).await.unwrap();
    w.send(Message::text(r#"{"message":"two"}"#)).await.unwrap();
    let (code, reason) = close_code(&mut w).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    // Not an upgrade: 426, and the answer says what the endpoint wants.
    let mut c = HttpsClient::new(addr, "localhost", trust().client_config().unwrap());
    let resp = c
        .request(http::Method::GET, "/ws", bytes::Bytes::new(), false)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UPGRADE_REQUIRED);
    let resp = c
        .request(http::Method::GET, "/other", bytes::Bytes::new(), false)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // The relay is fine after all that.
    let mut good = ApproachClient::new(Approach::Ws, &Targets::of(&s), &trust()).unwrap();
    let rec = good.stream("hi", 0, true, TIMEOUT).await;
    assert!(rec.ok(), "{:?}", rec.error);
}

#[tokio::test]
async fn a_websocket_client_vanishing_mid_answer_stops_the_generation() {
    // Real pace: a generation would otherwise run ~17 s.
    let cfg = tokenwire_servers::model::ModelConfig::default();
    let s = stack_with(cfg, RelayOptions::default(), Duration::from_secs(1)).await;
    let mut w = ws(s[Approach::Ws].addr).await;
    w.send(Message::text(r#"{"message":"go"}"#)).await.unwrap();
    for _ in 0..3 {
        let m = w.next().await.unwrap().unwrap();
        assert!(matches!(m, Message::Text(ref t) if !t.is_empty()), "{m:?}");
    }
    assert_eq!(s.model_run().stats.active(), 1);
    // The socket stays an open connection while it lives (the upgrade handed it over).
    assert_eq!(s[Approach::Ws].stats.connections(), 1);
    drop(w);
    assert!(
        eventually(Duration::from_secs(1), || s.model_run().stats.active() == 0).await,
        "model still generating"
    );
    assert!(
        eventually(Duration::from_secs(1), || s[Approach::Ws].stats.active()
            == 0)
        .await
    );
    assert_eq!(s[Approach::Ws].stats.aborted(), 1);
}

#[tokio::test]
async fn the_websocket_client_reports_the_servers_close() {
    // An upstream that is not there: the relay closes with 1011 and the reason.
    let opts = RelayOptions {
        upstream: "http://127.0.0.1:9".into(),
        ..RelayOptions::default()
    };
    let s = common::relays(&opts).await;
    let mut c = ApproachClient::new(Approach::Ws, &Targets::of(&s), &trust()).unwrap();
    let rec = c.stream("hi", 0, true, TIMEOUT).await;
    let e = rec.error.expect("an error");
    assert!(e.contains("1011"), "{e}");
    assert_eq!(rec.failure, Some(Failure::ServerReported));
}
