//! ARLISS inference against a Baseline model of the same backbone, measured side by side in one
//! process (`scripts/bench-arliss.sh` drives it; never a timed test).
//!
//! `bench_arliss prepare DIR [--model M]`: writes a Baseline model of backbone M (a new reward head) and
//!   an ARLISS run for it (the paper's LoRA, rank 12 alpha 768 on query/key/value/dense: a reward
//!   adapter for each of 5 domains and the router adapter) into DIR, as `train-*` leaves them; both are
//!   then loaded as `rmroute score` loads them.
//! `bench_arliss throughput DIR [--rounds N]`: 32 pairs of 128 tokens whose rows cycle through the 5
//!   domains, scored by Baseline, by one adapter for the whole batch, and by ARLISS in one pass or
//!   switching adapters one domain at a time, each with the true domains (oracle) and with the router
//!   adapter's forward added; and the paper's Table 6 step, one input from each domain (`step_*`).
//!   Rounds interleave them so machine noise hits all alike; medians are printed as JSON.
//! `bench_arliss memory baseline|arliss DIR`: resident bytes once loaded and the peak after one batch,
//!   for one of the two, each run in its own process.
//! `bench_arliss table DIR`: the Markdown table of `DIR/throughput.json` and `DIR/memory-*.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rmroute::methods::arliss::ROUTER_ADAPTER;
use rmroute::methods::arliss::{Arliss, Switching};
use rmroute::methods::base::BaseRef;
use rmroute::methods::config::{paper_lora, ArlissConfig, Method, TrainConfig};
use rmroute::methods::manifest::{Part, Role, RunMeta};
use rmroute::methods::{load as load_scorer, DomainRouter, ScoreOptions, Scorer};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Adapters;
use rmroute::results::eval::resident_memory;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DOMAINS: usize = 5;
const PAIRS: usize = 32;
const TOKENS: usize = 128;

fn main() -> Result<()> {
    rmroute::ops::alloc::keep_freed_memory(); // as the rmroute binary does
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let model = PathBuf::from(flag("--model").unwrap_or_else(|| "models/all-MiniLM-L6-v2".into()));
    let rounds: usize = flag("--rounds").map(|r| r.parse()).transpose().context("--rounds")?.unwrap_or(9);
    let positional: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| !a.starts_with("--") && (*i == 0 || !args[i - 1].starts_with("--")))
        .map(|(_, a)| a)
        .collect();
    match positional.iter().map(|s| s.as_str()).collect::<Vec<_>>().as_slice() {
        ["prepare", dir] => prepare(&model, Path::new(dir)),
        ["throughput", dir] => throughput(Path::new(dir), rounds),
        ["memory", which, dir] => memory(Path::new(dir), which),
        ["table", dir] => table(Path::new(dir)),
        _ => bail!(
            "usage: bench_arliss prepare DIR | throughput DIR | memory baseline|arliss DIR | table DIR  [--model M] [--rounds N]"
        ),
    }
}

fn domains() -> Vec<String> {
    (0..DOMAINS).map(|d| format!("d{d}")).collect()
}

/// Writes a Baseline model (`DIR/baseline`) and an ARLISS run (`DIR/arliss`: its adapters in
/// `stages/`, `rmroute.json` naming them and the base), as `train-*` leaves them. The adapters' `B` are
/// random (a fresh adapter's zero `B` would hide nothing, but trained ones are not zero).
fn prepare(model_dir: &Path, dir: &Path) -> Result<()> {
    let opts = LoadOptions { new_head: true, ..Default::default() };
    let mut model = RewardModel::load(model_dir, &opts)?;
    model.save_pretrained(&dir.join("baseline"))?;
    let lora = paper_lora(&["query", "key", "value", "dense"]);
    let spec = model_dir.display().to_string();
    let run = dir.join("arliss");
    let mut parts = Vec::new();
    let part = |name: &str, role: Role, domain: Option<String>, model: &RewardModel| Part {
        name: name.into(),
        role,
        domain,
        aspect: None,
        path: format!("stages/{name}"),
        train_examples: 0,
        truncated: 0,
        steps: 0,
        epoch_seconds: vec![],
        total_parameters: model.adapter_parameter_count(name),
        trainable_parameters: model.adapter_parameter_count(name),
    };
    for (i, d) in domains().iter().enumerate() {
        let name = format!("rm-{d}");
        model.add_adapter(&name, &lora, i as u64)?;
        for (key, var) in model.trainable_vars(&[&name]) {
            if key.contains("lora_B") {
                var.set(&candle_core::Tensor::randn(0f32, 1e-3, var.shape(), var.device())?)?;
            }
        }
        model.save_adapter(&name, &run.join("stages").join(&name), &spec)?;
        parts.push(part(&name, Role::Reward, Some(d.clone()), &model));
    }
    model.add_classifier_adapter(ROUTER_ADAPTER, &lora, 9, DOMAINS)?;
    model.save_adapter(ROUTER_ADAPTER, &run.join("stages").join(ROUTER_ADAPTER), &spec)?;
    parts.push(part(ROUTER_ADAPTER, Role::Router, None, &model));
    let config = TrainConfig {
        method: Method::Arliss,
        backbone: spec.clone(),
        domains: domains(),
        max_length: TOKENS,
        lora: Some(lora),
        arliss: Some(ArlissConfig::default()),
        ..TrainConfig::default()
    };
    RunMeta {
        method: Method::Arliss,
        domains: domains(),
        backbone: spec.clone(),
        backbone_name: rmroute::methods::manifest::backbone_name(&spec),
        seed: 0,
        rmroute_version: env!("CARGO_PKG_VERSION").into(),
        config,
        train_pairs: 0,
        truncated_pairs: 0,
        steps: 0,
        epoch_seconds: vec![],
        total_parameters: model.encoder_parameter_count() + parts.iter().map(|p| p.total_parameters).sum::<usize>(),
        trainable_parameters: 0,
        model: "benchmark adapters (untrained)".into(),
        adapters: BTreeMap::new(),
        parts,
        base: Some(BaseRef::of(&spec)?),
        aspect_pairs: BTreeMap::new(),
        routes_by_task: false,
    }
    .write(&run)
}

