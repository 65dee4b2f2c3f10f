//! SVG charts of the SWIM runs: the CDF of detection times (each live
//! node's dead declaration after a SIGKILL), and figures against N from
//! several reports (`bench chart --chart-dir DIR REPORT.json...`).
//!
//! Written by hand: two kinds of line chart need axes, ticks, a legend and
//! polylines, about 200 lines of SVG text, where plotters would add several
//! crates to the build for the same two charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::Value;

use crate::common::percentile;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 460.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
/// Room for the x axis' ticks, its label and the legend below.
const BOTTOM: f64 = 96.0;
/// cohort blue and memberlist red in every chart; anything else green.
fn colour(label: &str) -> &'static str {
    match label {
        "cohort" => "#1f77b4",
        "memberlist" => "#d62728",
        _ => "#2ca02c",
    }
}

struct Series {
    name: String,
    points: Vec<(f64, f64)>,
    /// A staircase (a CDF) rather than a polyline with markers.
    step: bool,
    colour: &'static str,
    /// Dashed: a run with loss or delay.
    dashed: bool,
}

struct Chart {
    title: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    series: Vec<Series>,
}

/// An axis: its range (log10 of it when logarithmic) and its ticks.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
}

impl Axis {
    fn linear(min: f64, max: f64) -> Axis {
        let (min, max) = if max > min {
            (min, max)
        } else {
            (min - 1.0, min + 1.0)
        };
        let raw = (max - min) / 6.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let step = magnitude
            * match raw / magnitude {
                r if r < 1.5 => 1.0,
                r if r < 3.0 => 2.0,
                r if r < 7.0 => 5.0,
                _ => 10.0,
            };
        let lo = (min / step).floor() * step;
        let hi = (max / step).ceil() * step;
        let ticks = (0..=((hi - lo) / step).round() as usize)
            .map(|i| lo + i as f64 * step)
            .collect();
        Axis {
            lo,
            hi,
            log: false,
            ticks,
        }
    }

    fn log(min: f64, max: f64) -> Axis {
        let lo = min.max(f64::MIN_POSITIVE).log10().floor();
        let hi = max.max(min).log10().ceil().max(lo + 1.0);
        let mut ticks = Vec::new();
        for e in lo as i32..=hi as i32 {
            for k in [1.0, 2.0, 5.0] {
                let t = k * 10f64.powi(e);
                if t.log10() <= hi + 1e-9 {
                    ticks.push(t);
                }
            }
        }
        Axis {
            lo,
            hi,
            log: true,
            ticks,
        }
    }

    /// Where `v` falls, 0..1.
    fn fraction(&self, v: f64) -> f64 {
        let v = if self.log {
            v.max(f64::MIN_POSITIVE).log10()
        } else {
            v
        };
        (v - self.lo) / (self.hi - self.lo)
    }
}

fn label(v: f64) -> String {
    let text = format!("{v:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Chart {
    fn svg(&self) -> String {
        let all: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .collect();
        let (xs, ys): (Vec<f64>, Vec<f64>) = all.iter().copied().unzip();
        let fold = |v: &[f64], f: fn(f64, f64) -> f64, init: f64| v.iter().copied().fold(init, f);
        let (x_min, x_max) = (fold(&xs, f64::min, f64::INFINITY), fold(&xs, f64::max, 0.0));
        let y_max = fold(&ys, f64::max, 0.0);
        let x = if self.log_x {
            Axis::log(x_min, x_max)
        } else {
            Axis::linear(x_min.min(0.0), x_max)
        };
        let y = Axis::linear(0.0, if y_max > 0.0 { y_max } else { 1.0 });
        let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |v: f64| LEFT + x.fraction(v) * plot_w;
        let py = |v: f64| TOP + (1.0 - y.fraction(v)) * plot_h;

        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
            WIDTH / 2.0,
            escape(&self.title)
        );
        for &t in &x.ticks {
            let at = px(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{at:.1}" y1="{TOP}" x2="{at:.1}" y2="{:.1}" stroke="#e0e0e0"/><text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + plot_h,
                TOP + plot_h + 16.0,
                label(t)
            );
        }
        for &t in &y.ticks {
            let at = py(t);
            let _ = writeln!(
                svg,
                r##"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + plot_w,
                LEFT - 6.0,
                at + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            svg,
            r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + plot_w / 2.0,
            TOP + plot_h + 36.0,
            escape(&self.x_label)
        );
        let _ = writeln!(
            svg,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + plot_h / 2.0,
            escape(&self.y_label)
        );
        for (i, series) in self.series.iter().enumerate() {
            let colour = series.colour;
            let dash = if series.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let mut points = series.points.clone();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut path = String::new();
            if series.step {
                if let Some(&(x0, _)) = points.first() {
                    let _ = write!(path, "M{:.1},{:.1}", px(x0), py(0.0));
                    for &(xv, yv) in &points {
                        let _ = write!(path, " H{:.1} V{:.1}", px(xv), py(yv));
                    }
                }
            } else {
                for (k, &(xv, yv)) in points.iter().enumerate() {
                    let _ = write!(
                        path,
                        "{}{:.1},{:.1}",
                        if k == 0 { "M" } else { " L" },
                        px(xv),
                        py(yv)
                    );
                }
                for &(xv, yv) in &points {
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{colour}"/>"#,
                        px(xv),
                        py(yv)
                    );
                }
            }
            let _ = writeln!(
                svg,
                r#"<path d="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#
            );
            // The legend, below the x label, two entries a row.
            let lx = LEFT + (i % 2) as f64 * 320.0;
            let ly = TOP + plot_h + 58.0 + (i / 2) as f64 * 18.0;
            let _ = writeln!(
                svg,
                r#"<line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                escape(&series.name)
            );
        }
        svg.push_str("</svg>\n");
        svg
    }

    fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::write(path, self.svg()).with_context(|| format!("cannot write {}", path.display()))
    }
}

