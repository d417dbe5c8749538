//! `report --plot`: SVG figures — accuracy per domain per method with error bars over seeds, and
//! training curves (loss and accuracy against step) from each run's `metrics.jsonl`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::eval::Results;
use super::report::mean_std;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the figure: {e}")
}

/// Grouped bars: one group per domain, one bar per (method, backbone), whiskers at ± one std over seeds.
pub fn accuracy_figure(runs: &[Results], path: &Path) -> Result<()> {
    let mut groups: BTreeMap<String, Vec<&Results>> = BTreeMap::new();
    for r in runs {
        groups.entry(format!("{} ({})", r.method, r.backbone)).or_default().push(r);
    }
    let domains: Vec<&str> = super::report::domain_columns(runs);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Pairwise accuracy per domain (mean ± std over seeds)", ("sans-serif", 20))
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
        .draw()
        .map_err(err)?;
    let width = 0.8 / groups.len().max(1) as f64;
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
            whiskers.push(ErrorBar::new_vertical(
                x0 + width * 0.45,
                mean - std,
                mean,
                mean + std,
                BLACK.stroke_width(1),
                6,
            ));
        }
        chart
            .draw_series(bars)
            .map_err(err)?
            .label(label.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(whiskers).map_err(err)?;
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

/// One metric line of a run.
struct Point {
    step: f64,
    loss: f64,
    accuracy: f64,
}

fn read_metrics(run: &Path) -> Vec<Point> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            Some(Point { step: v["step"].as_f64()?, loss: v["loss"].as_f64()?, accuracy: v["accuracy"].as_f64()? })
        })
        .collect()
}

/// Loss (top) and running train accuracy (bottom) against step, one line per run.
pub fn curves_figure(runs: &[(String, &Path)], path: &Path) -> Result<()> {
    let series: Vec<(String, Vec<Point>)> =
        runs.iter().map(|(label, dir)| (label.clone(), read_metrics(dir))).collect();
    let max_step = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.step)).fold(1.0, f64::max);
    let max_loss = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.loss)).fold(0.8, f64::max);
    let root = SVGBackend::new(path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(320);
    for (area, metric, caption, y_max) in
        [(&top, "loss", "Training loss", max_loss * 1.05), (&bottom, "train accuracy", "Running train accuracy", 1.0)]
    {
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..max_step, 0f64..y_max)
            .map_err(err)?;
        chart.configure_mesh().x_desc("step").y_desc(metric).draw().map_err(err)?;
        for (i, (label, points)) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let line = points.iter().map(|p| (p.step, if metric == "loss" { p.loss } else { p.accuracy }));
            chart
                .draw_series(LineSeries::new(line, color.stroke_width(2)))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2)));
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    }
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
