//! Helpers for the probe's privileged tests: tcpdump as ground truth, and the grouping of
//! its capture by flow key.
#![allow(dead_code)]

pub mod live;
pub mod prometheus;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use tokenwire_probe::capture_file::PcapReader;
use tokenwire_probe::flow::Counters;
use tokenwire_probe::packet::{LinkType, parse};

/// The companions' certificate and key for one test process, in a directory of its own
/// (generated on first use).
pub fn identity(tag: &str) -> tokenwire_servers::certs::Identity {
    let dir = std::env::temp_dir().join(format!("tokenwire-{tag}-certs-{}", std::process::id()));
    tokenwire_servers::certs::ensure(&dir).expect("generating the test certificate")
}

/// These tests attach real eBPF programs and run tcpdump: they need root (CI is root).
pub fn require_root() {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    assert_eq!(
        uid.as_deref().ok(),
        Some("0"),
        "the probe's tests need root (CAP_BPF, CAP_NET_ADMIN, raw capture)"
    );
}

/// (proto, src, dst) -> counters.
pub type Truth = BTreeMap<(u8, SocketAddr, SocketAddr), Counters>;

pub struct Tcpdump {
    child: Child,
    path: PathBuf,
    keep: bool,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Tcpdump {
    /// Starts `tcpdump -i IFACE -w FILE FILTER` and waits until it listens.
    pub fn start(iface: &str, filter: &str, tag: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("tokenwire-{tag}-{}.pcap", std::process::id()));
        let mut child = Command::new("tcpdump")
            .args([
                "-i",
                iface,
                "-n",
                "-U",
                "--immediate-mode",
                "--time-stamp-precision=nano",
                "-B",
                "16384",
                "-w",
            ])
            .arg(&path)
            .arg(filter)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (Debian package tcpdump; `cargo xtask setup` installs it)");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "tcpdump exited before listening"
            );
            if line.contains("listening on") {
                break;
            }
        }
        Self {
            child,
            path,
            stderr,
            keep: false,
        }
    }

    /// Stops tcpdump (it flushes), checks it dropped nothing, and groups its IP packets;
    /// other packets (ARP, ...) are added up under `not_ip`.
    pub fn stop(self, link: LinkType) -> Truth {
        self.stop_all(link).0
    }

    /// Like `stop`, keeping the file for the caller (who removes it).
    pub fn stop_keep(mut self, link: LinkType) -> (Truth, PathBuf) {
        self.keep = true;
        let path = self.path.clone();
        (self.stop_all(link).0, path)
    }

    /// Stops tcpdump and returns every IP packet it saw, in order, with its timestamp.
    pub fn stop_packets(mut self, link: LinkType) -> Vec<Packet> {
        self.keep = true;
        let path = self.path.clone();
        let _ = self.stop_all(link);
        let file = std::fs::File::open(&path).unwrap();
        let mut r = PcapReader::new(std::io::BufReader::new(file)).unwrap();
        assert!(r.nanos, "tcpdump was asked for nanosecond timestamps");
        let mut out = Vec::new();
        while let Some(rec) = r.next_record().unwrap() {
            let Ok(p) = parse(link, &rec.data) else {
                continue;
            };
            out.push(Packet {
                ts_ns: u64::from(rec.ts_sec) * 1_000_000_000 + u64::from(rec.ts_frac),
                proto: p.proto,
                src: p.src,
                dst: p.dst,
                ip_bytes: u64::from(rec.orig_len) - p.link_len as u64,
            });
        }
        let _ = std::fs::remove_file(&path);
        out
    }

    pub fn stop_all(mut self, link: LinkType) -> (Truth, Counters) {
        // Immediate mode delivers each packet at once; a moment more for the last writes.
        std::thread::sleep(std::time::Duration::from_millis(200));
        Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut self.stderr, &mut rest);
        self.child.wait().unwrap();
        assert!(
            rest.lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump dropped packets: {rest}"
        );
        let file = std::fs::File::open(&self.path).unwrap();
        let mut r = PcapReader::new(std::io::BufReader::new(file)).unwrap();
        let mut truth = Truth::new();
        let mut not_ip = Counters::default();
        while let Some(rec) = r.next_record().unwrap() {
            let p = match parse(link, &rec.data) {
                Ok(p) => p,
                Err(tokenwire_probe::packet::PacketError::NotIp(_)) => {
                    not_ip += Counters {
                        packets: 1,
                        ip_bytes: 0,
                        link_bytes: u64::from(rec.orig_len),
                    };
                    continue;
                }
                Err(e) => panic!("tcpdump captured a packet we cannot parse: {e}"),
            };
            let ip_bytes = u64::from(rec.orig_len) - p.link_len as u64;
            *truth.entry((p.proto, p.src, p.dst)).or_default() += Counters {
                packets: 1,
                ip_bytes,
                link_bytes: u64::from(rec.orig_len),
            };
        }
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
        (truth, not_ip)
    }
}

/// One packet tcpdump saw.
#[derive(Debug, Clone, Copy)]
pub struct Packet {
    pub ts_ns: u64,
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ip_bytes: u64,
}

/// Arguments that keep a probe run by a test from colliding with another probe: its own
/// spans socket and a free port for the endpoints.
pub fn isolated(tag: &str) -> [String; 4] {
    let spans = std::env::temp_dir()
        .join(format!("tokenwire-test-{tag}-{}", std::process::id()))
        .join("spans.sock");
    [
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--spans".into(),
        spans.display().to_string(),
    ]
}

/// A BPF filter for traffic on any of `ports`.
pub fn port_filter(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| format!("port {p}"))
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `promtool check metrics` (Debian package prometheus) must accept the exposition.
pub fn promtool_check(metrics: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Packets and IP bytes of `pkts` on the connection of `client`, by direction, within
/// [from, to) nanoseconds.
pub fn window(pkts: &[Packet], client: SocketAddr, from: u64, to: u64) -> [u64; 4] {
    let mut out = [0u64; 4];
    for p in pkts
        .iter()
        .filter(|p| p.ts_ns >= from && p.ts_ns < to && (p.src == client || p.dst == client))
    {
        let i = if p.src == client { 0 } else { 2 };
        out[i] += 1;
        out[i + 1] += p.ip_bytes;
    }
    out
}

/// A record's or snapshot's [to_server packets, bytes, to_client packets, bytes].
pub fn figures(v: &Value) -> [u64; 4] {
    let n = |d: &str, f: &str| v[d][f].as_u64().unwrap();
    [
        n("to_server", "packets"),
        n("to_server", "ip_bytes"),
        n("to_client", "packets"),
        n("to_client", "ip_bytes"),
    ]
}

pub fn client_of(r: &Value) -> SocketAddr {
    r["client"].as_str().unwrap().parse().unwrap()
}

pub fn sum(a: [u64; 4], b: [u64; 4]) -> [u64; 4] {
    [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3]]
}
