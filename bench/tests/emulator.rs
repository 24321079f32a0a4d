//! The link emulator against known answers, on real TUN devices between network
//! namespaces: idle RTT, UDP loss, TCP goodput at a set bandwidth, and the queueing delay
//! of a full queue. Small bounded runs. Runs as root.

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, Instant};
use tokenwire_bench::netem::emulator::{Emulator, EmulatorConfig};
use tokenwire_bench::netem::model::{QueueLimit, Shape};

/// The tests measure time; run them one at a time (the test harness runs a binary's tests
/// in parallel, and a 2-core machine is then busy enough to blur a 2 ms bound).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the emulator tests create namespaces and TUN devices: run them as root (CI does)"
    );
}

fn ms(x: u64) -> Duration {
    Duration::from_millis(x)
}

fn emulator(up: Shape, down: Shape) -> Emulator {
    Emulator::start(&EmulatorConfig {
        up,
        down,
        seed: 42,
        ..EmulatorConfig::default()
    })
    .unwrap()
}

/// A UDP echo on the server side; returns its address.
fn udp_echo(em: &Emulator) -> SocketAddr {
    let s = UdpSocket::bind((em.server_addr, 0)).unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    addr
}

/// Median RTT of 15 small probes from the client side.
fn median_rtt(em: &Emulator, echo: SocketAddr) -> Duration {
    let _ns = em.enter().unwrap();
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    for i in 0..15u8 {
        let t = Instant::now();
        s.send_to(&[i; 32], echo).unwrap();
        s.recv_from(&mut buf).unwrap();
        rtts.push(t.elapsed());
        std::thread::sleep(ms(5));
    }
    rtts.sort();
    rtts[rtts.len() / 2]
}

fn delay(d: u64) -> Shape {
    Shape {
        delay: ms(d),
        ..Shape::NONE
    }
}

#[test]
fn idle_rtt_is_twice_the_delay_both_ways_and_once_up_only() {
    require_root();
    let _serial = serial();
    let both = emulator(delay(40), delay(40));
    let rtt = median_rtt(&both, udp_echo(&both));
    eprintln!("both, 40 ms each way: median RTT {rtt:?}");
    assert!(
        rtt >= ms(80) && rtt <= ms(82),
        "both directions, 40 ms each: RTT {rtt:?}"
    );
    let up = emulator(delay(40), Shape::NONE);
    let rtt = median_rtt(&up, udp_echo(&up));
    eprintln!("up only, 40 ms: median RTT {rtt:?}");
    assert!(rtt >= ms(40) && rtt <= ms(42), "up only: RTT {rtt:?}");
    // The emulator's own timers: on a shared 2-core VM the scheduler can make one wake-up
    // late now and then (one of 15 by 2.3 ms was seen); more than that, or by more than a
    // scheduling slice, is the emulator's fault.
    let r = up.report();
    assert!(
        r.up.late <= 1 && r.up.max_late_us < 5_000,
        "timers late by more than 1 ms: {r:?}"
    );
}

#[test]
fn udp_loss_over_2000_probes_is_inside_the_95_percent_interval() {
    require_root();
    let _serial = serial();
    let em = emulator(
        Shape {
            loss: 0.05,
            ..Shape::NONE
        },
        Shape::NONE,
    );
    let server = UdpSocket::bind((em.server_addr, 0)).unwrap();
    server.set_read_timeout(Some(ms(500))).unwrap();
    let to = server.local_addr().unwrap();
    // Read while the client sends: a socket buffer holds a few hundred datagrams only.
    let counter = std::thread::spawn(move || {
        let mut got = 0u32;
        let mut buf = [0u8; 16];
        while server.recv_from(&mut buf).is_ok() {
            got += 1;
        }
        got
    });
    {
        let _ns = em.enter().unwrap();
        let c = UdpSocket::bind("0.0.0.0:0").unwrap();
        for i in 0..2000u16 {
            c.send_to(&i.to_be_bytes(), to).unwrap();
            if i % 50 == 49 {
                std::thread::sleep(ms(2)); // stay far from any queue limit
            }
        }
    }
    let lost = 2000 - counter.join().unwrap();
    eprintln!("5% loss: {lost} of 2000 lost");
    // Binomial(2000, 0.05): mean 100, sd 9.75; 95% interval 81..=119.
    assert!((81..=119).contains(&lost), "lost {lost} of 2000");
    let r = em.report();
    assert_eq!(r.up.stats.lost, lost as u64, "{r:?}");
    assert_eq!(r.up.stats.queue_drops, 0);
}

