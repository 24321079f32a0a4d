//! The wire side of a run, from tokenwire-probe's per-request records (GET /api/requests
//! and /api/connections on the probe's --listen address): total wire bytes, packets and
//! bytes per token per approach, next to the application-level figures, laid out like the
//! reference study's wire table.

use crate::approach::Approach;
use crate::runner::ApproachRun;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The reference's wire bytes per token (baseline, reuse): raw, sse, wt. It counted
/// tcpdump's capture length on macOS's lo0: IP bytes plus a 4-byte loopback header per
/// packet (compare with `lo0 B/tok`).
pub const REFERENCE_B_PER_TOK: [f64; 3] = [372.7, 194.5, 132.0];

/// The loopback header macOS's lo0 (DLT_NULL) adds to every packet in a capture.
pub const LO0_HEADER_BYTES: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("no probe at {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("the probe at {addr} answered {path} with {reason}")]
    BadAnswer {
        addr: SocketAddr,
        path: String,
        reason: String,
    },
}

// The bench reads the probe's JSON API with structs of its own, named `Probe` + the probe's
// type (`ProbeRequest` is the probe's `RequestRecord`, `ProbeConnection` its
// `ConnectionRecord`, `ProbeSnapshot` its `Snapshot`, `ProbeCounters` its `Counters`), each
// with only the fields the bench uses: the bench does not depend on the probe crate
// (docs/architecture.md, "Glossary").

/// The probe's `Counters`: packets and IP bytes (its link bytes are not read).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct ProbeCounters {
    pub packets: u64,
    pub ip_bytes: u64,
}

/// The probe's `Snapshot`: a connection's counters by direction.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct ProbeSnapshot {
    pub to_server: ProbeCounters,
    pub to_client: ProbeCounters,
}

impl ProbeSnapshot {
    fn bytes(&self) -> u64 {
        self.to_server.ip_bytes + self.to_client.ip_bytes
    }
    fn packets(&self) -> u64 {
        self.to_server.packets + self.to_client.packets
    }
}

/// The probe's `RequestRecord` (GET /api/requests): the fields the bench uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeRequest {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub start_unix_ns: u64,
    pub tokens: u64,
    pub wire_bytes: u64,
    pub packets: u64,
    pub attribution: String,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// The probe's `ConnectionRecord` (GET /api/connections): the fields the bench uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeConnection {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub requests: u32,
    pub setup: ProbeSnapshot,
    pub teardown: ProbeSnapshot,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// One approach's wire figures.
#[derive(Debug, Clone, Serialize)]
pub struct WireSummary {
    pub approach: Approach,
    /// Probe records matched to the run's measured requests.
    pub requests: usize,
    pub tokens: u64,
    /// IP bytes: the requests' own plus the setup and teardown of the connections they
    /// used (a single-request connection's are already in its request).
    pub wire_bytes: u64,
    pub packets: u64,
    /// Of which connection setup and teardown of multi-request connections.
    pub overhead_bytes: u64,
    pub bytes_per_token: Option<f64>,
    /// IP bytes plus 4 per packet, per token: the reference's way (lo0 capture length).
    pub lo0_bytes_per_token: Option<f64>,
    pub packets_per_token: Option<f64>,
    /// The requests' own bytes per token, without the setup and teardown of reused
    /// connections: the steady cost of streaming, which handshakes amortise towards.
    pub stream_bytes_per_token: Option<f64>,
    /// Records split with concurrent streams (`shared`), not `exact`.
    pub shared: usize,
    /// Not every record was final when the bench stopped waiting.
    pub incomplete: bool,
    /// The IP versions the requests travelled over (4, 6): each packet's header is 20
    /// bytes longer over IPv6.
    pub ip_versions: Vec<u8>,
}

/// A plain HTTP/1.1 GET of the probe's JSON.
async fn get_json<T: for<'de> Deserialize<'de>>(
    addr: SocketAddr,
    path: &str,
) -> Result<T, WireError> {
    let unreachable = |reason: String| WireError::Unreachable { addr, reason };
    let bad = |reason: String| WireError::BadAnswer {
        addr,
        path: path.to_owned(),
        reason,
    };
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.take(256 << 20).read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no HTTP response".into()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(bad(head.lines().next().unwrap_or("").to_owned()));
    }
    serde_json::from_str(body).map_err(|e| bad(format!("unexpected JSON: {e}")))
}

