//! Whether a table moved: Table 2's accuracies (each method, backbone and domain, and the average)
//! against an expected table kept in the repository, each cell with a tolerance from the spread
//! measured when the expected table was made (`report --save-expected`, `report --compare`).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use super::eval::Results;
use super::report::mean_std;

/// A figure fails when it is more than this many tolerances from the expected mean.
pub const DEFAULT_K: f64 = 3.0;

/// The column of Table 2 that averages the domains.
pub const AVERAGE: &str = "average";

/// An expected Table 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedTable {
    /// How it was made and how to read it.
    pub about: String,
    /// A figure fails when `|observed − mean| > k · tolerance`.
    pub k: f64,
    pub cells: Vec<ExpectedCell>,
}

/// One cell of an expected Table 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedCell {
    pub method: String,
    pub backbone: String,
    /// A domain, or `average`.
    pub domain: String,
    /// Mean accuracy over the seeds.
    pub mean: f64,
    /// Sample standard deviation over the seeds.
    pub std: f64,
    pub seeds: usize,
    /// Test pairs behind each seed's accuracy (for the average, all its domains' together).
    pub pairs: usize,
    /// The sampling error of the accuracy on its test pairs: √(p(1−p)/n) for a domain; for the
    /// unweighted average of D domains, √(Σ pᵢ(1−pᵢ)/nᵢ)/D, which its smallest domains dominate.
    pub sampling_error: f64,
}

impl ExpectedCell {
    /// The larger of the seeds' spread and the sampling error: with two seeds the spread alone can come
    /// out near zero by chance, while the test pairs bound how well any accuracy is known.
    pub fn tolerance(&self) -> f64 {
        self.std.max(self.sampling_error)
    }
}

/// √(p(1−p)/n) of an accuracy `p` on `n` pairs.
fn sampling_variance(p: f64, n: usize) -> f64 {
    let p = p.clamp(0.0, 1.0);
    p * (1.0 - p) / n.max(1) as f64
}

/// Table 2's cells of `runs`, grouped by method and backbone: per domain and on average.
/// A cell's method, backbone and domain.
type CellKey = (String, String, String);

/// Each cell's accuracies and test pairs, one of each per seed.
fn cells(runs: &[Results]) -> BTreeMap<CellKey, (Vec<f64>, Vec<usize>)> {
    let mut cells: BTreeMap<CellKey, (Vec<f64>, Vec<usize>)> = BTreeMap::new();
    for r in runs {
        for (domain, d) in &r.domains {
            let cell = cells.entry((r.method.clone(), r.backbone.clone(), domain.clone())).or_default();
            cell.0.push(d.accuracy);
            cell.1.push(d.pairs);
        }
        let cell = cells.entry((r.method.clone(), r.backbone.clone(), AVERAGE.to_string())).or_default();
        cell.0.push(r.mean_accuracy);
        cell.1.push(r.domains.values().map(|d| d.pairs).sum());
    }
    cells
}

/// The expected table of `runs` (several seeds of each method), read with `k` tolerances.
pub fn expected_table(runs: &[Results], k: f64, about: &str) -> ExpectedTable {
    let mut cells: Vec<ExpectedCell> = cells(runs)
        .into_iter()
        .map(|((method, backbone, domain), (values, pairs))| {
            // Seeds scored on different numbers of pairs: the fewest, whose error is the largest.
            let pairs = pairs.into_iter().min().unwrap_or(0);
            let (mean, std) = mean_std(&values);
            let sampling_error = sampling_variance(mean, pairs).sqrt();
            ExpectedCell { method, backbone, domain, mean, std, seeds: values.len(), pairs, sampling_error }
        })
        .collect();
    // The average's sampling error from its domains' (cells are sorted, so a group's are together).
    let domains: Vec<(String, String, f64)> = cells
        .iter()
        .filter(|c| c.domain != AVERAGE)
        .map(|c| (c.method.clone(), c.backbone.clone(), sampling_variance(c.mean, c.pairs)))
        .collect();
    for cell in cells.iter_mut().filter(|c| c.domain == AVERAGE) {
        let of_group: Vec<f64> =
            domains.iter().filter(|(m, b, _)| *m == cell.method && *b == cell.backbone).map(|d| d.2).collect();
        if !of_group.is_empty() {
            cell.sampling_error = of_group.iter().sum::<f64>().sqrt() / of_group.len() as f64;
        }
    }
    ExpectedTable { about: about.to_string(), k, cells }
}

/// What [`compare`] found.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Cells within their tolerance, as lines for the user.
    pub passed: Vec<String>,
    /// Cells outside it, naming method, backbone, domain and both numbers.
    pub failed: Vec<String>,
    /// Cells of the runs that the expected table has no figure for (a method or domain added since it
    /// was saved): nothing checks them until it is refreshed.
    pub unchecked: Vec<String>,
}

/// `runs` against `expected`: each expected cell's observed mean over the runs' seeds must lie within
/// `k` tolerances of the expected mean. A method, backbone or domain of the expected table that the
/// runs lack is an error, not a pass.
pub fn compare(runs: &[Results], expected: &ExpectedTable) -> Result<Comparison> {
    if expected.k.is_nan() || expected.k <= 0.0 {
        bail!("the expected table's `k` must be positive, got {}", expected.k);
    }
    if expected.cells.is_empty() {
        bail!("the expected table has no cells: it checks nothing (make one with --save-expected)");
    }
    let observed = cells(runs);
    let groups: std::collections::BTreeSet<String> =
        runs.iter().map(|r| format!("{} ({})", r.method, r.backbone)).collect();
    let mut missing = Vec::new();
    let mut result = Comparison::default();
    for cell in &expected.cells {
        let key = (cell.method.clone(), cell.backbone.clone(), cell.domain.clone());
        let Some((values, pairs)) = observed.get(&key) else {
            missing.push(format!("{} ({}) {}", cell.method, cell.backbone, cell.domain));
            continue;
        };
        if let Some(pairs) = pairs.iter().find(|&&p| p != cell.pairs) {
            bail!(
                "{} ({}), {}: scored on {pairs} test pairs, the expected table on {}: not the same test set, so \
                 its tolerance does not apply (score every test pair, or the same sample, as the table was made)",
                cell.method,
                cell.backbone,
                cell.domain,
                cell.pairs
            );
        }
        let (mean, _) = mean_std(values);
        let tolerance = cell.tolerance();
        let line = format!(
            "{} ({}), {}: {mean:.4} against {:.4} ± {:.4} ({} × {tolerance:.4}; {} seeds, {} pairs)",
            cell.method,
            cell.backbone,
            cell.domain,
            cell.mean,
            expected.k * tolerance,
            expected.k,
            cell.seeds,
            cell.pairs
        );
        if (mean - cell.mean).abs() > expected.k * tolerance || mean.is_nan() {
            result.failed.push(line);
        } else {
            result.passed.push(line);
        }
    }
    let known: std::collections::BTreeSet<(String, String, String)> =
        expected.cells.iter().map(|c| (c.method.clone(), c.backbone.clone(), c.domain.clone())).collect();
    for ((method, backbone, domain), (values, _)) in &observed {
        if !known.contains(&(method.clone(), backbone.clone(), domain.clone())) {
            let (mean, _) = mean_std(values);
            result.unchecked.push(format!("{method} ({backbone}), {domain}: {mean:.4}"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "the runs lack {} of the expected table ({}); they hold {}: run the missing methods, or refresh the \
             expected table on purpose",
            missing.len(),
            missing.join(", "),
            groups.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(result)
}
