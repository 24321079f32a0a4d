//! Types shared by the probe's kernel side (`probe-ebpf`) and its user side (`probe`), and
//! the approach registry ([`approach`]) that the probe, the companions, the bench and xtask
//! all read.
//!
//! Everything at the top level is `#[repr(C)]`, `Copy` and free of implicit padding: the kernel writes
//! these into maps and the ring buffer and the user side reads them back byte for byte.
#![no_std]

#[cfg(feature = "spans")]
extern crate std;

pub mod approach;
#[cfg(feature = "launch")]
pub mod launch;
pub mod origin;
#[cfg(feature = "spans")]
pub mod spans;

/// Name of the per-CPU array of flow counters, one slot per key, the slot chosen by the
/// key's [`Fingerprint`] (an array slot is found in a few instructions; hashing and
/// comparing the 44-byte [`FlowKey`] in a hash map was most of the kernel path's cost).
pub const SLOTS_MAP: &str = "SLOTS";
/// Name of the hash map from a slot to the [`FlowKey`] that owns it: written on the key's
/// first packet, read by user space to name the counters and by the kernel to tell a new
/// key from a collision.
pub const FLOW_KEYS_MAP: &str = "FLOW_KEYS";
/// Name of the per-CPU hash map of counters by full [`FlowKey`], for keys whose slot
/// another key owns (collisions: counted apart, never merged).
pub const COLLIDED_MAP: &str = "COLLIDED";
/// The global the loader sets to the fingerprint's keys ([`fingerprint_keys`]).
pub const FINGERPRINT_KEYS: &str = "FINGERPRINT_KEYS";
/// The global the loader sets to `64 - log2(slots)`: a key's slot is its fingerprint hash
/// shifted right by it (the top bits, which every bit of the key reaches).
pub const SLOT_SHIFT: &str = "SLOT_SHIFT";

/// Name of the ring buffer of flow events.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of counts not attributed to a flow ([`Unattributed`]).
pub const UNATTRIBUTED_MAP: &str = "UNATTRIBUTED";
/// Name of the per-CPU array of the kernel side's own failure counters ([`Failure`]).
pub const FAILURES_MAP: &str = "FAILURES";

/// Name of the array, indexed by port, that says which TCP server ports are read
/// passively (1) — `--http-ports`.
pub const HTTP_PORTS_MAP: &str = "HTTP_PORTS";
/// Name of the ring buffer of passively read packets ([`PassiveEvent`]).
pub const PASSIVE_MAP: &str = "PASSIVE";

/// Name of the one-entry array that says how a pinned object was loaded ([`PinMeta`]):
/// written by the probe that first loads it under `--pin`, read by the probes that adopt
/// it. The classifier never reads it.
pub const PIN_META_MAP: &str = "PIN_META";

/// The layout of the maps a pinned object shares with the probes that adopt it: bumped
/// whenever a map's key, value or meaning changes. A probe refuses pinned maps of another
/// format (`tokenwire-probe detach` removes them).
pub const PIN_FORMAT: u64 = 1;

/// How a pinned object was loaded: what a probe adopting its maps must load its own
/// programs with so that they count into the same slots.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PinMeta {
    /// [`PIN_FORMAT`] of the probe that loaded it.
    pub format: u64,
    /// Random at the first load: names the pinned maps' life (and the probe's state file).
    pub generation: u64,
    /// Unix seconds of the first load.
    pub created_unix_s: u64,
    pub slot_shift: u64,
    /// `--max-flows` at the first load (the maps' sizes).
    pub max_flows: u64,
    pub event_ring_bytes: u64,
    pub passive_ring_bytes: u64,
    pub fingerprint_keys: [u64; 14],
    /// A hash of the kernel object now attached (the adopting probe replaces the program
    /// with its own when they differ; the maps stay).
    pub object_hash: u64,
}

/// Bytes of a flow's first payload copied into a [`FlowEvent`].
pub const PAYLOAD_CAPTURE: usize = 512;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// One direction of a flow as the packet carries it: source to destination.
/// IPv4 addresses sit in the first 4 bytes of the 16.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Host byte order; 0 for protocols without ports.
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, ...).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// 0 on egress, 1 on ingress.
    pub ingress: u8,
    pub _pad: u8,
    pub ifindex: u32,
}

