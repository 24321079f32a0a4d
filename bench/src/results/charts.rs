//! The SVG charts: P50 TTFT, wire bytes per token and the gaps by profile; with several
//! settings, bytes and packets per token and added delay by setting (and by profile).

use super::*;
use crate::approach::Approach;
use crate::matrix::{Cell, MatrixResults};
use crate::svg::{BarChart, Series};
use std::path::Path;

/// Writes the charts into `dir`.
pub(super) fn write(dir: &Path, r: &MatrixResults) -> std::io::Result<()> {
    let groups: Vec<String> = directions(r)
        .iter()
        .flat_map(|d| {
            profiles(r)
                .into_iter()
                .map(move |p| format!("{p} ({})", d.as_str()))
        })
        .collect();
    let series = |f: &dyn Fn(&Cell) -> Option<f64>, mode: &str| -> Vec<Series> {
        Approach::ALL
            .iter()
            .map(|&a| Series {
                name: a.title().to_owned(),
                values: directions(r)
                    .iter()
                    .flat_map(|&d| {
                        profiles(r)
                            .into_iter()
                            .map(move |p| cell(r, &p, d, mode, a).and_then(f))
                    })
                    .collect(),
            })
            .collect()
    };
    let mode = if modes(r).contains(&"reuse") {
        "reuse"
    } else {
        "fresh"
    };
    std::fs::write(
        dir.join("ttft.svg"),
        BarChart {
            title: format!("P50 TTFT by profile ({mode})"),
            unit: "ms".into(),
            groups: groups.clone(),
            series: series(&|c| c.summary.p50_ttft_ms, mode),
        }
        .render(),
    )?;
    std::fs::write(
        dir.join("wire_bytes_per_token.svg"),
        BarChart {
            title: format!("Wire bytes per token ({mode}; reference baseline 372 : 194 : 132)"),
            unit: "B/tok".into(),
            groups: groups.clone(),
            series: series(&|c| c.wire.as_ref().and_then(|w| w.bytes_per_token), mode),
        }
        .render(),
    )?;
    // TBT: P50 and P99 gap per approach, as paired bars.
    let mut tbt_series = Vec::new();
    for (label, i) in [("P50", 1usize), ("P99", 3)] {
        for a in Approach::ALL {
            tbt_series.push(Series {
                name: format!("{} {label}", a.title()),
                values: directions(r)
                    .iter()
                    .flat_map(|&d| {
                        profiles(r).into_iter().map(move |p| {
                            cell(r, &p, d, mode, a)
                                .and_then(|c| c.gap_percentiles_ms.get(i).copied())
                        })
                    })
                    .collect(),
            });
        }
    }
    if r.variants.len() > 1
        && let (Some(p), Some(d)) = (
            profiles(r).into_iter().next(),
            directions(r).into_iter().next(),
        )
    {
        // One group per setting, on the first profile and direction.
        let by_setting = |f: &dyn Fn(&Cell) -> Option<f64>| -> Vec<Series> {
            Approach::ALL
                .iter()
                .map(|&a| Series {
                    name: a.title().to_owned(),
                    values: labels(r)
                        .iter()
                        .map(|v| cell_of(r, v, &p, d, mode, a).and_then(f))
                        .collect(),
                })
                .collect()
        };
        let what = format!("{p}, {}, {mode}", d.as_str());
        for (file, title, unit, f) in [
            (
                "settings_bytes_per_token.svg",
                "Stream wire bytes per token by setting",
                "B/tok",
                &(|c: &Cell| c.wire.as_ref().and_then(|w| w.stream_bytes_per_token))
                    as &dyn Fn(&Cell) -> Option<f64>,
            ),
            (
                "settings_packets_per_token.svg",
                "Packets per token by setting",
                "pkts/tok",
                &|c: &Cell| c.wire.as_ref().and_then(|w| w.packets_per_token),
            ),
            (
                "settings_added_delay.svg",
                "The relay's added delay per token, P99, by setting",
                "ms",
                &|c: &Cell| c.relay_delay.map(|d| d.p99_ms),
            ),
        ] {
            std::fs::write(
                dir.join(file),
                BarChart {
                    title: format!("{title} ({what})"),
                    unit: unit.into(),
                    groups: labels(r),
                    series: by_setting(f),
                }
                .render(),
            )?;
        }
    }
    if r.variants.len() > 1 && profiles(r).len() > 1 {
        // Every setting under every profile (and direction): stream B/tok.
        let series = labels(r)
            .into_iter()
            .flat_map(|v| Approach::ALL.iter().map(move |&a| (v.clone(), a)))
            .map(|(v, a)| Series {
                name: format!("{} {v}", a.title()),
                values: directions(r)
                    .iter()
                    .flat_map(|&d| {
                        let v = v.clone();
                        profiles(r).into_iter().map(move |p| {
                            cell_of(r, &v, &p, d, mode, a)
                                .and_then(|c| c.wire.as_ref())
                                .and_then(|w| w.stream_bytes_per_token)
                        })
                    })
                    .collect(),
            })
            .collect();
        std::fs::write(
            dir.join("settings_by_profile.svg"),
            BarChart {
                title: format!("Stream wire bytes per token by setting and profile ({mode})"),
                unit: "B/tok".into(),
                groups: groups.clone(),
                series,
            }
            .render(),
        )?;
    }
    std::fs::write(
        dir.join("tbt.svg"),
        BarChart {
            title: format!("Time between tokens, P50 and P99 gap ({mode})"),
            unit: "ms".into(),
            groups,
            series: tbt_series,
        }
        .render(),
    )?;
    Ok(())
}
