//! `rmroute eval`: accuracy per domain, parameters and timings of a trained run.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use rmroute::data::domains::resolve_domains;
use rmroute::data::PairRecord;
use rmroute::io::write_atomic;
use rmroute::methods::{RunMeta, ScoreOptions, Scorer};
use rmroute::model::LoadOptions;
use rmroute::nn::bf16::Precision;
use rmroute::results::eval::{
    accuracy_by_domain, domain_test_sets, resident_memory, routed_results, seconds_per_step, task_test_sets, Memory,
    Results, TestSets,
};
use rmroute::results::report;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The run directory a `train-*` wrote.
    #[arg(long)]
    pub model: PathBuf,
    /// Prepared data folder with `<domain>/test.jsonl`.
    #[arg(long)]
    pub data: PathBuf,
    /// Where to write results.json (default: inside the run directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Test pairs per domain, sampled with --seed (default: all).
    #[arg(long, value_parser = super::at_least_one::<usize>)]
    pub max_pairs: Option<usize>,
    /// Seeds the --max-pairs sample (default: the run's seed).
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or bf16: the encoder's linear layers score with bf16 weights and inputs (f32 sums), on
    /// AVX-512 BF16 where the CPU has it; rewards stay within about 1e-2 of f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let opts = LoadOptions { device: super::device(&args.device)?, precision: args.dtype, ..Default::default() };
    let mut scorer = rmroute::methods::load(&args.model, &opts, &ScoreOptions::default())?;
    let loaded = resident_memory();
    let Some(meta) = scorer.run.clone() else {
        bail!(
            "{} is not an rmroute run directory (no rmroute.json): `eval` evaluates what a `train-*` wrote; \
             use `rmroute score` for other models",
            args.model.display()
        );
    };
    let max_pairs = args.max_pairs.or(meta.config.max_eval_pairs);
    let seed = args.seed.unwrap_or(meta.seed);
    let sets = if meta.routes_by_task {
        let folders = resolve_domains(&args.data, &meta.config.domains)?;
        task_test_sets(&args.data, &folders, max_pairs, seed)?
    } else {
        domain_test_sets(&args.data, &resolve_domains(&args.data, &meta.domains)?, max_pairs, seed)?
    };
    // A task without test pairs would drop out of the mean unseen.
    if let Some(missing) = meta.domains.iter().find(|t| !sets.contains_key(*t)) {
        bail!(
            "no test pair of {} has task `{missing}`, which {} was trained on: add its test pairs, or evaluate \
             on data that has them",
            args.data.display(),
            args.model.display()
        );
    }
    let results = evaluate(&mut scorer, &meta, &sets, loaded, args.dtype)?;
    print(&results);
    let out = args.out.unwrap_or_else(|| args.model.join("results.json"));
    write_atomic(&out, &serde_json::to_vec_pretty(&results)?)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Every figure of `results.json` for a loaded run on its test sets; `loaded` is the process's
/// memory once the model was loaded.
fn evaluate(
    scorer: &mut Scorer,
    meta: &RunMeta,
    sets: &TestSets,
    loaded: Option<(u64, u64)>,
    dtype: Precision,
) -> Result<Results> {
    // A routed run is scored once with the router's choices and once with the true domains.
    let routed = routed_results(scorer, sets)?;
    let (by_domain, pairs_per_second) = match &routed {
        Some(r) => (r.routed.clone(), r.pairs_per_second),
        None => accuracy_by_domain(scorer, sets)?,
    };
    // Table 6's "one input from each dataset": the first test prompts and chosen responses of each domain.
    let samples: Vec<&PairRecord> = sets.values().flat_map(|records| records.iter().take(8)).collect();
    let inputs: Vec<(&str, &str)> = samples.iter().map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect();
    let step = seconds_per_step(scorer, &inputs, 40)?;
    // What the method reports beyond accuracy: MoRE's expert shares, DMoERM's stages, ARLISS's
    // switching timings.
    let more = scorer.model.evaluate_more(sets, Some(meta))?;
    let memory = match (loaded, resident_memory()) {
        (Some((loaded_bytes, _)), Some((_, peak_bytes))) => Some(Memory { loaded_bytes, peak_bytes }),
        _ => None,
    };
    let mean = by_domain.values().map(|r| r.accuracy).sum::<f64>() / by_domain.len().max(1) as f64;
    let results = Results {
        method: meta.method.as_str().to_string(),
        backbone: meta.backbone_name.clone(),
        seed: meta.seed,
        domains: by_domain,
        mean_accuracy: mean,
        total_parameters: meta.total_parameters,
        trainable_parameters: meta.trainable_parameters,
        seconds_per_step: step,
        pairs_per_second,
        epoch_seconds: meta.epoch_seconds.clone(),
        oracle_mean_accuracy: routed
            .as_ref()
            .map(|r| r.oracle.values().map(|x| x.accuracy).sum::<f64>() / r.oracle.len().max(1) as f64),
        oracle: routed.as_ref().map(|r| r.oracle.clone()),
        router: routed.map(|r| r.router),
        experts: more.experts,
        parts: meta.parts.clone(),
        switching: more.switching,
        precision: dtype,
        memory,
        tasks: more.tasks,
    };
    Ok(results)
}

/// The results as tables for the terminal.
fn print(results: &Results) {
    let mean = results.mean_accuracy;
    let step = results.seconds_per_step;
    let pairs_per_second = results.pairs_per_second;
    match (&results.oracle, &results.router) {
        (Some(oracle), Some(router)) => {
            println!(
                "| domain | pairs | routed accuracy | oracle accuracy | router accuracy |\n|---|---:|---:|---:|---:|"
            );
            for (d, r) in &results.domains {
                let o = oracle.get(d).map(|x| x.accuracy).unwrap_or(f64::NAN);
                let a = router.per_domain.get(d).copied().unwrap_or(f64::NAN);
                println!("| {d} | {} | {:.4} | {o:.4} | {a:.4} |", r.pairs, r.accuracy);
            }
            let om = results.oracle_mean_accuracy.unwrap_or(f64::NAN);
            println!("| mean | | {mean:.4} | {om:.4} | {:.4} |", router.accuracy);
            println!("\n{}\n{}", report::router_markdown(router), report::confusion_markdown(router));
        }
        _ => {
            println!("| domain | pairs | accuracy |\n|---|---:|---:|");
            for (d, r) in &results.domains {
                println!("| {d} | {} | {:.4} |", r.pairs, r.accuracy);
            }
            println!("| mean | | {mean:.4} |");
        }
    }
    if let Some(shares) = &results.experts {
        println!("\n{}", report::experts_markdown(shares));
    }
    if let Some(tasks) = &results.tasks {
        println!("\n{}", report::tasks_markdown(tasks));
    }
    println!("{:.4} s per step (one input), {:.1} pairs/s at batch 32", step, pairs_per_second);
    if let Some(timings) = &results.switching {
        println!("\n{}", report::switching_markdown(timings));
    }
    if let Some(memory) = &results.memory {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "resident memory: {:.1} MiB once loaded, {:.1} MiB peak",
            mib(memory.loaded_bytes),
            mib(memory.peak_bytes)
        );
    }
}
