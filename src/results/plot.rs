//! `report --plot`: SVG figures — accuracy per domain per method with error bars over seeds and the
//! chance line, and training curves (loss and accuracy against step) from each run's and each stage's
//! `metrics.jsonl`. Legends sit in a panel of their own, beside the data.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::eval::Results;
use super::report::mean_std;

/// Grid lines: an opaque light grey, which every SVG renderer draws light (some ignore opacity).
const GRID: RGBColor = RGBColor(221, 221, 221);

/// Matplotlib's ten "tab10" colours: a stage per domain and a router fit before they repeat.
const COLORS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the figure: {e}")
}

/// How a legend entry is drawn: a filled box (a bar), a line, or a dashed line (the chance level).
#[derive(Clone, Copy)]
enum Swatch {
    Bar,
    Line,
    Dashed,
}

/// The legend in its own panel beside the plot, so it never covers the data.
fn draw_legend(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    entries: &[(String, RGBColor, Swatch)],
) -> Result<()> {
    // Rows that fit the panel; past them one last row says how many were left out.
    let fit = ((area.dim_in_pixel().1 as i32 - 50) / 24).max(1) as usize;
    let shown = if entries.len() > fit { fit - 1 } else { entries.len() };
    if shown < entries.len() {
        let more = format!("… and {} more (one figure per run: report RUN --plot)", entries.len() - shown);
        area.draw(&Text::new(more, (4, 50 + 24 * shown as i32 - 7), ("sans-serif", 14))).map_err(err)?;
    }
    for (i, (label, color, swatch)) in entries.iter().take(shown).enumerate() {
        let y = 50 + 24 * i as i32;
        match swatch {
            Swatch::Bar => area.draw(&Rectangle::new([(8, y - 6), (22, y + 6)], color.filled())).map_err(err)?,
            Swatch::Line => area.draw(&PathElement::new(vec![(4, y), (26, y)], color.stroke_width(2))).map_err(err)?,
            Swatch::Dashed => {
                for x in [4, 13, 22] {
                    area.draw(&PathElement::new(vec![(x, y), (x + 5, y)], color.stroke_width(1))).map_err(err)?;
                }
            }
        }
        area.draw(&Text::new(label.clone(), (34, y - 7), ("sans-serif", 14))).map_err(err)?;
    }
    Ok(())
}

/// A panel wide enough for the longest legend label, at most half the figure.
fn legend_width(labels: impl Iterator<Item = usize>, figure_width: u32) -> u32 {
    let longest = labels.max().unwrap_or(0) as u32;
    (50 + 8 * longest).min(figure_width / 2)
}

/// Grouped bars: one group per domain, one bar per (method, backbone), whiskers at ± one std where a
/// bar has two or more seeds, a dashed line at chance (0.5), the legend beside the plot.
pub fn accuracy_figure(runs: &[Results], path: &Path) -> Result<()> {
    let mut groups: BTreeMap<String, Vec<&Results>> = BTreeMap::new();
    for r in runs {
        groups.entry(format!("{} ({})", r.method, r.backbone)).or_default().push(r);
    }
    let domains: Vec<&str> = super::report::domain_columns(runs);
    let most_seeds = groups.values().map(Vec::len).max().unwrap_or(0);
    let caption = if most_seeds >= 2 {
        "Pairwise accuracy per domain (mean ± std over seeds)".to_string()
    } else {
        "Pairwise accuracy per domain (1 seed)".to_string()
    };
    let (width, height) = (1000, 480);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panel = legend_width(groups.keys().map(String::len).chain([12]), width);
    let (plot, legend) = root.split_horizontally(width - panel);
    let mut chart = ChartBuilder::on(&plot)
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..domains.len() as f64, 0f64..1f64)
        .map_err(err)?;
    let names = domains.clone();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(domains.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).map(|s| s.to_string()).unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("accuracy")
        .bold_line_style(GRID)
        .light_line_style(WHITE)
        .draw()
        .map_err(err)?;
    let width = 0.8 / groups.len().max(1) as f64;
    let mut entries = Vec::new();
    for (g, (label, rs)) in groups.iter().enumerate() {
        let color = COLORS[g % COLORS.len()];
        let mut bars = Vec::new();
        let mut whiskers = Vec::new();
        for (d, domain) in domains.iter().enumerate() {
            let values: Vec<f64> = rs.iter().filter_map(|r| r.domains.get(*domain).map(|x| x.accuracy)).collect();
            if values.is_empty() {
                continue;
            }
            let (mean, std) = mean_std(&values);
            let x0 = d as f64 + 0.1 + g as f64 * width;
            bars.push(Rectangle::new([(x0, 0.0), (x0 + width * 0.9, mean)], color.filled()));
            if values.len() >= 2 {
                let x = x0 + width * 0.45;
                whiskers.push(ErrorBar::new_vertical(x, mean - std, mean, mean + std, BLACK.stroke_width(1), 6));
            }
        }
        chart.draw_series(bars).map_err(err)?;
        chart.draw_series(whiskers).map_err(err)?;
        let seeds = if rs.len() == 1 { "1 seed".to_string() } else { format!("{} seeds", rs.len()) };
        entries.push((format!("{label}, {seeds}"), color, Swatch::Bar));
    }
    let chance = [(0.0, 0.5), (domains.len() as f64, 0.5)];
    chart.draw_series(DashedLineSeries::new(chance, 6, 4, BLACK.stroke_width(1))).map_err(err)?;
    entries.push(("chance (0.5)".to_string(), BLACK, Swatch::Dashed));
    draw_legend(&legend, &entries)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One metric line of a run.
