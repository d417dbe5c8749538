//! Training configs: one JSON file per experiment under `configs/`. Every field has the paper's default
//! (router-reward-models.txt, Appendix A); an unknown key is an error that names it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::encoding::Truncation;
use crate::lora::{LoraConfig, TargetModules};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// A checkpoint directory in Hugging Face layout, or a hub id.
    pub backbone: String,
    /// The prepared data folder (`<domain>/train.jsonl`, `test.jsonl`).
    pub data: PathBuf,
    /// Domains to train on; empty means every domain folder present in `data`.
    pub domains: Vec<String>,
    /// The run directory.
    pub out: PathBuf,
    pub seed: u64,
    pub epochs: usize,
    /// Pairs per optimizer step (split into `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Gradient accumulation steps: the paper trained DeBERTa-large with batch 8.
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Share of optimizer steps spent on linear warm-up; the rest decays linearly to 0.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// Longest input in tokens (clamped to the backbone's position limit).
    pub max_length: usize,
    /// How pairs longer than `max_length` are cut: `longest_first` (transformers' default) or
    /// `keep_prompt_end`. `eval` and `score` use what training used.
    pub truncation: Truncation,
    /// Cap on training pairs per domain (taken in file order after a seeded shuffle); none = all.
    pub max_pairs: Option<usize>,
    /// Cap on test pairs per domain for `eval`; none = all.
    pub max_eval_pairs: Option<usize>,
    /// A metrics line every N optimizer steps.
    pub log_every: usize,
    /// A checkpoint every N optimizer steps (and at each epoch end); 0 = epoch ends only.
    pub checkpoint_every: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// With a `lora` section, `train-baseline` trains BaseLoRA: a frozen encoder, one adapter and its head.
    pub lora: Option<LoraConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            backbone: "microsoft/deberta-v3-base".into(),
            data: "prepared".into(),
            domains: vec![],
            out: "runs/run".into(),
            seed: 42,
            epochs: 3,
            batch_size: 32,
            grad_accum: 1,
            lr: 5e-6,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            max_length: 512,
            truncation: Truncation::LongestFirst,
            max_pairs: None,
            max_eval_pairs: None,
            log_every: 10,
            checkpoint_every: 0,
            device: "cpu".into(),
            lora: None,
        }
    }
}

/// The paper's LoRA: rank 12, alpha 768, dropout 0.1 on the attention projections and dense layers.
pub fn paper_lora(target_modules: &[&str]) -> LoraConfig {
    LoraConfig { rank: 12, alpha: 768.0, dropout: 0.1, target_modules: TargetModules::names(target_modules) }
}

impl TrainConfig {
    /// Reads a config file; unknown keys and wrong types are errors naming the key and the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let config: Self = parse_json(&text).with_context(|| format!("config {}", path.display()))?;
        config.validate().with_context(|| format!("config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(self.batch_size > 0, "`batch_size` must be positive");
        anyhow::ensure!(self.grad_accum > 0, "`grad_accum` must be positive");
        anyhow::ensure!(
            self.batch_size.is_multiple_of(self.grad_accum),
            "`batch_size` must be a multiple of `grad_accum`"
        );
        anyhow::ensure!(self.epochs > 0, "`epochs` must be positive");
        anyhow::ensure!(self.lr > 0.0, "`lr` must be positive");
        anyhow::ensure!((0.0..1.0).contains(&self.warmup_ratio), "`warmup_ratio` must be in [0, 1)");
        anyhow::ensure!(self.max_length >= 8, "`max_length` must be at least 8");
        if let Some(lora) = &self.lora {
            lora.validate().map_err(|e| anyhow::anyhow!("`lora`: {e}"))?;
        }
        Ok(())
    }

    pub fn method(&self) -> &'static str {
        if self.lora.is_some() {
            "baselora"
        } else {
            "baseline"
        }
    }
}

/// Parses JSON into `T`; an error names the key path where it happened (`lora.r: invalid type …`).
pub fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            anyhow::anyhow!("{inner}")
        } else {
            anyhow::anyhow!("`{path}`: {inner}")
        }
    })
}

/// Like [`parse_json`], from an already parsed value (a checkpoint's `config.json`).
pub fn from_value<T: serde::de::DeserializeOwned>(value: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        anyhow::anyhow!("`{path}`: {}", e.into_inner())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_and_unknown_keys_are_named() {
        let c: TrainConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((c.lr, c.batch_size, c.epochs), (5e-6, 32, 3));
        let err = serde_json::from_str::<TrainConfig>("{\"learning_rate\": 1e-5}").unwrap_err().to_string();
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
        let err = parse_json::<TrainConfig>(
            "{\"lora\": {\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q\"], \"rnak\": 3}}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rnak"), "{err}");
    }

    #[test]
    fn type_errors_name_the_key_path_and_zero_rank_is_refused() {
        let err =
            parse_json::<TrainConfig>("{\"lora\": {\"r\": \"four\", \"lora_alpha\": 8, \"target_modules\": [\"q\"]}}")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("`lora.r`:") && err.contains("invalid type"), "{err}");
        let err = parse_json::<TrainConfig>("{\"truncation\": \"middle\"}").unwrap_err().to_string();
        assert!(err.starts_with("`truncation`:") && err.contains("longest_first"), "{err}");
        let zero: TrainConfig =
            parse_json("{\"lora\": {\"r\": 0, \"lora_alpha\": 8, \"target_modules\": [\"q\"]}}").unwrap();
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("`r` must be positive"), "{err}");
    }
}
