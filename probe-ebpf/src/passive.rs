//! Passive reading (docs/passive.md): the packets of flows on `--http-ports`, each sent to
//! user space with a bounded copy of its payload.

use crate::parse::*;
use crate::*;

/// Whether a key's packets are read passively: TCP with a port in [`HTTP_PORTS`]. Asked
/// once per key and CPU (at its first packet); the answer is kept in the slot's `sent`.
#[inline(always)]
pub(crate) fn read_passively(key: &FlowKey) -> bool {
    if key.proto != IPPROTO_TCP {
        return false;
    }
    let marked = |port: u16| HTTP_PORTS.get(port as u32).is_some_and(|v| *v != 0);
    marked(key.dst_port) || marked(key.src_port)
}

/// Sends a passively read packet to user space: its key, time, counts, TCP sequence
/// number and as much of its payload as the smallest fitting event class holds.
#[inline(never)]
pub(crate) fn passive(ctx: &TcContext, p: &Parsed, ip_bytes: u64, len: u64) {
    let mut buf = Scratch::uninit();
    let buf = &mut buf;
    // The payload's length from the IP header: a padded frame's padding is not payload.
    let ip_len = if p.key.family == FAMILY_V4 {
        be16(ctx, p.ip_off + 2, buf).map(|l| l as usize)
    } else {
        be16(ctx, p.ip_off + 4, buf).map(|l| l as usize + 40)
    };
    let headers = p.payload_off - p.ip_off;
    let payload_len = match ip_len {
        Some(l) if l > headers => (l - headers) as u32,
        _ => 0,
    };
    let seq = match at::<8>(ctx, p.l4_off, buf) {
        Some(h) => u32::from_be(ld32(h, 4)),
        None => 0,
    };
    let head = PassiveHeader {
        time_ns: unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() },
        key: p.key,
        seq,
        ip_bytes: ip_bytes as u32,
        link_bytes: len as u32,
        payload_len,
        captured: 0,
        tcp_flags: p.tcp_flags,
        _pad: [0; 7],
    };
    if payload_len == 0 {
        passive_event::<0>(ctx, p, &head);
    } else if payload_len <= 256 {
        passive_event::<256>(ctx, p, &head);
    } else if payload_len <= 2048 {
        passive_event::<2048>(ctx, p, &head);
    } else {
        passive_event::<16384>(ctx, p, &head);
    }
}

/// One [`PassiveEvent`] with room for `N` payload bytes (`N` 0 or a power of two).
#[inline(always)]
pub(crate) fn passive_event<const N: usize>(ctx: &TcContext, p: &Parsed, head: &PassiveHeader) {
    let Some(mut entry) = PASSIVE.reserve::<PassiveEvent<N>>(0) else {
        return fail(failure::PASSIVE_RINGBUF_FULL);
    };
    let ev = entry.as_mut_ptr();
    let mut captured = 0u32;
    unsafe {
        (*ev).head = *head;
        if N > 0 && head.payload_len > 0 {
            let want = if head.payload_len as usize > N {
                N as u32
            } else {
                head.payload_len
            };
            // Written so the verifier can see 1 <= n <= N.
            let n = ((want - 1) & (N as u32 - 1)) + 1;
            let r = aya_ebpf::helpers::bpf_skb_load_bytes(
                ctx.skb.skb as *const _,
                p.payload_off as u32,
                (*ev).data.as_mut_ptr() as *mut _,
                n,
            );
            if r == 0 {
                captured = n;
            } else {
                fail(failure::PASSIVE_COPY);
            }
        }
        (*ev).head.captured = captured;
    }
    entry.submit(BPF_RB_NO_WAKEUP);
}
