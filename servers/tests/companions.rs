//! The three companions over real TLS and QUIC on loopback, with the bench's clients:
//! exact text, connection reuse, concurrency, bad input, cancellation, upstream failures
//! and graceful shutdown.

mod common;

use bytes::Bytes;
use common::{eventually, stack, stack_with, trust};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use std::time::Duration;
use tokenwire_bench::approach::Approach;
use tokenwire_bench::client::https::HttpsClient;
use tokenwire_bench::client::wt::WtClient;
use tokenwire_bench::client::{ApproachClient, Targets};
use tokenwire_bench::prompts::DEFAULT_PROMPTS;
use tokenwire_servers::launch::RelayOptions;
use tokenwire_servers::protocol::framing::encode;
use tokenwire_servers::wt_relay::codes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TIMEOUT: Duration = Duration::from_secs(30);

fn client(approach: Approach, targets: &Targets) -> ApproachClient {
    ApproachClient::new(approach, targets, &trust()).unwrap()
}

#[tokio::test]
async fn each_companion_streams_the_models_exact_text() {
    let s = stack().await;
    let prompt = DEFAULT_PROMPTS[0];
    let want = s.model().expected_text(prompt, None);
    for approach in Approach::ALL {
        let mut c = client(approach, &Targets::of(&s));
        let rec = c.stream(prompt, 0, true, TIMEOUT).await;
        assert!(rec.ok(), "{approach}: {:?}", rec.error);
        assert_eq!(rec.text, want, "{approach}");
        assert!(
            rec.tokens_counted > 300,
            "{approach}: {} tokens",
            rec.tokens_counted
        );
        assert!(rec.ttft.is_some() && rec.gaps.len() as u64 == rec.tokens_counted - 1);
        if approach == Approach::Raw {
            assert_eq!(
                rec.tokens_reported,
                Some(rec.tokens_counted),
                "usage counts every token"
            );
        }
    }
    // Each relay counted what it relayed.
    for approach in Approach::ALL {
        assert_eq!(
            s[approach].stats.tokens(),
            s[Approach::Sse].stats.tokens(),
            "{approach}"
        );
    }
    assert_eq!(
        s.model_run().stats.tokens(),
        Approach::ALL.len() as u64 * s[Approach::Sse].stats.tokens()
    );
    // The relays timed every token from the model's created_at to their hand-over; on
    // loopback, well under a token gap. (The raw proxy forwards /v1 chunks, whose
    // `created` is in whole seconds: it times nothing.)
    for relay in Approach::ALL
        .into_iter()
        .filter(|&a| a != Approach::Raw)
        .map(|a| &s[a])
    {
        let d = relay.stats.relay_delay.summary().expect("relay delays");
        assert_eq!(d.count, relay.stats.tokens(), "{}", relay.name);
        assert!(d.p50_ms > 0.0 && d.p50_ms < 20.0, "{}: {d:?}", relay.name);
        assert!(d.max_ms >= d.p99_ms / 1.125, "{}: {d:?}", relay.name);
    }
    assert_eq!(s[Approach::Raw].stats.relay_delay.summary(), None);
}

#[tokio::test]
async fn reuse_serves_ten_prompts_on_one_connection_and_fresh_opens_one_each() {
    let s = stack().await;
    for approach in Approach::ALL {
        let mut c = client(approach, &Targets::of(&s));
        for (i, p) in DEFAULT_PROMPTS.iter().enumerate() {
            let rec = c.stream(p, i, true, TIMEOUT).await;
            assert!(rec.ok(), "{approach} prompt {i}: {:?}", rec.error);
            assert_eq!(rec.text, s.model().expected_text(p, None));
        }
        assert_eq!(c.connections(), 1, "{approach}: client connections");
    }
    for approach in Approach::ALL {
        // TCP connections, or QUIC connections for wt.
        assert_eq!(s[approach].stats.connections(), 1, "{approach}: accepted");
        assert_eq!(s[approach].stats.requests(), 10, "{approach}: requests");
    }

    for approach in Approach::ALL {
        let mut c = client(approach, &Targets::of(&s));
        for (i, p) in DEFAULT_PROMPTS[..3].iter().enumerate() {
            assert!(c.stream(p, i, false, TIMEOUT).await.ok());
        }
        assert_eq!(c.connections(), 3, "{approach}: fresh mode");
    }
    assert!(
        eventually(Duration::from_secs(2), || Approach::ALL.iter().all(|&a| s
            [a]
            .stats
            .connections()
            == 4))
        .await
    );
}

