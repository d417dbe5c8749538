//! Baseline and BaseLoRA (router-reward-models.txt §4.3): one reward model trained on all domains
//! mixed. Baseline fine-tunes the whole encoder and head; BaseLoRA freezes the encoder and trains one
//! LoRA adapter (on the attention projections and dense layers) with its head.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::backbone::resolve_model_dir;
use crate::config::TrainConfig;
use crate::model::{LoadOptions, RewardModel};
use crate::run::{backbone_name, RunMeta};
use crate::train::trainer::{load_train_pairs, train, RunOptions};

/// The adapter name BaseLoRA trains and saves under `adapters/`.
pub const ADAPTER: &str = "default";

/// Trains Baseline (or BaseLoRA when the config has a `lora` section) and writes the run directory.
pub fn train_baseline(cfg: &TrainConfig, device: candle_core::Device, opts: &RunOptions) -> Result<PathBuf> {
    let backbone_dir = resolve_model_dir(&cfg.backbone)?;
    let (domains, pairs) = load_train_pairs(cfg)?;
    let load = LoadOptions { device, train_encoder: cfg.lora.is_none(), seed: cfg.seed };
    let mut model = RewardModel::load(&backbone_dir, &load)
        .with_context(|| format!("loading the backbone {}", backbone_dir.display()))?;
    model.max_length = model.max_length.min(cfg.max_length);
    let adapter = match &cfg.lora {
        Some(lora) => {
            model.add_adapter(ADAPTER, lora, cfg.seed)?;
            Some(ADAPTER)
        }
        None => None,
    };
    let trainable: usize =
        model.trainable_vars(&adapter.into_iter().collect::<Vec<_>>()).iter().map(|(_, v)| v.elem_count()).sum();
    if !opts.quiet {
        eprintln!(
            "{}: {} training pairs from {} on {}, {} trainable parameters",
            cfg.method(),
            pairs.len(),
            domains.join(", "),
            backbone_dir.display(),
            trainable
        );
    }
    let out = &cfg.out;
    let trained = train(&model, adapter, &pairs, cfg, out, opts)?;
    model.save_pretrained(out)?;
    let mut total = model.parameter_count();
    if let Some(name) = adapter {
        model.save_adapter(name, &out.join("adapters").join(name), &cfg.backbone)?;
        total += model.adapter_parameter_count(name);
    }
    RunMeta {
        method: cfg.method().into(),
        domains,
        backbone: cfg.backbone.clone(),
        backbone_name: backbone_name(&cfg.backbone),
        seed: cfg.seed,
        rmroute_version: env!("CARGO_PKG_VERSION").into(),
        config: cfg.clone(),
        train_pairs: trained.train_pairs,
        truncated_pairs: trained.truncated,
        steps: trained.steps,
        epoch_seconds: trained.epoch_seconds,
        total_parameters: total,
        trainable_parameters: trainable,
    }
    .write(out)?;
    let _ = std::fs::remove_dir_all(out.join("checkpoint"));
    Ok(out.clone())
}
