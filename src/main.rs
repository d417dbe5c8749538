//! The `rmroute` command line: parse, then hand over to one module per subcommand.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "rmroute", version, about = "Train, evaluate and serve router-based reward models for RLHF")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert raw preference data (anthropic, shp, hellaswag, dahoas, oasst) into pair JSONL.
    Prepare(cli::prepare::PrepareArgs),
    /// Score pairs or responses with a reward model; one JSON line of rewards per input line.
    Score(cli::score::ScoreArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Prepare(args) => cli::prepare::run(args),
        Command::Score(args) => cli::score::run(args),
    }
}
