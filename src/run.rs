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
//! RUN_DIR/stages/<name>/      a run of several models (RODOS, ARLISS, DMoERM): each part trained as a stage,
//!                             with its own checkpoint and metrics, and once done a Hugging Face
//!                             checkpoint (RODOS) or a PEFT adapter for the base (ARLISS) and
//!                             `stage.json` (its part and settings); `rmroute.json` lists the parts
//! RUN_DIR/results.json        written by `rmroute eval`
//! ```
//!
//! A finished run is written whole beside the training directory and swapped in, so `rmroute.json`
//! exists only in a complete run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::data::io::{write_atomic, StagedDir};

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
    #[serde(default)]
    pub model: String,
    /// Adapters under `adapters/<name>/` (PEFT layout, for the backbone): name → what it is.
    #[serde(default)]
    pub adapters: BTreeMap<String, String>,
    /// The parts of a run of several models (RODOS: a reward model per domain and the router; ARLISS:
    /// an adapter per domain and the router adapter).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Part>,
    /// The frozen base the parts are adapters for (ARLISS), referenced and fingerprinted, not copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<crate::base::BaseRef>,
    /// DMoERM: per task, the labelled (non-tie) stage-1 pairs of each aspect asked for or found; those
    /// under `dmoerm.min_aspect_pairs` got no expert.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aspect_pairs: BTreeMap<String, BTreeMap<String, usize>>,
    /// DMoERM: `domains` are the records' `task` fields, gathered from the data folders `config.domains`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routes_by_task: bool,
}

/// What a part of a run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A reward model (one label).
    Reward,
    /// A classifier over the domains, reading prompts alone.
    Router,
    /// DMoERM: a LoRA expert on one capability point of a task, for the task's reward model.
    Expert,
    /// DMoERM: the MLP that combines a task's experts into its reward.
    Aggregator,
}

/// One trained model of a run, in its own directory (a stage of the run).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Part {
    pub name: String,
    pub role: Role,
    /// The domain a reward model was trained on (DMoERM: the task of its inner model).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// DMoERM: the capability point an expert was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aspect: Option<String>,
    /// The part's directory, relative to the run (a Hugging Face checkpoint).
    pub path: String,
    pub train_examples: usize,
    pub truncated: usize,
    pub steps: usize,
    /// Wall-clock seconds of each epoch.
    pub epoch_seconds: Vec<f64>,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
}

/// Table 3's "1 epoch" of a run of several models: one epoch of each part (its mean), added up.
pub fn one_epoch_seconds(parts: &[Part]) -> f64 {
    parts.iter().map(|p| p.epoch_seconds.iter().sum::<f64>() / p.epoch_seconds.len().max(1) as f64).sum()
}

/// `stage.json`: a finished stage's part, the settings it was trained with, and a fingerprint of what it
/// was trained on.
#[derive(Serialize, Deserialize)]
struct StageRecord {
    part: Part,
    config: TrainConfig,
    /// The SHA-256 of the stage's training examples ([`fingerprint`]); absent in older runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inputs: Option<String>,
}

/// A fingerprint of a stage's training inputs: the SHA-256 of `items` in order, each length-prefixed.
pub fn fingerprint<'a>(items: impl IntoIterator<Item = &'a str>) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for item in items {
        hash.update((item.len() as u64).to_le_bytes());
        hash.update(item.as_bytes());
    }
    format!("{:x}", hash.finalize())
}

/// The fingerprint of training pairs: their ids and texts, in order.
pub fn pairs_fingerprint(pairs: &[crate::data::PairRecord]) -> String {
    fingerprint(pairs.iter().flat_map(|p| [p.id.as_str(), p.prompt.as_str(), p.chosen.as_str(), p.rejected.as_str()]))
}

impl Part {
    /// A finished stage's part (its `stage.json`), if the stage finished; an error when it was
    /// trained with other settings than `config` or on other inputs than `inputs` (a resumed run must
    /// not mix them).
    pub fn read_done(stage_dir: &Path, config: &TrainConfig, inputs: &str) -> Result<Option<Self>> {
        let path = stage_dir.join("stage.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let record: StageRecord =
            crate::config::parse_json(&text).with_context(|| format!("parsing {}", path.display()))?;
        if record.config != *config {
            bail!(
                "{} was trained with other settings than this run's: resume with the same config and flags, \
                 or start over with --force",
                stage_dir.display()
            );
        }
        if record.inputs.as_deref().is_some_and(|recorded| recorded != inputs) {
            bail!(
                "{} was trained on other data than this run has now (its training examples changed since): \
                 start over with --force, or put the data back",
                stage_dir.display()
            );
        }
        Ok(Some(record.part))
    }

    /// Marks a stage directory (being staged) as finished with `config` on `inputs`.
    pub fn write_done(&self, stage_dir: &Path, config: &TrainConfig, inputs: &str) -> Result<()> {
        let record = StageRecord { part: self.clone(), config: config.clone(), inputs: Some(inputs.to_string()) };
        write_atomic(&stage_dir.join("stage.json"), &serde_json::to_vec_pretty(&record)?)?;
        Ok(())
    }
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

/// Refuses to train into a directory that holds something else. A finished run is replaced only with
/// `force`; an unfinished one (a checkpoint) is continued with `resume`, or started over with `force`.
/// A directory that is not an rmroute run is never touched. Call it once everything else is checked,
/// so a typo in the config never costs the old run.
pub fn prepare_run_dir(dir: &Path, resume: bool, force: bool) -> Result<()> {
    let finished = dir.join("rmroute.json").is_file();
    let checkpoint = dir.join("stages").is_dir()
        || dir.join("checkpoint/state.json").is_file()
        || StagedDir::moved_aside(&dir.join("checkpoint")).is_some_and(|d| d.join("state.json").is_file());
    if resume {
        anyhow::ensure!(!finished, "{} holds a finished run: nothing to resume", dir.display());
        return Ok(());
    }
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect(),
        Err(_) => return Ok(()),
    };
    // A run killed before its first checkpoint has only its metrics (and hidden staging directories).
    let started = !entries.is_empty() && entries.iter().all(|e| e == "metrics.jsonl" || e.starts_with('.'));
    if entries.is_empty() {
        return Ok(());
    }
    if !(finished || checkpoint || started) {
        anyhow::bail!("{} exists and is not an rmroute run directory: choose another --out", dir.display());
    }
    if !force {
        if finished {
            anyhow::bail!(
                "{} holds a finished run: pass --force to replace it (its results go too), or choose another --out",
                dir.display()
            );
        }
        anyhow::bail!(
            "{} holds an unfinished run: pass --resume to continue it from its checkpoint, --force to start over, \
             or choose another --out",
            dir.display()
        );
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing the old run in {}", dir.display()))
}

/// The last path component of a backbone reference.
pub fn backbone_name(backbone: &str) -> String {
    backbone.trim_end_matches('/').rsplit('/').next().unwrap_or(backbone).to_string()
}
