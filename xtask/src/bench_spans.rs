//! `cargo xtask bench-spans`: how fast a release-build probe takes spans, and what they
//! cost it in memory, in two workloads on one real TCP connection on lo:
//!
//! - `abuse`: N starts naming the one connection (as N concurrent streams on one
//!   multiplexed connection would): all but `--max-streams-per-connection` are refused, and
//!   counted;
//! - `keep-alive`: N/2 start/end pairs, one request after the other (every span applies).
//!
//! The sender is a blocking Unix datagram socket, so it goes as fast as the probe drains
//! the socket; the time runs until the probe's counters account for every span sent.

use crate::probe_process::Probe;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn start(id: &str, client: SocketAddr, server: SocketAddr) -> String {
    format!(
        r#"{{"v":1,"type":"start","id":"{id}","approach":"bench","transport":"tcp","client":"{client}","server":"{server}","time_unix_ns":1}}"#
    )
}

fn end(id: &str) -> String {
    format!(
        r#"{{"v":1,"type":"end","id":"{id}","time_unix_ns":2,"tokens":10,"app_bytes":100,"outcome":"ok"}}"#
    )
}

struct Outcome {
    seconds: f64,
    accepted: u64,
    rejected: Vec<(String, u64)>,
    rss_before: u64,
    rss_after: u64,
    peak: u64,
}

fn measure(probe: &Probe, messages: &[String]) -> Result<Outcome> {
    let (accepted0, rejected0) = probe.span_counts()?;
    let rejected0: u64 = rejected0.iter().map(|(_, n)| n).sum();
    let (rss_before, _) = probe.rss_kib();
    let tx = UnixDatagram::unbound()?;
    let path = probe.spans_socket();
    let t0 = Instant::now();
    for m in messages {
        tx.send_to(m.as_bytes(), &path).context("sending a span")?;
    }
    let want = messages.len() as u64;
    loop {
        let (accepted, rejected) = probe.span_counts()?;
        let r: u64 = rejected.iter().map(|(_, n)| n).sum();
        if accepted - accepted0 + r - rejected0 >= want {
            let seconds = t0.elapsed().as_secs_f64();
            let (rss_after, peak) = probe.rss_kib();
            return Ok(Outcome {
                seconds,
                accepted: accepted - accepted0,
                rejected: rejected.into_iter().filter(|(_, n)| *n > 0).collect(),
                rss_before,
                rss_after,
                peak,
            });
        }
        if t0.elapsed() > Duration::from_secs(120) {
            bail!(
                "the probe accounted for {} of {want} spans in 120 s",
                accepted + r
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn run(spans: usize, backend: &str) -> Result<()> {
    crate::run(crate::cargo_cmd().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "tokenwire-probe",
    ]))?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let server = listener.local_addr()?;
    let mut rows = Vec::new();
    for workload in ["abuse", "keep-alive"] {
        let probe = Probe::start(backend, &[])?;
        // One real connection, with a payload each way, so the capture knows it.
        let mut client = TcpStream::connect(server)?;
        let (mut accepted, _) = listener.accept()?;
        client.write_all(b"hello")?;
        accepted.write_all(b"hello")?;
        std::thread::sleep(Duration::from_millis(300));
        let c = client.local_addr()?;
        let messages: Vec<String> = match workload {
            "abuse" => (0..spans)
                .map(|i| start(&format!("s{i}"), c, server))
                .collect(),
            _ => (0..spans / 2)
                .flat_map(|i| {
                    let id = format!("k{i}");
                    [start(&id, c, server), end(&id)]
                })
                .collect(),
        };
        let o = measure(&probe, &messages)?;
        rows.push((workload, messages.len(), o));
    }
    println!(
        "| workload | spans | seconds | spans/s | accepted | rejected (reason) | RSS before → after (peak), MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (w, n, o) in rows {
        let rejected = if o.rejected.is_empty() {
            "0".to_owned()
        } else {
            o.rejected
                .iter()
                .map(|(r, n)| format!("{n} ({r})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {w} | {n} | {:.2} | {:.0} | {} | {rejected} | {:.1} → {:.1} ({:.1}) |",
            o.seconds,
            n as f64 / o.seconds,
            o.accepted,
            o.rss_before as f64 / 1024.0,
            o.rss_after as f64 / 1024.0,
            o.peak as f64 / 1024.0
        );
    }
    Ok(())
}
