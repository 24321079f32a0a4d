//! tokenwire-probe's kernel side: a TC classifier that counts every packet per flow key
//! (5-tuple as carried, interface, hook) in a per-CPU hash map — packets, IP bytes, link
//! bytes — and sends user space an event only for rare things: a key's first packet on a
//! CPU, its first payload (with up to 512 bytes for classification), its FIN/RST.
//! Packets it cannot key (not IP, malformed, map full) are counted by reason, never lost.
//! It always returns TC_ACT_UNSPEC (TCX_NEXT): it observes, it never changes a verdict, and
//! the programs after it (another probe, a CNI's) still run. TCX stops at the first program
//! that returns anything else, TC_ACT_PIPE included; clsact's direct-action filters treat
//! UNSPEC as "next filter" too.
#![no_std]
#![no_main]

use aya_ebpf::bindings::TC_ACT_UNSPEC;
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::{PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::TcContext;
use tokenwire_probe_common::{
    EVENT_CLOSE, EVENT_OPEN, EVENT_PAYLOAD, FAMILY_V4, FAMILY_V6, FlowCounters, FlowEvent, FlowKey,
    PAYLOAD_CAPTURE, SENT_CLOSE, SENT_PAYLOAD, TCP_FIN, TCP_RST, Unattributed, failure, unattributed,
};

/// Default size; the loader sets `--max-flows`.
#[map(name = "FLOWS")]
static FLOWS: PerCpuHashMap<FlowKey, FlowCounters> = PerCpuHashMap::with_max_entries(65_536, 0);

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map(name = "UNATTRIBUTED")]
static UNATTRIBUTED: PerCpuArray<Unattributed> = PerCpuArray::with_max_entries(unattributed::LEN, 0);

#[map(name = "FAILURES")]
static FAILURES: PerCpuArray<u64> = PerCpuArray::with_max_entries(failure::LEN, 0);

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

// One entry point per (link header, hook): the loader attaches the ones that fit.

/// Egress of devices with an Ethernet header (Ethernet, veth, Linux loopback).
#[classifier]
pub fn tokenwire_l2_egress(ctx: TcContext) -> i32 {
    count(&ctx, true, 0);
    TC_ACT_UNSPEC
}

/// Ingress of devices with an Ethernet header.
#[classifier]
pub fn tokenwire_l2_ingress(ctx: TcContext) -> i32 {
    count(&ctx, true, 1);
    TC_ACT_UNSPEC
}

/// Egress of devices without a link header (TUN, WireGuard): packets start at the IP header.
#[classifier]
pub fn tokenwire_l3_egress(ctx: TcContext) -> i32 {
    count(&ctx, false, 0);
    TC_ACT_UNSPEC
}

/// Ingress of devices without a link header.
#[classifier]
pub fn tokenwire_l3_ingress(ctx: TcContext) -> i32 {
    count(&ctx, false, 1);
    TC_ACT_UNSPEC
}

/// What parsing found.
struct Parsed {
    key: FlowKey,
    /// Offset of the transport payload.
    payload_off: usize,
    tcp_flags: u8,
}

/// Reads a `T` at `off`: straight from the packet's linear data when it is there (no
/// helper call), else with bpf_skb_load_bytes (non-linear skbs).
#[inline(always)]
fn read<T: Copy>(ctx: &TcContext, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    // One-byte reads go through the helper: LLVM turns `p + 1 <= end` into `p < end`,
    // which the verifier does not accept as a bounds check.
    if core::mem::size_of::<T>() >= 2 && start + off + core::mem::size_of::<T>() <= end {
        // SAFETY: bounds checked against data_end just above (the verifier checks too).
        Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
    } else {
        ctx.load::<T>(off).ok()
    }
}

#[inline(always)]
fn be16(ctx: &TcContext, off: usize) -> Option<u16> {
    read::<[u8; 2]>(ctx, off).map(u16::from_be_bytes)
}

#[inline(always)]
fn byte(ctx: &TcContext, off: usize) -> Option<u8> {
    read::<u8>(ctx, off)
}

