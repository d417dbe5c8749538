//! DMoERM (dmoerm.txt): a double-layer mixture of reward experts. The outer layer is a sparse router
//! over tasks (RODOS's router; the domains are the tasks). Each task's inner layer is dense, built in
//! three stages that each resume on their own:
//!
//! 1. `rm-<task>`: the task's reward model, fine-tuned (whole, or a LoRA adapter merged in) on the
//!    first `phase1_fraction` of its pairs;
//! 2. `expert-<task>-<aspect>`: per capability point, a LoRA expert on the frozen stage-1 model (so it
//!    starts as stage 1, head included) trained on that point's preferences among the same pairs;
//! 3. `aggregator-<task>`: the experts frozen, their pooled vectors concatenated (K·h) →
//!    Linear(K·h, h) → PReLU → Linear(h, 1), trained on the remaining pairs' overall preference,
//!    which no expert has seen.
//!
//! A task whose pairs carry no aspect labels is its stage-1 model alone (a single expert), and the
//! run says so. This follows the paper's recipe, not its public code (which starts from a random base,
//! never trains the experts' heads and flips the ranking between training and evaluation).

mod inner;
mod points;

pub use inner::{load, Dmoerm, InnerModel};
pub use points::{aggregator_stage, aspect_pairs, expert_stage};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::config::{DmoermConfig, ModelSettings, Phase1, TrainConfig};
use super::manifest::{pairs_fingerprint, prepare_run_dir, Part, Role, RunMeta, Summary};
use super::reward_model::{self, Keep};
use super::routed::reward_stage;
use super::router::RouterPlan;
use super::stage_keys;
use crate::data::domains::resolve_domains;
use crate::data::split::{mix, stable_hash};
use crate::data::task::group_by_task;
use crate::data::PairRecord;
use crate::heads::aggregator::{Aggregator, AggregatorConfig, AGGREGATOR_CONFIG, AGGREGATOR_FILE};
use crate::io::write_json;
use crate::model::LoadOptions;
use crate::nn::Ctx;
use crate::train::objective::{chosen_then_rejected, PairRewards, Pairwise, Rewards};
use crate::train::stage::{fingerprint, RunOptions, Stage, StageKey};
use crate::train::trainer;

/// The stage-1 share and the aggregator's share of a task's pairs: a seeded shuffle, then a cut.
fn split_phases(pairs: &[PairRecord], fraction: f64, seed: u64, task: &str) -> (Vec<PairRecord>, Vec<PairRecord>) {
    let mut shuffled = pairs.to_vec();
    shuffled.shuffle(&mut StdRng::seed_from_u64(mix(seed, stable_hash(task.as_bytes()) ^ 0x646d_6f65)));
    let cut = ((pairs.len() as f64) * fraction).round() as usize;
    let rest = shuffled.split_off(cut.min(shuffled.len()));
    (shuffled, rest)
}

/// Trains DMoERM into `cfg.out`.
pub(crate) fn train(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    let dm = cfg.dmoerm.clone().context("method `dmoerm` needs a `dmoerm` section")?;
    let TaskPairs { folders, pairs, routes_by_task } = task_pairs(cfg)?;
    let tasks: Vec<String> = pairs.keys().cloned().collect();
    // Every task's split and experts are known before anything is written.
    let mut plans = Vec::new();
    for task in &tasks {
        plans.push(plan_task(cfg, &dm, task, &pairs[task])?);
    }
    if let Some(missing) = dm.aspects.iter().find(|a| plans.iter().all(|p| p.labelled.get(*a) == Some(&0))) {
        bail!(
            "no training pair of {} carries the aspect `{missing}` named in `dmoerm.aspects`: check its spelling, \
             label it (`rmroute label-aspects`), or leave it out",
            tasks.join(", ")
        );
    }
    let mut stages = BTreeSet::new();
    for stage in plans.iter().flat_map(|p| p.experts.iter().map(|a| expert_stage(&p.task, a))) {
        if !stages.insert(stage.clone()) {
            bail!("two experts would share the stage `{stage}`: rename a task or an aspect (the names join with `-`)");
        }
    }
    prepare_run_dir(&cfg.out, opts.resume, opts.force)?;
    std::fs::create_dir_all(cfg.out.join("stages"))?;

    let mut parts = Vec::new();
    let mut aspect_counts = BTreeMap::new();
    for plan in &plans {
        if !opts.quiet {
            eprintln!("{}", plan.describe(dm.min_aspect_pairs));
        }
        parts.extend(train_task(cfg, &dm, plan, &device, opts)?);
        aspect_counts.insert(plan.task.clone(), plan.labelled.clone());
    }
    // The outer layer: with one task there is nothing to route.
    if tasks.len() > 1 {
        let router =
            RouterPlan { cfg, section: &dm.router, section_name: "dmoerm.router", name: "router", adapter: false };
        parts.push(router.train(&tasks, &pairs, device, opts)?);
    }
    let mut config = cfg.clone();
    config.domains = folders;
    write_manifest(&config, tasks, parts, aspect_counts, routes_by_task)?;
    Ok(cfg.out.clone())
}

