//! The eBPF object, apart from attaching it: the embedded kernel object, loading it with
//! its globals set (fingerprint keys, slot shift) and its maps and rings sized, loading
//! (verifying) a classifier, and the errors of all that. The attached backend (`ebpf`), the
//! flow maps' reader (`flow_maps`) and the in-process runner (`kernel_run`) build on it.

use aya::programs::tc::{SchedClassifier, TcAttachType};
use tokenwire_probe_common as common;

/// The kernel object, built by `cargo xtask build-ebpf` and embedded by build.rs.
static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokenwire-probe-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error(
        "eBPF needs privileges this process lacks ({0}): run as root or with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON, or use --backend pcap"
    )]
    Permission(String),
    #[error("no such interface {0:?} (see `ip link`)")]
    NoInterface(String),
    #[error("loading the eBPF object: {0}")]
    Load(String),
    #[error("attaching to {iface} {hook}: {reason}")]
    Attach {
        iface: String,
        hook: &'static str,
        reason: String,
    },
    #[error("reading eBPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error("--pin {dir}: {reason}")]
    Pin { dir: String, reason: String },
}

/// What an interface carries before the IP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// Ethernet framing (Ethernet, veth, Linux loopback).
    L2,
    /// Packets start at the IP header (TUN, WireGuard).
    L3,
}

pub(super) fn program_name(link: LinkKind, hook: TcAttachType) -> &'static str {
    match (link, hook) {
        (LinkKind::L2, TcAttachType::Ingress) => "tokenwire_l2_ingress",
        (LinkKind::L3, TcAttachType::Ingress) => "tokenwire_l3_ingress",
        (LinkKind::L3, _) => "tokenwire_l3_egress",
        _ => "tokenwire_l2_egress",
    }
}

/// What a load fixed: the fingerprint keys (random at each load) and the slot table's
/// shift (from its size).
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub keys: [u64; 14],
    pub slot_shift: u32,
}

/// The embedded object with room for `max_flows` keys, its programs not loaded yet.
pub(super) fn load_object(max_flows: u32) -> Result<(aya::Ebpf, Layout), EbpfError> {
    load_object_sized(max_flows, RingSizes::default())
}

pub(super) fn random_keys() -> [u64; 14] {
    use std::hash::{BuildHasher, Hasher};
    let seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    common::fingerprint_keys(seed)
}

/// The same with rings of the given sizes.
pub(super) fn load_object_sized(
    max_flows: u32,
    rings: RingSizes,
) -> Result<(aya::Ebpf, Layout), EbpfError> {
    load_object_bytes(OBJECT, max_flows, random_keys(), rings, None)
}

/// The embedded object with its maps pinned in `pin_dir` (opened where pinned already,
/// else created and pinned there), loaded with `keys` and sizes (those the pinned maps
/// were made with, when they exist).
pub(super) fn load_object_pinned(
    max_flows: u32,
    keys: [u64; 14],
    rings: RingSizes,
    pin_dir: &std::path::Path,
) -> Result<(aya::Ebpf, Layout), EbpfError> {
    load_object_bytes(OBJECT, max_flows, keys, rings, Some(pin_dir))
}

/// The embedded object's hash ([`object_hash`]).
pub(super) fn embedded_object_hash() -> u64 {
    object_hash(OBJECT)
}

/// A hash of a kernel object (FNV-1a): tells whether the pinned program is this build's.
pub(super) fn object_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The maps pinned: all but the globals' (set at load, from `PIN_META` when adopting: `pin`).
pub(super) const PINNED_MAPS: [&str; 9] = [
    common::SLOTS_MAP,
    common::FLOW_KEYS_MAP,
    common::COLLIDED_MAP,
    common::EVENTS_MAP,
    common::PASSIVE_MAP,
    common::HTTP_PORTS_MAP,
    common::UNATTRIBUTED_MAP,
    common::FAILURES_MAP,
    common::PIN_META_MAP,
];

/// The same with chosen fingerprint keys (tests force collisions with them).
pub(super) fn load_object_with(
    max_flows: u32,
    keys: [u64; 14],
) -> Result<(aya::Ebpf, Layout), EbpfError> {
    load_object_bytes(OBJECT, max_flows, keys, RingSizes::default(), None)
}

