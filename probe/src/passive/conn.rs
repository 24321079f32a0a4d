//! One TCP connection read passively: its two byte streams put back in order by sequence
//! number (retransmissions dropped, holes reported as gaps), each read as HTTP/1.1, the
//! requests and answers paired in order, and every packet charged to the request it
//! served, with the spans' semantics (docs/spans.md): packets before the first request are
//! the connection's setup; a request owns every packet from its first one until the next
//! request starts or the connection ends; a connection that served one request adds its
//! setup to it.

use super::http::{Broken, HttpReader, Side, starts_message};
use super::track::{Req, Track, outcome};
use super::{PassiveCounts, PassivePacket};
use crate::attribution::{ConnectionRecord, Event, Quality, RequestRecord, Snapshot};
use crate::flow::{Counters, Direction};
use crate::llm::{Family, PassiveDetail, Source, gap_stats};
use crate::spans::Outcome;
use std::net::SocketAddr;
use tokenwire_probe_common::{TCP_FIN, TCP_RST, TCP_SYN};

/// One direction's place in its byte stream.
#[derive(Debug, Default)]
struct Stream {
    /// The next sequence number expected, once known.
    next: Option<u32>,
    fin: bool,
}

/// A followed connection.
pub(super) struct Conn {
    pub seq: u64,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub last_ns: u64,
    first_ns: u64,
    to_server: Stream,
    to_client: Stream,
    requests: HttpReader,
    responses: HttpReader,
    track: Track,
    total: Snapshot,
    rst: bool,
    /// Both FINs (or a RST) were seen, at this time.
    pub closed_ns: Option<u64>,
    broken: Option<Broken>,
}

impl Conn {
    pub fn new(seq: u64, client: SocketAddr, server: SocketAddr, t: u64) -> Self {
        Self {
            seq,
            client,
            server,
            last_ns: t,
            first_ns: t,
            to_server: Stream::default(),
            to_client: Stream::default(),
            requests: HttpReader::new(Side::Requests),
            responses: HttpReader::new(Side::Responses),
            track: Track::default(),
            total: Snapshot::default(),
            rst: false,
            closed_ns: None,
            broken: None,
        }
    }

    /// Reads one packet of the connection; whether the connection is over (its records
    /// then come from [`Conn::finish`]).
    pub fn packet(&mut self, p: &PassivePacket<'_>, counts: &mut PassiveCounts) -> bool {
        let dir = if p.dst == self.server {
            Direction::ToServer
        } else {
            Direction::ToClient
        };
        let was_closed = self.closed_ns.is_some();
        self.last_ns = p.time_ns;
        let carries_request = dir == Direction::ToServer && p.payload_len > 0;
        if !carries_request {
            self.charge(dir, p.counters, false);
        }
        self.track.started = false;
        self.read(dir, p, counts);
        if carries_request {
            let started = self.track.started;
            self.charge(
                dir,
                p.counters,
                started || self.track.queue.back().is_some(),
            );
        }
        if p.tcp_flags & TCP_RST != 0 {
            self.rst = true;
        }
        if self.closed_ns.is_none() && (self.rst || (self.to_server.fin && self.to_client.fin)) {
            self.closed_ns = Some(p.time_ns);
        }
        // Over at a RST, or at the first packet after both FINs (the last ACK).
        self.rst || (was_closed && p.payload_len == 0)
    }

    /// Charges a packet to its owner: the newest request when it carried request bytes,
    /// else the request being answered or the last answered, else the setup.
    fn charge(&mut self, dir: Direction, c: Counters, newest: bool) {
        let add = |s: &mut Snapshot| match dir {
            Direction::ToServer => s.to_server += c,
            Direction::ToClient => s.to_client += c,
        };
        add(&mut self.total);
        let owner = if newest {
            self.track.newest()
        } else {
            self.track.owner()
        };
        match owner {
            Some(r) => add(&mut r.own),
            None => add(&mut self.track.setup),
        }
    }

