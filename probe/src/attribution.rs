//! Charging packets to requests. Servers' spans (start, first token, end, close) cut each
//! connection's packet counters into periods; each period belongs to the requests that were
//! running in it. Platform-free: the counters come from any [`Counts`] source (the flow
//! table, or a test's numbers).
//!
//! Semantics (docs/spans.md has the long form):
//! - Before the first request starts: the connection's setup. After the server says the
//!   connection closed: its teardown. A connection that served one request only adds both
//!   to that request (a "fresh connection" figure).
//! - A request owns every packet from its start until the next request starts or the
//!   connection ends, so trailing ACKs belong to it. Once one request ends while others
//!   run, the running ones own what follows.
//! - A period with several owners (streams multiplexed on one QUIC connection) is split by
//!   the owners' application bytes once they all ended, and their records are `shared`.
//! - A 4-tuple can carry one connection after another (QUIC clients that keep one UDP
//!   socket for successive sessions): the next connection's periods start where the last
//!   one's ended, never at zero, and a new start on a closed connection's tuple ends the
//!   old one at its close, so the new handshake is the new connection's setup.
//!   The split is integral and sums exactly, so requests + setup + teardown always equal
//!   the connection's totals.

use crate::flow::Counters;
use crate::llm::{PassiveDetail, Source};
use crate::spans::{ConnRef, Outcome, RejectReason, Span};
use serde::Serialize;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

/// A connection's counters by direction at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub to_server: Counters,
    pub to_client: Counters,
}

impl Snapshot {
    pub fn total(&self) -> Counters {
        self.to_server + self.to_client
    }

    /// Whether no counter is below `other`'s (a tuple's counters only grow, unless the
    /// capture forgot the flow and started it again from zero).
    pub fn at_least(&self, other: &Snapshot) -> bool {
        let ge = |a: &Counters, b: &Counters| {
            a.packets >= b.packets && a.ip_bytes >= b.ip_bytes && a.link_bytes >= b.link_bytes
        };
        ge(&self.to_server, &other.to_server) && ge(&self.to_client, &other.to_client)
    }

    /// What happened between `earlier` and `self` (saturating: totals never go back, but
    /// a source that lost a key must not make a period negative).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            to_server: self.to_server.saturating_sub(&earlier.to_server),
            to_client: self.to_client.saturating_sub(&earlier.to_client),
        }
    }
}

impl std::ops::AddAssign for Snapshot {
    fn add_assign(&mut self, o: Self) {
        self.to_server += o.to_server;
        self.to_client += o.to_client;
    }
}

/// Where the attributor reads a connection's current counters.
pub trait Counts {
    fn snapshot(&self, conn: &ConnRef) -> Snapshot;
    /// How long the connection has carried no packets, and whether it saw FIN/RST; `None`
    /// when no packet of it was seen.
    fn idle(&self, conn: &ConnRef) -> Option<(bool, Duration)>;
}

/// How a request's packets were told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Every packet of its periods was its own.
    Exact,
    /// Some periods were shared with concurrent streams and split by application bytes.
    Shared,
}

/// One request, as GET /api/requests shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: String,
    pub approach: String,
    /// As the server named it: tls, tcp, http, quic or udp.
    pub transport: &'static str,
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    /// 1 for a connection's first request, 2 for the next, ...
    pub seq_on_connection: u32,
    pub start_unix_ns: u64,
    /// When the probe cut the connection's counters for this request's start (it trails the
    /// server's start by the span's delivery; packets in between belong to the previous
    /// owner).
    pub cut_unix_ns: u64,
    pub first_token_unix_ns: Option<u64>,
    pub end_unix_ns: Option<u64>,
    /// Time to first token as the server saw it.
    pub ttft_ms: Option<f64>,
    pub tokens: u64,
    pub app_bytes: u64,
    pub outcome: Option<Outcome>,
    pub to_server: Counters,
    pub to_client: Counters,
    /// IP bytes, both directions.
    pub wire_bytes: u64,
    pub packets: u64,
    pub bytes_per_token: Option<f64>,
    pub packets_per_token: Option<f64>,
    pub attribution: Quality,
    /// The connection's setup and teardown are included (it served this request only).
    pub includes_connection_overhead: bool,
    /// No more packets will be charged to it.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// How the probe learnt of it: the server's spans, or its packets alone.
    pub source: Source,
    /// What a passively read request's packets showed (docs/passive.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<Box<PassiveDetail>>,
}

