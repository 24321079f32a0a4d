//! Grouped bar charts as plain SVG. Written here rather than with plotters: three bar
//! charts do not need a plotting library's font stack (plotters lays text out with a
//! TrueType engine, which pulls system font discovery into a benchmark client), and SVG
//! text is laid out by whatever displays it.

use std::fmt::Write as _;

pub struct Series {
    pub name: String,
    /// One value per group; `None` leaves a gap.
    pub values: Vec<Option<f64>>,
}

pub struct BarChart {
    pub title: String,
    pub unit: String,
    pub groups: Vec<String>,
    pub series: Vec<Series>,
}

const COLOURS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis maximum at or above `v`.
fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

impl BarChart {
    pub fn render(&self) -> String {
        let (left, top, bottom, right) = (70.0, 50.0, 110.0, 20.0);
        let group_w = 24.0 * self.series.len().max(1) as f64 + 30.0;
        let plot_w = group_w * self.groups.len().max(1) as f64;
        let plot_h = 300.0;
        let width = left + plot_w + right;
        let legend_h = 18.0 * self.series.len() as f64;
        let height = top + plot_h + bottom + legend_h;
        let max = nice_max(
            self.series
                .iter()
                .flat_map(|s| s.values.iter().flatten().copied())
                .fold(0.0, f64::max),
        );
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(
            s,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{:.0}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
            width / 2.0,
            esc(&self.title)
        );
        // Axis and grid.
        for i in 0..=5 {
            let v = max * f64::from(i) / 5.0;
            let y = top + plot_h - plot_h * f64::from(i) / 5.0;
            let _ = writeln!(
                s,
                r##"<line x1="{left}" x2="{:.0}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                left - 6.0,
                y + 4.0,
                if max >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.0}" transform="rotate(-90 16 {:.0})" text-anchor="middle">{}</text>"#,
            top + plot_h / 2.0,
            top + plot_h / 2.0,
            esc(&self.unit)
        );
        for (g, name) in self.groups.iter().enumerate() {
            let gx = left + group_w * g as f64 + 15.0;
            for (i, series) in self.series.iter().enumerate() {
                let Some(Some(v)) = series.values.get(g) else {
                    continue;
                };
                let h = plot_h * (v / max).clamp(0.0, 1.0);
                let x = gx + 24.0 * i as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{x:.1}" y="{:.1}" width="20" height="{h:.1}" fill="{}"><title>{}: {v:.1} {}</title></rect>"#,
                    top + plot_h - h,
                    COLOURS[i % COLOURS.len()],
                    esc(&series.name),
                    esc(&self.unit)
                );
            }
            let cx = gx + 12.0 * self.series.len() as f64;
            let _ = writeln!(
                s,
                r#"<text x="{cx:.1}" y="{:.0}" transform="rotate(30 {cx:.1} {:.0})">{}</text>"#,
                top + plot_h + 16.0,
                top + plot_h + 16.0,
                esc(name)
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let y = top + plot_h + bottom + 18.0 * i as f64;
            let _ = writeln!(
                s,
                r#"<rect x="{left}" y="{:.0}" width="12" height="12" fill="{}"/><text x="{:.0}" y="{:.0}">{}</text>"#,
                y - 10.0,
                COLOURS[i % COLOURS.len()],
                left + 18.0,
                y,
                esc(&series.name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_a_round_maximum_and_text_is_escaped() {
        assert_eq!(nice_max(372.0), 500.0);
        assert_eq!(nice_max(0.0), 1.0);
        let svg = BarChart {
            title: "a < b".into(),
            unit: "ms".into(),
            groups: vec!["g1".into(), "g2".into()],
            series: vec![Series {
                name: "s".into(),
                values: vec![Some(250.0), None],
            }],
        }
        .render();
        assert!(svg.contains("a &lt; b"));
        // 250 of 250 fills the 300-pixel plot.
        assert!(svg.contains(r##"height="300.0" fill="#4e79a7""##), "{svg}");
        assert_eq!(
            svg.matches("<rect x=").count(),
            2,
            "one bar and one legend box"
        );
    }
}
