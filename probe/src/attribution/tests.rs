//! The period algorithm on counters given by hand.

use super::*;
use crate::flow::Counters;
use crate::spans::SpanTransport;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::time::Instant;

/// A connection whose counters the test moves by hand.
struct Fake(RefCell<Snapshot>);

impl Fake {
    fn add(&self, up: u64, down: u64) {
        let mut s = self.0.borrow_mut();
        s.to_server += Counters {
            packets: 1,
            ip_bytes: up,
            link_bytes: up + 14,
        };
        s.to_client += Counters {
            packets: 1,
            ip_bytes: down,
            link_bytes: down + 14,
        };
    }
}

impl Counts for Fake {
    fn snapshot(&self, _: &ConnRef) -> Snapshot {
        *self.0.borrow()
    }
    fn idle(&self, _: &ConnRef) -> Option<(bool, Duration)> {
        Some((false, Duration::ZERO))
    }
}

fn conn() -> ConnRef {
    ConnRef {
        transport: SpanTransport::Udp,
        client: "127.0.0.1:5000".parse().unwrap(),
        server: "127.0.0.1:4433".parse().unwrap(),
    }
}

fn start(id: &str) -> Span {
    Span::Start {
        id: id.into(),
        approach: "webtransport".into(),
        conn: conn(),
        transport: "quic",
        time_ns: 1,
    }
}

fn end(id: &str, tokens: u64, app_bytes: u64) -> Span {
    Span::End {
        id: id.into(),
        time_ns: 2,
        tokens,
        app_bytes,
        outcome: Outcome::Ok,
    }
}

fn close() -> Span {
    Span::Close {
        conn: conn(),
        time_ns: 3,
    }
}

/// An attributor with what it reported kept, as the engine keeps it.
struct Kept {
    a: Attributor,
    done: Vec<RequestRecord>,
    conns: Vec<ConnectionRecord>,
}

impl Kept {
    fn new() -> Self {
        Self {
            a: Attributor::new(),
            done: Vec::new(),
            conns: Vec::new(),
        }
    }

    fn take(&mut self) {
        for e in self.a.take_events() {
            match e {
                Event::Request(r) => self.done.push(r),
                Event::Connection(c) => self.conns.push(c),
                _ => {}
            }
        }
    }

    fn apply(
        &mut self,
        span: Span,
        src: &dyn Counts,
        cut_ns: u64,
        now: Instant,
    ) -> Result<(), RejectReason> {
        let r = self.a.apply(span, src, cut_ns, now);
        self.take();
        r
    }

    fn tick(&mut self, src: &dyn Counts, now: Instant) {
        self.a.tick(src, now);
        self.take();
    }

    fn requests(&self, src: &dyn Counts) -> Vec<RequestRecord> {
        let mut out = self.done.clone();
        out.extend(self.a.running(src));
        out
    }

    fn connections(&self, src: &dyn Counts) -> Vec<ConnectionRecord> {
        let mut out = self.conns.clone();
        out.extend(self.a.open_connections(src));
        out
    }
}

fn total(recs: &[RequestRecord]) -> u64 {
    recs.iter().map(|r| r.wire_bytes).sum()
}

#[test]
fn sequential_requests_are_exact_and_setup_stays_apart() {
    let f = Fake(RefCell::default());
    let mut a = Kept::new();
    let now = Instant::now();
    f.add(100, 200); // handshake
    let _ = a.apply(start("a"), &f, 0, now);
    f.add(10, 20);
    let _ = a.apply(end("a", 2, 20), &f, 0, now);
    f.add(1, 0); // trailing ACK: still a's
    let _ = a.apply(start("b"), &f, 0, now);
    f.add(30, 40);
    let _ = a.apply(end("b", 4, 40), &f, 0, now);
    let _ = a.apply(close(), &f, 0, now);
    f.add(5, 5); // teardown
    a.tick(&f, now + Duration::from_secs(2));
    let recs = a.requests(&f);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].wire_bytes, 31);
    assert_eq!(recs[1].wire_bytes, 70);
    assert!(
        recs.iter().all(|r| r.is_final
            && r.attribution == Quality::Exact
            && !r.includes_connection_overhead)
    );
    let conns = a.connections(&f);
    assert_eq!(conns[0].setup.total().ip_bytes, 300);
    assert_eq!(conns[0].teardown.total().ip_bytes, 10);
    assert_eq!(
        total(&recs) + 300 + 10,
        f.snapshot(&conn()).total().ip_bytes
    );
    assert_eq!(recs[1].bytes_per_token, Some(17.5));
}