impl RequestRecord {
    /// When its last token passed: read from the packets (passive), else its end (spans).
    pub fn last_token_unix_ns(&self) -> Option<u64> {
        match &self.passive {
            Some(p) => p.last_token_unix_ns,
            None => self.end_unix_ns,
        }
    }
}

/// One connection that served requests, as GET /api/connections shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    pub approach: String,
    pub transport: &'static str,
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    pub requests: u32,
    /// When its first request started (server clock).
    pub first_start_unix_ns: u64,
    pub setup: Snapshot,
    pub teardown: Snapshot,
    /// Everything the connection carried while the probe followed it.
    pub total: Snapshot,
    pub closed_unix_ns: Option<u64>,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// A request's id inside attribution: shared, so owner lists copy pointers, not strings.
type Id = std::sync::Arc<str>;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Owners {
    Setup,
    Requests(Vec<Id>),
    Teardown,
}

#[derive(Debug)]
struct Req {
    id: Id,
    approach: String,
    conn: ConnRef,
    transport: &'static str,
    seq: u32,
    start_ns: u64,
    cut_ns: u64,
    first_token_ns: Option<u64>,
    end_ns: Option<u64>,
    tokens: u64,
    app_bytes: u64,
    outcome: Option<Outcome>,
    own: Snapshot,
    shared: bool,
    /// Shared periods not yet split.
    pending: u32,
}

#[derive(Debug)]
struct SharedPeriod {
    delta: Snapshot,
    owners: Vec<Id>,
}

#[derive(Debug)]
struct Conn {
    approach: String,
    transport: &'static str,
    seqs: u32,
    /// Requests not yet final, in start order.
    reqs: Vec<Id>,
    active: Vec<Id>,
    owners: Owners,
    last_cut: Snapshot,
    setup: Snapshot,
    teardown: Snapshot,
    pending: Vec<SharedPeriod>,
    closed: Option<(u64, std::time::Instant)>,
    /// The first request's id, kept until it is known whether it was the only one.
    only: Option<Id>,
    first_start_ns: u64,
    /// When a span last named it.
    last_span: std::time::Instant,
}

/// What attribution reports as it goes, for the records and the metrics (which live
/// elsewhere: this module only cuts periods).
#[derive(Debug, Clone)]
pub enum Event {
    /// A request started.
    Started { approach: String },
    /// A request ended: its end span, or its connection ended without one (`Unknown`).
    Ended {
        approach: String,
        tokens: u64,
        outcome: Outcome,
        /// Time to first token as the server saw it.
        ttft_seconds: Option<f64>,
    },
    /// A request is final: no more packets will be charged to it.
    Request(RequestRecord),
    /// A connection that served requests is over.
    Connection(ConnectionRecord),
}

/// What attribution holds at most: each start beyond a limit is refused (and counted by
/// reason), so memory stays bounded and a span's work stays bounded by
/// `streams_per_connection` (the owners one period can have), whatever senders do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Requests not yet final, over all connections.
    pub open_requests: usize,
    /// Connections followed at once.
    pub connections: usize,
    /// Requests running at once on one connection (streams of one QUIC connection).
    pub streams_per_connection: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            open_requests: 100_000,
            connections: 65_536,
            streams_per_connection: 1_024,
        }
    }
}

#[derive(Default)]
pub struct Attributor {
    conns: HashMap<ConnRef, Conn>,
    /// The counters where each recently finished connection ended, by 4-tuple, oldest
    /// first in `ended_order` (bounded by `limits.connections`).
    ended: HashMap<ConnRef, Snapshot>,
    ended_order: std::collections::VecDeque<ConnRef>,
    reqs: HashMap<Id, Req>,
    /// Approach names seen in starts (they become label values: bounded).
    approaches: BTreeSet<String>,
    /// Reported, not yet taken.
    events: Vec<Event>,
    /// How long after a close the connection's last packets (final ACKs) are waited for.
    pub close_grace: Duration,
    /// How long a connection may carry nothing before it counts as gone without a close.
    pub idle_limit: Duration,
    pub limits: Limits,
}

impl Attributor {
    pub fn new() -> Self {
        Self {
            close_grace: Duration::from_secs(1),
            idle_limit: Duration::from_secs(300),
            ..Self::default()
        }
    }

