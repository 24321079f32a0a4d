//! The eBPF backend on other devices, against tcpdump: a veth pair into a network
//! namespace (Ethernet framing, ingress and egress hooks) and a TUN device (no link
//! header). Every address belongs to test hosts these tests create. Runs as root.

mod common;

use common::{Tcpdump, Truth, require_root};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};
use tokenwire_probe::backend::Backend;
use tokenwire_probe::backend::ebpf::EbpfBackend;
use tokenwire_probe::flow::Direction;
use tokenwire_probe::labels::Labels;
use tokenwire_probe::packet::LinkType;
use tokenwire_probe::table::FlowTable;

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

/// Tears the namespace (and the veth with it) down, whatever happens.
struct Netns(String);
impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The probe's rows as (proto, src, dst) -> (packets, IP bytes), ingress and egress summed.
fn probe_view(
    table: &FlowTable,
    keep: impl Fn(&SocketAddr, &SocketAddr) -> bool,
) -> BTreeMap<(u8, SocketAddr, SocketAddr), (u64, u64)> {
    let mut m = BTreeMap::new();
    for r in table.rows() {
        let (s, d) = match r.direction {
            Direction::ToServer => (r.client, r.server),
            Direction::ToClient => (r.server, r.client),
        };
        if keep(&s, &d) {
            let e = m.entry((r.proto, s, d)).or_insert((0, 0));
            e.0 += r.counters.packets;
            e.1 += r.counters.ip_bytes;
        }
    }
    m
}

fn truth_view(t: &Truth) -> BTreeMap<(u8, SocketAddr, SocketAddr), (u64, u64)> {
    t.iter()
        .map(|(k, c)| (*k, (c.packets, c.ip_bytes)))
        .collect()
}

#[test]
fn veth_into_a_namespace_matches_tcpdump() {
    require_root();
    let id = std::process::id() % 100_000;
    let (ns, host, peer) = (format!("twns{id}"), format!("twh{id}"), format!("twp{id}"));
    sh(&["ip", "netns", "add", &ns]);
    let _guard = Netns(ns.clone());
    sh(&[
        "ip", "link", "add", &host, "type", "veth", "peer", "name", &peer,
    ]);
    sh(&["ip", "link", "set", &peer, "netns", &ns]);
    sh(&["ip", "addr", "add", "10.77.0.1/30", "dev", &host]);
    sh(&["ip", "link", "set", &host, "up"]);
    sh(&["ip", "-n", &ns, "addr", "add", "10.77.0.2/30", "dev", &peer]);
    sh(&["ip", "-n", &ns, "link", "set", &peer, "up"]);
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);

    // A TCP echo server in the namespace.
    let server = std::thread::spawn({
        let ns = ns.clone();
        move || {
            // A tiny TCP echo server inside the namespace, via `ip netns exec` and a shell
            // tool every machine has: bash's /dev/tcp cannot listen, so use python3.
            Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c"])
                .arg(
                    "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                     s.bind(('10.77.0.2',7007));s.listen(1);c,_=s.accept()\n\
                     while True:\n d=c.recv(4096)\n if not d: break\n c.sendall(d)\nc.close()",
                )
                .status()
                .unwrap()
        }
    });

    let dump = Tcpdump::start(&host, "host 10.77.0.2", "veth");
    let mut probe = EbpfBackend::start(std::slice::from_ref(&host), 4096, false).unwrap();
    // TCP: connect (retry while the server starts), 50 echoes, close.
    let start = Instant::now();
    let mut tcp = loop {
        match std::net::TcpStream::connect("10.77.0.2:7007") {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => panic!("echo server: {e}"),
        }
    };
    for i in 0..50usize {
        let msg = vec![b'x'; 10 + i * 20];
        tcp.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        tcp.read_exact(&mut back).unwrap();
    }
    drop(tcp);
    // UDP to a closed port: datagrams out, ICMP port-unreachable back in.
    let udp = std::net::UdpSocket::bind("10.77.0.1:0").unwrap();
    for _ in 0..5 {
        udp.send_to(b"anyone?", "10.77.0.2:9").unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    server.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut table = FlowTable::new(Labels::default());
    probe.poll(&mut table, Instant::now()).unwrap();
    let (truth, not_ip) = dump.stop_all(LinkType::Ethernet);
    assert_eq!(probe.health().not_ip, not_ip, "ARP and other non-IP frames");
    let peer_ip: std::net::IpAddr = "10.77.0.2".parse().unwrap();
    let seen = probe_view(&table, |s, d| s.ip() == peer_ip || d.ip() == peer_ip);
    assert_eq!(
        seen,
        truth_view(&truth),
        "probe (left) vs tcpdump (right) on veth"
    );
    assert!(
        seen.keys().any(|k| k.0 == 1),
        "the ICMP replies are counted under protocol 1"
    );
    assert!(seen.len() >= 4);
    // Both hooks were used: the table's keys carry ingress and egress.
    let dirs: Vec<_> = table.rows().iter().map(|r| r.direction).collect();
    assert!(dirs.contains(&Direction::ToServer) && dirs.contains(&Direction::ToClient));
}

