//! `rmroute report`: the paper's tables over several runs (seeds).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use rmroute::report::{read_results, tables, write_csv};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (with results.json from `rmroute eval`) or results.json files.
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for table2.csv, table3.csv and table6.csv.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
}

pub fn run(args: ReportArgs) -> Result<()> {
    let results = read_results(&args.runs)?;
    let t = tables(&results);
    print!("{}", t.markdown);
    for path in write_csv(&t, &args.out)? {
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
