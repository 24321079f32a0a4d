//! Parsing a captured packet down to its flow key: link header (Ethernet with VLAN tags,
//! BSD null/loopback in either byte order, raw IP, Linux cooked v1 and v2), IPv4 or IPv6
//! (extension headers followed, a bounded number), TCP or UDP ports. Pure and total: any
//! bytes give a key or an error, never a panic.
//!
//! Headers are read with etherparse's header slices; the walk from one to the next is
//! ours, because it must be the eBPF program's walk (a packet is keyed the same way in the
//! kernel and here; `probe/tests/kernel_parity.rs` and the `kernel_parity` fuzz target
//! hold the two to it). Where the probe departs from etherparse's own `SlicedPacket`:
//! - an IPv4 total length or IPv6 payload length is not checked against the packet (the
//!   kernel's GSO packets carry 0 there, and the counts come from the packet's length);
//! - the first fragment of a fragmented packet is keyed by its ports (etherparse leaves a
//!   fragmented payload unparsed), later fragments by addresses alone;
//! - IPv6 extension headers (hop-by-hop, routing, destination options, fragment,
//!   authentication) are followed in any order up to six, a seventh is malformed;
//! - up to two VLAN tags, 802.1Q or 802.1ad in either place;
//! - BSD null/loop and Linux cooked v2 have no etherparse slice, and its Linux cooked v1
//!   slice refuses packet and hardware types the probe does not need to know: those link
//!   headers are read here.

use crate::flow::{IPPROTO_TCP, IPPROTO_UDP};
use etherparse::{
    Ethernet2Header, Ethernet2HeaderSlice, IpAuthHeaderSlice, Ipv4HeaderSlice,
    Ipv6FragmentHeaderSlice, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeader,
    SingleVlanHeaderSlice, TcpHeaderSlice, UdpHeaderSlice,
};
use std::net::{IpAddr, SocketAddr};

/// Link-layer header types (the pcap LINKTYPE_ numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkType {
    /// 0: BSD loopback, 4-byte address family in the writer's byte order (macOS lo0).
    Null,
    /// 1: Ethernet (Linux lo too).
    Ethernet,
    /// 101 (and the historic 12 and 14): no link header.
    Raw,
    /// 108: OpenBSD loopback, 4-byte family in network order.
    Loop,
    /// 113: Linux cooked capture v1 (the `any` device).
    LinuxSll,
    /// 276: Linux cooked capture v2.
    LinuxSll2,
}