#[test]
fn connections_one_after_another_on_one_tuple_count_only_their_own() {
    // A QUIC client keeping its UDP socket: session after session on one 4-tuple,
    // whose counters never restart. Each lone request gets its own handshake and
    // stream, and the records add up to the tuple's total.
    let f = Fake(RefCell::default());
    let mut a = Kept::new();
    let now = Instant::now();
    f.add(100, 200); // first handshake
    let _ = a.apply(start("a"), &f, 0, now);
    f.add(10, 20);
    let _ = a.apply(end("a", 3, 20), &f, 0, now);
    let _ = a.apply(close(), &f, 0, now);
    f.add(1, 1); // the first session's last packets
    a.tick(&f, now + Duration::from_secs(2)); // finished
    f.add(50, 60); // second handshake, long after
    let _ = a.apply(start("b"), &f, 0, now + Duration::from_secs(3));
    f.add(7, 8);
    let _ = a.apply(end("b", 2, 8), &f, 0, now + Duration::from_secs(3));
    let _ = a.apply(close(), &f, 0, now + Duration::from_secs(3));
    // The third session follows the second's close at once: its handshake is its own.
    f.add(40, 30);
    let _ = a.apply(start("c"), &f, 0, now + Duration::from_secs(3));
    f.add(2, 3);
    let _ = a.apply(end("c", 1, 3), &f, 0, now + Duration::from_secs(3));
    let _ = a.apply(close(), &f, 0, now + Duration::from_secs(3));
    a.tick(&f, now + Duration::from_secs(9));
    let recs = a.requests(&f);
    let bytes: Vec<u64> = recs.iter().map(|r| r.wire_bytes).collect();
    assert_eq!(bytes, [332, 125, 75]);
    assert!(
        recs.iter()
            .all(|r| r.is_final && r.includes_connection_overhead)
    );
    assert_eq!(total(&recs), f.snapshot(&conn()).total().ip_bytes);
    let conns = a.connections(&f);
    assert_eq!(conns.len(), 3);
    assert_eq!(conns[2].setup.total().ip_bytes, 70);
}

#[test]
fn a_lone_request_carries_setup_and_teardown() {
    let f = Fake(RefCell::default());
    let mut a = Kept::new();
    let now = Instant::now();
    f.add(100, 200);
    let _ = a.apply(start("a"), &f, 0, now);
    f.add(10, 20);
    let _ = a.apply(end("a", 3, 20), &f, 0, now);
    let _ = a.apply(close(), &f, 0, now);
    f.add(5, 5);
    assert!(!a.requests(&f)[0].is_final, "waits for the teardown");
    a.tick(&f, now + Duration::from_secs(2));
    let r = &a.requests(&f)[0];
    assert!(r.is_final && r.includes_connection_overhead);
    assert_eq!(r.wire_bytes, 340);
    assert_eq!(r.packets, 6);
}

#[test]
fn concurrent_streams_share_by_app_bytes_and_sum_exactly() {
    let f = Fake(RefCell::default());
    let mut a = Kept::new();
    let now = Instant::now();
    f.add(50, 50);
    let _ = a.apply(start("a"), &f, 0, now);
    f.add(10, 0); // a alone
    let _ = a.apply(start("b"), &f, 0, now);
    f.add(100, 201); // shared
    let _ = a.apply(end("a", 1, 100), &f, 0, now);
    f.add(0, 7); // b alone
    let _ = a.apply(end("b", 2, 200), &f, 0, now);
    let _ = a.apply(close(), &f, 0, now);
    a.tick(&f, now + Duration::from_secs(2));
    let recs = a.requests(&f);
    assert!(recs.iter().all(|r| r.attribution == Quality::Shared));
    // a: 10 own + a third of 301 (100.33 -> 100); b: 7 + 201 (200.67 -> 201).
    let by_id: HashMap<&str, u64> = recs.iter().map(|r| (r.id.as_str(), r.wire_bytes)).collect();
    assert_eq!(by_id["a"], 110);
    assert_eq!(by_id["b"], 208);
    assert_eq!(total(&recs) + 100, f.snapshot(&conn()).total().ip_bytes);
}

/// A source that never saw the connection.
struct Blind;

