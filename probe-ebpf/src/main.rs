//! tokenwire-probe's kernel side: a TC classifier that counts every packet per flow key
//! (5-tuple as carried, interface, hook) in a per-CPU array, a slot per key chosen by the
//! key's fingerprint — packets, IP bytes, link bytes — and sends user space an event only
//! for rare things: a key's first packet on a CPU, its first payload (with up to 512
//! bytes for classification), its FIN/RST. docs/probe.md ("The kernel path") says why it
//! is written the way it is: typed header loads, a word-built key, the slot array.
//! Packets it cannot key (not IP, malformed, map full) are counted by reason, never lost.
//! It always returns TC_ACT_UNSPEC (TCX_NEXT): it observes, it never changes a verdict, and
//! the programs after it (another probe, a CNI's) still run. TCX stops at the first program
//! that returns anything else, TC_ACT_PIPE included; clsact's direct-action filters treat
//! UNSPEC as "next filter" too.
#![no_std]
#![no_main]

mod parse;
mod passive;

use parse::*;
use passive::read_passively;

use aya_ebpf::bindings::TC_ACT_UNSPEC;
use aya_ebpf::macros::{classifier, map};
use aya_ebpf::maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf};
use aya_ebpf::programs::TcContext;
use tokenwire_probe_common::{
    EVENT_CLOSE, EVENT_OPEN, EVENT_PAYLOAD, FAMILY_V4, FAMILY_V6, FlowCounters, FlowEvent, FlowKey,
    PAYLOAD_CAPTURE, PassiveEvent, PinMeta, PassiveHeader, SENT_CLOSE, SENT_PASSIVE, SENT_PAYLOAD, TCP_FIN,
    TCP_RST, Unattributed, failure, fingerprint, slot, unattributed,
};

/// One slot per key (a power of two of them, the loader sets how many from
/// `--max-flows`): the counters of the key that owns the slot.
#[map(name = "SLOTS")]
static SLOTS: PerCpuArray<FlowCounters> = PerCpuArray::with_max_entries(65_536, 0);

/// Which key owns each slot; as many entries as slots.
#[map(name = "FLOW_KEYS")]
static FLOW_KEYS: HashMap<u32, FlowKey> = HashMap::with_max_entries(65_536, 0);

/// Keys whose slot another key owns; the loader sizes it at `--max-flows`.
#[map(name = "COLLIDED")]
static COLLIDED: PerCpuHashMap<FlowKey, FlowCounters> = PerCpuHashMap::with_max_entries(65_536, 0);

/// The fingerprint's keys; the loader sets random ones.
#[unsafe(no_mangle)]
static FINGERPRINT_KEYS: [u64; 14] = [0; 14];

/// 64 - log2(slots); the loader sets it with the number of slots.
#[unsafe(no_mangle)]
static SLOT_SHIFT: u32 = 48;

const BPF_NOEXIST: u64 = 1;
const BPF_RB_NO_WAKEUP: u64 = 1;

#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// 1 at the TCP server ports read passively (`--http-ports`), by port; the loader fills it
/// before attaching.
#[map(name = "HTTP_PORTS")]
static HTTP_PORTS: Array<u8> = Array::with_max_entries(65_536, 0);

/// Every packet of a passively read flow, with a bounded copy of its payload; the loader
/// sizes it (`--passive-ring-mib`).
#[map(name = "PASSIVE")]
static PASSIVE: RingBuf = RingBuf::with_byte_size(16 << 20, 0);

/// How the object was loaded, for probes that adopt it pinned (`--pin`); never read here.
#[map(name = "PIN_META")]
static PIN_META: Array<PinMeta> = Array::with_max_entries(1, 0);

#[map(name = "UNATTRIBUTED")]
static UNATTRIBUTED: PerCpuArray<Unattributed> =
    PerCpuArray::with_max_entries(unattributed::LEN, 0);

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

/// Does nothing: the baseline `tokenwire-probe kernel-bench` subtracts (the cost of
/// running any classifier). Never attached.
#[classifier]
pub fn tokenwire_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