#[inline(always)]
fn count(ctx: &TcContext, l2: bool, ingress: u8) {
    let len = ctx.len() as u64;
    // Link header: Ethernet with up to two VLAN tags, or none.
    let (ip_off, ethertype) = if l2 {
        let Some(mut et) = be16(ctx, 12) else {
            return unattributed(unattributed::MALFORMED, len, len);
        };
        let mut off = 14usize;
        if et == ETH_P_8021Q || et == ETH_P_8021AD {
            let Some(inner) = be16(ctx, off + 2) else {
                return unattributed(unattributed::MALFORMED, len, len);
            };
            et = inner;
            off += 4;
            if et == ETH_P_8021Q {
                let Some(inner) = be16(ctx, off + 2) else {
                    return unattributed(unattributed::MALFORMED, len, len);
                };
                et = inner;
                off += 4;
            }
        }
        (off, et)
    } else {
        match byte(ctx, 0).map(|b| b >> 4) {
            Some(4) => (0, ETH_P_IP),
            Some(6) => (0, ETH_P_IPV6),
            _ => (0, 0),
        }
    };
    let ip_bytes = len.saturating_sub(ip_off as u64);
    let parsed = match ethertype {
        ETH_P_IP => parse_v4(ctx, ip_off),
        ETH_P_IPV6 => parse_v6(ctx, ip_off),
        _ => return unattributed(unattributed::NOT_IP, 0, len),
    };
    let Some(mut p) = parsed else {
        return unattributed(unattributed::MALFORMED, ip_bytes, len);
    };
    p.key.ingress = ingress;
    p.key.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let payload_len = (len as usize).saturating_sub(p.payload_off) as u32;

    match FLOWS.get_ptr_mut(&p.key) {
        Some(c) => {
            let c = unsafe { &mut *c };
            c.packets += 1;
            c.ip_bytes += ip_bytes;
            c.link_bytes += len;
            c.tcp_flags |= p.tcp_flags;
            if payload_len > 0 && c.sent & SENT_PAYLOAD == 0 {
                c.sent |= SENT_PAYLOAD;
                event(ctx, &p, EVENT_PAYLOAD, payload_len);
            }
            if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && c.sent & SENT_CLOSE == 0 {
                c.sent |= SENT_CLOSE;
                event(ctx, &p, EVENT_CLOSE, payload_len);
            }
        }
        None => {
            let mut sent = 0;
            if payload_len > 0 {
                sent |= SENT_PAYLOAD;
            }
            if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                sent |= SENT_CLOSE;
            }
            let c = FlowCounters {
                packets: 1,
                ip_bytes,
                link_bytes: len,
                tcp_flags: p.tcp_flags,
                sent,
                _pad: [0; 6],
            };
            if FLOWS.insert(&p.key, &c, 0).is_err() {
                return unattributed(unattributed::MAP_FULL, ip_bytes, len);
            }
            // The first packet on this CPU: one event says "open" and carries the payload.
            let kind = if payload_len > 0 { EVENT_PAYLOAD } else { EVENT_OPEN };
            event(ctx, &p, kind, payload_len);
            if sent & SENT_CLOSE != 0 {
                event(ctx, &p, EVENT_CLOSE, 0);
            }
        }
    }
}

#[inline(always)]
fn unattributed(reason: u32, ip_bytes: u64, link_bytes: u64) {
    if let Some(u) = UNATTRIBUTED.get_ptr_mut(reason) {
        let u = unsafe { &mut *u };
        u.packets += 1;
        u.ip_bytes += ip_bytes;
        u.link_bytes += link_bytes;
    }
}

#[inline(always)]
fn fail(reason: u32) {
    if let Some(f) = FAILURES.get_ptr_mut(reason) {
        unsafe { *f += 1 };
    }
}

