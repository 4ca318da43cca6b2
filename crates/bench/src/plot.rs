//! `--plot=FILE.svg`: a run drawn as three panels, so it can be looked at rather than read.
//!
//! 1. IOPS per interval over time, per direction, summed over jobs.
//! 2. Completion-latency percentiles (p50, p99, p99.9) per interval over time, log scale.
//! 3. The completion-latency spectrum of the whole run: latency (log) against percentile on a
//!    "nines" axis (90%, 99%, 99.9%, …), the usual way to show tails from an HDR histogram.

use std::fmt::Write as _;

use super::engine::{DIR_NAMES, JobResult, READ, TRIM, WRITE};
use super::stats::LatencyStat;

const WIDTH: f64 = 960.0;
const PANEL_HEIGHT: f64 = 260.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 64.0;
const GAP: f64 = 70.0;
const COLOURS: [&str; super::engine::DIRS] = ["#1f77b4", "#d95f02", "#7570b3"];

struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
}

impl Panel {
    fn new(index: usize) -> Panel {
        Panel {
            x0: LEFT,
            y0: TOP + index as f64 * (PANEL_HEIGHT + GAP),
            w: WIDTH - LEFT - RIGHT,
            h: PANEL_HEIGHT,
        }
    }

    fn x(&self, fraction: f64) -> f64 {
        self.x0 + fraction.clamp(0.0, 1.0) * self.w
    }

    fn y(&self, fraction: f64) -> f64 {
        self.y0 + self.h - fraction.clamp(0.0, 1.0) * self.h
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.0}s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.0}ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.0}µs", ns / 1e3)
    } else {
        format!("{ns:.0}ns")
    }
}

fn fmt_count(n: f64) -> String {
    bluepoll_base::units::format_count(n)
}

