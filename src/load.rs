//! One way to load something to score with, for `score`, `eval` and the server: an rmroute run
//! directory (its `rmroute.json` says what the files are, which method made them and how inputs were
//! truncated in training), or a Hugging Face checkpoint with optional PEFT adapters under
//! `adapters/<name>/` or elsewhere.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::backbone::resolve_model_dir;
use crate::config::Method;
use crate::encoding::{PairEncoder, Truncation};
use crate::methods::dmoerm::{aggregator_stage, InnerModel};
use crate::methods::more::MoreModel;
use crate::methods::routed::ROUTER_ADAPTER;
use crate::model::{LoadOptions, RewardModel};
use crate::nn::{Adapters, Ctx};
use crate::run::{Part, Role, RunMeta};

/// Something that scores: one model (with the adapters its forward pass uses), or a router over
/// one reward model per domain.
pub struct Scorer {
    pub kind: Kind,
    /// The run's description, when `dir` is an rmroute run.
    pub run: Option<RunMeta>,
}

pub enum Kind {
    Single {
        model: RewardModel,
        adapters: Adapters,
    },
    Routed(Routed),
    /// MoRE: an encoder with a sparse mixture of reward experts.
    More(Box<MoreModel>),
}

/// A routed method: the router picks, per prompt, the domain whose reward part scores the pair.
pub struct Routed {
    /// The router's labels, in order; each has a reward part.
    pub domains: Vec<String>,
    pub parts: RoutedParts,
}

/// What a routed method routes between.
pub enum RoutedParts {
    /// RODOS: a router model and a reward model per domain.
    Models { router: RewardModel, models: BTreeMap<String, RewardModel> },
    /// ARLISS: one frozen base carrying the router adapter and a reward adapter per domain.
    Adapters {
        model: RewardModel,
        /// Domain → the name of its reward adapter in `model`.
        adapters: BTreeMap<String, String>,
        switching: Switching,
    },
    /// DMoERM: a router over the tasks (none for one task) and each task's inner model.
    Tasks { router: Option<RewardModel>, tasks: BTreeMap<String, InnerModel> },
}

/// How ARLISS applies its reward adapters to a batch whose rows come from several domains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Switching {
    /// One forward pass of the base with a reward adapter per row.
    #[default]
    OnePass,
    /// As the paper did: activate one domain's adapter, score its rows, switch to the next.
    Sequential,
}

impl Switching {
    pub fn name(self) -> &'static str {
        match self {
            Switching::OnePass => "one_pass",
            Switching::Sequential => "sequential",
        }
    }
}

/// Rewards, and for a routed scorer the domain each input was routed to.
pub struct Scored {
    pub rewards: Vec<f32>,
    pub domains: Option<Vec<String>>,
}

impl Scorer {
    /// The single model, for callers that need its internals (tests, timing).
    pub fn single(&self) -> Option<(&RewardModel, &Adapters)> {
        match &self.kind {
            Kind::Single { model, adapters } => Some((model, adapters)),
            Kind::Routed(_) | Kind::More(_) => None,
        }
    }

    /// The tokenizer with the length limit and truncation inputs are encoded with.
    pub fn tokens(&self) -> &PairEncoder {
        match &self.kind {
            Kind::Single { model, .. } => &model.tokens,
            Kind::More(model) => &model.encoder.tokens,
            Kind::Routed(routed) => match &routed.parts {
                RoutedParts::Models { router, .. } => &router.tokens,
                RoutedParts::Adapters { model, .. } => &model.tokens,
                RoutedParts::Tasks { router: Some(router), .. } => &router.tokens,
                RoutedParts::Tasks { router: None, tasks } => match tasks.values().next() {
                    Some(inner) => &inner.model.tokens,
                    None => unreachable!("a DMoERM run loads with at least one task"),
                },
            },
        }
    }

    /// Longest input in tokens.
    pub fn max_length(&self) -> usize {
        self.tokens().max_length
    }

    /// How longer inputs are cut.
    pub fn truncation(&self) -> Truncation {
        self.tokens().truncation
    }

    /// Rewards for `(prompt, response)` pairs, in batches of `batch_size`.
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored> {
        match &self.kind {
            Kind::Single { model, adapters } => {
                Ok(Scored { rewards: model.score(pairs, batch_size, adapters)?, domains: None })
            }
            Kind::More(model) => Ok(Scored { rewards: model.score(pairs, batch_size)?, domains: None }),
            Kind::Routed(routed) => {
                let (rewards, domains) = routed.score(pairs, batch_size)?;
                Ok(Scored { rewards, domains: Some(domains) })
            }
        }
    }

