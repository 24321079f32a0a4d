//! The [`Backend`] trait the engine drives, and what its implementations share.

use crate::flow::PacketKey;
use crate::health::Health;
use crate::passive::Passive;
use crate::spans::{ConnRef, Span};
use crate::table::FlowTable;
use std::collections::BTreeSet;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Where a capture with pinned maps carries the flow table over to the next probe
/// (`--pin`): the state file, the pinned maps' generation it belongs to, and whether this
/// probe adopted maps a previous one left.
#[derive(Debug, Clone)]
pub struct Carry {
    pub dir: std::path::PathBuf,
    pub file: std::path::PathBuf,
    pub generation: u64,
    pub adopted: bool,
}

/// What a capture backend does for the engine.
pub trait Backend {
    /// Its name in output and in `tokenwire_probe_info`: `ebpf`, `pcap` or `replay`.
    fn name(&self) -> &'static str;

    /// The interfaces it captures, as (index, name).
    fn interfaces(&self) -> Vec<(u32, String)>;

    /// Hands pending rare events (classification, close) to the table. Cheap: the engine
    /// calls it often and before every span's cut, so the span can find its connection.
    fn drain(&mut self, _table: &mut FlowTable) {}

    /// Hands pending events and every key's counters to the table; returns the number of
    /// keys the capture holds.
    fn poll(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64, BackendError>;

    /// The time a cut made now stands for: the wall clock when capturing live, the span's
    /// own time in a replay (whose counters are then exactly those of the packets up to
    /// it). Called right before [`Backend::refresh`].
    fn cut_time_ns(&self, span: &Span) -> u64;

    /// The keys a connection's packets carry on this capture, derived from its addresses
    /// alone: a span's cut reads them even when the events that would have named them to
    /// the table were lost (a full event ring). Backends that see every packet (libpcap,
    /// files) know every key already and give none.
    fn keys_for(&self, _conn: &ConnRef) -> Vec<PacketKey> {
        Vec::new()
    }
    /// Brings the table's counters for `keys` (one connection's) up to the cut.
    fn refresh(&mut self, table: &mut FlowTable, keys: &[PacketKey], now: Instant);

    /// Forgets `keys` (idle) to bound memory; the table keeps their totals.
    fn evict(&mut self, table: &mut FlowTable, keys: &[PacketKey]);

    fn health(&self) -> Health;
    /// Keeps every packet of TCP connections with a server port in `ports` (with its
    /// payload, as far as the backend copies it) for [`Backend::drain_passive`]. Backends
    /// that cannot say so (and an empty set) keep none.
    fn read_passive(&mut self, _ports: &BTreeSet<u16>) -> Result<(), BackendError> {
        Ok(())
    }
    /// Hands the packets kept for passive reading to `sink`, in capture order, and tells
    /// it when some were lost.
    fn drain_passive(&mut self, _sink: &mut Passive) {}
    /// The capture's clock now, Unix nanoseconds: the wall clock live, the last packet's
    /// time in a replay.
    fn now_ns(&self) -> u64 {
        wall_clock_ns()
    }
    /// Where the flow table is carried to the next probe, when the capture's maps outlive
    /// this one (pinned).
    fn carry(&self) -> Option<Carry> {
        None
    }
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn interfaces(&self) -> Vec<(u32, String)> {
        (**self).interfaces()
    }
    fn drain(&mut self, table: &mut FlowTable) {
        (**self).drain(table)
    }
    fn poll(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64, BackendError> {
        (**self).poll(table, now)
    }
    fn cut_time_ns(&self, span: &Span) -> u64 {
        (**self).cut_time_ns(span)
    }
    fn keys_for(&self, conn: &ConnRef) -> Vec<PacketKey> {
        (**self).keys_for(conn)
    }
    fn refresh(&mut self, table: &mut FlowTable, keys: &[PacketKey], now: Instant) {
        (**self).refresh(table, keys, now)
    }
    fn evict(&mut self, table: &mut FlowTable, keys: &[PacketKey]) {
        (**self).evict(table, keys)
    }
    fn health(&self) -> Health {
        (**self).health()
    }
    fn read_passive(&mut self, ports: &BTreeSet<u16>) -> Result<(), BackendError> {
        (**self).read_passive(ports)
    }
    fn drain_passive(&mut self, sink: &mut Passive) {
        (**self).drain_passive(sink)
    }
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
    fn carry(&self) -> Option<Carry> {
        (**self).carry()
    }
}

/// A running capture that stopped working.
#[derive(Debug, thiserror::Error)]
#[error("the capture stopped: {0}")]
pub struct BackendError(pub String);

/// The wall clock, Unix nanoseconds: a live capture's cut time.
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
