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

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::backbone::params::ParamStore;
use crate::config::{DmoermConfig, Method, Phase1, TrainConfig};
use crate::data::io::{write_atomic, StagedDir};
use crate::data::split::{mix, stable_hash};
use crate::data::task::group_by_task;
use crate::data::PairRecord;
use crate::encoding::Batch;
use crate::methods::baseline::{train_reward_model, Keep, TrainedModel};
use crate::methods::routed::{part_record, reward_stage, router_part, stage_options};
use crate::model::{save_safetensors, LoadOptions, RewardModel};
use crate::nn::{linear, Adapters, Ctx, Linear};
use crate::run::{backbone_name, fingerprint, pairs_fingerprint, prepare_run_dir, Part, Role, RunMeta};
use crate::train::loss::{pairwise_correct, pairwise_loss};
use crate::train::objective::{chosen_then_rejected, MicroBatch, Objective};
use crate::train::trainer::{load_domain_pairs, resolve_domains, train_objective, RunOptions};

/// The aggregator's weights in its stage directory.
pub const AGGREGATOR_FILE: &str = "aggregator.safetensors";
/// Which experts, in which order, the aggregator reads.
pub const AGGREGATOR_CONFIG: &str = "aggregator.json";

/// The stage (and adapter) name of `task`'s expert on `aspect`.
pub fn expert_stage(task: &str, aspect: &str) -> String {
    format!("expert-{task}-{aspect}")
}

/// The stage name of `task`'s aggregator.
pub fn aggregator_stage(task: &str) -> String {
    format!("aggregator-{task}")
}

/// `aggregator.json`: the experts the aggregator reads, in the order of its input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    /// The capability points, in input order.
    pub aspects: Vec<String>,
    /// Each point's expert adapter (its stage name).
    pub adapters: Vec<String>,
    /// The size of each expert's pooled vector, and of the MLP's hidden layer.
    pub hidden: usize,
}

/// The inner layer's MLP: `Linear(K·h, h) → PReLU → Linear(h, 1)` over the experts' pooled vectors.
pub struct Aggregator {
    fc1: Linear,
    /// PReLU's one slope (torch's `nn.PReLU()`, starting at 0.25).
    slope: Tensor,
    fc2: Linear,
    store: Arc<ParamStore>,
}

impl Aggregator {
    /// A new aggregator over `experts` pooled vectors of size `hidden`, initialised from `seed`.
    pub fn new(experts: usize, hidden: usize, seed: u64, device: &Device) -> Result<Self> {
        Self::build(ParamStore::trainable(HashMap::new(), "a new aggregator", seed), experts, hidden, device)
    }

    /// Loads `aggregator.safetensors` (frozen); a missing or misshapen tensor is an error naming it.
    pub fn load(path: &Path, config: &AggregatorConfig, device: &Device) -> Result<Self> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)
            .with_context(|| format!("reading the aggregator {}", path.display()))?;
        let names: Vec<String> = tensors.keys().cloned().collect();
        let store = ParamStore::from_tensors(tensors, path.display().to_string(), false);
        let aggregator = Self::build(store, config.adapters.len(), config.hidden, device)
            .with_context(|| format!("{} does not fit its {AGGREGATOR_CONFIG}", path.display()))?;
        let used: Vec<String> = aggregator.store.used().into_iter().map(|(n, _)| n).collect();
        if let Some(extra) = names.iter().find(|n| !used.contains(n)) {
            bail!("{} holds `{extra}`, which is not part of the aggregator: not an rmroute aggregator", path.display());
        }
        Ok(aggregator)
    }

    fn build(store: Arc<ParamStore>, experts: usize, hidden: usize, device: &Device) -> Result<Self> {
        let vb = store.var_builder(DType::F32, device);
        Ok(Self {
            fc1: Linear::load(vb.pp("fc1"), experts * hidden, hidden, 0.02)?,
            slope: vb.get_with_hints(1, "prelu.weight", candle_nn::Init::Const(0.25))?,
            fc2: Linear::load(vb.pp("fc2"), hidden, 1, 0.02)?,
            store,
        })
    }

    /// Rewards `(n,)` for features `(n, K·h)`.
    pub fn forward(&self, features: &Tensor) -> Result<Tensor> {
        let h = self.fc1.forward(features)?;
        // PReLU: max(0, x) + a·min(0, x).
        let h = (h.relu()? - h.neg()?.relu()?.broadcast_mul(&self.slope)?)?;
        Ok(linear(&h, &self.fc2.weight, self.fc2.bias.as_ref())?.squeeze(1)?)
    }

    pub fn vars(&self) -> Vec<(String, Var)> {
        self.store.vars()
    }

    pub fn parameter_count(&self) -> usize {
        self.store.used().iter().map(|(_, t)| t.elem_count()).sum()
    }

    fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self.store.used().into_iter().collect();
        save_safetensors(&tensors, path)
    }
}

