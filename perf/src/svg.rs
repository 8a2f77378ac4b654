//! A grouped bar chart written as plain SVG: one panel per metric, one group of bars per
//! scenario, one bar per contender.

use std::fmt::Write as _;

/// One group of bars (a scenario): a value per contender, `None` where not measured.
pub struct Group {
    /// Label under the group.
    pub label: String,
    /// Values in contender order.
    pub values: Vec<Option<f64>>,
}

/// One chart panel (a metric).
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Decimals shown in value labels.
    pub decimals: usize,
    /// The groups.
    pub groups: Vec<Group>,
}

const BAR_W: f64 = 22.0;
const GROUP_GAP: f64 = 34.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const PANEL_H: f64 = 300.0;
const PLOT_TOP: f64 = 40.0;
const PLOT_H: f64 = 200.0;
const LEGEND_H: f64 = 40.0;
const MIN_WIDTH: f64 = 640.0;

/// Bar colour of a contender.
fn colour(name: &str, index: usize) -> &'static str {
    const PALETTE: [&str; 6] = ["#7048e8", "#e8590c", "#0ca678", "#f59f00", "#d6336c", "#495057"];
    match name {
        "direct" => "#868e96",
        "ringway" => "#d9480f",
        "nginx" => "#2f9e44",
        "haproxy" => "#1c7ed6",
        _ => PALETTE[index % PALETTE.len()],
    }
}

/// Escapes text for an SVG text node or attribute.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A round axis step giving about five gridlines up to `max`.
fn nice_step(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A value formatted for an axis or bar label, with k/M suffixes for large numbers.
fn label(v: f64, decimals: usize) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.decimals$}")
    }
}

/// Decimals needed to print multiples of `step` exactly enough.
fn axis_decimals(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        (-step.log10().floor()) as usize
    }
}

/// Renders the chart.
pub fn chart(title: &str, contenders: &[String], panels: &[Panel]) -> String {
    let groups = panels.iter().map(|p| p.groups.len()).max().unwrap_or(0).max(1);
    let group_w = contenders.len().max(1) as f64 * BAR_W + GROUP_GAP;
    let width = (LEFT + groups as f64 * group_w + RIGHT).max(MIN_WIDTH);
    let height = LEGEND_H + panels.len() as f64 * PANEL_H;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let mut x = LEFT;
    for (i, name) in contenders.iter().enumerate() {
        let _ = writeln!(
            out,
            r#"<rect x="{x:.1}" y="26" width="10" height="10" fill="{}"/><text x="{:.1}" y="35">{}</text>"#,
            colour(name, i),
            x + 14.0,
            esc(name)
        );
        x += 24.0 + 7.0 * name.len() as f64;
    }
    for (p, panel) in panels.iter().enumerate() {
        render_panel(&mut out, panel, contenders, LEGEND_H + p as f64 * PANEL_H, width);
    }
    out.push_str("</svg>\n");
    out
}

/// Draws one panel with its axis, gridlines, bars and labels, starting at height `top`.
fn render_panel(out: &mut String, panel: &Panel, contenders: &[String], top: f64, width: f64) {
    let max = panel.groups.iter().flat_map(|g| g.values.iter().flatten().copied()).fold(0.0f64, f64::max);
    let step = nice_step(max);
    let axis_max = (max / step).ceil().max(1.0) * step;
    let base = top + PLOT_TOP + PLOT_H;
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="{:.1}" font-size="13" font-weight="bold">{}</text>"#,
        top + 22.0,
        esc(&panel.title)
    );
    let ticks = (axis_max / step).round() as usize;
    for t in 0..=ticks {
        let v = t as f64 * step;
        let y = base - v / axis_max * PLOT_H;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dee2e6"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#495057">{}</text>"##,
            width - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            label(v, axis_decimals(step))
        );
    }
    let group_w = contenders.len().max(1) as f64 * BAR_W + GROUP_GAP;
    for (g, group) in panel.groups.iter().enumerate() {
        let gx = LEFT + GROUP_GAP / 2.0 + g as f64 * group_w;
        for (i, value) in group.values.iter().enumerate() {
            let x = gx + i as f64 * BAR_W;
            let Some(v) = value else {
                let _ = writeln!(
                    out,
                    r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#adb5bd">n/a</text>"##,
                    x + BAR_W / 2.0,
                    base - 4.0
                );
                continue;
            };
            let h = (v / axis_max * PLOT_H).max(0.5);
            let _ = writeln!(
                out,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                x + 1.0,
                base - h,
                BAR_W - 2.0,
                colour(contenders.get(i).map_or("", String::as_str), i),
                esc(contenders.get(i).map_or("", String::as_str)),
                label(*v, panel.decimals)
            );
            let _ = writeln!(
                out,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="9">{}</text>"#,
                x + BAR_W / 2.0,
                base - h - 3.0,
                label(*v, panel.decimals)
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + contenders.len() as f64 * BAR_W / 2.0,
            base + 16.0,
            esc(&group.label)
        );
    }
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{base:.1}" x2="{:.1}" y2="{base:.1}" stroke="#212529"/>"##,
        width - RIGHT
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(axis_decimals(20.0), 0);
        assert_eq!(axis_decimals(0.2), 1);
        assert_eq!(axis_decimals(0.05), 2);
    }

    #[test]
    fn chart_is_well_formed_enough() {
        let panel = Panel {
            title: "req/s <higher>".into(),
            decimals: 0,
            groups: vec![Group { label: "small_get".into(), values: vec![Some(1000.0), None] }],
        };
        let svg = chart("t & t", &["nginx".into(), "ringway".into()], &[panel]);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("&lt;higher&gt;") && svg.contains("t &amp; t"));
        assert!(svg.contains("n/a"));
    }
}
