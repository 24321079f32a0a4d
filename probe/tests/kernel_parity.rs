//! The kernel's parser against user space's, packet by packet: each packet runs through
//! the eBPF program with BPF_PROG_TEST_RUN (nothing attached) and through the parser the
//! libpcap backend and capture files use, and what each counted (key, bytes, TCP flags,
//! payload length, or the reason it was not keyed) must be the same. The packets: the
//! micro-benchmark's set, hand-built edge cases, and seeded mutations and truncations of
//! them. The `kernel_parity` fuzz target does the same with libFuzzer's inputs. Runs as
//! root.

mod common;

use common::require_root;
use rand::{Rng, SeedableRng};
use tokenwire_probe::backend::ebpf_object::LinkKind;
use tokenwire_probe::backend::kernel_run::{KernelRun, bench_packets};
use tokenwire_probe::packet::build::{ethernet, tcp4, tcp6, udp4};

/// Hand-built packets at the edges of the rules (docs/probe.md, "The kernel and user
/// space key packets alike").
fn edge_cases() -> Vec<(LinkKind, Vec<u8>)> {
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let lo6 = std::net::Ipv6Addr::LOCALHOST.octets();
    let tcp = tcp4(a, 443, b, 50000, 0x18, b"token");
    let udp = udp4(a, 4433, b, 50000, b"quic");
    let v6 = tcp6(lo6, 8080, lo6, 40000, 0x19, b"bye");
    let mut out = vec![];
    // VLAN tags: 802.1Q and 802.1ad in every order, one, two and three deep.
    for outer in [0x8100u16, 0x88a8] {
        for inner in [0x8100u16, 0x88a8, 0x0800] {
            let mut tagged = vec![0, 7];
            tagged.extend(inner.to_be_bytes());
            if inner != 0x0800 {
                tagged.extend([0, 9, 0x08, 0x00]);
            }
            tagged.extend(&tcp);
            out.push((LinkKind::L2, ethernet(outer, &tagged)));
        }
    }
    let mut three = vec![];
    for _ in 0..3 {
        three.extend([0, 1, 0x81, 0x00]);
    }
    three.truncate(10);
    three.extend([0x08, 0x00]);
    three.extend(&tcp);
    out.push((LinkKind::L2, ethernet(0x8100, &three)));
    // TCP with options, and with a data offset past the packet or below 20 bytes.
    for doff in [0x50u8, 0x60, 0x80, 0xf0, 0x40, 0x00] {
        let mut p = tcp.clone();
        p[20 + 12] = doff;
        out.push((LinkKind::L2, ethernet(0x0800, &p)));
    }
    // UDP and TCP headers cut short; IPv4 options; a bad IHL; fragments.
    for cut in [20 + 4, 20 + 7, 20 + 8, 20 + 13, 20 + 19] {
        out.push((LinkKind::L3, udp[..cut.min(udp.len())].to_vec()));
        out.push((LinkKind::L3, tcp[..cut].to_vec()));
    }
    for ihl in [0x44u8, 0x46, 0x4f] {
        let mut p = udp.clone();
        p[0] = ihl;
        out.push((LinkKind::L3, p));
    }
    for frag in [[0x20u8, 0x00], [0x00, 0x10], [0x3f, 0xff]] {
        let mut p = udp.clone();
        p[6..8].copy_from_slice(&frag);
        out.push((LinkKind::L3, p));
    }
    // Another protocol (ICMP), and one with IPv4 options running past the packet.
    let mut icmp = udp.clone();
    icmp[9] = 1;
    out.push((LinkKind::L3, icmp.clone()));
    icmp[0] = 0x4f;
    out.push((LinkKind::L3, icmp[..30].to_vec()));
    // IPv6 extension headers: each kind, a chain, an AH with a zero length, fragments.
    for (kind, ext) in [
        (0u8, vec![6u8, 0, 0, 0, 0, 0, 0, 0]),
        (43, vec![6, 0, 0, 0, 0, 0, 0, 0]),
        (60, vec![6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (44, vec![6, 0, 0, 0, 0, 0, 0, 1]),
        (44, vec![6, 0, 0, 8, 0, 0, 0, 1]),
        (51, vec![6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        (51, vec![6, 0, 0, 0, 0, 0, 0, 0]),
    ] {
        let mut p = v6[..40].to_vec();
        p[6] = kind;
        p.extend(&ext);
        p.extend(&v6[40..]);
        out.push((LinkKind::L2, ethernet(0x86dd, &p)));
        out.push((LinkKind::L3, p));
    }
    let mut chain = v6[..40].to_vec();
    chain[6] = 0;
    for next in [60u8, 43, 60, 51] {
        chain.extend([next, 0, 0, 0, 0, 0, 0, 0]);
    }
    chain.extend([6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    chain.extend(&v6[40..]);
    out.push((LinkKind::L3, chain));
    // Not IP at all, and IP versions other than 4 and 6.
    out.push((LinkKind::L2, ethernet(0x0806, &[0u8; 28])));
    for version in [0u8, 5, 7, 0xf] {
        let mut p = udp.clone();
        p[0] = version << 4 | 5;
        out.push((LinkKind::L3, p));
    }
    out
}

#[test]
fn the_kernel_and_user_space_key_every_packet_alike() {
    require_root();
    let mut k = KernelRun::load().expect("loading the eBPF programs");
    let mut packets: Vec<(LinkKind, Vec<u8>)> = bench_packets()
        .into_iter()
        .map(|p| {
            let link = match p.program {
                tokenwire_probe::backend::kernel_run::Program::L3 => LinkKind::L3,
                _ => LinkKind::L2,
            };
            (link, p.bytes)
        })
        .collect();
    packets.extend(edge_cases());
    let base = packets.clone();
    // Every truncation of each, and mutations of the header bytes (seeded: a failure
    // names a packet that can be rebuilt).
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(17);
    for (link, p) in &base {
        for n in 14..p.len() {
            packets.push((*link, p[..n].to_vec()));
        }
        for _ in 0..40 {
            let mut q = p.clone();
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..q.len().min(80));
                q[i] = rng.random();
            }
            packets.push((*link, q));
        }
    }
    let mut differ = Vec::new();
    for (link, p) in &packets {
        if let Some(d) = k.differ(*link, p).expect("running the program") {
            differ.push((*link, p.clone(), d));
        }
    }
    for (link, p, (kernel, user)) in differ.iter().take(5) {
        eprintln!("{link:?} {p:02x?}\n  kernel: {kernel:?}\n  user:   {user:?}");
    }
    assert!(
        differ.is_empty(),
        "{} of {} packets counted differently",
        differ.len(),
        packets.len()
    );
    eprintln!("{} packets counted alike", packets.len());
}

/// With a fingerprint that gives every key the same hash, flows are still counted apart:
/// the second and third keys find the first one's entry, fail its key or tag check, and
/// are counted under their full keys.
#[test]
fn colliding_fingerprints_are_counted_apart() {
    require_root();
    use tokenwire_probe::backend::kernel_run::Program;
    let mut keys = tokenwire_probe_common::fingerprint_keys(7);
    keys[1..7].fill(0);
    let mut k = KernelRun::load_with_fingerprint_keys(keys).expect("loading the eBPF programs");
    k.forget().unwrap();
    let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
    let flow = |port: u16, payload: &[u8]| ethernet(0x0800, &tcp4(a, port, b, 443, 0x18, payload));
    let sent = [
        flow(1000, b"a"),
        flow(2000, b"bb"),
        flow(1000, b"a"),
        flow(3000, b"ccc"),
        flow(2000, b"bb"),
        flow(2000, b"bb"),
    ];
    for p in &sent {
        k.run(Program::L2, p).unwrap();
    }
    let got: Vec<(u16, u64, u64)> = k
        .flows()
        .unwrap()
        .into_iter()
        .map(|(key, c)| (key.src.port(), c.packets, c.link_bytes))
        .collect();
    let len = |n: usize| (14 + 20 + 20 + n) as u64;
    assert_eq!(
        got,
        vec![
            (1000, 2, 2 * len(1)),
            (2000, 3, 3 * len(2)),
            (3000, 1, len(3))
        ]
    );
}
