//! The analysis: findings, each a sentence computed from the numbers.

use super::*;
use crate::approach::Approach;
use crate::matrix::MatrixResults;

/// Findings, each a sentence computed from the numbers (nothing here is canned).
pub fn analysis(r: &MatrixResults) -> Vec<String> {
    let mut out = Vec::new();
    for d in directions(r) {
        let ds = d.as_str();
        // TTFT under delay vs baseline, reuse.
        for mode in modes(r) {
            let ttft = |p: &str, a| cell(r, p, d, mode, a).and_then(|c| c.summary.p50_ttft_ms);
            let deltas: Vec<(Approach, f64)> = Approach::REFERENCE
                .iter()
                .filter_map(|&a| Some((a, ttft("latency-200ms", a)? - ttft("baseline", a)?)))
                .collect();
            if deltas.len() == 3 {
                let (lo, hi) = deltas.iter().fold((f64::MAX, f64::MIN), |(l, h), (_, x)| {
                    (l.min(*x), h.max(*x))
                });
                out.push(format!(
                    "`{ds}`, {mode}: 200 ms of delay adds {} to P50 TTFT (raw, sse, wt); the approaches are within {:.0} ms of each other.",
                    deltas
                        .iter()
                        .map(|(_, x)| format!("{x:.0} ms"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    hi - lo
                ));
            }
        }
        // Ordering of wire B/tok per profile.
        let mode = if modes(r).contains(&"reuse") {
            "reuse"
        } else {
            "fresh"
        };
        let mut held = Vec::new();
        let mut broken = Vec::new();
        for p in profiles(r) {
            let [raw, sse, wt] = Approach::REFERENCE.map(|a| bpt(r, &p, d, mode, a));
            if let (Some(raw), Some(sse), Some(wt)) = (raw, sse, wt) {
                if raw > sse && sse > wt {
                    held.push(p);
                } else {
                    broken.push(format!("{p} ({raw:.0} : {sse:.0} : {wt:.0})"));
                }
            }
        }
        if !held.is_empty() || !broken.is_empty() {
            out.push(if broken.is_empty() {
                format!(
                    "`{ds}`, {mode}: stream wire B/tok is ordered Raw API > HTTP SSE > WebTransport under every profile ({}).",
                    held.join(", ")
                )
            } else {
                format!(
                    "`{ds}`, {mode}: stream wire B/tok ordering raw > sse > wt holds for {} but not for {}.",
                    if held.is_empty() {
                        "none".into()
                    } else {
                        held.join(", ")
                    },
                    broken.join(", ")
                )
            });
        }
        // TBT pinned at the model's pace?
        let tbts: Vec<(String, Approach, f64)> = r
            .cells
            .iter()
            .filter(|c| c.direction == d)
            .filter_map(|c| Some((c.profile.clone(), c.approach, c.summary.avg_tbt_ms?)))
            .collect();
        if let Some((p, a, worst)) = tbts.iter().max_by(|x, y| x.2.total_cmp(&y.2)).cloned() {
            let best = tbts.iter().map(|t| t.2).fold(f64::MAX, f64::min);
            out.push(format!(
                "`{ds}`: Avg TBT ranges {best:.1}–{worst:.1} ms across profiles, modes and approaches (highest: {a} under {p})."
            ));
        }
        // Keeping up with the model at 100 kbit/s: tokens per second after the first one
        // (1 / Avg TBT) against the pace the baseline shows.
        let pace = |p: &str, a| {
            cell(r, p, d, "reuse", a)
                .and_then(|c| c.summary.avg_tbt_ms)
                .map(|t| 1000.0 / t)
        };
        for p in ["bw-100kbps", "degraded"] {
            let rates: Vec<String> = Approach::ALL
                .iter()
                .filter_map(|&a| {
                    let got = pace(p, a)?;
                    let base = pace("baseline", a)?;
                    Some(format!(
                        "{a} {got:.1} tok/s ({})",
                        if got >= base * 0.95 {
                            "keeps up".to_owned()
                        } else {
                            format!("falls behind by {:.0}%", (1.0 - got / base) * 100.0)
                        }
                    ))
                })
                .collect();
            if !rates.is_empty() {
                out.push(format!(
                    "`{ds}`, {p}, reuse: after the first token, {} (baseline pace {}).",
                    rates.join(", "),
                    opt(pace("baseline", Approach::Raw), " tok/s", 1)
                ));
            }
        }
        // TTFT cost of loss.
        let loss: Vec<String> = Approach::ALL
            .iter()
            .filter_map(|&a| {
                let base = cell(r, "baseline", d, "reuse", a)?.summary.p50_ttft_ms?;
                let c = cell(r, "loss-5pct", d, "reuse", a)?;
                Some(format!(
                    "{a} {:+.0} ms (P90 {})",
                    c.summary.p50_ttft_ms? - base,
                    opt(c.summary.p90_ttft_ms, " ms", 0)
                ))
            })
            .collect();
        if !loss.is_empty() {
            out.push(format!(
                "`{ds}`, loss-5pct, reuse: P50 TTFT versus baseline: {}.",
                loss.join(", ")
            ));
        }
    }
    out
}
