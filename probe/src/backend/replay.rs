//! The replay backend: a capture file and the spans sent while it was taken, played back in
//! time order through the same engine as a live capture. Packets are counted in user space
//! (as libpcap's are); each span is handed out once every packet up to its time has been
//! counted, so its cut sees exactly the packets before it (the server's clock is the cut's
//! clock). Platform-free: any `Read` of a pcap or pcapng file, or packets built in memory.

use super::accumulate::Accumulator;
use super::capture::{Backend, BackendError};
use crate::capture_file::{CaptureFile, CaptureFileError, CapturedPacket};
use crate::flow::PacketKey;
use crate::health::Health;
use crate::packet::LinkType;
use crate::passive::Passive;
use crate::spans::Span;
use crate::table::FlowTable;
use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Open(#[from] CaptureFileError),
    #[error(
        "link type {0} is not one tokenwire reads (Ethernet 1, null 0, loop 108, raw 101, Linux cooked 113 and 276)"
    )]
    UnknownLinkType(u32),
}

/// Where replayed packets come from.
pub trait PacketSource {
    /// The next packet; `Ok(None)` at the end.
    fn next_packet(&mut self) -> Result<Option<CapturedPacket>, CaptureFileError>;
}

impl<R: Read> PacketSource for CaptureFile<R> {
    fn next_packet(&mut self) -> Result<Option<CapturedPacket>, CaptureFileError> {
        CaptureFile::next_packet(self)
    }
}

/// Packets held in memory (tests, benches): never fails.
impl PacketSource for std::vec::IntoIter<CapturedPacket> {
    fn next_packet(&mut self) -> Result<Option<CapturedPacket>, CaptureFileError> {
        Ok(self.next())
    }
}

/// Packets kept for passive reading after which [`ReplayBackend::next_step`] hands over.
pub const PASSIVE_BATCH: usize = 4096;

/// What [`ReplayBackend::next_step`] reached.
#[derive(Debug)]
pub enum Step {
    /// A span is due: every packet before it is counted.
    Span(Span),
    /// Packets wait for passive reading.
    Packets,
}

pub struct ReplayBackend<S> {
    source: S,
    acc: Accumulator,
    /// In time order.
    spans: VecDeque<Span>,
    /// A packet read but not yet counted: a span due before it goes first.
    held: Option<CapturedPacket>,
    ended: bool,
    packets: u64,
    /// The latest packet time counted (the replay's clock).
    last_ns: u64,
    /// Why the file stopped early; the counts hold up to there.
    error: Option<CaptureFileError>,
}

impl<R: Read> ReplayBackend<CaptureFile<R>> {
    /// Opens a capture file (pcap or pcapng) with the spans sent during it.
    pub fn open(r: R, spans: Vec<Span>) -> Result<Self, ReplayError> {
        Ok(Self::new(CaptureFile::open(r)?, spans))
    }
}

impl<S: PacketSource> ReplayBackend<S> {
    pub fn new(source: S, mut spans: Vec<Span>) -> Self {
        spans.sort_by_key(Span::time_ns);
        Self {
            source,
            acc: Accumulator::new(),
            spans: spans.into(),
            held: None,
            ended: false,
            packets: 0,
            last_ns: 0,
            error: None,
        }
    }

    /// Counts packets up to the next span's time and returns that span; once the packets
    /// run out (or the file breaks), the remaining spans; `None` at the end of both.
    /// Packets without a timestamp are counted where they stand.
    pub fn next_span(&mut self) -> Result<Option<Span>, ReplayError> {
        let due = self.spans.front().map_or(u64::MAX, Span::time_ns);
        while !self.count_until(due, usize::MAX)? {}
        Ok(self.spans.pop_front())
    }

    /// As [`ReplayBackend::next_span`], but stops early once [`PASSIVE_BATCH`] packets
    /// wait for passive reading ([`Step::Packets`]: hand them over, then call again), so a
    /// long file is read in bounded memory.
    pub fn next_step(&mut self) -> Result<Option<Step>, ReplayError> {
        let due = self.spans.front().map_or(u64::MAX, Span::time_ns);
        if !self.count_until(due, PASSIVE_BATCH)? {
            return Ok(Some(Step::Packets));
        }
        Ok(self.spans.pop_front().map(Step::Span))
    }

    /// Counts the packets before `ts_ns` (stops early at a span due before then, which
    /// [`ReplayBackend::next_span`] hands out).
    pub fn advance_to(&mut self, ts_ns: u64) -> Result<(), ReplayError> {
        let due = self.spans.front().map_or(u64::MAX, Span::time_ns);
        while !self.count_until(due.min(ts_ns), usize::MAX)? {}
        Ok(())
    }

    /// Counts packets with a time before `limit_ns`; `false` when it stopped early because
    /// `batch` packets wait for passive reading.
    fn count_until(&mut self, limit_ns: u64, batch: usize) -> Result<bool, ReplayError> {
        while !self.ended {
            if self.acc.passive_pending() >= batch {
                return Ok(false);
            }
            let p = match self.held.take() {
                Some(p) => p,
                None => match self.source.next_packet() {
                    Ok(Some(p)) => p,
                    Ok(None) => {
                        self.ended = true;
                        break;
                    }
                    Err(e) => {
                        self.error = Some(e);
                        self.ended = true;
                        break;
                    }
                },
            };
            let link =
                LinkType::from_pcap(p.linktype).ok_or(ReplayError::UnknownLinkType(p.linktype))?;
            if p.ts_ns.is_some_and(|ts| ts >= limit_ns) {
                self.held = Some(p);
                return Ok(true);
            }
            self.acc.packet(
                link,
                &p.data,
                p.orig_len,
                p.iface,
                p.ts_ns.unwrap_or(self.last_ns),
            );
            self.last_ns = p.ts_ns.unwrap_or(self.last_ns).max(self.last_ns);
            self.packets += 1;
        }
        Ok(true)
    }

    /// Packets counted so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Why the file stopped before its end, if it did.
    pub fn error(&self) -> Option<&CaptureFileError> {
        self.error.as_ref()
    }

    pub fn take_error(&mut self) -> Option<CaptureFileError> {
        self.error.take()
    }
}

impl<S: PacketSource> Backend for ReplayBackend<S> {
    fn name(&self) -> &'static str {
        "replay"
    }

    /// A file's interfaces are numbered in the file; their names are not known.
    fn interfaces(&self) -> Vec<(u32, String)> {
        Vec::new()
    }

    fn poll(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64, BackendError> {
        self.acc.flush(table, now);
        Ok(self.acc.health.flows_tracked)
    }

    /// The span's own time: the counts are those of the packets up to it.
    fn cut_time_ns(&self, span: &Span) -> u64 {
        span.time_ns()
    }

    fn refresh(&mut self, table: &mut FlowTable, _keys: &[PacketKey], now: Instant) {
        self.acc.flush(table, now);
    }

    fn evict(&mut self, table: &mut FlowTable, keys: &[PacketKey]) {
        self.acc.evict(table, keys);
    }

    fn health(&self) -> Health {
        self.acc.health
    }

    fn read_passive(&mut self, ports: &BTreeSet<u16>) -> Result<(), BackendError> {
        self.acc.read_passive(ports.clone());
        Ok(())
    }

    fn drain_passive(&mut self, sink: &mut Passive) {
        self.acc.drain_passive(sink);
    }

    fn now_ns(&self) -> u64 {
        self.last_ns
    }
}
