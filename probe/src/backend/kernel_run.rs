//! The probe's kernel programs run on chosen packets with BPF_PROG_TEST_RUN, loaded but
//! attached nowhere: what the kernel path costs per packet, free of traffic and its noise
//! (`tokenwire-probe kernel-bench`), and what the kernel counted for one packet, to hold
//! the user-space parser to the same answer (the differential test and fuzz target).
//!
//! The kernel hands a test run's bytes to a TC program as they are: an Ethernet frame for
//! the L2 programs, an IP packet for the L3 ones. It refuses inputs shorter than an
//! Ethernet header (14 bytes) and, when bytes 12-13 say IPv4 or IPv6, shorter than that
//! IP header; those come back as [`KernelRunError::Refused`].

use super::accumulate::{Outcome, Unkeyed};
use super::ebpf_object::{
    EbpfError, Layout, LinkKind, chain, load_object, load_object_from, load_object_with,
    load_program,
};
use super::flow_maps::FlowMaps;
use crate::flow::Counters;
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions};
use std::time::Duration;
use tokenwire_probe_common as common;

/// Which program a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    /// The classifier for devices with an Ethernet header (egress; ingress is the same
    /// code with another hook number).
    L2,
    /// The classifier for devices without a link header (TUN, WireGuard).
    L3,
    /// A classifier that does nothing: the cost of running any program at all.
    Empty,
}