impl LinkType {
    pub fn from_pcap(linktype: u32) -> Option<Self> {
        Some(match linktype {
            0 => LinkType::Null,
            1 => LinkType::Ethernet,
            12 | 14 | 101 => LinkType::Raw,
            108 => LinkType::Loop,
            113 => LinkType::LinuxSll,
            276 => LinkType::LinuxSll2,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("truncated link header")]
    TruncatedLink,
    #[error("not an IP packet (link protocol {0:#06x})")]
    NotIp(u32),
    #[error("truncated or malformed IP header")]
    BadIp,
    #[error("truncated or malformed transport header")]
    BadTransport,
    #[error("too many IPv6 extension headers")]
    ExtensionLoop,
}

/// What a packet says about its flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketInfo<'a> {
    pub proto: u8,
    /// Ports are 0 for protocols without them and for non-first fragments.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Bytes of the link header, so IP bytes = original length - link_len.
    pub link_len: usize,
    pub tcp_flags: u8,
    /// The TCP sequence number (0 for other protocols).
    pub tcp_seq: u32,
    /// The IP datagram's length as its header states it (total length; 40 + payload
    /// length for IPv6): with the header bytes before the payload, the payload's length on
    /// the wire, whatever the capture cut or the link padded.
    pub ip_len: u32,
    /// The captured part of the transport payload.
    pub payload: &'a [u8],
}

impl PacketInfo<'_> {
    /// Transport payload bytes on the wire: the IP length less the headers before the
    /// payload, for a packet captured as `captured` bytes.
    pub fn wire_payload_len(&self, captured: usize) -> u32 {
        let headers = captured
            .saturating_sub(self.link_len)
            .saturating_sub(self.payload.len());
        self.ip_len.saturating_sub(headers as u32)
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

const ETH_P_IP: u32 = 0x0800;
const ETH_P_IPV6: u32 = 0x86DD;

/// Parses a captured packet (the captured bytes, which may be shorter than the packet).
pub fn parse(link: LinkType, data: &[u8]) -> Result<PacketInfo<'_>, PacketError> {
    let (off, proto) = link_header(link, data)?;
    let ip = data.get(off..).ok_or(PacketError::TruncatedLink)?;
    let mut info = match proto {
        ETH_P_IP => parse_v4(ip)?,
        ETH_P_IPV6 => parse_v6(ip)?,
        other => return Err(PacketError::NotIp(other)),
    };
    info.link_len = off;
    Ok(info)
}

/// Bytes of the link header, when it can be read.
pub fn link_len(link: LinkType, data: &[u8]) -> Option<usize> {
    link_header(link, data).ok().map(|(off, _)| off)
}

/// Offset of the IP header and the link's protocol number for it.
fn link_header(link: LinkType, d: &[u8]) -> Result<(usize, u32), PacketError> {
    let t = PacketError::TruncatedLink;
    Ok(match link {
        LinkType::Ethernet => {
            let mut et = Ethernet2HeaderSlice::from_slice(d)
                .map_err(|_| t)?
                .ether_type()
                .0;
            let mut off = Ethernet2Header::LEN;
            // Up to two VLAN tags, 802.1Q or 802.1ad in either place.
            for _ in 0..2 {
                if et == 0x8100 || et == 0x88a8 {
                    let tag = d.get(off..).ok_or(t)?;
                    et = SingleVlanHeaderSlice::from_slice(tag)
                        .map_err(|_| t)?
                        .ether_type()
                        .0;
                    off += SingleVlanHeader::LEN;
                }
            }
            (off, u32::from(et))
        }
        LinkType::Null | LinkType::Loop => {
            let b: [u8; 4] = d.get(..4).ok_or(t)?.try_into().map_err(|_| t)?;
            // The family is in the writer's byte order (null) or network order (loop): a
            // small number read either way tells which.
            let le = u32::from_le_bytes(b);
            let family = if le < 256 { le } else { u32::from_be_bytes(b) };
            let proto = match family {
                2 => ETH_P_IP,
                10 | 24 | 28 | 30 => ETH_P_IPV6,
                f => f,
            };
            (4, proto)
        }
        LinkType::Raw => match d.first().map(|b| b >> 4) {
            Some(4) => (0, ETH_P_IP),
            Some(6) => (0, ETH_P_IPV6),
            Some(v) => (0, u32::from(v)),
            None => return Err(t),
        },
        LinkType::LinuxSll => (16, u32::from(be16(d, 14).ok_or(t)?)),
        LinkType::LinuxSll2 => (20, u32::from(be16(d, 0).ok_or(t)?)),
    })
}

fn parse_v4(ip: &[u8]) -> Result<PacketInfo<'_>, PacketError> {
    let h = Ipv4HeaderSlice::from_slice(ip).map_err(|_| PacketError::BadIp)?;
    let (src, dst) = (
        IpAddr::V4(h.source_addr()),
        IpAddr::V4(h.destination_addr()),
    );
    let proto = h.protocol().0;
    let l4 = &ip[h.slice().len()..];
    let ip_len = u32::from(h.total_len());
    if h.fragments_offset().value() != 0 {
        return Ok(no_ports(proto, src, dst));
    }
    transport(proto, src, dst, l4).map(|i| PacketInfo { ip_len, ..i })
}

fn parse_v6(ip: &[u8]) -> Result<PacketInfo<'_>, PacketError> {
    let h = Ipv6HeaderSlice::from_slice(ip).map_err(|_| PacketError::BadIp)?;
    let (src, dst) = (
        IpAddr::V6(h.source_addr()),
        IpAddr::V6(h.destination_addr()),
    );
    let ip_len = 40 + u32::from(h.payload_length());
    let mut next = h.next_header().0;
    let mut rest = &ip[h.slice().len()..];
    for _ in 0..6 {
        let len = match next {
            0 | 43 | 60 => {
                let e = Ipv6RawExtHeaderSlice::from_slice(rest).map_err(|_| PacketError::BadIp)?;
                next = e.next_header().0;
                e.slice().len()
            }
            44 => {
                let e =
                    Ipv6FragmentHeaderSlice::from_slice(rest).map_err(|_| PacketError::BadIp)?;
                next = e.next_header().0;
                if e.fragment_offset().value() != 0 {
                    return Ok(no_ports(next, src, dst));
                }
                e.slice().len()
            }
            51 => {
                let e = IpAuthHeaderSlice::from_slice(rest).map_err(|_| PacketError::BadIp)?;
                next = e.next_header().0;
                e.slice().len()
            }
            _ => return transport(next, src, dst, rest).map(|i| PacketInfo { ip_len, ..i }),
        };
        rest = &rest[len..];
    }
    if matches!(next, 0 | 43 | 60 | 44 | 51) {
        return Err(PacketError::ExtensionLoop);
    }
    transport(next, src, dst, rest).map(|i| PacketInfo { ip_len, ..i })
}

