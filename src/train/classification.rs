//! Routing: a classifier over domains trained with (class-weighted) cross-entropy on prompts alone.

use anyhow::Result;
use candle_core::Var;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::loss::{classification_correct, cross_entropy};
use super::objective::{MicroBatch, Objective};
use crate::model::RewardModel;
use crate::nn::{Adapters, Ctx};

/// How a router copes with domains of very different sizes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each example's loss weighted by `examples / (domains · examples of its domain)`.
    #[default]
    ClassWeights,
    /// Each epoch draws its examples domain first (uniformly), then within the domain.
    Sampling,
    /// Plain cross-entropy.
    None,
}

/// Routing: cross-entropy of a classifier over domains, on prompts alone.
pub struct DomainClassification<'a> {
    pub model: &'a RewardModel,
    /// The router adapter being trained (ARLISS), or none for the encoder and base head (RODOS).
    pub adapter: Option<&'a str>,
    pub prompts: &'a [String],
    /// The domain index of each prompt.
    pub labels: &'a [usize],
    pub balance: Balance,
    /// Weight per domain (all 1 unless `balance` is class weights).
    pub class_weights: Vec<f32>,
}

impl<'a> DomainClassification<'a> {
    /// `domains` classes (the head's outputs), labelled `0..domains` in `labels`.
    pub fn new(
        model: &'a RewardModel,
        adapter: Option<&'a str>,
        prompts: &'a [String],
        labels: &'a [usize],
        balance: Balance,
    ) -> Result<Self> {
        let domains = match adapter {
            Some(name) => model.adapter(name)?.head.outputs(),
            None => model.labels.len(),
        };
        if let Some(&bad) = labels.iter().find(|&&l| l >= domains) {
            anyhow::bail!("domain label {bad} for a classifier over {domains} domains");
        }
        let mut counts = vec![0usize; domains];
        for &l in labels {
            counts[l] += 1;
        }
        let class_weights = counts
            .iter()
            .map(|&c| match balance {
                Balance::ClassWeights if c > 0 => labels.len() as f32 / (domains as f32 * c as f32),
                _ => 1.0,
            })
            .collect();
        Ok(Self { model, adapter, prompts, labels, balance, class_weights })
    }
}

impl Objective for DomainClassification<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.model.trainable_vars(&self.adapter.into_iter().collect::<Vec<_>>())
    }

    fn examples(&self) -> usize {
        self.prompts.len()
    }

    fn length(&self, example: usize) -> usize {
        self.prompts[example].len()
    }

    fn micro_batch(&self, batch: &[usize], ctx: Ctx) -> Result<MicroBatch> {
        let prompts: Vec<&str> = batch.iter().map(|&i| self.prompts[i].as_str()).collect();
        let labels: Vec<usize> = batch.iter().map(|&i| self.labels[i]).collect();
        let encoded = self.model.encode_prompts(&prompts)?;
        let adapters = self.adapter.map(|a| Adapters::One(a.to_string())).unwrap_or_default();
        let logits = self.model.logits(&encoded, &ctx.with_adapters(adapters))?;
        let loss = cross_entropy(&logits, &labels, &self.class_weights)?;
        let predicted: Vec<usize> = logits.argmax(1)?.to_vec1::<u32>()?.into_iter().map(|i| i as usize).collect();
        Ok(MicroBatch { loss, correct: classification_correct(&predicted, &labels), truncated: encoded.truncated })
    }

    fn epoch_order(&self, seed: u64) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(seed);
        if self.balance != Balance::Sampling {
            let mut order: Vec<usize> = (0..self.examples()).collect();
            order.shuffle(&mut rng);
            return order;
        }
        let mut by_domain: Vec<Vec<usize>> = vec![Vec::new(); self.class_weights.len()];
        for (i, &l) in self.labels.iter().enumerate() {
            by_domain[l].push(i);
        }
        by_domain.retain(|d| !d.is_empty());
        (0..self.examples())
            .map(|_| {
                let domain = &by_domain[rng.random_range(0..by_domain.len())];
                domain[rng.random_range(0..domain.len())]
            })
            .collect()
    }
}
