//! Reading a packet's headers into its flow key: the link header, IPv4 or IPv6 (with its
//! extension headers), the ports and TCP flags, with typed loads from the packet's linear
//! data and bpf_skb_load_bytes where it is not linear. The same rules as the user-space
//! parser (probe/src/packet.rs).

use crate::*;

/// What parsing found.
pub(crate) struct Parsed {
    pub(crate) key: FlowKey,
    /// Offset of the IP header.
    pub(crate) ip_off: usize,
    /// Offset of the transport header.
    pub(crate) l4_off: usize,
    /// Offset of the transport payload.
    pub(crate) payload_off: usize,
    pub(crate) tcp_flags: u8,
}

/// Room for a copy of the longest header read at once (IPv6, 40 bytes).
pub(crate) type Scratch = core::mem::MaybeUninit<[u64; 5]>;

/// A header of `N` bytes at `off`: a pointer into the packet's linear data when all of it
/// is there (no helper call), else into `buf`, a copy made with bpf_skb_load_bytes (a
/// non-linear skb). Fields are then read with typed loads ([`ld16`], [`ld32`]).
#[inline(always)]
pub(crate) fn at<const N: usize>(
    ctx: &TcContext,
    off: usize,
    buf: &mut Scratch,
) -> Option<*const u8> {
    let start = ctx.data();
    if start + off + N <= ctx.data_end() {
        return Some((start + off) as *const u8);
    }
    let r = unsafe {
        aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            off as u32,
            buf.as_mut_ptr() as *mut _,
            N as u32,
        )
    };
    (r == 0).then_some(buf.as_ptr() as *const u8)
}

// Typed loads from a header `at` returned (bounds checked there). The packet's headers
// need not be aligned: BPF loads have no alignment requirement where the verifier allows
// unaligned packet access (x86-64, arm64); elsewhere it refuses the program at load, with
// a clear error, rather than misread. Byte-wise reads, what LLVM emits for an unaligned
// read, cost the kernel path more than its map lookup did.

#[inline(always)]
pub(crate) fn ld8(p: *const u8, i: usize) -> u8 {
    unsafe { p.add(i).read() }
}

/// As on the wire (network byte order).
#[inline(always)]
pub(crate) fn ld16(p: *const u8, i: usize) -> u16 {
    unsafe { p.add(i).cast::<u16>().read() }
}

/// As on the wire (network byte order).
#[inline(always)]
pub(crate) fn ld32(p: *const u8, i: usize) -> u32 {
    unsafe { p.add(i).cast::<u32>().read() }
}

/// A 16-bit field in host order.
#[inline(always)]
pub(crate) fn be16(ctx: &TcContext, off: usize, buf: &mut Scratch) -> Option<u16> {
    at::<2>(ctx, off, buf).map(|p| u16::from_be(ld16(p, 0)))
}

/// One byte through the helper (the rare path: a packet shorter than two bytes).
#[inline(always)]
pub(crate) fn byte(ctx: &TcContext, off: usize) -> Option<u8> {
    ctx.load::<u8>(off).ok()
}

/// The transport header at `l4`: ports and TCP flags into the key, and where the payload
/// starts. The same rules as the user-space parser: a TCP header is whole (20 bytes and
/// its options) within the packet, a UDP header is 8 bytes, and any other protocol's
/// header chain ends within the packet.
#[inline(always)]
pub(crate) fn ports(
    ctx: &TcContext,
    w: &mut Words,
    proto: u8,
    l4: usize,
    buf: &mut Scratch,
) -> Option<(usize, usize, u8)> {
    let len = ctx.len() as usize;
    match proto {
        IPPROTO_TCP => {
            let h = at::<20>(ctx, l4, buf)?;
            w[8] = port_word(h);
            let doff = (ld8(h, 12) >> 4) as usize * 4;
            if doff < 20 || l4 + doff > len {
                return None;
            }
            Some((l4, l4 + doff, ld8(h, 13)))
        }
        IPPROTO_UDP => {
            let h = at::<8>(ctx, l4, buf)?;
            w[8] = port_word(h);
            Some((l4, l4 + 8, 0))
        }
        // Other protocols: keyed by addresses and protocol number, no payload.
        _ if l4 <= len => Some((l4, len, 0)),
        _ => None,
    }
}

