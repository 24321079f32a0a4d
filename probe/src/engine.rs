//! The probe's engine: the one place where packets become per-request figures. It owns a
//! capture backend, the flow table, the attributor, the finished records and the metrics,
//! and offers the operations a driver calls in any order:
//!
//! - [`Engine::poll`]: read every counter, evict idle keys, retire finished connections;
//! - [`Engine::span_datagram`] / [`Engine::span`]: a server's span, with the span-cut
//!   sequence (drain events -> find the connection's keys, the table's and those its
//!   addresses name -> read them -> take the cut time -> read again until two reads agree
//!   -> apply);
//! - [`Engine::tick`]: drain events and finish connections that are due;
//! - [`Engine::answer`]: an HTTP query, with figures current to the moment.
//!
//! The live probe drives it from a `select!` over the span socket, the HTTP listener and
//! timers; `analyze` drives it over a capture file and its spans log. Both run this code,
//! so live and offline attribution cannot diverge. Nothing here is platform-specific, and
//! nothing needs privileges: tests drive it with packets built in memory.

use crate::api::{Answer, JSON_TYPE, METRICS_TYPE, Query};
use crate::attribution::{Attributor, ConnectionRecord, Counts, Event, Limits, RequestRecord};
use crate::backend::{Backend, BackendError};
use crate::health::Health;
use crate::labels::Labels;
use crate::metrics::{self, Metrics};
use crate::output;
use crate::passive::{Passive, PassiveOptions};
use crate::records::Records;
use crate::spans::{Span, SpanCounts};
use crate::table::FlowTable;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long things are kept.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Finished requests (and connections) kept for the API.
    pub keep_requests: usize,
    /// A key without packets for this long leaves the capture (its totals stay); so does a
    /// connection the spans named and the capture never saw, once its spans stop.
    pub idle: Duration,
    /// The same for a key whose connection closed (FIN/RST).
    pub closed: Duration,
    /// What attribution holds at most.
    pub limits: Limits,
    /// Which connections are read passively, and its limits.
    pub passive: PassiveOptions,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            keep_requests: 10_000,
            idle: Duration::from_secs(300),
            closed: Duration::from_secs(30),
            limits: Limits::default(),
            passive: PassiveOptions::default(),
        }
    }
}

/// Reads of a connection's counters a span's cut makes at most to find two that agree
/// around its time (after the first).
const CUT_READS: usize = 4;

/// Rejected spans are logged at most once per this long, with the count since.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct Engine<B> {
    backend: B,
    table: FlowTable,
    attributor: Attributor,
    records: Records,
    metrics: Metrics,
    spans: SpanCounts,
    interfaces: Vec<(u32, String)>,
    opts: EngineOptions,
    unlogged_rejects: u64,
    last_reject_log: Option<Instant>,
    passive: Passive,
    /// Passive records dropped because the connection's server sent spans (spans win).
    passive_superseded: u64,
}

impl<B: Backend> Engine<B> {
    pub fn new(mut backend: B, labels: Labels, opts: EngineOptions) -> Self {
        if let Err(e) = backend.read_passive(&opts.passive.ports) {
            tracing::warn!("passive reading is off: {e}");
        }
        let mut attributor = Attributor::new();
        attributor.idle_limit = opts.idle;
        attributor.limits = opts.limits;
        Self {
            passive: Passive::new(opts.passive.clone()),
            interfaces: backend.interfaces(),
            backend,
            table: FlowTable::new(labels),
            attributor,
            records: Records::new(opts.keep_requests),
            metrics: Metrics::new(),
            spans: SpanCounts::default(),
            opts,
            unlogged_rejects: 0,
            last_reject_log: None,
            passive_superseded: 0,
        }
    }

