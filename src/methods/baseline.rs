//! Baseline and BaseLoRA (router-reward-models.txt §4.3): one reward model trained on all domains
//! mixed. Baseline fine-tunes the whole encoder and head; BaseLoRA freezes the encoder and trains one
//! LoRA adapter (on the attention projections and dense layers) with its head.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::backbone::resolve_model_dir;
use crate::config::{Method, TrainConfig};
use crate::data::io::StagedDir;
use crate::data::PairRecord;
use crate::model::{LoadOptions, RewardModel};
use crate::run::{backbone_name, prepare_run_dir, RunMeta};
use crate::train::trainer::{load_train_pairs, train, RunOptions, Trained};

/// The adapter name BaseLoRA trains and saves under `adapters/`.
pub const ADAPTER: &str = "default";

/// Trains Baseline (or BaseLoRA when the config's method is `baselora`) and writes the run directory.
pub fn train_baseline(cfg: &TrainConfig, device: candle_core::Device, opts: &RunOptions) -> Result<PathBuf> {
    cfg.validate()?;
    if !matches!(cfg.method, Method::Baseline | Method::Baselora) {
        bail!("the config trains method `{}`: run `rmroute {}`", cfg.method.name(), cfg.method.command());
    }
    let (domains, pairs) = load_train_pairs(cfg)?;
    let check_out = |out: &Path| prepare_run_dir(out, opts.resume, opts.force);
    train_reward_model(cfg, &pairs, &domains, device, &cfg.out, opts, Keep::Model, &check_out, |staged, model| {
        RunMeta {
            method: cfg.method().into(),
            domains: domains.clone(),
            backbone: cfg.backbone.clone(),
            backbone_name: backbone_name(&cfg.backbone),
            seed: cfg.seed,
            rmroute_version: env!("CARGO_PKG_VERSION").into(),
            config: cfg.clone(),
            train_pairs: model.trained.train_pairs,
            truncated_pairs: model.trained.truncated,
            steps: model.trained.steps,
            epoch_seconds: model.trained.epoch_seconds.clone(),
            total_parameters: model.total_parameters,
            trainable_parameters: model.trainable_parameters,
            model: model.description.clone(),
            adapters: model.adapters.clone(),
            parts: vec![],
            base: None,
            aspect_pairs: BTreeMap::new(),
            routes_by_task: false,
        }
        .write(staged)
    })?;
    Ok(cfg.out.clone())
}

/// What [`train_reward_model`] trained and wrote.
pub struct TrainedModel {
    pub trained: Trained,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
    /// What the directory's Hugging Face checkpoint is.
    pub description: String,
    pub adapters: BTreeMap<String, String>,
}

/// What a finished part of a run keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep<'a> {
    /// A Hugging Face checkpoint (with a LoRA config: the adapter merged in, and the adapter itself
    /// under `adapters/default/`).
    Model,
    /// Only the LoRA adapter and its head, in PEFT layout at the directory's top level, named so in
    /// memory (ARLISS: the frozen backbone is referenced, never copied).
    Adapter(&'a str),
}

/// Trains one reward model on `pairs` (full fine-tuning, or an adapter when the config has `lora`)
/// into `out`: training keeps its checkpoint and metrics there; the finished model (what `keep` says,
/// the metrics, and whatever `finish` writes) is staged whole and swapped in. `check_out` runs once the
/// backbone and data are known to load.
#[allow(clippy::too_many_arguments)]
pub fn train_reward_model(
    cfg: &TrainConfig,
    pairs: &[PairRecord],
    domains: &[String],
    device: candle_core::Device,
    out: &Path,
    opts: &RunOptions,
    keep: Keep,
    check_out: &dyn Fn(&Path) -> Result<()>,
    finish: impl FnOnce(&Path, &TrainedModel) -> Result<()>,
) -> Result<TrainedModel> {
    if matches!(keep, Keep::Adapter(_)) && cfg.lora.is_none() {
        bail!("an adapter-only reward model needs the config's `lora` section");
    }
    let backbone_dir = resolve_model_dir(&cfg.backbone)?;
    let load = LoadOptions {
        device,
        train_encoder: cfg.lora.is_none(),
        seed: cfg.seed,
        new_head: true,
        labels: None,
        ..Default::default()
    };
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
    let name = match keep {
        Keep::Model => ADAPTER,
        Keep::Adapter(name) => name,
    };
    let adapter = match &cfg.lora {
        Some(lora) => {
            model.add_adapter(name, lora, cfg.seed)?;
            Some(name)
        }
        None => None,
    };
    check_out(out)?;
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
    let trained = train(&model, adapter, pairs, cfg, out, opts)?;

    // The finished model is written whole beside the training directory, then swapped in.
    let staged = StagedDir::new(out)?;
    std::fs::copy(out.join("metrics.jsonl"), staged.path().join("metrics.jsonl"))?;
    let mut adapters = BTreeMap::new();
    let (total, description) = match (keep, adapter) {
        (Keep::Adapter(name), _) => {
            model.write_adapter(name, staged.path(), &cfg.backbone)?;
            let result = TrainedModel {
                trained,
                total_parameters: model.adapter_parameter_count(name),
                trainable_parameters: trainable,
                description: format!("LoRA reward adapter `{name}` and its head for the backbone `{}`", cfg.backbone),
                adapters,
            };
            finish(staged.path(), &result)?;
            staged.commit()?;
            return Ok(result);
        }
        (Keep::Model, Some(name)) => {
            let total = model.encoder_parameter_count() + model.adapter_parameter_count(name);
            model.save_adapter(name, &staged.path().join("adapters").join(name), &cfg.backbone)?;
            adapters.insert(
                name.to_string(),
                format!("LoRA adapter and its reward head (modules_to_save) for the backbone `{}`", cfg.backbone),
            );
            model.merge_adapter(name)?;
            (total, format!("the backbone with adapter `{name}` merged in, and its reward head"))
        }
        (Keep::Model, None) => (model.parameter_count(), "the fine-tuned reward model (encoder and head)".to_string()),
    };
    model.write_pretrained(staged.path())?;
    let result =
        TrainedModel { trained, total_parameters: total, trainable_parameters: trainable, description, adapters };
    finish(staged.path(), &result)?;
    staged.commit()?;
    Ok(result)
}