    /// Rewards when every input is known to come from `domain` (the oracle a router is measured
    /// against); a single model ignores the domain.
    pub fn score_as(&self, pairs: &[(&str, &str)], domain: &str, batch_size: usize) -> Result<Vec<f32>> {
        match &self.kind {
            Kind::Single { model, adapters } => model.score(pairs, batch_size, adapters),
            Kind::More(model) => model.score(pairs, batch_size),
            Kind::Routed(routed) => routed.score_in(pairs, &vec![domain.to_string(); pairs.len()], batch_size),
        }
    }
}

impl Routed {
    /// Rewards with the router's choices, and the domain each pair was routed to. Each distinct prompt
    /// is routed once (a pair's two responses share their prompt).
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<(Vec<f32>, Vec<String>)> {
        let mut distinct: Vec<&str> = pairs.iter().map(|(p, _)| *p).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let picked = self.route(&distinct, batch_size)?;
        let domains: Vec<String> = pairs
            .iter()
            .map(|(p, _)| distinct.binary_search(p).map(|i| self.domains[picked[i]].clone()))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("a prompt lost while routing"))?;
        Ok((self.score_in(pairs, &domains, batch_size)?, domains))
    }

    /// The domain index the router picks for each prompt.
    pub fn route(&self, prompts: &[&str], batch_size: usize) -> Result<Vec<usize>> {
        match &self.parts {
            RoutedParts::Models { router, .. } => router.classify(prompts, batch_size, &Adapters::None),
            RoutedParts::Adapters { model, .. } => {
                model.classify(prompts, batch_size, &Adapters::One(ROUTER_ADAPTER.into()))
            }
            RoutedParts::Tasks { router: Some(router), .. } => router.classify(prompts, batch_size, &Adapters::None),
            // One task: every prompt is its.
            RoutedParts::Tasks { router: None, .. } => Ok(vec![0; prompts.len()]),
        }
    }

    /// Scores each row with its domain's reward part: RODOS and sequential switching take the rows of
    /// one domain together, in batches; one-pass ARLISS scores each batch, whatever its mix, in one
    /// forward with a reward adapter per row.
    pub fn score_in(&self, pairs: &[(&str, &str)], domains: &[String], batch_size: usize) -> Result<Vec<f32>> {
        if pairs.len() != domains.len() {
            bail!("{} pairs with {} domains", pairs.len(), domains.len());
        }
        let unknown =
            |domain: &str| anyhow::anyhow!("no reward model for domain `{domain}` (have: {})", self.domains.join(", "));
        if let RoutedParts::Adapters { model, adapters, switching: Switching::OnePass } = &self.parts {
            let names: Vec<Option<String>> = domains
                .iter()
                .map(|d| adapters.get(d).cloned().map(Some).ok_or_else(|| unknown(d)))
                .collect::<Result<_>>()?;
            let mut rewards = Vec::with_capacity(pairs.len());
            for (chunk, names) in pairs.chunks(batch_size.max(1)).zip(names.chunks(batch_size.max(1))) {
                let ctx = Ctx::eval().with_adapters(Adapters::PerRow(names.to_vec()));
                rewards.extend(model.forward(&model.encode(chunk)?, &ctx)?.to_vec1::<f32>()?);
            }
            return Ok(rewards);
        }
        let mut rewards = vec![f32::NAN; pairs.len()];
        let mut rows: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, d) in domains.iter().enumerate() {
            rows.entry(d.as_str()).or_default().push(i);
        }
        for (domain, rows) in rows {
            let inputs: Vec<(&str, &str)> = rows.iter().map(|&i| pairs[i]).collect();
            let scored = match &self.parts {
                RoutedParts::Models { models, .. } => {
                    models.get(domain).ok_or_else(|| unknown(domain))?.score(&inputs, batch_size, &Adapters::None)?
                }
                RoutedParts::Adapters { model, adapters, .. } => {
                    let name = adapters.get(domain).ok_or_else(|| unknown(domain))?;
                    model.score(&inputs, batch_size, &Adapters::One(name.clone()))?
                }
                RoutedParts::Tasks { tasks, .. } => {
                    tasks.get(domain).ok_or_else(|| unknown(domain))?.score(&inputs, batch_size)?
                }
            };
            for (&i, r) in rows.iter().zip(scored) {
                rewards[i] = r;
            }
        }
        Ok(rewards)
    }

    /// ARLISS: switch how reward adapters are applied (RODOS has nothing to switch).
    pub fn set_switching(&mut self, mode: Switching) {
        if let RoutedParts::Adapters { switching, .. } = &mut self.parts {
            *switching = mode;
        }
    }

    pub fn switching(&self) -> Option<Switching> {
        match &self.parts {
            RoutedParts::Adapters { switching, .. } => Some(*switching),
            RoutedParts::Models { .. } | RoutedParts::Tasks { .. } => None,
        }
    }
}

