//! RODOS (router-reward-models.txt §3.2, Figure 1(c)): a reward model per domain, each trained as
//! Baseline on its domain alone, and an external router — the backbone with a classifier over the
//! domains, trained on the prompts alone — that picks, per prompt, the model that scores it. The
//! stages, `--resume` and `--add-domain` are the routed engine's (`routed.rs`).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};

use super::manifest::{Role, RunMeta};
use super::parts::{find_part, part_dir, router_limits, run_limits, score_by_domain};
use super::scorer::{DomainRouter, ScoreOptions, Scored, Scores};
use crate::backbone::PairEncoder;
use crate::model::{LoadOptions, RewardModel};
use crate::nn::Adapters;

/// A RODOS run, loaded: the router and a reward model per domain.
pub struct Rodos {
    pub domains: Vec<String>,
    pub router: RewardModel,
    pub models: BTreeMap<String, RewardModel>,
}

/// Loads the router and every domain's reward model that the run's manifest names.
pub fn load(dir: &Path, meta: &RunMeta, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Rodos> {
    let router_part = find_part(dir, meta, Role::Router, None)?;
    let mut router = RewardModel::load(&part_dir(dir, router_part, "config.json")?, opts)?;
    router_limits(&mut router, meta, choice)?;
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
        let part = find_part(dir, meta, Role::Reward, Some(domain))?;
        let mut model = RewardModel::load(&part_dir(dir, part, "config.json")?, opts)?;
        run_limits(&mut model, meta, choice)?;
        models.insert(domain.clone(), model);
    }
    Ok(Rodos { domains: meta.domains.clone(), router, models })
}

impl DomainRouter for Rodos {
    fn domains(&self) -> &[String] {
        &self.domains
    }

    fn route(&self, prompts: &[&str], batch_size: usize) -> Result<Vec<usize>> {
        self.router.classify(prompts, batch_size, &Adapters::None)
    }

    /// Each domain's rows together, in batches, through its reward model.
    fn score_in(&self, pairs: &[(&str, &str)], domains: &[String], batch_size: usize) -> Result<Vec<f32>> {
        score_by_domain(pairs, domains, &self.domains, |domain, inputs| {
            self.models.get(domain).map(|m| m.score(inputs, batch_size, &Adapters::None)).transpose()
        })
    }
}

impl Scores for Rodos {
    fn tokens(&self) -> &PairEncoder {
        &self.router.tokens
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

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
