//! The matrix's report directory: RESULTS.md laid out like the reference study (a summary
//! table per profile, the wire bytes table with packets, ratios, a short analysis written
//! from the numbers: `markdown`, `analysis`), results.json with everything, and SVG charts
//! (`charts`: three, and up to four more when settings are compared).

mod analysis;
mod charts;
mod markdown;

pub use analysis::analysis;
pub use markdown::markdown;

use crate::approach::Approach;
use crate::matrix::{Cell, MatrixResults};
use crate::netem::profile::Direction;
use std::path::Path;

/// How the run was made, for the report's methodology section.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Methodology {
    pub date: String,
    pub machine: String,
    pub kernel: String,
    pub emulator: String,
    pub probe_backend: Option<String>,
    pub mtu: u32,
    pub queue: String,
    pub congestion_control: String,
    pub model: String,
    pub prompts: usize,
    pub mean_tokens: u32,
    pub seed: u64,
    pub command: String,
    /// Which setup ran: tokenwire's default or the reference's.
    pub setup: String,
}

pub(super) const REF_B_PER_TOK: [f64; 3] = crate::wire::REFERENCE_B_PER_TOK;

pub(super) fn cell<'a>(
    r: &'a MatrixResults,
    profile: &str,
    dir: Direction,
    mode: &str,
    a: Approach,
) -> Option<&'a Cell> {
    cell_of(r, &primary(r), profile, dir, mode, a)
}

/// The cell of one variant ([`crate::matrix::Variant::label`]).
pub(super) fn cell_of<'a>(
    r: &'a MatrixResults,
    variant: &str,
    profile: &str,
    dir: Direction,
    mode: &str,
    a: Approach,
) -> Option<&'a Cell> {
    r.cells.iter().find(|c| {
        c.variant == variant
            && c.profile == profile
            && c.direction == dir
            && c.mode == mode
            && c.approach == a
    })
}

/// The variant the main tables show: the first that ran.
pub(super) fn primary(r: &MatrixResults) -> String {
    r.variants.first().map(|v| v.label()).unwrap_or_default()
}

pub(super) fn labels(r: &MatrixResults) -> Vec<String> {
    r.variants.iter().map(|v| v.label()).collect()
}

pub(super) fn opt(v: Option<f64>, unit: &str, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}{unit}"))
}

pub(super) fn profiles(r: &MatrixResults) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    for l in &r.links {
        if !v.contains(&l.profile.name) {
            v.push(l.profile.name.clone());
        }
    }
    v
}

/// The approaches the results hold, in the registry's order.
pub(super) fn approaches(r: &MatrixResults) -> Vec<Approach> {
    Approach::ALL
        .into_iter()
        .filter(|&a| r.cells.iter().any(|c| c.approach == a))
        .collect()
}

pub(super) fn directions(r: &MatrixResults) -> Vec<Direction> {
    let mut v = Vec::new();
    for l in &r.links {
        if !v.contains(&l.direction) {
            v.push(l.direction);
        }
    }
    v
}

pub(super) fn modes(r: &MatrixResults) -> Vec<&'static str> {
    let mut v = Vec::new();
    for c in &r.cells {
        if !v.contains(&c.mode) {
            v.push(c.mode);
        }
    }
    v
}

/// Wire bytes per token of the streams themselves: without a reused connection's
/// handshakes (short quick runs would otherwise be dominated by QUIC's); a fresh
/// connection's handshakes are part of its request.
pub(super) fn bpt(
    r: &MatrixResults,
    p: &str,
    d: Direction,
    mode: &str,
    a: Approach,
) -> Option<f64> {
    cell(r, p, d, mode, a)
        .and_then(|c| c.wire.as_ref())
        .and_then(|w| w.stream_bytes_per_token)
}

pub(super) fn ratios(r: &MatrixResults, p: &str, d: Direction, mode: &str) -> Option<String> {
    let [raw, sse, wt] = Approach::REFERENCE.map(|a| bpt(r, p, d, mode, a));
    let (raw, sse, wt) = (raw?, sse?, wt?);
    Some(format!(
        "Stream wire B/tok ratios ({p}): Raw API : HTTP SSE : WebTransport = {:.2} : {:.2} : 1 ({raw:.0} : {sse:.0} : {wt:.0}); the reference: {:.2} : {:.2} : 1 ({:.0} : {:.0} : {:.0}).",
        raw / wt,
        sse / wt,
        REF_B_PER_TOK[0] / REF_B_PER_TOK[2],
        REF_B_PER_TOK[1] / REF_B_PER_TOK[2],
        REF_B_PER_TOK[0],
        REF_B_PER_TOK[1],
        REF_B_PER_TOK[2]
    ))
}

/// Writes RESULTS.md, results.json and the charts into `dir`.
pub fn write(dir: &Path, r: &MatrixResults, m: &Methodology) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("RESULTS.md"), markdown(r, m))?;
    let json = serde_json::json!({ "methodology": m, "results": r });
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    )?;
    charts::write(dir, r)
}

#[cfg(test)]
mod tests;
