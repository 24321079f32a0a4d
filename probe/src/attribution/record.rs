//! What attribution produces: a connection's counters at a moment ([`Snapshot`]), the
//! records of requests and connections (GET /api/requests, /api/connections), and the
//! exact split of a shared period.

use super::Req;
use crate::flow::Counters;
use crate::llm::{PassiveDetail, Source};
use crate::spans::Outcome;
use serde::Serialize;

/// A connection's counters by direction at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub to_server: Counters,
    pub to_client: Counters,
}

impl Snapshot {
    pub fn total(&self) -> Counters {
        self.to_server + self.to_client
    }

    /// Whether no counter is below `other`'s (a tuple's counters only grow, unless the
    /// capture forgot the flow and started it again from zero).
    pub fn at_least(&self, other: &Snapshot) -> bool {
        let ge = |a: &Counters, b: &Counters| {
            a.packets >= b.packets && a.ip_bytes >= b.ip_bytes && a.link_bytes >= b.link_bytes
        };
        ge(&self.to_server, &other.to_server) && ge(&self.to_client, &other.to_client)
    }

    /// What happened between `earlier` and `self` (saturating: totals never go back, but
    /// a source that lost a key must not make a period negative).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            to_server: self.to_server.saturating_sub(&earlier.to_server),
            to_client: self.to_client.saturating_sub(&earlier.to_client),
        }
    }
}

impl std::ops::AddAssign for Snapshot {
    fn add_assign(&mut self, o: Self) {
        self.to_server += o.to_server;
        self.to_client += o.to_client;
    }
}

/// How a request's packets were told apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// Every packet of its periods was its own.
    Exact,
    /// Some periods were shared with concurrent streams and split by application bytes.
    Shared,
}

/// One request, as GET /api/requests shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RequestRecord {
    pub id: String,
    pub approach: String,
    /// As the server named it: tls, tcp, http, quic or udp.
    pub transport: &'static str,
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    /// 1 for a connection's first request, 2 for the next, ...
    pub seq_on_connection: u32,
    pub start_unix_ns: u64,
    /// When the probe cut the connection's counters for this request's start (it trails the
    /// server's start by the span's delivery; packets in between belong to the previous
    /// owner).
    pub cut_unix_ns: u64,
    pub first_token_unix_ns: Option<u64>,
    pub end_unix_ns: Option<u64>,
    /// Time to first token as the server saw it.
    pub ttft_ms: Option<f64>,
    pub tokens: u64,
    pub app_bytes: u64,
    pub outcome: Option<Outcome>,
    pub to_server: Counters,
    pub to_client: Counters,
    /// IP bytes, both directions.
    pub wire_bytes: u64,
    pub packets: u64,
    pub bytes_per_token: Option<f64>,
    pub packets_per_token: Option<f64>,
    pub attribution: Quality,
    /// The connection's setup and teardown are included (it served this request only).
    pub includes_connection_overhead: bool,
    /// No more packets will be charged to it.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// How the probe learnt of it: the server's spans, or its packets alone.
    pub source: Source,
    /// What a passively read request's packets showed (docs/passive.md).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passive: Option<Box<PassiveDetail>>,
}

impl RequestRecord {
    /// When its last token passed: read from the packets (passive), else its end (spans).
    pub fn last_token_unix_ns(&self) -> Option<u64> {
        match &self.passive {
            Some(p) => p.last_token_unix_ns,
            None => self.end_unix_ns,
        }
    }
}

/// One connection that served requests, as GET /api/connections shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionRecord {
    pub approach: String,
    pub transport: &'static str,
    pub client: std::net::SocketAddr,
    pub server: std::net::SocketAddr,
    pub requests: u32,
    /// When its first request started (server clock).
    pub first_start_unix_ns: u64,
    pub setup: Snapshot,
    pub teardown: Snapshot,
    /// Everything the connection carried while the probe followed it.
    pub total: Snapshot,
    pub closed_unix_ns: Option<u64>,
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// `r`'s record with `own` as its packets (its periods so far, or final).
pub(super) fn record(r: &Req, own: Snapshot, overhead: bool, is_final: bool) -> RequestRecord {
    let total = own.total();
    let per_token = |x: u64| (r.tokens > 0).then(|| x as f64 / r.tokens as f64);
    RequestRecord {
        id: r.id.to_string(),
        approach: r.approach.clone(),
        transport: r.transport,
        client: r.conn.client,
        server: r.conn.server,
        seq_on_connection: r.seq,
        start_unix_ns: r.start_ns,
        cut_unix_ns: r.cut_ns,
        first_token_unix_ns: r.first_token_ns,
        end_unix_ns: r.end_ns,
        ttft_ms: r
            .first_token_ns
            .map(|f| f.saturating_sub(r.start_ns) as f64 / 1e6),
        tokens: r.tokens,
        app_bytes: r.app_bytes,
        outcome: r.outcome,
        to_server: own.to_server,
        to_client: own.to_client,
        wire_bytes: total.ip_bytes,
        packets: total.packets,
        bytes_per_token: per_token(total.ip_bytes),
        packets_per_token: per_token(total.packets),
        attribution: if r.shared {
            Quality::Shared
        } else {
            Quality::Exact
        },
        includes_connection_overhead: overhead,
        source: Source::Spans,
        passive: None,
        is_final,
    }
}

/// Splits `delta` by `weights` (equal shares when all weights are zero), field by field,
/// with the largest-remainder method: the parts add up to `delta` exactly.
pub fn split(delta: &Snapshot, weights: &[u64]) -> Vec<Snapshot> {
    let n = weights.len();
    if n == 0 {
        return Vec::new();
    }
    let w: Vec<u128> = if weights.iter().all(|&w| w == 0) {
        vec![1; n]
    } else {
        weights.iter().map(|&w| u128::from(w)).collect()
    };
    let sum: u128 = w.iter().sum();
    let share = |x: u64| -> Vec<u64> {
        let x = u128::from(x);
        let mut parts: Vec<u128> = w.iter().map(|wi| x * wi / sum).collect();
        let mut left = x - parts.iter().sum::<u128>();
        let mut order: Vec<usize> = (0..n).collect();
        // Largest remainder first; ties to the earlier owner.
        order.sort_by_key(|&i| std::cmp::Reverse((x * w[i]) % sum));
        for i in order {
            if left == 0 {
                break;
            }
            parts[i] += 1;
            left -= 1;
        }
        parts
            .into_iter()
            .map(|p| u64::try_from(p).unwrap_or(u64::MAX))
            .collect()
    };
    let fields = |c: Counters| (share(c.packets), share(c.ip_bytes), share(c.link_bytes));
    let (sp, sb, sl) = fields(delta.to_server);
    let (cp, cb, cl) = fields(delta.to_client);
    (0..n)
        .map(|i| Snapshot {
            to_server: Counters {
                packets: sp[i],
                ip_bytes: sb[i],
                link_bytes: sl[i],
            },
            to_client: Counters {
                packets: cp[i],
                ip_bytes: cb[i],
                link_bytes: cl[i],
            },
        })
        .collect()
}