/// The training pairs of each task: the domains' pairs, grouped by the records' `task` when they name
/// one (then `routes_by_task`), else by domain.
struct TaskPairs {
    /// The data folders read.
    folders: Vec<String>,
    pairs: BTreeMap<String, Vec<PairRecord>>,
    routes_by_task: bool,
}

fn task_pairs(cfg: &TrainConfig) -> Result<TaskPairs> {
    let folders = resolve_domains(&cfg.data, &cfg.domains)?;
    let mut by_domain = BTreeMap::new();
    for domain in &folders {
        by_domain.insert(domain.clone(), cfg.domain_pairs(domain)?);
    }
    let by_task = group_by_task(&by_domain)?;
    let routes_by_task = by_task.is_some();
    Ok(TaskPairs { folders, pairs: by_task.unwrap_or(by_domain), routes_by_task })
}

/// Trains only the outer router (over the tasks) into `RUN/stages/router`, for router experiments;
/// the run stays unfinished, and training it whole with `--resume` keeps this router.
pub(crate) fn train_router_only(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    let dm = cfg.dmoerm.clone().context("method `dmoerm` needs a `dmoerm` section")?;
    let TaskPairs { pairs, .. } = task_pairs(cfg)?;
    let tasks: Vec<String> = pairs.keys().cloned().collect();
    if tasks.len() < 2 {
        bail!("DMoERM's router chooses between tasks: the data has only {}", tasks.join(", "));
    }
    prepare_run_dir(&cfg.out, opts.resume, opts.force)?;
    std::fs::create_dir_all(cfg.out.join("stages"))?;
    let router = RouterPlan { cfg, section: &dm.router, section_name: "dmoerm.router", name: "router", adapter: false };
    router.train(&tasks, &pairs, device, opts)?;
    Ok(cfg.out.join("stages").join("router"))
}

/// What a task's inner model is trained on.
struct TaskPlan {
    task: String,
    phase1: Vec<PairRecord>,
    rest: Vec<PairRecord>,
    /// Labelled (non-tie) stage-1 pairs per aspect, for every aspect asked for or found.
    labelled: BTreeMap<String, usize>,
    /// The aspects that get an expert, in order.
    experts: Vec<String>,
}

impl TaskPlan {
    fn describe(&self, min: usize) -> String {
        let mut line = format!(
            "dmoerm task `{}`: {} pairs for stage 1 and the experts, {} for the aggregator; ",
            self.task,
            self.phase1.len(),
            self.rest.len()
        );
        if self.experts.is_empty() {
            line.push_str("no aspect labels: trained as a single expert (stage 1 alone)");
        } else {
            let experts: Vec<String> = self.experts.iter().map(|a| format!("{a} ({})", self.labelled[a])).collect();
            line.push_str(&format!("experts {}", experts.join(", ")));
        }
        let skipped: Vec<String> = self
            .labelled
            .iter()
            .filter(|(a, _)| !self.experts.contains(a))
            .map(|(a, n)| format!("{a} ({n})"))
            .collect();
        if !skipped.is_empty() {
            line.push_str(&format!("; no expert for {} (fewer than {min} labelled pairs)", skipped.join(", ")));
        }
        line
    }
}