#[inline(always)]
fn count(ctx: &TcContext, l2: bool, ingress: u8) {
    let len = ctx.len() as u64;
    // Never read before bpf_skb_load_bytes fills it: zeroing it would be a byte loop.
    let mut buf = Scratch::uninit();
    let buf = &mut buf;
    // Link header: Ethernet with up to two VLAN tags (802.1Q or 802.1ad, either one in
    // either place), or none. A link header cut short counts no IP bytes.
    let (ip_off, ethertype) = if l2 {
        let Some(mut et) = be16(ctx, 12, buf) else {
            return unattributed(unattributed::MALFORMED, 0, len);
        };
        let mut off = 14usize;
        let mut tags = 0;
        while tags < 2 && (et == ETH_P_8021Q || et == ETH_P_8021AD) {
            let Some(inner) = be16(ctx, off + 2, buf) else {
                return unattributed(unattributed::MALFORMED, 0, len);
            };
            et = inner;
            off += 4;
            tags += 1;
        }
        (off, et)
    } else {
        let version = match at::<2>(ctx, 0, buf) {
            Some(p) => ld8(p, 0) >> 4,
            None => byte(ctx, 0).unwrap_or(0) >> 4,
        };
        match version {
            4 => (0, ETH_P_IP),
            6 => (0, ETH_P_IPV6),
            _ => (0, 0),
        }
    };
    let ip_bytes = len.saturating_sub(ip_off as u64);
    let mut w: Words = [0; 11];
    let parsed = match ethertype {
        ETH_P_IP => parse_v4(ctx, ip_off, &mut w, buf),
        ETH_P_IPV6 => parse_v6(ctx, ip_off, &mut w, buf),
        _ => return unattributed(unattributed::NOT_IP, 0, len),
    };
    let Some((l4_off, payload_off, tcp_flags)) = parsed else {
        return unattributed(unattributed::MALFORMED, ip_bytes, len);
    };
    w[9] |= (ingress as u32) << 16;
    w[10] = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: FlowKey is #[repr(C)], 44 bytes of plain data laid out as the words are.
    let key: FlowKey = unsafe { core::mem::transmute(w) };
    let p = Parsed {
        key,
        ip_off,
        l4_off,
        payload_off,
        tcp_flags,
    };
    let payload_len = (len as usize).saturating_sub(p.payload_off) as u32;

    let fp = fingerprint(&p.key, &unsafe {
        core::ptr::read_volatile(&FINGERPRINT_KEYS)
    });
    let slot = slot(fp.hash, unsafe { core::ptr::read_volatile(&SLOT_SHIFT) });
    let Some(c) = SLOTS.get_ptr_mut(slot) else {
        return collided(ctx, &p, ip_bytes, len, payload_len);
    };
    let c = unsafe { &mut *c };
    if c.tag == fp.tag {
        // The hot path: the key this CPU counts in its slot.
        add(ctx, c, &p, ip_bytes, len, payload_len)
    } else if c.tag == 0 {
        // Nothing counted in this slot on this CPU yet: the key owns the slot (or takes
        // it) and starts here, or another key owns it.
        if FLOW_KEYS.insert(&slot, &p.key, BPF_NOEXIST).is_err() && !holds(slot, &p.key) {
            return collided(ctx, &p, ip_bytes, len, payload_len);
        }
        *c = first(ctx, &p, ip_bytes, len, payload_len, fp.tag);
    } else {
        collided(ctx, &p, ip_bytes, len, payload_len)
    }
}

/// Whether `key` is the one that owns `slot`.
#[inline(always)]
fn holds(slot: u32, key: &FlowKey) -> bool {
    // SAFETY: a map value, read once and copied.
    unsafe { FLOW_KEYS.get(&slot) }.is_some_and(|k| k == key)
}

/// One more packet of a key this CPU already counts.
#[inline(always)]
fn add(
    ctx: &TcContext,
    c: &mut FlowCounters,
    p: &Parsed,
    ip_bytes: u64,
    len: u64,
    payload_len: u32,
) {
    c.packets += 1;
    c.ip_bytes += ip_bytes;
    c.link_bytes += len;
    c.tcp_flags |= p.tcp_flags;
    if payload_len > 0 && c.sent & SENT_PAYLOAD == 0 {
        c.sent |= SENT_PAYLOAD;
        event(ctx, p, EVENT_PAYLOAD, payload_len);
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 && c.sent & SENT_CLOSE == 0 {
        c.sent |= SENT_CLOSE;
        event(ctx, p, EVENT_CLOSE, payload_len);
    }
    if c.sent & SENT_PASSIVE != 0 {
        passive::passive(ctx, p, ip_bytes, len);
    }
}

/// The counters of a key's first packet on this CPU, its events sent: one says "open"
/// and carries the payload.
#[inline(always)]
fn first(
    ctx: &TcContext,
    p: &Parsed,
    ip_bytes: u64,
    len: u64,
    payload_len: u32,
    tag: u64,
) -> FlowCounters {
    let mut sent = 0;
    if payload_len > 0 {
        sent |= SENT_PAYLOAD;
    }
    if p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        sent |= SENT_CLOSE;
    }
    if read_passively(&p.key) {
        sent |= SENT_PASSIVE;
        passive::passive(ctx, p, ip_bytes, len);
    }
    let kind = if payload_len > 0 {
        EVENT_PAYLOAD
    } else {
        EVENT_OPEN
    };
    event(ctx, p, kind, payload_len);
    if sent & SENT_CLOSE != 0 {
        event(ctx, p, EVENT_CLOSE, 0);
    }
    FlowCounters {
        packets: 1,
        ip_bytes,
        link_bytes: len,
        tcp_flags: p.tcp_flags,
        sent,
        _pad: [0; 6],
        tag,
    }
}

/// A key whose fingerprint another key holds: counted under its full key.
#[inline(never)]
fn collided(ctx: &TcContext, p: &Parsed, ip_bytes: u64, len: u64, payload_len: u32) {
    match COLLIDED.get_ptr_mut(&p.key) {
        Some(c) => {
            let c = unsafe { &mut *c };
            // Another CPU inserted the key: this CPU's copy starts zeroed, so whether the
            // key is read passively is decided here, at its first packet on this CPU.
            if c.packets == 0 && read_passively(&p.key) {
                c.sent |= SENT_PASSIVE;
            }
            add(ctx, c, p, ip_bytes, len, payload_len)
        }
        None => {
            let c = first(ctx, p, ip_bytes, len, payload_len, 0);
            if COLLIDED.insert(&p.key, &c, 0).is_err() {
                unattributed(unattributed::MAP_FULL, ip_bytes, len);
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
            let want = if payload_len as usize > PAYLOAD_CAPTURE {
                PAYLOAD_CAPTURE as u32
            } else {
                payload_len
            };
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
    // No wake-up: user space drains the ring on a timer (every 100 ms) and never sleeps
    // on it, and a wake-up is an interrupt (an exit, in a VM) on a flow's first packet.
    entry.submit(BPF_RB_NO_WAKEUP);
}

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
