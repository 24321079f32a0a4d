//! The engine driven by packets built in memory and spans, as a normal user: every case the
//! root-only tests check against tcpdump on real traffic (exact and shared periods, setup
//! and teardown, the probe's own traffic, evictions, the exposition), checked here against
//! the same packets' own sums by time window. The root-only tests stay the real-kernel
//! check; these pin the engine's logic down without privileges.

mod common;

use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokenwire_probe::api::Query;
use tokenwire_probe::attribution::{ConnectionRecord, Quality, RequestRecord};
use tokenwire_probe::backend::replay::ReplayBackend;
use tokenwire_probe::capture_file::CapturedPacket;
use tokenwire_probe::engine::{Engine, EngineOptions};
use tokenwire_probe::flow::Counters;
use tokenwire_probe::labels::Labels;
use tokenwire_probe::packet::build::{ethernet, tcp4, udp4};
use tokenwire_probe::spans::{ConnRef, Outcome, Span, SpanTransport};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const FIN_ACK: u8 = 0x11;
/// A TLS ClientHello's first bytes: enough for the classifier to say "tls".
const CLIENT_HELLO: &[u8] = b"\x16\x03\x01\x00\x05hello";

/// One packet of a conversation, with what the ground truth needs.
struct Sent {
    ts_ns: u64,
    to_server: bool,
    ip_bytes: u64,
    frame: Vec<u8>,
}

/// A conversation between a client and a server on 127.0.0.1, packet by packet, each at
/// the time given (Retina-style packet building, Ethernet framing as on Linux's lo).
struct Conversation {
    udp: bool,
    client: u16,
    server: u16,
    sent: Vec<Sent>,
}

impl Conversation {
    fn tcp(client: u16, server: u16) -> Self {
        Self {
            udp: false,
            client,
            server,
            sent: Vec::new(),
        }
    }

    fn udp(client: u16, server: u16) -> Self {
        Self {
            udp: true,
            ..Self::tcp(client, server)
        }
    }

    fn conn(&self) -> ConnRef {
        ConnRef {
            transport: if self.udp {
                SpanTransport::Udp
            } else {
                SpanTransport::Tcp
            },
            client: addr(self.client),
            server: addr(self.server),
        }
    }

    /// A packet at `ts_ns`, up (client to server) or down, with `flags` (TCP) and payload.
    fn send(&mut self, ts_ns: u64, up: bool, flags: u8, payload: &[u8]) -> &mut Self {
        let (s, d) = if up {
            (self.client, self.server)
        } else {
            (self.server, self.client)
        };
        let lo = [127, 0, 0, 1];
        let ip = if self.udp {
            udp4(lo, s, lo, d, payload)
        } else {
            tcp4(lo, s, lo, d, flags, payload)
        };
        self.sent.push(Sent {
            ts_ns,
            to_server: up,
            ip_bytes: ip.len() as u64,
            frame: ethernet(0x0800, &ip),
        });
        self
    }

