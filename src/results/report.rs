//! `rmroute report`: runs grouped by method and backbone, as the paper's Table 2 (accuracy per domain,
//! mean ± std over seeds), Table 3 (parameters, training time per epoch) and Table 6 (inference time per
//! step), in Markdown and CSV.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::eval::Results;
use crate::data::DOMAINS;

/// Mean and sample standard deviation (n − 1; 0 for one run).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Reads `results.json` of each run directory (or a `results.json` path given directly). Results
/// scored in different number formats (`eval --dtype`) are refused: one table, one format.
pub fn read_results(paths: &[PathBuf]) -> Result<Vec<Results>> {
    let mut runs = Vec::new();
    for p in paths {
        let file = if p.is_dir() { p.join("results.json") } else { p.clone() };
        let bytes =
            std::fs::read(&file).with_context(|| format!("reading {} (run `rmroute eval` first)", file.display()))?;
        let results: Results = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", file.display()))?;
        if let Some((first, first_file)) = runs.first().map(|r: &(Results, PathBuf)| (r.0.precision, &r.1)) {
            if results.precision != first {
                anyhow::bail!(
                    "{} was scored in {} and {} in {}: evaluate every run with the same `--dtype`",
                    first_file.display(),
                    first.name(),
                    file.display(),
                    results.precision.name()
                );
            }
        }
        runs.push((results, file));
    }
    Ok(runs.into_iter().map(|(r, _)| r).collect())
}

/// The domains of `runs` as table columns: the paper's five first, in its order, then any other by name.
pub fn domain_columns(runs: &[Results]) -> Vec<&str> {
    let mut domains: Vec<&str> =
        DOMAINS.iter().copied().filter(|d| runs.iter().any(|r| r.domains.contains_key(*d))).collect();
    let others: std::collections::BTreeSet<&str> =
        runs.iter().flat_map(|r| r.domains.keys().map(String::as_str)).filter(|d| !DOMAINS.contains(d)).collect();
    domains.extend(others);
    domains
}

pub struct Tables {
    pub markdown: String,
    /// `(file name, CSV text)`.
    pub csv: Vec<(String, String)>,
}

/// The three tables for a set of runs.
pub fn tables(runs: &[Results]) -> Tables {
    let mut groups: BTreeMap<(String, String), Vec<&Results>> = BTreeMap::new();
    for r in runs {
        groups.entry((r.method.clone(), r.backbone.clone())).or_default().push(r);
    }
    let domains = domain_columns(runs);
    let largest_baseline = runs
        .iter()
        .filter(|r| r.method == "baseline")
        .map(|r| r.total_parameters)
        .max()
        .or_else(|| runs.iter().map(|r| r.total_parameters).max())
        .unwrap_or(1)
        .max(1);
    let fmt = |(m, s): (f64, f64)| if m.is_nan() { "-".to_string() } else { format!("{m:.4} ± {s:.4}") };

    let mut md = String::from("Table 2: pairwise accuracy (mean ± std over seeds)\n\n");
    let mut csv2 = String::from("method,backbone,seeds");
    let header: Vec<String> = domains.iter().map(|d| d.to_string()).chain(["average".to_string()]).collect();
    md.push_str(&format!("| Method | Backbone | Seeds | {} |\n", header.join(" | ")));
    md.push_str(&format!("|---|---|---:|{}\n", "---:|".repeat(header.len())));
    for h in &header {
        csv2.push_str(&format!(",{h}_mean,{h}_std"));
    }
    csv2.push('\n');
    for ((method, backbone), rs) in &groups {
        let mut cells = Vec::new();
        csv2.push_str(&format!("{method},{backbone},{}", rs.len()));
        for d in &domains {
            let values: Vec<f64> = rs.iter().filter_map(|r| r.domains.get(*d).map(|x| x.accuracy)).collect();
            let ms = mean_std(&values);
            cells.push(fmt(ms));
            csv2.push_str(&format!(",{:.6},{:.6}", ms.0, ms.1));
        }
        let ms = mean_std(&rs.iter().map(|r| r.mean_accuracy).collect::<Vec<_>>());
        cells.push(fmt(ms));
        csv2.push_str(&format!(",{:.6},{:.6}\n", ms.0, ms.1));
        md.push_str(&format!("| {method} | {backbone} | {} | {} |\n", rs.len(), cells.join(" | ")));
    }

    md.push_str("\nTable 3: parameters and training time per epoch\n\n| Method | Backbone | Total parameters (M) | Trainable (M) | 1 epoch train time (s) |\n|---|---|---:|---:|---:|\n");
    let mut csv3 = String::from("method,backbone,total_parameters,share_of_largest_baseline,trainable_parameters,epoch_seconds_mean,epoch_seconds_std\n");
    for ((method, backbone), rs) in &groups {
        let total = rs[0].total_parameters;
        let share = 100.0 * total as f64 / largest_baseline as f64;
        let epochs: Vec<f64> = rs.iter().flat_map(|r| r.epoch_seconds.iter().copied()).collect();
        let (em, es) = mean_std(&epochs);
        md.push_str(&format!(
            "| {method} | {backbone} | {:.1} ({share:.1}%) | {:.2} | {em:.0} ± {es:.0} |\n",
            total as f64 / 1e6,
            rs[0].trainable_parameters as f64 / 1e6
        ));
        csv3.push_str(&format!(
            "{method},{backbone},{total},{share:.2},{},{em:.3},{es:.3}\n",
            rs[0].trainable_parameters
        ));
    }

    md.push_str("\nTable 6: inference time per step (one input)\n\n| Method | Backbone | 1 step (s) | Pairs/s at batch 32 |\n|---|---|---:|---:|\n");
    let mut csv6 = String::from("method,backbone,seconds_per_step_mean,seconds_per_step_std,pairs_per_second_mean\n");
    for ((method, backbone), rs) in &groups {
        let (sm, ss) = mean_std(&rs.iter().map(|r| r.seconds_per_step).collect::<Vec<_>>());
        let (pm, _) = mean_std(&rs.iter().map(|r| r.pairs_per_second).collect::<Vec<_>>());
        md.push_str(&format!("| {method} | {backbone} | {sm:.4} | {pm:.1} |\n"));
        csv6.push_str(&format!("{method},{backbone},{sm:.6},{ss:.6},{pm:.3}\n"));
    }
    md.push_str(&routed_tables(runs));
    for r in runs {
        if let Some(tasks) = &r.tasks {
            md.push_str(&format!("\n{} ({}) seed {}: ", r.method, r.backbone, r.seed));
            md.push_str(&tasks_markdown(tasks));
        }
    }
    for r in runs {
        if let Some(shares) = &r.experts {
            md.push_str(&format!("\n{} ({}) seed {}: ", r.method, r.backbone, r.seed));
            md.push_str(&experts_markdown(shares));
        }
    }
    Tables {
        markdown: md,
        csv: vec![("table2.csv".into(), csv2), ("table3.csv".into(), csv3), ("table6.csv".into(), csv6)],
    }
}

