//! Arbitrary bytes as a packet of each link type: parsing, classification and the flow
//! table must never panic, and the table must account for every packet it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwire_probe::backend::accumulate::Accumulator;
use tokenwire_probe::classify::{classify_tcp, is_quic_long_header};
use tokenwire_probe::labels::Labels;
use tokenwire_probe::packet::{LinkType, parse};
use tokenwire_probe::table::FlowTable;

const LINKS: [LinkType; 6] =
    [LinkType::Null, LinkType::Ethernet, LinkType::Raw, LinkType::Loop, LinkType::LinuxSll, LinkType::LinuxSll2];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else { return };
    let link = LINKS[usize::from(sel) % LINKS.len()];
    if let Ok(p) = parse(link, bytes) {
        let _ = classify_tcp(p.payload);
        let _ = is_quic_long_header(p.payload);
    }
    let _ = classify_tcp(bytes);
    let mut acc = Accumulator::new();
    let mut table = FlowTable::new(Labels::default());
    acc.packet(link, bytes, bytes.len() as u32, 1, 0);
    acc.packet(link, bytes, bytes.len() as u32, 1, 0);
    acc.flush(&mut table, std::time::Instant::now());
    let counted: u64 = table.rows().iter().map(|r| r.counters.packets).sum::<u64>()
        + acc.health.not_ip.packets
        + acc.health.malformed.packets;
    assert_eq!(counted, 2, "every packet is counted somewhere");
});
