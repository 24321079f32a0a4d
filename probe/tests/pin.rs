//! Restart without a gap (`run --pin`, docs/reliability.md): during one 100,000-packet UDP
//! stream on lo, the probe is stopped with SIGTERM and a second one started on the same pin
//! directory, which is then killed with -9 and followed by a third. The third's final wire
//! counters equal the sender's count and tcpdump's, and a real Prometheus scraping every
//! 200 ms saw the series only go up. A classifier of another build is replaced with the
//! counts kept; pinned maps of another format are refused with a clear message; `detach`
//! removes it all. Runs as root.

mod common;

use common::prometheus::Prometheus;
use common::{Tcpdump, require_root};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokenwire_probe::packet::LinkType;
use tokenwire_probe_common::launch::{ProbeLaunch, RunningProbe};

const BIN: &str = env!("CARGO_BIN_EXE_tokenwire-probe");
const PACKETS: u64 = 100_000;
/// How long the stream lasts: long enough for two restarts (a debug build's probe takes
/// about 3 s to load and verify its programs).
const STREAM: Duration = Duration::from_secs(16);
const LABEL: &str = "pin_test";

fn probe(dir: &Path, listen: SocketAddr, port: u16) -> RunningProbe {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--iface", "lo", "--backend", "ebpf", "--quiet"])
        .args(["--interval", "3600", "--no-spans", "--pin"])
        .arg(dir)
        .args(["--listen", &listen.to_string()])
        .args(["--label", &format!("{port}={LABEL}")])
        .stdout(Stdio::null());
    ProbeLaunch::new(cmd).start().unwrap()
}

/// The wire counters of the stream's series (to the server): packets, IP bytes.
fn wire(api: SocketAddr) -> (u64, u64) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let series = format!("{{approach=\"{LABEL}\",transport=\"udp\",direction=\"to_server\"}} ");
    let get = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{series}")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    };
    (
        get("tokenwire_wire_packets_total"),
        get("tokenwire_wire_bytes_total"),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn detach(dir: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["detach", "--pin"])
        .arg(dir)
        .output()
        .unwrap()
}

/// Sends PACKETS datagrams of 10..=99 bytes evenly over STREAM; returns (packets, IP bytes).
fn stream(to: SocketAddr) -> (u64, u64) {
    let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut bytes = 0;
    for i in 0..PACKETS {
        let due = STREAM.mul_f64(i as f64 / PACKETS as f64);
        if let Some(wait) = due.checked_sub(start.elapsed())
            && wait > Duration::from_millis(1)
        {
            std::thread::sleep(wait);
        }
        let len = 10 + (i % 90) as usize;
        tx.send_to(&vec![b'x'; len][..], to).unwrap();
        bytes += 20 + 8 + len as u64;
    }
    (PACKETS, bytes)
}

/// However the test ends: its probes stopped, the classifier detached.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(self.0.as_os_str())
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = detach(&self.0);
    }
}