    /// Whether spans named a connection between these endpoints (open, or recently ended):
    /// its records are the spans' (a wildcard server address matches by port).
    pub fn follows(&self, client: &SocketAddr, server: &SocketAddr) -> bool {
        let wildcard = SocketAddr::new(
            match server {
                SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            },
            server.port(),
        );
        [*server, wildcard].into_iter().any(|server| {
            let key = ConnRef {
                transport: crate::spans::SpanTransport::Tcp,
                client: *client,
                server,
            };
            self.conns.contains_key(&key) || self.ended.contains_key(&key)
        })
    }

    /// What happened since the last call: starts, ends, final requests and connections.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// The connection a span names, as the source knows it: `Counts` matches a wildcard
    /// server address by port.
    fn cut(&mut self, key: &ConnRef, now: Snapshot) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let delta = now.since(&c.last_cut);
        c.last_cut = now;
        match &c.owners {
            Owners::Setup => c.setup += delta,
            Owners::Teardown => c.teardown += delta,
            Owners::Requests(ids) if ids.len() == 1 => {
                if let Some(r) = self.reqs.get_mut(&ids[0]) {
                    r.own += delta;
                }
            }
            Owners::Requests(ids) => {
                if delta != Snapshot::default() {
                    for id in ids {
                        if let Some(r) = self.reqs.get_mut(id) {
                            r.shared = true;
                            r.pending += 1;
                        }
                    }
                    c.pending.push(SharedPeriod {
                        delta,
                        owners: ids.clone(),
                    });
                }
            }
        }
    }

    /// Applies one parsed span, or says why it cannot apply. `cut_ns` is the probe's clock
    /// when it cut the counters.
    pub fn apply(
        &mut self,
        span: Span,
        src: &dyn Counts,
        cut_ns: u64,
        now: std::time::Instant,
    ) -> Result<(), RejectReason> {
        if let Some(c) = self.conn_of(&span).and_then(|k| self.conns.get_mut(&k)) {
            c.last_span = now;
        }
        match span {
            Span::Start {
                id,
                approach,
                conn,
                transport,
                time_ns,
            } => {
                if self.reqs.contains_key(id.as_str()) {
                    return Err(RejectReason::DuplicateId);
                }
                // Bounded memory and bounded work per span, whatever senders do.
                if self.reqs.len() >= self.limits.open_requests {
                    return Err(RejectReason::TooManyRequests);
                }
                match self.conns.get(&conn) {
                    Some(c)
                        if c.closed.is_none()
                            && c.active.len() >= self.limits.streams_per_connection =>
                    {
                        return Err(RejectReason::TooManyStreams);
                    }
                    None if self.conns.len() >= self.limits.connections => {
                        return Err(RejectReason::TooManyConnections);
                    }
                    _ => {}
                }
                // Approach names become label values: keep their number bounded.
                if !self.approaches.contains(&approach) {
                    if self.approaches.len() >= MAX_APPROACHES {
                        return Err(RejectReason::TooManyApproaches);
                    }
                    self.approaches.insert(approach.clone());
                }
                if self.conns.get(&conn).is_some_and(|c| c.closed.is_some()) {
                    // The 4-tuple was reused: the old connection ended at its close; what
                    // followed is the new one's handshake.
                    self.finish_at(&conn, None);
                }
                let snap = src.snapshot(&conn);
                // A tuple's counters keep counting across the connections it carries.
                let base = match self.ended.remove(&conn) {
                    Some(b) if snap.at_least(&b) => b,
                    _ => Snapshot::default(),
                };
                let c = self.conns.entry(conn).or_insert_with(|| Conn {
                    approach: approach.clone(),
                    transport,
                    seqs: 0,
                    reqs: Vec::new(),
                    active: Vec::new(),
                    owners: Owners::Setup,
                    last_cut: base,
                    setup: Snapshot::default(),
                    teardown: Snapshot::default(),
                    pending: Vec::new(),
                    closed: None,
                    only: None,
                    first_start_ns: time_ns,
                    last_span: now,
                });
                c.seqs += 1;
                let seq = c.seqs;
                self.cut(&conn, snap);
                let Some(c) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                let id: Id = id.into();
                c.active.push(id.clone());
                c.reqs.push(id.clone());
                if seq == 1 {
                    c.only = Some(id.clone());
                } else {
                    c.only = None;
                }
                c.owners = Owners::Requests(c.active.clone());
                self.events.push(Event::Started {
                    approach: approach.clone(),
                });
                self.reqs.insert(
                    id.clone(),
                    Req {
                        id,
                        approach,
                        conn,
                        transport,
                        seq,
                        start_ns: time_ns,
                        cut_ns,
                        first_token_ns: None,
                        end_ns: None,
                        tokens: 0,
                        app_bytes: 0,
                        outcome: None,
                        own: Snapshot::default(),
                        shared: false,
                        pending: 0,
                    },
                );
                self.settle(&conn, false);
            }
            Span::FirstToken { id, time_ns } => match self.reqs.get_mut(id.as_str()) {
                Some(r) => {
                    r.first_token_ns.get_or_insert(time_ns);
                }
                None => return Err(RejectReason::UnknownRequest),
            },
            Span::End {
                id,
                time_ns,
                tokens,
                app_bytes,
                outcome,
            } => {
                let Some(r) = self.reqs.get_mut(id.as_str()) else {
                    return Err(RejectReason::UnknownRequest);
                };
                if r.outcome.is_some() {
                    return Err(RejectReason::DuplicateEnd);
                }
                r.end_ns = Some(time_ns);
                r.tokens = tokens;
                r.app_bytes = app_bytes;
                r.outcome = Some(outcome);
                let ttft = r
                    .first_token_ns
                    .map(|f| f.saturating_sub(r.start_ns) as f64 / 1e9);
                let (conn, r_id) = (r.conn, r.id.clone());
                self.events.push(Event::Ended {
                    approach: r.approach.clone(),
                    tokens,
                    outcome,
                    ttft_seconds: ttft,
                });
                let Some(c) = self.conns.get_mut(&conn) else {
                    return Ok(());
                };
                let id = r_id;
                c.active.retain(|a| a != &id);
                let next = if c.active.is_empty() {
                    Owners::Requests(vec![id])
                } else {
                    Owners::Requests(c.active.clone())
                };
                if next != c.owners {
                    let snap = src.snapshot(&conn);
                    self.cut(&conn, snap);
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.owners = next;
                    }
                }
                self.settle(&conn, false);
            }
            Span::Close { conn, .. } => {
                let Some(c) = self.conns.get(&conn) else {
                    return Ok(()); // a connection that served no request: nothing to attribute
                };
                if c.closed.is_some() {
                    return Ok(());
                }
                let snap = src.snapshot(&conn);
                self.cut(&conn, snap);
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.owners = Owners::Teardown;
                    c.closed = Some((cut_ns, now));
                }
                self.settle(&conn, false);
            }
        }
        Ok(())
    }

    /// The connection a span's counters must be read from (for a backend to refresh it
    /// before [`Attributor::apply`]); `None` when the span needs no cut.
    pub fn conn_of(&self, span: &Span) -> Option<ConnRef> {
        match span {
            Span::Start { conn, .. } | Span::Close { conn, .. } => Some(*conn),
            Span::End { id, .. } => self.reqs.get(id.as_str()).map(|r| r.conn),
            Span::FirstToken { .. } => None,
        }
    }

    /// Finishes connections closed more than `close_grace` ago, or silent for `idle_limit`.
    pub fn tick(&mut self, src: &dyn Counts, now: std::time::Instant) {
        for k in self.due(src, now) {
            self.finish(&k, src);
        }
    }

    /// Connections ready to finish: closed more than `close_grace` ago, or silent for
    /// `idle_limit` (a backend refreshes their counters, then calls [`Attributor::finish`]).
    pub fn due(&self, src: &dyn Counts, now: std::time::Instant) -> Vec<ConnRef> {
        self.conns
            .iter()
            .filter(|(k, c)| match c.closed {
                Some((_, at)) => now.duration_since(at) >= self.close_grace,
                None => match src.idle(k) {
                    Some((true, idle)) => idle >= self.close_grace.max(Duration::from_secs(5)),
                    Some((false, idle)) => idle >= self.idle_limit,
                    // Spans for a connection the capture never saw (another interface):
                    // nothing to wait for but its spans; forget it once they stop.
                    None => now.duration_since(c.last_span) >= self.idle_limit,
                },
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Ends every connection (the end of a capture file).
    pub fn finish_all(&mut self, src: &dyn Counts) {
        let all: Vec<ConnRef> = self.conns.keys().copied().collect();
        for k in all {
            self.finish(&k, src);
        }
    }

    /// Ends a connection: final cut, every request final, the connection's record kept.
    pub fn finish(&mut self, key: &ConnRef, src: &dyn Counts) {
        self.finish_at(key, Some(src.snapshot(key)));
    }

    /// Ends a connection with a last cut at `snap`, or where it was last cut.
    fn finish_at(&mut self, key: &ConnRef, snap: Option<Snapshot>) {
        if let Some(snap) = snap {
            self.cut(key, snap);
        }
        self.settle(key, true);
        let Some(c) = self.conns.remove(key) else {
            return;
        };
        if self.ended.insert(*key, c.last_cut).is_none() {
            self.ended_order.push_back(*key);
        }
        while self.ended_order.len() > self.limits.connections.max(1) {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
        self.events.push(Event::Connection(ConnectionRecord {
            approach: c.approach,
            transport: c.transport,
            client: key.client,
            server: key.server,
            requests: c.seqs,
            first_start_unix_ns: c.first_start_ns,
            setup: c.setup,
            teardown: c.teardown,
            total: c.last_cut,
            closed_unix_ns: c.closed.map(|(ns, _)| ns),
            is_final: true,
        }));
    }

    /// Splits shared periods whose owners all ended (or all of them, at the end) and
    /// finalises requests that can no longer gain packets.
    fn settle(&mut self, key: &ConnRef, ending: bool) {
        let Some(c) = self.conns.get_mut(key) else {
            return;
        };
        let mut i = 0;
        while i < c.pending.len() {
            let ready = ending
                || c.pending[i]
                    .owners
                    .iter()
                    .all(|id| self.reqs.get(id).is_none_or(|r| r.outcome.is_some()));
            if !ready {
                i += 1;
                continue;
            }
            let p = c.pending.remove(i);
            let weights: Vec<u64> = p
                .owners
                .iter()
                .map(|id| self.reqs.get(id).map_or(0, |r| r.app_bytes))
                .collect();
            let parts = split(&p.delta, &weights);
            for (id, part) in p.owners.iter().zip(parts) {
                if let Some(r) = self.reqs.get_mut(id) {
                    r.own += part;
                    r.pending = r.pending.saturating_sub(1);
                }
            }
        }
        // Final: ended, owning nothing from now on, nothing left to split; or the
        // connection is over. A connection's only request waits for the teardown.
        let owners = c.owners.clone();
        let only = c.only.clone();
        let single = c.seqs == 1;
        let (setup, teardown) = (c.setup, c.teardown);
        let mut finals = Vec::new();
        c.reqs.retain(|id| {
            let Some(r) = self.reqs.get(id) else {
                return false;
            };
            let owning = matches!(&owners, Owners::Requests(ids) if ids.contains(id));
            let is_final = ending
                || (r.outcome.is_some()
                    && !owning
                    && r.pending == 0
                    && !(single && only.as_ref() == Some(id)));
            if is_final {
                finals.push(id.clone());
            }
            !is_final
        });
        for id in finals {
            let Some(mut r) = self.reqs.remove(&id) else {
                continue;
            };
            let overhead = single && only.as_ref() == Some(&id);
            if overhead {
                r.own += setup;
                r.own += teardown;
            }
            if r.outcome.is_none() {
                r.outcome = Some(Outcome::Unknown);
                self.events.push(Event::Ended {
                    approach: r.approach.clone(),
                    tokens: 0,
                    outcome: Outcome::Unknown,
                    ttft_seconds: None,
                });
            }
            self.events
                .push(Event::Request(record(&r, r.own, overhead, true)));
        }
    }

    /// The requests not yet final, oldest first, with their packets so far.
    pub fn running(&self, src: &dyn Counts) -> Vec<RequestRecord> {
        let mut out = Vec::new();
        let mut live: Vec<&Req> = self.reqs.values().collect();
        live.sort_by_key(|r| (r.start_ns, r.seq));
        for r in live {
            // A sole owner's running period counts so far too.
            let mut own = r.own;
            if let Some(c) = self.conns.get(&r.conn)
                && c.owners == Owners::Requests(vec![r.id.clone()])
            {
                own += src.snapshot(&r.conn).since(&c.last_cut);
            }
            let rec = record(r, own, false, false);
            out.push(rec);
        }
        out
    }

    /// The connections still followed, with their counters so far.
    pub fn open_connections(&self, src: &dyn Counts) -> Vec<ConnectionRecord> {
        let mut out = Vec::new();
        for (k, c) in &self.conns {
            let total = src.snapshot(k);
            let mut teardown = c.teardown;
            if c.owners == Owners::Teardown {
                teardown += total.since(&c.last_cut);
            }
            out.push(ConnectionRecord {
                approach: c.approach.clone(),
                transport: c.transport,
                client: k.client,
                server: k.server,
                requests: c.seqs,
                first_start_unix_ns: c.first_start_ns,
                setup: c.setup,
                teardown,
                total,
                closed_unix_ns: c.closed.map(|(ns, _)| ns),
                is_final: false,
            });
        }
        out
    }
}

/// Distinct approach names the probe keeps figures (and Prometheus labels) for.
pub const MAX_APPROACHES: usize = 64;

/// `r`'s record with `own` as its packets (its periods so far, or final).
fn record(r: &Req, own: Snapshot, overhead: bool, is_final: bool) -> RequestRecord {
    let total = own.total();
    let per_token = |x: u64| (r.tokens > 0).then(|| x as f64 / r.tokens as f64);
    RequestRecord {
        id: r.id.to_string(),
        approach: r.approach.clone(),
        transport: r.transport,
        client: r.conn.client,
        server: r.conn.server,
        seq_on_connection: r.seq,
        start_unix_ns: r.start_ns,
        cut_unix_ns: r.cut_ns,
        first_token_unix_ns: r.first_token_ns,
        end_unix_ns: r.end_ns,
        ttft_ms: r
            .first_token_ns
            .map(|f| f.saturating_sub(r.start_ns) as f64 / 1e6),
        tokens: r.tokens,
        app_bytes: r.app_bytes,
        outcome: r.outcome,
        to_server: own.to_server,
        to_client: own.to_client,
        wire_bytes: total.ip_bytes,
        packets: total.packets,
        bytes_per_token: per_token(total.ip_bytes),
        packets_per_token: per_token(total.packets),
        attribution: if r.shared {
            Quality::Shared
        } else {
            Quality::Exact
        },
        includes_connection_overhead: overhead,
        source: Source::Spans,
        passive: None,
        is_final,
    }
}

/// Splits `delta` by `weights` (equal shares when all weights are zero), field by field,
/// with the largest-remainder method: the parts add up to `delta` exactly.
pub fn split(delta: &Snapshot, weights: &[u64]) -> Vec<Snapshot> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let w: Vec<u128> = if weights.iter().all(|&w| w == 0) {
        vec![1; n]
    } else {
        weights.iter().map(|&w| u128::from(w)).collect()
    };
    let sum: u128 = w.iter().sum();
    let share = |x: u64| -> Vec<u64> {
        let x = u128::from(x);
        let mut parts: Vec<u128> = w.iter().map(|wi| x * wi / sum).collect();
        let mut left = x - parts.iter().sum::<u128>();
        let mut order: Vec<usize> = (0..n).collect();
        // Largest remainder first; ties to the earlier owner.
        order.sort_by_key(|&i| std::cmp::Reverse((x * w[i]) % sum));
        for i in order {
            if left == 0 {
                break;
            }
            parts[i] += 1;
            left -= 1;
        }
        parts
            .into_iter()
            .map(|p| u64::try_from(p).unwrap_or(u64::MAX))
            .collect()
    };
    let fields = |c: Counters| (share(c.packets), share(c.ip_bytes), share(c.link_bytes));
    let (sp, sb, sl) = fields(delta.to_server);
    let (cp, cb, cl) = fields(delta.to_client);
    (0..n)
        .map(|i| Snapshot {
            to_server: Counters {
                packets: sp[i],
                ip_bytes: sb[i],
                link_bytes: sl[i],
            },
            to_client: Counters {
                packets: cp[i],
                ip_bytes: cb[i],
                link_bytes: cl[i],
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert!(recs.iter().all(|r| r.is_final
            && r.attribution == Quality::Exact
            && !r.includes_connection_overhead));
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
        let by_id: HashMap<&str, u64> =
            recs.iter().map(|r| (r.id.as_str(), r.wire_bytes)).collect();
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
}