struct Point {
    step: f64,
    loss: f64,
    accuracy: f64,
}

fn read_metrics(file: &Path) -> Vec<Point> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Point { step: v["step"].as_f64()?, loss: v["loss"].as_f64()?, accuracy: v["accuracy"].as_f64()? })
        })
        .collect()
}

/// A run's training curves: its own `metrics.jsonl`, and each stage's (`stages/…/metrics.jsonl`: a
/// routed run's reward models and router, DMoERM's stages), labelled by the stage's path.
fn run_curves(label: &str, run: &Path) -> Vec<(String, Vec<Point>)> {
    let mut out = Vec::new();
    let own = read_metrics(&run.join("metrics.jsonl"));
    if !own.is_empty() {
        out.push((label.to_string(), own));
    }
    let mut stack = vec![run.join("stages")];
    let mut files = Vec::new();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == "metrics.jsonl") {
                files.push(path);
            }
        }
    }
    files.sort();
    for file in files {
        let points = read_metrics(&file);
        let stage = file.parent().and_then(|p| p.strip_prefix(run.join("stages")).ok());
        if let (false, Some(stage)) = (points.is_empty(), stage) {
            out.push((format!("{label}: {}", stage.display()), points));
        }
    }
    out
}

/// The y range of `values` with a margin, so a curve fills its panel (a flat one gets ±0.05).
fn fitted_range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let margin = ((hi - lo) * 0.05).max(0.05);
    (lo - margin).max(0.0)..hi + margin
}

/// Loss (top, its axis fitted to the data) and running train accuracy (bottom) against step, one line
/// per run and per stage of a run trained in stages; the legend beside the plots.
pub fn curves_figure(runs: &[(String, &Path)], path: &Path) -> Result<()> {
    let series: Vec<(String, Vec<Point>)> = runs.iter().flat_map(|(label, dir)| run_curves(label, dir)).collect();
    let max_step = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.step)).fold(1.0, f64::max);
    let loss_range = fitted_range(series.iter().flat_map(|(_, p)| p.iter().map(|p| p.loss)));
    let (width, height) = (1100, 640);
    let root = SVGBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let panel = legend_width(series.iter().map(|(l, _)| l.len()), width);
    let (plots, legend) = root.split_horizontally(width - panel);
    let (top, bottom) = plots.split_vertically(height / 2);
    for (area, metric, caption, y_range) in
        [(&top, "loss", "Training loss", loss_range), (&bottom, "train accuracy", "Running train accuracy", 0f64..1f64)]
    {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, y_range)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc(metric)
            .x_label_formatter(&|step| format!("{step:.0}"))
            .bold_line_style(GRID)
            .light_line_style(WHITE)
            .draw()
            .map_err(err)?;
        for (i, (_, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let line = points.iter().map(|p| (p.step, if metric == "loss" { p.loss } else { p.accuracy }));
            chart.draw_series(LineSeries::new(line, color.stroke_width(2))).map_err(err)?;
        }
    }
    let entries: Vec<(String, RGBColor, Swatch)> = series
        .iter()
        .enumerate()
        .map(|(i, (label, _))| (label.clone(), COLORS[i % COLORS.len()], Swatch::Line))
        .collect();
    draw_legend(&legend, &entries)?;
    root.present().map_err(err)?;
    Ok(())
}

/// MoRE's expert shares as a heat map: one row per domain, one column per expert, darker = more gate
/// weight. Draws the first run that has expert shares; `false` when none has.
pub fn experts_figure(runs: &[Results], path: &Path) -> Result<bool> {
    let Some(run) = runs.iter().find(|r| r.experts.is_some()) else { return Ok(false) };
    let Some(shares) = &run.experts else { return Ok(false) };
    let domains: Vec<&String> = shares.shares.keys().collect();
    let root =
        SVGBackend::new(path, (160 + 90 * shares.experts as u32, 120 + 50 * domains.len() as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let caption = format!("Expert shares: {} ({}) seed {}", run.method, run.backbone, run.seed);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(110)
        .build_cartesian_2d(0f64..shares.experts as f64, 0f64..domains.len() as f64)
        .map_err(err)?;
    let names: Vec<String> = domains.iter().map(|d| d.to_string()).collect();
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(shares.experts * 2 + 1)
        .y_labels(domains.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor();
            if (x - i - 0.5).abs() < 0.01 {
                format!("expert {i}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&move |y| {
            let i = y.floor() as usize;
            if (y - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(err)?;
    for (row, domain) in domains.iter().enumerate() {
        for (e, share) in shares.shares[*domain].iter().enumerate() {
            let shade = (255.0 * (1.0 - share.clamp(0.0, 1.0))) as u8;
            let rect = Rectangle::new(
                [(e as f64, row as f64), (e as f64 + 1.0, row as f64 + 1.0)],
                RGBColor(shade, shade, 255).filled(),
            );
            chart.draw_series(std::iter::once(rect)).map_err(err)?;
            let label = Text::new(format!("{share:.2}"), (e as f64 + 0.35, row as f64 + 0.55), ("sans-serif", 14));
            chart.draw_series(std::iter::once(label)).map_err(err)?;
        }
    }
    root.present().map_err(err)?;
    Ok(true)
}