#[tokio::test]
async fn two_clients_stream_at_once_through_each_companion() {
    let s = stack().await;
    for approach in Approach::ALL {
        let t = Targets::of(&s);
        let (mut a, mut b) = (client(approach, &t), client(approach, &t));
        let (ra, rb) = tokio::join!(
            a.stream(DEFAULT_PROMPTS[1], 1, true, TIMEOUT),
            b.stream(DEFAULT_PROMPTS[2], 2, true, TIMEOUT)
        );
        assert_eq!(
            ra.text,
            s.model().expected_text(DEFAULT_PROMPTS[1], None),
            "{approach}"
        );
        assert_eq!(
            rb.text,
            s.model().expected_text(DEFAULT_PROMPTS[2], None),
            "{approach}"
        );
    }
    // The same two prompts over one WebTransport session, concurrently.
    let mut wt = WtClient::new(&s[Approach::Wt].url, &trust()).unwrap();
    let session = wt.session(true).await.unwrap();
    let one = |p: &'static str| {
        let session = session.clone();
        async move {
            let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
            send.write_all(&encode(p.as_bytes())).await.unwrap();
            send.finish().await.unwrap();
            let mut out = Vec::new();
            recv.read_to_end(&mut out).await.unwrap();
            out
        }
    };
    let (x, y) = tokio::join!(one(DEFAULT_PROMPTS[3]), one(DEFAULT_PROMPTS[4]));
    assert_eq!(
        frames_text(&x),
        s.model().expected_text(DEFAULT_PROMPTS[3], None)
    );
    assert_eq!(
        frames_text(&y),
        s.model().expected_text(DEFAULT_PROMPTS[4], None)
    );
}

/// Joins the tokens of a whole wt response (which must end with the empty frame).
fn frames_text(bytes: &[u8]) -> String {
    let mut d = tokenwire_servers::protocol::framing::FrameDecoder::new(1 << 20);
    d.extend(bytes);
    let mut text = String::new();
    let mut ended = false;
    while let Some(f) = d.next_frame().unwrap() {
        assert!(!ended, "data after the end frame");
        ended = f.is_empty();
        text.push_str(std::str::from_utf8(&f).unwrap());
    }
    assert!(ended && d.buffered() == 0);
    text
}

