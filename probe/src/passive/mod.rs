//! Accounting from the packets alone, for servers that send no spans (an unmodified
//! Ollama, vLLM, llama.cpp server, or the relays' own upstream legs): plaintext HTTP/1.1
//! connections on the ports given (`--http-ports`) are read as their packets pass, each
//! request's answer decoded (Ollama NDJSON, OpenAI SSE, a whole JSON body), and every
//! packet charged to the request it served. The records have the span-fed records' schema,
//! with `source: passive` and what the packets showed (docs/passive.md).
//!
//! Any backend feeds it: the eBPF classifier sends every packet of those ports with a
//! bounded copy of its payload, libpcap and capture files hand whole packets. Platform-free
//! and bounded: connections followed, requests pipelined, head, line and body sizes all have
//! limits, and each thing not read is a counted outcome.

mod conn;
pub mod decoder;
pub mod http;
pub mod lines;
mod ollama;
mod openai;
pub mod stream;
mod track;
mod whole;

use crate::attribution::{Event, RequestRecord};
use crate::flow::Counters;
use conn::Conn;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use tokenwire_probe_common::approach::{MODEL_PORT, VLLM_PORT};

/// The ports read by default: Ollama's and vLLM's (and most OpenAI-compatible servers').
pub const DEFAULT_HTTP_PORTS: [u16; 2] = [MODEL_PORT, VLLM_PORT];
/// Requests sent on a connection before their answers, at most.
pub const MAX_PIPELINED: usize = 64;
/// Token gaps kept per request for its quantiles (the first this many).
pub const MAX_TOKEN_TIMES: usize = 1 << 16;

/// One packet of a connection to read.
#[derive(Debug, Clone, Copy)]
pub struct PassivePacket<'a> {
    /// When it passed, Unix nanoseconds.
    pub time_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ifindex: u32,
    /// This packet's counters (one packet).
    pub counters: Counters,
    pub tcp_flags: u8,
    pub seq: u32,
    /// Payload bytes on the wire.
    pub payload_len: u32,
    /// The captured part of the payload (its first bytes).
    pub payload: &'a [u8],
}

/// A [`PassivePacket`] that owns its payload: what a capture hands over later.
#[derive(Debug, Clone)]
pub struct PassivePacketBuf {
    pub time_ns: u64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ifindex: u32,
    pub counters: Counters,
    pub tcp_flags: u8,
    pub seq: u32,
    pub payload_len: u32,
    pub payload: Vec<u8>,
}

