//! The `rmroute` command line: parse, then hand over to one module per subcommand.

mod cli;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// mimalloc keeps freed tensor buffers for reuse where glibc hands large ones back to the kernel after
/// every op (each op then page-faults its output in again): about 15% off a MiniLM scoring batch
/// measured in `examples/bench_arliss.rs`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Train Baseline (full fine-tuning) or BaseLoRA (`"method": "baselora"` with a `lora` section).
    TrainBaseline(cli::train::TrainArgs),
    /// Train RODOS: a reward model per domain and an external router over prompts.
    TrainRodos(cli::train::RoutedArgs),
    /// Train ARLISS: one frozen base with a LoRA reward adapter per domain and a router adapter.
    TrainArliss(cli::train::RoutedArgs),
    /// Train MoRE: one reward model with an internal sparse mixture of reward experts.
    TrainMore(cli::train::TrainArgs),
    /// Train DMoERM: a router over tasks; per task a reward model, LoRA capability-point experts and
    /// an MLP that combines them.
    TrainDmoerm(cli::train::TrainArgs),
    /// Pairwise accuracy per domain, parameters and timings of a trained run → results.json.
    Eval(cli::eval::EvalArgs),
    /// A router's accuracy per domain (over test pairs and distinct prompts) and its confusion matrix:
    /// a run's router, or one trained alone (`--only router`) → router-results.json.
    EvalRouter(cli::eval_router::EvalRouterArgs),
    /// The paper's Tables 2, 3 and 6 over runs (seeds), as Markdown and CSV.
    Report(cli::report::ReportArgs),
    /// Score pairs or responses with a reward model; one JSON line of rewards per input line.
    Score(cli::score::ScoreArgs),
    /// Serve rewards over HTTP (OpenRLHF's `/get_reward`, `/score`, `/health`, `/info`).
    Serve(cli::serve::ServeArgs),
    /// Label capability points (DMoERM) by asking an OpenAI-compatible server, both response orders.
    LabelAspects(cli::label_aspects::LabelAspectsArgs),
}

fn main() -> Result<()> {
    rmroute::ops::alloc::keep_freed_memory();
    match Cli::parse().command {
        Command::Prepare(args) => cli::prepare::run(args),
        Command::Score(args) => cli::score::run(args),
        Command::Serve(args) => cli::serve::run(args),
        Command::LabelAspects(args) => cli::label_aspects::run(args),
        Command::TrainBaseline(args) => cli::train::run("train-baseline", &args, None),
        Command::TrainRodos(args) => cli::train::run("train-rodos", &args.common, args.add_domain.as_deref()),
        Command::TrainArliss(args) => cli::train::run("train-arliss", &args.common, args.add_domain.as_deref()),
        Command::TrainMore(args) => cli::train::run("train-more", &args, None),
        Command::TrainDmoerm(args) => cli::train::run("train-dmoerm", &args, None),
        Command::Eval(args) => cli::eval::run(args),
        Command::EvalRouter(args) => cli::eval_router::run(args),
        Command::Report(args) => cli::report::run(args),
    }
}
