//! Per-approach figures in the reference study's columns.

use crate::approach::Approach;
use crate::record::RequestRecord;
use std::time::Duration;

/// Aggregates of one approach's successful requests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub approach: Approach,
    pub requests: usize,
    pub failed: usize,
    pub avg_app_bytes: f64,
    pub p50_ttft_ms: Option<f64>,
    pub avg_tbt_ms: Option<f64>,
    pub avg_total_s: Option<f64>,
    pub avg_tokens: f64,
    /// Application bytes per token (wire bytes come from the probe).
    pub app_bytes_per_token: Option<f64>,
}

pub fn summarise(approach: Approach, records: &[RequestRecord]) -> Summary {
    let mine: Vec<&RequestRecord> = records.iter().filter(|r| r.approach == approach).collect();
    let ok: Vec<&RequestRecord> = mine.iter().copied().filter(|r| r.ok()).collect();
    let n = ok.len() as f64;
    let mean = |f: &dyn Fn(&RequestRecord) -> f64| {
        (n > 0.0).then(|| ok.iter().map(|r| f(r)).sum::<f64>() / n)
    };
    let mut ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft).map(ms).collect();
    ttfts.sort_by(f64::total_cmp);
    let gaps: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.gaps.iter().copied().map(ms))
        .collect();
    let tokens: u64 = ok.iter().map(|r| r.tokens).sum();
    let bytes: u64 = ok.iter().map(|r| r.app_bytes).sum();
    Summary {
        approach,
        requests: mine.len(),
        failed: mine.len() - ok.len(),
        avg_app_bytes: mean(&|r| r.app_bytes as f64).unwrap_or(0.0),
        p50_ttft_ms: percentile(&ttfts, 0.5),
        avg_tbt_ms: (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64),
        avg_total_s: mean(&|r| r.total.map_or(0.0, |d| d.as_secs_f64())),
        avg_tokens: mean(&|r| r.tokens as f64).unwrap_or(0.0),
        app_bytes_per_token: (tokens > 0).then(|| bytes as f64 / tokens as f64),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

/// A Markdown table in the reference's columns.
pub fn markdown(summaries: &[Summary]) -> String {
    let opt = |v: Option<f64>, unit: &str, prec: usize| {
        v.map_or("-".to_owned(), |v| format!("{v:.prec$}{unit}"))
    };
    let mut s = String::from(
        "| Approach | Requests | Failed | Avg App Bytes | P50 TTFT | Avg TBT | Avg Total | Avg Tokens | Avg App B/tok |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summaries {
        s.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.0} | {} |\n",
            m.approach.title(),
            m.requests,
            m.failed,
            m.avg_app_bytes,
            opt(m.p50_ttft_ms, "ms", 0),
            opt(m.avg_tbt_ms, "ms", 1),
            opt(m.avg_total_s, "s", 2),
            m.avg_tokens,
            opt(m.app_bytes_per_token, "", 1),
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 0.5), Some(2.0));
        assert_eq!(percentile(&v, 0.99), Some(4.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