/// Per-CPU counters of one [`FlowKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    pub packets: u64,
    /// From the IP header onward (the canonical figure: equal on Ethernet, loopback, TUN).
    pub ip_bytes: u64,
    /// As the device carries them (`skb->len`), what tcpdump's lengths add up to.
    pub link_bytes: u64,
    /// TCP flags seen on this CPU, OR-ed.
    pub tcp_flags: u8,
    /// [`SENT_PAYLOAD`] / [`SENT_CLOSE`]: events this CPU already sent for the key.
    pub sent: u8,
    pub _pad: [u8; 6],
    /// In [`SLOTS_MAP`]: the [`Fingerprint::tag`] of the key this CPU counts for in the
    /// slot; 0 while it counts for none (a slot starts zeroed). Unused in [`COLLIDED_MAP`].
    pub tag: u64,
}

/// Where [`SLOTS_MAP`] counts a [`FlowKey`]: a 64-bit hash, whose top bits pick the
/// slot, and a 64-bit tag from an independent hash, never 0, kept in the counters. Two
/// keys are counted together only if both their slot and their tag agree, about
/// 2^-(64 + slot bits) per pair under keys drawn at each load. A key whose slot another
/// key owns is caught on its first packet (against [`FLOW_KEYS_MAP`]) or by the tag, and
/// is counted under its full key in [`COLLIDED_MAP`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    pub tag: u64,
}

/// The fingerprint's keys, drawn from one random seed at each load (splitmix64): for the
/// hash and then the tag, an offset and a multiplier (odd) per word of the key. The loader
/// puts them in the kernel side's [`FINGERPRINT_KEYS`] global; user space keeps the same.
pub fn fingerprint_keys(seed: u64) -> [u64; 14] {
    let mut s = seed;
    let mut out = [0u64; 14];
    let mut i = 0;
    while i < out.len() {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out[i] = z ^ (z >> 31);
        if i % 7 != 0 {
            out[i] |= 1;
        }
        i += 1;
    }
    out
}

/// The one fingerprint function, for the kernel and user sides alike (both little-endian:
/// the kernel side is built for bpfel). Hash and tag are each multilinear in the key's
/// words with secret odd multipliers (`keys`): keys that differ in one word never agree
/// on either, and agreement cannot be aimed at without the keys. The multiplies are
/// independent of each other, so the kernel path waits for one, not twelve in a row.
#[inline(always)]
pub fn fingerprint(k: &FlowKey, keys: &[u64; 14]) -> Fingerprint {
    // SAFETY: FlowKey is 44 bytes of plain #[repr(C)] data; its first 40 are read in
    // place as five u64s (one load each in the kernel, where this is the hot path).
    let w: [u64; 5] = unsafe { core::ptr::read_unaligned((k as *const FlowKey).cast()) };
    let words = [w[0], w[1], w[2], w[3], w[4], u64::from(k.ifindex)];
    let mut h = keys[0];
    let mut t = keys[7];
    let mut i = 0;
    while i < words.len() {
        h = h.wrapping_add(words[i].wrapping_mul(keys[i + 1]));
        t = t.wrapping_add(words[i].wrapping_mul(keys[i + 8]));
        i += 1;
    }
    Fingerprint {
        hash: h,
        tag: t | 1,
    }
}

/// The slot of a fingerprint hash in a table of `1 << (64 - shift)` slots.
#[inline(always)]
pub fn slot(hash: u64, shift: u32) -> u32 {
    (hash >> (shift & 63)) as u32
}

/// `FlowCounters::sent`: the first-payload event went out.
pub const SENT_PAYLOAD: u8 = 1;
/// `FlowCounters::sent`: the key is a TCP flow of a port read passively: every packet
/// goes to the [`PASSIVE_MAP`] ring.
pub const SENT_PASSIVE: u8 = 4;
/// `FlowCounters::sent`: the close (FIN/RST) event went out.
pub const SENT_CLOSE: u8 = 2;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Why an event was sent.
pub const EVENT_OPEN: u8 = 1;
pub const EVENT_PAYLOAD: u8 = 2;
pub const EVENT_CLOSE: u8 = 3;

/// A rare thing about a flow, sent through the ring buffer: its first packet (on a CPU),
/// its first payload (with up to [`PAYLOAD_CAPTURE`] bytes, for classification), or its
/// FIN/RST. The counters stay in the map; events carry no counts.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FlowEvent {
    pub key: FlowKey,
    /// [`EVENT_OPEN`], [`EVENT_PAYLOAD`] or [`EVENT_CLOSE`].
    pub kind: u8,
    /// The packet's TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    pub _pad: [u8; 2],
    /// Payload length of the packet (beyond the transport header).
    pub payload_len: u32,
    /// How many bytes of `data` are valid.
    pub captured: u32,
    pub _pad2: u32,
    pub data: [u8; PAYLOAD_CAPTURE],
}