    /// Counters [to_server, to_client] of the packets sent in [from, to).
    fn window(&self, from: u64, to: u64) -> [Counters; 2] {
        let mut out = [Counters::default(); 2];
        for p in self.sent.iter().filter(|p| p.ts_ns >= from && p.ts_ns < to) {
            out[usize::from(!p.to_server)] += Counters {
                packets: 1,
                ip_bytes: p.ip_bytes,
                link_bytes: p.frame.len() as u64,
            };
        }
        out
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start(id: &str, approach: &str, c: &Conversation, transport: &'static str, t: u64) -> Span {
    Span::Start {
        id: id.into(),
        approach: approach.into(),
        conn: c.conn(),
        transport,
        time_ns: t,
    }
}

fn end(id: &str, t: u64, tokens: u64, app_bytes: u64) -> Span {
    Span::End {
        id: id.into(),
        time_ns: t,
        tokens,
        app_bytes,
        outcome: Outcome::Ok,
    }
}

fn close(c: &Conversation, t: u64) -> Span {
    Span::Close {
        conn: c.conn(),
        time_ns: t,
    }
}

/// The packets of all conversations in time order, as a capture would hold them.
fn capture(convs: &[&Conversation]) -> Vec<CapturedPacket> {
    let mut all: Vec<CapturedPacket> = convs
        .iter()
        .flat_map(|c| &c.sent)
        .map(|p| CapturedPacket {
            linktype: 1,
            iface: 1,
            orig_len: p.frame.len() as u32,
            data: p.frame.clone(),
            ts_ns: Some(p.ts_ns),
        })
        .collect();
    all.sort_by_key(|p| p.ts_ns);
    all
}

type TestEngine = Engine<ReplayBackend<std::vec::IntoIter<CapturedPacket>>>;

/// An engine over `convs`' packets and `spans`, played to the end of both.
fn replayed(convs: &[&Conversation], spans: Vec<Span>) -> TestEngine {
    let mut e = engine(convs, spans);
    play(&mut e);
    e.finish_all(Instant::now()).unwrap();
    e
}

fn engine(convs: &[&Conversation], spans: Vec<Span>) -> TestEngine {
    let backend = ReplayBackend::new(capture(convs).into_iter(), spans);
    Engine::new(backend, Labels::default(), EngineOptions::default())
}

fn play(e: &mut TestEngine) {
    while let Some(span) = e.backend_mut().next_span().unwrap() {
        e.span(span, Instant::now());
    }
}

fn figures(to_server: Counters, to_client: Counters) -> [Counters; 2] {
    [to_server, to_client]
}

fn of_request(r: &RequestRecord) -> [Counters; 2] {
    figures(r.to_server, r.to_client)
}

fn add(a: [Counters; 2], b: [Counters; 2]) -> [Counters; 2] {
    let (mut x, mut y) = (a[0], a[1]);
    x += b[0];
    y += b[1];
    [x, y]
}

fn setup_teardown(c: &ConnectionRecord) -> ([Counters; 2], [Counters; 2]) {
    (
        figures(c.setup.to_server, c.setup.to_client),
        figures(c.teardown.to_server, c.teardown.to_client),
    )
}

/// An SSE-like keep-alive connection: handshake, three requests one after the other, close.
fn keepalive() -> (Conversation, Vec<Span>) {
    let mut c = Conversation::tcp(40_000, 8080);
    c.send(1, true, SYN, b"")
        .send(2, false, SYN | ACK, b"")
        .send(3, true, ACK, b"")
        .send(4, true, PSH_ACK, CLIENT_HELLO)
        .send(5, false, PSH_ACK, &[0x16; 90]);
    let mut spans = Vec::new();
    for i in 0..3u64 {
        let t = 100 + i * 100;
        let id = format!("r{i}");
        spans.push(start(&id, "sse", &c, "tls", t));
        c.send(t + 1, true, PSH_ACK, &[0x17; 200]);
        for k in 0..(5 + i) {
            c.send(t + 10 + k, false, PSH_ACK, &[0x17; 40]);
        }
        spans.push(end(&id, t + 50, 5 + i, 30 * (5 + i)));
        // The client's ACK after the end: still this request's.
        c.send(t + 60, true, ACK, b"");
    }
    spans.push(close(&c, 400));
    c.send(401, true, FIN_ACK, b"")
        .send(402, false, FIN_ACK, b"")
        .send(403, true, ACK, b"");
    (c, spans)
}

#[test]
fn sequential_requests_are_exact_at_the_cuts() {
    let (c, spans) = keepalive();
    let e = replayed(&[&c], spans);
    let reqs = e.requests();
    let conns = e.connections();
    assert_eq!((reqs.len(), conns.len()), (3, 1));
    let cuts = [100, 200, 300, 400];
    let (setup, teardown) = setup_teardown(&conns[0]);
    assert_eq!(setup, c.window(0, cuts[0]), "setup: before the first start");
    let mut total = add(setup, teardown);
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(
            (r.attribution, r.transport, r.outcome, r.is_final),
            (Quality::Exact, "tls", Some(Outcome::Ok), true)
        );
        assert!(!r.includes_connection_overhead);
        assert_eq!(r.seq_on_connection, i as u32 + 1);
        assert_eq!(of_request(r), c.window(cuts[i], cuts[i + 1]), "request {i}");
        assert_eq!(r.tokens, 5 + i as u64);
        total = add(total, of_request(r));
    }
    assert_eq!(
        teardown,
        c.window(cuts[3], u64::MAX),
        "teardown: after the close"
    );
    assert_eq!(total, c.window(0, u64::MAX), "requests + setup + teardown");
    // The flow table classified the connection from its first payload.
    let rows = e.table().rows();
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.transport.as_str() == "tls" && r.approach == "sse")
    );
}

