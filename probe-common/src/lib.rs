//! Types shared by the probe's kernel side (`probe-ebpf`) and its user side (`probe`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of implicit padding: the kernel writes
//! these into maps and the ring buffer and the user side reads them back byte for byte.
#![no_std]

/// Name of the per-CPU hash map of flow counters.
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the ring buffer of flow events.
pub const EVENTS_MAP: &str = "EVENTS";
/// Name of the per-CPU array of counts not attributed to a flow ([`Unattributed`]).
pub const UNATTRIBUTED_MAP: &str = "UNATTRIBUTED";
/// Name of the per-CPU array of the kernel side's own failure counters ([`Failure`]).
pub const FAILURES_MAP: &str = "FAILURES";

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
}

/// `FlowCounters::sent`: the first-payload event went out.
pub const SENT_PAYLOAD: u8 = 1;
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
    pub const LEN: u32 = 2;
}

#[cfg(all(feature = "user", target_os = "linux"))]
mod pod {
    // SAFETY: plain #[repr(C)] data without padding holes or pointers; any bit pattern is valid.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowCounters {}
    unsafe impl aya::Pod for super::Unattributed {}
}
