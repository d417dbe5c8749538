//! `rmroute report`: the paper's tables over several runs (seeds).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use rmroute::plot::{accuracy_figure, curves_figure, experts_figure};
use rmroute::report::{read_results, tables, write_csv};

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
}

pub fn run(args: ReportArgs) -> Result<()> {
    let results = read_results(&args.runs)?;
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
    Ok(())
}
