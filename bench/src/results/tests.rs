//! `results`'s unit tests.

use super::markdown::settings_section;
use super::*;
use crate::matrix::{LinkRun, Variant};
use crate::netem::profile::Profile;
use crate::report::{Median, summarise_with};
use crate::wire::WireSummary;

fn cell_with(variant: &str, a: Approach, stream_bpt: f64, pkts: f64) -> Cell {
    Cell {
        variant: variant.into(),
        profile: "baseline".into(),
        direction: Direction::Up,
        mode: "reuse",
        approach: a,
        summary: summarise_with(a, &[], 1, Median::NearestRank),
        wire: Some(WireSummary {
            approach: a,
            requests: 1,
            tokens: 100,
            wire_bytes: (stream_bpt * 100.0) as u64,
            packets: (pkts * 100.0) as u64,
            overhead_bytes: 0,
            bytes_per_token: Some(stream_bpt),
            lo0_bytes_per_token: None,
            packets_per_token: Some(pkts),
            stream_bytes_per_token: Some(stream_bpt),
            shared: 0,
            incomplete: false,
            ip_versions: vec![4],
        }),
        gap_percentiles_ms: Vec::new(),
        ttfts_ms: Vec::new(),
        relay_delay: None,
    }
}

/// default, delayed-acks alone (-20%), and the default with a 35 ms window (-50%).
fn three_settings() -> MatrixResults {
    let variants = vec![
        Variant {
            tuning: "default".into(),
            knobs: Vec::new(),
            coalesce_ms: 0,
        },
        Variant {
            tuning: "delayed-acks".into(),
            knobs: vec!["delayed-acks"],
            coalesce_ms: 0,
        },
        Variant {
            tuning: "default".into(),
            knobs: Vec::new(),
            coalesce_ms: 35,
        },
    ];
    let mut cells = Vec::new();
    for (v, f) in [
        ("default", 1.0),
        ("delayed-acks", 0.8),
        ("default, coalesce 35 ms", 0.5),
    ] {
        for (a, b) in [
            (Approach::Raw, 300.0),
            (Approach::Sse, 150.0),
            (Approach::Wt, 140.0),
        ] {
            cells.push(cell_with(v, a, b * f, 2.0 * f));
        }
    }
    let links = variants
        .iter()
        .map(|v| LinkRun {
            variant: v.label(),
            profile: Profile::named("baseline").unwrap(),
            direction: Direction::Up,
            emulator: Default::default(),
            probe_backend: Some("ebpf".into()),
            wire_note: None,
        })
        .collect();
    MatrixResults {
        variants,
        cells,
        links,
    }
}

#[test]
fn the_main_tables_show_the_first_setting() {
    let r = three_settings();
    let c = cell(&r, "baseline", Direction::Up, "reuse", Approach::Sse).unwrap();
    assert_eq!(c.variant, "default");
    assert_eq!(
        bpt(&r, "baseline", Direction::Up, "reuse", Approach::Wt),
        Some(140.0)
    );
}

#[test]
fn the_settings_section_lists_every_setting_and_each_against_the_default() {
    let md = settings_section(&three_settings());
    assert!(
        md.contains("| default, coalesce 35 ms | HTTP SSE | 75.0 | 75.0 | 1.00 |"),
        "{md}"
    );
    assert!(
        md.contains("| delayed-acks | delayed-acks | -60.0 (-20%) | -30.0 (-20%) | -28.0 (-20%) |"),
        "{md}"
    );
    // A coalescing window is not a setting "alone": it is compared in its own rows.
    assert!(!md.contains("| default | |"), "{md}");
}
