//! Baseline and BaseLoRA (router-reward-models.txt §4.3): one reward model trained on all domains
//! mixed. Baseline fine-tunes the whole encoder and head; BaseLoRA freezes the encoder and trains one
//! LoRA adapter (on the attention projections and dense layers) with its head.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::backbone::resolve_model_dir;
use crate::config::TrainConfig;
use crate::data::io::StagedDir;
use crate::model::{LoadOptions, RewardModel};
use crate::run::{backbone_name, prepare_run_dir, RunMeta};
use crate::train::trainer::{load_train_pairs, train, RunOptions};

/// The adapter name BaseLoRA trains and saves under `adapters/`.
pub const ADAPTER: &str = "default";

/// Trains Baseline (or BaseLoRA when the config has a `lora` section) and writes the run directory.
pub fn train_baseline(cfg: &TrainConfig, device: candle_core::Device, opts: &RunOptions) -> Result<PathBuf> {
    let out = &cfg.out;
    let backbone_dir = resolve_model_dir(&cfg.backbone)?;
    let (domains, pairs) = load_train_pairs(cfg)?;
    let load = LoadOptions { device, train_encoder: cfg.lora.is_none(), seed: cfg.seed, new_head: true };
    let mut model = RewardModel::load(&backbone_dir, &load)
        .with_context(|| format!("loading the backbone {}", backbone_dir.display()))?;
    model.set_limits(cfg.max_length, cfg.truncation);
    if !model.new_head.is_empty() && !opts.quiet {
        eprintln!(
            "note: {} has no reward head ({}); a new one is initialised from seed {}",
            backbone_dir.display(),
            model.new_head.join(", "),
            cfg.seed
        );
    }
    let adapter = match &cfg.lora {
        Some(lora) => {
            model.add_adapter(ADAPTER, lora, cfg.seed)?;
            Some(ADAPTER)
        }
        None => None,
    };
    prepare_run_dir(out, opts.resume, opts.force)?;
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
    let trained = train(&model, adapter, &pairs, cfg, out, opts)?;

    // The finished run is written whole beside the training directory, then swapped in.
    let staged = StagedDir::new(out)?;
    std::fs::copy(out.join("metrics.jsonl"), staged.path().join("metrics.jsonl"))?;
    let mut adapters = BTreeMap::new();
    let (total, description) = match adapter {
        Some(name) => {
            let total = model.encoder_parameter_count() + model.adapter_parameter_count(name);
            model.save_adapter(name, &staged.path().join("adapters").join(name), &cfg.backbone)?;
            adapters.insert(
                name.to_string(),
                format!("LoRA adapter and its reward head (modules_to_save) for the backbone `{}`", cfg.backbone),
            );
            model.merge_adapter(name)?;
            (total, format!("the backbone with adapter `{name}` merged in, and its reward head"))
        }
        None => (model.parameter_count(), "the fine-tuned reward model (encoder and head)".to_string()),
    };
    model.write_pretrained(staged.path())?;
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
        model: description,
        adapters,
    }
    .write(staged.path())?;
    staged.commit()?;
    Ok(out.clone())
}
