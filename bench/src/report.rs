//! Per-approach figures in the reference study's columns, and the run's Markdown, JSON and
//! CSV forms.
//!
//! Avg TBT is the reference's definition: the mean of every gap between consecutive
//! tokens, pooled over all prompts (long answers weigh more). The mean of per-request
//! mean gaps is reported beside it (`avg_tbt_per_request_ms`); the Markdown notes it when
//! the two differ by more than 0.5 ms. Failed and incomplete requests are counted and kept
//! out of every latency and size figure.

use crate::approach::Approach;
use crate::record::{Failure, RequestRecord};
use std::fmt::Write as _;
use std::time::Duration;

/// Aggregates of one approach's requests.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub approach: Approach,
    pub requests: usize,
    pub failed: usize,
    /// Connections (or WebTransport sessions) the measured requests used.
    pub connections: u64,
    pub avg_app_bytes: Option<f64>,
    pub p50_ttft_ms: Option<f64>,
    pub p90_ttft_ms: Option<f64>,
    pub p99_ttft_ms: Option<f64>,
    /// Mean of all gaps, pooled over the requests (the reference's Avg TBT).
    pub avg_tbt_ms: Option<f64>,
    /// Mean of the per-request mean gaps.
    pub avg_tbt_per_request_ms: Option<f64>,
    pub p50_gap_ms: Option<f64>,
    pub p99_gap_ms: Option<f64>,
    pub avg_total_s: Option<f64>,
    pub avg_tokens: Option<f64>,
    /// Application bytes per token (wire bytes per token come from the probe).
    pub app_bytes_per_token: Option<f64>,
    /// Tokens per second over the successful requests' total time.
    pub tokens_per_s: Option<f64>,
    /// Failed requests by kind.
    pub failures: std::collections::BTreeMap<Failure, usize>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(v: impl IntoIterator<Item = f64>) -> Option<f64> {
    let (sum, n) = v
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// How a median is taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Median {
    /// The nearest-rank percentile, as P90 and P99 (tokenwire's default).
    #[default]
    NearestRank,
    /// The mean of the two middle values of an even count (the reference's P50).
    MeanOfMiddle,
}

/// The median of sorted values by `rule`.
pub fn median(sorted: &[f64], rule: Median) -> Option<f64> {
    let n = sorted.len();
    match rule {
        Median::MeanOfMiddle if n > 0 && n.is_multiple_of(2) => {
            Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0)
        }
        _ => percentile(sorted, 0.5),
    }
}

/// Nearest-rank percentile (`p` in 0..=1) of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted.get(rank.min(sorted.len()) - 1).copied()
}

pub fn summarise(approach: Approach, records: &[RequestRecord], connections: u64) -> Summary {
    summarise_with(approach, records, connections, Median::NearestRank)
}

/// [`summarise`] with the P50s taken by `p50`.
pub fn summarise_with(
    approach: Approach,
    records: &[RequestRecord],
    connections: u64,
    p50: Median,
) -> Summary {
    let mine: Vec<&RequestRecord> = records.iter().filter(|r| r.approach == approach).collect();
    let ok: Vec<&RequestRecord> = mine.iter().copied().filter(|r| r.ok()).collect();
    let mut ttfts: Vec<f64> = ok.iter().filter_map(|r| r.ttft).map(ms).collect();
    ttfts.sort_by(f64::total_cmp);
    let mut gaps: Vec<f64> = ok
        .iter()
        .flat_map(|r| r.gaps.iter().copied().map(ms))
        .collect();
    let avg_tbt_ms = mean(gaps.iter().copied());
    gaps.sort_by(f64::total_cmp);
    let tokens: u64 = ok.iter().map(|r| r.tokens()).sum();
    let bytes: u64 = ok.iter().map(|r| r.app_bytes).sum();
    let secs: f64 = ok
        .iter()
        .filter_map(|r| r.total)
        .map(|d| d.as_secs_f64())
        .sum();
    Summary {
        approach,
        requests: mine.len(),
        failed: mine.len() - ok.len(),
        connections,
        avg_app_bytes: mean(ok.iter().map(|r| r.app_bytes as f64)),
        p50_ttft_ms: median(&ttfts, p50),
        p90_ttft_ms: percentile(&ttfts, 0.9),
        p99_ttft_ms: percentile(&ttfts, 0.99),
        avg_tbt_ms,
        avg_tbt_per_request_ms: mean(ok.iter().filter_map(|r| r.mean_gap()).map(ms)),
        p50_gap_ms: median(&gaps, p50),
        p99_gap_ms: percentile(&gaps, 0.99),
        avg_total_s: mean(ok.iter().filter_map(|r| r.total).map(|d| d.as_secs_f64())),
        avg_tokens: mean(ok.iter().map(|r| r.tokens() as f64)),
        app_bytes_per_token: (tokens > 0).then(|| bytes as f64 / tokens as f64),
        tokens_per_s: (secs > 0.0).then(|| tokens as f64 / secs),
        failures: mine.iter().filter_map(|r| r.failure).fold(
            std::collections::BTreeMap::new(),
            |mut m, f| {
                *m.entry(f).or_insert(0) += 1;
                m
            },
        ),
    }
}

fn cell(v: Option<f64>, unit: &str, prec: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.prec$}{unit}"))
}