#[test]
fn restarts_with_pinned_maps_lose_no_packet_and_reset_no_counter() {
    require_root();
    let dir = PathBuf::from(format!("/sys/fs/bpf/tokenwire-test-{}", std::process::id()));
    let _ = detach(&dir);
    let _cleanup = Cleanup(dir.clone());
    // The stream's server: bound, so no ICMP answers; never read (drops after lo's egress
    // are counted by both sides alike).
    let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = rx.local_addr().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();

    let mut first = probe(&dir, listen, to.port());
    let prom = Prometheus::start(listen, "200ms");
    let dump = Tcpdump::start("lo", &format!("udp and dst port {}", to.port()), "pin");
    let sender = std::thread::spawn(move || stream(to));

    std::thread::sleep(Duration::from_secs(2));
    let before_term = wire(listen);
    assert!(before_term.0 > 0, "the first probe counted nothing");
    first.stop("TERM");
    let mut second = probe(&dir, listen, to.port());
    let after_term = wire(listen);
    assert!(
        after_term.0 > before_term.0,
        "the second probe continues the first's counters ({after_term:?} after {before_term:?})"
    );
    std::thread::sleep(Duration::from_secs(2));
    let before_kill = wire(listen);
    second.stop("KILL");
    let mut third = probe(&dir, listen, to.port());
    let after_kill = wire(listen);
    assert!(
        after_kill.0 > before_kill.0,
        "the third probe continues the second's ({after_kill:?} after {before_kill:?})"
    );
    assert!(
        after_kill.0 < PACKETS,
        "the stream still ran when the third probe took over ({after_kill:?})"
    );
    let sent = sender.join().unwrap();
    // The third probe's next counter read (every second), and a last scrape.
    std::thread::sleep(Duration::from_millis(2_500));
    let counted = wire(listen);
    let truth = dump.stop(LinkType::Ethernet);
    let seen = truth
        .iter()
        .filter(|((proto, _, dst), _)| *proto == 17 && *dst == to)
        .fold((0, 0), |(p, b), (_, c)| (p + c.packets, b + c.ip_bytes));
    eprintln!(
        "sent {sent:?}, tcpdump {seen:?}, probe {counted:?}; around SIGTERM {before_term:?} -> {after_term:?}, around kill -9 {before_kill:?} -> {after_kill:?}"
    );
    assert_eq!(seen, sent, "tcpdump saw every datagram sent");
    assert_eq!(
        counted, sent,
        "the wire counters equal the sender's count and tcpdump's"
    );

    // Prometheus saw the series across the three probes, never going down.
    let series = format!(r#"{{__name__=~"tokenwire_(wire|link)_.+_total",approach="{LABEL}"}}"#);
    let names = prom.query(&format!("count by (__name__) ({series})"));
    assert_eq!(names.len(), 3, "{names:#?}");
    for n in &names {
        let name = n["metric"]["__name__"].as_str().unwrap();
        let resets = prom.query(&format!(r#"resets({name}{{approach="{LABEL}"}}[2m])"#));
        assert!(!resets.is_empty(), "{name}: no samples");
        for r in &resets {
            assert_eq!(r["value"][1], "0", "{name} reset: {r}");
        }
    }
    let samples = prom.query(&format!(
        r#"count_over_time(tokenwire_wire_packets_total{{approach="{LABEL}",direction="to_server"}}[2m])"#
    ));
    let n: f64 = samples[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(n >= 20.0, "Prometheus scraped the probes {n} times");

    // A classifier of another build (same map format) is replaced, the counts kept.
    third.stop("TERM");
    let meta = || {
        let data = aya::maps::MapData::from_pin(dir.join("PIN_META")).unwrap();
        let map: aya::maps::Array<_, tokenwire_probe_common::PinMeta> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
        map
    };
    let mut m = meta().get(&0, 0).unwrap();
    let own_hash = m.object_hash;
    m.object_hash = 1;
    meta().set(0, m, 0).unwrap();
    let mut fourth = probe(&dir, listen, to.port());
    assert_eq!(
        wire(listen),
        sent,
        "the replacing probe continues the counts"
    );
    assert_eq!(meta().get(&0, 0).unwrap().object_hash, own_hash);
    fourth.stop("TERM");

    // Pinned maps of another format are refused, with what to do.
    let mut m = meta().get(&0, 0).unwrap();
    m.format = 999;
    meta().set(0, m, 0).unwrap();
    let out = Command::new(BIN)
        .args([
            "run",
            "--iface",
            "lo",
            "--backend",
            "ebpf",
            "--quiet",
            "--no-spans",
        ])
        .args(["--no-listen", "--duration", "1", "--pin"])
        .arg(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("format 999") && err.contains("tokenwire-probe detach --pin"),
        "{err}"
    );

    // detach removes the links, the maps and the carried state.
    let out = detach(&dir);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("1 links, 9 maps, the carried flow table"),
        "{said}"
    );
    assert!(!dir.exists());
    let out = detach(&dir);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is pinned there"));
}
