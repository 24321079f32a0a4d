//! The probe's vocabulary: a packet's key as the capture saw it, transports, directions,
//! and counters. Platform-free: every backend converts into these.

use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// One direction of a flow on one interface and hook, as packets carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PacketKey {
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ifindex: u32,
    pub ingress: bool,
}

impl PacketKey {
    /// From the kernel's key; `None` for an unknown address family.
    pub fn from_raw(k: &tokenwire_probe_common::FlowKey) -> Option<Self> {
        let ip = |b: &[u8; 16]| -> Option<IpAddr> {
            match k.family {
                tokenwire_probe_common::FAMILY_V4 => {
                    Some(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])))
                }
                tokenwire_probe_common::FAMILY_V6 => Some(IpAddr::V6(Ipv6Addr::from(*b))),
                _ => None,
            }
        };
        Some(Self {
            proto: k.proto,
            src: SocketAddr::new(ip(&k.src)?, k.src_port),
            dst: SocketAddr::new(ip(&k.dst)?, k.dst_port),
            ifindex: k.ifindex,
            ingress: k.ingress != 0,
        })
    }
}

impl PacketKey {
    /// The kernel's key for this packet key (the inverse of [`PacketKey::from_raw`]).
    pub fn to_raw(&self) -> tokenwire_probe_common::FlowKey {
        let mut k = tokenwire_probe_common::FlowKey {
            src_port: self.src.port(),
            dst_port: self.dst.port(),
            proto: self.proto,
            ingress: u8::from(self.ingress),
            ifindex: self.ifindex,
            ..Default::default()
        };
        let put = |ip: IpAddr, out: &mut [u8; 16]| match ip {
            IpAddr::V4(v4) => {
                out[..4].copy_from_slice(&v4.octets());
                tokenwire_probe_common::FAMILY_V4
            }
            IpAddr::V6(v6) => {
                *out = v6.octets();
                tokenwire_probe_common::FAMILY_V6
            }
        };
        k.family = put(self.src.ip(), &mut k.src);
        put(self.dst.ip(), &mut k.dst);
        k
    }
}

/// Packets and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    /// From the IP header onward.
    pub ip_bytes: u64,
    /// Including the link header, as the device carries them.
    pub link_bytes: u64,
}

impl Counters {
    /// Field by field, never below zero.
    pub fn saturating_sub(&self, o: &Counters) -> Counters {
        Counters {
            packets: self.packets.saturating_sub(o.packets),
            ip_bytes: self.ip_bytes.saturating_sub(o.ip_bytes),
            link_bytes: self.link_bytes.saturating_sub(o.link_bytes),
        }
    }
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, o: Self) {
        self.packets += o.packets;
        self.ip_bytes += o.ip_bytes;
        self.link_bytes += o.link_bytes;
    }
}

impl std::ops::Add for Counters {
    type Output = Counters;
    fn add(mut self, o: Self) -> Self {
        self += o;
        self
    }
}

/// What a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP whose first payload is a TLS record.
    Tls,
    /// Plaintext HTTP/1.x over TCP.
    Http,
    /// Other TCP (or TCP without payload yet).
    Tcp,
    /// UDP that carried a QUIC long header.
    Quic,
    Udp,
    /// Another IP protocol (ICMP, ...): see the flow's `proto`.
    Other,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::Http => "http",
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
            Transport::Udp => "udp",
            Transport::Other => "other",
        }
    }

    /// The transport whose [`Transport::as_str`] is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Transport::Tls,
            Transport::Http,
            Transport::Tcp,
            Transport::Quic,
            Transport::Udp,
            Transport::Other,
        ]
        .into_iter()
        .find(|t| t.as_str() == name)
    }
}

/// Relative to the flow's server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ToServer => "to_server",
            Direction::ToClient => "to_client",
        }
    }

    /// The direction whose [`Direction::as_str`] is `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Direction::ToServer, Direction::ToClient]
            .into_iter()
            .find(|d| d.as_str() == name)
    }
}

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
