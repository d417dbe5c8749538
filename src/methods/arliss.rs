//! ARLISS (router-reward-models.txt §3.3, Figure 1(d)): one frozen base model, a LoRA reward adapter
//! with its own head per domain, and a router adapter with a classifier over the domains; only the
//! adapters and heads are trained and kept (PEFT layout, one per stage), the base is referenced by its
//! checksum. Scoring routes each prompt with the router adapter, then scores a batch of any domain mix
//! in one forward pass with a reward adapter per row, so switching costs nothing (or, as the paper did,
//! one domain's rows at a time). The stages, `--resume` and `--add-domain` are the routed engine's
//! (`routed.rs`).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::manifest::{Role, RunMeta};
use super::parts::{find_part, part_dir, router_limits, score_by_domain, unknown_domain};
pub use super::scorer::Switching;
use super::scorer::{DomainRouter, MethodResults, ScoreOptions, Scored, Scores, SwitchingTiming};
use crate::backbone::PairEncoder;
use crate::data::domains::TestSets;
use crate::data::PairRecord;
use crate::model::{LoadOptions, RewardModel};
use crate::nn::{Adapters, Ctx};
use crate::train::objective::chosen_then_rejected;

pub use super::router::ROUTER_ADAPTER;

/// An ARLISS run, loaded: one frozen base carrying the router adapter and a reward adapter per domain.
pub struct Arliss {
    pub domains: Vec<String>,
    pub model: RewardModel,
    /// Domain → the name of its reward adapter in `model`.
    pub adapters: BTreeMap<String, String>,
    pub switching: Switching,
}

/// Loads the base the run references with the router adapter and every domain's reward adapter.
pub fn load(dir: &Path, meta: &RunMeta, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Arliss> {
    let router_part = find_part(dir, meta, Role::Router, None)?;
    let base = meta.base.as_ref().with_context(|| {
        format!("{}/rmroute.json is an ARLISS run that does not say which base it adapts", dir.display())
    })?;
    let mut model = RewardModel::load(&base.locate()?, opts)?;
    // One model reads prompts for the router adapter and pairs for the reward adapters.
    router_limits(&mut model, meta, choice)?;
    model.load_adapter(&part_dir(dir, router_part, "adapter_config.json")?, ROUTER_ADAPTER, false)?;
    let outputs = model.adapter(ROUTER_ADAPTER)?.head.outputs();
    if outputs != meta.domains.len() {
        bail!(
            "the router adapter in {} chooses among {outputs} domains, the run has {} ({})",
            router_part.path,
            meta.domains.len(),
            meta.domains.join(", ")
        );
    }
    let mut adapters = BTreeMap::new();
    for domain in &meta.domains {
        let part = find_part(dir, meta, Role::Reward, Some(domain))?;
        model.load_adapter(&part_dir(dir, part, "adapter_config.json")?, &part.name, false)?;
        adapters.insert(domain.clone(), part.name.clone());
    }
    let switching = choice.switching.unwrap_or_default();
    Ok(Arliss { domains: meta.domains.clone(), model, adapters, switching })
}

impl DomainRouter for Arliss {
    fn domains(&self) -> &[String] {
        &self.domains
    }

    fn route(&self, prompts: &[&str], batch_size: usize) -> Result<Vec<usize>> {
        self.model.classify(prompts, batch_size, &Adapters::One(ROUTER_ADAPTER.into()))
    }

    /// One pass: each batch, whatever its mix, in one forward with a reward adapter per row.
    /// Sequential: each domain's rows together, its adapter switched on.
    fn score_in(&self, pairs: &[(&str, &str)], domains: &[String], batch_size: usize) -> Result<Vec<f32>> {
        if self.switching == Switching::Sequential {
            return score_by_domain(pairs, domains, &self.domains, |domain, inputs| {
                let Some(name) = self.adapters.get(domain) else { return Ok(None) };
                Ok(Some(self.model.score(inputs, batch_size, &Adapters::One(name.clone()))?))
            });
        }
        if pairs.len() != domains.len() {
            bail!("{} pairs with {} domains", pairs.len(), domains.len());
        }
        let names: Vec<Option<String>> = domains
            .iter()
            .map(|d| self.adapters.get(d).cloned().map(Some).ok_or_else(|| unknown_domain(d, &self.domains)))
            .collect::<Result<_>>()?;
        let mut rewards = Vec::with_capacity(pairs.len());
        for (chunk, names) in pairs.chunks(batch_size.max(1)).zip(names.chunks(batch_size.max(1))) {
            let ctx = Ctx::eval().with_adapters(Adapters::PerRow(names.to_vec()));
            rewards.extend(self.model.forward(&self.model.encode(chunk)?, &ctx)?.to_vec1::<f32>()?);
        }
        Ok(rewards)
    }
}

impl Scores for Arliss {
    fn tokens(&self) -> &PairEncoder {
        &self.model.tokens
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

    /// Routed scoring of mixed-domain batches, timed with each way of switching adapters: up to 64 test
    /// pairs of each domain, interleaved (one of each domain in turn).
    fn evaluate_more(&mut self, sets: &TestSets, _run: Option<&RunMeta>) -> Result<MethodResults> {
        let by_domain: Vec<Vec<PairRecord>> = sets.values().map(|r| r.iter().take(64).cloned().collect()).collect();
        Ok(MethodResults { switching: Some(self.switching_timings(&by_domain)?), ..Default::default() })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Arliss {
    /// Routed scoring of mixed-domain batches with each way of switching adapters; `by_domain` holds
    /// each domain's test pairs, and batches interleave them. The switching set at load is kept.
    pub fn switching_timings(&mut self, by_domain: &[Vec<PairRecord>]) -> Result<Vec<SwitchingTiming>> {
        let original = self.switching;
        let longest = by_domain.iter().map(Vec::len).max().unwrap_or(0);
        let mixed: Vec<&PairRecord> =
            (0..longest).flat_map(|i| by_domain.iter().filter_map(move |d| d.get(i))).collect();
        let steps: Vec<Vec<(&str, &str)>> = (0..longest.min(10))
            .map(|i| {
                by_domain.iter().filter_map(|d| d.get(i)).map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect()
            })
            .collect();
        let mut timings = Vec::new();
        for mode in [Switching::OnePass, Switching::Sequential] {
            self.switching = mode;
            let score = |inputs: &[(&str, &str)]| self.score_routed(inputs, inputs.len()).map(|_| ());
            if let Some(first) = steps.first() {
                score(first)?; // warm-up
            }
            let start = Instant::now();
            for step in &steps {
                score(step)?;
            }
            let seconds_per_step = start.elapsed().as_secs_f64() / steps.len().max(1) as f64;
            let start = Instant::now();
            for chunk in mixed.chunks(32) {
                score(&chosen_then_rejected(chunk))?;
            }
            let pairs_per_second = mixed.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
            timings.push(SwitchingTiming { mode, seconds_per_step, pairs_per_second });
        }
        self.switching = original;
        Ok(timings)
    }
}
