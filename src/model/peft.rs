//! Adapters in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`), so Python PEFT
//! loads what rmroute writes and the other way round.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::RewardModel;
use crate::io::{save_safetensors, write_atomic, StagedDir};
use crate::nn::lora::{LoraConfig, TargetModules, PEFT_PREFIX};

/// The `config.json` key listing the adapters merged into a checkpoint's weights.
pub const MERGED_KEY: &str = "rmroute_merged_adapters";

impl RewardModel {
    /// Saves adapter `name` in PEFT's layout: A/B of every targeted layer and the reward head
    /// (`modules_to_save`), so reloading never loses the head. `target_modules` is written as a pattern
    /// matching exactly the adapted layers. The directory is written whole under a temporary name.
    pub fn save_adapter(&self, name: &str, dir: &Path, base_model: &str) -> Result<()> {
        let staged = StagedDir::new(dir)?;
        self.write_adapter(name, staged.path(), base_model)?;
        staged.commit()?;
        Ok(())
    }

    /// Writes adapter `name`'s files (PEFT layout) into `dir`, a directory being staged.
    pub fn write_adapter(&self, name: &str, dir: &Path, base_model: &str) -> Result<()> {
        let entry = self.adapters.get(name).with_context(|| format!("no adapter named `{name}`"))?;
        let mut tensors = HashMap::new();
        let mut adapted = Vec::new();
        let mut fan_in_fan_out = false;
        for layer in self.encoder.lora_linears() {
            if let Some(adapter) = layer.adapter(name) {
                tensors.insert(format!("{PEFT_PREFIX}.{}.lora_A.weight", layer.path), adapter.a.clone());
                tensors.insert(format!("{PEFT_PREFIX}.{}.lora_B.weight", layer.path), adapter.b.clone());
                adapted.push(layer.path.as_str());
                fan_in_fan_out |= layer.stored_transposed;
            }
        }
        for (key, t) in entry.head.tensors(&self.head_layout) {
            tensors.insert(format!("{PEFT_PREFIX}.{key}"), t);
        }
        // PEFT saves the reward head of a sequence-classification model as modules_to_save.
        let modules_to_save = &self.head_layout.modules_to_save;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "base_model_name_or_path": base_model,
            "r": entry.config.rank,
            "lora_alpha": entry.config.alpha,
            "lora_dropout": entry.config.dropout,
            "target_modules": TargetModules::exactly(&adapted),
            "modules_to_save": modules_to_save,
            "bias": "none",
            "fan_in_fan_out": fan_in_fan_out,
            "inference_mode": true,
            "init_lora_weights": true
        });
        std::fs::create_dir_all(dir)?;
        save_safetensors(&tensors, &dir.join("adapter_model.safetensors"))?;
        write_atomic(&dir.join("adapter_config.json"), &serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }
}

/// The LoRA fields of a PEFT `adapter_config.json` (which has many more).
pub(super) fn read_peft_config(path: &Path) -> Result<LoraConfig> {
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    if let Some(kind) = value.get("peft_type").and_then(|v| v.as_str()).filter(|k| *k != "LORA") {
        bail!("{}: peft_type `{kind}` is not supported (only LORA)", path.display());
    }
    let field = |name: &str| value.get(name).with_context(|| format!("{}: missing `{name}`", path.display()));
    let rank = field("r")?.as_u64().with_context(|| format!("{}: `r` is not an integer", path.display()))?;
    let alpha =
        field("lora_alpha")?.as_f64().with_context(|| format!("{}: `lora_alpha` is not a number", path.display()))?;
    let target_modules: TargetModules = serde_json::from_value(field("target_modules")?.clone())
        .with_context(|| format!("{}: `target_modules` is neither a list of names nor a pattern", path.display()))?;
    let dropout = match value.get("lora_dropout") {
        None | Some(serde_json::Value::Null) => 0.0,
        Some(v) => v.as_f64().with_context(|| format!("{}: `lora_dropout` is not a number", path.display()))?,
    };
    // PEFT options that change the scale, the layers or the arithmetic: refused rather than ignored.
    let off = |key: &str, default_ok: &dyn Fn(&serde_json::Value) -> bool| -> Result<()> {
        match value.get(key) {
            Some(v) if !v.is_null() && !default_ok(v) => {
                bail!("{}: `{key}: {v}` is not supported (rmroute implements plain LoRA)", path.display())
            }
            _ => Ok(()),
        }
    };
    off("use_rslora", &|v| v == false)?;
    off("use_dora", &|v| v == false)?;
    // `fan_in_fan_out` only says how the base weight is stored; PEFT sets it from the layer's type
    // whatever the file says (true for GPT-2's Conv1D, false for Linear), and so does rmroute.
    off("bias", &|v| v == "none")?;
    off("rank_pattern", &|v| v.as_object().is_some_and(|o| o.is_empty()))?;
    off("alpha_pattern", &|v| v.as_object().is_some_and(|o| o.is_empty()))?;
    off("layers_to_transform", &|_| false)?;
    let config = LoraConfig { rank: rank as usize, alpha, dropout, target_modules };
    config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(config)
}
