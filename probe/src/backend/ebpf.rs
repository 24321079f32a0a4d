//! The eBPF backend: loads the embedded TC classifier, attaches it to each interface (egress
//! only on loopback, where every packet passes egress exactly once; ingress and egress
//! elsewhere), and reads the kernel's per-CPU counters and ring-buffer events.
//!
//! Attachment uses TCX links on kernels >= 6.6 (aya's default): they belong to this
//! process, so they disappear with it even after `kill -9` and nothing stale can remain.
//! Older kernels use a clsact qdisc and netlink filters; there, stale filters of ours are
//! removed at start, and a qdisc we added is deleted on exit.
//!
//! With `--pin` (TCX only) the links and maps are pinned instead and outlive the process;
//! the next probe adopts them (`pin`).

use super::capture::Carry;
use super::capture::{Backend, BackendError, wall_clock_ns};
use super::ebpf_object::{
    ALL_PROGRAMS, EbpfError, Layout, LinkKind, RingSizes, chain, embedded_object_hash, hook_name,
    is_permission, load_object_pinned, load_object_sized, load_program, program_name, random_keys,
};
use super::flow_maps::FlowMaps;
use super::pin::PinDir;
use crate::flow::{Counters, PacketKey};
use crate::health::Health;
use crate::passive::{Passive, PassivePacket};
use crate::spans::{ConnRef, Span};
use crate::table::{EventKind, FlowTable};
use aya::maps::{Array, MapData, PerCpuArray, RingBuf};
use aya::programs::LinkOrder;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{
    self, SchedClassifier, SchedClassifierLink, TcAttachOptions, TcAttachType,
};
use std::collections::BTreeSet;
use std::time::Instant;
use tokenwire_probe_common as common;

/// How an interface is handled.
#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub link: LinkKind,
    pub loopback: bool,
}

impl Iface {
    /// Looks the interface up in /sys/class/net.
    pub fn lookup(name: &str) -> Result<Self, EbpfError> {
        let base = std::path::Path::new("/sys/class/net").join(name);
        let read = |f: &str| std::fs::read_to_string(base.join(f)).map(|s| s.trim().to_owned());
        let (Ok(kind), Ok(index)) = (read("type"), read("ifindex")) else {
            return Err(EbpfError::NoInterface(name.to_owned()));
        };
        let kind: u32 = kind.parse().unwrap_or(0);
        Ok(Self {
            name: name.to_owned(),
            index: index.parse().unwrap_or(0),
            // ARPHRD_ETHER 1, ARPHRD_LOOPBACK 772 carry a 14-byte header; TUN (ARPHRD_NONE
            // 65534) and other L3 devices carry none.
            link: if matches!(kind, 1 | 772) {
                LinkKind::L2
            } else {
                LinkKind::L3
            },
            loopback: kind == 772,
        })
    }

    fn hooks(&self) -> &'static [TcAttachType] {
        if self.loopback {
            &[TcAttachType::Egress]
        } else {
            &[TcAttachType::Ingress, TcAttachType::Egress]
        }
    }
}

/// What the eBPF backend starts with beside its interfaces and flow count.
#[derive(Debug, Clone, Default)]
pub struct EbpfOptions {
    /// TCP server ports whose every packet is sent to user space (passive reading).
    pub http_ports: BTreeSet<u16>,
    pub rings: RingSizes,
    /// Pin the maps and links in this bpffs directory, adopting what a previous probe left
    /// there (`--pin`).
    pub pin: Option<std::path::PathBuf>,
}

/// A probe's hold on pinned maps and links.
struct Pinned {
    dir: PinDir,
    generation: u64,
    /// Whether the maps were there already (left by a previous probe).
    adopted: bool,
    /// The links (pinned: closing them leaves the classifier attached).
    _links: Vec<FdLink>,
}

/// Marks `ports` (1) in the kernel's port array where `marked` are marked now; the others
/// of `marked` go back to 0. `marked` becomes `ports`.
fn mark_ports(
    map: &mut Array<MapData, u8>,
    marked: &mut BTreeSet<u16>,
    ports: &BTreeSet<u16>,
) -> Result<(), EbpfError> {
    let changes = ports
        .difference(marked)
        .map(|p| (*p, 1))
        .chain(marked.difference(ports).map(|p| (*p, 0)))
        .collect::<Vec<(u16, u8)>>();
    for (port, v) in changes {
        map.set(u32::from(port), v, 0).map_err(|e| EbpfError::Map {
            map: common::HTTP_PORTS_MAP,
            reason: chain(&e),
        })?;
    }
    *marked = ports.clone();
    Ok(())
}