/// A passively read packet's description, at the head of every [`PassiveEvent`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PassiveHeader {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub time_ns: u64,
    pub key: FlowKey,
    /// TCP sequence number.
    pub seq: u32,
    pub ip_bytes: u32,
    pub link_bytes: u32,
    /// Payload bytes on the wire (from the IP header's length).
    pub payload_len: u32,
    /// How many of them follow in `data`.
    pub captured: u32,
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

/// A passively read packet with up to `N` bytes of its payload. The kernel picks the
/// smallest of [`PASSIVE_CLASSES`] that holds the payload (a record per size, so a
/// token's packet takes a few hundred bytes of the ring, not the largest copy).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PassiveEvent<const N: usize> {
    pub head: PassiveHeader,
    pub data: [u8; N],
}

/// Payload sizes a [`PassiveEvent`] is made in (each a power of two); a payload over the
/// largest is cut there, and user space sees the rest as missing.
pub const PASSIVE_CLASSES: [usize; 3] = [256, 2048, 16384];

/// Indices into the per-CPU array of packets no flow key could describe.
pub mod unattributed {
    /// Not IPv4 or IPv6 (ARP, ...).
    pub const NOT_IP: u32 = 0;
    /// Too short for its IP or transport header, or a bad header length.
    pub const MALFORMED: u32 = 1;
    /// The flow map was full: counted here instead of under its flow.
    pub const MAP_FULL: u32 = 2;
    pub const LEN: u32 = 3;
}

/// Packets and bytes not attributed to a flow, by reason ([`unattributed`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unattributed {
    pub packets: u64,
    pub ip_bytes: u64,
    pub link_bytes: u64,
}

/// Indices into the per-CPU array of the kernel side's failures.
pub mod failure {
    /// An event could not be reserved in the ring buffer (user space too slow).
    pub const RINGBUF_FULL: u32 = 0;
    /// A payload could not be copied into an event.
    pub const PAYLOAD_COPY: u32 = 1;
    /// A passively read packet could not be reserved in its ring (user space too slow).
    pub const PASSIVE_RINGBUF_FULL: u32 = 2;
    /// A passively read packet's payload could not be copied.
    pub const PASSIVE_COPY: u32 = 3;
    pub const LEN: u32 = 4;
}

#[cfg(all(feature = "user", target_os = "linux"))]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding holes or pointers; any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowCounters {}
    unsafe impl aya::Pod for super::Unattributed {}
    unsafe impl aya::Pod for super::PinMeta {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(src_port: u16, dst_port: u16, ingress: u8) -> FlowKey {
        let mut k = FlowKey {
            src_port,
            dst_port,
            proto: 6,
            family: FAMILY_V4,
            ingress,
            ifindex: 1,
            ..FlowKey::default()
        };
        k.src[..4].copy_from_slice(&[127, 0, 0, 1]);
        k.dst[..4].copy_from_slice(&[127, 0, 0, 1]);
        k
    }

    #[test]
    fn keys_drawn_from_a_seed_are_odd_multipliers_and_differ_by_seed() {
        let a = fingerprint_keys(1);
        for (i, k) in a.iter().enumerate() {
            if i % 7 != 0 {
                assert_eq!(k & 1, 1, "multiplier {i} is odd");
            }
        }
        assert_ne!(a, fingerprint_keys(2));
    }

    /// Keys one field apart (a port, the direction, the hook) never share a hash or a
    /// tag: each differs in one word, and an odd multiplier maps a non-zero difference to
    /// a non-zero one. The slot (top bits) of such keys spreads over the table.
    #[test]
    fn keys_one_field_apart_never_share_hash_or_tag() {
        let keys = fingerprint_keys(0x5eed);
        let base = fingerprint(&key(40000, 443, 0), &keys);
        let mut slots = [0u32; 1024];
        for port in 1..=u16::MAX {
            for k in [key(port, 443, 0), key(40000, port, 0)] {
                if k == key(40000, 443, 0) {
                    continue;
                }
                let f = fingerprint(&k, &keys);
                assert_ne!(f.hash, base.hash, "{k:?}");
                assert_ne!(f.tag, base.tag, "{k:?}");
                assert_ne!(f.tag, 0);
                slots[slot(f.hash, 64 - 10) as usize] += 1;
            }
        }
        let other_hook = fingerprint(&key(40000, 443, 1), &keys);
        assert_ne!(other_hook.hash, base.hash);
        assert_ne!(other_hook.tag, base.tag);
        // 131,070 keys into 1,024 slots: about 128 each; none empty or crowded.
        let (lo, hi) = (slots.iter().min().unwrap(), slots.iter().max().unwrap());
        assert!(*lo > 64 && *hi < 256, "slots {lo}..{hi}");
    }
}