#[test]
fn a_fresh_connection_carries_its_setup_and_teardown() {
    let mut c = Conversation::tcp(40_001, 11435);
    c.send(1, true, SYN, b"")
        .send(2, false, SYN | ACK, b"")
        .send(3, true, ACK, b"")
        .send(4, true, PSH_ACK, CLIENT_HELLO);
    let mut spans = vec![start("only", "raw_api", &c, "tls", 10)];
    for k in 0..7 {
        c.send(20 + k, false, PSH_ACK, &[0x17; 60]);
    }
    spans.push(end("only", 40, 7, 7 * 30));
    spans.push(close(&c, 50));
    c.send(51, false, FIN_ACK, b"").send(52, true, FIN_ACK, b"");
    let e = replayed(&[&c], spans);
    let r = &e.requests()[0];
    assert!(r.includes_connection_overhead && r.is_final);
    assert_eq!(of_request(r), c.window(0, u64::MAX));
    let everything = c.window(0, u64::MAX);
    assert_eq!(
        r.wire_bytes,
        everything[0].ip_bytes + everything[1].ip_bytes
    );
    assert_eq!(r.bytes_per_token, Some(r.wire_bytes as f64 / 7.0));
}

#[test]
fn concurrent_streams_share_by_app_bytes_and_sum_exactly() {
    let mut c = Conversation::udp(50_000, 4433);
    let mut initial = vec![0xc3, 0, 0, 0, 1, 8];
    initial.extend([0u8; 1194]);
    c.send(1, true, 0, &initial)
        .send(2, false, 0, &[0xc3; 1200]);
    let mut spans = vec![start("a", "webtransport", &c, "quic", 10)];
    c.send(11, true, 0, &[0x40; 80]);
    spans.push(start("b", "webtransport", &c, "quic", 20));
    for k in 0..10 {
        c.send(21 + k, false, 0, &vec![0x40; 50 + k as usize]);
    }
    spans.push(end("a", 40, 3, 100));
    c.send(41, false, 0, &[0x40; 70]);
    spans.push(end("b", 50, 6, 300));
    spans.push(close(&c, 60));
    c.send(61, true, 0, &[0x40; 30]);
    let e = replayed(&[&c], spans);
    let reqs = e.requests();
    assert_eq!(reqs.len(), 2);
    assert!(
        reqs.iter()
            .all(|r| r.attribution == Quality::Shared && r.is_final)
    );
    let (setup, teardown) = setup_teardown(&e.connections()[0]);
    assert_eq!(setup, c.window(0, 10));
    let sum = add(
        add(of_request(&reqs[0]), of_request(&reqs[1])),
        add(setup, teardown),
    );
    assert_eq!(sum, c.window(0, u64::MAX), "the split is exact");
    // "a" alone before "b" started; the shared period split 1:3 by application bytes.
    let shared = c.window(20, 40);
    let a_alone = c.window(10, 20);
    let a = of_request(&reqs[0]);
    let expected = a_alone[0].ip_bytes + a_alone[1].ip_bytes;
    let share = (shared[0].ip_bytes + shared[1].ip_bytes) as f64 / 4.0;
    let got = a[0].ip_bytes + a[1].ip_bytes;
    assert!(
        (got as f64 - expected as f64 - share).abs() <= 1.0,
        "a: {got} vs {expected} + {share}"
    );
}

