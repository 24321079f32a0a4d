//! Counting in user space, for the backends that see whole packets (libpcap live capture,
//! capture files): per key counters and the same rare events the eBPF program sends, fed
//! into the flow table. Platform-free.

use crate::flow::{Counters, PacketKey};
use crate::health::Health;
use crate::packet::{LinkType, PacketError, link_len, parse};
use crate::passive::{Passive, PassivePacketBuf};
use crate::table::{EventKind, FlowTable};
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::time::Instant;
use tokenwire_probe_common::{TCP_FIN, TCP_RST};

/// How a packet that gives no key is counted, as the kernel side counts it: not IP
/// (no IP bytes), or malformed (IP bytes from the end of its link header, none when the
/// link header itself is cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unkeyed {
    NotIp(Counters),
    Malformed(Counters),
}

pub fn unkeyed(link: LinkType, data: &[u8], error: PacketError, link_bytes: u64) -> Unkeyed {
    let counters = |ip_bytes| Counters {
        packets: 1,
        ip_bytes,
        link_bytes,
    };
    match error {
        PacketError::NotIp(_) => Unkeyed::NotIp(counters(0)),
        _ => Unkeyed::Malformed(counters(
            link_len(link, data).map_or(0, |l| link_bytes.saturating_sub(l as u64)),
        )),
    }
}

/// What counting one packet gives, to compare one backend's answer with another's (the
/// kernel's: `backend::kernel_run`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Counted under a flow key (interface and hook left out).
    Flow {
        proto: u8,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        counters: Counters,
        tcp_flags: u8,
        /// Bytes after the transport header.
        payload_len: u32,
    },
    Unkeyed(Unkeyed),
}

/// How user space counts one whole packet (captured in full).
pub fn outcome(link: LinkType, data: &[u8]) -> Outcome {
    let link_bytes = data.len() as u64;
    match parse(link, data) {
        Ok(p) => Outcome::Flow {
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            counters: Counters {
                packets: 1,
                ip_bytes: link_bytes.saturating_sub(p.link_len as u64),
                link_bytes,
            },
            tcp_flags: p.tcp_flags,
            payload_len: p.payload.len() as u32,
        },
        Err(e) => Outcome::Unkeyed(unkeyed(link, data, e, link_bytes)),
    }
}

#[derive(Debug, Default)]
struct KeyAcc {
    counters: Counters,
    tcp_flags: u8,
    sent_payload: bool,
    sent_close: bool,
}

/// An event waiting for the next flush (the table is not always at hand: live capture
/// counts on its own thread).
#[derive(Debug)]
struct PendingEvent {
    key: PacketKey,
    kind: EventKind,
    tcp_flags: u8,
    payload: Vec<u8>,
}

#[derive(Debug)]
pub struct Accumulator {
    keys: HashMap<PacketKey, KeyAcc>,
    events: Vec<PendingEvent>,
    /// Most keys held, as the kernel map's size bounds eBPF's: packets of a new key beyond
    /// it are counted as "map full", never dropped.
    max_keys: usize,
    pub health: Health,
    /// TCP server ports whose packets are kept for passive reading (none: nothing kept).
    passive_ports: BTreeSet<u16>,
    /// Packets kept for passive reading, in capture order, until the next hand-over.
    passive: Vec<PassivePacketBuf>,
    /// Some were not kept (more than [`MAX_PASSIVE_PENDING`] waited).
    passive_lost: bool,
}

/// Packets kept for passive reading between two hand-overs, at most: beyond it they are
/// lost, counted, and the requests being read marked (live capture only: a replay hands
/// them over as it goes).
pub const MAX_PASSIVE_PENDING: usize = 1 << 18;

impl Default for Accumulator {
    fn default() -> Self {
        Self::with_max_keys(usize::MAX)
    }
}

impl Accumulator {
    /// Unbounded (a capture file: its keys go when it ends).
    pub fn new() -> Self {
        Self::default()
    }

