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

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::method::Method;
use crate::io::{parse_json, write_json};
use crate::train::stage::fingerprint;
use crate::train::trainer::Trained;

/// The longest input rmroute 0.1.0 encoded, whatever a run's `max_length` said.
const LEGACY_MAX_LENGTH: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMeta {
    pub method: Method,
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
    pub base: Option<super::base::BaseRef>,
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

/// The fingerprint of training pairs: their ids and texts, in order.
pub fn pairs_fingerprint(pairs: &[crate::data::PairRecord]) -> String {
    fingerprint(pairs.iter().flat_map(|p| [p.id.as_str(), p.prompt.as_str(), p.chosen.as_str(), p.rejected.as_str()]))
}

impl Part {
    /// The part `name` of a run, trained as `trained` says, in `stages/<name>`.
    pub fn new(name: &str, role: Role, domain: Option<&str>, trained: &Trained, parameters: (usize, usize)) -> Self {
        Part {
            name: name.to_string(),
            role,
            domain: domain.map(str::to_string),
            aspect: None,
            path: format!("stages/{name}"),
            train_examples: trained.train_pairs,
            truncated: trained.truncated,
            steps: trained.steps,
            epoch_seconds: trained.epoch_seconds.clone(),
            total_parameters: parameters.0,
            trainable_parameters: parameters.1,
        }
    }
}

/// The manifest's file in a run directory.
pub const MANIFEST: &str = "rmroute.json";

impl RunMeta {
    /// The manifest of `cfg`'s run over `domains` (in `cfg.method`), with `summary`'s figures; the
    /// method-specific fields start empty.
    pub fn new(cfg: &TrainConfig, domains: Vec<String>, summary: Summary) -> Self {
        RunMeta {
            method: cfg.method,
            domains,
            backbone: cfg.backbone.clone(),
            backbone_name: backbone_name(&cfg.backbone),
            seed: cfg.seed,
            rmroute_version: env!("CARGO_PKG_VERSION").into(),
            config: cfg.clone(),
            train_pairs: summary.train_pairs,
            truncated_pairs: summary.truncated_pairs,
            steps: summary.steps,
            epoch_seconds: summary.epoch_seconds,
            total_parameters: summary.total_parameters,
            trainable_parameters: summary.trainable_parameters,
            model: summary.model,
            adapters: BTreeMap::new(),
            parts: vec![],
            base: None,
            aspect_pairs: BTreeMap::new(),
            routes_by_task: false,
        }
    }

    /// Whether `run_dir` holds a finished run.
    pub fn exists(run_dir: &Path) -> bool {
        run_dir.join(MANIFEST).is_file()
    }

    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (is this an rmroute run directory?)", path.display()))?;
        let mut meta: Self = parse_json(&text).with_context(|| format!("parsing {}", path.display()))?;
        meta.read_legacy_router(&text)?;
        if meta.rmroute_version == "0.1.0" {
            // That release cut every input at 512 tokens whatever `max_length` said: its runs trained so.
            meta.config.max_length = meta.config.max_length.min(LEGACY_MAX_LENGTH);
        }
        Ok(meta)
    }

    /// A router section without `truncation` was written by rmroute 0.1.0, before the setting (and its
    /// default, `keep_end`) existed: the run's router read prompts as that release did.
    fn read_legacy_router(&mut self, text: &str) -> Result<()> {
        let truncation = self.config.truncation;
        let method = self.config.method.as_str();
        let Some(router) = self.config.router_mut() else { return Ok(()) };
        let raw: serde_json::Value = serde_json::from_str(text)?;
        if raw["config"][method]["router"].get("truncation").is_none() {
            router.legacy(truncation);
        }
        Ok(())
    }

    pub fn write(&self, run_dir: &Path) -> Result<()> {
        write_json(&run_dir.join(MANIFEST), self)
    }
}

/// A run's figures for its manifest.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub train_pairs: usize,
    pub truncated_pairs: usize,
    pub steps: usize,
    pub epoch_seconds: Vec<f64>,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
    /// What the run's top-level files are.
    pub model: String,
}

impl Summary {
    /// The figures of a run that trained one model (`trained`), with its parameter counts.
    pub fn of(trained: &Trained, total_parameters: usize, trainable_parameters: usize, model: String) -> Self {
        Summary {
            train_pairs: trained.train_pairs,
            truncated_pairs: trained.truncated,
            steps: trained.steps,
            epoch_seconds: trained.epoch_seconds.clone(),
            total_parameters,
            trainable_parameters,
            model,
        }
    }

    /// The figures of a run of several parts: their sums, and Table 3's one epoch of each part.
    pub fn of_parts(parts: &[Part], model: String) -> Self {
        let sum = |f: fn(&Part) -> usize| parts.iter().map(f).sum::<usize>();
        Summary {
            train_pairs: 0,
            truncated_pairs: 0,
            steps: sum(|p| p.steps),
            epoch_seconds: vec![one_epoch_seconds(parts)],
            total_parameters: sum(|p| p.total_parameters),
            trainable_parameters: sum(|p| p.trainable_parameters),
            model,
        }
    }
}

/// Refuses to train into a directory that holds something else. A finished run is replaced only with
/// `force`; an unfinished one (a checkpoint) is continued with `resume`, or started over with `force`.
/// A directory that is not an rmroute run is never touched. Call it once everything else is checked,
/// so a typo in the config never costs the old run.
pub fn prepare_run_dir(dir: &Path, resume: bool, force: bool) -> Result<()> {
    let finished = RunMeta::exists(dir);
    let checkpoint = dir.join("stages").is_dir() || crate::train::checkpoint::exists(&dir.join("checkpoint"));
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