#[test]
fn the_probes_own_connections_are_never_counted() {
    let (c, spans) = keepalive();
    let mut own = Conversation::tcp(45_000, 9464);
    own.send(1, true, SYN, b"")
        .send(2, false, SYN | ACK, b"")
        .send(3, true, PSH_ACK, b"GET /metrics HTTP/1.1\r\n\r\n");
    let mut e = engine(&[&c, &own], spans);
    e.exclude(addr(9464));
    play(&mut e);
    e.finish_all(Instant::now()).unwrap();
    assert!(e.table().rows().iter().all(|r| r.server.port() != 9464));
    let metrics = scrape(&mut e);
    let all = c.window(0, u64::MAX);
    let sent: u64 = metrics_sum(&metrics, "tokenwire_wire_bytes_total{");
    assert_eq!(sent, all[0].ip_bytes + all[1].ip_bytes);
}

#[test]
fn evicted_keys_keep_their_totals_and_counters_never_go_down() {
    let (c, spans) = keepalive();
    let mut e = engine(&[&c], spans);
    play(&mut e);
    e.finish_all(Instant::now()).unwrap();
    let before = scrape(&mut e);
    let wire = |m: &str| metrics_sum(m, "tokenwire_wire_bytes_total{");
    // Closed connections' keys go after --closed-timeout (30 s by default).
    e.poll(Instant::now() + Duration::from_secs(31)).unwrap();
    assert_eq!(e.table().evictions, 2, "both directions' keys");
    assert_eq!(e.table().len(), 0, "the connection is retired");
    let after = scrape(&mut e);
    assert_eq!(wire(&after), wire(&before));
    assert!(after.contains("tokenwire_probe_evictions_total 2\n"));
    let all = c.window(0, u64::MAX);
    assert_eq!(wire(&after), all[0].ip_bytes + all[1].ip_bytes);
}

#[test]
fn the_exposition_matches_the_records_and_promtool_accepts_it() {
    let (c, spans) = keepalive();
    let mut e = replayed(&[&c], spans);
    let text = scrape(&mut e);
    common::promtool_check(&text);
    let reqs = e.requests();
    let tokens: u64 = reqs.iter().map(|r| r.tokens).sum();
    for line in [
        format!("tokenwire_tokens_total{{approach=\"sse\"}} {tokens}"),
        "tokenwire_requests_total{approach=\"sse\",outcome=\"ok\"} 3".to_owned(),
        "tokenwire_requests_active{approach=\"sse\"} 0".to_owned(),
        "tokenwire_request_bytes_per_token_count{approach=\"sse\"} 3".to_owned(),
        "tokenwire_probe_spans_accepted_total 7".to_owned(),
        "tokenwire_probe_info{backend=\"replay\"".to_owned(),
    ] {
        assert!(text.contains(&line), "{line} in\n{text}");
    }
    let sum: f64 = reqs.iter().map(|r| r.bytes_per_token.unwrap()).sum();
    let line = text
        .lines()
        .find(|l| l.starts_with("tokenwire_request_bytes_per_token_sum{approach=\"sse\"}"))
        .unwrap();
    let got: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((got - sum).abs() < 1e-9, "{got} vs {sum}");
    // The JSON endpoints answer from the same engine.
    let (status, _, body) = e.answer(Query::Requests {
        limit: 2,
        approach: Some("sse".into()),
        since_unix_ns: None,
    });
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["requests"].as_array().unwrap().len(), 2);
    assert_eq!(v["requests"][1]["id"], "r2");
}