fn no_ports(proto: u8, src: IpAddr, dst: IpAddr) -> PacketInfo<'static> {
    PacketInfo {
        proto,
        src: SocketAddr::new(src, 0),
        dst: SocketAddr::new(dst, 0),
        link_len: 0,
        tcp_flags: 0,
        tcp_seq: 0,
        ip_len: 0,
        payload: &[],
    }
}

/// The transport header: a TCP header whole (options included), a UDP header's 8 bytes;
/// other protocols have nothing to read.
fn transport(
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    l4: &[u8],
) -> Result<PacketInfo<'_>, PacketError> {
    match proto {
        IPPROTO_TCP => {
            let h = TcpHeaderSlice::from_slice(l4).map_err(|_| PacketError::BadTransport)?;
            Ok(PacketInfo {
                proto,
                src: SocketAddr::new(src, h.source_port()),
                dst: SocketAddr::new(dst, h.destination_port()),
                link_len: 0,
                // The flags byte as the kernel side ORs it (CWR..FIN).
                tcp_flags: h.slice()[13],
                tcp_seq: h.sequence_number(),
                ip_len: 0,
                payload: &l4[h.slice().len()..],
            })
        }
        IPPROTO_UDP => {
            let h = UdpHeaderSlice::from_slice(l4).map_err(|_| PacketError::BadTransport)?;
            Ok(PacketInfo {
                proto,
                src: SocketAddr::new(src, h.source_port()),
                dst: SocketAddr::new(dst, h.destination_port()),
                link_len: 0,
                tcp_flags: 0,
                tcp_seq: 0,
                ip_len: 0,
                payload: &l4[h.slice().len()..],
            })
        }
        _ => Ok(no_ports(proto, src, dst)),
    }
}

pub mod build {
    //! Hand-built packets for tests and benches (in the manner of Retina's packet
    //! builders): valid headers, checksums zero.

