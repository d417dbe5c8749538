//! The run directory a `train-*` produces: a model users keep, described by `rmroute.json`.
//!
//! ```text
//! RUN_DIR/rmroute.json        method, domains, backbone, full config, seed, versions, timings
//! RUN_DIR/config.json, model.safetensors, tokenizer.json   the model in Hugging Face layout
//! RUN_DIR/adapters/<name>/    LoRA adapters in PEFT layout (BaseLoRA: `default`)
//! RUN_DIR/metrics.jsonl       one line per logging step
//! RUN_DIR/checkpoint/         the last checkpoint, for --resume (removed when the run finishes)
//! RUN_DIR/results.json        written by `rmroute eval`
//! ```

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::io::write_atomic;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub method: String,
    pub domains: Vec<String>,
    /// The backbone as the config named it.
    pub backbone: String,
    /// A short backbone name for tables (the directory or hub id's last component).
    pub backbone_name: String,
    pub seed: u64,
    pub rmroute_version: String,
    pub config: TrainConfig,
    pub train_pairs: usize,
    pub truncated_pairs: usize,
    pub steps: usize,
    /// Wall-clock seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
}

impl RunMeta {
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("rmroute.json");
        let bytes = std::fs::read(&path)
            .with_context(|| format!("reading {} (is this an rmroute run directory?)", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn write(&self, run_dir: &Path) -> Result<()> {
        write_atomic(&run_dir.join("rmroute.json"), &serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// The last path component of a backbone reference.
pub fn backbone_name(backbone: &str) -> String {
    backbone.trim_end_matches('/').rsplit('/').next().unwrap_or(backbone).to_string()
}