/// The router's accuracy per domain, over test pairs and over distinct prompts, as Markdown.
pub fn router_markdown(router: &super::eval::RouterResults) -> String {
    let mut md = String::from(
        "Router accuracy (test pairs: each pair's prompt routed; prompts: each distinct prompt once)\n\n\
         | domain | pairs | accuracy | prompts | accuracy |\n|---|---:|---:|---:|---:|\n",
    );
    for (i, label) in router.labels.iter().enumerate() {
        let pairs: usize = router.confusion.get(i).map(|row| row.iter().sum()).unwrap_or(0);
        let cell = |v: Option<&f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
        let prompts = router.prompts.get(label).map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        md.push_str(&format!(
            "| {label} | {pairs} | {} | {prompts} | {} |\n",
            cell(router.per_domain.get(label)),
            cell(router.per_domain_prompts.get(label))
        ));
    }
    let all = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    md.push_str(&format!("| all | | {} | | {} |\n", all(Some(router.accuracy)), all(router.prompt_accuracy)));
    md
}

/// The router's confusion matrix as Markdown (rows: true domain, columns: the router's choice).
pub fn confusion_markdown(router: &super::eval::RouterResults) -> String {
    let mut md = format!(
        "Router confusion (rows: true domain, columns: routed to; accuracy {:.4})\n\n| true \\ routed | {} |\n|---|{}\n",
        router.accuracy,
        router.labels.join(" | "),
        "---:|".repeat(router.labels.len())
    );
    for (label, row) in router.labels.iter().zip(&router.confusion) {
        let cells: Vec<String> = row.iter().map(|c| c.to_string()).collect();
        md.push_str(&format!("| {label} | {} |\n", cells.join(" | ")));
    }
    md
}

/// MoRE's expert shares as Markdown: one row per domain, one column per expert.
pub fn experts_markdown(shares: &super::eval::ExpertShares) -> String {
    let header: Vec<String> = (0..shares.experts).map(|e| format!("expert {e}")).collect();
    let mut md = format!(
        "Expert shares (mean gate weight per domain)\n\n| domain | {} |\n|---|{}\n",
        header.join(" | "),
        "---:|".repeat(shares.experts)
    );
    for (domain, row) in &shares.shares {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
        md.push_str(&format!("| {domain} | {} |\n", cells.join(" | ")));
    }
    md
}

