//! Whether a table moved: Table 2's accuracies (each method, backbone and domain, and the average)
//! against an expected table kept in the repository, each cell with a tolerance from the spread
//! measured when the expected table was made (`report --save-expected`, `report --compare`).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::eval::Results;
use crate::report::mean_std;

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
    /// Test pairs behind each seed's accuracy.
    pub pairs: usize,
}

impl ExpectedCell {
    /// The larger of the seeds' spread and the sampling error of an accuracy on `pairs` test pairs,
    /// √(p(1−p)/n): with two seeds the spread alone can come out near zero by chance.
    pub fn tolerance(&self) -> f64 {
        let p = self.mean.clamp(0.0, 1.0);
        let sampling = (p * (1.0 - p) / self.pairs.max(1) as f64).sqrt();
        self.std.max(sampling)
    }
}

/// Table 2's cells of `runs`, grouped by method and backbone: per domain and on average.
fn cells(runs: &[Results]) -> BTreeMap<(String, String, String), (Vec<f64>, usize)> {
    let mut cells: BTreeMap<(String, String, String), (Vec<f64>, usize)> = BTreeMap::new();
    for r in runs {
        for (domain, d) in &r.domains {
            let cell = cells.entry((r.method.clone(), r.backbone.clone(), domain.clone())).or_default();
            cell.0.push(d.accuracy);
            cell.1 = d.pairs;
        }
        let cell = cells.entry((r.method.clone(), r.backbone.clone(), AVERAGE.to_string())).or_default();
        cell.0.push(r.mean_accuracy);
        cell.1 = r.domains.values().map(|d| d.pairs).sum();
    }
    cells
}

/// The expected table of `runs` (several seeds of each method), read with `k` tolerances.
pub fn expected_table(runs: &[Results], k: f64, about: &str) -> ExpectedTable {
    let cells = cells(runs)
        .into_iter()
        .map(|((method, backbone, domain), (values, pairs))| {
            let (mean, std) = mean_std(&values);
            ExpectedCell { method, backbone, domain, mean, std, seeds: values.len(), pairs }
        })
        .collect();
    ExpectedTable { about: about.to_string(), k, cells }
}

/// What [`compare`] found.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Cells within their tolerance, as lines for the user.
    pub passed: Vec<String>,
    /// Cells outside it, naming method, backbone, domain and both numbers.
    pub failed: Vec<String>,
}

/// `runs` against `expected`: each expected cell's observed mean over the runs' seeds must lie within
/// `k` tolerances of the expected mean. A method, backbone or domain of the expected table that the
/// runs lack is an error, not a pass.
pub fn compare(runs: &[Results], expected: &ExpectedTable) -> Result<Comparison> {
    if expected.k.is_nan() || expected.k <= 0.0 {
        bail!("the expected table's `k` must be positive, got {}", expected.k);
    }
    let observed = cells(runs);
    let groups: std::collections::BTreeSet<String> =
        runs.iter().map(|r| format!("{} ({})", r.method, r.backbone)).collect();
    let mut missing = Vec::new();
    let mut result = Comparison::default();
    for cell in &expected.cells {
        let key = (cell.method.clone(), cell.backbone.clone(), cell.domain.clone());
        let Some((values, _)) = observed.get(&key) else {
            missing.push(format!("{} ({}) {}", cell.method, cell.backbone, cell.domain));
            continue;
        };
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
