//! What the training loop is told: the trainer's settings, nested as burn nests them beside the
//! optimizer's ([`crate::train::optim::AdamWConfig`]). An experiment's config builds them; a stage's
//! own settings (an `expert`, `aggregator` or `router` section) give a new [`TrainerConfig`], never a
//! patched copy of the experiment.

use anyhow::{ensure, Result};
use serde::{Deserialize, Serialize};

/// How the loop trains: epochs, batches, the learning-rate schedule, clipping, logging, checkpoints,
/// bucketing and the seed of its order and dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerConfig {
    pub epochs: usize,
    /// Examples per optimizer step (split into `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Gradient accumulation steps: the paper trained DeBERTa-large with batch 8.
    pub grad_accum: usize,
    /// The peak learning rate.
    pub lr: f64,
    /// Share of optimizer steps spent on linear warm-up; the rest decays linearly to 0.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// A metrics line every N optimizer steps.
    pub log_every: usize,
    /// A checkpoint every N optimizer steps (and at each epoch end); 0 = epoch ends only.
    pub checkpoint_every: usize,
    /// Batches of similar lengths (see `data::order::training_order`).
    pub bucket_by_length: bool,
    /// Seeds the epoch order and dropout.
    pub seed: u64,
}

impl TrainerConfig {
    /// Refuses what would divide by zero or train nothing; `what` names the settings in errors.
    pub fn validate(&self, what: &str) -> Result<()> {
        ensure!(self.batch_size > 0, "{what}`batch_size` must be positive");
        ensure!(self.grad_accum > 0, "{what}`grad_accum` must be positive");
        ensure!(
            self.batch_size.is_multiple_of(self.grad_accum),
            "{what}`batch_size` must be a multiple of `grad_accum`"
        );
        ensure!(self.epochs > 0, "{what}`epochs` must be positive");
        ensure!(self.lr > 0.0, "{what}`lr` must be positive");
        ensure!((0.0..1.0).contains(&self.warmup_ratio), "{what}`warmup_ratio` must be in [0, 1)");
        Ok(())
    }

    /// These settings with a stage's own epochs, learning rate and batch size where it sets them.
    pub fn with(&self, stage: &StageOverrides) -> Self {
        Self {
            epochs: stage.epochs.unwrap_or(self.epochs),
            lr: stage.lr.unwrap_or(self.lr),
            batch_size: stage.batch_size.unwrap_or(self.batch_size),
            ..self.clone()
        }
    }

    /// These settings with another seed.
    pub fn with_seed(&self, seed: u64) -> Self {
        Self { seed, ..self.clone() }
    }
}

/// A stage's own training settings (`dmoerm.expert`, `dmoerm.aggregator`); each unset one is the
/// experiment's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageOverrides {
    pub epochs: Option<usize>,
    pub lr: Option<f64>,
    pub batch_size: Option<usize>,
}

impl StageOverrides {
    /// Refuses zeros; `section` names the config section in errors.
    pub fn validate(&self, section: &str) -> Result<()> {
        ensure!(self.epochs != Some(0), "`{section}.epochs` must be positive");
        ensure!(self.lr.is_none_or(|lr| lr > 0.0), "`{section}.lr` must be positive");
        ensure!(self.batch_size != Some(0), "`{section}.batch_size` must be positive");
        Ok(())
    }
}
