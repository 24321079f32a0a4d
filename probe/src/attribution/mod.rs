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

mod apply;
mod record;
#[cfg(test)]
mod tests;

pub use record::{ConnectionRecord, Quality, RequestRecord, Snapshot, split};

use crate::spans::{ConnRef, Outcome, RejectReason, Span};
use apply::Start;
use record::record;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

/// Where the attributor reads a connection's current counters.
pub trait Counts {
    fn snapshot(&self, conn: &ConnRef) -> Snapshot;
    /// How long the connection has carried no packets, and whether it saw FIN/RST; `None`
    /// when no packet of it was seen.
    fn idle(&self, conn: &ConnRef) -> Option<(bool, Duration)>;
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

    /// Charges what the connection carried since its last cut (up to `now`) to its
    /// current owners: setup, teardown, its one request, or a shared period to split later.
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
                let start = Start {
                    id,
                    approach,
                    conn,
                    transport,
                    time_ns,
                };
                self.start(start, src, cut_ns, now)
            }
            Span::FirstToken { id, time_ns } => self.first_token(&id, time_ns),
            Span::End {
                id,
                time_ns,
                tokens,
                app_bytes,
                outcome,
            } => self.end(&id, time_ns, tokens, app_bytes, outcome, src),
            Span::Close { conn, .. } => {
                self.close(&conn, src, cut_ns, now);
                Ok(())
            }
        }
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
