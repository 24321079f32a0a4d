//! The live table and JSON lines `tokenwire-probe run` prints.

use crate::health::Health;
use crate::table::FlowRow;
use std::fmt::Write as _;

/// Interface index -> name, for display.
pub fn iface_name(index: u32, names: &[(u32, String)]) -> String {
    names
        .iter()
        .find(|(i, _)| *i == index)
        .map_or_else(|| index.to_string(), |(_, n)| n.clone())
}

/// A fixed-width table, one line per flow direction.
pub fn table(rows: &[FlowRow], names: &[(u32, String)]) -> String {
    let mut s = format!(
        "{:<6} {:<13} {:<6} {:<44} {:<9} {:>9} {:>12}\n",
        "iface", "approach", "proto", "client -> server", "direction", "packets", "ip_bytes"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<6} {:<13} {:<6} {:<44} {:<9} {:>9} {:>12}",
            iface_name(r.ifindex, names),
            r.approach,
            r.transport.as_str(),
            format!("{} -> {}", r.client, r.server),
            r.direction.as_str(),
            r.counters.packets,
            r.counters.ip_bytes
        );
    }
    s
}

/// A row as JSON, with its interface's name.
fn row_json(r: &FlowRow, names: &[(u32, String)]) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("iface".into(), iface_name(r.ifindex, names).into());
    }
    v
}

/// The rows as a JSON array (GET /api/flows).
pub fn flows_json(rows: &[FlowRow], names: &[(u32, String)]) -> Vec<serde_json::Value> {
    rows.iter().map(|r| row_json(r, names)).collect()
}

/// One JSON object per row, tagged with the snapshot number; `final` on the last one.
pub fn json_lines(
    rows: &[FlowRow],
    names: &[(u32, String)],
    snapshot: u64,
    is_final: bool,
) -> String {
    let mut s = String::new();
    for r in rows {
        let mut v = row_json(r, names);
        if let Some(o) = v.as_object_mut() {
            o.insert("snapshot".into(), snapshot.into());
            o.insert("final".into(), is_final.into());
        }
        let _ = writeln!(s, "{v}");
    }
    s
}

/// What `run` prints at each snapshot: the table and the health line, or JSON lines.
pub fn snapshot(
    rows: &[FlowRow],
    names: &[(u32, String)],
    health: &Health,
    evictions: u64,
    snapshot: u64,
    is_final: bool,
    json: bool,
) -> String {
    if json {
        json_lines(rows, names, snapshot, is_final)
            + &health_json(health, evictions, snapshot, is_final)
    } else {
        format!(
            "{}{}  evictions {}\n\n",
            table(rows, names),
            health_line(health),
            evictions
        )
    }
}

/// Per-request records as a table.
pub fn requests_table(recs: &[crate::attribution::RequestRecord]) -> String {
    let mut s = format!(
        "{:<26} {:<13} {:>3} {:>7} {:>9} {:>7} {:>8} {:>8}  {}\n",
        "request", "approach", "seq", "tokens", "wire B", "pkts", "B/tok", "ttft ms", "attribution"
    );
    for r in recs {
        let _ = writeln!(
            s,
            "{:<26} {:<13} {:>3} {:>7} {:>9} {:>7} {:>8} {:>8}  {}{}",
            r.id,
            r.approach,
            r.seq_on_connection,
            r.tokens,
            r.wire_bytes,
            r.packets,
            r.bytes_per_token.map_or("-".into(), |b| format!("{b:.1}")),
            r.ttft_ms.map_or("-".into(), |t| format!("{t:.1}")),
            match r.attribution {
                crate::attribution::Quality::Exact => "exact",
                crate::attribution::Quality::Shared => "shared",
            },
            if r.includes_connection_overhead {
                " +setup/teardown"
            } else {
                ""
            }
        );
    }
    s
}

/// The health line printed under each table.
pub fn health_line(h: &Health) -> String {
    let mut s = format!(
        "flows tracked {} | not IP {} pkts | malformed {} pkts | map full {} pkts | event drops {} | payload copy failures {} | kernel drops {}",
        h.flows_tracked,
        h.not_ip.packets,
        h.malformed.packets,
        h.map_full.packets,
        h.event_drops,
        h.payload_copy_failures,
        h.kernel_drops
    );
    if let Some(ns) = h.ns_per_packet() {
        let _ = write!(s, " | {ns:.1} ns/packet over {} runs", h.bpf_run_count);
    }
    s
}

/// The health as one JSON line.
pub fn health_json(h: &Health, evictions: u64, snapshot: u64, is_final: bool) -> String {
    let v = serde_json::json!({
        "health": h, "evictions": evictions, "snapshot": snapshot, "final": is_final,
    });
    format!("{v}\n")
}
