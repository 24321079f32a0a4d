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
pub mod http;
pub mod lines;
mod ollama;
mod openai;
pub mod stream;
mod whole;

use crate::attribution::{Event, RequestRecord};
use crate::flow::Counters;
use conn::Conn;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;

/// The ports read by default: Ollama's and vLLM's (and most OpenAI-compatible servers').
pub const DEFAULT_HTTP_PORTS: [u16; 2] = [11434, 8000];
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