    /// Never count connections with an endpoint at `addr` (the probe's own listener).
    pub fn exclude(&mut self, addr: SocketAddr) {
        self.table.exclude(addr);
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The captured interfaces, (index, name).
    pub fn interfaces(&self) -> &[(u32, String)] {
        &self.interfaces
    }

    pub fn health(&self) -> Health {
        self.backend.health()
    }

    pub fn span_counts(&self) -> &SpanCounts {
        &self.spans
    }

    /// Reads every counter, evicts idle keys, retires finished connections.
    pub fn poll(&mut self, now: Instant) -> Result<(), BackendError> {
        self.backend.poll(&mut self.table, now)?;
        let stale = self.table.idle_keys(now, self.opts.idle, self.opts.closed);
        if !stale.is_empty() {
            self.backend.evict(&mut self.table, &stale);
            self.table.retire();
        }
        Ok(())
    }

    /// Frequent, cheap: hands the capture's events to the table and finishes the
    /// connections that are due (closed, or silent), with their final counters.
    pub fn tick(&mut self, now: Instant) {
        self.backend.drain(&mut self.table);
        self.read_passive();
        for conn in self.attributor.due(&self.table, now) {
            let keys = self.keys_of(&conn);
            self.backend.refresh(&mut self.table, &keys, now);
            self.attributor.finish(&conn, &self.table);
        }
        self.route_events();
    }

    /// A connection's keys as the table knows them and as its addresses name them: a key
    /// whose events a full ring dropped is read all the same.
    fn keys_of(&self, c: &crate::spans::ConnRef) -> Vec<crate::flow::PacketKey> {
        let mut keys = self.table.keys_of(c);
        keys.extend(self.backend.keys_for(c));
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    /// One datagram from the span socket: parsed, then applied. A message that does not
    /// parse is counted by reason and logged (rate-limited). Whether it was applied.
    pub fn span_datagram(&mut self, bytes: &[u8], now: Instant) -> bool {
        match crate::spans::parse(bytes) {
            Ok(span) => self.span(span, now),
            Err(e) => {
                self.rejected(e.reason(), &e, now);
                false
            }
        }
    }

    /// Applies one span: the span-cut sequence. Whether it was applied.
    pub fn span(&mut self, span: Span, now: Instant) -> bool {
        let conn = self.attributor.conn_of(&span);
        // Events first: a connection's first packets may only be known from them.
        let keys = conn.map(|c| {
            self.backend.drain(&mut self.table);
            self.keys_of(&c)
        });
        // The cut's time lies between two reads of the connection's counters that agree:
        // read, take the time, read again, and again while a packet came in between (a
        // read is a lookup per key, microseconds, and the process may be preempted in it).
        // No packet of the connection was counted between the reads, so a capture cut at
        // this time agrees with the counters read exactly. A connection too busy to hold
        // still over CUT_READS tries keeps the last time.
        let mut cut_ns = self.backend.cut_time_ns(&span);
        if let (Some(conn), Some(keys)) = (conn, keys) {
            self.backend.refresh(&mut self.table, &keys, now);
            let mut read = self.table.snapshot(&conn);
            for _ in 0..CUT_READS {
                cut_ns = self.backend.cut_time_ns(&span);
                self.backend.refresh(&mut self.table, &keys, now);
                let again = self.table.snapshot(&conn);
                if again == read {
                    break;
                }
                read = again;
            }
            tracing::debug!(?conn, keys = keys.len(), conns = self.table.len(), snapshot = ?read, "span cut");
        }
        let applied = match self.attributor.apply(span, &self.table, cut_ns, now) {
            Ok(()) => {
                self.spans.accepted += 1;
                true
            }
            Err(reason) => {
                self.rejected(reason, &reason.as_str(), now);
                false
            }
        };
        self.route_events();
        applied
    }

    fn rejected(
        &mut self,
        reason: crate::spans::RejectReason,
        why: &dyn std::fmt::Display,
        now: Instant,
    ) {
        self.spans.reject(reason);
        self.unlogged_rejects += 1;
        if self
            .last_reject_log
            .is_none_or(|t| now.duration_since(t) >= REJECT_LOG_EVERY)
        {
            tracing::warn!(
                rejected = self.unlogged_rejects,
                "dropped span message(s); the latest: {why}"
            );
            self.unlogged_rejects = 0;
            self.last_reject_log = Some(now);
        }
    }

    /// The flow table's part a probe adopting this one's pinned maps needs
    /// ([`crate::table::CarriedTable`]).
    pub fn carry_out(&self, generation: u64) -> crate::table::CarriedTable {
        self.table.carry_out(generation)
    }

    /// Takes over a previous probe's flow table, before the first counter read; how many
    /// connections it carried.
    pub fn carry_in(&mut self, carried: crate::table::CarriedTable, now: Instant) -> usize {
        self.table.carry_in(carried, now)
    }

    /// Ends every connection with the counters as they stand (the end of a replay, or of
    /// a live run: requests still running end `unknown` with their bytes so far).
    pub fn finish_all(&mut self, now: Instant) -> Result<(), BackendError> {
        self.backend.poll(&mut self.table, now)?;
        self.attributor.finish_all(&self.table);
        self.route_events();
        self.backend.drain_passive(&mut self.passive);
        self.passive.finish_all();
        self.route_passive();
        Ok(())
    }

    /// Reads the packets kept for passive reading and ends the connections that are due.
    pub fn read_passive(&mut self) {
        self.backend.drain_passive(&mut self.passive);
        self.passive.tick(self.backend.now_ns());
        self.route_passive();
    }

    /// Passive reading's counts (`tokenwire_passive_*`).
    pub fn passive_counts(&self) -> &crate::passive::PassiveCounts {
        self.passive.counts()
    }

    /// Hands passive reading's final records to the records and the metrics, but for
    /// connections whose server sent spans: the spans' records win.
    fn route_passive(&mut self) {
        for e in self.passive.take_events() {
            match e {
                Event::Request(r) => {
                    if self.attributor.follows(&r.client, &r.server) {
                        self.passive_superseded += 1;
                        continue;
                    }
                    self.metrics.observe(&Event::Started {
                        approach: r.approach.clone(),
                    });
                    self.metrics.observe(&Event::Ended {
                        approach: r.approach.clone(),
                        tokens: r.tokens,
                        outcome: r.outcome.unwrap_or(crate::spans::Outcome::Unknown),
                        ttft_seconds: r.ttft_ms.map(|m| m / 1e3),
                    });
                    let e = Event::Request(r);
                    self.metrics.observe(&e);
                    if let Event::Request(r) = e {
                        self.records.push_request(r);
                    }
                }
                Event::Connection(c) => {
                    if !self.attributor.follows(&c.client, &c.server) {
                        self.records.push_connection(c);
                    }
                }
                Event::Started { .. } | Event::Ended { .. } => {}
            }
        }
    }

    /// Hands what attribution reported to the records and the metrics.
    fn route_events(&mut self) {
        for e in self.attributor.take_events() {
            self.metrics.observe(&e);
            match e {
                Event::Request(r) => self.records.push_request(r),
                Event::Connection(c) => self.records.push_connection(c),
                Event::Started { .. } | Event::Ended { .. } => {}
            }
        }
    }

    /// The last requests, oldest first: final ones, then those still running (with their
    /// packets so far).
    pub fn requests(&self) -> Vec<RequestRecord> {
        let mut out: Vec<RequestRecord> = self.records.requests().cloned().collect();
        out.extend(self.attributor.running(&self.table));
        out.extend(
            self.passive
                .running()
                .into_iter()
                .filter(|r| !self.attributor.follows(&r.client, &r.server)),
        );
        out
    }

    /// The last connections that served requests: finished ones, then open ones.
    pub fn connections(&self) -> Vec<ConnectionRecord> {
        let mut out: Vec<ConnectionRecord> = self.records.connections().cloned().collect();
        out.extend(self.attributor.open_connections(&self.table));
        out
    }

    /// Records how late the driver's loop ran a periodic tick (`tokenwire_probe_loop_lag_seconds`):
    /// the live probe's measure of being behind, since one loop does all the work.
    pub fn loop_lag(&self, lag: Duration) {
        self.metrics.observe_loop_lag(lag);
    }

    /// The Prometheus exposition of everything as it stands.
    pub fn metrics_text(&mut self, scrape_seconds: f64) -> Result<String, metrics::MetricsError> {
        let wire = self.table.wire_totals();
        let health = self.health();
        let interfaces = self
            .interfaces
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        self.metrics.render(&metrics::State {
            wire: &wire,
            spans: &self.spans,
            health: &health,
            backend: self.backend.name(),
            interfaces: &interfaces,
            connections: self.table.len() as u64,
            evictions: self.table.evictions,
            scrape_seconds,
            passive: self.passive.counts(),
        })
    }

    /// Answers an HTTP query with figures current to now.
    pub fn answer(&mut self, q: Query) -> Answer {
        let started = Instant::now();
        let error = |status, e: &dyn std::fmt::Display| {
            (
                status,
                JSON_TYPE,
                serde_json::json!({ "error": e.to_string() }).to_string(),
            )
        };
        if let Err(e) = self.poll(started) {
            return error(http::StatusCode::SERVICE_UNAVAILABLE, &e);
        }
        self.tick(started);
        let json = |v: serde_json::Value| (http::StatusCode::OK, JSON_TYPE, v.to_string());
        let wanted = |a: &str, r: &Option<String>| r.as_deref().is_none_or(|w| w == a);
        match q {
            Query::Metrics => match self.metrics_text(started.elapsed().as_secs_f64()) {
                Ok(text) => (http::StatusCode::OK, METRICS_TYPE, text),
                Err(e) => error(http::StatusCode::INTERNAL_SERVER_ERROR, &e),
            },
            Query::Requests {
                limit,
                approach,
                since_unix_ns,
            } => {
                let mut recs: Vec<_> = self
                    .requests()
                    .into_iter()
                    .filter(|r| wanted(&r.approach, &approach))
                    .filter(|r| since_unix_ns.is_none_or(|s| r.start_unix_ns >= s))
                    .collect();
                let skip = recs.len().saturating_sub(limit);
                recs.drain(..skip);
                json(serde_json::json!({ "requests": recs }))
            }
            Query::Connections {
                approach,
                since_unix_ns,
            } => {
                let conns: Vec<_> = self
                    .connections()
                    .into_iter()
                    .filter(|c| wanted(&c.approach, &approach))
                    .filter(|c| since_unix_ns.is_none_or(|s| c.first_start_unix_ns >= s))
                    .collect();
                json(serde_json::json!({ "connections": conns }))
            }
            Query::Flows => json(serde_json::json!({
                "flows": output::flows_json(&self.table.rows(), &self.interfaces)
            })),
            Query::Health => json(serde_json::json!({
                "status": "ok",
                "backend": self.backend.name(),
                "interfaces": self.interfaces.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(),
                "health": self.health(),
                "evictions": self.table.evictions,
                "connections": self.table.len(),
                "spans_accepted": self.spans.accepted,
                "spans_rejected": self
                    .spans
                    .rejected
                    .iter()
                    .map(|(r, n)| (r.as_str(), *n))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            })),
        }
    }
}