/// Scoring options: 128 tokens, as the benchmark's inputs are cut.
fn limits() -> ScoreOptions {
    ScoreOptions { max_length: Some(TOKENS), ..Default::default() }
}

fn load_baseline(dir: &Path) -> Result<Scorer> {
    let scorer = load_scorer(&dir.join("baseline"), &LoadOptions::default(), &limits())?;
    if scorer.single().is_none() {
        bail!("the Baseline model loaded as something else");
    }
    Ok(scorer)
}

/// The ARLISS run, loaded as `rmroute score` loads it.
fn load_arliss(dir: &Path) -> Result<Scorer> {
    let scorer = load_scorer(&dir.join("arliss"), &LoadOptions::default(), &ScoreOptions::default())?;
    if scorer.downcast_ref::<Arliss>().is_none() {
        bail!("the ARLISS run loaded as something else");
    }
    Ok(scorer)
}

/// Prompts and responses of plain words, long enough to fill 128 tokens; each domain's prompts start
/// with their own word, as real domains differ.
fn inputs() -> (Vec<String>, Vec<String>) {
    let prompts = (0..PAIRS).map(|i| format!("topic{} {}", i % DOMAINS, "question words here ".repeat(20))).collect();
    let responses = (0..PAIRS).map(|i| format!("answer {i} {}", "and more words follow ".repeat(30))).collect();
    (prompts, responses)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn throughput(dir: &Path, rounds: usize) -> Result<()> {
    let baseline_scorer = load_baseline(dir)?;
    let Some((baseline, _)) = baseline_scorer.single() else { bail!("the Baseline model loaded as something else") };
    let mut arliss_scorer = load_arliss(dir)?;
    let (prompts, responses) = inputs();
    let pairs: Vec<(&str, &str)> = prompts.iter().zip(&responses).map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let prompt_refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let oracle: Vec<String> = (0..PAIRS).map(|i| format!("d{}", i % DOMAINS)).collect();
    let tokens = baseline.encode(&pairs)?.input_ids.dims()[1];
    // "routed": the router adapter's forward over the batch's prompts is run and timed, and the rows
    // then go to their true domains, so every figure scores the same 5-domain mix (the benchmark's
    // router classifier is untrained; its picks would send the whole batch to one domain).
    let (step, step_domains, step_prompts) = (&pairs[..DOMAINS], &oracle[..DOMAINS], &prompt_refs[..DOMAINS]);
    let mut measure = |name: &str| -> Result<f64> {
        let mode = if name.contains("sequential") { Switching::Sequential } else { Switching::OnePass };
        let Some(routed) = arliss_scorer.downcast_mut::<Arliss>() else { bail!("ARLISS holds adapters") };
        routed.switching = mode;
        let (routed, model): (&Arliss, &RewardModel) = (routed, &routed.model);
        let start = Instant::now();
        match name {
            "baseline" => drop(baseline.score(&pairs, PAIRS, &Adapters::None)?),
            "one_adapter" => drop(model.score(&pairs, PAIRS, &Adapters::One("rm-d0".into()))?),
            "one_pass_oracle" | "sequential_oracle" => drop(routed.score_in(&pairs, &oracle, PAIRS)?),
            "one_pass_routed" | "sequential_routed" => {
                routed.route(&prompt_refs, PAIRS)?;
                routed.score_in(&pairs, &oracle, PAIRS)?;
            }
            // The paper's Table 6 step: one input from each domain.
            "step_baseline" => drop(baseline.score(step, DOMAINS, &Adapters::None)?),
            "step_one_pass_routed" | "step_sequential_routed" => {
                routed.route(step_prompts, DOMAINS)?;
                routed.score_in(step, step_domains, DOMAINS)?;
            }
            other => bail!("no measurement `{other}`"),
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let mut names = vec![
        "baseline",
        "one_adapter",
        "one_pass_oracle",
        "one_pass_routed",
        "sequential_oracle",
        "sequential_routed",
        "step_baseline",
        "step_one_pass_routed",
        "step_sequential_routed",
    ];
    // Each round runs every measurement once, in a shuffled order, so neither drift nor position in
    // the round favours one; round 0 warms up.
    let mut rng = StdRng::seed_from_u64(0);
    let mut times: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..=rounds {
        names.shuffle(&mut rng);
        for &name in &names {
            let t = measure(name)?;
            if round > 0 {
                times.entry(name).or_default().push(t);
            }
        }
    }
    let medians: BTreeMap<&str, f64> = times.into_iter().map(|(k, v)| (k, median(v))).collect();
    let report = serde_json::json!({
        "pairs": PAIRS, "tokens": tokens, "domains": DOMAINS, "rounds": rounds,
        "threads": candle_core::utils::get_num_threads(),
        "routes": "true domains; `routed` adds the router adapter's forward over the prompts",
        "seconds_per_batch": medians,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn memory(dir: &Path, which: &str) -> Result<()> {
    let (prompts, responses) = inputs();
    let pairs: Vec<(&str, &str)> = prompts.iter().zip(&responses).map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let (loaded, after) = match which {
        "baseline" => {
            let model = load_baseline(dir)?;
            let loaded = resident_memory();
            model.score(&pairs, PAIRS)?;
            (loaded, resident_memory())
        }
        "arliss" => {
            let routed = load_arliss(dir)?;
            let loaded = resident_memory();
            routed.score(&pairs, PAIRS)?;
            (loaded, resident_memory())
        }
        _ => bail!("memory baseline|arliss DIR"),
    };
    let (Some((loaded, _)), Some((_, peak))) = (loaded, after) else { bail!("no /proc/self/status here") };
    println!("{}", serde_json::json!({"which": which, "loaded_bytes": loaded, "peak_bytes": peak}));
    Ok(())
}

/// The README's table: each figure beside Baseline's, as a ratio, with the target.
fn table(dir: &Path) -> Result<()> {
    let read = |name: &str| -> Result<serde_json::Value> {
        let path = dir.join(name);
        Ok(serde_json::from_slice(&std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?)?)
    };
    let t = read("throughput.json")?;
    let s = |k: &str| t["seconds_per_batch"][k].as_f64().unwrap_or(f64::NAN);
    let (pairs, tokens, threads) = (&t["pairs"], &t["tokens"], &t["threads"]);
    println!(
        "| {pairs} pairs × {tokens} tokens, 5 domains, {threads} threads | s per batch | pairs/s | ratio | target |"
    );
    println!("|---|---:|---:|---:|---:|");
    let pairs = t["pairs"].as_f64().unwrap_or(f64::NAN);
    let row = |what: &str, key: &str, ratio: String, target: &str| {
        println!("| {what} | {:.3} | {:.1} | {ratio} | {target} |", s(key), pairs / s(key));
    };
    row("Baseline (same backbone)", "baseline", "1.00".into(), "");
    row(
        "one adapter for the whole batch",
        "one_adapter",
        format!("{:.2}× Baseline", s("baseline") / s("one_adapter")),
        "",
    );
    row(
        "ARLISS one pass, oracle routes",
        "one_pass_oracle",
        format!("{:.2}× Baseline", s("baseline") / s("one_pass_oracle")),
        "≥ 0.9×",
    );
    row(
        "ARLISS one pass, router adapter",
        "one_pass_routed",
        format!("{:.2}× Baseline", s("baseline") / s("one_pass_routed")),
        "≥ 0.6×",
    );
    row(
        "ARLISS sequential switching, oracle routes",
        "sequential_oracle",
        format!("one pass {:.2}× this", s("sequential_oracle") / s("one_pass_oracle")),
        "≥ 2×",
    );
    row(
        "ARLISS sequential switching, router adapter",
        "sequential_routed",
        format!("one pass {:.2}× this", s("sequential_routed") / s("one_pass_routed")),
        "≥ 2×",
    );
    println!();
    println!("| Table 6 step: one input from each of 5 domains | s per step | | ratio | |");
    println!("|---|---:|---:|---:|---:|");
    let step = |what: &str, key: &str, ratio: String| println!("| {what} | {:.4} | | {ratio} | |", s(key));
    step("Baseline", "step_baseline", "1.00".into());
    step(
        "ARLISS one pass, router adapter",
        "step_one_pass_routed",
        format!("{:.2}× Baseline", s("step_baseline") / s("step_one_pass_routed")),
    );
    step(
        "ARLISS sequential switching, router adapter",
        "step_sequential_routed",
        format!("one pass {:.2}× this", s("step_sequential_routed") / s("step_one_pass_routed")),
    );
    let (b, a) = (read("memory-baseline.json")?, read("memory-arliss.json")?);
    let mib = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN) / 1048576.0;
    println!();
    println!("| resident memory (MiB) | Baseline | ARLISS, 5 domains + router | ratio | target |");
    println!("|---|---:|---:|---:|---:|");
    for (what, key) in [("once loaded", "loaded_bytes"), ("peak: loading and one batch", "peak_bytes")] {
        let (x, y) = (mib(&b, key), mib(&a, key));
        println!("| {what} | {x:.1} | {y:.1} | {:.2}× | ≤ 1.15× |", y / x);
    }
    Ok(())
}