/// What the caller may override.
#[derive(Debug, Clone, Default)]
pub struct ScoreOptions {
    /// An adapter name under `DIR/adapters/`, or the directory of a PEFT adapter.
    pub adapter: Option<String>,
    /// Longest input; default: the run's `max_length`, else the model's position limit.
    pub max_length: Option<usize>,
    /// Default: the run's strategy, else `longest_first` (transformers' default).
    pub truncation: Option<Truncation>,
    /// ARLISS: how reward adapters are applied to a mixed batch (default one pass).
    pub switching: Option<Switching>,
}

/// Loads `dir` for scoring.
///
/// An rmroute run scores with its top-level model (for BaseLoRA, the adapter merged into the
/// backbone); naming one of its adapters scores with the backbone plus that adapter instead, which
/// gives the same rewards. A plain checkpoint scores with its own head, or with the adapter named or
/// the only one under `adapters/`.
pub fn load_scorer(dir: &Path, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Scorer> {
    let run = if dir.join("rmroute.json").is_file() { Some(RunMeta::read(dir)?) } else { None };
    if let Some(meta) = run.as_ref().filter(|m| m.method == Method::More.name()) {
        if choice.switching.is_some() {
            bail!("--switching applies to ARLISS runs; {} is a MoRE run", dir.display());
        }
        if choice.adapter.is_some() {
            bail!("{} is a MoRE run: --adapter does not apply", dir.display());
        }
        let more = meta.config.more.clone().with_context(|| {
            format!("{}/rmroute.json is a MoRE run without its `more` section (top_k): train it again", dir.display())
        })?;
        let mut model = MoreModel::load(dir, &more, opts)?;
        let max_length = choice.max_length.unwrap_or(meta.config.max_length);
        model.encoder.set_limits(max_length, choice.truncation.unwrap_or(meta.config.truncation));
        return Ok(Scorer { kind: Kind::More(Box::new(model)), run });
    }
    if let Some(meta) = run.as_ref().filter(|m| !m.parts.is_empty()) {
        if choice.adapter.is_some() {
            bail!("{} is a `{}` run of several models: --adapter does not apply", dir.display(), meta.method);
        }
        let routed = load_routed(dir, meta, opts, choice)?;
        return Ok(Scorer { kind: Kind::Routed(routed), run });
    }
    if choice.switching.is_some() {
        bail!("--switching applies to ARLISS runs; {} is not one", dir.display());
    }
    let adapters_dir = dir.join("adapters");
    let wanted = match choice.adapter.as_deref() {
        Some(adapter) => Some(which_adapter(adapter, &adapters_dir)?),
        None => None,
    };
    let (mut model, adapters) = match (&run, wanted) {
        (Some(meta), Some(Wanted::Named(name))) => {
            // The run's adapter on the backbone it was trained from (the top level has it merged in).
            let backbone = resolve_model_dir(&meta.backbone)
                .with_context(|| format!("loading the backbone of {} for adapter `{name}`", dir.display()))?;
            let mut model = RewardModel::load(&backbone, opts)?;
            model.load_adapter(&adapters_dir.join(&name), &name, false)?;
            (model, Adapters::One(name))
        }
        (Some(_), Some(Wanted::Elsewhere(path))) => bail!(
            "{} is an rmroute run: it scores with its own model or its adapters under {}. To score the adapter \
             in {}, pass the model it was trained for as --model",
            dir.display(),
            adapters_dir.display(),
            path.display()
        ),
        (Some(_), None) => (RewardModel::load(dir, opts)?, Adapters::None),
        (None, Some(wanted)) => {
            let path = match &wanted {
                Wanted::Named(name) => adapters_dir.join(name),
                Wanted::Elsewhere(path) => path.clone(),
            };
            let name = adapter_name(&path);
            let mut model = RewardModel::load(dir, opts)?;
            model.load_adapter(&path, &name, false)?;
            (model, Adapters::One(name))
        }
        (None, None) => {
            let mut model = RewardModel::load(dir, opts)?;
            match adapter_names(&adapters_dir)?.as_slice() {
                [] => (model, Adapters::None),
                [one] => {
                    model.load_adapter(&adapters_dir.join(one), one, false)?;
                    (model, Adapters::One(one.clone()))
                }
                several => {
                    bail!("{} holds several adapters ({}): pick one with --adapter", dir.display(), several.join(", "))
                }
            }
        }
    };
    let trained = run.as_ref().map(|m| (m.config.max_length, m.config.truncation));
    let max_length = choice.max_length.or(trained.map(|t| t.0)).unwrap_or(model.max_positions);
    let truncation = choice.truncation.or(trained.map(|t| t.1)).unwrap_or_default();
    model.set_limits(max_length, truncation);
    Ok(Scorer { kind: Kind::Single { model, adapters }, run })
}

/// The router and every domain's reward part that a run's manifest names: whole models (RODOS), or
/// adapters loaded onto the base the run references (ARLISS).
fn load_routed(dir: &Path, meta: &RunMeta, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Routed> {
    let adapters = meta.method == Method::Arliss.name();
    if choice.switching.is_some() && !adapters {
        bail!("--switching applies to ARLISS runs; {} is a `{}` run", dir.display(), meta.method);
    }
    if meta.method == Method::Dmoerm.name() {
        return load_tasks(dir, meta, opts, choice);
    }
    let marker = if adapters { "adapter_config.json" } else { "config.json" };
    let part_dir = |part: &Part| part_dir(dir, part, marker);
    let limits = |model: &mut RewardModel| run_limits(model, meta, choice);
    let router_part = meta
        .parts
        .iter()
        .find(|p| p.role == Role::Router)
        .with_context(|| format!("{}/rmroute.json lists no router among its parts", dir.display()))?;
    let reward_part = |domain: &String| {
        meta.parts
            .iter()
            .find(|p| p.role == Role::Reward && p.domain.as_deref() == Some(domain.as_str()))
            .with_context(|| format!("{}/rmroute.json has no reward part for domain `{domain}`", dir.display()))
    };
    if adapters {
        let base = meta.base.as_ref().with_context(|| {
            format!("{}/rmroute.json is an ARLISS run that does not say which base it adapts", dir.display())
        })?;
        let mut model = RewardModel::load(&base.locate()?, opts)?;
        limits(&mut model);
        model.load_adapter(&part_dir(router_part)?, ROUTER_ADAPTER, false)?;
        let outputs = model.adapter(ROUTER_ADAPTER)?.head.outputs();
        if outputs != meta.domains.len() {
            bail!(
                "the router adapter in {} chooses among {outputs} domains, the run has {} ({})",
                router_part.path,
                meta.domains.len(),
                meta.domains.join(", ")
            );
        }
        let mut names = BTreeMap::new();
        for domain in &meta.domains {
            let part = reward_part(domain)?;
            model.load_adapter(&part_dir(part)?, &part.name, false)?;
            names.insert(domain.clone(), part.name.clone());
        }
        let switching = choice.switching.unwrap_or_default();
        return Ok(Routed {
            domains: meta.domains.clone(),
            parts: RoutedParts::Adapters { model, adapters: names, switching },
        });
    }
    let mut router = RewardModel::load(&part_dir(router_part)?, opts)?;
    limits(&mut router);
    if router.labels != meta.domains {
        bail!(
            "the router in {} chooses among {:?}, the run's domains are {:?}",
            router_part.path,
            router.labels,
            meta.domains
        );
    }
    let mut models = BTreeMap::new();
    for domain in &meta.domains {
        let mut model = RewardModel::load(&part_dir(reward_part(domain)?)?, opts)?;
        limits(&mut model);
        models.insert(domain.clone(), model);
    }
    Ok(Routed { domains: meta.domains.clone(), parts: RoutedParts::Models { router, models } })
}

/// The directory of a run's part, checked to hold `marker` (a finished part).
fn part_dir(dir: &Path, part: &Part, marker: &str) -> Result<PathBuf> {
    let path = dir.join(&part.path);
    if !path.join(marker).is_file() {
        bail!(
            "{}/rmroute.json names part `{}` at {}, which is missing or incomplete (train it again with --resume, \
             or restore the directory)",
            dir.display(),
            part.name,
            path.display()
        );
    }
    Ok(path)
}

/// The run's length limit and truncation, unless the caller chose others.
fn run_limits(model: &mut RewardModel, meta: &RunMeta, choice: &ScoreOptions) {
    let max_length = choice.max_length.unwrap_or(meta.config.max_length);
    model.set_limits(max_length, choice.truncation.unwrap_or(meta.config.truncation));
}

/// DMoERM: each task's stage-1 model with its experts' adapters and aggregator, and the router over
/// the tasks when there are several.
fn load_tasks(dir: &Path, meta: &RunMeta, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Routed> {
    let part_dir = |part: &Part, marker: &str| part_dir(dir, part, marker);
    let limits = |model: &mut RewardModel| run_limits(model, meta, choice);
    let of_task = |task: &str, role: Role| -> Vec<&Part> {
        meta.parts.iter().filter(|p| p.role == role && p.domain.as_deref() == Some(task)).collect()
    };
    let mut tasks = BTreeMap::new();
    for task in &meta.domains {
        let rm = *of_task(task, Role::Reward)
            .first()
            .with_context(|| format!("{}/rmroute.json has no reward model for task `{task}`", dir.display()))?;
        let mut experts = Vec::new();
        for part in of_task(task, Role::Expert) {
            let aspect = part.aspect.clone().with_context(|| format!("expert `{}` names no aspect", part.name))?;
            experts.push((aspect, part.name.clone(), part_dir(part, "adapter_config.json")?));
        }
        let aggregator = match of_task(task, Role::Aggregator).first() {
            Some(part) => Some(part_dir(part, crate::methods::dmoerm::AGGREGATOR_FILE)?),
            None if experts.is_empty() => None,
            None => bail!(
                "{}/rmroute.json lists experts for task `{task}` but no `{}`",
                dir.display(),
                aggregator_stage(task)
            ),
        };
        let mut inner = InnerModel::load(&part_dir(rm, "config.json")?, &experts, aggregator.as_deref(), opts)?;
        limits(&mut inner.model);
        tasks.insert(task.clone(), inner);
    }
    let router = match meta.parts.iter().find(|p| p.role == Role::Router) {
        Some(part) => {
            let mut router = RewardModel::load(&part_dir(part, "config.json")?, opts)?;
            limits(&mut router);
            if router.labels != meta.domains {
                bail!(
                    "the router in {} chooses among {:?}, the tasks are {:?}",
                    part.path,
                    router.labels,
                    meta.domains
                );
            }
            Some(router)
        }
        None if meta.domains.len() == 1 => None,
        None => bail!("{}/rmroute.json lists no router over its {} tasks", dir.display(), meta.domains.len()),
    };
    Ok(Routed { domains: meta.domains.clone(), parts: RoutedParts::Tasks { router, tasks } })
}

/// Where an `--adapter` lives.
enum Wanted {
    /// `MODEL/adapters/<name>/`.
    Named(String),
    /// A PEFT adapter directory elsewhere.
    Elsewhere(PathBuf),
}

/// A plain name is an adapter under `adapters_dir`; anything else is a directory path (one that
/// points into `adapters_dir` is the same as its name).
fn which_adapter(adapter: &str, adapters_dir: &Path) -> Result<Wanted> {
    let is_name = !adapter.contains(['/', '\\']) && adapter != "." && adapter != "..";
    if is_name {
        if adapters_dir.join(adapter).join("adapter_config.json").is_file() {
            return Ok(Wanted::Named(adapter.to_string()));
        }
        bail!(
            "no adapter `{adapter}` in {} (have: {}); a PEFT adapter elsewhere is given by its directory path",
            adapters_dir.display(),
            adapter_names(adapters_dir)?.join(", ")
        );
    }
    let path = Path::new(adapter);
    if !path.join("adapter_config.json").is_file() {
        bail!("no adapter `{adapter}`: not a directory with adapter_config.json");
    }
    let canonical = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    if let (Ok(home), Some(parent)) = (adapters_dir.canonicalize(), canonical.parent()) {
        if parent == home {
            return Ok(Wanted::Named(adapter_name(&canonical)));
        }
    }
    Ok(Wanted::Elsewhere(path.to_path_buf()))
}

/// Adapter directories under `dir` (each with `adapter_config.json`), sorted.
fn adapter_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.join("adapter_config.json").is_file() {
                names.push(adapter_name(&path));
            }
        }
    }
    names.sort();
    Ok(names)
}

fn adapter_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "adapter".into())
}
