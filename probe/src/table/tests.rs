//! `table`'s unit tests.

use super::*;
use crate::spans::{ConnRef, SpanTransport};

fn key(src: &str, dst: &str, proto: u8) -> PacketKey {
    PacketKey {
        proto,
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        ifindex: 1,
        ingress: false,
    }
}

fn c(p: u64, b: u64) -> Counters {
    Counters {
        packets: p,
        ip_bytes: b,
        link_bytes: b + 14 * p,
    }
}

#[test]
fn directions_from_labels_and_syn() {
    let now = Instant::now();
    let mut t = FlowTable::new(Labels::default());
    let up = key("127.0.0.1:50000", "127.0.0.1:8080", IPPROTO_TCP);
    let down = key("127.0.0.1:8080", "127.0.0.1:50000", IPPROTO_TCP);
    t.set_counters(up, c(3, 200), TCP_SYN, now);
    t.set_counters(down, c(2, 120), TCP_SYN | TCP_ACK, now);
    // Unlabelled: the SYN sender is the client, whatever the ports.
    let up2 = key("127.0.0.1:7000", "127.0.0.1:40000", IPPROTO_TCP);
    t.event(up2, EventKind::Open, TCP_SYN, &[]);
    t.set_counters(up2, c(1, 60), TCP_SYN, now);
    let rows = t.rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        (
            rows[0].approach.as_str(),
            rows[0].direction,
            rows[0].counters
        ),
        ("sse", Direction::ToServer, c(3, 200))
    );
    assert_eq!(
        (rows[1].direction, rows[1].counters),
        (Direction::ToClient, c(2, 120))
    );
    assert_eq!(rows[0].transport, Transport::Tcp);
    assert_eq!(rows[2].server, "127.0.0.1:40000".parse().unwrap());
    assert_eq!(rows[2].approach, "other");
}

#[test]
fn classification_from_first_payloads() {
    let mut t = FlowTable::new(Labels::default());
    let q = key("[::1]:5000", "[::1]:4433", IPPROTO_UDP);
    t.event(q, EventKind::Payload, 0, &[0xc3, 0, 0, 0, 1, 8, 0, 0]);
    t.set_counters(q, c(1, 1200), 0, Instant::now());
    let u = key("127.0.0.1:5000", "127.0.0.1:9999", IPPROTO_UDP);
    t.event(u, EventKind::Payload, 0, b"hello");
    t.set_counters(u, c(1, 33), 0, Instant::now());
    let h = key("127.0.0.1:5001", "127.0.0.1:11434", IPPROTO_TCP);
    t.event(
        h,
        EventKind::Payload,
        TCP_ACK,
        b"POST /api/chat HTTP/1.1\r\n",
    );
    t.set_counters(h, c(1, 100), 0, Instant::now());
    let rows = t.rows();
    let tr: Vec<(&str, Transport)> = rows
        .iter()
        .map(|r| (r.approach.as_str(), r.transport))
        .collect();
    assert_eq!(
        tr,
        [
            ("webtransport", Transport::Quic),
            ("other", Transport::Udp),
            ("upstream", Transport::Http)
        ]
    );
}

#[test]
fn eviction_keeps_the_totals() {
    let t0 = Instant::now();
    let mut t = FlowTable::new(Labels::default());
    let k = key("127.0.0.1:50000", "127.0.0.1:8080", IPPROTO_TCP);
    t.set_counters(k, c(10, 1000), TCP_FIN, t0);
    assert!(
        t.idle_keys(
            t0 + Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(5)
        )
        .is_empty()
    );
    let idle = t.idle_keys(
        t0 + Duration::from_secs(6),
        Duration::from_secs(60),
        Duration::from_secs(5),
    );
    assert_eq!(idle, vec![k]);
    t.evicted(&k);
    // A late packet after eviction: the capture starts the key again from zero.
    t.set_counters(k, c(1, 52), 0, t0 + Duration::from_secs(7));
    assert_eq!(t.rows()[0].counters, c(11, 1052));
    assert_eq!(t.evictions, 1);
}

#[test]
fn a_span_finds_its_connection() {
    let mut t = FlowTable::new(Labels::default());
    let k = PacketKey {
        proto: IPPROTO_TCP,
        src: "127.0.0.1:42968".parse().unwrap(),
        dst: "127.0.0.1:8080".parse().unwrap(),
        ifindex: 1,
        ingress: false,
    };
    t.event(k, EventKind::Open, TCP_SYN, &[]);
    let c = ConnRef {
        transport: SpanTransport::Tcp,
        client: k.src,
        server: k.dst,
    };
    assert_eq!(t.keys_of(&c), vec![k]);
}

#[test]
fn a_carried_table_continues_every_series() {
    let now = Instant::now();
    let mut t = FlowTable::new(Labels::default());
    let up = key("127.0.0.1:50000", "127.0.0.1:9000", IPPROTO_TCP);
    let down = key("127.0.0.1:9000", "127.0.0.1:50000", IPPROTO_TCP);
    t.event(up, EventKind::Open, TCP_SYN, &[]);
    t.event(up, EventKind::Payload, TCP_ACK, b"GET / HTTP/1.1\r\n");
    t.set_counters(up, c(5, 400), TCP_SYN, now);
    t.set_counters(down, c(4, 900), TCP_SYN | TCP_ACK, now);
    // A connection whose keys were evicted and which then retired: gone from the kernel.
    let gone = key("127.0.0.1:50001", "127.0.0.1:8080", IPPROTO_UDP);
    t.set_counters(gone, c(7, 700), 0, now);
    t.evicted(&gone);
    t.retire();
    let before = t.wire_totals();
    assert_eq!(before.len(), 3, "{before:?}");

    let json = t.carry_out(7).to_json();
    assert!(matches!(
        CarriedTable::from_json(&json, 8),
        Err(CarryError::Generation { .. })
    ));
    assert!(matches!(
        CarriedTable::from_json(b"{\"generation\":7", 7),
        Err(CarryError::Json(_))
    ));
    let mut next = FlowTable::new(Labels::default());
    assert_eq!(
        next.carry_in(CarriedTable::from_json(&json, 7).unwrap(), now),
        1
    );
    assert_eq!(next.wire_totals(), before, "nothing moves before a read");
    // The kernel counted on meanwhile; no event names the connection again.
    next.set_counters(up, c(8, 640), 0, now);
    let after = next.wire_totals();
    assert_eq!(after.len(), 3, "no new series: {after:?}");
    let http_up = ("other".to_owned(), "http", "to_server");
    assert_eq!(after[&http_up], c(8, 640));
    assert!(after.iter().all(|(k, v)| v.packets >= before[k].packets));
    assert_eq!(next.evictions, t.evictions);
}