impl Counts for Blind {
    fn snapshot(&self, _: &ConnRef) -> Snapshot {
        Snapshot::default()
    }
    fn idle(&self, _: &ConnRef) -> Option<(bool, Duration)> {
        None
    }
}

#[test]
fn a_connection_the_capture_never_saw_is_forgotten_when_its_spans_stop() {
    let mut a = Kept::new();
    a.a.idle_limit = Duration::from_secs(10);
    let now = Instant::now();
    let _ = a.apply(start("a"), &Blind, 0, now);
    assert!(a.a.due(&Blind, now + Duration::from_secs(5)).is_empty());
    let _ = a.apply(end("a", 1, 1), &Blind, 0, now + Duration::from_secs(8));
    assert!(a.a.due(&Blind, now + Duration::from_secs(12)).is_empty());
    a.tick(&Blind, now + Duration::from_secs(19));
    let recs = a.requests(&Blind);
    assert!(recs[0].is_final && recs[0].wire_bytes == 0);
}

#[test]
fn split_is_exact_for_awkward_numbers() {
    let d = Snapshot {
        to_server: Counters {
            packets: 7,
            ip_bytes: 1001,
            link_bytes: 1099,
        },
        to_client: Counters::default(),
    };
    for weights in [vec![1, 1, 1], vec![0, 0], vec![3, 0, 5], vec![u64::MAX, 1]] {
        let parts = split(&d, &weights);
        let mut sum = Snapshot::default();
        for p in &parts {
            sum += *p;
        }
        assert_eq!(sum, d, "{weights:?}");
    }
}

#[test]
fn unknown_and_duplicate_spans_are_counted_not_applied() {
    let f = Fake(RefCell::default());
    let mut a = Kept::new();
    let now = Instant::now();
    assert_eq!(
        a.apply(end("ghost", 1, 1), &f, 0, now),
        Err(RejectReason::UnknownRequest)
    );
    assert_eq!(a.apply(start("a"), &f, 0, now), Ok(()));
    assert_eq!(
        a.apply(start("a"), &f, 0, now),
        Err(RejectReason::DuplicateId)
    );
    let mut too_many = 0;
    for i in 0..MAX_APPROACHES + 5 {
        let r = a.apply(
            Span::Start {
                id: format!("n{i}"),
                approach: format!("a{i}"),
                conn: conn(),
                transport: "quic",
                time_ns: 1,
            },
            &f,
            0,
            now,
        );
        if r == Err(RejectReason::TooManyApproaches) {
            too_many += 1;
        }
    }
    assert_eq!(a.a.approaches.len(), MAX_APPROACHES);
    assert_eq!(too_many, 6);
    // The first "a" and the 63 new approaches' requests; the 6 refused ones are not.
    assert_eq!(a.requests(&f).len(), MAX_APPROACHES);
}

#[test]
fn starts_beyond_the_limits_are_refused_by_reason() {
    let f = Fake(RefCell::default());
    let mut a = Kept::new();
    a.a.limits = Limits {
        open_requests: 6,
        connections: 2,
        streams_per_connection: 3,
    };
    let now = Instant::now();
    let on = |port: u16, id: &str| Span::Start {
        id: id.into(),
        approach: "webtransport".into(),
        conn: ConnRef {
            client: SocketAddr::from(([127, 0, 0, 1], port)),
            ..conn()
        },
        transport: "quic",
        time_ns: 1,
    };
    let mut results = Vec::new();
    for i in 0..4 {
        results.push(a.apply(on(1, &format!("a{i}")), &f, 0, now));
    }
    assert_eq!(results[..3], [Ok(()), Ok(()), Ok(())]);
    assert_eq!(results[3], Err(RejectReason::TooManyStreams));
    assert_eq!(a.apply(on(2, "b0"), &f, 0, now), Ok(()));
    assert_eq!(
        a.apply(on(3, "c0"), &f, 0, now),
        Err(RejectReason::TooManyConnections)
    );
    assert_eq!(a.apply(on(2, "b1"), &f, 0, now), Ok(()));
    assert_eq!(a.apply(on(2, "b2"), &f, 0, now), Ok(()));
    assert_eq!(
        a.apply(on(2, "b3"), &f, 0, now),
        Err(RejectReason::TooManyRequests)
    );
    // An end frees its stream (and, owning nothing more, it is final): room again.
    assert_eq!(a.apply(end("a0", 1, 1), &f, 0, now), Ok(()));
    assert_eq!(a.apply(on(1, "a4"), &f, 0, now), Ok(()));
}
