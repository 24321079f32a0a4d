//! The flow table: joins the capture's per-key counters and events into connections with a
//! transport, a client and a server, an approach, and per-direction counters. It is fed by
//! any backend (cumulative counters per key plus rare events) and knows nothing of them.
//!
//! Counting is exact as long as keys are not evicted: a backend reports cumulative totals
//! per key, the table keeps the latest. When a backend drops a key (bounded memory), its
//! last totals move into the key's `base` and later packets of the key add on top.

use crate::attribution::{Counts, Snapshot};
use crate::classify::{TcpPayload, classify_tcp, is_quic_long_header};
use crate::flow::{Counters, Direction, IPPROTO_TCP, IPPROTO_UDP, PacketKey, Transport};
use crate::labels::Labels;
use crate::spans::ConnRef;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokenwire_probe_common::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN};

/// Wire totals are kept per (approach, transport, direction): the exporter's labels.
pub type WireKey = (String, &'static str, &'static str);

/// A connection on one interface: both directions, both hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub proto: u8,
    pub a: SocketAddr,
    pub b: SocketAddr,
    pub ifindex: u32,
}

impl ConnId {
    pub fn of(k: &PacketKey) -> Self {
        let (a, b) = if k.src <= k.dst {
            (k.src, k.dst)
        } else {
            (k.dst, k.src)
        };
        Self {
            proto: k.proto,
            a,
            b,
            ifindex: k.ifindex,
        }
    }
}

/// A rare thing the capture reports about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key's first packet (no payload).
    Open,
    /// The key's first payload, with its first bytes.
    Payload,
    /// FIN or RST.
    Close,
}

#[derive(Debug, Default)]
struct KeyState {
    /// Totals of evicted generations of this key.
    base: Counters,
    /// The capture's current totals.
    live: Counters,
    last_change: Option<Instant>,
    /// The wire series this key's packets were last exported under, and its total then.
    exported: Option<(WireKey, Counters)>,
    /// What was exported under earlier series before the key's labels changed (a TCP
    /// connection exported as `tcp` before its ClientHello made it `tls`): it stays there.
    pinned: Vec<(WireKey, Counters)>,
}

impl KeyState {
    fn total(&self) -> Counters {
        self.base + self.live
    }

    /// The key's totals by wire series, now that its labels are `now`: what earlier series
    /// were shown stays with them (an exported counter never goes down), the rest is
    /// `now`'s. Remembers `now` as the series last shown.
    fn export(&mut self, now: &WireKey) -> Vec<(WireKey, Counters)> {
        let total = self.total();
        if let Some((before, at)) = self.exported.take()
            && &before != now
        {
            let shown = at.saturating_sub(&sum(&self.pinned));
            self.pinned.push((before, shown));
        }
        self.exported = Some((now.clone(), total));
        let rest = total.saturating_sub(&sum(&self.pinned));
        let mut out = self.pinned.clone();
        out.push((now.clone(), rest));
        out
    }
}

fn sum(parts: &[(WireKey, Counters)]) -> Counters {
    parts.iter().fold(Counters::default(), |mut s, (_, c)| {
        s += *c;
        s
    })
}

#[derive(Debug)]
struct Conn {
    /// Order of first sight, for stable output.
    seq: u64,
    /// The client, when a SYN (without ACK) said who it is.
    syn_client: Option<SocketAddr>,
    /// The sender of the first event seen.
    first_sender: Option<SocketAddr>,
    transport: Option<Transport>,
    sni: Option<String>,
    alpn: Vec<String>,
    closed: bool,
    keys: BTreeMap<PacketKey, KeyState>,
}

/// One row of output: a connection's direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowRow {
    pub ifindex: u32,
    pub approach: String,
    pub transport: Transport,
    pub proto: u8,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub direction: Direction,
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alpn: Vec<String>,
    pub closed: bool,
}

