//! What the measuring tasks read from a running probe: its Prometheus exposition (a plain
//! HTTP/1.1 GET, no client library needed) and a process's memory from /proc.

use std::io::{Read, Write};
use std::net::SocketAddr;

/// GET /metrics from the probe's API at `api`.
pub fn metrics(api: SocketAddr) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(api)?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The sum of every sample in `text` whose line starts with `prefix`.
pub fn sample(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `VmHWM:`), 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}