    /// The packet's payload into its direction's stream, in sequence order.
    fn read(&mut self, dir: Direction, p: &PassivePacket<'_>, counts: &mut PassiveCounts) {
        let t = p.time_ns;
        let stream = match dir {
            Direction::ToServer => &mut self.to_server,
            Direction::ToClient => &mut self.to_client,
        };
        let syn = p.tcp_flags & TCP_SYN != 0;
        if syn {
            stream.next = Some(p.seq.wrapping_add(1));
        }
        let mut len = p.payload_len;
        let mut seq = p.seq.wrapping_add(u32::from(syn));
        let mut data = &p.payload[..p.payload.len().min(len as usize)];
        let mut hole = 0u32;
        if len > 0 {
            let next = *stream.next.get_or_insert(seq);
            let behind = next.wrapping_sub(seq) as i32;
            if behind > 0 {
                // A retransmission: only what lies past `next` is new.
                let skip = (behind as u32).min(len);
                len -= skip;
                data = &data[data.len().min(skip as usize)..];
                seq = seq.wrapping_add(skip);
            } else if behind < 0 {
                // A hole: bytes the capture never saw.
                hole = seq.wrapping_sub(next);
                tracing::debug!(client = %self.client, ?dir, next, seq, hole, "passive: sequence hole");
            }
            if len > 0 {
                stream.next = Some(seq.wrapping_add(len));
            }
        }
        if p.tcp_flags & TCP_FIN != 0 {
            stream.fin = true;
        }
        if hole > 0 {
            counts.add("payload_lost");
            self.gap_into(dir, u64::from(hole), t);
        }
        if len > 0 {
            self.resync_at(dir, data, counts);
            self.feed_into(dir, data, t);
            let missing = len as usize - data.len();
            if missing > 0 {
                counts.add("payload_lost");
                self.gap_into(dir, missing as u64, t);
            }
        }
        if dir == Direction::ToClient && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
            let track = &mut self.track;
            self.responses.close(&mut |e| track.on_response(e, t));
        }
        if self.track.overflow && self.broken.is_none() {
            self.broken = Some(Broken::LostSync);
            counts.add("too_many_pipelined");
        }
        if self.broken.is_none()
            && let Some(b) = self.requests.broken().or(self.responses.broken())
        {
            self.broken = Some(b);
            counts.add(b.as_str());
        }
    }

    /// A stopped direction whose packet begins a message is read again from there.
    fn resync_at(&mut self, dir: Direction, data: &[u8], counts: &mut PassiveCounts) {
        let (reader, side) = match dir {
            Direction::ToServer => (&mut self.requests, Side::Requests),
            Direction::ToClient => (&mut self.responses, Side::Responses),
        };
        if reader.broken().is_some() && starts_message(side, data) {
            reader.resync();
            if side == Side::Requests {
                // Answers to what came before cannot be paired: those requests end here
                // (outcome unknown) and the pairing starts afresh.
                self.responses.resync();
                self.track.overflow = false;
                let before: Vec<Req> = self.track.queue.drain(..).collect();
                self.track.finished.extend(before);
            }
            self.broken = None;
            counts.add("resynced");
        }
    }

    fn feed_into(&mut self, dir: Direction, data: &[u8], t: u64) {
        match dir {
            Direction::ToServer => {
                let (track, responses) = (&mut self.track, &mut self.responses);
                self.requests
                    .feed(data, &mut |e| track.on_request(e, t, responses));
            }
            Direction::ToClient => {
                let track = &mut self.track;
                self.responses.feed(data, &mut |e| track.on_response(e, t));
            }
        }
    }

    fn gap_into(&mut self, dir: Direction, n: u64, t: u64) {
        match dir {
            Direction::ToServer => {
                let (track, responses) = (&mut self.track, &mut self.responses);
                self.requests
                    .gap(n, &mut |e| track.on_request(e, t, responses));
            }
            Direction::ToClient => {
                let track = &mut self.track;
                self.responses.gap(n, &mut |e| track.on_response(e, t));
                if let Some(r) = self.track.queue.front_mut() {
                    r.mark("payload_lost");
                }
            }
        }
    }

    /// The capture lost packets somewhere (its ring was full): what is being read now may
    /// be short.
    pub fn capture_lost(&mut self) {
        for r in self.track.queue.iter_mut().chain(self.track.done.as_mut()) {
            r.mark("capture_lost");
        }
    }

    /// Reports the requests that became final, as events.
    pub fn take_final(&mut self, counts: &mut PassiveCounts, out: &mut Vec<Event>) {
        for r in std::mem::take(&mut self.track.finished) {
            self.report(r, false, true, counts, out);
        }
    }

    /// The connection is over (closed, or gone idle): every request is final.
    pub fn finish(mut self, idle: bool, counts: &mut PassiveCounts, out: &mut Vec<Event>) {
        self.take_final(counts, out);
        let only = self.track.served == 1;
        let mut rest: Vec<Req> = self.track.queue.drain(..).collect();
        rest.extend(self.track.done.take());
        let ended = !idle || self.rst;
        for mut r in rest {
            if r.end_ns.is_none() {
                let t = self.closed_ns.unwrap_or(self.last_ns);
                if let Some(d) = r.decoder.as_mut() {
                    let n = d.finish();
                    r.tokens(n, t);
                }
            }
            if only {
                r.own += self.track.setup;
            }
            self.report(r, only, ended, counts, out);
        }
        if self.track.served > 0 {
            out.push(Event::Connection(self.record()));
        }
    }

    /// The connection's final record.
    fn record(&self) -> ConnectionRecord {
        ConnectionRecord {
            approach: self.approach().to_string(),
            transport: "http",
            client: self.client,
            server: self.server,
            requests: self.track.served,
            first_start_unix_ns: self.first_ns,
            setup: self.track.setup,
            teardown: Snapshot::default(),
            total: self.total,
            closed_unix_ns: self.closed_ns,
            is_final: true,
        }
    }

    /// The connection's approach: its first LLM request's family.
    fn approach(&self) -> &'static str {
        self.track
            .queue
            .iter()
            .chain(self.track.done.as_ref())
            .find_map(|r| r.family)
            .map_or("http", Family::label)
    }

    fn report(
        &self,
        r: Req,
        overhead: bool,
        conn_ended: bool,
        counts: &mut PassiveCounts,
        out: &mut Vec<Event>,
    ) {
        let Some(family) = r.family else {
            counts.add("other_endpoint");
            return;
        };
        let outcome = outcome(&r, conn_ended);
        let rec = build(self, &r, family, overhead, Some(outcome));
        counts.add("request");
        if rec.passive.as_ref().is_some_and(|p| p.incomplete.is_some()) {
            counts.add("tokens_incomplete");
        }
        out.push(Event::Started {
            approach: rec.approach.clone(),
        });
        out.push(Event::Ended {
            approach: rec.approach.clone(),
            tokens: rec.tokens,
            outcome,
            ttft_seconds: rec.ttft_ms.map(|m| m / 1e3),
        });
        out.push(Event::Request(rec));
    }

    /// The requests not yet final, with their packets so far.
    pub fn running(&self) -> Vec<RequestRecord> {
        self.track
            .queue
            .iter()
            .chain(self.track.done.as_ref())
            .filter_map(|r| {
                let family = r.family?;
                Some(build(self, r, family, false, None))
            })
            .collect()
    }
}

