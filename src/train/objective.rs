//! What a training run optimises: an objective turns a micro-batch of example indices into a loss and
//! its metrics. The loop (`trainer.rs`) is the same for every method.
//!
//! Reward modelling has one objective, [`Pairwise`]: `-log σ(r(p, chosen) − r(p, rejected))` averaged,
//! plus whatever auxiliary loss the rewards come with; what produces the rewards ([`PairRewards`]) is a
//! reward model with or without an adapter ([`ModelRewards`]), MoRE's mixture of experts (with its
//! load-balancing loss), or DMoERM's aggregator over cached features.

use anyhow::Result;
use candle_core::{Tensor, Var};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::PairRecord;
use crate::model::RewardModel;
use crate::nn::{Adapters, Ctx};
use crate::train::loss::{pairwise_correct, pairwise_loss};

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

/// The rewards of a micro-batch of pairs, and what else goes into its loss.
pub struct Rewards {
    /// `(n,)`: each pair's chosen response.
    pub chosen: Tensor,
    /// `(n,)`: each pair's rejected response.
    pub rejected: Tensor,
    /// A loss added to the pairwise one (MoRE's weighted load balancing).
    pub auxiliary: Option<Tensor>,
    /// Inputs cut to the model's length limit.
    pub truncated: usize,
}

/// What a pairwise objective trains: rewards for pairs given by index.
pub trait PairRewards {
    /// The variables the optimizer updates.
    fn vars(&self) -> Vec<(String, Var)>;
    /// How many pairs an epoch has.
    fn examples(&self) -> usize;
    /// A pair's length in bytes of text (see [`Objective::length`]).
    fn length(&self, _example: usize) -> usize {
        0
    }
    /// The rewards of pairs `batch`, with dropout from `ctx`.
    fn rewards(&self, batch: &[usize], ctx: &Ctx) -> Result<Rewards>;
}

/// Reward modelling: `-log σ(r⁺ − r⁻)` averaged over the pairs, plus the rewards' auxiliary loss.
pub struct Pairwise<R>(pub R);

impl<R: PairRewards> Objective for Pairwise<R> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.0.vars()
    }

    fn examples(&self) -> usize {
        self.0.examples()
    }

    fn length(&self, example: usize) -> usize {
        self.0.length(example)
    }

    fn micro_batch(&self, batch: &[usize], ctx: Ctx) -> Result<MicroBatch> {
        let Rewards { chosen, rejected, auxiliary, truncated } = self.0.rewards(batch, &ctx)?;
        let pairwise = pairwise_loss(&chosen, &rejected)?;
        let loss = match auxiliary {
            Some(auxiliary) => (pairwise + auxiliary)?,
            None => pairwise,
        };
        let correct = pairwise_correct(&chosen.to_vec1::<f32>()?, &rejected.to_vec1::<f32>()?);
        Ok(MicroBatch { loss, correct, truncated })
    }
}

/// A reward model's rewards: chosen and rejected responses in one forward, with the adapter being
/// trained (or the encoder and base head).
pub struct ModelRewards<'a> {
    pub model: &'a RewardModel,
    /// The adapter being trained, if any (else the encoder and base head).
    pub adapter: Option<&'a str>,
    pub pairs: &'a [PairRecord],
}

impl PairRewards for ModelRewards<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.model.trainable_vars(&self.adapter.into_iter().collect::<Vec<_>>())
    }

    fn examples(&self) -> usize {
        self.pairs.len()
    }

    fn length(&self, example: usize) -> usize {
        crate::data::order::pair_length(&self.pairs[example])
    }

    fn rewards(&self, batch: &[usize], ctx: &Ctx) -> Result<Rewards> {
        let chunk: Vec<&PairRecord> = batch.iter().map(|&j| &self.pairs[j]).collect();
        let encoded = self.model.encode(&chosen_then_rejected(&chunk))?;
        let adapters = self.adapter.map(|a| Adapters::One(a.to_string())).unwrap_or_default();
        let rewards = self.model.forward(&encoded, &ctx.fork(adapters))?;
        let n = chunk.len();
        let (chosen, rejected) = (rewards.narrow(0, 0, n)?, rewards.narrow(0, n, n)?);
        Ok(Rewards { chosen, rejected, auxiliary: None, truncated: encoded.truncated })
    }
}