#[test]
fn tcp_goodput_at_100_kbit_is_the_payload_share_of_the_rate() {
    require_root();
    let _serial = serial();
    let em = emulator(
        Shape::NONE,
        Shape {
            rate_bps: Some(100_000),
            ..Shape::NONE
        },
    );
    // The server sends 60 KB down the 100 kbit/s direction.
    let l = TcpListener::bind((em.server_addr, 0)).unwrap();
    let to = l.local_addr().unwrap();
    let sender = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(&vec![7u8; 60_000]).unwrap();
    });
    let (first, last, after_first) = {
        let _ns = em.enter().unwrap();
        let mut c = std::net::TcpStream::connect(to).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = vec![0u8; 65_536];
        let mut total = 0;
        let mut first = None;
        let mut after_first = 0;
        let mut last = Instant::now();
        while total < 60_000 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed early at {total}");
            let now = Instant::now();
            if first.is_none() {
                first = Some(now);
            } else {
                after_first += n;
            }
            total += n;
            last = now;
        }
        (first.unwrap(), last, after_first)
    };
    sender.join().unwrap();
    let kbit = after_first as f64 * 8.0 / (last - first).as_secs_f64() / 1e3;
    eprintln!("100 kbit/s: goodput {kbit:.2} kbit/s");
    // 1448 payload bytes per 1500-byte packet (TCP timestamps on): 96.5 kbit/s.
    assert!(
        (kbit - 96.5).abs() <= 96.5 * 0.05,
        "goodput {kbit:.1} kbit/s, expected 96.5 +- 5%"
    );
}

#[test]
fn a_50_packet_queue_shows_its_queueing_delay_and_drops_the_rest() {
    require_root();
    let _serial = serial();
    // 1 Mbit/s: a 1028-byte IP packet (1000 bytes of UDP payload) takes 8.224 ms.
    let em = emulator(
        Shape {
            rate_bps: Some(1_000_000),
            queue: QueueLimit::Packets(50),
            ..Shape::NONE
        },
        Shape::NONE,
    );
    let server = UdpSocket::bind((em.server_addr, 0)).unwrap();
    server.set_read_timeout(Some(ms(1500))).unwrap();
    let to = server.local_addr().unwrap();
    let sent_at = {
        let _ns = em.enter().unwrap();
        let c = UdpSocket::bind("0.0.0.0:0").unwrap();
        let t = Instant::now();
        for i in 0..60u8 {
            c.send_to(&[i; 1000], to).unwrap();
        }
        t
    };
    let mut arrivals = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = server.recv_from(&mut buf) {
        assert_eq!(n, 1000);
        arrivals.push(sent_at.elapsed());
    }
    assert_eq!(arrivals.len(), 50, "the queue holds 50; 10 dropped");
    let r = em.report();
    assert_eq!(r.up.stats.queue_drops, 10, "{r:?}");
    // The 50th leaves after 50 serialisations: 411 ms.
    let last = *arrivals.last().unwrap();
    eprintln!(
        "queue 50 at 1 Mbit/s: {} arrived, the last after {last:?}",
        arrivals.len()
    );
    assert!(
        last >= Duration::from_micros(411_200) && last <= ms(420),
        "50th packet after {last:?}"
    );
}

