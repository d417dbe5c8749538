//! `rmroute report`: the paper's tables over several runs (seeds).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use clap::Args;
use rmroute::io::write_atomic;
use rmroute::results::compare::{compare, expected_table, ExpectedTable};

use rmroute::results::plot::{accuracy_figure, curves_figure, experts_figure};
use rmroute::results::report::{read_results, tables, write_csv};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (with results.json from `rmroute eval`) or results.json files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for table2.csv, table3.csv and table6.csv.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Also draw accuracy.svg (accuracy per domain per method, error bars over seeds), curves.svg
    /// (loss and accuracy against step) and, for MoRE, experts.svg (expert shares per domain) into --out.
    #[arg(long)]
    pub plot: bool,
    /// Check Table 2 against an expected table (`--save-expected` made it): a figure more than k
    /// tolerances from its expected mean fails, naming method, domain and both numbers (exit status 1).
    #[arg(long, value_name = "EXPECTED")]
    pub compare: Option<PathBuf>,
    /// Write these runs' Table 2 as an expected table (mean, spread over seeds, test pairs per cell).
    #[arg(long, value_name = "FILE")]
    pub save_expected: Option<PathBuf>,
    /// With --save-expected: how many tolerances a figure may move (a compared table keeps its own).
    #[arg(long, default_value_t = rmroute::results::compare::DEFAULT_K, requires = "save_expected")]
    pub k: f64,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let results = read_results(&args.runs)?;
    let expected = match &args.compare {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let table: ExpectedTable =
                rmroute::io::parse_json(&text).with_context(|| format!("{}: not an expected table", path.display()))?;
            Some((path, table))
        }
        None => None,
    };
    let t = tables(&results);
    print!("{}", t.markdown);
    for path in write_csv(&t, &args.out)? {
        eprintln!("wrote {}", path.display());
    }
    if args.plot {
        let accuracy = args.out.join("accuracy.svg");
        accuracy_figure(&results, &accuracy)?;
        let runs: Vec<(String, &std::path::Path)> = args
            .runs
            .iter()
            .zip(&results)
            .filter(|(p, _)| p.is_dir())
            .map(|(p, r)| (format!("{} ({}) seed {}", r.method, r.backbone, r.seed), p.as_path()))
            .collect();
        let curves = args.out.join("curves.svg");
        curves_figure(&runs, &curves)?;
        eprintln!("wrote {} and {}", accuracy.display(), curves.display());
        let experts = args.out.join("experts.svg");
        if experts_figure(&results, &experts)? {
            eprintln!("wrote {}", experts.display());
        }
    }
    if let Some(path) = &args.save_expected {
        anyhow::ensure!(args.k > 0.0, "--k must be positive");
        let about = format!(
            "Table 2 of {} runs ({}): a figure fails `rmroute report --compare` when it is more than k tolerances \
             from `mean`; a cell's tolerance is the larger of `std` (over its seeds) and `sampling_error`, that of \
             an accuracy on its test pairs. Made by rmroute {}; refresh it on purpose with --save-expected.",
            results.len(),
            args.runs
                .iter()
                .map(|p| p.file_name().unwrap_or(p.as_os_str()).to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", "),
            env!("CARGO_PKG_VERSION")
        );
        let table = expected_table(&results, args.k, &about);
        write_atomic(path, &serde_json::to_vec_pretty(&table)?)?;
        eprintln!("wrote {} ({} cells)", path.display(), table.cells.len());
    }
    if let Some((path, table)) = &expected {
        let comparison = compare(&results, table)?;
        println!("\nAgainst {} (k = {}):\n", path.display(), table.k);
        for line in &comparison.passed {
            println!("ok    {line}");
        }
        for line in &comparison.failed {
            println!("MOVED {line}");
        }
        for line in &comparison.unchecked {
            println!("new   {line} (not in the expected table: unchecked until it is refreshed)");
        }
        if !comparison.failed.is_empty() {
            bail!(
                "{} of {} figures moved beyond their tolerance against {}: {}",
                comparison.failed.len(),
                comparison.failed.len() + comparison.passed.len(),
                path.display(),
                comparison.failed.join("; ")
            );
        }
        println!("all {} figures within their tolerance", comparison.passed.len());
    }
    Ok(())
}