async fn status_and_body(
    c: &mut HttpsClient,
    method: Method,
    path: &str,
    body: impl Into<Bytes>,
) -> (StatusCode, String) {
    let resp = c.request(method, path, body.into(), false).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn http_companions_refuse_bad_input_cleanly() {
    let opts = RelayOptions {
        max_body: 1024,
        ..RelayOptions::default()
    };
    let s = stack_with(common::fast_model(), opts, Duration::from_secs(1)).await;
    let mut sse = HttpsClient::new(
        s[Approach::Sse].addr,
        "localhost",
        trust().client_config().unwrap(),
    );
    let cases: [(Method, &str, Bytes, StatusCode); 7] = [
        (
            Method::GET,
            "/chat",
            Bytes::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (Method::POST, "/nope", Bytes::new(), StatusCode::NOT_FOUND),
        (
            Method::POST,
            "/chat",
            Bytes::from_static(b"{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/chat",
            Bytes::from_static(br#"{"message":"   "}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/chat",
            Bytes::from_static(br#"{"msg":"hi"}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/chat",
            Bytes::from(vec![b' '; 4096]),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            "/chat",
            Bytes::from_static(br#"{"message":7}"#),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, body, want) in cases {
        let (status, text) = status_and_body(&mut sse, method.clone(), path, body).await;
        assert_eq!(status, want, "sse {method} {path}: {text}");
        assert!(text.starts_with(r#"{"error":""#), "{text}");
    }
    let mut raw = HttpsClient::new(
        s[Approach::Raw].addr,
        "localhost",
        trust().client_config().unwrap(),
    );
    let (status, _) = status_and_body(&mut raw, Method::POST, "/api/chat", vec![b'x'; 4096]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    // The proxy passes the upstream's own errors through untouched.
    let (status, text) = status_and_body(
        &mut raw,
        Method::POST,
        "/api/chat",
        r#"{"model":"nope","messages":[{"role":"user","content":"x"}]}"#,
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::NOT_FOUND,
            r#"{"error":"model 'nope' not found"}"#
        )
    );
    // Still serving.
    let rec = client(Approach::Sse, &Targets::of(&s))
        .stream("ok?", 0, true, TIMEOUT)
        .await;
    assert!(rec.ok(), "{:?}", rec.error);
}

async fn read_code(recv: &mut wtransport::RecvStream) -> Option<u32> {
    let mut buf = [0u8; 256];
    loop {
        match recv.read(&mut buf).await {
            Ok(Some(_)) => continue,
            Ok(None) => return None,
            Err(wtransport::error::StreamReadError::Reset(code)) => {
                return u32::try_from(code.into_inner()).ok();
            }
            Err(e) => panic!("unexpected read error {e}"),
        }
    }
}

#[tokio::test]
async fn wt_resets_bad_streams_and_the_session_carries_on() {
    let opts = RelayOptions {
        stall: Duration::from_millis(300),
        max_frame: 1 << 20,
        ..RelayOptions::default()
    };
    let s = stack_with(common::fast_model(), opts, Duration::from_secs(1)).await;
    let mut wt = WtClient::new(&s[Approach::Wt].url, &trust()).unwrap();
    let session = wt.session(true).await.unwrap();
    let cases: [(&[u8], bool, u32); 6] = [
        (b"abc:hello", true, codes::BAD_FRAME),
        (b"1048577:", false, codes::FRAME_TOO_LARGE),
        (b"10:abc", false, codes::STALLED),
        (b"10:abc", true, codes::BAD_FRAME), // finished mid-frame
        (b"0:", true, codes::BAD_FRAME),     // empty prompt
        (b"2:hi3:abc", true, codes::BAD_FRAME),
    ];
    for (bytes, finish, want) in cases {
        let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
        send.write_all(bytes).await.unwrap();
        if finish {
            send.finish().await.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(5), read_code(&mut recv))
            .await
            .unwrap();
        assert_eq!(got, Some(want), "{:?}", String::from_utf8_lossy(bytes));
    }
    // The same session still serves a good prompt.
    let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
    send.write_all(&encode(b"still there?")).await.unwrap();
    send.finish().await.unwrap();
    let mut out = Vec::new();
    recv.read_to_end(&mut out).await.unwrap();
    assert_eq!(
        frames_text(&out),
        s.model().expected_text("still there?", None)
    );
    assert_eq!(s[Approach::Wt].stats.connections(), 1);
    // Session for another path: refused with 404.
    let url = s[Approach::Wt].url.replace("/wt", "/other");
    let mut other = WtClient::new(&url, &trust()).unwrap();
    assert!(other.session(true).await.is_err());
}

#[tokio::test]
async fn unreachable_upstream_is_502_or_a_stream_error() {
    // A port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let opts = RelayOptions {
        upstream: url,
        ..RelayOptions::default()
    };
    let s = common::relays(&opts).await;
    let (raw, sse, wt) = (&s[Approach::Raw], &s[Approach::Sse], &s[Approach::Wt]);
    let mut c = HttpsClient::new(sse.addr, "localhost", trust().client_config().unwrap());
    let (status, text) =
        status_and_body(&mut c, Method::POST, "/chat", r#"{"message":"hi"}"#).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    assert!(text.contains("upstream unreachable"), "{text}");
    let mut c = HttpsClient::new(raw.addr, "localhost", trust().client_config().unwrap());
    let (status, text) = status_and_body(&mut c, Method::GET, "/api/tags", "").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
    let mut w = WtClient::new(&wt.url, &trust()).unwrap();
    let session = w.session(true).await.unwrap();
    let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
    send.write_all(&encode(b"hi")).await.unwrap();
    send.finish().await.unwrap();
    assert_eq!(read_code(&mut recv).await, Some(codes::UPSTREAM_FAILED));
}

/// A real TCP peer posing as an Ollama that dies mid-answer: headers, two NDJSON lines,
/// then the socket closes without the final chunk.
async fn dying_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let lines = [
                    r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"Hello"},"done":false}"#,
                    r#"{"model":"m","created_at":"x","message":{"role":"assistant","content":" world"},"done":false}"#,
                ];
                let mut out = String::from(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                for l in lines {
                    out.push_str(&format!("{:x}\r\n{l}\n\r\n", l.len() + 1));
                }
                let _ = sock.write_all(out.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                // dropped: the stream ends without its last chunk
            });
        }
    });
    url
}

#[tokio::test]
async fn upstream_dying_mid_stream_ends_each_stream_with_an_error() {
    let opts = RelayOptions {
        upstream: dying_upstream().await,
        ..RelayOptions::default()
    };
    let s = common::relays(&opts).await;
    let targets = Targets::of(&s);
    let (raw, wt) = (&s[Approach::Raw], &s[Approach::Wt]);

    let rec = client(Approach::Sse, &targets)
        .stream("x", 0, false, TIMEOUT)
        .await;
    assert_eq!(rec.text, "Hello world");
    let err = rec.error.unwrap();
    assert!(
        err.contains("server reported") && err.contains("upstream"),
        "{err}"
    );

    let mut c = HttpsClient::new(raw.addr, "localhost", trust().client_config().unwrap());
    let (status, text) = status_and_body(&mut c, Method::POST, "/api/chat", "{}").await;
    assert_eq!(status, StatusCode::OK);
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with(r#"{"error":"upstream stream failed"#),
        "{text}"
    );

    let mut w = WtClient::new(&wt.url, &trust()).unwrap();
    let session = w.session(true).await.unwrap();
    let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
    send.write_all(&encode(b"x")).await.unwrap();
    send.finish().await.unwrap();
    assert_eq!(read_code(&mut recv).await, Some(codes::UPSTREAM_FAILED));
    assert_eq!(
        wt.stats.tokens(),
        2,
        "the two tokens went out before the reset"
    );
}

#[tokio::test]
async fn a_client_vanishing_mid_stream_cancels_the_generation_within_a_second() {
    // Real pace: a generation would otherwise run ~17 s.
    let cfg = tokenwire_servers::model::ModelConfig::default();
    let s = stack_with(cfg, RelayOptions::default(), Duration::from_secs(1)).await;
    let model_active = || s.model_run().stats.active();

    // sse and raw: read three tokens, then drop the connection.
    for (approach, addr, path, body) in [
        (
            Approach::Sse,
            s[Approach::Sse].addr,
            "/chat",
            r#"{"message":"go"}"#.to_owned(),
        ),
        (
            Approach::Raw,
            s[Approach::Raw].addr,
            "/api/chat",
            r#"{"model":"gemma3:12b","messages":[{"role":"user","content":"go"}]}"#.to_owned(),
        ),
    ] {
        let mut c = HttpsClient::new(addr, "localhost", trust().client_config().unwrap());
        let resp = c.post_json(path, body, false).await.unwrap();
        let mut body = resp.into_body();
        for _ in 0..3 {
            body.frame().await.unwrap().unwrap();
        }
        assert_eq!(model_active(), 1, "{approach}: generating");
        drop(body);
        drop(c);
        assert!(
            eventually(Duration::from_secs(1), || model_active() == 0).await,
            "{approach}: model still generating"
        );
    }
    assert!(
        eventually(Duration::from_secs(1), || s[Approach::Sse].stats.active()
            == 0
            && s[Approach::Raw].stats.active() == 0)
        .await
    );

    // wt: read a few frames, then close the session.
    let mut w = WtClient::new(&s[Approach::Wt].url, &trust()).unwrap();
    let session = w.session(true).await.unwrap();
    let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
    send.write_all(&encode(b"go")).await.unwrap();
    send.finish().await.unwrap();
    let mut buf = [0u8; 64];
    recv.read(&mut buf).await.unwrap();
    assert_eq!(model_active(), 1, "wt: generating");
    w.close();
    drop((send, recv, session));
    assert!(
        eventually(Duration::from_secs(1), || model_active() == 0).await,
        "wt: model still generating"
    );
    assert!(
        eventually(Duration::from_secs(1), || s[Approach::Wt].stats.active()
            == 0)
        .await
    );
    assert_eq!(s.model_run().stats.aborted(), 3);
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let mut cfg = common::fast_model();
    cfg.timing.speed = 10.0; // ~1.7 s per answer
    let s = stack_with(cfg, RelayOptions::default(), Duration::from_secs(20)).await;
    let t = Targets::of(&s);
    let shutdown = s.shutdown.clone();
    let streams = async {
        let mut clients: Vec<ApproachClient> =
            Approach::ALL.iter().map(|&a| client(a, &t)).collect();
        futures_util::future::join_all(
            clients
                .iter_mut()
                .map(|c| c.stream("finish me", 0, true, TIMEOUT)),
        )
        .await
    };
    let stop = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        shutdown.cancel();
    };
    let (records, ()) = tokio::join!(streams, stop);
    let want = s.model().expected_text("finish me", None);
    assert_eq!(records.len(), Approach::ALL.len());
    for r in records {
        assert!(r.ok(), "{}: {:?}", r.approach, r.error);
        assert_eq!(r.text, want, "{}", r.approach);
    }
    for r in s.into_running() {
        tokio::time::timeout(Duration::from_secs(10), r.task)
            .await
            .expect("server stopped")
            .unwrap();
    }
    // Nothing listens any more.
    assert!(
        tokio::net::TcpStream::connect(t.addr(Approach::Sse))
            .await
            .is_err()
    );
}
