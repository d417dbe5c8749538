//! Baseline and BaseLoRA (router-reward-models.txt §4.3): one reward model trained on all domains
//! mixed. Baseline fine-tunes the whole encoder and head; BaseLoRA freezes the encoder and trains one
//! LoRA adapter (on the attention projections and dense layers) with its head. The run is one stage;
//! it scores as a single model (`single.rs`).

use std::path::PathBuf;

use anyhow::Result;
use candle_core::Device;

use super::config::TrainConfig;
use super::manifest::{pairs_fingerprint, prepare_run_dir, RunMeta, Summary};
use super::reward_model::{self, Keep};
use super::stage_keys;
use crate::train::stage::{RunOptions, Stage, StageKey};

/// Trains Baseline (or BaseLoRA when the config's method is `baselora`) and writes the run directory.
pub(crate) fn train(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    let (domains, pairs) = cfg.train_pairs()?;
    let (model, trainer, adamw) = (cfg.model(), cfg.trainer(), cfg.adamw());
    let key = StageKey::new(&stage_keys::whole_run(cfg), pairs_fingerprint(&pairs))?;
    let stage = Stage::whole_run(&cfg.out, key, opts).with_legacy(stage_keys::legacy_whole_run);
    let run = reward_model::load(&model, Keep::Model, cfg.seed, device, opts.quiet)?;
    // Only once the backbone and data are known to load: a typo in the config never costs the old run.
    prepare_run_dir(&cfg.out, opts.resume, opts.force)?;
    run.train(&pairs, &domains.join(", "), &trainer, &adamw, &stage, cfg.method(), |dir, trained| {
        let summary = Summary::of(
            &trained.trained,
            trained.total_parameters,
            trained.trainable_parameters,
            trained.description.clone(),
        );
        let mut meta = RunMeta::new(cfg, domains.clone(), summary);
        meta.adapters = trained.adapters.clone();
        meta.write(dir)
    })?;
    Ok(cfg.out.clone())
}