/// Routed methods: accuracy with the router's choices and with the true domains, and each part's
/// parameters and training time (the paper's Table 3 lists each domain model and the router).
pub fn routed_tables(runs: &[Results]) -> String {
    let routed: Vec<&Results> = runs.iter().filter(|r| r.oracle.is_some()).collect();
    if routed.is_empty() {
        return String::new();
    }
    let mut md =
        String::from("\nRouted methods: accuracy with the router's choices and with the true domain (oracle)\n\n");
    md.push_str(
        "| Method | Backbone | Seed | Domain | Routed | Oracle | Router (pairs) | Router (prompts) |\n\
         |---|---|---:|---|---:|---:|---:|---:|\n",
    );
    for r in &routed {
        for (domain, result) in &r.domains {
            let oracle = r.oracle.as_ref().and_then(|o| o.get(domain)).map(|x| x.accuracy).unwrap_or(f64::NAN);
            let router = r.router.as_ref().and_then(|x| x.per_domain.get(domain)).copied().unwrap_or(f64::NAN);
            let prompts = r.router.as_ref().and_then(|x| x.per_domain_prompts.get(domain)).copied();
            let prompts = prompts.map(|p| format!("{p:.4}")).unwrap_or_else(|| "-".into());
            md.push_str(&format!(
                "| {} | {} | {} | {domain} | {:.4} | {oracle:.4} | {router:.4} | {prompts} |\n",
                r.method, r.backbone, r.seed, result.accuracy
            ));
        }
    }
    md.push_str("\nParts: parameters and training time per epoch\n\n| Method | Backbone | Seed | Part | Parameters (M) | 1 epoch train time (s) |\n|---|---|---:|---|---:|---:|\n");
    for r in &routed {
        // ARLISS's parts are adapters: the frozen base they share is counted once, beside them.
        let shared = r.total_parameters.saturating_sub(r.parts.iter().map(|p| p.total_parameters).sum());
        if shared > 0 {
            md.push_str(&format!(
                "| {} | {} | {} | base (frozen, shared) | {:.1} | - |\n",
                r.method,
                r.backbone,
                r.seed,
                shared as f64 / 1e6
            ));
        }
        for part in &r.parts {
            let (em, _) = mean_std(&part.epoch_seconds);
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} | {em:.0} |\n",
                r.method,
                r.backbone,
                r.seed,
                part.name,
                part.total_parameters as f64 / 1e6
            ));
        }
    }
    for r in &routed {
        if let Some(timings) = &r.switching {
            md.push_str(&format!("\n{} ({}) seed {}: ", r.method, r.backbone, r.seed));
            md.push_str(&switching_markdown(timings));
            if let Some(memory) = &r.memory {
                md.push_str(&format!(
                    "\nResident memory: {:.1} MiB once loaded, {:.1} MiB peak\n",
                    memory.loaded_bytes as f64 / 1048576.0,
                    memory.peak_bytes as f64 / 1048576.0
                ));
            }
        }
    }
    for r in &routed {
        if let Some(router) = &r.router {
            md.push_str(&format!("\n{} ({}) seed {}: ", r.method, r.backbone, r.seed));
            md.push_str(&confusion_markdown(router));
        }
    }
    md
}

/// DMoERM's inner models: per task, the stage-1 model, each capability expert on its own point and on
/// the overall preference, and the aggregator; a task without aspect labels says it is a single expert.
pub fn tasks_markdown(tasks: &BTreeMap<String, super::eval::TaskResults>) -> String {
    let mut md = String::from(
        "DMoERM inner models on each task's test pairs (true task)\n\n| Task | Model | On its point (pairs) | Overall |\n|---|---|---:|---:|\n",
    );
    let result = |r: &super::eval::DomainResult| format!("{:.4} ({})", r.accuracy, r.pairs);
    for (task, t) in tasks {
        let few: Vec<String> = t.without_expert.iter().map(|(a, n)| format!("{a} {n}")).collect();
        let stage1 = match (t.single_expert, few.is_empty()) {
            (true, true) => "reward model (single expert: no aspect labels)".to_string(),
            (true, false) => {
                format!("reward model (single expert: too few labelled pairs for an expert: {})", few.join(", "))
            }
            (false, _) => "stage-1 reward model".to_string(),
        };
        md.push_str(&format!("| {task} | {stage1} | - | {:.4} |\n", t.phase1.accuracy));
        for (aspect, e) in &t.experts {
            let point = e.point.as_ref().map(result).unwrap_or_else(|| "no labelled test pairs".into());
            md.push_str(&format!("| {task} | expert `{aspect}` | {point} | {:.4} |\n", e.overall.accuracy));
        }
        if !t.single_expert && !few.is_empty() {
            md.push_str(&format!("| {task} | no expert (too few labelled pairs): {} | - | - |\n", few.join(", ")));
        }
        if let Some(a) = &t.aggregator {
            md.push_str(&format!("| {task} | aggregator over {} experts | - | {:.4} |\n", t.experts.len(), a.accuracy));
        }
    }
    md
}

/// ARLISS's inference with each way of switching adapters, on mixed-domain batches.
pub fn switching_markdown(timings: &[super::eval::SwitchingTiming]) -> String {
    let mut md = String::from(
        "Routed scoring of mixed-domain batches by switching mode\n\n| Switching | s per step (one input per domain) | pairs/s (32 per batch) |\n|---|---:|---:|\n",
    );
    for t in timings {
        md.push_str(&format!("| {} | {:.4} | {:.1} |\n", t.mode.name(), t.seconds_per_step, t.pairs_per_second));
    }
    md
}

/// Writes the CSV files into `dir`.
pub fn write_csv(tables: &Tables, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (name, text) in &tables.csv {
        let path = dir.join(name);
        crate::io::write_atomic(&path, text.as_bytes())?;
        written.push(path);
    }
    Ok(written)
}