fn plan_task(cfg: &TrainConfig, dm: &DmoermConfig, task: &str, pairs: &[PairRecord]) -> Result<TaskPlan> {
    let (phase1, rest) = split_phases(pairs, dm.phase1_fraction, cfg.seed, task);
    let mut labelled: BTreeMap<String, usize> = dm.aspects.iter().map(|a| (a.clone(), 0)).collect();
    for pair in &phase1 {
        for (aspect, &label) in pair.aspects.iter().flatten() {
            if label != 0 && (dm.aspects.is_empty() || dm.aspects.contains(aspect)) {
                *labelled.entry(aspect.clone()).or_default() += 1;
            }
        }
    }
    let experts: Vec<String> =
        labelled.iter().filter(|(_, &n)| n >= dm.min_aspect_pairs).map(|(a, _)| a.clone()).collect();
    // A single expert needs no aggregator: stage 1 takes every pair.
    let (phase1, rest) = if experts.is_empty() { (pairs.to_vec(), vec![]) } else { (phase1, rest) };
    if phase1.is_empty() || (!experts.is_empty() && rest.is_empty()) {
        bail!(
            "task `{task}` has {} training pairs: too few to share between stage 1 ({}) and the aggregator ({}); \
             raise `max_pairs` or change `dmoerm.phase1_fraction`",
            pairs.len(),
            phase1.len(),
            rest.len()
        );
    }
    Ok(TaskPlan { task: task.to_string(), phase1, rest, labelled, experts })
}

/// The three stages of one task (each skipped when finished): its parts.
fn train_task(
    cfg: &TrainConfig,
    dm: &DmoermConfig,
    plan: &TaskPlan,
    device: &Device,
    opts: &RunOptions,
) -> Result<Vec<Part>> {
    let task = plan.task.as_str();
    let rm_inputs = pairs_fingerprint(&plan.phase1);
    let mut parts = vec![train_phase1(cfg, dm, plan, &rm_inputs, device, opts)?];
    let rm_dir = cfg.out.join("stages").join(reward_stage(task));
    let (mut experts, mut expert_inputs, mut expert_settings) = (Vec::new(), Vec::new(), Vec::new());
    for aspect in &plan.experts {
        let (part, key) = train_expert(cfg, dm, plan, aspect, &rm_dir, &rm_inputs, device, opts)?;
        experts.push((aspect.clone(), part.name.clone(), cfg.out.join("stages").join(&part.name)));
        expert_inputs.push(format!("{}:{}", part.name, key.inputs));
        expert_settings.push(key.settings);
        parts.push(part);
    }
    if experts.is_empty() {
        return Ok(parts);
    }
    // Stage 3: the aggregator over the frozen experts, on the pairs none of them has seen.
    let trainer = cfg.trainer().with(&dm.aggregator);
    trainer.validate("").context("the aggregator's settings (`dmoerm.aggregator`)")?;
    let rest = pairs_fingerprint(&plan.rest);
    let inputs = fingerprint(expert_inputs.iter().map(String::as_str).chain([rest.as_str()]));
    let key = StageKey::new(&stage_keys::dmoerm_aggregator(cfg, &trainer, &expert_settings), inputs)?;
    let stage =
        Stage::part(&cfg.out, &aggregator_stage(task), key, opts).with_legacy(stage_keys::legacy_dmoerm_aggregator);
    let part = match stage.finished()? {
        Some(part) => part,
        None => train_aggregator(cfg, &trainer, &stage, task, &rm_dir, &experts, &plan.rest, device)?,
    };
    parts.push(part);
    Ok(parts)
}

