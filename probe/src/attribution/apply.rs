//! One method per span kind: what a start, a first token, an end and a close do to the
//! requests and connections ([`Attributor::apply`] dispatches).

use super::{Attributor, Conn, Counts, Event, Id, MAX_APPROACHES, Owners, Req, Snapshot};
use crate::spans::{ConnRef, Outcome, RejectReason};

/// A start span's fields.
pub(super) struct Start {
    pub id: String,
    pub approach: String,
    pub conn: ConnRef,
    pub transport: &'static str,
    pub time_ns: u64,
}

impl Attributor {
    /// A request starts: refused past a limit; else the connection (new, or a reused
    /// tuple's next one) is cut and the request joins its owners.
    pub(super) fn start(
        &mut self,
        s: Start,
        src: &dyn Counts,
        cut_ns: u64,
        now: std::time::Instant,
    ) -> Result<(), RejectReason> {
        let Start {
            id,
            approach,
            conn,
            transport,
            time_ns,
        } = s;
        if self.reqs.contains_key(id.as_str()) {
            return Err(RejectReason::DuplicateId);
        }
        // Bounded memory and bounded work per span, whatever senders do.
        if self.reqs.len() >= self.limits.open_requests {
            return Err(RejectReason::TooManyRequests);
        }
        match self.conns.get(&conn) {
            Some(c)
                if c.closed.is_none() && c.active.len() >= self.limits.streams_per_connection =>
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
        Ok(())
    }

    /// A request's first token went out: its time to first token.
    pub(super) fn first_token(&mut self, id: &str, time_ns: u64) -> Result<(), RejectReason> {
        match self.reqs.get_mut(id) {
            Some(r) => {
                r.first_token_ns.get_or_insert(time_ns);
                Ok(())
            }
            None => Err(RejectReason::UnknownRequest),
        }
    }

    /// A request ends: its counts are known, and unless others still run it owns what
    /// follows until the next start (its trailing ACKs).
    pub(super) fn end(
        &mut self,
        id: &str,
        time_ns: u64,
        tokens: u64,
        app_bytes: u64,
        outcome: Outcome,
        src: &dyn Counts,
    ) -> Result<(), RejectReason> {
        let Some(r) = self.reqs.get_mut(id) else {
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
        let (conn, id) = (r.conn, r.id.clone());
        self.events.push(Event::Ended {
            approach: r.approach.clone(),
            tokens,
            outcome,
            ttft_seconds: ttft,
        });
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
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
        Ok(())
    }

    /// The server says the connection closed: what follows is its teardown.
    pub(super) fn close(
        &mut self,
        conn: &ConnRef,
        src: &dyn Counts,
        cut_ns: u64,
        now: std::time::Instant,
    ) {
        let Some(c) = self.conns.get(conn) else {
            return; // a connection that served no request: nothing to attribute
        };
        if c.closed.is_some() {
            return;
        }
        let snap = src.snapshot(conn);
        self.cut(conn, snap);
        if let Some(c) = self.conns.get_mut(conn) {
            c.owners = Owners::Teardown;
            c.closed = Some((cut_ns, now));
        }
        self.settle(conn, false);
    }
}