impl PassivePacketBuf {
    pub fn as_packet(&self) -> PassivePacket<'_> {
        PassivePacket {
            time_ns: self.time_ns,
            src: self.src,
            dst: self.dst,
            ifindex: self.ifindex,
            counters: self.counters,
            tcp_flags: self.tcp_flags,
            seq: self.seq,
            payload_len: self.payload_len,
            payload: &self.payload,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PassiveOptions {
    /// Server ports whose TCP connections are read.
    pub ports: BTreeSet<u16>,
    /// Connections followed at once; more are counted (`connection_limit`), not read.
    pub max_connections: usize,
    /// A connection without packets for this long is over (its open requests `unknown`).
    pub idle_ns: u64,
    /// A closed connection's last ACKs are waited for this long.
    pub close_grace_ns: u64,
}

impl Default for PassiveOptions {
    fn default() -> Self {
        Self {
            ports: DEFAULT_HTTP_PORTS.into_iter().collect(),
            max_connections: 65_536,
            idle_ns: 300_000_000_000,
            close_grace_ns: 1_000_000_000,
        }
    }
}

/// What passive reading counted, by outcome (`tokenwire_passive_outcomes_total`): the
/// requests recorded, and each reason something was not read.
#[derive(Debug, Clone, Default)]
pub struct PassiveCounts {
    pub packets: u64,
    pub outcomes: BTreeMap<&'static str, u64>,
}

impl PassiveCounts {
    pub fn add(&mut self, outcome: &'static str) {
        *self.outcomes.entry(outcome).or_default() += 1;
    }

    pub fn get(&self, outcome: &str) -> u64 {
        self.outcomes.get(outcome).copied().unwrap_or(0)
    }
}

/// Every outcome [`PassiveCounts`] may hold, so each series exists from the start.
pub const OUTCOMES: &[&str] = &[
    "request",
    "other_endpoint",
    "tokens_incomplete",
    "payload_lost",
    "capture_lost",
    "connection_limit",
    "too_many_pipelined",
    "malformed_head",
    "head_too_large",
    "malformed_chunk",
    "lost_sync",
    "not_http",
    "resynced",
];

/// Connections by their two endpoints and interface, either way round.
type ConnKey = (u32, SocketAddr, SocketAddr);

fn conn_key(p: &PassivePacket<'_>) -> ConnKey {
    if p.src <= p.dst {
        (p.ifindex, p.src, p.dst)
    } else {
        (p.ifindex, p.dst, p.src)
    }
}

pub struct Passive {
    opts: PassiveOptions,
    conns: HashMap<ConnKey, Conn>,
    next_seq: u64,
    events: Vec<Event>,
    counts: PassiveCounts,
}

impl Passive {
    pub fn new(opts: PassiveOptions) -> Self {
        Self {
            opts,
            conns: HashMap::new(),
            next_seq: 0,
            events: Vec::new(),
            counts: PassiveCounts::default(),
        }
    }

    pub fn ports(&self) -> &BTreeSet<u16> {
        &self.opts.ports
    }

    /// Whether a TCP packet between these endpoints is read.
    pub fn wants(&self, src: &SocketAddr, dst: &SocketAddr) -> bool {
        self.opts.ports.contains(&src.port()) || self.opts.ports.contains(&dst.port())
    }

    pub fn counts(&self) -> &PassiveCounts {
        &self.counts
    }

    /// Connections followed now.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Reads one TCP packet (of a port [`Passive::wants`]; others are ignored).
    pub fn packet(&mut self, p: &PassivePacket<'_>) {
        if !self.wants(&p.src, &p.dst) {
            return;
        }
        self.counts.packets += 1;
        let key = conn_key(p);
        if !self.conns.contains_key(&key) {
            if self.conns.len() >= self.opts.max_connections {
                // Counted once per connection: at its first packet (a SYN) or any packet
                // while the table is full.
                if p.tcp_flags & tokenwire_probe_common::TCP_SYN != 0 {
                    self.counts.add("connection_limit");
                }
                return;
            }
            let server = if self.opts.ports.contains(&p.dst.port()) {
                p.dst
            } else {
                p.src
            };
            let client = if server == p.dst { p.src } else { p.dst };
            self.next_seq += 1;
            self.conns
                .insert(key, Conn::new(self.next_seq, client, server, p.time_ns));
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        let over = conn.packet(p, &mut self.counts);
        conn.take_final(&mut self.counts, &mut self.events);
        if over && let Some(c) = self.conns.remove(&key) {
            c.finish(false, &mut self.counts, &mut self.events);
        }
    }

    /// The capture lost packets it would have handed here (its ring was full): every
    /// request being read may be short, and is marked so.
    pub fn capture_lost(&mut self) {
        self.counts.add("capture_lost");
        for c in self.conns.values_mut() {
            c.capture_lost();
        }
    }

    /// Ends connections that closed (after the grace for their last ACKs) or went idle.
    pub fn tick(&mut self, now_ns: u64) {
        let (idle, grace) = (self.opts.idle_ns, self.opts.close_grace_ns);
        let due: Vec<(ConnKey, bool)> = self
            .conns
            .iter()
            .filter_map(|(k, c)| match c.closed_ns {
                Some(_) if now_ns.saturating_sub(c.last_ns) >= grace => Some((*k, false)),
                None if now_ns.saturating_sub(c.last_ns) >= idle => Some((*k, true)),
                _ => None,
            })
            .collect();
        for (k, was_idle) in due {
            if let Some(c) = self.conns.remove(&k) {
                c.finish(was_idle, &mut self.counts, &mut self.events);
            }
        }
    }

    /// Ends every connection as it stands (the end of a capture file).
    pub fn finish_all(&mut self) {
        let mut conns: Vec<Conn> = self.conns.drain().map(|(_, c)| c).collect();
        conns.sort_by_key(|c| c.seq);
        for c in conns {
            let closed = c.closed_ns.is_some();
            c.finish(!closed, &mut self.counts, &mut self.events);
        }
    }

    /// What happened since the last call: final requests (with their start and end for
    /// the metrics) and connections.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Requests not yet final, with their packets so far.
    pub fn running(&self) -> Vec<RequestRecord> {
        let mut conns: Vec<&Conn> = self.conns.values().collect();
        conns.sort_by_key(|c| c.seq);
        conns.into_iter().flat_map(Conn::running).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::Event;
    use tokenwire_probe_common::{TCP_ACK, TCP_FIN, TCP_SYN};

    const PSH: u8 = 0x08;

    /// A connection's packets built by hand: sequence numbers follow the bytes sent.
    struct Wire {
        t: u64,
        seq: [u32; 2],
        out: Vec<PassivePacketBuf>,
    }

    impl Wire {
        fn new() -> Self {
            Self {
                t: 1_000_000_000,
                seq: [100, 9000],
                out: Vec::new(),
            }
        }

        /// A packet from the client (`0`) or the server (`1`), `ms` after the last.
        fn send(&mut self, from: usize, ms: u64, flags: u8, payload: &[u8]) {
            let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
            let server: SocketAddr = "127.0.0.1:11434".parse().unwrap();
            let (src, dst) = if from == 0 {
                (client, server)
            } else {
                (server, client)
            };
            self.t += ms * 1_000_000;
            let ip_bytes = 52 + payload.len() as u64;
            self.out.push(PassivePacketBuf {
                time_ns: self.t,
                src,
                dst,
                ifindex: 1,
                counters: Counters {
                    packets: 1,
                    ip_bytes,
                    link_bytes: ip_bytes + 14,
                },
                tcp_flags: flags,
                seq: self.seq[from],
                payload_len: payload.len() as u32,
                payload: payload.to_vec(),
            });
            self.seq[from] = self.seq[from]
                .wrapping_add(payload.len() as u32)
                .wrapping_add(u32::from(flags & (TCP_SYN | TCP_FIN) != 0));
        }
    }

    fn chunk(line: &str) -> Vec<u8> {
        format!("{:x}\r\n{line}\n\r\n", line.len() + 1).into_bytes()
    }

    fn requests(events: &[Event]) -> Vec<&RequestRecord> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Request(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_keep_alive_connection_is_cut_into_its_requests() {
        let mut w = Wire::new();
        w.send(0, 0, TCP_SYN, b"");
        w.send(1, 0, TCP_SYN | TCP_ACK, b"");
        w.send(0, 0, TCP_ACK, b"");
        let setup: u64 = w.out.iter().map(|p| p.counters.ip_bytes).sum();
        let first = w.out.len();
        w.send(
            0,
            1,
            PSH | TCP_ACK,
            b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
        );
        w.send(1, 0, TCP_ACK, b"");
        w.send(1, 50, PSH | TCP_ACK, b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n");
        w.send(
            1,
            0,
            PSH | TCP_ACK,
            &chunk(r#"{"message":{"content":"The"},"done":false}"#),
        );
        w.send(
            1,
            7,
            PSH | TCP_ACK,
            &chunk(r#"{"message":{"content":" sky"},"done":false}"#),
        );
        w.send(
            1,
            9,
            PSH | TCP_ACK,
            &[
                chunk(r#"{"message":{"content":""},"done":true,"eval_count":2,"prompt_eval_count":5}"#),
                b"0\r\n\r\n".to_vec(),
            ]
            .concat(),
        );
        w.send(0, 0, TCP_ACK, b"");
        let second = w.out.len();
        w.send(
            0,
            100,
            PSH | TCP_ACK,
            b"GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        w.send(
            1,
            1,
            PSH | TCP_ACK,
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        );
        w.send(0, 0, TCP_FIN | TCP_ACK, b"");
        w.send(1, 0, TCP_FIN | TCP_ACK, b"");
        w.send(0, 0, TCP_ACK, b"");

        let mut p = Passive::new(PassiveOptions::default());
        for pkt in &w.out {
            p.packet(&pkt.as_packet());
        }
        let events = p.take_events();
        let recs = requests(&events);
        assert_eq!(recs.len(), 1, "the /api/tags request makes no record");
        let r = recs[0];
        assert_eq!((r.approach.as_str(), r.tokens), ("ollama_chat", 2));
        assert_eq!(r.outcome, Some(crate::spans::Outcome::Ok));
        assert!(r.is_final && !r.includes_connection_overhead);
        let own: u64 = w.out[first..second]
            .iter()
            .map(|p| p.counters.ip_bytes)
            .sum();
        assert_eq!(
            r.wire_bytes, own,
            "from its request line to the next request's"
        );
        let d = r.passive.as_ref().unwrap();
        assert_eq!(
            (d.server_output_tokens, d.server_input_tokens),
            (Some(2), Some(5))
        );
        assert_eq!(r.ttft_ms, Some(50.0));
        assert_eq!((d.gap_p50_ms, d.gap_max_ms), (Some(7.0), Some(7.0)));
        assert_eq!(d.incomplete, None);
        let conn = events
            .iter()
            .find_map(|e| match e {
                Event::Connection(c) => Some(c),
                _ => None,
            })
            .expect("the connection's record");
        let all: u64 = w.out.iter().map(|p| p.counters.ip_bytes).sum();
        assert_eq!(conn.total.total().ip_bytes, all);
        assert_eq!(conn.setup.total().ip_bytes, setup);
        assert_eq!(
            (p.counts().get("request"), p.counts().get("other_endpoint")),
            (1, 1)
        );
        assert_eq!(p.connections(), 0, "over at the last ACK");
    }

    #[test]
    fn a_hole_in_the_answer_marks_the_tokens_incomplete_and_a_reset_aborts() {
        let mut w = Wire::new();
        w.send(
            0,
            0,
            PSH | TCP_ACK,
            b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        );
        w.send(
            1,
            5,
            PSH | TCP_ACK,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n",
        );
        w.send(
            1,
            1,
            PSH | TCP_ACK,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        );
        // A packet the capture lost: its bytes never arrive.
        w.seq[1] = w.seq[1].wrapping_add(40);
        w.send(
            1,
            1,
            PSH | TCP_ACK,
            b"data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
        );
        // The same packet again (a retransmission): read once.
        let again = w.out.last().unwrap().clone();
        w.out.push(again);
        w.send(0, 1, tokenwire_probe_common::TCP_RST, b"");
        let mut p = Passive::new(PassiveOptions::default());
        for pkt in &w.out {
            p.packet(&pkt.as_packet());
        }
        let events = p.take_events();
        let r = requests(&events)[0];
        // After a hole reading resumes at the next line end: the line the hole ended in
        // (here the "b" event's) cannot be trusted and is not counted.
        assert_eq!(r.tokens, 1);
        assert_eq!(r.outcome, Some(crate::spans::Outcome::Aborted));
        assert!(r.includes_connection_overhead);
        assert_eq!(r.passive.as_ref().unwrap().incomplete, Some("payload_lost"));
        assert_eq!(p.counts().get("payload_lost"), 1);
        assert_eq!(p.counts().get("tokens_incomplete"), 1);
    }
}