/// The summary table: the reference's columns, then tail latencies.
pub fn markdown(summaries: &[Summary]) -> String {
    let mut s = String::from(
        "| Approach | Avg App Bytes | P50 TTFT | Avg TBT | Avg Total | Avg Tokens | Avg App B/tok | P90 TTFT | P99 TTFT | P50 gap | P99 gap | Requests | Failed |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for m in summaries {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.approach.title(),
            cell(m.avg_app_bytes, "", 0),
            cell(m.p50_ttft_ms, "ms", 0),
            cell(m.avg_tbt_ms, "ms", 1),
            cell(m.avg_total_s, "s", 2),
            cell(m.avg_tokens, "", 0),
            cell(m.app_bytes_per_token, "", 1),
            cell(m.p90_ttft_ms, "ms", 0),
            cell(m.p99_ttft_ms, "ms", 0),
            cell(m.p50_gap_ms, "ms", 1),
            cell(m.p99_gap_ms, "ms", 1),
            m.requests,
            m.failed,
        );
    }
    for m in summaries.iter().filter(|m| !m.failures.is_empty()) {
        let reasons: Vec<String> = m
            .failures
            .iter()
            .map(|(f, n)| format!("{} {n}", f.as_str()))
            .collect();
        let _ = writeln!(
            s,
            "\n{} failed, by reason: {} (each request's error is in --json and --csv).",
            m.approach.title(),
            reasons.join(", ")
        );
    }
    for m in summaries {
        if let (Some(pooled), Some(per_req)) = (m.avg_tbt_ms, m.avg_tbt_per_request_ms)
            && (pooled - per_req).abs() > 0.5
        {
            let _ = writeln!(
                s,
                "\n{}: Avg TBT pooled over all gaps {pooled:.1} ms; mean of per-request means {per_req:.1} ms.",
                m.approach.title()
            );
        }
    }
    s
}

/// One CSV row per request.
pub fn csv(records: &[RequestRecord]) -> String {
    let mut s = String::from(
        "approach,prompt_index,round,start_offset_s,ok,ttft_ms,total_s,tokens,tokens_counted,tokens_reported,app_bytes,mean_gap_ms,max_gap_ms,failure,error\n",
    );
    for r in records {
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        let _ = writeln!(
            s,
            "{},{},{},{:.3},{},{},{},{},{},{},{},{},{},{},{}",
            r.approach,
            r.prompt_index,
            r.round,
            r.start_offset_s,
            r.ok(),
            opt(r.ttft.map(ms)),
            opt(r.total.map(|d| d.as_secs_f64())),
            r.tokens(),
            r.tokens_counted,
            r.tokens_reported.map_or(String::new(), |n| n.to_string()),
            r.app_bytes,
            opt(r.mean_gap().map(ms)),
            opt(r.gaps.iter().max().copied().map(ms)),
            r.failure.map_or("", |f| f.as_str()),
            r.error.as_deref().map(csv_field).unwrap_or_default(),
        );
    }
    s
}

/// RFC 4180 quoting.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Recorder;
    use std::time::Instant;

    fn record(ttft_ms: u64, gaps_ms: &[u64], bytes: u64) -> RequestRecord {
        let mut r = Recorder::new(Approach::Sse, 0, Instant::now()).finish();
        r.ttft = Some(Duration::from_millis(ttft_ms));
        r.gaps = gaps_ms.iter().map(|&g| Duration::from_millis(g)).collect();
        r.tokens_counted = gaps_ms.len() as u64 + 1;
        r.app_bytes = bytes;
        r.total = Some(Duration::from_secs(1));
        r
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.9), Some(90.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[4.0], 0.99), Some(4.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn tbt_pooled_and_per_request_differ_when_lengths_do() {
        // One long answer at 10 ms gaps, one short at 40 ms.
        let long = record(100, &[10; 9], 100);
        let short = record(300, &[40], 20);
        let s = summarise(Approach::Sse, &[long, short], 1);
        // pooled: (9*10 + 40) / 10 = 13 ms; per request: (10 + 40) / 2 = 25 ms
        assert!((s.avg_tbt_ms.unwrap() - 13.0).abs() < 1e-9);
        assert!((s.avg_tbt_per_request_ms.unwrap() - 25.0).abs() < 1e-9);
        assert_eq!(s.p50_ttft_ms, Some(100.0));
        assert_eq!(s.avg_tokens, Some(6.0));
        assert!((s.app_bytes_per_token.unwrap() - 10.0).abs() < 1e-9);
        assert!(
            markdown(&[s])
                .contains("pooled over all gaps 13.0 ms; mean of per-request means 25.0 ms")
        );
    }

    #[test]
    fn failures_are_counted_and_kept_out_of_statistics() {
        let good = record(100, &[35, 35], 30);
        let mut bad = record(5, &[1], 1);
        bad.error = Some("stream ended early, \"really\"".into());
        let s = summarise(Approach::Sse, &[good, bad.clone()], 1);
        assert_eq!((s.requests, s.failed), (2, 1));
        assert_eq!(s.p50_ttft_ms, Some(100.0));
        assert_eq!(s.avg_tbt_ms, Some(35.0));
        let csv = csv(&[bad]);
        assert!(
            csv.lines()
                .nth(1)
                .unwrap()
                .ends_with(r#","stream ended early, ""really""""#),
            "{csv}"
        );
        let none = summarise(Approach::Wt, &[], 0);
        assert_eq!((none.avg_tbt_ms, none.p50_ttft_ms), (None, None));
    }
}