/// (x, fraction of values ≤ x) for each value, sorted.
fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    sorted
        .into_iter()
        .enumerate()
        .map(|(i, v)| (v, (i + 1) as f64 / n))
        .collect()
}

fn conditions(report: &Value) -> String {
    let network = &report["network"];
    let mut text = format!("N={}", report["nodes"]);
    let loss = network["loss_percent"].as_f64().unwrap_or(0.0);
    let delay = network["delay_ms"].as_u64().unwrap_or(0);
    if loss > 0.0 {
        let _ = write!(text, ", loss {loss}%");
    }
    if delay > 0 {
        let _ = write!(text, ", delay {delay} ms");
    }
    text
}

/// The CDF of every live node's dead declaration after each kill, one
/// series per run (cohort and memberlist in a side-by-side).
pub fn detection_cdf(dir: &Path, reports: &[&Value]) -> anyhow::Result<PathBuf> {
    let first = reports.first().context("no report to chart")?;
    let series = reports
        .iter()
        .map(|r| {
            let values: Vec<f64> = r["samples"]["detection_per_observer_s"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            Series {
                name: format!(
                    "{} ({} declarations, median {} s)",
                    r["label"].as_str().unwrap_or("?"),
                    values.len(),
                    percentile(&values, 0.5).map_or("-".into(), |m| format!("{m:.2}"))
                ),
                points: cdf(&values),
                step: true,
                colour: colour(r["label"].as_str().unwrap_or("")),
                dashed: false,
            }
        })
        .collect();
    let chart = Chart {
        title: format!(
            "Each live node's dead declaration after a SIGKILL ({}, {} kills, seed {})",
            conditions(first),
            first["kills"].as_array().map_or(0, Vec::len),
            first["seed"]
        ),
        x_label: "seconds after the kill".into(),
        y_label: "fraction of (kill, live node) pairs".into(),
        log_x: false,
        series,
    };
    let loss = first["network"]["loss_percent"].as_f64().unwrap_or(0.0);
    let path = dir.join(format!(
        "detection-cdf-n{}-loss{}-seed{}.svg",
        first["nodes"], loss, first["seed"]
    ));
    chart.write(&path)?;
    Ok(path)
}

/// The runs inside a report: both of a `compare`, or the report itself.
fn runs(report: &Value) -> Vec<&Value> {
    if report["scenario"] == "compare" {
        vec![&report["cohort"], &report["memberlist"]]
    } else if report.get("label").is_some() {
        vec![report]
    } else {
        Vec::new()
    }
}

/// One figure against N, a series per implementation and network
/// condition (the median where several runs share an N).
fn versus_n(runs: &[&Value], figure: &[&str], title: &str, y_label: &str) -> Chart {
    // (name, label, with loss or delay) -> N -> values
    let mut by_series: BTreeMap<(String, String, bool), BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for run in runs {
        let value = figure.iter().fold(*run, |v, key| &v[*key]);
        let (Some(value), Some(nodes)) = (value.as_f64(), run["nodes"].as_u64()) else {
            continue;
        };
        let label = run["label"].as_str().unwrap_or("?").to_string();
        let mut name = label.clone();
        let loss = run["network"]["loss_percent"].as_f64().unwrap_or(0.0);
        if loss > 0.0 {
            let _ = write!(name, ", loss {loss}%");
        }
        let delay = run["network"]["delay_ms"].as_u64().unwrap_or(0);
        if delay > 0 {
            let _ = write!(name, ", delay {delay} ms");
        }
        by_series
            .entry((name, label, loss > 0.0 || delay > 0))
            .or_default()
            .entry(nodes)
            .or_default()
            .push(value);
    }
    let series: Vec<Series> = by_series
        .into_iter()
        .map(|((name, label, dashed), points)| Series {
            name,
            points: points
                .into_iter()
                .filter_map(|(n, v)| Some((n as f64, percentile(&v, 0.5)?)))
                .collect(),
            step: false,
            colour: colour(&label),
            dashed,
        })
        .collect();
    let ns: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let spread = percentile(&ns, 1.0).unwrap_or(1.0) / percentile(&ns, 0.0).unwrap_or(1.0);
    Chart {
        title: title.into(),
        x_label: "nodes (N)".into(),
        y_label: y_label.into(),
        log_x: spread >= 10.0,
        series,
    }
}

#[derive(clap::Args)]
pub struct ChartArgs {
    /// Reports (the JSON `compare`, `membership` or `memberlist-peer`
    /// printed; several per file are fine).
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Where the SVG files go.
    #[arg(long)]
    chart_dir: PathBuf,
}

/// `chart`: figures against N from saved reports, and each report's
/// detection CDF.
pub fn chart(args: ChartArgs) -> anyhow::Result<()> {
    let mut reports = Vec::new();
    for path in &args.reports {
        let text =
            fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        for report in serde_json::Deserializer::from_str(&text).into_iter::<Value>() {
            reports.push(report.with_context(|| format!("{}: not JSON", path.display()))?);
        }
    }
    let all: Vec<&Value> = reports.iter().flat_map(runs).collect();
    if all.is_empty() {
        anyhow::bail!("no membership, memberlist-peer or compare report in the files given");
    }
    let mut written = Vec::new();
    for report in &reports {
        let these = runs(report);
        if !these.is_empty() {
            written.push(detection_cdf(&args.chart_dir, &these)?);
        }
    }
    let charts = [
        (
            "bytes-per-node-vs-n.svg",
            &["per_node_bytes_per_s", "median"][..],
            "Bytes sent per node per second, idle (median)",
            "bytes/s per node",
        ),
        (
            "full-detection-vs-n.svg",
            &["full_detection_s", "median"][..],
            "Full detection: the last live node declares the victim dead (median)",
            "seconds after the kill",
        ),
        (
            "convergence-vs-n.svg",
            &["convergence_s"][..],
            "Full membership after the last start",
            "seconds",
        ),
        (
            "idle-false-positives-vs-n.svg",
            &["idle", "false_positives", "dead_declarations"][..],
            "False dead declarations during the idle window",
            "(observer, live node) dead declarations",
        ),
    ];
    for (file, figure, title, y_label) in charts {
        let path = args.chart_dir.join(file);
        versus_n(&all, figure, title, y_label).write(&path)?;
        written.push(path);
    }
    for path in written {
        eprintln!("bench: chart {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cdf_climbs_to_one_in_order() {
        assert_eq!(
            cdf(&[3.0, 1.0, 2.0, 2.0]),
            vec![(1.0, 0.25), (2.0, 0.5), (2.0, 0.75), (3.0, 1.0)]
        );
    }

    #[test]
    fn ticks_cover_the_values() {
        let axis = Axis::linear(0.0, 9.07);
        assert_eq!(axis.lo, 0.0);
        assert!(axis.hi >= 9.07 && axis.hi <= 10.0, "{}", axis.hi);
        assert_eq!(axis.ticks, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let log = Axis::log(10.0, 500.0);
        assert_eq!((log.lo, log.hi), (1.0, 3.0));
        assert!(log.ticks.contains(&500.0) && log.ticks.contains(&10.0));
    }

    #[test]
    fn names_are_escaped_and_every_series_is_drawn() {
        let chart = Chart {
            title: "a <b> & c".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_x: false,
            series: vec![
                Series {
                    name: "cohort".into(),
                    points: vec![(1.0, 0.5), (2.0, 1.0)],
                    step: true,
                    colour: colour("cohort"),
                    dashed: false,
                },
                Series {
                    name: "memberlist, loss 5%".into(),
                    points: vec![(10.0, 100.0), (100.0, 120.0)],
                    step: false,
                    colour: colour("memberlist"),
                    dashed: true,
                },
            ],
        };
        let svg = chart.svg();
        assert!(svg.contains("a &lt;b&gt; &amp; c"), "{svg}");
        assert_eq!(svg.matches("<path ").count(), 2);
        assert_eq!(svg.matches("<circle ").count(), 2);
        assert!(svg.contains("stroke-dasharray"));
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