/// One task's inner model: its stage-1 reward model carrying the experts' adapters, and the
/// aggregator over them; none of either for a task trained as a single expert.
pub struct InnerModel {
    pub model: RewardModel,
    /// `(aspect, adapter name)` in the aggregator's input order.
    pub experts: Vec<(String, String)>,
    pub aggregator: Option<Aggregator>,
}

impl InnerModel {
    /// The experts' pooled vectors `(rows, K·h)`, in one forward pass: each row repeated K times with
    /// another expert's adapter on each copy.
    pub fn features(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let rows = batch.input_ids.dim(0)?;
        let k = self.experts.len();
        if k == 0 {
            bail!("a task trained as a single expert has no expert features");
        }
        let repeat: Vec<u32> = (0..rows as u32).flat_map(|r| std::iter::repeat_n(r, k)).collect();
        let index = Tensor::from_vec(repeat, rows * k, batch.input_ids.device())?;
        let copies = Batch {
            input_ids: batch.input_ids.index_select(&index, 0)?,
            token_type_ids: batch.token_type_ids.index_select(&index, 0)?,
            attention_mask: batch.attention_mask.index_select(&index, 0)?,
            truncated: batch.truncated,
        };
        let names: Vec<Option<String>> =
            (0..rows).flat_map(|_| self.experts.iter().map(|(_, adapter)| Some(adapter.clone()))).collect();
        let pooled = self.model.pooled(&copies, &ctx.fork(Adapters::PerRow(names)))?;
        let h = pooled.dim(1)?;
        Ok(pooled.reshape((rows, k * h))?)
    }

