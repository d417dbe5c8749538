//! One reward model trained as a stage: the unit Baseline, BaseLoRA, each RODOS and ARLISS domain, and
//! DMoERM's stage-1 models and experts are made of. The backbone is loaded with a new reward head where
//! it has none (and, with a LoRA config, a new adapter), trained with the pairwise loss, and the finished
//! stage keeps either a Hugging Face checkpoint (an adapter merged in, and kept in PEFT layout under
//! `adapters/`) or the adapter alone.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Serialize;

use super::config::ModelSettings;
use crate::backbone::resolve_model_dir;
use crate::data::PairRecord;
use crate::model::{LoadOptions, RewardModel};
use crate::train::config::TrainerConfig;
use crate::train::objective::{ModelRewards, Pairwise};
use crate::train::optim::AdamWConfig;
use crate::train::stage::Stage;
use crate::train::trainer::{train, Trained};

/// The adapter name a reward model trains and keeps under `adapters/` (BaseLoRA).
pub const ADAPTER: &str = "default";

/// What a finished reward model keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep<'a> {
    /// A Hugging Face checkpoint (with a LoRA config: the adapter merged in, and the adapter itself
    /// under `adapters/default/`).
    Model,
    /// Only the LoRA adapter and its head, in PEFT layout at the directory's top level, named so in
    /// memory (ARLISS, DMoERM's experts: the frozen backbone is referenced, never copied).
    Adapter(&'a str),
}

impl Keep<'_> {
    /// The name the adapter trains under.
    fn adapter_name(&self) -> &str {
        match self {
            Keep::Model => ADAPTER,
            Keep::Adapter(name) => name,
        }
    }
}

/// What a reward model's training produced and its finished directory holds.
pub struct TrainedModel {
    pub trained: Trained,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
    /// What the directory's Hugging Face checkpoint is.
    pub description: String,
    /// Adapters under `adapters/<name>/`: name → what it is.
    pub adapters: BTreeMap<String, String>,
}

/// A backbone loaded to train a reward model on.
pub struct RewardModelRun<'a> {
    pub model: RewardModel,
    backbone_dir: PathBuf,
    /// The adapter being trained; none for full fine-tuning.
    adapter: Option<String>,
    settings: &'a ModelSettings,
    keep: Keep<'a>,
}

/// Loads `settings.backbone` with a new reward head where it has none (initialised from `seed`, and
/// said so unless `quiet`), and with a LoRA config a new adapter for `keep`.
pub fn load<'a>(
    settings: &'a ModelSettings,
    keep: Keep<'a>,
    seed: u64,
    device: Device,
    quiet: bool,
) -> Result<RewardModelRun<'a>> {
    if matches!(keep, Keep::Adapter(_)) && settings.lora.is_none() {
        bail!("an adapter-only reward model needs the config's `lora` section");
    }
    let (mut model, backbone_dir) = load_backbone(settings, settings.lora.is_none(), None, seed, device)?;
    if !model.new_head.is_empty() && !quiet {
        eprintln!(
            "note: {} has no reward head ({}); a new one is initialised from seed {seed}",
            backbone_dir.display(),
            model.new_head.join(", "),
        );
    }
    let adapter = match &settings.lora {
        Some(lora) => {
            let name = keep.adapter_name();
            model.add_adapter(name, lora, seed)?;
            Some(name.to_string())
        }
        None => None,
    };
    Ok(RewardModelRun { model, backbone_dir, adapter, settings, keep })
}

/// `settings.backbone` loaded to train on, and where it was found: its encoder trainable (`train_encoder`)
/// or frozen, a new head where the checkpoint has none (a classifier over `labels` when given, else one
/// reward), initialised from `seed`, and the input limits of `settings`.
pub fn load_backbone(
    settings: &ModelSettings,
    train_encoder: bool,
    labels: Option<Vec<String>>,
    seed: u64,
    device: Device,
) -> Result<(RewardModel, PathBuf)> {
    let backbone_dir = resolve_model_dir(&settings.backbone)?;
    let load = LoadOptions { device, train_encoder, seed, new_head: true, labels, ..Default::default() };
    let mut model = RewardModel::load(&backbone_dir, &load)
        .with_context(|| format!("loading the backbone {}", backbone_dir.display()))?;
    model.set_limits(settings.max_length, settings.truncation)?;
    Ok((model, backbone_dir))
}

impl RewardModelRun<'_> {
    /// The adapter being trained, as the trainable-variable selection takes it.
    fn adapters(&self) -> Vec<&str> {
        self.adapter.iter().map(String::as_str).collect()
    }

    /// Trains on `pairs` in `stage` (its checkpoints and metrics there), then writes the finished model
    /// as `keep` says into the stage's staged directory, with whatever `record` writes; `record` returns
    /// the stage's record. `what` names the training data in the start-up line.
    #[allow(clippy::too_many_arguments)]
    pub fn train<P: Serialize>(
        mut self,
        pairs: &[PairRecord],
        what: &str,
        trainer: &TrainerConfig,
        adamw: &AdamWConfig,
        stage: &Stage,
        method: &str,
        record: impl FnOnce(&Path, &TrainedModel) -> Result<P>,
    ) -> Result<P> {
        let trainable = self.model.trainable_count(&self.adapters());
        if !stage.opts.quiet {
            eprintln!(
                "{method}: {} training pairs from {what} on {}, {trainable} trainable parameters",
                pairs.len(),
                self.backbone_dir.display()
            );
        }
        let rewards = ModelRewards { model: &self.model, adapter: self.adapter.as_deref(), pairs };
        let trained = train(&Pairwise(rewards), trainer, adamw, stage)?;
        stage.finish(|dir| {
            let finished = self.write(dir, trained, trainable)?;
            record(dir, &finished)
        })
    }

    /// Writes the finished model into `dir` as `keep` says.
    fn write(&mut self, dir: &Path, trained: Trained, trainable: usize) -> Result<TrainedModel> {
        let backbone = &self.settings.backbone;
        let mut adapters = BTreeMap::new();
        let (total, description) = match (self.keep, self.adapter.clone()) {
            (Keep::Adapter(name), _) => {
                self.model.write_adapter(name, dir, backbone)?;
                let what = format!("LoRA reward adapter `{name}` and its head for the backbone `{backbone}`");
                return Ok(TrainedModel {
                    trained,
                    total_parameters: self.model.adapter_parameter_count(name),
                    trainable_parameters: trainable,
                    description: what,
                    adapters,
                });
            }
            (Keep::Model, Some(name)) => {
                let total = self.model.encoder_parameter_count() + self.model.adapter_parameter_count(&name);
                self.model.save_adapter(&name, &dir.join("adapters").join(&name), backbone)?;
                adapters.insert(
                    name.clone(),
                    format!("LoRA adapter and its reward head (modules_to_save) for the backbone `{backbone}`"),
                );
                self.model.merge_adapter(&name)?;
                (total, format!("the backbone with adapter `{name}` merged in, and its reward head"))
            }
            (Keep::Model, None) => {
                (self.model.parameter_count(), "the fine-tuned reward model (encoder and head)".to_string())
            }
        };
        self.model.write_pretrained(dir)?;
        Ok(TrainedModel { trained, total_parameters: total, trainable_parameters: trainable, description, adapters })
    }
}
