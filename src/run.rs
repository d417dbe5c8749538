//! The run directory a `train-*` produces: a model users keep, described by `rmroute.json`.
//!
//! ```text
//! RUN_DIR/rmroute.json        method, domains, backbone, full config, seed, versions, timings,
//!                             and what the files are (`model`, `adapters`)
//! RUN_DIR/config.json, model.safetensors, tokenizer.json   the final reward model in Hugging Face
//!                             layout (BaseLoRA: the adapter merged into the backbone)
//! RUN_DIR/adapters/<name>/    LoRA adapters in PEFT layout, for the backbone (BaseLoRA: `default`)
//! RUN_DIR/metrics.jsonl       one line per logging step
//! RUN_DIR/checkpoint/         the last checkpoint, for --resume (gone once the run finishes)
//! RUN_DIR/results.json        written by `rmroute eval`
//! ```
//!
//! A finished run is written whole beside the training directory and swapped in, so `rmroute.json`
//! exists only in a complete run.

use std::collections::BTreeMap;
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
    /// What the top-level Hugging Face checkpoint is.
    pub model: String,
    /// Adapters under `adapters/<name>/` (PEFT layout, for the backbone): name → what it is.
    #[serde(default)]
    pub adapters: BTreeMap<String, String>,
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
/// Refuses to train into a directory that holds something else. A finished run is replaced only with
/// `force`; an unfinished one (a checkpoint) is continued with `resume`, or started over with `force`.
pub fn prepare_run_dir(dir: &Path, resume: bool, force: bool) -> Result<()> {
    let finished = dir.join("rmroute.json").is_file();
    let unfinished = dir.join("checkpoint").exists() || dir.join("checkpoint.old").exists();
    if resume {
        anyhow::ensure!(!finished, "{} holds a finished run: nothing to resume", dir.display());
        return Ok(());
    }
    let is_run = finished || unfinished || dir.join("metrics.jsonl").is_file();
    let empty = std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true);
    if !empty && !is_run {
        anyhow::bail!("{} exists and is not an rmroute run directory: choose another --out", dir.display());
    }
    if is_run && !force {
        if finished {
            anyhow::bail!(
                "{} holds a finished run: pass --force to replace it (its results go too), or choose another --out",
                dir.display()
            );
        }
        if unfinished {
            anyhow::bail!(
                "{} holds a checkpoint of an unfinished run: pass --resume to continue it, --force to start \
                 over, or choose another --out",
                dir.display()
            );
        }
    }
    if is_run {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing the old run in {}", dir.display()))?;
    }
    Ok(())
}

pub fn backbone_name(backbone: &str) -> String {
    backbone.trim_end_matches('/').rsplit('/').next().unwrap_or(backbone).to_string()
}