/// Unix time minus CLOCK_MONOTONIC, now (the kernel stamps packets with the latter).
fn mono_to_unix_ns() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono = i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec);
    i128::from(wall_clock_ns()) - mono
}

/// The layout of what is pinned in `dir`, if anything, after checking that this probe can
/// adopt it: same map format, same interfaces and hooks. Flags the pinned maps override
/// are said once.
fn adoptable(
    dir: &PinDir,
    ifaces: &[Iface],
    max_flows: u32,
    rings: RingSizes,
) -> Result<Option<common::PinMeta>, EbpfError> {
    let Some(meta) = dir.meta()? else {
        if !dir.links().is_empty() {
            return Err(dir.error(
                "links are pinned there without their maps: run `tokenwire-probe detach --pin DIR`",
            ));
        }
        return Ok(None);
    };
    if meta.format != common::PIN_FORMAT {
        return Err(dir.error(format!(
            "the pinned maps are of format {}, this probe reads format {} (another version): \
             run `tokenwire-probe detach --pin {}` to remove them (their counts go), or pin elsewhere",
            meta.format,
            common::PIN_FORMAT,
            dir.path().display()
        )));
    }
    let want: BTreeSet<String> = ifaces
        .iter()
        .flat_map(|i| i.hooks().iter().map(|h| super::pin::link_name(&i.name, *h)))
        .collect();
    let have = dir.links();
    if have != want {
        let names = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        return Err(dir.error(format!(
            "pinned for other interfaces ({}) than asked ({}): pin elsewhere, or detach first",
            names(&have),
            names(&want)
        )));
    }
    let differ = |flag: &str, asked: u64, pinned: u64| {
        if asked != pinned {
            tracing::warn!(
                "{flag} {asked} ignored: the pinned maps were made with {pinned} (detach to change it)"
            );
        }
    };
    differ("--max-flows", u64::from(max_flows), meta.max_flows);
    differ(
        "event ring bytes",
        u64::from(rings.events),
        meta.event_ring_bytes,
    );
    differ(
        "passive ring bytes",
        u64::from(rings.passive),
        meta.passive_ring_bytes,
    );
    Ok(Some(meta))
}

/// Attaches `iface`'s classifier for `hook`. Pinned: the link pinned there (a previous
/// probe's) gets this probe's program in one atomic swap, else a new link is made and
/// pinned; either way it is returned to be held.
fn attach(
    ebpf: &mut aya::Ebpf,
    iface: &Iface,
    hook: TcAttachType,
    tcx: bool,
    pin: Option<&PinDir>,
) -> Result<Option<FdLink>, EbpfError> {
    let name = program_name(iface.link, hook);
    if !tcx {
        // Filters of ours left by a crashed run (netlink filters outlive processes).
        let _ = tc::qdisc_detach_program(&iface.name, hook, name);
    }
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| EbpfError::Load(format!("program {name} missing from the object")))?;
    let attach_error = |e: aya::programs::ProgramError| {
        if is_permission(&e) {
            EbpfError::Permission(chain(&e))
        } else {
            EbpfError::Attach {
                iface: iface.name.clone(),
                hook: hook_name(hook),
                reason: chain(&e),
            }
        }
    };
    let Some(dir) = pin else {
        prog.attach(&iface.name, hook).map_err(attach_error)?;
        tracing::info!(iface = %iface.name, hook = hook_name(hook), program = name, tcx, "attached");
        return Ok(None);
    };
    let path = dir.link_path(&iface.name, hook);
    let adopted = path.exists();
    let id = if adopted {
        let old = PinnedLink::from_pin(&path).map_err(|e| dir.error(chain(&e)))?;
        let link = SchedClassifierLink::try_from(FdLink::from(old))
            .map_err(|e| dir.error(format!("{}: {}", path.display(), chain(&e))))?;
        prog.attach_to_link(link).map_err(attach_error)?
    } else {
        prog.attach_with_options(
            &iface.name,
            hook,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(attach_error)?
    };
    let link: FdLink = prog
        .take_link(id)
        .map_err(attach_error)?
        .try_into()
        .map_err(|e: aya::programs::links::LinkError| dir.error(chain(&e)))?;
    let link = if adopted {
        link
    } else {
        FdLink::from(link.pin(&path).map_err(|e| dir.error(chain(&e)))?)
    };
    tracing::info!(iface = %iface.name, hook = hook_name(hook), program = name, adopted, "attached (pinned)");
    Ok(Some(link))
}

