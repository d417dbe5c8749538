//! `rmroute prepare`: convert raw preference data into pair JSONL.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use rmroute::data::prepare::{prepare, PrepareOptions};

#[derive(Debug, Args)]
pub struct PrepareArgs {
    /// Raw data folder laid out as `<domain>/…` (anthropic, shp, hellaswag, dahoas, oasst).
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder: `<domain>/train.jsonl`, `<domain>/test.jsonl` and `stats.json`.
    #[arg(long)]
    pub out: PathBuf,
    /// Domains to convert, comma-separated (default: every domain folder present).
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// Keep at most N pairs per domain (train + test), chosen by a seeded shuffle.
    #[arg(long, value_parser = super::at_least_one::<usize>)]
    pub max_pairs: Option<usize>,
    /// Share of prompts in the test split where the source has no train/test split of its own.
    #[arg(long, default_value_t = 0.1)]
    pub test_fraction: f64,
    /// Seed for the HellaSwag negative draw and the --max-pairs selection.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip invalid records (counted in stats.json) instead of stopping at the first.
    #[arg(long)]
    pub skip_invalid: bool,
}

pub fn run(args: PrepareArgs) -> Result<()> {
    let opts = PrepareOptions {
        input: args.input,
        out: args.out.clone(),
        domains: args.domains,
        max_pairs: args.max_pairs,
        test_fraction: args.test_fraction,
        seed: args.seed,
        skip_invalid: args.skip_invalid,
    };
    let stats = prepare(&opts)?;
    println!("| domain | train | test | dropped | invalid skipped |");
    println!("|---|---:|---:|---:|---:|");
    for (domain, s) in &stats.domains {
        println!(
            "| {domain} | {} | {} | {} | {} |",
            s.train.pairs,
            s.test.pairs,
            s.dropped.values().sum::<usize>(),
            s.invalid.values().sum::<usize>()
        );
    }
    println!("wrote {} (details in stats.json)", args.out.display());
    Ok(())
}