    /// Holding at most `max_keys` keys (live capture).
    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            keys: HashMap::new(),
            events: Vec::new(),
            max_keys,
            health: Health::default(),
            passive_ports: BTreeSet::new(),
            passive: Vec::new(),
            passive_lost: false,
        }
    }

    /// Keeps the packets of TCP connections with a server port in `ports` for passive
    /// reading ([`Accumulator::drain_passive`]).
    pub fn read_passive(&mut self, ports: BTreeSet<u16>) {
        self.passive_ports = ports;
    }

    /// Packets kept for passive reading, not yet handed over.
    pub fn passive_pending(&self) -> usize {
        self.passive.len()
    }

    /// Hands the kept packets to passive reading, in capture order.
    pub fn drain_passive(&mut self, sink: &mut Passive) {
        if std::mem::take(&mut self.passive_lost) {
            sink.capture_lost();
        }
        for p in self.passive.drain(..) {
            sink.packet(&p.as_packet());
        }
    }

    /// Counts one packet: `data` is what was captured, `orig_len` its length on the wire,
    /// `time_ns` when it passed (Unix nanoseconds; passive reading's clock).
    pub fn packet(
        &mut self,
        link: LinkType,
        data: &[u8],
        orig_len: u32,
        ifindex: u32,
        time_ns: u64,
    ) {
        let link_bytes = u64::from(orig_len);
        let p = match parse(link, data) {
            Ok(p) => p,
            Err(e) => {
                match unkeyed(link, data, e, link_bytes) {
                    Unkeyed::NotIp(c) => self.health.not_ip += c,
                    Unkeyed::Malformed(c) => self.health.malformed += c,
                }
                return;
            }
        };
        let ip_bytes = link_bytes.saturating_sub(p.link_len as u64);
        let key = PacketKey {
            proto: p.proto,
            src: p.src,
            dst: p.dst,
            ifindex,
            ingress: false,
        };
        if self.keys.len() >= self.max_keys && !self.keys.contains_key(&key) {
            self.health.map_full += Counters {
                packets: 1,
                ip_bytes,
                link_bytes,
            };
            return;
        }
        let acc = self.keys.entry(key).or_default();
        let first = acc.counters.packets == 0;
        acc.counters += Counters {
            packets: 1,
            ip_bytes,
            link_bytes,
        };
        acc.tcp_flags |= p.tcp_flags;
        // The same events as the kernel side: first packet, first payload, FIN/RST.
        if !p.payload.is_empty() && !acc.sent_payload {
            acc.sent_payload = true;
            let n = p.payload.len().min(tokenwire_probe_common::PAYLOAD_CAPTURE);
            let payload = p.payload[..n].to_vec();
            self.events.push(PendingEvent {
                key,
                kind: EventKind::Payload,
                tcp_flags: p.tcp_flags,
                payload,
            });
        } else if first {
            self.events.push(PendingEvent {
                key,
                kind: EventKind::Open,
                tcp_flags: p.tcp_flags,
                payload: Vec::new(),
            });
        }
        if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && !acc.sent_close {
            acc.sent_close = true;
            self.events.push(PendingEvent {
                key,
                kind: EventKind::Close,
                tcp_flags: p.tcp_flags,
                payload: Vec::new(),
            });
        }
        if p.proto == crate::flow::IPPROTO_TCP
            && (self.passive_ports.contains(&p.dst.port())
                || self.passive_ports.contains(&p.src.port()))
        {
            if self.passive.len() >= MAX_PASSIVE_PENDING {
                self.passive_lost = true;
                return;
            }
            let payload_len = p.wire_payload_len(data.len());
            let keep = p.payload.len().min(payload_len as usize);
            self.passive.push(PassivePacketBuf {
                time_ns,
                src: p.src,
                dst: p.dst,
                ifindex,
                counters: Counters {
                    packets: 1,
                    ip_bytes,
                    link_bytes,
                },
                tcp_flags: p.tcp_flags,
                seq: p.tcp_seq,
                payload_len,
                payload: p.payload[..keep].to_vec(),
            });
        }
    }

    /// Hands pending events, then every key's totals, to the table.
    pub fn flush(&mut self, table: &mut FlowTable, now: Instant) {
        for e in self.events.drain(..) {
            table.event(e.key, e.kind, e.tcp_flags, &e.payload);
        }
        for (k, acc) in &self.keys {
            table.set_counters(*k, acc.counters, acc.tcp_flags, now);
        }
        self.health.flows_tracked = self.keys.len() as u64;
    }

    /// Forgets idle keys (the table keeps their totals as its base).
    pub fn evict(&mut self, table: &mut FlowTable, keys: &[PacketKey]) {
        for k in keys {
            if self.keys.remove(k).is_some() {
                table.evicted(k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;
    use crate::packet::build::{ethernet, udp4};

    #[test]
    fn keys_beyond_the_bound_are_counted_as_map_full_never_dropped() {
        let lo = [127, 0, 0, 1];
        let packet = |port: u16| ethernet(0x0800, &udp4(lo, port, lo, 9, b"x"));
        let mut acc = Accumulator::with_max_keys(2);
        let mut table = FlowTable::new(Labels::default());
        for port in [1000, 1001, 1002, 1000] {
            let p = packet(port);
            acc.packet(LinkType::Ethernet, &p, p.len() as u32, 1, 0);
        }
        let now = Instant::now();
        acc.flush(&mut table, now);
        let counted: u64 = table.rows().iter().map(|r| r.counters.packets).sum();
        assert_eq!((counted, acc.health.map_full.packets), (3, 1));
        // Evicting a key makes room; its totals stay in the table.
        let first = table.idle_keys(
            now + std::time::Duration::from_secs(1),
            std::time::Duration::ZERO,
            std::time::Duration::ZERO,
        );
        acc.evict(&mut table, &first);
        let p = packet(1002);
        acc.packet(LinkType::Ethernet, &p, p.len() as u32, 1, 0);
        acc.flush(&mut table, now);
        let counted: u64 = table.rows().iter().map(|r| r.counters.packets).sum();
        assert_eq!((counted, acc.health.map_full.packets), (4, 1));
        assert_eq!(table.evictions, 2);
    }
}