#[test]
fn bad_span_datagrams_are_counted_by_reason_and_lose_nothing() {
    let (c, spans) = keepalive();
    let mut e = replayed(&[&c], spans);
    let now = Instant::now();
    let bad: [&[u8]; 4] = [
        b"garbage",
        br#"{"v":9,"type":"start"}"#,
        br#"{"v":1,"type":"end","id":"nobody","time_unix_ns":1,"tokens":1,"app_bytes":1,"outcome":"ok"}"#,
        &[b'x'; 5000],
    ];
    for m in bad {
        assert!(!e.span_datagram(m, now));
    }
    let good = br#"{"v":1,"type":"start","id":"late","approach":"sse","transport":"tls","client":"127.0.0.1:1","server":"127.0.0.1:2","time_unix_ns":500}"#;
    assert!(e.span_datagram(good, now));
    let text = scrape(&mut e);
    for (reason, n) in [
        ("malformed", 1),
        ("version", 1),
        ("unknown_request", 1),
        ("too_large", 1),
        ("duplicate_id", 0),
    ] {
        let line = format!("tokenwire_probe_spans_rejected_total{{reason=\"{reason}\"}} {n}\n");
        assert!(text.contains(&line), "{line}");
    }
    assert!(text.contains("tokenwire_probe_spans_accepted_total 8\n"));
    assert_eq!(
        e.requests().len(),
        4,
        "the three final ones and the new one"
    );
}

#[test]
fn exported_counters_never_go_down_when_a_connection_is_classified_later() {
    // A TLS connection scraped after its handshake and before its ClientHello: `tcp` then.
    let mut c = Conversation::tcp(40_002, 8080);
    c.send(1, true, SYN, b"")
        .send(2, false, SYN | ACK, b"")
        .send(3, true, ACK, b"");
    c.send(10, true, PSH_ACK, CLIENT_HELLO)
        .send(11, false, PSH_ACK, &[0x16; 300]);
    c.send(20, true, FIN_ACK, b"").send(21, false, FIN_ACK, b"");
    let mut e = engine(&[&c], Vec::new());
    let series = |text: &str, transport: &str| -> Vec<u64> {
        ["to_server", "to_client"]
            .iter()
            .map(|d| {
                let prefix = format!(
                    "tokenwire_wire_bytes_total{{approach=\"sse\",transport=\"{transport}\",direction=\"{d}\"}} "
                );
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map_or(0, |v| v.parse().unwrap())
            })
            .collect()
    };
    e.backend_mut().advance_to(5).unwrap();
    let first = scrape(&mut e);
    let handshake = c.window(0, 5);
    assert_eq!(
        series(&first, "tcp"),
        [handshake[0].ip_bytes, handshake[1].ip_bytes]
    );
    play(&mut e);
    let second = scrape(&mut e);
    assert_eq!(
        series(&second, "tcp"),
        series(&first, "tcp"),
        "what was exported as tcp stays there"
    );
    let rest = c.window(5, u64::MAX);
    assert_eq!(series(&second, "tls"), [rest[0].ip_bytes, rest[1].ip_bytes]);
    // The flow table and the API say tls for the whole connection.
    assert!(
        e.table()
            .rows()
            .iter()
            .all(|r| r.transport.as_str() == "tls")
    );
    // Evicted and retired: the same series, the same values.
    e.poll(Instant::now() + Duration::from_secs(31)).unwrap();
    assert_eq!(e.table().len(), 0);
    let third = scrape(&mut e);
    for t in ["tcp", "tls"] {
        assert_eq!(series(&third, t), series(&second, t), "{t} after retiring");
    }
}

fn scrape(e: &mut TestEngine) -> String {
    let (status, content_type, body) = e.answer(Query::Metrics);
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain; version=0.0.4"));
    body
}

/// The sum of every sample whose line starts with `prefix`.
fn metrics_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}
