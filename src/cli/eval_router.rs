//! `rmroute eval-router`: a router alone on a prepared test set — accuracy per domain over test pairs
//! and over distinct prompts, and the confusion matrix — for router experiments that cost minutes, not
//! a whole run.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use rmroute::data::domains::{domain_test_sets, resolve_domains, task_test_sets};
use rmroute::io::write_json;
use rmroute::methods::router::RouterOnly;
use rmroute::methods::{RunMeta, ScoreOptions};
use rmroute::model::LoadOptions;
use rmroute::results::eval::router_results;
use rmroute::results::report::{confusion_markdown, router_markdown};

#[derive(Debug, Args)]
pub struct EvalRouterArgs {
    /// A finished RODOS, ARLISS or DMoERM run, a run whose router was trained alone
    /// (`train-<method> --only router`), or a router's stage directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Prepared data folder with `<domain>/test.jsonl`.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write the results (default: router-results.json in the router's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Test pairs per domain, sampled with --seed (default: all).
    #[arg(long, value_parser = super::at_least_one::<usize>)]
    pub max_pairs: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// The router's stage directory under `dir`: `dir` itself when it is one, else its `stages/router…`
/// (the newest router when an added domain retrained it).
fn router_stage(dir: &Path) -> Result<PathBuf> {
    if dir.join("stage.json").is_file() {
        return Ok(dir.to_path_buf());
    }
    let stages = dir.join("stages");
    let mut routers: Vec<PathBuf> = std::fs::read_dir(&stages)
        .with_context(|| format!("{} holds no router (no {})", dir.display(), stages.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("router")))
        .filter(|p| p.join("stage.json").is_file())
        .collect();
    routers.sort_by_key(|p| std::fs::metadata(p.join("stage.json")).and_then(|m| m.modified()).ok());
    routers.pop().with_context(|| format!("{} holds no finished router stage", stages.display()))
}

pub fn run(args: EvalRouterArgs) -> Result<()> {
    let opts = LoadOptions { device: super::device(&args.device)?, ..Default::default() };
    let finished = RunMeta::exists(&args.model);
    let (scorer, alone, home) = if finished {
        let scorer = rmroute::methods::load(&args.model, &opts, &ScoreOptions::default())?;
        (Some(scorer), None, args.model.clone())
    } else {
        let stage = router_stage(&args.model)?;
        (None, Some(RouterOnly::load(&stage, &opts)?), stage)
    };
    let router = match (&scorer, &alone) {
        (Some(scorer), _) => scorer.router().with_context(|| {
            format!(
                "{} is a `{}` run: it has no router",
                args.model.display(),
                scorer.run.as_ref().map_or("", |m| m.method.as_str())
            )
        })?,
        (None, Some(alone)) => alone,
        (None, None) => unreachable!("a router is loaded one way or the other"),
    };
    let labels = router.domains().to_vec();
    let by_task = scorer.as_ref().and_then(|s| s.run.as_ref()).is_some_and(|m| m.routes_by_task)
        || labels.iter().any(|l| !args.data.join(l).join("test.jsonl").is_file());
    let sets = if by_task {
        task_test_sets(&args.data, &resolve_domains(&args.data, &[])?, args.max_pairs, args.seed)?
    } else {
        domain_test_sets(&args.data, &labels, args.max_pairs, args.seed)?
    };
    if sets.is_empty() {
        bail!("no test pairs for the router's domains ({}) in {}", labels.join(", "), args.data.display());
    }
    let (results, _) = router_results(router, &sets)?;
    println!("{}\n{}", router_markdown(&results), confusion_markdown(&results));
    let out = args.out.unwrap_or_else(|| home.join("router-results.json"));
    write_json(&out, &results)?;
    println!("wrote {}", out.display());
    Ok(())
}