#[inline(always)]
fn event(ctx: &TcContext, p: &Parsed, kind: u8, payload_len: u32) {
    let Some(mut entry) = EVENTS.reserve::<FlowEvent>(0) else {
        return fail(failure::RINGBUF_FULL);
    };
    let ev = entry.as_mut_ptr();
    let mut captured = 0u32;
    unsafe {
        (*ev).key = p.key;
        (*ev).kind = kind;
        (*ev).tcp_flags = p.tcp_flags;
        (*ev)._pad = [0; 2];
        (*ev).payload_len = payload_len;
        (*ev)._pad2 = 0;
        if kind == EVENT_PAYLOAD && payload_len > 0 {
            let want = if payload_len as usize > PAYLOAD_CAPTURE { PAYLOAD_CAPTURE as u32 } else { payload_len };
            // Written so the verifier can see 1 <= n <= PAYLOAD_CAPTURE.
            let n = ((want - 1) & (PAYLOAD_CAPTURE as u32 - 1)) + 1;
            let r = aya_ebpf::helpers::bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                p.payload_off as u32,
                (*ev).data.as_mut_ptr() as *mut _,
                n,
            );
            if r == 0 {
                captured = n;
            } else {
                fail(failure::PAYLOAD_COPY);
            }
        }
        (*ev).captured = captured;
    }
    entry.submit(0);
}

#[inline(always)]
fn ports(ctx: &TcContext, key: &mut FlowKey, l4: usize) -> Option<(usize, u8)> {
    match key.proto {
        IPPROTO_TCP => {
            let h: [u8; 14] = read(ctx, l4)?;
            key.src_port = u16::from_be_bytes([h[0], h[1]]);
            key.dst_port = u16::from_be_bytes([h[2], h[3]]);
            let doff = (h[12] >> 4) as usize * 4;
            if doff < 20 {
                return None;
            }
            Some((l4 + doff, h[13]))
        }
        IPPROTO_UDP => {
            let h: [u8; 4] = read(ctx, l4)?;
            key.src_port = u16::from_be_bytes([h[0], h[1]]);
            key.dst_port = u16::from_be_bytes([h[2], h[3]]);
            Some((l4 + 8, 0))
        }
        // Other protocols: keyed by addresses and protocol number, no payload.
        _ => Some((ctx.len() as usize, 0)),
    }
}

#[inline(always)]
fn parse_v4(ctx: &TcContext, off: usize) -> Option<Parsed> {
    let h: [u8; 20] = read(ctx, off)?;
    let ihl = (h[0] & 0x0f) as usize * 4;
    if h[0] >> 4 != 4 || ihl < 20 {
        return None;
    }
    let mut key = FlowKey { family: FAMILY_V4, proto: h[9], ..FlowKey::default() };
    key.src[..4].copy_from_slice(&h[12..16]);
    key.dst[..4].copy_from_slice(&h[16..20]);
    // A fragment other than the first carries no transport header.
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return Some(Parsed { key, payload_off: ctx.len() as usize, tcp_flags: 0 });
    }
    let (payload_off, tcp_flags) = ports(ctx, &mut key, off + ihl)?;
    Some(Parsed { key, payload_off, tcp_flags })
}

#[inline(always)]
fn parse_v6(ctx: &TcContext, off: usize) -> Option<Parsed> {
    let h: [u8; 40] = read(ctx, off)?;
    if h[0] >> 4 != 6 {
        return None;
    }
    let mut key = FlowKey { family: FAMILY_V6, ..FlowKey::default() };
    key.src.copy_from_slice(&h[8..24]);
    key.dst.copy_from_slice(&h[24..40]);
    let mut next = h[6];
    let mut l4 = off + 40;
    // Extension headers, a bounded number of them (a loop of them is malformed).
    let mut i = 0;
    while i < 6 {
        match next {
            0 | 43 | 60 => {
                let len = (byte(ctx, l4 + 1)? as usize + 1) * 8;
                next = byte(ctx, l4)?;
                l4 += len;
            }
            44 => {
                // Fragment header: only the first fragment carries the transport header.
                let frag = be16(ctx, l4 + 2)? >> 3;
                next = byte(ctx, l4)?;
                l4 += 8;
                if frag != 0 {
                    key.proto = next;
                    return Some(Parsed { key, payload_off: ctx.len() as usize, tcp_flags: 0 });
                }
            }
            51 => {
                let len = (byte(ctx, l4 + 1)? as usize + 2) * 4;
                next = byte(ctx, l4)?;
                l4 += len;
            }
            _ => break,
        }
        i += 1;
    }
    if matches!(next, 0 | 43 | 60 | 44 | 51) {
        return None; // more extension headers than we follow
    }
    key.proto = next;
    let (payload_off, tcp_flags) = ports(ctx, &mut key, l4)?;
    Some(Parsed { key, payload_off, tcp_flags })
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