/// Stage 1: the task's reward model, kept whole (a LoRA adapter merged in).
fn train_phase1(
    cfg: &TrainConfig,
    dm: &DmoermConfig,
    plan: &TaskPlan,
    inputs: &str,
    device: &Device,
    opts: &RunOptions,
) -> Result<Part> {
    let task = plan.task.as_str();
    let name = reward_stage(task);
    let mut model = cfg.model();
    if dm.phase1 == Phase1::Full {
        model.lora = None;
    }
    let (trainer, adamw) = (cfg.trainer(), cfg.adamw());
    let settings = stage_keys::dmoerm_phase1(&model, &trainer, &adamw, &serde_json::json!(dm.phase1), cfg.max_pairs);
    let stage = Stage::part(&cfg.out, &name, StageKey::new(&settings, inputs.to_string())?, opts)
        .with_legacy(stage_keys::legacy_dmoerm_phase1);
    if let Some(part) = stage.finished()? {
        return Ok(part);
    }
    let run = reward_model::load(&model, Keep::Model, cfg.seed, device.clone(), stage.opts.quiet)?;
    run.train(&plan.phase1, task, &trainer, &adamw, &stage, cfg.method(), |_, trained| {
        let parameters = (trained.total_parameters, trained.trainable_parameters);
        Ok(Part::new(&name, Role::Reward, Some(task), &trained.trained, parameters))
    })
}

/// Stage 2: the expert on `aspect`, a LoRA adapter on the frozen stage-1 model in `rm_dir`; its part
/// and its key.
#[allow(clippy::too_many_arguments)]
fn train_expert(
    cfg: &TrainConfig,
    dm: &DmoermConfig,
    plan: &TaskPlan,
    aspect: &str,
    rm_dir: &Path,
    rm_inputs: &str,
    device: &Device,
    opts: &RunOptions,
) -> Result<(Part, StageKey)> {
    let task = plan.task.as_str();
    let name = expert_stage(task, aspect);
    // Each expert its own initialisation, dropout and order: points that agree often still differ.
    let seed = mix(cfg.seed, stable_hash(aspect.as_bytes()));
    let trainer = cfg.trainer().with(&dm.expert).with_seed(seed);
    trainer.validate("").context("the experts' settings (`dmoerm.expert`)")?;
    let model = ModelSettings { backbone: rm_dir.display().to_string(), ..cfg.model() };
    let adamw = cfg.adamw();
    let pairs = aspect_pairs(&plan.phase1, aspect);
    let inputs = fingerprint([rm_inputs, &pairs_fingerprint(&pairs)]);
    let key = StageKey::new(&stage_keys::reward_model(&model, &trainer, &adamw, cfg.max_pairs), inputs)?;
    let stage = Stage::part(&cfg.out, &name, key, opts).with_legacy(stage_keys::legacy_reward_model);
    if let Some(part) = stage.finished()? {
        return Ok((part, stage.key));
    }
    let run = reward_model::load(&model, Keep::Adapter(&name), seed, device.clone(), stage.opts.quiet)?;
    let what = format!("{task} ({aspect})");
    let part = run.train(&pairs, &what, &trainer, &adamw, &stage, cfg.method(), |_, trained| {
        let parameters = (trained.total_parameters, trained.trainable_parameters);
        let mut part = Part::new(&name, Role::Expert, Some(task), &trained.trained, parameters);
        part.aspect = Some(aspect.to_string());
        Ok(part)
    })?;
    Ok((part, stage.key))
}