pub struct FlowTable {
    labels: Labels,
    conns: HashMap<ConnId, Conn>,
    next_seq: u64,
    /// Keys whose kernel entries were deleted to bound memory.
    pub evictions: u64,
    /// Interfaces seen, for finding a connection by its addresses.
    ifindexes: BTreeSet<u32>,
    /// Endpoints whose connections are the probe's own (its HTTP listener): never shown or
    /// counted. An unspecified IP matches any address with the port.
    excluded: Vec<SocketAddr>,
    /// Totals of connections retired from the table (all keys evicted), so counters stay
    /// monotonic while memory stays bounded.
    retired: BTreeMap<WireKey, Counters>,
}

impl FlowTable {
    pub fn new(labels: Labels) -> Self {
        Self {
            labels,
            conns: HashMap::new(),
            next_seq: 0,
            evictions: 0,
            ifindexes: BTreeSet::new(),
            excluded: Vec::new(),
            retired: BTreeMap::new(),
        }
    }

    /// Never show or count connections with an endpoint at `addr` (the probe's own).
    pub fn exclude(&mut self, addr: SocketAddr) {
        self.excluded.push(addr);
    }

    fn is_excluded(&self, id: &ConnId) -> bool {
        self.excluded.iter().any(|x| {
            [id.a, id.b]
                .iter()
                .any(|e| e.port() == x.port() && (x.ip().is_unspecified() || x.ip() == e.ip()))
        })
    }

    /// Connections in the table.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The table's connections that `c` names, on every interface.
    fn matching(&self, c: &ConnRef) -> Vec<(&ConnId, &Conn)> {
        let proto = c.transport.proto();
        if c.server.ip().is_unspecified() {
            return self
                .conns
                .iter()
                .filter(|(id, _)| {
                    id.proto == proto
                        && ((id.a == c.client && id.b.port() == c.server.port())
                            || (id.b == c.client && id.a.port() == c.server.port()))
                })
                .collect();
        }
        let (a, b) = if c.client <= c.server {
            (c.client, c.server)
        } else {
            (c.server, c.client)
        };
        self.ifindexes
            .iter()
            .filter_map(|&ifindex| {
                let id = ConnId {
                    proto,
                    a,
                    b,
                    ifindex,
                };
                self.conns.get_key_value(&id)
            })
            .collect()
    }

    /// The keys of the connections `c` names (for a backend to refresh just those).
    pub fn keys_of(&self, c: &ConnRef) -> Vec<PacketKey> {
        self.matching(c)
            .into_iter()
            .flat_map(|(_, conn)| conn.keys.keys().copied())
            .collect()
    }

    /// Wire totals by approach, transport and direction, retired connections included;
    /// the probe's own connections left out.
    ///
    /// A connection's series are those of its labels when first exported: a later
    /// classification (the ClientHello that makes a `tcp` connection `tls`) changes the
    /// rows and the API at once, but what was exported stays in its series and only what
    /// follows goes to the new one, so no exported counter ever goes down or disappears.
    pub fn wire_totals(&mut self) -> BTreeMap<WireKey, Counters> {
        let mut out = self.retired.clone();
        let ids: Vec<ConnId> = self
            .conns
            .keys()
            .filter(|id| !self.is_excluded(id))
            .copied()
            .collect();
        for id in ids {
            for (k, c) in self.export(&id) {
                *out.entry(k).or_default() += c;
            }
        }
        out
    }

    /// A connection's totals by wire series (see [`FlowTable::wire_totals`]).
    fn export(&mut self, id: &ConnId) -> Vec<(WireKey, Counters)> {
        let Some(c) = self.conns.get(id) else {
            return Vec::new();
        };
        let (server, _, transport, approach) = self.describe(id, c);
        let mut out = Vec::new();
        for (k, ks) in self
            .conns
            .get_mut(id)
            .into_iter()
            .flat_map(|c| c.keys.iter_mut())
        {
            if ks.total().packets == 0 {
                continue; // known from an event only: nothing to show yet
            }
            let d = if k.dst == server {
                Direction::ToServer
            } else {
                Direction::ToClient
            };
            out.extend(ks.export(&(approach.clone(), transport.as_str(), d.as_str())));
        }
        out
    }