#[test]
fn shape_runs_a_command_on_the_client_side_and_a_crash_leaves_nothing_for_long() {
    require_root();
    let _serial = serial();
    let bin = env!("CARGO_BIN_EXE_tokenwire-bench");
    // The command sees the server side's address and runs in the client namespace.
    let out = std::process::Command::new(bin)
        .args(["shape", "--delay", "5ms", "--", "sh", "-c"])
        .arg("echo $TOKENWIRE_SERVER_ADDR; ip -o -4 addr show | grep -c twc; exit 3")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "exits with the command's status"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let addr: std::net::Ipv4Addr = lines.next().unwrap().parse().unwrap();
    assert_eq!(addr.octets()[..2], [10, 77]);
    assert_eq!(lines.next(), Some("1"), "the client-side device is there");
    // kill -9 mid-run leaves a namespace behind; the next start removes it.
    let mut child = std::process::Command::new(bin)
        .args(["shape", "--", "sleep", "30"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ns = format!("tokenwire-{}-0", child.id());
    let t = Instant::now();
    while !std::path::Path::new(&format!("/var/run/netns/{ns}")).exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no namespace {ns}");
        std::thread::sleep(ms(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(std::path::Path::new(&format!("/var/run/netns/{ns}")).exists());
    let em = emulator(Shape::NONE, Shape::NONE);
    assert!(
        !std::path::Path::new(&format!("/var/run/netns/{ns}")).exists(),
        "the stale namespace was removed at start"
    );
    let netns = em.netns.clone();
    drop(em);
    assert!(!std::path::Path::new(&format!("/var/run/netns/{netns}")).exists());
}

#[test]
fn a_small_matrix_writes_its_report_with_wire_figures() {
    require_root();
    let _serial = serial();
    let bin = env!("CARGO_BIN_EXE_tokenwire-bench");
    let probe = std::path::Path::new(bin).with_file_name("tokenwire-probe");
    assert!(
        probe.exists(),
        "{} missing: build the workspace (cargo build) so the matrix finds its probe",
        probe.display()
    );
    let out = std::env::temp_dir().join(format!("tokenwire-matrix-test-{}", std::process::id()));
    let status = std::process::Command::new(bin)
        .args([
            "matrix",
            "--profiles",
            "baseline,latency-200ms",
            "--directions",
            "up",
        ])
        .args([
            "--modes",
            "reuse",
            "--limit",
            "1",
            "--mean-tokens",
            "10",
            "--speed",
            "5",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(out.join("RESULTS.md")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    for f in ["ttft.svg", "wire_bytes_per_token.svg", "tbt.svg"] {
        let svg = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<rect x="), "{f}");
    }
    let _ = std::fs::remove_dir_all(&out);
    let cells = json["results"]["cells"].as_array().unwrap();
    let approaches = tokenwire_bench::approach::Approach::ALL.len();
    assert_eq!(cells.len(), 2 * approaches, "2 profiles x every approach");
    for c in cells {
        assert_eq!(c["summary"]["failed"], 0, "{c}");
        assert!(c["wire"]["bytes_per_token"].as_f64().unwrap() > 20.0, "{c}");
    }
    // 200 ms one way on `up`: TTFT grows by the request's one extra trip.
    let ttft = |p: &str| {
        cells
            .iter()
            .filter(|c| c["profile"] == p)
            .map(|c| c["summary"]["p50_ttft_ms"].as_f64().unwrap())
            .sum::<f64>()
            / approaches as f64
    };
    let delta = ttft("latency-200ms") - ttft("baseline");
    assert!((195.0..215.0).contains(&delta), "TTFT delta {delta}");
    assert!(
        md.contains("### Wire bytes (reuse, direction `up`)"),
        "{md}"
    );
    assert!(md.contains("## Analysis"));
}

#[test]
fn a_reference_matrix_sends_sse_over_ipv6_and_counts_as_the_reference() {
    require_root();
    let _serial = serial();
    let bin = env!("CARGO_BIN_EXE_tokenwire-bench");
    let out = std::env::temp_dir().join(format!("tokenwire-refmatrix-test-{}", std::process::id()));
    let status = std::process::Command::new(bin)
        .args([
            "matrix",
            "--reference",
            "--profiles",
            "baseline",
            "--directions",
            "up",
        ])
        .args([
            "--modes",
            "reuse",
            "--limit",
            "2",
            "--mean-tokens",
            "10",
            "--speed",
            "5",
        ])
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let md = std::fs::read_to_string(out.join("RESULTS.md")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    assert!(md.contains("- Setup: the reference's"), "{md}");
    for c in json["results"]["cells"].as_array().unwrap() {
        assert_eq!(c["summary"]["failed"], 0, "{c}");
        let w = &c["wire"];
        // SSE went over the link's IPv6, the others over IPv4, as on the reference's Mac.
        let v = if c["approach"] == "sse" { 6 } else { 4 };
        assert_eq!(w["ip_versions"], serde_json::json!([v]), "{c}");
        let (bytes, packets, tokens) = (
            w["wire_bytes"].as_f64().unwrap(),
            w["packets"].as_f64().unwrap(),
            w["tokens"].as_f64().unwrap(),
        );
        let lo0 = w["lo0_bytes_per_token"].as_f64().unwrap();
        assert!((lo0 - (bytes + 4.0 * packets) / tokens).abs() < 1e-6, "{c}");
        // Two measured requests: P50 is the mean of the two TTFTs.
        let t: Vec<f64> = c["ttfts_ms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let p50 = c["summary"]["p50_ttft_ms"].as_f64().unwrap();
        assert!((p50 - (t[0] + t[1]) / 2.0).abs() < 1e-6, "{c}");
    }
}