/// Writes the pin's record (new maps), or updates the object's hash (adopted maps whose
/// program this probe just replaced).
fn record_pin(
    ebpf: &mut aya::Ebpf,
    dir: PinDir,
    meta: Option<common::PinMeta>,
    layout: Layout,
    max_flows: u32,
    rings: RingSizes,
    links: Vec<FdLink>,
) -> Result<Pinned, EbpfError> {
    let map = ebpf.take_map(common::PIN_META_MAP).ok_or(EbpfError::Map {
        map: common::PIN_META_MAP,
        reason: "missing from the object".into(),
    })?;
    let mut map: Array<MapData, common::PinMeta> =
        Array::try_from(map).map_err(|e| EbpfError::Map {
            map: common::PIN_META_MAP,
            reason: chain(&e),
        })?;
    let hash = embedded_object_hash();
    let adopted = meta.is_some();
    let record = match meta {
        Some(m) => {
            if m.object_hash != hash {
                tracing::warn!(
                    "the pinned classifier was another build's; this probe's replaced it (the maps and their counts stay)"
                );
            }
            common::PinMeta {
                object_hash: hash,
                ..m
            }
        }
        None => common::PinMeta {
            format: common::PIN_FORMAT,
            generation: {
                use std::hash::{BuildHasher, Hasher};
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
            },
            created_unix_s: wall_clock_ns() / 1_000_000_000,
            slot_shift: u64::from(layout.slot_shift),
            max_flows: u64::from(max_flows),
            event_ring_bytes: u64::from(super::ebpf_object::ring_size(rings.events)),
            passive_ring_bytes: u64::from(super::ebpf_object::ring_size(rings.passive)),
            fingerprint_keys: layout.keys,
            object_hash: hash,
        },
    };
    map.set(0, record, 0).map_err(|e| EbpfError::Map {
        map: common::PIN_META_MAP,
        reason: chain(&e),
    })?;
    tracing::info!(dir = %dir.path().display(), generation = format!("{:016x}", record.generation), adopted, "pinned");
    Ok(Pinned {
        dir,
        generation: record.generation,
        adopted,
        _links: links,
    })
}

pub struct EbpfBackend {
    // Field order matters: maps and links go before the object is dropped.
    flows: FlowMaps,
    events: RingBuf<MapData>,
    passive: RingBuf<MapData>,
    http_ports: Array<MapData, u8>,
    /// The ports marked in `http_ports`.
    marked: BTreeSet<u16>,
    /// Unix time minus CLOCK_MONOTONIC (the kernel's packet times), nanoseconds.
    mono_to_unix_ns: i128,
    /// Passive ring drops already reported to passive reading.
    passive_drops_seen: u64,
    unattributed: PerCpuArray<MapData, common::Unattributed>,
    failures: PerCpuArray<MapData, u64>,
    ifaces: Vec<Iface>,
    /// Interfaces where this process added the clsact qdisc (netlink mode only).
    added_qdisc: Vec<String>,
    /// Keys in the kernel map at the last full read.
    tracked: u64,
    /// The pinned maps and links, with `--pin`.
    pinned: Option<Pinned>,
    /// Keeps the kernel's BPF run-time statistics on while it lives (`--bpf-stats`).
    _stats: Option<std::os::fd::OwnedFd>,
    _ebpf: aya::Ebpf,
}

impl EbpfBackend {
    /// Loads the object with room for `max_flows` keys and attaches it to `ifaces`; with
    /// `bpf_stats`, turns on the kernel's BPF run-time statistics while it runs.
    pub fn start(ifaces: &[String], max_flows: u32, bpf_stats: bool) -> Result<Self, EbpfError> {
        Self::start_with(ifaces, max_flows, bpf_stats, &EbpfOptions::default())
    }

