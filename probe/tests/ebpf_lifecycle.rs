//! The probe leaves nothing behind and says what it lacks: after `kill -9` and a new start
//! exactly one of its programs is attached; SIGTERM detaches it and prints the final table;
//! without privileges it names them and points at the pcap backend. Runs as root.

mod common;

use aya::programs::tc::{SchedClassifier, TcAttachType};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tokenwire-probe");

/// Our programs attached to lo's egress (kernel names are cut to 15 bytes).
fn attached() -> usize {
    let (_, progs) = SchedClassifier::query_tcx("lo", TcAttachType::Egress).unwrap();
    progs
        .iter()
        .filter(|p| p.name_as_str().is_some_and(|n| n.starts_with("tokenwire_")))
        .count()
}

fn start() -> Child {
    let mut child = Command::new(BIN)
        .args(["run", "--iface", "lo", "--interval", "60"])
        .args(common::isolated("lifecycle"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("backend ebpf on lo"), "{line}");
    // Keep reading stderr: a closed pipe would fail the probe's next line.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut rest);
    });
    child
}

fn wait_until(cond: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn restart_after_kill_9_leaves_one_program_and_sigterm_leaves_none() {
    common::require_root();
    let before = attached();
    let mut first = start();
    assert_eq!(attached(), before + 1);
    Command::new("kill")
        .args(["-9", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait().unwrap();
    // TCX links belong to the process: gone with it.
    assert!(
        wait_until(|| attached() == before),
        "a killed probe left its program attached"
    );
    let mut second = start();
    assert_eq!(
        attached(),
        before + 1,
        "one program after a restart, not two"
    );
    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(second.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(second.wait().unwrap().success());
    assert!(
        out.contains("direction") && out.contains("flows tracked"),
        "final table on exit: {out}"
    );
    assert_eq!(attached(), before);
}

#[test]
fn without_privileges_it_names_them_and_points_at_pcap() {
    common::require_root();
    let unprivileged = |backend: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ])
            .args([BIN, "run", "--backend", backend, "--duration", "1"])
            .args(common::isolated(&format!("fallback-{backend}")))
            .output()
            .unwrap()
    };
    let out = unprivileged("ebpf");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN") && err.contains("--backend pcap"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    // auto tries eBPF, says why it falls back, then libpcap says what it lacks.
    let out = unprivileged("auto");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("falling back to the pcap backend") && err.contains("CAP_NET_RAW"),
        "{err}"
    );
}

#[test]
fn auto_falls_back_to_pcap_when_ebpf_cannot_load_and_says_so() {
    common::require_root();
    // Root without CAP_BPF, CAP_SYS_ADMIN and CAP_PERFMON: no eBPF; CAP_NET_RAW keeps libpcap.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-bpf,-sys_admin,-perfmon", "--inh-caps=-all"])
        .args([BIN, "run", "--iface", "lo", "--duration", "1", "--json"])
        .args(common::isolated("unprivileged-json"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("eBPF unavailable") && err.contains("falling back to the pcap backend"),
        "{err}"
    );
    assert!(err.contains("backend pcap on lo"), "{err}");
    // And --backend ebpf refuses rather than falling back.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-bpf,-sys_admin,-perfmon", "--inh-caps=-all"])
        .args([BIN, "run", "--backend", "ebpf", "--duration", "1"])
        .args(common::isolated("unprivileged-ebpf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}