    /// Folds connections whose keys were all evicted into the retired totals.
    pub fn retire(&mut self) {
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.keys
                    .values()
                    .all(|k| k.live == Counters::default() && k.base != Counters::default())
            })
            .map(|(id, _)| *id)
            .collect();
        if gone.is_empty() {
            return;
        }
        for id in &gone {
            if self.is_excluded(id) {
                continue;
            }
            for (k, c) in self.export(id) {
                *self.retired.entry(k).or_default() += c;
            }
        }
        for id in gone {
            self.conns.remove(&id);
        }
    }

    fn conn(&mut self, key: &PacketKey) -> &mut Conn {
        let seq = &mut self.next_seq;
        self.conns.entry(ConnId::of(key)).or_insert_with(|| {
            *seq += 1;
            Conn {
                seq: *seq,
                syn_client: None,
                first_sender: None,
                transport: None,
                sni: None,
                alpn: Vec::new(),
                closed: false,
                keys: BTreeMap::new(),
            }
        })
    }

    /// The capture's cumulative totals for `key`.
    pub fn set_counters(&mut self, key: PacketKey, totals: Counters, tcp_flags: u8, now: Instant) {
        self.ifindexes.insert(key.ifindex);
        let c = self.conn(&key);
        if tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            c.closed = true;
        }
        let ks = c.keys.entry(key).or_default();
        if ks.live != totals {
            ks.live = totals;
            ks.last_change = Some(now);
        }
    }

    /// An event about `key`; `payload` holds the first payload bytes for `Payload`.
    pub fn event(&mut self, key: PacketKey, kind: EventKind, tcp_flags: u8, payload: &[u8]) {
        self.ifindexes.insert(key.ifindex);
        let c = self.conn(&key);
        // Known from now on, so a span can find it before the next full read.
        c.keys.entry(key).or_default();
        c.first_sender.get_or_insert(key.src);
        if tcp_flags & TCP_SYN != 0 && tcp_flags & TCP_ACK == 0 {
            c.syn_client = Some(key.src);
        }
        if kind == EventKind::Close || tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            c.closed = true;
        }
        if kind != EventKind::Payload || payload.is_empty() {
            return;
        }
        match key.proto {
            IPPROTO_TCP => match classify_tcp(payload) {
                TcpPayload::Tls { sni, alpn } => {
                    c.transport = Some(Transport::Tls);
                    if sni.is_some() {
                        c.sni = sni;
                    }
                    if !alpn.is_empty() {
                        c.alpn = alpn;
                    }
                }
                TcpPayload::Http if c.transport != Some(Transport::Tls) => {
                    c.transport = Some(Transport::Http)
                }
                _ => {}
            },
            IPPROTO_UDP if is_quic_long_header(payload) => c.transport = Some(Transport::Quic),
            _ => {}
        }
    }

    /// The backend deleted `key`'s entry: keep its totals as the key's base.
    pub fn evicted(&mut self, key: &PacketKey) {
        if let Some(ks) = self
            .conns
            .get_mut(&ConnId::of(key))
            .and_then(|c| c.keys.get_mut(key))
        {
            let live = std::mem::take(&mut ks.live);
            ks.base += live;
            self.evictions += 1;
        }
    }

    /// Keys idle for `idle` (or `closed_idle` once their connection closed): the ones a
    /// backend may delete to bound its memory.
    pub fn idle_keys(&self, now: Instant, idle: Duration, closed_idle: Duration) -> Vec<PacketKey> {
        let mut out = Vec::new();
        for c in self.conns.values() {
            let limit = if c.closed { closed_idle } else { idle };
            for (k, ks) in &c.keys {
                if ks.live != Counters::default()
                    && ks
                        .last_change
                        .is_some_and(|t| now.duration_since(t) >= limit)
                {
                    out.push(*k);
                }
            }
        }
        out
    }

    /// Who serves the connection: a labelled port, else the receiver of a SYN, else the
    /// receiver of the first packet seen, else the lower port.
    fn server(&self, id: &ConnId, c: &Conn) -> SocketAddr {
        let (a, b) = (id.a, id.b);
        match (
            self.labels.get(a.port()).is_some(),
            self.labels.get(b.port()).is_some(),
        ) {
            (true, false) => return a,
            (false, true) => return b,
            _ => {}
        }
        if let Some(client) = c.syn_client.or(c.first_sender) {
            return if client == a { b } else { a };
        }
        if a.port() <= b.port() { a } else { b }
    }

    /// All connections, a row per direction that carried packets, oldest first; the
    /// probe's own connections left out.
    pub fn rows(&self) -> Vec<FlowRow> {
        let mut conns: Vec<(&ConnId, &Conn)> = self
            .conns
            .iter()
            .filter(|(id, _)| !self.is_excluded(id))
            .collect();
        conns.sort_by_key(|(_, c)| c.seq);
        conns
            .into_iter()
            .flat_map(|(id, c)| self.conn_rows(id, c))
            .collect()
    }

    /// A connection's server, client, transport and approach as known now.
    fn describe(&self, id: &ConnId, c: &Conn) -> (SocketAddr, SocketAddr, Transport, String) {
        let server = self.server(id, c);
        let client = if server == id.a { id.b } else { id.a };
        let transport = c.transport.unwrap_or(match id.proto {
            IPPROTO_TCP => Transport::Tcp,
            IPPROTO_UDP => Transport::Udp,
            _ => Transport::Other,
        });
        let approach = self.labels.get(server.port()).unwrap_or("other").to_owned();
        (server, client, transport, approach)
    }

    fn conn_rows(&self, id: &ConnId, c: &Conn) -> Vec<FlowRow> {
        let (server, client, transport, approach) = self.describe(id, c);
        let mut dirs: BTreeMap<Direction, Counters> = BTreeMap::new();
        for (k, ks) in &c.keys {
            let d = if k.dst == server {
                Direction::ToServer
            } else {
                Direction::ToClient
            };
            *dirs.entry(d).or_default() += ks.total();
        }
        dirs.into_iter()
            .filter(|(_, counters)| counters.packets > 0)
            .map(|(direction, counters)| FlowRow {
                ifindex: id.ifindex,
                approach: approach.clone(),
                transport,
                proto: id.proto,
                client,
                server,
                direction,
                counters,
                sni: c.sni.clone(),
                alpn: c.alpn.clone(),
                closed: c.closed,
            })
            .collect()
    }
}

/// A connection's counters as the spans name it: the direction comes from the span's
/// client, not from the table's guess.
impl Counts for FlowTable {
    fn snapshot(&self, c: &ConnRef) -> Snapshot {
        let mut s = Snapshot::default();
        for (_, conn) in self.matching(c) {
            for (k, ks) in &conn.keys {
                let total = ks.base + ks.live;
                if k.src == c.client {
                    s.to_server += total;
                } else {
                    s.to_client += total;
                }
            }
        }
        s
    }

    fn idle(&self, c: &ConnRef) -> Option<(bool, Duration)> {
        let now = Instant::now();
        let mut out: Option<(bool, Duration)> = None;
        for (_, conn) in self.matching(c) {
            // A key not counted yet is as fresh as it gets.
            let idle = conn
                .keys
                .values()
                .map(|k| {
                    k.last_change
                        .map_or(Duration::ZERO, |t| now.duration_since(t))
                })
                .min()
                .unwrap_or(Duration::ZERO);
            out = Some(match out {
                Some((closed, d)) => (closed && conn.closed, d.min(idle)),
                None => (conn.closed, idle),
            });
        }
        out
    }
}

mod carry;
#[cfg(test)]
mod tests;

pub use carry::{CarriedTable, CarryError};
