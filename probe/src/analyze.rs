//! `tokenwire-probe analyze FILE [--spans SPANS]`: the live tables from a capture file, and
//! with the spans the servers sent during the capture, the per-request records. It runs
//! the live probe's engine over the replay backend: connections are cut at each span's own
//! time (the server's clock), in packet-time order.

use crate::attribution::{ConnectionRecord, RequestRecord};
use crate::backend::replay::{PacketSource, ReplayBackend, ReplayError, Step};
use crate::capture_file::CaptureFileError;
use crate::engine::{Engine, EngineOptions};
use crate::health::Health;
use crate::labels::Labels;
use crate::output;
use crate::passive::PassiveOptions;
use crate::spans::Span;
use crate::table::FlowRow;
use std::io::Read;
use std::time::Instant;

/// What a file held, up to where it could be read.
pub struct Analysis {
    pub rows: Vec<FlowRow>,
    pub health: Health,
    /// Per-request records (empty without spans).
    pub requests: Vec<RequestRecord>,
    pub connections: Vec<ConnectionRecord>,
    pub packets: u64,
    /// Why reading stopped early (truncated or corrupt file); the totals hold up to there.
    pub error: Option<CaptureFileError>,
}

pub type AnalyzeError = ReplayError;

impl Analysis {
    /// What `analyze` prints: the flow table (and with spans, the requests), or JSON lines.
    pub fn render(&self, json: bool, with_requests: bool) -> String {
        if json {
            let mut s = output::json_lines(&self.rows, &[], 1, true);
            for r in &self.requests {
                s += &format!("{}\n", serde_json::json!({ "request": r }));
            }
            for c in &self.connections {
                s += &format!("{}\n", serde_json::json!({ "connection": c }));
            }
            s + &output::health_json(&self.health, 0, 1, true)
        } else {
            let mut s = format!(
                "{}{}  packets {}\n",
                output::table(&self.rows, &[]),
                output::health_line(&self.health),
                self.packets
            );
            if with_requests {
                s += &format!("\n{}\n", output::requests_table(&self.requests));
            }
            s
        }
    }
}

/// Counts the file; `spans` cut its connections into requests, and connections on the
/// `passive` ports are read for requests of their own.
pub fn analyze<R: Read>(
    r: R,
    labels: Labels,
    spans: Vec<Span>,
    passive: PassiveOptions,
) -> Result<Analysis, AnalyzeError> {
    replay(ReplayBackend::open(r, spans)?, labels, passive)
}

/// Plays `backend` through the engine to its end.
pub fn replay<S: PacketSource>(
    backend: ReplayBackend<S>,
    labels: Labels,
    passive: PassiveOptions,
) -> Result<Analysis, AnalyzeError> {
    let now = Instant::now();
    let opts = EngineOptions {
        keep_requests: usize::MAX,
        passive,
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(backend, labels, opts);
    while let Some(step) = engine.backend_mut().next_step()? {
        if let Step::Span(span) = step {
            engine.span(span, now);
        }
        engine.read_passive();
    }
    // Replay counting cannot fail: it is all in memory.
    let _ = engine.finish_all(now);
    Ok(Analysis {
        rows: engine.table().rows(),
        health: engine.health(),
        requests: engine.requests(),
        connections: engine.connections(),
        packets: engine.backend().packets(),
        error: engine.backend_mut().take_error(),
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
                crate::capture_file::pcapng::build::file(
                    linktype as u16,
                    &packets.iter().map(Vec::as_slice).collect::<Vec<_>>(),
                ),
            ] {
                let a =
                    analyze(&file[..], Labels::default(), Vec::new(), Default::default()).unwrap();
                assert!(a.error.is_none(), "{linktype}");
                let rows = &a.rows;
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
        let a = analyze(
            &f[..f.len() - 5],
            Labels::default(),
            Vec::new(),
            Default::default(),
        )
        .unwrap();
        assert_eq!(a.packets, 4);
        assert_eq!(a.rows[0].counters.packets, 4);
        let e = a.error.unwrap().to_string();
        assert!(e.starts_with("packet 4 at byte "), "{e}");
        assert!(matches!(
            analyze(
                &pcap_file(147, &packets)[..],
                Labels::default(),
                Vec::new(),
                Default::default()
            ),
            Err(ReplayError::UnknownLinkType(147))
        ));
        assert!(matches!(
            analyze(
                &b"not a capture"[..],
                Labels::default(),
                Vec::new(),
                Default::default()
            ),
            Err(ReplayError::Open(_))
        ));
    }
}
