//! What the measuring tasks read from a running probe: its Prometheus exposition (a plain
//! HTTP/1.1 GET, no client library needed) and its histograms, and a process's memory and
//! CPU from /proc.

use std::io::{Read, Write};
use std::net::SocketAddr;

/// GET /metrics from the probe's API at `api`.
pub fn metrics(api: SocketAddr) -> std::io::Result<String> {
    get(api, "/metrics")
}

/// GET `path` from the probe's API at `api` (HTTP/1.0: the body is the rest of the
/// stream); an error unless it answers 200.
pub fn get(api: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect_timeout(&api, std::time::Duration::from_secs(2))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: probe\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    if !head.lines().next().is_some_and(|l| l.contains(" 200 ")) {
        return Err(std::io::Error::other(format!(
            "GET {path}: {}",
            head.lines().next().unwrap_or("no answer")
        )));
    }
    Ok(body.to_owned())
}

/// How many descriptors process `pid` has open (0 when unreadable).
pub fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
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

/// The cumulative buckets `(le, count)` of an unlabelled histogram `name` in `text`, in
/// the exposition's order (ascending `le`, `+Inf` last).
pub fn histogram(text: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let (le, value) = rest.split_once('"')?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.rsplit(' ').next()?.parse::<f64>().ok()? as u64))
        })
        .collect()
}

/// The `q` quantile of what a histogram gained between two readings of it, as the upper
/// bound of its bucket (`None` without observations in between).
pub fn quantile_between(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let gained: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, n)| {
            let was = before.iter().find(|(b, _)| *b == le).map_or(0, |(_, n)| *n);
            (le, n.saturating_sub(was))
        })
        .collect();
    let total = gained.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    gained.iter().find(|(_, n)| *n >= rank).map(|(le, _)| *le)
}

/// CPU time the whole machine spent busy and in total so far, in clock ticks (the first
/// line of /proc/stat: busy is everything but idle and iowait).
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_what_the_histogram_gained() {
        let text = "# TYPE lag histogram\nlag_bucket{le=\"0.001\"} 10\nlag_bucket{le=\"0.01\"} 19\nlag_bucket{le=\"+Inf\"} 20\nlag_count 20\n";
        let after = histogram(text, "lag");
        assert_eq!(after, vec![(0.001, 10), (0.01, 19), (f64::INFINITY, 20)]);
        let before = vec![(0.001, 10), (0.01, 10), (f64::INFINITY, 10)];
        // Gained: 0 under 1 ms, 9 under 10 ms, 1 beyond.
        assert_eq!(quantile_between(&before, &after, 0.5), Some(0.01));
        assert_eq!(quantile_between(&before, &after, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile_between(&after, &after, 0.99), None);
        assert_eq!(quantile_between(&[], &after, 0.5), Some(0.001));
    }
}
