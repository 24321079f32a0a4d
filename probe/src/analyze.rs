//! `tokenwire-probe analyze FILE [--spans SPANS]`: the live tables from a capture file, and
//! with the spans the servers sent during the capture, the per-request records. Offline,
//! connections are cut at each span's own time (the server's clock), in packet-time order.

use crate::accumulate::Accumulator;
use crate::attribution::Attributor;
use crate::capfile::CaptureFile;
use crate::labels::Labels;
use crate::packet::LinkType;
use crate::pcapfile::PcapError;
use crate::spans::Span;
use crate::table::FlowTable;
use std::io::Read;
use std::time::Instant;

/// What a file held, up to where it could be read.
pub struct Analysis {
    pub table: FlowTable,
    pub acc: Accumulator,
    /// Per-request records (empty without spans).
    pub attributor: Attributor,
    pub packets: u64,
    /// Why reading stopped early (truncated or corrupt file); the totals hold up to there.
    pub error: Option<PcapError>,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyzeError {
    #[error(transparent)]
    Open(#[from] PcapError),
    #[error(
        "link type {0} is not one tokenwire reads (Ethernet 1, null 0, loop 108, raw 101, Linux cooked 113 and 276)"
    )]
    UnknownLinkType(u32),
}

/// Counts the file; `spans` (in time order) cut its connections into requests.
pub fn analyze<R: Read>(r: R, labels: Labels, spans: Vec<Span>) -> Result<Analysis, AnalyzeError> {
    let mut file = CaptureFile::open(r)?;
    let mut table = FlowTable::new(labels);
    let mut acc = Accumulator::new();
    let mut attributor = Attributor::new(usize::MAX);
    let mut spans = spans.into_iter().peekable();
    let now = Instant::now();
    let mut error = None;
    loop {
        match file.next_packet() {
            Ok(Some(p)) => {
                let link = LinkType::from_pcap(p.linktype)
                    .ok_or(AnalyzeError::UnknownLinkType(p.linktype))?;
                // Spans up to this packet's time apply to the counts before it.
                if let Some(ts) = p.ts_ns {
                    while spans.peek().is_some_and(|s| s.time_ns() <= ts) {
                        if let Some(s) = spans.next() {
                            acc.flush(&mut table, now);
                            let cut = s.time_ns();
                            attributor.apply(s, &table, cut, now);
                        }
                    }
                }
                acc.packet(link, &p.data, p.orig_len, p.iface);
            }
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    acc.flush(&mut table, now);
    for s in spans {
        let cut = s.time_ns();
        attributor.apply(s, &table, cut, now);
    }
    attributor.finish_all(&table);
    Ok(Analysis {
        table,
        acc,
        attributor,
        packets: file.packets(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Direction, Transport};
    use crate::packet::build::{ethernet, tcp6, udp4};

    /// A classic pcap file (little-endian, microseconds) of `linktype`.
    fn pcap_file(linktype: u32, packets: &[Vec<u8>]) -> Vec<u8> {
        let mut f = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        f.extend(65535u32.to_le_bytes());
        f.extend(linktype.to_le_bytes());
        for p in packets {
            f.extend([0u8; 8]);
            f.extend((p.len() as u32).to_le_bytes());
            f.extend((p.len() as u32).to_le_bytes());
            f.extend(p);
        }
        f
    }

    fn framed(linktype: u32, ip: &[u8]) -> Vec<u8> {
        let v6 = ip[0] >> 4 == 6;
        let mut p = Vec::new();
        match linktype {
            0 => p.extend(if v6 { 30u32 } else { 2 }.to_le_bytes()),
            108 => p.extend(if v6 { 24u32 } else { 2 }.to_be_bytes()),
            1 => return ethernet(if v6 { 0x86dd } else { 0x0800 }, ip),
            113 => {
                p.extend([0u8; 14]);
                p.extend(if v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
            }
            276 => {
                p.extend(if v6 { 0x86ddu16 } else { 0x0800 }.to_be_bytes());
                p.extend([0u8; 18]);
            }
            _ => {}
        }
        p.extend(ip);
        p
    }

    #[test]
    fn every_link_type_counts_what_the_file_holds() {
        let lo6 = {
            let mut a = [0u8; 16];
            a[15] = 1;
            a
        };
        let ips = [
            udp4(
                [127, 0, 0, 1],
                50000,
                [127, 0, 0, 1],
                4433,
                &[0xc3, 0, 0, 0, 1, 8, 0, 0, 0, 0],
            ),
            udp4([127, 0, 0, 1], 4433, [127, 0, 0, 1], 50000, &[0x40; 30]),
            tcp6(lo6, 40000, lo6, 8080, 0x18, b"\x16\x03\x01\x00\x05hello"),
        ];
        for linktype in [0u32, 1, 101, 108, 113, 276] {
            let packets: Vec<Vec<u8>> = ips.iter().map(|ip| framed(linktype, ip)).collect();
            for file in [
                pcap_file(linktype, &packets),
                crate::pcapng::build::file(
                    linktype as u16,
                    &packets.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                ),
            ] {
                let a = analyze(&file[..], Labels::default(), Vec::new()).unwrap();
                assert!(a.error.is_none(), "{linktype}");
                let rows = a.table.rows();
                let summary: Vec<(&str, Transport, Direction, u64, u64)> = rows
                    .iter()
                    .map(|r| {
                        (
                            r.approach.as_str(),
                            r.transport,
                            r.direction,
                            r.counters.packets,
                            r.counters.ip_bytes,
                        )
                    })
                    .collect();
                assert_eq!(
                    summary,
                    [
                        (
                            "webtransport",
                            Transport::Quic,
                            Direction::ToServer,
                            1,
                            ips[0].len() as u64
                        ),
                        (
                            "webtransport",
                            Transport::Quic,
                            Direction::ToClient,
                            1,
                            ips[1].len() as u64
                        ),
                        (
                            "sse",
                            Transport::Tls,
                            Direction::ToServer,
                            1,
                            ips[2].len() as u64
                        ),
                    ],
                    "link type {linktype}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_file_keeps_the_totals_up_to_the_break() {
        let packets: Vec<Vec<u8>> = (0..5)
            .map(|i| {
                ethernet(
                    0x0800,
                    &udp4([127, 0, 0, 1], 5000, [127, 0, 0, 1], 9, &[i; 10]),
                )
            })
            .collect();
        let f = pcap_file(1, &packets);
        let a = analyze(&f[..f.len() - 5], Labels::default(), Vec::new()).unwrap();
        assert_eq!(a.packets, 4);
        assert_eq!(a.table.rows()[0].counters.packets, 4);
        let e = a.error.unwrap().to_string();
        assert!(e.starts_with("packet 4 at byte "), "{e}");
        assert!(matches!(
            analyze(&pcap_file(147, &packets)[..], Labels::default(), Vec::new()),
            Err(AnalyzeError::UnknownLinkType(147))
        ));
        assert!(matches!(
            analyze(&b"not a capture"[..], Labels::default(), Vec::new()),
            Err(AnalyzeError::Open(_))
        ));
    }
}