    /// The same, with the ports read passively marked before the programs attach (so
    /// every connection that starts from then on is read from its first packet), and with
    /// pinning when `opts.pin` says so.
    pub fn start_with(
        ifaces: &[String],
        max_flows: u32,
        bpf_stats: bool,
        opts: &EbpfOptions,
    ) -> Result<Self, EbpfError> {
        let ifaces: Vec<Iface> = ifaces
            .iter()
            .map(|n| Iface::lookup(n))
            .collect::<Result<_, _>>()?;
        let tcx = aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0));
        let pin = match &opts.pin {
            Some(dir) if !tcx => {
                return Err(EbpfError::Pin {
                    dir: dir.display().to_string(),
                    reason: "pinning needs TCX links (Linux 6.6 or later)".into(),
                });
            }
            Some(dir) => Some(PinDir::open(dir)?),
            None => None,
        };
        let meta = match &pin {
            Some(p) => adoptable(p, &ifaces, max_flows, opts.rings)?,
            None => None,
        };
        let (mut ebpf, layout) = match (&pin, &meta) {
            (Some(p), Some(m)) => load_object_pinned(
                m.max_flows as u32,
                m.fingerprint_keys,
                RingSizes {
                    events: m.event_ring_bytes as u32,
                    passive: m.passive_ring_bytes as u32,
                },
                p.path(),
            )?,
            (Some(p), None) => load_object_pinned(max_flows, random_keys(), opts.rings, p.path())?,
            (None, _) => load_object_sized(max_flows, opts.rings)?,
        };
        let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(EbpfError::Map {
                map: name,
                reason: "missing from the object".into(),
            })
        };
        let map_err = |map: &'static str| {
            move |e: aya::maps::MapError| EbpfError::Map {
                map,
                reason: chain(&e),
            }
        };
        let mut http_ports: Array<MapData, u8> =
            Array::try_from(take(&mut ebpf, common::HTTP_PORTS_MAP)?)
                .map_err(map_err(common::HTTP_PORTS_MAP))?;
        // Adopted maps keep the ports the previous probe marked: start from those.
        let mut marked = match meta {
            Some(_) => http_ports
                .iter()
                .enumerate()
                .filter(|(_, v)| matches!(v, Ok(1)))
                .filter_map(|(port, _)| u16::try_from(port).ok())
                .collect(),
            None => BTreeSet::new(),
        };
        mark_ports(&mut http_ports, &mut marked, &opts.http_ports)?;
        let mut added_qdisc = Vec::new();
        for name in ALL_PROGRAMS {
            load_program(&mut ebpf, name)?;
        }
        let mut links = Vec::new();
        for iface in &ifaces {
            if !tcx {
                match tc::qdisc_add_clsact(&iface.name) {
                    Ok(()) => added_qdisc.push(iface.name.clone()),
                    Err(e) if e.to_string().contains("exists") => {}
                    Err(e) => {
                        return Err(EbpfError::Attach {
                            iface: iface.name.clone(),
                            hook: "clsact",
                            reason: chain(&e),
                        });
                    }
                }
            }
            for &hook in iface.hooks() {
                if let Some(link) = attach(&mut ebpf, iface, hook, tcx, pin.as_ref())? {
                    links.push(link);
                }
            }
        }
        let pinned = match pin {
            Some(dir) => Some(record_pin(
                &mut ebpf, dir, meta, layout, max_flows, opts.rings, links,
            )?),
            None => None,
        };
        let flows = FlowMaps::take(&mut ebpf, layout)?;
        let events = RingBuf::try_from(take(&mut ebpf, common::EVENTS_MAP)?)
            .map_err(map_err(common::EVENTS_MAP))?;
        let passive_ring = RingBuf::try_from(take(&mut ebpf, common::PASSIVE_MAP)?)
            .map_err(map_err(common::PASSIVE_MAP))?;
        let unattributed = PerCpuArray::try_from(take(&mut ebpf, common::UNATTRIBUTED_MAP)?)
            .map_err(map_err(common::UNATTRIBUTED_MAP))?;
        let failures = PerCpuArray::try_from(take(&mut ebpf, common::FAILURES_MAP)?)
            .map_err(map_err(common::FAILURES_MAP))?;
        let stats = if bpf_stats {
            Some(Self::enable_stats()?)
        } else {
            None
        };
        let mut backend = Self {
            flows,
            events,
            passive: passive_ring,
            http_ports,
            marked,
            mono_to_unix_ns: mono_to_unix_ns(),
            passive_drops_seen: 0,
            unattributed,
            failures,
            ifaces,
            added_qdisc,
            tracked: 0,
            pinned,
            _stats: stats,
            _ebpf: ebpf,
        };
        // Passive drops of the previous probe's time were its to report.
        backend.passive_drops_seen = backend.failure(common::failure::PASSIVE_RINGBUF_FULL);
        Ok(backend)
    }

    /// Turns on the kernel's BPF run-time statistics for as long as the returned handle
    /// lives (what `sysctl kernel.bpf_stats_enabled=1` does, scoped to this process).
    pub fn enable_stats() -> Result<std::os::fd::OwnedFd, EbpfError> {
        aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .map_err(|e| EbpfError::Load(format!("enabling BPF statistics: {}", chain(&e))))
    }

    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// Hands pending events to the table (classification, client/server, close).
    pub fn drain_events(&mut self, table: &mut FlowTable) {
        while let Some(item) = self.events.next() {
            if item.len() < std::mem::size_of::<common::FlowEvent>() {
                continue;
            }
            // SAFETY: the kernel writes whole FlowEvent records (checked length); FlowEvent
            // is plain old data, and read_unaligned copes with any alignment.
            let ev: common::FlowEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let Some(key) = PacketKey::from_raw(&ev.key) else {
                continue;
            };
            let kind = match ev.kind {
                common::EVENT_PAYLOAD => EventKind::Payload,
                common::EVENT_CLOSE => EventKind::Close,
                _ => EventKind::Open,
            };
            let n = (ev.captured as usize).min(ev.data.len());
            table.event(key, kind, ev.tcp_flags, &ev.data[..n]);
        }
    }

    /// Hands the passively read packets to `sink`, in ring order, after telling it of
    /// drops since the last hand-over.
    pub fn drain_passive_into(&mut self, sink: &mut Passive) {
        let drops = self.failure(common::failure::PASSIVE_RINGBUF_FULL);
        if drops > self.passive_drops_seen {
            self.passive_drops_seen = drops;
            sink.capture_lost();
        }
        let head_len = std::mem::size_of::<common::PassiveHeader>();
        while let Some(item) = self.passive.next() {
            if item.len() < head_len {
                continue;
            }
            // SAFETY: the kernel writes a PassiveHeader at the head of every record
            // (checked length); plain old data, read unaligned.
            let h: common::PassiveHeader =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let Some(key) = PacketKey::from_raw(&h.key) else {
                continue;
            };
            let data = &item[head_len..];
            let n = (h.captured as usize).min(data.len());
            let time_ns = (i128::from(h.time_ns) + self.mono_to_unix_ns).max(0) as u64;
            sink.packet(&PassivePacket {
                time_ns,
                src: key.src,
                dst: key.dst,
                ifindex: key.ifindex,
                counters: Counters {
                    packets: 1,
                    ip_bytes: u64::from(h.ip_bytes),
                    link_bytes: u64::from(h.link_bytes),
                },
                tcp_flags: h.tcp_flags,
                seq: h.seq,
                payload_len: h.payload_len,
                payload: &data[..n],
            });
        }
    }

    /// A kernel failure counter, summed over CPUs.
    fn failure(&self, i: u32) -> u64 {
        self.failures
            .get(&i, 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Whether the flow keys are read with batch syscalls (else one by one: older kernels).
    pub fn reads_keys_in_batches(&self) -> bool {
        self.flows.reads_in_batches()
    }

    /// Reads every key's counters (summed over CPUs) into the table.
    pub fn read_counters(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64, EbpfError> {
        self.flows
            .read_all(|key, total, flags| table.set_counters(key, total, flags, now))
    }
}

impl Backend for EbpfBackend {
    fn name(&self) -> &'static str {
        "ebpf"
    }

    fn interfaces(&self) -> Vec<(u32, String)> {
        self.ifaces
            .iter()
            .map(|i| (i.index, i.name.clone()))
            .collect()
    }

    fn drain(&mut self, table: &mut FlowTable) {
        self.drain_events(table);
    }

    /// Events first (they classify), then counters.
    fn poll(&mut self, table: &mut FlowTable, now: Instant) -> Result<u64, BackendError> {
        self.drain_events(table);
        let n = self
            .read_counters(table, now)
            .map_err(|e| BackendError(e.to_string()))?;
        self.drain_events(table);
        self.tracked = n;
        Ok(n)
    }

    fn cut_time_ns(&self, _span: &Span) -> u64 {
        wall_clock_ns()
    }

    /// Both directions of the connection on every captured interface and hook: what the
    /// classifier keys its packets by. A wildcard server address gives none (the table's
    /// keys stand).
    fn keys_for(&self, conn: &ConnRef) -> Vec<PacketKey> {
        if conn.server.ip().is_unspecified() {
            return Vec::new();
        }
        let proto = conn.transport.proto();
        let mut out = Vec::new();
        for iface in &self.ifaces {
            for &hook in iface.hooks() {
                for (src, dst) in [(conn.client, conn.server), (conn.server, conn.client)] {
                    out.push(PacketKey {
                        proto,
                        src,
                        dst,
                        ifindex: iface.index,
                        ingress: hook == TcAttachType::Ingress,
                    });
                }
            }
        }
        out
    }

    /// Reads just `keys` (a connection a span names) into the table: a span's cut must see
    /// the counters as they are now, and a full read costs a syscall per key.
    fn refresh(&mut self, table: &mut FlowTable, keys: &[PacketKey], now: Instant) {
        for k in keys {
            // Evicted: the table holds its totals.
            if let Some((total, flags)) = self.flows.get(k) {
                table.set_counters(*k, total, flags, now);
            }
        }
    }

    /// Deletes idle keys from the kernel map after a final read (one delete per key);
    /// their totals stay in the table.
    fn evict(&mut self, table: &mut FlowTable, keys: &[PacketKey]) {
        for k in keys {
            if self.flows.remove(k) {
                table.evicted(k);
            }
        }
    }

    fn read_passive(&mut self, ports: &BTreeSet<u16>) -> Result<(), BackendError> {
        mark_ports(&mut self.http_ports, &mut self.marked, ports)
            .map_err(|e| BackendError(e.to_string()))
    }

    fn drain_passive(&mut self, sink: &mut Passive) {
        self.drain_passive_into(sink);
    }

    fn carry(&self) -> Option<Carry> {
        self.pinned.as_ref().map(|p| Carry {
            dir: p.dir.path().to_owned(),
            file: super::pin::state_file(p.generation),
            generation: p.generation,
            adopted: p.adopted,
        })
    }

    fn health(&self) -> Health {
        let sum_u = |i: u32| {
            let mut c = Counters::default();
            if let Ok(v) = self.unattributed.get(&i, 0) {
                for x in v.iter() {
                    c += Counters {
                        packets: x.packets,
                        ip_bytes: x.ip_bytes,
                        link_bytes: x.link_bytes,
                    };
                }
            }
            c
        };
        let sum_f = |i: u32| self.failure(i);
        let (mut bpf_run_count, mut bpf_run_time_ns) = (0, 0);
        for (_, prog) in self._ebpf.programs() {
            if let Ok(info) = prog.info() {
                bpf_run_count += info.run_count();
                bpf_run_time_ns += u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX);
            }
        }
        Health {
            not_ip: sum_u(common::unattributed::NOT_IP),
            malformed: sum_u(common::unattributed::MALFORMED),
            map_full: sum_u(common::unattributed::MAP_FULL),
            event_drops: sum_f(common::failure::RINGBUF_FULL),
            payload_copy_failures: sum_f(common::failure::PAYLOAD_COPY),
            passive_drops: sum_f(common::failure::PASSIVE_RINGBUF_FULL),
            passive_copy_failures: sum_f(common::failure::PASSIVE_COPY),
            flows_tracked: self.tracked,
            kernel_drops: 0,
            bpf_run_count,
            bpf_run_time_ns,
        }
    }
}

impl Drop for EbpfBackend {
    fn drop(&mut self) {
        // Links detach when the object drops; a qdisc we added goes too (netlink mode).
        for iface in &self.added_qdisc {
            let _ = std::process::Command::new("tc")
                .args(["qdisc", "del", "dev", iface, "clsact"])
                .status();
        }
    }
}