/// A [`FlowKey`] as eleven 32-bit words in its layout (addresses 0-3 and 4-7, ports 8,
/// protocol, family and hook 9, ifindex 10): built a word at a time, the compiler keeps
/// words in registers rather than 44 separate bytes.
pub(crate) type Words = [u32; 11];

/// FlowKey's word 8 from a TCP or UDP header: both ports in host order.
#[inline(always)]
pub(crate) fn port_word(h: *const u8) -> u32 {
    u16::from_be(ld16(h, 0)) as u32 | (u16::from_be(ld16(h, 2)) as u32) << 16
}

/// FlowKey's word 9.
#[inline(always)]
pub(crate) fn proto_word(proto: u8, family: u8) -> u32 {
    proto as u32 | (family as u32) << 8
}

/// The IPv4 header at `off`: addresses and protocol into `w`, then the transport header;
/// where the payload starts and the TCP flags.
#[inline(always)]
pub(crate) fn parse_v4(
    ctx: &TcContext,
    off: usize,
    w: &mut Words,
    buf: &mut Scratch,
) -> Option<(usize, usize, u8)> {
    let h = at::<20>(ctx, off, buf)?;
    let vihl = ld8(h, 0);
    let ihl = (vihl & 0x0f) as usize * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return None;
    }
    let proto = ld8(h, 9);
    w[0] = ld32(h, 12);
    w[4] = ld32(h, 16);
    w[9] = proto_word(proto, FAMILY_V4);
    // A fragment other than the first carries no transport header.
    if u16::from_be(ld16(h, 6)) & 0x1fff != 0 {
        let len = ctx.len() as usize;
        return (off + ihl <= len).then_some((off + ihl, len, 0));
    }
    ports(ctx, w, proto, off + ihl, buf)
}

/// The IPv6 header at `off` and its extension headers, then the transport header.
#[inline(always)]
pub(crate) fn parse_v6(
    ctx: &TcContext,
    off: usize,
    w: &mut Words,
    buf: &mut Scratch,
) -> Option<(usize, usize, u8)> {
    let h = at::<40>(ctx, off, buf)?;
    if ld8(h, 0) >> 4 != 6 {
        return None;
    }
    let mut i = 0;
    while i < 4 {
        w[i] = ld32(h, 8 + i * 4);
        w[4 + i] = ld32(h, 24 + i * 4);
        i += 1;
    }
    let mut next = ld8(h, 6);
    let mut l4 = off + 40;
    // Extension headers, a bounded number of them (a loop of them is malformed).
    let mut i = 0;
    while i < 6 {
        match next {
            0 | 43 | 60 => {
                let e = at::<2>(ctx, l4, buf)?;
                next = ld8(e, 0);
                l4 += (ld8(e, 1) as usize + 1) * 8;
            }
            44 => {
                // Fragment header: only the first fragment carries the transport header.
                let e = at::<8>(ctx, l4, buf)?;
                let frag = u16::from_be(ld16(e, 2)) >> 3;
                next = ld8(e, 0);
                l4 += 8;
                if frag != 0 {
                    w[9] = proto_word(next, FAMILY_V6);
                    return Some((l4, ctx.len() as usize, 0));
                }
            }
            51 => {
                let e = at::<2>(ctx, l4, buf)?;
                // An authentication header is at least 12 bytes (length field >= 1).
                if ld8(e, 1) == 0 {
                    return None;
                }
                next = ld8(e, 0);
                l4 += (ld8(e, 1) as usize + 2) * 4;
            }
            _ => break,
        }
        i += 1;
    }
    if matches!(next, 0 | 43 | 60 | 44 | 51) {
        return None; // more extension headers than we follow
    }
    w[9] = proto_word(next, FAMILY_V6);
    ports(ctx, w, next, l4, buf)
}
