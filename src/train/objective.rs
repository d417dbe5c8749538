//! What a training run optimises: an objective turns a micro-batch of example indices into a loss and
//! its metrics. The loop (`trainer.rs`) is the same for every method.

use anyhow::Result;
use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::data::PairRecord;
use crate::model::RewardModel;
use crate::nn::{Adapters, Ctx};
use crate::train::loss::{classification_correct, cross_entropy, pairwise_correct, pairwise_loss};

/// One micro-batch's loss (differentiable) and what it got right.
pub struct MicroBatch {
    pub loss: Tensor,
    pub correct: usize,
    /// Inputs cut to the model's length limit.
    pub truncated: usize,
}

pub trait Objective {
    /// The variables the optimizer updates.
    fn vars(&self) -> Vec<(String, Var)>;
    /// How many examples an epoch has.
    fn examples(&self) -> usize;
    /// The loss of examples `batch`, with dropout from `ctx`.
    fn micro_batch(&self, batch: &[usize], ctx: Ctx) -> Result<MicroBatch>;
    /// An example's length in bytes of text, for batches cut by length (`bucket_by_length`); all
    /// equal (no reordering by length) for examples of fixed size, such as cached features.
    fn length(&self, _example: usize) -> usize {
        0
    }
    /// The examples of one epoch, in order: a seeded shuffle unless the objective samples otherwise.
    fn epoch_order(&self, seed: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.examples()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        order
    }
}

/// The inputs of a batch of pairs for one forward: every `(prompt, chosen)`, then every
/// `(prompt, rejected)`, so the first half of the rewards are the chosen ones.
pub fn chosen_then_rejected<'a>(pairs: &[&'a PairRecord]) -> Vec<(&'a str, &'a str)> {
    pairs
        .iter()
        .map(|p| (p.prompt.as_str(), p.chosen.as_str()))
        .chain(pairs.iter().map(|p| (p.prompt.as_str(), p.rejected.as_str())))
        .collect()
}

/// Reward modelling: `-log σ(r(p, chosen) − r(p, rejected))`, chosen and rejected in one forward.
pub struct Pairwise<'a> {
    pub model: &'a RewardModel,
    /// The adapter being trained, if any (else the encoder and base head).
    pub adapter: Option<&'a str>,
    pub pairs: &'a [PairRecord],
}

impl Objective for Pairwise<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.model.trainable_vars(&self.adapter.into_iter().collect::<Vec<_>>())
    }

    fn examples(&self) -> usize {
        self.pairs.len()
    }

    fn length(&self, example: usize) -> usize {
        crate::bucket::pair_length(&self.pairs[example])
    }

    fn micro_batch(&self, batch: &[usize], ctx: Ctx) -> Result<MicroBatch> {
        let chunk: Vec<&PairRecord> = batch.iter().map(|&j| &self.pairs[j]).collect();
        let inputs = chosen_then_rejected(&chunk);
        let encoded = self.model.encode(&inputs)?;
        let adapters = self.adapter.map(|a| Adapters::One(a.to_string())).unwrap_or_default();
        let rewards = self.model.forward(&encoded, &ctx.with_adapters(adapters))?;
        let n = chunk.len();
        let (chosen, rejected) = (rewards.narrow(0, 0, n)?, rewards.narrow(0, n, n)?);
        let loss = pairwise_loss(&chosen, &rejected)?;
        let correct = pairwise_correct(&chosen.to_vec1::<f32>()?, &rejected.to_vec1::<f32>()?);
        Ok(MicroBatch { loss, correct, truncated: encoded.truncated })
    }
}

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