    /// Rewards for `(prompt, response)` pairs in batches of `batch_size`, in evaluation mode: the
    /// aggregator over the experts, or the stage-1 model of a single-expert task.
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<f32>> {
        let Some(aggregator) = &self.aggregator else {
            return self.model.score(pairs, batch_size, &Adapters::None);
        };
        let mut out = Vec::with_capacity(pairs.len());
        // Each row runs K times: `batch_size` rows through the encoder, not K times as many.
        for chunk in pairs.chunks((batch_size / self.experts.len()).max(1)) {
            let features = self.features(&self.model.encode(chunk)?, &Ctx::eval())?;
            out.extend(aggregator.forward(&features)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Rewards from one expert alone (its adapter and its own head).
    pub fn score_expert(&self, adapter: &str, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<f32>> {
        self.model.score(pairs, batch_size, &Adapters::One(adapter.to_string()))
    }

    /// Loads a task's stage-1 model, its experts and (once trained) its aggregator from their stage
    /// directories.
    pub fn load(
        rm_dir: &Path,
        experts: &[(String, String, PathBuf)],
        aggregator_dir: Option<&Path>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let mut model = RewardModel::load(rm_dir, opts)?;
        for (_, name, dir) in experts {
            model.load_adapter(dir, name, false)?;
        }
        let mut ordered: Vec<(String, String)> = experts.iter().map(|(a, n, _)| (a.clone(), n.clone())).collect();
        let aggregator = match aggregator_dir {
            None => None,
            Some(dir) => {
                let path = dir.join(AGGREGATOR_CONFIG);
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                let config: AggregatorConfig =
                    crate::config::parse_json(&text).with_context(|| format!("parsing {}", path.display()))?;
                let mut known: Vec<&String> = ordered.iter().map(|(_, n)| n).collect();
                let mut wanted: Vec<&String> = config.adapters.iter().collect();
                known.sort();
                wanted.sort();
                if known != wanted {
                    bail!(
                        "{} reads the experts {:?}, the run has {:?}",
                        path.display(),
                        config.adapters,
                        ordered.iter().map(|(_, n)| n).collect::<Vec<_>>()
                    );
                }
                ordered = config.aspects.iter().cloned().zip(config.adapters.iter().cloned()).collect();
                Some(Aggregator::load(&dir.join(AGGREGATOR_FILE), &config, &opts.device)?)
            }
        };
        Ok(Self { model, experts: ordered, aggregator })
    }
}

/// `pair` turned so that `chosen` is the better one on a point labelled `label` (+1 or −1).
fn oriented(pair: &PairRecord, label: i8) -> PairRecord {
    let mut pair = pair.clone();
    if label < 0 {
        std::mem::swap(&mut pair.chosen, &mut pair.rejected);
    }
    pair
}

/// The pairs of `pairs` labelled on `aspect` (+1 or −1; ties and missing labels left out), each turned
/// so that `chosen` is the better one on that point.
pub fn aspect_pairs(pairs: &[PairRecord], aspect: &str) -> Vec<PairRecord> {
    pairs
        .iter()
        .filter_map(|p| p.aspects.as_ref().and_then(|a| a.get(aspect)).filter(|&&l| l != 0).map(|&l| oriented(p, l)))
        .collect()
}

/// The stage-1 share and the aggregator's share of a task's pairs: a seeded shuffle, then a cut.
fn split_phases(pairs: &[PairRecord], fraction: f64, seed: u64, task: &str) -> (Vec<PairRecord>, Vec<PairRecord>) {
    let mut shuffled = pairs.to_vec();
    shuffled.shuffle(&mut StdRng::seed_from_u64(mix(seed, stable_hash(task.as_bytes()) ^ 0x646d_6f65)));
    let cut = ((pairs.len() as f64) * fraction).round() as usize;
    let rest = shuffled.split_off(cut.min(shuffled.len()));
    (shuffled, rest)
}

/// Trains DMoERM into `cfg.out`.
pub fn train_dmoerm(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    cfg.validate()?;
    if cfg.method != Method::Dmoerm {
        bail!("the config trains method `{}`: run `rmroute {}`", cfg.method.name(), cfg.method.command());
    }
    let dm = cfg.dmoerm.clone().context("method `dmoerm` needs a `dmoerm` section")?;
    let folders = resolve_domains(&cfg.data, &cfg.domains)?;
    let mut by_domain = BTreeMap::new();
    for domain in &folders {
        by_domain.insert(domain.clone(), load_domain_pairs(cfg, domain)?);
    }
    // The tasks are the domains, unless the records name theirs.
    let by_task = group_by_task(&by_domain)?;
    let routes_by_task = by_task.is_some();
    let pairs = by_task.unwrap_or(by_domain);
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
    let mut stages = std::collections::BTreeSet::new();
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
        parts.extend(train_task(cfg, &dm, plan, device.clone(), opts)?);
        aspect_counts.insert(plan.task.clone(), plan.labelled.clone());
    }
    // The outer layer: with one task there is nothing to route.
    if tasks.len() > 1 {
        let mut router_cfg = cfg.clone();
        router_cfg.dmoerm = Some(DmoermConfig { router: dm.router.clone(), ..DmoermConfig::default() });
        parts.push(router_part(Method::Dmoerm, &router_cfg, "router", &tasks, &pairs, device, opts)?);
    }
    let mut config = cfg.clone();
    config.domains = folders;
    write_manifest(&config, tasks, parts, aspect_counts, routes_by_task)?;
    Ok(cfg.out.clone())
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
    device: Device,
    opts: &RunOptions,
) -> Result<Vec<Part>> {
    let task = plan.task.as_str();
    // Each stage records only the `dmoerm` settings it depends on: a later stage's settings may change
    // after a kill without refusing to resume the finished ones.
    let stage_cfg = |name: &str, section: DmoermConfig| {
        let mut c = cfg.clone();
        c.domains = vec![task.to_string()];
        c.out = cfg.out.join("stages").join(name);
        c.dmoerm = Some(section);
        c
    };
    let none = |_: &Path| Ok(());

    // Stage 1: the task's reward model, kept whole (a LoRA adapter merged in).
    let rm_name = reward_stage(task);
    let section = DmoermConfig { phase1_fraction: dm.phase1_fraction, phase1: dm.phase1, ..DmoermConfig::default() };
    let mut rm_cfg = stage_cfg(&rm_name, section);
    if dm.phase1 == Phase1::Full {
        rm_cfg.lora = None;
    }
    let rm_inputs = pairs_fingerprint(&plan.phase1);
    let rm = match Part::read_done(&rm_cfg.out, &rm_cfg, &rm_inputs)? {
        Some(part) => part,
        None => {
            let record = |m: &TrainedModel| part_record(&rm_name, Role::Reward, Some(task), m);
            let finish = |s: &Path, m: &TrainedModel| record(m).write_done(s, &rm_cfg, &rm_inputs);
            let domains = [task.to_string()];
            let stage_opts = stage_options(opts, &rm_name, &rm_cfg.out);
            let m = train_reward_model(
                &rm_cfg,
                &plan.phase1,
                &domains,
                device.clone(),
                &rm_cfg.out,
                &stage_opts,
                Keep::Model,
                &none,
                finish,
            )?;
            record(&m)
        }
    };
    let mut parts = vec![rm];

    // Stage 2: an expert per capability point, a LoRA adapter on the frozen stage-1 model.
    let rm_dir = cfg.out.join("stages").join(&rm_name);
    let mut experts = Vec::new();
    let mut expert_inputs = Vec::new();
    for aspect in &plan.experts {
        let name = expert_stage(task, aspect);
        let mut expert_cfg = stage_cfg(&name, DmoermConfig { expert: dm.expert.clone(), ..DmoermConfig::default() });
        dm.expert.apply(&mut expert_cfg);
        expert_cfg.backbone = rm_dir.display().to_string();
        // Each expert its own initialisation, dropout and order: points that agree often still differ.
        expert_cfg.seed = mix(cfg.seed, stable_hash(aspect.as_bytes()));
        expert_cfg.validate().context("the experts' settings (`dmoerm.expert`)")?;
        let pairs = aspect_pairs(&plan.phase1, aspect);
        let inputs = fingerprint([rm_inputs.as_str(), &pairs_fingerprint(&pairs)]);
        let part = match Part::read_done(&expert_cfg.out, &expert_cfg, &inputs)? {
            Some(part) => part,
            None => {
                let record = |m: &TrainedModel| {
                    let mut part = part_record(&name, Role::Expert, Some(task), m);
                    part.aspect = Some(aspect.clone());
                    part
                };
                let finish = |s: &Path, m: &TrainedModel| record(m).write_done(s, &expert_cfg, &inputs);
                let stage_opts = stage_options(opts, &name, &expert_cfg.out);
                let domains = [format!("{task} ({aspect})")];
                let m = train_reward_model(
                    &expert_cfg,
                    &pairs,
                    &domains,
                    device.clone(),
                    &expert_cfg.out,
                    &stage_opts,
                    Keep::Adapter(&name),
                    &none,
                    finish,
                )?;
                record(&m)
            }
        };
        experts.push((aspect.clone(), name.clone(), expert_cfg.out.clone()));
        expert_inputs.push(format!("{name}:{inputs}"));
        parts.push(part);
    }
    if experts.is_empty() {
        return Ok(parts);
    }

    // Stage 3: the aggregator over the frozen experts, on the pairs none of them has seen.
    let name = aggregator_stage(task);
    let mut agg_cfg = stage_cfg(&name, DmoermConfig { aggregator: dm.aggregator.clone(), ..DmoermConfig::default() });
    dm.aggregator.apply(&mut agg_cfg);
    agg_cfg.validate().context("the aggregator's settings (`dmoerm.aggregator`)")?;
    let rest = pairs_fingerprint(&plan.rest);
    let inputs = fingerprint(expert_inputs.iter().map(String::as_str).chain([rest.as_str()]));
    let part = match Part::read_done(&agg_cfg.out, &agg_cfg, &inputs)? {
        Some(part) => part,
        None => train_aggregator(&agg_cfg, &inputs, task, &rm_dir, &experts, &plan.rest, device, opts)?,
    };
    parts.push(part);
    Ok(parts)
}

/// Stage 3: the experts' pooled vectors for every pair are computed once (the experts are frozen and
/// run in evaluation mode), then the MLP trains on them with the pairwise loss.
#[allow(clippy::too_many_arguments)]
fn train_aggregator(
    cfg: &TrainConfig,
    inputs: &str,
    task: &str,
    rm_dir: &Path,
    experts: &[(String, String, PathBuf)],
    pairs: &[PairRecord],
    device: Device,
    opts: &RunOptions,
) -> Result<Part> {
    let name = aggregator_stage(task);
    let load = LoadOptions { device: device.clone(), ..Default::default() };
    let mut inner = InnerModel::load(rm_dir, experts, None, &load)?;
    inner.model.set_limits(cfg.max_length, cfg.truncation);
    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(pairs.len() as u64) };
    bar.set_style(ProgressStyle::with_template(
        "{prefix} {bar:25} {pos}/{len} pairs [{elapsed_precise}<{eta_precise}]",
    )?);
    bar.set_prefix(format!("{name}: the {} experts' pooled vectors", experts.len()));
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
    let aggregator = Aggregator::new(experts.len(), hidden, cfg.seed, &device)?;
    let objective = AggregatorPairwise { aggregator: &aggregator, chosen: &chosen, rejected: &rejected };
    let stage_opts = stage_options(opts, &name, &cfg.out);
    let mut trained = train_objective(&objective, cfg, &cfg.out, &stage_opts)?;
    trained.truncated = truncated;

    let staged = StagedDir::new(&cfg.out)?;
    std::fs::copy(cfg.out.join("metrics.jsonl"), staged.path().join("metrics.jsonl"))?;
    aggregator.save(&staged.path().join(AGGREGATOR_FILE))?;
    let config = AggregatorConfig {
        aspects: experts.iter().map(|(a, _, _)| a.clone()).collect(),
        adapters: experts.iter().map(|(_, n, _)| n.clone()).collect(),
        hidden,
    };
    write_atomic(&staged.path().join(AGGREGATOR_CONFIG), &serde_json::to_vec_pretty(&config)?)?;
    let count = aggregator.parameter_count();
    let model = TrainedModel {
        trained,
        total_parameters: count,
        trainable_parameters: count,
        description: format!("the aggregator over {task}'s experts"),
        adapters: BTreeMap::new(),
    };
    let part = part_record(&name, Role::Aggregator, Some(task), &model);
    part.write_done(staged.path(), cfg, inputs)?;
    staged.commit()?;
    Ok(part)
}

/// Stage 3's objective: the pairwise loss of the aggregator's rewards on precomputed features.
struct AggregatorPairwise<'a> {
    aggregator: &'a Aggregator,
    chosen: &'a Tensor,
    rejected: &'a Tensor,
}

impl Objective for AggregatorPairwise<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.aggregator.vars()
    }

    fn examples(&self) -> usize {
        self.chosen.dim(0).unwrap_or(0)
    }

    fn micro_batch(&self, batch: &[usize], _ctx: Ctx) -> Result<MicroBatch> {
        let index =
            Tensor::from_vec(batch.iter().map(|&i| i as u32).collect::<Vec<_>>(), batch.len(), self.chosen.device())?;
        let chosen = self.aggregator.forward(&self.chosen.index_select(&index, 0)?)?;
        let rejected = self.aggregator.forward(&self.rejected.index_select(&index, 0)?)?;
        let loss = pairwise_loss(&chosen, &rejected)?;
        let correct = pairwise_correct(&chosen.to_vec1::<f32>()?, &rejected.to_vec1::<f32>()?);
        Ok(MicroBatch { loss, correct, truncated: 0 })
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
    let sum = |f: fn(&Part) -> usize| parts.iter().map(f).sum::<usize>();
    let one_epoch = crate::run::one_epoch_seconds(&parts);
    let model = "DMoERM: per task a reward model (stage 1), LoRA capability-point experts on it (stage 2) and \
                 an MLP aggregator over them (stage 3); a router over the tasks when there are several; see `parts`"
        .to_string();
    let train_pairs =
        tasks.iter().map(|t| parts.iter().filter(|p| p.domain.as_deref() == Some(t.as_str()))).map(|mut ps| {
            // Stage 1 and the aggregator together saw each of the task's pairs once.
            let rm = ps.clone().find(|p| p.role == Role::Reward).map(|p| p.train_examples).unwrap_or(0);
            rm + ps.find(|p| p.role == Role::Aggregator).map(|p| p.train_examples).unwrap_or(0)
        });
    RunMeta {
        method: Method::Dmoerm.name().into(),
        domains: tasks.clone(),
        backbone: cfg.backbone.clone(),
        backbone_name: backbone_name(&cfg.backbone),
        seed: cfg.seed,
        rmroute_version: env!("CARGO_PKG_VERSION").into(),
        config: cfg.clone(),
        train_pairs: train_pairs.sum(),
        truncated_pairs: parts.iter().filter(|p| p.role == Role::Reward).map(|p| p.truncated).sum(),
        steps: sum(|p| p.steps),
        epoch_seconds: vec![one_epoch],
        total_parameters: sum(|p| p.total_parameters),
        trainable_parameters: sum(|p| p.trainable_parameters),
        model,
        adapters: BTreeMap::new(),
        parts,
        base: None,
        aspect_pairs,
        routes_by_task,
    }
    .write(&cfg.out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The aggregator written out in f64: `fc2 · prelu(fc1 · x + b1) + b2` for each row.
    fn by_hand(p: &[Vec<f64>], x: &[Vec<f64>], hidden: usize) -> Vec<f64> {
        let (w1, b1, a, w2, b2) = (&p[0], &p[1], p[2][0], &p[3], p[4][0]);
        let inputs = x[0].len();
        x.iter()
            .map(|row| {
                (0..hidden)
                    .map(|j| {
                        let z: f64 = b1[j] + (0..inputs).map(|i| w1[j * inputs + i] * row[i]).sum::<f64>();
                        w2[j] * if z > 0.0 { z } else { a * z }
                    })
                    .sum::<f64>()
                    + b2
            })
            .collect()
    }

    #[test]
    fn aggregator_matches_its_formula_and_every_parameter_gets_its_gradient() {
        let (experts, hidden) = (2, 3);
        let aggregator = Aggregator::new(experts, hidden, 7, &Device::Cpu).unwrap();
        let vars = aggregator.vars();
        let names: Vec<&str> = vars.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["fc1.weight", "fc1.bias", "prelu.weight", "fc2.weight", "fc2.bias"]);
        // Weights large enough that some pre-activations are negative, so the PReLU slope matters.
        let mut params: Vec<Vec<f64>> = Vec::new();
        for (k, (_, var)) in vars.iter().enumerate() {
            let n = var.elem_count();
            let values: Vec<f64> = (0..n).map(|i| ((i * 7 + k * 3) % 11) as f64 / 5.0 - 1.0).collect();
            let values = if k == 2 { vec![0.3] } else { values };
            let t = Tensor::from_vec(values.iter().map(|&v| v as f32).collect::<Vec<_>>(), var.shape(), &Device::Cpu);
            var.set(&t.unwrap()).unwrap();
            params.push(values);
        }
        let x: Vec<Vec<f64>> =
            (0..4).map(|r| (0..experts * hidden).map(|i| ((r * 5 + i * 3) % 7) as f64 / 3.0 - 1.0).collect()).collect();
        let flat: Vec<f32> = x.iter().flatten().map(|&v| v as f32).collect();
        let input = Tensor::from_vec(flat, (4, experts * hidden), &Device::Cpu).unwrap();
        let got = aggregator.forward(&input).unwrap();
        let want = by_hand(&params, &x, hidden);
        for (g, w) in got.to_vec1::<f32>().unwrap().iter().zip(&want) {
            assert!((f64::from(*g) - w).abs() < 1e-5, "{g} vs {w}");
        }

        // Gradients of the summed rewards against central differences of the f64 formula.
        let grads = got.sum_all().unwrap().backward().unwrap();
        for (k, (name, var)) in vars.iter().enumerate() {
            let analytic: Vec<f32> = grads.get(var).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(analytic.iter().any(|g| g.abs() > 1e-6), "`{name}` gets no gradient");
            for (i, a) in analytic.iter().enumerate() {
                let eps = 1e-6;
                let mut up = params.clone();
                up[k][i] += eps;
                let mut down = params.clone();
                down[k][i] -= eps;
                let numeric = (by_hand(&up, &x, hidden).iter().sum::<f64>()
                    - by_hand(&down, &x, hidden).iter().sum::<f64>())
                    / (2.0 * eps);
                assert!((f64::from(*a) - numeric).abs() < 1e-3, "`{name}`[{i}]: {a} vs {numeric}");
            }
        }
    }
}