    /// An IPv4 header for `l4_len` bytes of protocol `proto` after it.
    fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, l4_len: usize) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        p[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        p.extend(src);
        p.extend(dst);
        p
    }

    /// An IPv6 header for `l4_len` bytes of protocol `proto` after it.
    fn ipv6(src: [u8; 16], dst: [u8; 16], proto: u8, l4_len: usize) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend((l4_len as u16).to_be_bytes());
        p.extend([proto, 64]);
        p.extend(src);
        p.extend(dst);
        p
    }

    /// A TCP segment (flags, no options) with `payload`.
    fn tcp(sport: u16, dport: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = sport.to_be_bytes().to_vec();
        p.extend(dport.to_be_bytes());
        p.extend([0u8; 8]);
        p.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend(payload);
        p
    }

    /// IPv4 + TCP (flags, no options) with `payload`.
    pub fn tcp4(
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let seg = tcp(sport, dport, flags, payload);
        [ipv4(src, dst, 6, seg.len()), seg].concat()
    }

    /// IPv4 + UDP with `payload`, checksums zero.
    pub fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = ipv4(src, dst, 17, 8 + payload.len());
        p.extend(sport.to_be_bytes());
        p.extend(dport.to_be_bytes());
        p.extend(((8 + payload.len()) as u16).to_be_bytes());
        p.extend([0, 0]);
        p.extend(payload);
        p
    }

    /// IPv6 + TCP (flags, no options) with `payload`.
    pub fn tcp6(
        src: [u8; 16],
        sport: u16,
        dst: [u8; 16],
        dport: u16,
        flags: u8,
        payload: &[u8],
    ) -> Vec<u8> {
        let seg = tcp(sport, dport, flags, payload);
        [ipv6(src, dst, 6, seg.len()), seg].concat()
    }

    pub fn ethernet(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 12];
        p.extend(ethertype.to_be_bytes());
        p.extend(ip);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    /// macOS's lo0 (DLT_NULL): a 4-byte address family in host byte order (little-endian on
    /// Intel and Apple silicon alike), AF_INET 2, and AF_INET6 30 on macOS, 28 on FreeBSD,
    /// 24 on NetBSD/OpenBSD; a capture file may come from a big-endian writer too.
    #[test]
    fn macos_loopback_families_in_either_byte_order() {
        let lo6 = {
            let mut a = [0u8; 16];
            a[15] = 1;
            a
        };
        let v6 = tcp6(lo6, 50000, lo6, 8080, 0x02, b"");
        let v4 = udp4([127, 0, 0, 1], 50000, [127, 0, 0, 1], 4433, b"q");
        for (family, ip, is_v6) in [
            (2u32, &v4, false),
            (24, &v6, true),
            (28, &v6, true),
            (30, &v6, true),
        ] {
            for header in [family.to_le_bytes(), family.to_be_bytes()] {
                let mut frame = header.to_vec();
                frame.extend(ip.iter());
                let p = parse(LinkType::Null, &frame).unwrap();
                assert_eq!(p.link_len, 4, "family {family}");
                assert_eq!(p.src.is_ipv6(), is_v6, "family {family}");
                assert_eq!(p.dst.port(), if is_v6 { 8080 } else { 4433 });
            }
        }
        assert!(matches!(
            parse(LinkType::Null, &[7, 0, 0, 0, 0x45]),
            Err(PacketError::NotIp(_))
        ));
    }

    #[test]
    fn every_link_type() {
        let ip = udp4([127, 0, 0, 1], 5000, [127, 0, 0, 1], 4433, b"hi");
        let mut null_le = 2u32.to_le_bytes().to_vec();
        null_le.extend(&ip);
        let mut null_be = 2u32.to_be_bytes().to_vec();
        null_be.extend(&ip);
        let mut sll = vec![0u8; 14];
        sll.extend(0x0800u16.to_be_bytes());
        sll.extend(&ip);
        let mut sll2 = 0x0800u16.to_be_bytes().to_vec();
        sll2.extend([0u8; 18]);
        sll2.extend(&ip);
        for (link, data, link_len) in [
            (LinkType::Ethernet, ethernet(0x0800, &ip), 14),
            (LinkType::Null, null_le, 4),
            (LinkType::Null, null_be.clone(), 4),
            (LinkType::Loop, null_be, 4),
            (LinkType::Raw, ip.clone(), 0),
            (LinkType::LinuxSll, sll, 16),
            (LinkType::LinuxSll2, sll2, 20),
        ] {
            let p = parse(link, &data).unwrap();
            assert_eq!(
                (p.proto, p.src.port(), p.dst.port(), p.link_len, p.payload),
                (17, 5000, 4433, link_len, &b"hi"[..]),
                "{link:?}"
            );
        }
    }

    #[test]
    fn ipv6_with_extension_headers_and_loops() {
        let a = [0u8; 15]
            .iter()
            .copied()
            .chain([1])
            .collect::<Vec<_>>()
            .try_into()
            .unwrap();
        let p = tcp6(a, 40000, a, 8080, 0x02, b"");
        let info = parse(LinkType::Raw, &p).unwrap();
        assert_eq!(
            (info.proto, info.dst.port(), info.tcp_flags),
            (6, 8080, 0x02)
        );
        // Insert a hop-by-hop header (8 bytes) before TCP.
        let mut q = p[..40].to_vec();
        q[6] = 0;
        q.extend([6, 0, 0, 0, 0, 0, 0, 0]);
        q.extend(&p[40..]);
        assert_eq!(parse(LinkType::Raw, &q).unwrap().dst.port(), 8080);
        // Seven hop-by-hop headers: more than we follow.
        let mut r = p[..40].to_vec();
        r[6] = 0;
        for _ in 0..7 {
            r.extend([0, 0, 0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(parse(LinkType::Raw, &r), Err(PacketError::ExtensionLoop));
    }

    #[test]
    fn malformed_never_panics() {
        let ip = udp4([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, b"payload");
        let eth = ethernet(0x0800, &ip);
        for n in 0..eth.len() {
            let _ = parse(LinkType::Ethernet, &eth[..n]);
        }
        let mut bad = eth.clone();
        bad[14] = 0x41; // IHL 4 bytes
        assert_eq!(parse(LinkType::Ethernet, &bad), Err(PacketError::BadIp));
        assert_eq!(
            parse(LinkType::Ethernet, &ethernet(0x0806, &[0; 28])),
            Err(PacketError::NotIp(0x0806))
        );
        for seed in 0u32..5000 {
            let mut g = eth.clone();
            let i = (seed as usize * 31) % g.len();
            g[i] ^= (seed >> 3) as u8 | 1;
            for link in [
                LinkType::Ethernet,
                LinkType::Raw,
                LinkType::Null,
                LinkType::LinuxSll,
                LinkType::LinuxSll2,
            ] {
                let _ = parse(link, &g);
            }
        }
    }
}