/// Stage 3: the experts' pooled vectors for every pair are computed once (the experts are frozen and
/// run in evaluation mode), then the MLP trains on them with the pairwise loss.
#[allow(clippy::too_many_arguments)]
fn train_aggregator(
    cfg: &TrainConfig,
    trainer: &crate::train::config::TrainerConfig,
    stage: &Stage,
    task: &str,
    rm_dir: &Path,
    experts: &[(String, String, PathBuf)],
    pairs: &[PairRecord],
    device: &Device,
) -> Result<Part> {
    let load = LoadOptions { device: device.clone(), ..Default::default() };
    let mut inner = InnerModel::load(rm_dir, experts, None, &load)?;
    inner.model.set_limits(cfg.max_length, cfg.truncation)?;
    let bar = if stage.opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(pairs.len() as u64) };
    bar.set_style(ProgressStyle::with_template(
        "{prefix} {bar:25} {pos}/{len} pairs [{elapsed_precise}<{eta_precise}]",
    )?);
    bar.set_prefix(format!("{}: the {} experts' pooled vectors", stage.name, experts.len()));
    let (mut chosen, mut rejected, mut truncated) = (Vec::new(), Vec::new(), 0);
    for chunk in pairs.chunks(16) {
        let refs: Vec<&PairRecord> = chunk.iter().collect();
        let batch = inner.model.encode(&chosen_then_rejected(&refs))?;
        truncated += batch.truncated;
        let features = inner.features(&batch, &Ctx::eval())?;
        chosen.push(features.narrow(0, 0, chunk.len())?);
        rejected.push(features.narrow(0, chunk.len(), chunk.len())?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let (chosen, rejected) = (Tensor::cat(&chosen, 0)?, Tensor::cat(&rejected, 0)?);
    let hidden = chosen.dim(1)? / experts.len();
    let aggregator = Aggregator::new(experts.len(), hidden, cfg.seed, device)?;
    let objective = Pairwise(AggregatorRewards { aggregator: &aggregator, chosen: &chosen, rejected: &rejected });
    let mut trained = trainer::train(&objective, trainer, &cfg.adamw(), stage)?;
    trained.truncated = truncated;
    stage.finish(|dir| {
        aggregator.save(&dir.join(AGGREGATOR_FILE))?;
        let config = AggregatorConfig {
            aspects: experts.iter().map(|(a, _, _)| a.clone()).collect(),
            adapters: experts.iter().map(|(_, n, _)| n.clone()).collect(),
            hidden,
        };
        write_json(&dir.join(AGGREGATOR_CONFIG), &config)?;
        let count = aggregator.parameter_count();
        Ok(Part::new(&stage.name, Role::Aggregator, Some(task), &trained, (count, count)))
    })
}

/// Stage 3's rewards: the aggregator's on precomputed features.
struct AggregatorRewards<'a> {
    aggregator: &'a Aggregator,
    chosen: &'a Tensor,
    rejected: &'a Tensor,
}

impl PairRewards for AggregatorRewards<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.aggregator.vars()
    }

    fn examples(&self) -> usize {
        self.chosen.dim(0).unwrap_or(0)
    }

    fn rewards(&self, batch: &[usize], _ctx: &Ctx) -> Result<Rewards> {
        let index =
            Tensor::from_vec(batch.iter().map(|&i| i as u32).collect::<Vec<_>>(), batch.len(), self.chosen.device())?;
        let chosen = self.aggregator.forward(&self.chosen.index_select(&index, 0)?)?;
        let rejected = self.aggregator.forward(&self.rejected.index_select(&index, 0)?)?;
        Ok(Rewards { chosen, rejected, auxiliary: None, truncated: 0 })
    }
}

/// Writes `rmroute.json` last, so it names only finished parts.
fn write_manifest(
    cfg: &TrainConfig,
    tasks: Vec<String>,
    parts: Vec<Part>,
    aspect_pairs: BTreeMap<String, BTreeMap<String, usize>>,
    routes_by_task: bool,
) -> Result<()> {
    let model = "DMoERM: per task a reward model (stage 1), LoRA capability-point experts on it (stage 2) and \
                 an MLP aggregator over them (stage 3); a router over the tasks when there are several; see `parts`"
        .to_string();
    let mut summary = Summary::of_parts(&parts, model);
    summary.train_pairs = tasks
        .iter()
        .map(|t| {
            // Stage 1 and the aggregator together saw each of the task's pairs once.
            let of = |role: Role| {
                parts
                    .iter()
                    .find(|p| p.role == role && p.domain.as_deref() == Some(t.as_str()))
                    .map(|p| p.train_examples)
            };
            of(Role::Reward).unwrap_or(0) + of(Role::Aggregator).unwrap_or(0)
        })
        .sum();
    summary.truncated_pairs = parts.iter().filter(|p| p.role == Role::Reward).map(|p| p.truncated).sum();
    let mut meta = RunMeta::new(cfg, tasks, summary);
    meta.parts = parts;
    meta.aspect_pairs = aspect_pairs;
    meta.routes_by_task = routes_by_task;
    meta.write(&cfg.out)
}
