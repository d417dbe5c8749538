//! DMoERM's inner layer, loaded: a task's stage-1 reward model carrying its capability experts'
//! adapters and the aggregator over them; and a DMoERM run as a scorer (the outer router over the
//! tasks, then each task's inner model), with its per-stage evaluation.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Tensor;

use super::points::{aggregator_stage, aspect_pairs};
use crate::backbone::{Batch, PairEncoder};
use crate::data::domains::TestSets;
use crate::heads::aggregator::{Aggregator, AggregatorConfig, AGGREGATOR_CONFIG, AGGREGATOR_FILE};
use crate::io::read_json;
use crate::methods::accuracy::accuracy;
use crate::methods::manifest::{Part, Role, RunMeta};
use crate::methods::parts::{part_dir, router_limits, run_limits, score_by_domain};
use crate::methods::scorer::{DomainRouter, ExpertResult, MethodResults, ScoreOptions, Scored, Scores, TaskResults};
use crate::model::{LoadOptions, RewardModel};
use crate::nn::{Adapters, Ctx};

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
                let config: AggregatorConfig = read_json(&path)?;
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

/// A DMoERM run, loaded: the router over the tasks (none for one task) and each task's inner model.
pub struct Dmoerm {
    pub domains: Vec<String>,
    pub router: Option<RewardModel>,
    pub tasks: BTreeMap<String, InnerModel>,
}

/// Each task's stage-1 model with its experts' adapters and aggregator, and the router over the
/// tasks when there are several.
pub fn load(dir: &Path, meta: &RunMeta, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Dmoerm> {
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
            experts.push((aspect, part.name.clone(), part_dir(dir, part, "adapter_config.json")?));
        }
        let aggregator = match of_task(task, Role::Aggregator).first() {
            Some(part) => Some(part_dir(dir, part, AGGREGATOR_FILE)?),
            None if experts.is_empty() => None,
            None => bail!(
                "{}/rmroute.json lists experts for task `{task}` but no `{}`",
                dir.display(),
                aggregator_stage(task)
            ),
        };
        let mut inner = InnerModel::load(&part_dir(dir, rm, "config.json")?, &experts, aggregator.as_deref(), opts)?;
        run_limits(&mut inner.model, meta, choice)?;
        tasks.insert(task.clone(), inner);
    }
    let router = match meta.parts.iter().find(|p| p.role == Role::Router) {
        Some(part) => {
            let mut router = RewardModel::load(&part_dir(dir, part, "config.json")?, opts)?;
            router_limits(&mut router, meta, choice)?;
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
    if tasks.is_empty() {
        bail!("{}/rmroute.json lists no task", dir.display());
    }
    Ok(Dmoerm { domains: meta.domains.clone(), router, tasks })
}

impl DomainRouter for Dmoerm {
    fn domains(&self) -> &[String] {
        &self.domains
    }

    fn route(&self, prompts: &[&str], batch_size: usize) -> Result<Vec<usize>> {
        match &self.router {
            Some(router) => router.classify(prompts, batch_size, &Adapters::None),
            // One task: every prompt is its.
            None => Ok(vec![0; prompts.len()]),
        }
    }

    /// Each task's rows together, through its inner model.
    fn score_in(&self, pairs: &[(&str, &str)], domains: &[String], batch_size: usize) -> Result<Vec<f32>> {
        score_by_domain(pairs, domains, &self.domains, |task, inputs| {
            self.tasks.get(task).map(|inner| inner.score(inputs, batch_size)).transpose()
        })
    }
}

impl Scores for Dmoerm {
    fn tokens(&self) -> &PairEncoder {
        match (&self.router, self.tasks.values().next()) {
            (Some(router), _) => &router.tokens,
            (None, Some(inner)) => &inner.model.tokens,
            (None, None) => unreachable!("a DMoERM run loads with at least one task"),
        }
    }

    fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored> {
        self.score_routed(pairs, batch_size)
    }

    fn score_as(&self, pairs: &[(&str, &str)], domain: &str, batch_size: usize) -> Result<Vec<f32>> {
        self.score_in(pairs, &vec![domain.to_string(); pairs.len()], batch_size)
    }

    fn router(&self) -> Option<&dyn DomainRouter> {
        Some(self)
    }

    /// Each task's stage-1 model, experts and aggregator on its test pairs.
    fn evaluate_more(&mut self, sets: &TestSets, run: Option<&RunMeta>) -> Result<MethodResults> {
        let mut out = BTreeMap::new();
        for (domain, records) in sets {
            let inner = self.tasks.get(domain).with_context(|| format!("the run has no task `{domain}`"))?;
            let phase1 = accuracy(records, |inputs| inner.model.score(inputs, inputs.len(), &Adapters::None))?;
            let mut experts = BTreeMap::new();
            for (aspect, adapter) in &inner.experts {
                let by_expert = |inputs: &[(&str, &str)]| inner.score_expert(adapter, inputs, inputs.len());
                let labelled = aspect_pairs(records, aspect);
                let point = if labelled.is_empty() { None } else { Some(accuracy(&labelled, by_expert)?) };
                experts.insert(aspect.clone(), ExpertResult { point, overall: accuracy(records, by_expert)? });
            }
            let aggregator = match &inner.aggregator {
                Some(_) => Some(accuracy(records, |inputs| inner.score(inputs, inputs.len()))?),
                None => None,
            };
            let without_expert = run
                .and_then(|meta| meta.aspect_pairs.get(domain))
                .map(|counts| {
                    // Aspects no pair carries are not "too few": the task simply has none.
                    counts
                        .iter()
                        .filter(|(a, n)| **n > 0 && !experts.contains_key(*a))
                        .map(|(a, n)| (a.clone(), *n))
                        .collect()
                })
                .unwrap_or_default();
            let single_expert = inner.experts.is_empty();
            out.insert(domain.clone(), TaskResults { single_expert, phase1, experts, aggregator, without_expert });
        }
        Ok(MethodResults { tasks: Some(out), ..Default::default() })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