/// Another object than the embedded one (`kernel-bench --object`), with random keys.
pub(super) fn load_object_from(
    object: &[u8],
    max_flows: u32,
) -> Result<(aya::Ebpf, Layout), EbpfError> {
    load_object_bytes(object, max_flows, random_keys(), RingSizes::default(), None)
}

pub(super) fn load_object_bytes(
    object: &[u8],
    max_flows: u32,
    keys: [u64; 14],
    rings: RingSizes,
    pin_dir: Option<&std::path::Path>,
) -> Result<(aya::Ebpf, Layout), EbpfError> {
    // A slot per key, a power of two of them (at least 1,024).
    let slots = max_flows
        .max(1024)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31);
    let layout = Layout {
        keys,
        slot_shift: 64 - slots.trailing_zeros(),
    };
    let mut loader = aya::EbpfLoader::new();
    if let Some(dir) = pin_dir {
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    loader
        .map_max_entries(common::SLOTS_MAP, slots)
        .map_max_entries(common::FLOW_KEYS_MAP, slots)
        .map_max_entries(common::COLLIDED_MAP, max_flows.max(1))
        .map_max_entries(common::EVENTS_MAP, ring_size(rings.events))
        .map_max_entries(common::PASSIVE_MAP, ring_size(rings.passive))
        .override_global(common::FINGERPRINT_KEYS, &layout.keys, true)
        .override_global(common::SLOT_SHIFT, &layout.slot_shift, true)
        .load(object)
        .map(|ebpf| (ebpf, layout))
        .map_err(|e| {
            if is_permission(&e) {
                EbpfError::Permission(chain(&e))
            } else {
                EbpfError::Load(chain(&e))
            }
        })
}

/// Loads (verifies) one of the object's classifiers.
pub(super) fn load_program<'a>(
    ebpf: &'a mut aya::Ebpf,
    name: &str,
) -> Result<&'a mut SchedClassifier, EbpfError> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(name)
        .ok_or_else(|| EbpfError::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| EbpfError::Load(chain(&e)))?;
    prog.load().map_err(|e| {
        if is_permission(&e) {
            EbpfError::Permission(chain(&e))
        } else {
            EbpfError::Load(chain(&e))
        }
    })?;
    Ok(prog)
}

pub(super) const ALL_PROGRAMS: [&str; 4] = [
    "tokenwire_l2_egress",
    "tokenwire_l2_ingress",
    "tokenwire_l3_egress",
    "tokenwire_l3_ingress",
];

pub(super) fn hook_name(h: TcAttachType) -> &'static str {
    match h {
        TcAttachType::Ingress => "ingress",
        _ => "egress",
    }
}

pub(super) fn is_permission(e: &(dyn std::error::Error + 'static)) -> bool {
    // The verifier rejects programs with EACCES too; its log says so.
    if error_chain(e).contains("Verifier output") {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
        {
            return true;
        }
        let s = err.to_string();
        if s.contains("Operation not permitted") || s.contains("Permission denied") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// An error and all its sources, one after the other.
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The error chain, with a verifier log cut to its last lines (the reason is at the end).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let s = error_chain(e);
    match s.find("Verifier output:") {
        Some(i) => {
            let log: Vec<&str> = s[i..].lines().collect();
            let tail = log[log.len().saturating_sub(8)..].join("\n");
            format!("{}(verifier log, last lines)\n{tail}", &s[..i])
        }
        None => s,
    }
}

/// A ring's size: a power of two of pages.
pub(super) fn ring_size(bytes: u32) -> u32 {
    bytes
        .max(4096)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// The sizes of the object's two ring buffers.
#[derive(Debug, Clone, Copy)]
pub struct RingSizes {
    /// Rare flow events (a key's first packet and payload, its close): `--event-ring-kib`.
    pub events: u32,
    /// Passively read packets: `--passive-ring-mib`.
    pub passive: u32,
}

/// The event ring's size unless told otherwise: 1 MiB, about 1,770 events.
pub const DEFAULT_EVENT_RING_BYTES: u32 = 1 << 20;
/// The passive ring's size unless told otherwise: 16 MiB, a second of 1,000 streams'
/// packets at 29 tokens/s with room to spare (docs/passive.md).
pub const DEFAULT_PASSIVE_RING_BYTES: u32 = 16 << 20;

impl Default for RingSizes {
    fn default() -> Self {
        Self {
            events: DEFAULT_EVENT_RING_BYTES,
            passive: DEFAULT_PASSIVE_RING_BYTES,
        }
    }
}