/// Creates the TUN device in the namespace, brings it up without IPv6 (whose router
/// solicitation, sent at a random moment up to a second after link-up, would race the
/// probe's attach: tcpdump, started first, once saw one the probe had not), and echoes 30
/// UDP datagrams (addresses and ports swapped, IPv4 checksum recomputed, UDP checksum zero).
const TUN_ECHO: &str = r#"
import fcntl, struct, os
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack('16sH22x', b'{tun}', 0x1001))
os.system('sysctl -qw net.ipv6.conf.{tun}.disable_ipv6=1; ip addr add 10.78.0.1/30 dev {tun}; ip link set {tun} up')
print('up', flush=True)
n = 0
while n < 30:
    p = os.read(fd, 2048)
    if p[0] >> 4 != 4 or p[9] != 17:
        continue
    ihl = (p[0] & 15) * 4
    r = bytearray(p)
    r[12:16] = p[16:20]; r[16:20] = p[12:16]
    r[ihl:ihl+2] = p[ihl+2:ihl+4]; r[ihl+2:ihl+4] = p[ihl:ihl+2]; r[ihl+6:ihl+8] = b'\0\0'
    r[10:12] = b'\0\0'
    s = sum((r[i] << 8) + r[i+1] for i in range(0, ihl, 2))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    r[10:12] = struct.pack('!H', ~s & 0xffff)
    os.write(fd, bytes(r)); n += 1
"#;

#[test]
fn tun_without_link_header_matches_tcpdump() {
    require_root();
    let id = std::process::id() % 100_000;
    let (ns, tun) = (format!("twtun{id}"), format!("twt{id}"));
    // The TUN lives in its own namespace; this test talks to it through `ip netns exec`.
    sh(&["ip", "netns", "add", &ns]);
    let _guard = Netns(ns.clone());
    // Create the device in the namespace from a child that holds it open while we work.
    let script = TUN_ECHO.replace("{tun}", &tun);
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "up");
    // The probe binary and tcpdump run inside the namespace, where the TUN is.
    let pcap = std::env::temp_dir().join(format!("tokenwire-tun-{id}.pcap"));
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "tcpdump",
            "-i",
            &tun,
            "-n",
            "-U",
            "--immediate-mode",
            "-w",
        ])
        .arg(&pcap)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(dump.stderr.take().unwrap());
    line.clear();
    while !line.contains("listening on") {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut err, &mut line).unwrap() > 0);
    }
    // Send once the probe is attached (its ready file; the verifier takes its time).
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns,
        env!("CARGO_BIN_EXE_tokenwire-probe"),
        "run",
        "--no-listen",
        "--no-spans",
        "--iface",
        &tun,
        "--json",
        "--duration",
        "3",
        "--interval",
        "10",
    ])
    .stdout(std::process::Stdio::piped());
    let mut probe = tokenwire_probe_common::launch::ProbeLaunch::new(cmd)
        .start()
        .unwrap();
    // 30 UDP datagrams out of the TUN (egress) and their echoes written back (ingress).
    let sender = Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c"])
        .arg("import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(30):\n s.sendto(b'x'*(20+i),('10.78.0.2',5353)); time.sleep(0.01)")
        .status()
        .unwrap();
    assert!(sender.success());
    let mut stdout = String::new();
    probe
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let status = probe.child.wait().unwrap();
    assert!(status.success(), "the probe exited with {status}");
    Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    dump.wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();

    // tcpdump's view (LINKTYPE_RAW: IP bytes = captured length).
    let file = std::fs::File::open(&pcap).unwrap();
    let mut r = tokenwire_probe::capture_file::PcapReader::new(file).unwrap();
    assert_eq!(LinkType::from_pcap(r.linktype), Some(LinkType::Raw));
    let mut truth: Truth = BTreeMap::new();
    while let Some(rec) = r.next_record().unwrap() {
        let p = tokenwire_probe::packet::parse(LinkType::Raw, &rec.data).unwrap();
        *truth.entry((p.proto, p.src, p.dst)).or_default() += tokenwire_probe::flow::Counters {
            packets: 1,
            ip_bytes: u64::from(rec.orig_len),
            link_bytes: u64::from(rec.orig_len),
        };
    }
    let _ = std::fs::remove_file(&pcap);
    // The probe's final JSON snapshot.
    let mut seen = BTreeMap::new();
    for l in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        if v["final"] != true || v.get("health").is_some() {
            continue;
        }
        let (c, s): (SocketAddr, SocketAddr) = (
            v["client"].as_str().unwrap().parse().unwrap(),
            v["server"].as_str().unwrap().parse().unwrap(),
        );
        let (src, dst) = if v["direction"] == "to_server" {
            (c, s)
        } else {
            (s, c)
        };
        let e = seen
            .entry((v["proto"].as_u64().unwrap() as u8, src, dst))
            .or_insert((0, 0));
        e.0 += v["packets"].as_u64().unwrap();
        e.1 += v["ip_bytes"].as_u64().unwrap();
        assert_eq!(v["ip_bytes"], v["link_bytes"], "no link header on a TUN");
    }
    let t = truth_view(&truth);
    assert_eq!(seen, t, "probe (left) vs tcpdump (right) on TUN");
    assert_eq!(t.values().map(|v| v.0).sum::<u64>(), 60, "30 out, 30 back");
}