impl Program {
    fn name(self) -> &'static str {
        match self {
            Program::L2 => "tokenwire_l2_egress",
            Program::L3 => "tokenwire_l3_egress",
            Program::Empty => "tokenwire_empty",
        }
    }

    pub fn for_link(link: LinkKind) -> Self {
        match link {
            LinkKind::L2 => Program::L2,
            LinkKind::L3 => Program::L3,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KernelRunError {
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The kernel would not build a packet from these bytes (too short for the header its
    /// bytes 12-13 announce).
    #[error("the kernel refused the test input: {0}")]
    Refused(String),
    #[error("BPF_PROG_TEST_RUN: {0}")]
    Run(String),
}

/// The loaded object, its maps, and nothing attached.
pub struct KernelRun {
    flows: FlowMaps,
    events: RingBuf<MapData>,
    /// The passive ring, and [`BENCH_PASSIVE_PORT`] marked for passive reading (absent in
    /// an object built before passive reading).
    passive: Option<RingBuf<MapData>>,
    unattributed: PerCpuArray<MapData, common::Unattributed>,
    ebpf: aya::Ebpf,
}

fn map_err(map: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::Map {
        map,
        reason: chain(&e),
    }
}

impl KernelRun {
    /// Loads (verifies) the programs; needs the same privileges as the probe.
    pub fn load() -> Result<Self, KernelRunError> {
        Self::with(load_object(1024)?)
    }

    /// The same with chosen fingerprint keys ([`tokenwire_probe_common::fingerprint_keys`]):
    /// all-zero multipliers give every key the same hash, so every second key collides.
    pub fn load_with_fingerprint_keys(keys: [u64; 14]) -> Result<Self, KernelRunError> {
        Self::with(load_object_with(1024, keys)?)
    }

    /// Loads another kernel object (an older build, for side-by-side figures).
    pub fn load_object_file(object: &[u8]) -> Result<Self, KernelRunError> {
        Self::with(load_object_from(object, 1024)?)
    }

    fn with((mut ebpf, layout): (aya::Ebpf, Layout)) -> Result<Self, KernelRunError> {
        for p in [Program::L2, Program::L3, Program::Empty] {
            load_program(&mut ebpf, p.name())?;
        }
        let flows = FlowMaps::take(&mut ebpf, layout)?;
        let mut take = |name: &'static str| {
            ebpf.take_map(name).ok_or(EbpfError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        let events =
            RingBuf::try_from(take(common::EVENTS_MAP)?).map_err(map_err(common::EVENTS_MAP))?;
        let unattributed = PerCpuArray::try_from(take(common::UNATTRIBUTED_MAP)?)
            .map_err(map_err(common::UNATTRIBUTED_MAP))?;
        let passive = match (
            ebpf.take_map(common::HTTP_PORTS_MAP),
            ebpf.take_map(common::PASSIVE_MAP),
        ) {
            (Some(ports), Some(ring)) => {
                let mut ports: Array<MapData, u8> =
                    Array::try_from(ports).map_err(map_err(common::HTTP_PORTS_MAP))?;
                ports
                    .set(u32::from(BENCH_PASSIVE_PORT), 1, 0)
                    .map_err(map_err(common::HTTP_PORTS_MAP))?;
                Some(RingBuf::try_from(ring).map_err(map_err(common::PASSIVE_MAP))?)
            }
            _ => None,
        };
        Ok(Self {
            flows,
            events,
            passive,
            unattributed,
            ebpf,
        })
    }

    fn program(&self, p: Program) -> Result<&SchedClassifier, KernelRunError> {
        self.ebpf
            .program(p.name())
            .and_then(|p| <&SchedClassifier>::try_from(p).ok())
            .ok_or_else(|| KernelRunError::Run(format!("program {} not loaded", p.name())))
    }

    /// Runs `p` on `packet` `repeat` times in the kernel; the kernel's mean time per run.
    pub fn time(&self, p: Program, packet: &[u8], repeat: u32) -> Result<Duration, KernelRunError> {
        let opts = TestRunOptions {
            data_in: Some(packet),
            repeat: repeat.max(1),
            ..TestRunOptions::new()
        };
        match self.program(p)?.test_run(opts) {
            Ok(r) => Ok(r.duration),
            Err(e) => {
                let s = chain(&e);
                if s.contains("Invalid argument") {
                    Err(KernelRunError::Refused(s))
                } else {
                    Err(KernelRunError::Run(s))
                }
            }
        }
    }

    /// Empties the flow map and the event rings: the next packet creates its key.
    pub fn forget(&mut self) -> Result<(), KernelRunError> {
        self.flows.clear();
        while self.events.next().is_some() {}
        self.drain_passive();
        Ok(())
    }

    /// Empties the passive ring; how many records it held.
    fn drain_passive(&mut self) -> u64 {
        let mut n = 0;
        if let Some(r) = self.passive.as_mut() {
            while r.next().is_some() {
                n += 1;
            }
        }
        n
    }

    /// Runs `p` on `packet` of a passively read flow `repeat` times, in chunks the passive
    /// ring holds (drained between them, as the probe does), so every run reserves and
    /// fills a record; the mean time per run. `None` when the object has no passive ring.
    pub fn time_passive(
        &mut self,
        p: Program,
        packet: &[u8],
        repeat: u32,
    ) -> Result<Option<Duration>, KernelRunError> {
        if self.passive.is_none() {
            return Ok(None);
        }
        let (mut total, mut runs) = (Duration::ZERO, 0u32);
        while runs < repeat.max(1) {
            let n = PASSIVE_CHUNK.min(repeat.max(1) - runs);
            total += self.time(p, packet, n)? * n;
            let kept = self.drain_passive();
            if kept < u64::from(n) {
                return Err(KernelRunError::Run(format!(
                    "the passive ring kept {kept} of {n} records: the figure would time a full ring"
                )));
            }
            runs += n;
        }
        Ok(Some(total / runs))
    }

    /// Times the packet that creates its key: `runs` single runs, each after
    /// [`KernelRun::forget`]. The kernel's time of each.
    pub fn time_first(
        &mut self,
        p: Program,
        packet: &[u8],
        runs: usize,
    ) -> Result<Vec<Duration>, KernelRunError> {
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            self.forget()?;
            out.push(self.time(p, packet, 1)?);
        }
        Ok(out)
    }

    /// Runs `p` once on `packet`, keeping what the maps hold.
    pub fn run(&mut self, p: Program, packet: &[u8]) -> Result<(), KernelRunError> {
        self.time(p, packet, 1).map(|_| ())
    }

    /// Every key the maps hold, with its counters.
    pub fn flows(&mut self) -> Result<Vec<(crate::flow::PacketKey, Counters)>, KernelRunError> {
        let mut out = Vec::new();
        self.flows.read_all(|k, c, _| out.push((k, c)))?;
        out.sort_by_key(|(k, _)| *k);
        Ok(out)
    }

    fn unattributed(&self, reason: u32) -> Result<Counters, KernelRunError> {
        let v = self
            .unattributed
            .get(&reason, 0)
            .map_err(map_err(common::UNATTRIBUTED_MAP))?;
        let mut c = Counters::default();
        for x in v.iter() {
            c += Counters {
                packets: x.packets,
                ip_bytes: x.ip_bytes,
                link_bytes: x.link_bytes,
            };
        }
        Ok(c)
    }

    /// Runs the program for `link` once on `packet`, from an empty map, and reads back
    /// what the kernel counted (the user-space answer is [`super::accumulate::outcome`]).
    pub fn count(&mut self, link: LinkKind, packet: &[u8]) -> Result<Outcome, KernelRunError> {
        self.forget()?;
        let not_ip = self.unattributed(common::unattributed::NOT_IP)?;
        let malformed = self.unattributed(common::unattributed::MALFORMED)?;
        self.time(Program::for_link(link), packet, 1)?;
        let mut payload_len = 0;
        while let Some(item) = self.events.next() {
            if item.len() >= std::mem::size_of::<common::FlowEvent>() {
                // SAFETY: whole FlowEvent records (checked length), plain old data.
                let ev: common::FlowEvent =
                    unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                payload_len = payload_len.max(ev.payload_len);
            }
        }
        let mut found = None;
        self.flows.read_all(|key, counters, tcp_flags| {
            found = Some(Outcome::Flow {
                proto: key.proto,
                src: key.src,
                dst: key.dst,
                counters,
                tcp_flags,
                payload_len,
            });
        })?;
        if let Some(f) = found {
            return Ok(f);
        }
        let not_ip = self
            .unattributed(common::unattributed::NOT_IP)?
            .saturating_sub(&not_ip);
        if not_ip.packets > 0 {
            return Ok(Outcome::Unkeyed(Unkeyed::NotIp(not_ip)));
        }
        let malformed = self
            .unattributed(common::unattributed::MALFORMED)?
            .saturating_sub(&malformed);
        if malformed.packets > 0 {
            return Ok(Outcome::Unkeyed(Unkeyed::Malformed(malformed)));
        }
        Err(KernelRunError::Run(
            "the program counted the packet nowhere".into(),
        ))
    }
}

/// The server port the benchmark marks for passive reading (Ollama's).
pub const BENCH_PASSIVE_PORT: u16 = 11434;
/// Runs of a passively read packet between two drains of the passive ring (its smallest
/// record, 336 bytes, 20,000 times: 6.7 MB of the 16 MiB ring).
const PASSIVE_CHUNK: u32 = 20_000;

/// A packet of the micro-benchmark's fixed set.
pub struct BenchPacket {
    pub name: &'static str,
    pub program: Program,
    pub bytes: Vec<u8>,
    /// Of a flow read passively (its port is marked): timed with the passive ring drained
    /// as it fills.
    pub passive: bool,
    /// Timed as the packet that creates its key (the map emptied before each run), not as
    /// one more packet of a known key.
    pub first: bool,
}

/// The fixed set: the steady-state packets of the three approaches (TCP data and its ACK
/// over IPv4 and IPv6, a QUIC short-header packet), a VLAN-tagged frame, a packet on a
/// device without a link header, and a first packet that creates its key.
pub fn bench_packets() -> Vec<BenchPacket> {
    use crate::packet::build::{ethernet, tcp4, tcp6, udp4};
    let (a, b) = ([127, 0, 0, 1], [127, 0, 0, 1]);
    let lo6 = std::net::Ipv6Addr::LOCALHOST.octets();
    // A TLS record of one token (5-byte header, ~40 bytes of ciphertext and tag).
    let record = [&[0x17u8, 3, 3, 0, 40][..], &[0xa5; 40]].concat();
    // A QUIC short-header packet: flags, an 8-byte connection ID, a 1-byte packet number,
    // a STREAM frame of one token and the AEAD tag.
    let quic = [&[0x40u8][..], &[0x11; 8], &[0x07], &[0x5a; 60]].concat();
    let psh_ack = 0x18;
    let ack = 0x10;
    let mut vlan = vec![0x00, 0x05, 0x08, 0x00];
    vlan.extend(tcp4(a, 8443, b, 50000, psh_ack, &record));
    let p = |name, program, bytes, first| BenchPacket {
        name,
        program,
        bytes,
        first,
        passive: false,
    };
    let passive = |name, bytes| BenchPacket {
        name,
        program: Program::L2,
        bytes,
        first: false,
        passive: true,
    };
    let port = BENCH_PASSIVE_PORT;
    // An Ollama NDJSON line of one token in its chunk framing, as the model writes it.
    let line = br#"{"model":"gemma3:12b","created_at":"2025-01-01T12:00:00.123456789Z","message":{"role":"assistant","content":" sky"},"done":false}"#;
    let chunk = [
        format!("{:x}\r\n", line.len() + 1).as_bytes(),
        &line[..],
        b"\n\r\n",
    ]
    .concat();
    vec![
        p(
            "ipv4 tcp data",
            Program::L2,
            ethernet(0x0800, &tcp4(a, 8443, b, 50000, psh_ack, &record)),
            false,
        ),
        p(
            "ipv4 tcp ack",
            Program::L2,
            ethernet(0x0800, &tcp4(b, 50000, a, 8443, ack, &[])),
            false,
        ),
        p(
            "ipv6 tcp data",
            Program::L2,
            ethernet(0x86dd, &tcp6(lo6, 8443, lo6, 50000, psh_ack, &record)),
            false,
        ),
        p(
            "ipv4 quic short header",
            Program::L2,
            ethernet(0x0800, &udp4(a, 4433, b, 50000, &quic)),
            false,
        ),
        p(
            "vlan ipv4 tcp data",
            Program::L2,
            ethernet(0x8100, &vlan),
            false,
        ),
        p(
            "l3 ipv4 quic short header",
            Program::L3,
            udp4(a, 4433, b, 50000, &quic),
            false,
        ),
        p(
            "first packet (creates the key)",
            Program::L2,
            ethernet(0x0800, &tcp4(a, 8443, b, 50000, psh_ack, &record)),
            true,
        ),
        passive(
            "passive: ipv4 tcp data (one token)",
            ethernet(0x0800, &tcp4(a, port, b, 50000, psh_ack, &chunk)),
        ),
        passive(
            "passive: ipv4 tcp ack",
            ethernet(0x0800, &tcp4(b, 50000, a, port, ack, &[])),
        ),
    ]
}

/// One packet's figure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub name: &'static str,
    /// Median over the rounds of the kernel's mean time per run.
    pub ns: f64,
    /// `ns` minus the empty program's under the same harness: the probe's own work.
    pub minus_empty_ns: f64,
    pub first: bool,
    pub passive: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchReport {
    pub packets: Vec<BenchResult>,
    /// The empty program, `repeat` runs at a time (what steady-state figures subtract).
    pub empty_ns: f64,
    /// The empty program one run at a time (what the first packet's figure subtracts: a
    /// single run carries the timer's own cost).
    pub empty_single_ns: f64,
    pub repeat: u32,
    pub rounds: u32,
    /// Single runs per round for the first packet.
    pub first_runs: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

impl KernelRun {
    /// The micro-benchmark: every packet of [`bench_packets`] and the empty program,
    /// interleaved over `rounds`, each steady-state figure from `repeat` runs in the kernel
    /// and the first packet's from `first_runs` single runs per round.
    pub fn bench(
        &mut self,
        repeat: u32,
        rounds: u32,
        first_runs: usize,
    ) -> Result<BenchReport, KernelRunError> {
        let packets = bench_packets();
        let mut samples = vec![Vec::new(); packets.len()];
        let (mut empty, mut empty_single) = (Vec::new(), Vec::new());
        let frame = &packets[0].bytes;
        for _ in 0..rounds.max(1) {
            empty.push(ns(self.time(Program::Empty, frame, repeat)?));
            let singles: Vec<f64> = (0..first_runs.max(1))
                .map(|_| self.time(Program::Empty, frame, 1).map(ns))
                .collect::<Result<_, _>>()?;
            empty_single.push(median(singles));
            for (p, s) in packets.iter().zip(samples.iter_mut()) {
                if p.passive {
                    self.forget()?;
                    if let Some(d) = self.time_passive(p.program, &p.bytes, repeat)? {
                        s.push(ns(d));
                    }
                } else if p.first {
                    let runs = self.time_first(p.program, &p.bytes, first_runs.max(1))?;
                    s.push(median(runs.into_iter().map(ns).collect()));
                } else {
                    self.forget()?;
                    s.push(ns(self.time(p.program, &p.bytes, repeat)?));
                }
            }
        }
        let empty_ns = median(empty);
        let empty_single_ns = median(empty_single);
        Ok(BenchReport {
            packets: packets
                .iter()
                .zip(samples)
                // An object without passive reading has no figure for its packets.
                .filter(|(_, s)| !s.is_empty())
                .map(|(p, s)| {
                    let ns = median(s);
                    let base = if p.first { empty_single_ns } else { empty_ns };
                    BenchResult {
                        name: p.name,
                        ns,
                        minus_empty_ns: ns - base,
                        first: p.first,
                        passive: p.passive,
                    }
                })
                .collect(),
            empty_ns,
            empty_single_ns,
            repeat,
            rounds,
            first_runs,
        })
    }
}

impl KernelRun {
    /// The kernel's and user space's answers for one whole packet when they differ
    /// (kernel first); `Ok(None)` when they agree or the kernel refused the bytes.
    pub fn differ(
        &mut self,
        link: LinkKind,
        packet: &[u8],
    ) -> Result<Option<(Outcome, Outcome)>, KernelRunError> {
        let user = super::accumulate::outcome(
            match link {
                LinkKind::L2 => crate::packet::LinkType::Ethernet,
                LinkKind::L3 => crate::packet::LinkType::Raw,
            },
            packet,
        );
        match self.count(link, packet) {
            Ok(kernel) if kernel == user => Ok(None),
            Ok(kernel) => Ok(Some((kernel, user))),
            Err(KernelRunError::Refused(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