#[derive(Deserialize)]
struct Requests {
    requests: Vec<ProbeRequest>,
}

#[derive(Deserialize)]
struct Connections {
    connections: Vec<ProbeConnection>,
}

/// Checks that a probe answers at `addr`.
pub async fn check(addr: SocketAddr) -> Result<(), WireError> {
    get_json::<serde_json::Value>(addr, "/healthz")
        .await
        .map(|_| ())
}

/// The wire figures of `run`'s measured requests: the probe's records of the approach that
/// started inside the measured window. Waits (up to `wait`) for them to be final: a
/// connection's last request is final a second after the connection closes.
pub async fn collect(
    addr: SocketAddr,
    run: &ApproachRun,
    wait: Duration,
) -> Result<WireSummary, WireError> {
    let name = run.approach.label();
    let (from, to) = (run.measured_from_unix_ns, run.measured_to_unix_ns);
    let expected = run.records.iter().filter(|r| r.error.is_none()).count();
    let deadline = Instant::now() + wait;
    loop {
        let reqs: Requests = get_json(
            addr,
            &format!("/api/requests?limit=1000000&approach={name}&since_unix_ns={from}"),
        )
        .await?;
        let reqs: Vec<ProbeRequest> = reqs
            .requests
            .into_iter()
            .filter(|r| r.start_unix_ns <= to)
            .collect();
        let conns: Connections =
            get_json(addr, &format!("/api/connections?approach={name}")).await?;
        let used: BTreeSet<(SocketAddr, SocketAddr)> =
            reqs.iter().map(|r| (r.client, r.server)).collect();
        let conns: Vec<ProbeConnection> = conns
            .connections
            .into_iter()
            .filter(|c| used.contains(&(c.client, c.server)))
            .collect();
        let done = reqs.len() >= expected
            && reqs.iter().all(|r| r.is_final)
            && conns.iter().all(|c| c.is_final);
        if done || Instant::now() >= deadline {
            return Ok(summarise(run.approach, &reqs, &conns, !done));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn summarise(
    approach: Approach,
    reqs: &[ProbeRequest],
    conns: &[ProbeConnection],
    incomplete: bool,
) -> WireSummary {
    let tokens: u64 = reqs.iter().map(|r| r.tokens).sum();
    let mut wire_bytes: u64 = reqs.iter().map(|r| r.wire_bytes).sum();
    let mut packets: u64 = reqs.iter().map(|r| r.packets).sum();
    let mut overhead_bytes = 0;
    for c in conns.iter().filter(|c| c.requests > 1) {
        overhead_bytes += c.setup.bytes() + c.teardown.bytes();
        packets += c.setup.packets() + c.teardown.packets();
    }
    wire_bytes += overhead_bytes;
    let mut w = WireSummary {
        approach,
        requests: reqs.len(),
        tokens,
        wire_bytes,
        packets,
        overhead_bytes,
        bytes_per_token: None,
        lo0_bytes_per_token: None,
        packets_per_token: None,
        stream_bytes_per_token: None,
        shared: reqs.iter().filter(|r| r.attribution == "shared").count(),
        incomplete,
        ip_versions: reqs
            .iter()
            .map(|r| if r.server.is_ipv6() { 6 } else { 4 })
            .collect::<BTreeSet<u8>>()
            .into_iter()
            .collect(),
    };
    w.per_token();
    w
}

impl WireSummary {
    fn per_token(&mut self) {
        let tokens = self.tokens;
        let per = |x: u64| (tokens > 0).then(|| x as f64 / tokens as f64);
        self.bytes_per_token = per(self.wire_bytes);
        self.lo0_bytes_per_token = per(self.wire_bytes + LO0_HEADER_BYTES * self.packets);
        self.packets_per_token = per(self.packets);
        self.stream_bytes_per_token = per(self.wire_bytes - self.overhead_bytes);
    }

    /// Counts `n` more tokens per request (the reference counted WebTransport's end frame).
    pub fn add_tokens_per_request(&mut self, n: u64) {
        self.tokens += n * self.requests as u64;
        self.per_token();
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The reference's wire table, plus packets per token, the bytes of connection setup and
/// teardown included (a reused connection's handshakes, paid once), and the ratios next to
/// the reference's.
pub fn markdown(wire: &[WireSummary], app_b_per_tok: &[(Approach, Option<f64>)]) -> String {
    let mut s = String::from(
        "| Approach | Wire Bytes | Packets | Wire B/tok | lo0 B/tok | Pkts/tok | App B/tok | Handshakes etc. | Stream B/tok | Requests |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for w in wire {
        let app = app_b_per_tok
            .iter()
            .find(|(a, _)| *a == w.approach)
            .and_then(|(_, b)| *b);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {}{} |",
            w.approach.title(),
            thousands(w.wire_bytes),
            thousands(w.packets),
            w.bytes_per_token.map_or("-".into(), |b| format!("{b:.1}")),
            w.lo0_bytes_per_token
                .map_or("-".into(), |b| format!("{b:.1}")),
            w.packets_per_token
                .map_or("-".into(), |p| format!("{p:.2}")),
            app.map_or("-".into(), |b| format!("{b:.1}")),
            thousands(w.overhead_bytes),
            w.stream_bytes_per_token
                .map_or("-".into(), |b| format!("{b:.1}")),
            w.requests,
            if w.incomplete {
                " (not all final)"
            } else if w.shared > 0 {
                " (some shared)"
            } else {
                ""
            }
        );
    }
    s.push_str(
        "\nWire B/tok: IP bytes (IP header onward) per token. lo0 B/tok adds the 4-byte \
         loopback header of every packet, as captures on macOS's lo0 count: the reference's \
         figures are lo0 B/tok.\n",
    );
    let of = |a: Approach| {
        wire.iter()
            .find(|w| w.approach == a)
            .and_then(|w| w.lo0_bytes_per_token)
    };
    if let (Some(raw), Some(sse), Some(wt)) =
        (of(Approach::Raw), of(Approach::Sse), of(Approach::Wt))
    {
        let [r0, r1, r2] = REFERENCE_B_PER_TOK;
        let _ = write!(
            s,
            "\nlo0 B/tok raw : sse : wt = {raw:.0} : {sse:.0} : {wt:.0} = {:.2} : {:.2} : 1 \
             (reference {r0:.0} : {r1:.0} : {r2:.0} = {:.2} : {:.2} : 1)\n",
            raw / wt,
            sse / wt,
            r0 / r2,
            r1 / r2,
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overheads_of_shared_connections_are_added_once() {
        let c = ProbeCounters {
            packets: 2,
            ip_bytes: 100,
        };
        let d = ProbeSnapshot {
            to_server: c,
            to_client: c,
        };
        let r = |client: &str, tokens, bytes| ProbeRequest {
            client: client.parse().unwrap(),
            server: "127.0.0.1:8080".parse().unwrap(),
            start_unix_ns: 1,
            tokens,
            wire_bytes: bytes,
            packets: 10,
            attribution: "exact".into(),
            is_final: true,
        };
        let reqs = [r("127.0.0.1:1", 10, 1000), r("127.0.0.1:1", 10, 1000)];
        let conns = [ProbeConnection {
            client: "127.0.0.1:1".parse().unwrap(),
            server: "127.0.0.1:8080".parse().unwrap(),
            requests: 3,
            setup: d,
            teardown: d,
            is_final: true,
        }];
        let w = summarise(Approach::Sse, &reqs, &conns, false);
        assert_eq!(w.wire_bytes, 2400);
        assert_eq!(w.packets, 28);
        assert_eq!(w.bytes_per_token, Some(120.0));
        let table = markdown(&[w], &[(Approach::Sse, Some(12.9))]);
        assert!(
            // lo0: (2,400 + 4 x 28 packets) / 20 tokens.
            table.contains(
                "| HTTP SSE | 2,400 | 28 | 120.0 | 125.6 | 1.40 | 12.9 | 400 | 100.0 | 2 |"
            ),
            "{table}"
        );
    }
}