/// Log-scale range covering `values`, widened to whole decades.
fn decades(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for v in values.filter(|v| *v > 0.0) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (1.0, 1000.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn log_fraction(v: f64, (lo, hi): (f64, f64)) -> f64 {
    if v <= 0.0 {
        0.0
    } else {
        (v.log10() - lo.log10()) / (hi.log10() - lo.log10())
    }
}

fn frame(svg: &mut String, p: &Panel, title: &str, x_label: &str, y_label: &str) {
    let _ = writeln!(
        svg,
        r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="#fafafa" stroke="#999"/>"##,
        p.x0, p.y0, p.w, p.h
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="15" font-weight="bold">{}</text>"#,
        p.x0,
        p.y0 - 12.0,
        escape(title)
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        p.x0 + p.w / 2.0,
        p.y0 + p.h + 36.0,
        escape(x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="12" text-anchor="middle">{}</text>"#,
        p.x0 - 62.0,
        p.y0 + p.h / 2.0,
        escape(y_label)
    );
}

fn tick_y(svg: &mut String, p: &Panel, fraction: f64, label: &str) {
    let y = p.y(fraction);
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/>"##,
        p.x0,
        p.x0 + p.w
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
        p.x0 - 6.0,
        y + 4.0,
        escape(label)
    );
}

fn tick_x(svg: &mut String, p: &Panel, fraction: f64, label: &str) {
    let x = p.x(fraction);
    let _ = writeln!(
        svg,
        r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/>"##,
        p.y0,
        p.y0 + p.h
    );
    let _ = writeln!(
        svg,
        r#"<text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
        p.y0 + p.h + 16.0,
        escape(label)
    );
}

fn polyline(svg: &mut String, points: &[(f64, f64)], colour: &str, dash: &str) {
    if points.is_empty() {
        return;
    }
    let coords: Vec<String> = points
        .iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect();
    let _ = writeln!(
        svg,
        r#"<polyline fill="none" stroke="{colour}" stroke-width="1.8" stroke-dasharray="{dash}" points="{}"/>"#,
        coords.join(" ")
    );
}

fn legend(svg: &mut String, p: &Panel, row: usize, colour: &str, dash: &str, label: &str) {
    let x = p.x0 + p.w - 170.0;
    let y = p.y0 + 16.0 + row as f64 * 16.0;
    let _ = writeln!(
        svg,
        r#"<rect x="{:.1}" y="{:.1}" width="164" height="16" fill="white" fill-opacity="0.85"/>"#,
        x - 4.0,
        y - 8.0
    );
    let _ = writeln!(
        svg,
        r#"<line x1="{x:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}"/>"#,
        x + 24.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
        x + 30.0,
        y + 4.0,
        escape(label)
    );
}

/// Renders the run; works (with empty panels) even when nothing completed.
pub fn render(results: &[JobResult]) -> String {
    let height = TOP + 3.0 * PANEL_HEIGHT + 2.0 * GAP + 50.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let names: Vec<&str> = results.iter().map(|r| r.spec.name.as_str()).collect();
    let mut title = format!("bluepoll bench: {}", names.join(", "));
    if let Some(r) = results.first() {
        title.push_str(&format!(" on {}", r.device_uri));
    }
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15">{}</text>"#,
        escape(&title)
    );

    // Series per direction, summed over jobs by sample index.
    let max_samples = results.iter().map(|r| r.samples.len()).max().unwrap_or(0);
    let mut iops: [Vec<(f64, f64)>; super::engine::DIRS] = Default::default();
    let mut pct: [[Vec<(f64, f64)>; 3]; super::engine::DIRS] = Default::default();
    for i in 0..max_samples {
        for d in [READ, WRITE, TRIM] {
            let mut total = 0.0;
            let mut t = 0.0f64;
            let mut worst = [0u64; 3];
            let mut any = false;
            for r in results {
                if let Some(s) = r.samples.get(i) {
                    if s.duration_ns > 0 && s.dirs[d].ios > 0 {
                        total += s.dirs[d].iops(s.duration_ns);
                        worst[0] = worst[0].max(s.dirs[d].clat_p50);
                        worst[1] = worst[1].max(s.dirs[d].clat_p99);
                        worst[2] = worst[2].max(s.dirs[d].clat_p999);
                        any = true;
                    }
                    t = t.max(s.end_ms as f64 / 1000.0);
                }
            }
            if any {
                iops[d].push((t, total));
                for k in 0..3 {
                    pct[d][k].push((t, worst[k] as f64));
                }
            }
        }
    }
    let t_max = iops.iter().flatten().map(|p| p.0).fold(1.0, f64::max);

    // Panel 1: IOPS.
    let p = Panel::new(0);
    frame(&mut svg, &p, "IOPS over time", "seconds", "IOPS");
    let iops_max = iops
        .iter()
        .flatten()
        .map(|p| p.1)
        .fold(0.0, f64::max)
        .max(1.0)
        * 1.1;
    for k in 0..=4 {
        let f = k as f64 / 4.0;
        tick_y(&mut svg, &p, f, &fmt_count(iops_max * f));
    }
    for k in 0..=5 {
        let f = k as f64 / 5.0;
        tick_x(&mut svg, &p, f, &format!("{:.1}", t_max * f));
    }
    for d in [READ, WRITE, TRIM] {
        let pts: Vec<(f64, f64)> = iops[d]
            .iter()
            .map(|(t, v)| (p.x(t / t_max), p.y(v / iops_max)))
            .collect();
        polyline(&mut svg, &pts, COLOURS[d], "");
        if !pts.is_empty() {
            legend(&mut svg, &p, d, COLOURS[d], "", DIR_NAMES[d]);
        }
    }

    // Panel 2: percentiles over time.
    let p = Panel::new(1);
    frame(
        &mut svg,
        &p,
        "Completion latency percentiles over time (worst job per interval)",
        "seconds",
        "latency",
    );
    let range = decades(pct.iter().flatten().flatten().map(|q| q.1));
    let mut v = range.0;
    while v <= range.1 * 1.0001 {
        tick_y(&mut svg, &p, log_fraction(v, range), &fmt_ns(v));
        v *= 10.0;
    }
    for k in 0..=5 {
        let f = k as f64 / 5.0;
        tick_x(&mut svg, &p, f, &format!("{:.1}", t_max * f));
    }
    let dashes = ["", "6,3", "2,3"];
    let labels = ["p50", "p99", "p99.9"];
    let mut row = 0;
    for d in [READ, WRITE, TRIM] {
        for k in 0..3 {
            let pts: Vec<(f64, f64)> = pct[d][k]
                .iter()
                .map(|(t, v)| (p.x(t / t_max), p.y(log_fraction(*v, range))))
                .collect();
            if !pts.is_empty() {
                polyline(&mut svg, &pts, COLOURS[d], dashes[k]);
                legend(
                    &mut svg,
                    &p,
                    row,
                    COLOURS[d],
                    dashes[k],
                    &format!("{} {}", DIR_NAMES[d], labels[k]),
                );
                row += 1;
            }
        }
    }

    // Panel 3: latency spectrum.
    let p = Panel::new(2);
    frame(
        &mut svg,
        &p,
        "Completion latency by percentile (whole run)",
        "percentile",
        "latency",
    );
    let mut merged: [LatencyStat; super::engine::DIRS] = Default::default();
    for r in results {
        for d in [READ, WRITE, TRIM] {
            merged[d].merge(&r.dirs[d].clat);
        }
    }
    const NINES: f64 = 5.0;
    let quantiles: Vec<f64> = (0..=100)
        .map(|i| 100.0 * (1.0 - 10f64.powf(-NINES * i as f64 / 100.0)))
        .collect();
    let range = decades(
        merged
            .iter()
            .filter(|s| s.n > 0)
            .flat_map(|s| [s.percentile(0.0).max(1) as f64, s.max as f64]),
    );
    let mut v = range.0;
    while v <= range.1 * 1.0001 {
        tick_y(&mut svg, &p, log_fraction(v, range), &fmt_ns(v));
        v *= 10.0;
    }
    for (k, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"]
        .iter()
        .enumerate()
    {
        tick_x(&mut svg, &p, k as f64 / NINES, label);
    }
    for d in [READ, WRITE, TRIM] {
        let s = &merged[d];
        if s.n == 0 {
            continue;
        }
        let pts: Vec<(f64, f64)> = quantiles
            .iter()
            .map(|&q| {
                let nines = -(1.0 - q / 100.0).max(1e-12).log10();
                (
                    p.x(nines / NINES),
                    p.y(log_fraction(s.percentile(q).max(1) as f64, range)),
                )
            })
            .collect();
        polyline(&mut svg, &pts, COLOURS[d], "");
        legend(
            &mut svg,
            &p,
            d,
            COLOURS[d],
            "",
            &format!("{} ({} I/Os)", DIR_NAMES[d], s.n),
        );
    }
    svg.push_str("</svg>\n");
    svg
}