/// `r`'s record: final with its outcome, or still running (`None`).
fn build(
    c: &Conn,
    r: &Req,
    family: Family,
    overhead: bool,
    outcome: Option<Outcome>,
) -> RequestRecord {
    let total = r.own.total();
    let usage = r
        .decoder
        .as_ref()
        .map(|d| d.usage().clone())
        .unwrap_or_default();
    // A whole (non-streamed) answer has no tokens to count: the server's count stands.
    let tokens = match &r.decoder {
        Some(d) if !d.streams() => usage.output_tokens.unwrap_or(0),
        _ => r.tokens,
    };
    let per_token = |x: u64| (tokens > 0).then(|| x as f64 / tokens as f64);
    let lost_units = r.decoder.as_ref().map_or(0, |d| d.lost());
    let mut gaps = r.gaps.clone();
    let (p50, p99, max) = gap_stats(&mut gaps);
    let ms = |a: u64, b: u64| b.saturating_sub(a) as f64 / 1e6;
    let incomplete = r.incomplete.or_else(|| {
        if c.broken.is_some() && r.end_ns.is_none() {
            Some("framing_lost")
        } else if lost_units > 0 {
            Some("unreadable_units")
        } else {
            None
        }
    });
    RequestRecord {
        id: format!("passive-{}.{}", c.seq, r.seq_on_connection),
        approach: family.label().to_string(),
        transport: "http",
        client: c.client,
        server: c.server,
        seq_on_connection: r.seq_on_connection,
        start_unix_ns: r.start_ns,
        cut_unix_ns: r.start_ns,
        first_token_unix_ns: r.first_token_ns,
        end_unix_ns: r.end_ns,
        ttft_ms: r
            .first_token_ns
            .map(|f| ms(r.request_end_ns.unwrap_or(r.start_ns), f)),
        tokens,
        app_bytes: r.app_bytes,
        outcome,
        to_server: r.own.to_server,
        to_client: r.own.to_client,
        wire_bytes: total.ip_bytes,
        packets: total.packets,
        bytes_per_token: per_token(total.ip_bytes),
        packets_per_token: per_token(total.packets),
        attribution: Quality::Exact,
        includes_connection_overhead: overhead,
        is_final: outcome.is_some(),
        source: Source::Passive,
        passive: Some(Box::new(PassiveDetail {
            method: r.head.method.clone(),
            path: r.head.path.clone(),
            status: r.status,
            content_type: r.content_type.clone(),
            model: usage.model,
            server_output_tokens: usage.output_tokens,
            server_input_tokens: usage.input_tokens,
            request_end_unix_ns: r.request_end_ns,
            last_token_unix_ns: r.last_token_ns,
            gap_p50_ms: p50,
            gap_p99_ms: p99,
            gap_max_ms: max,
            total_ms: r.end_ns.map(|e| ms(r.start_ns, e)),
            incomplete,
        })),
    }
}
