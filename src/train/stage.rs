//! A stage: the unit every method trains (Baseline's one model; RODOS's reward model per domain and its
//! router; DMoERM's reward model, experts and aggregator per task). A stage owns its directory (its
//! checkpoint and metrics while it trains), its resume key (the settings it depends on and a
//! fingerprint of what it trains on, recorded in its checkpoint and once finished in `stage.json`), and
//! the finished write: staged whole under a temporary name, then swapped in.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use super::key::{fingerprint, LegacySettings, StageKey};
use crate::io::{read_json, write_json, StagedDir};

/// The record of a finished stage inside its directory.
pub const STAGE_FILE: &str = "stage.json";

/// The metrics a stage logs while it trains, one JSON line per logging step.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// How a training run is driven, besides its settings.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub quiet: bool,
    /// Continue from the last checkpoint.
    pub resume: bool,
    /// Stop after this many optimizer steps (leaving a checkpoint), as if the run were killed there.
    pub stop_after: Option<usize>,
    /// Replace a finished run (or an unfinished one) in the run directory.
    pub force: bool,
    /// With `stop_after`: the stage it applies to (a run of several stages), none = every stage.
    pub stop_in_stage: Option<String>,
}

/// One stage of a run.
pub struct Stage {
    pub name: String,
    /// Where it trains (`checkpoint/`, `metrics.jsonl`) and where the finished stage lands.
    pub dir: PathBuf,
    pub key: StageKey,
    /// How this stage runs: it resumes from its own checkpoint when the run resumes and it has one;
    /// `stop_after` applies when `stop_in_stage` names it (or names no stage).
    pub opts: RunOptions,
    /// A part of a run of several keeps `stage.json`; a run of one stage is marked finished by its
    /// manifest instead.
    is_part: bool,
    /// Reads a record of rmroute 0.1.0 (see [`LegacySettings`]); none refuses such records.
    pub legacy: Option<LegacySettings>,
}

impl Stage {
    /// Stage `name` of a run of several, in `RUN/stages/<name>/`.
    pub fn part(run_dir: &Path, name: &str, key: StageKey, run: &RunOptions) -> Self {
        Self::new(name, run_dir.join("stages").join(name), key, run, true)
    }

    /// A run that is one stage (Baseline, MoRE), in the run directory itself.
    pub fn whole_run(run_dir: &Path, key: StageKey, run: &RunOptions) -> Self {
        let name = run_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        Self::new(&name, run_dir.to_path_buf(), key, run, false)
    }

    fn new(name: &str, dir: PathBuf, key: StageKey, run: &RunOptions, is_part: bool) -> Self {
        let has_checkpoint = super::checkpoint::exists(&dir.join("checkpoint"));
        // A run of one stage stops where asked whatever stage is named.
        let stops_here = !is_part || run.stop_in_stage.as_deref().is_none_or(|s| s == name);
        let opts = RunOptions {
            quiet: run.quiet,
            // A run of one stage resumes as asked (a missing checkpoint is then an error).
            resume: run.resume && (has_checkpoint || !is_part),
            stop_after: if stops_here { run.stop_after } else { None },
            force: false,
            stop_in_stage: None,
        };
        Self { name: name.to_string(), dir, key, opts, is_part, legacy: None }
    }

    /// This stage reads records of rmroute 0.1.0 with `legacy`.
    pub fn with_legacy(mut self, legacy: LegacySettings) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// The record of the finished stage (from `stage.json`), if it finished; an error when it
    /// finished with another key.
    pub fn finished<P: DeserializeOwned>(&self) -> Result<Option<P>> {
        let path = self.dir.join(STAGE_FILE);
        if !self.is_part || !path.is_file() {
            return Ok(None);
        }
        let record: serde_json::Value = read_json(&path)?;
        if let (None, Some(config)) = (record.get("key"), record.get("config")) {
            return self.finished_legacy(&record, config).with_context(|| format!("reading {}", path.display()));
        }
        let record: StageRecord<P> =
            crate::io::from_value(&record).with_context(|| format!("parsing {}", path.display()))?;
        if let Some(why) = self.key.mismatch(&record.key) {
            bail!("{} {why}", self.dir.display());
        }
        Ok(Some(record.part))
    }

    /// A finished stage of rmroute 0.1.0 (its `stage.json` records a whole config, and the data's
    /// fingerprint where it has one).
    fn finished_legacy<P: DeserializeOwned>(
        &self,
        record: &serde_json::Value,
        config: &serde_json::Value,
    ) -> Result<Option<P>> {
        let Some(legacy) = self.legacy else {
            bail!(
                "{} was written by an older rmroute (it records a whole config, not a stage key): finish this run \
                 with the release that started it, or start over with --force",
                self.dir.display()
            );
        };
        let inputs = record.get("inputs").and_then(|v| v.as_str());
        if let Some(why) = self.key.legacy_mismatch(legacy, config, inputs)? {
            bail!("{} {why}", self.dir.display());
        }
        let part = record.get("part").context("no `part`")?;
        Ok(Some(crate::io::from_value(part)?))
    }

    /// Writes the finished stage whole, once it has trained: `fill` writes its files into the staged
    /// directory and returns the stage's record, the metrics are copied beside them, and for a part
    /// `stage.json` records it with the key; then the staged directory is swapped in.
    pub fn finish<P: Serialize>(&self, fill: impl FnOnce(&Path) -> Result<P>) -> Result<P> {
        let staged = StagedDir::new(&self.dir)?;
        let metrics = METRICS_FILE;
        std::fs::copy(self.dir.join(metrics), staged.path().join(metrics))
            .with_context(|| format!("copying {}", self.dir.join(metrics).display()))?;
        let part = fill(staged.path())?;
        if self.is_part {
            write_json(&staged.path().join(STAGE_FILE), &StageRecord { part: &part, key: self.key.clone() })?;
        }
        staged.commit()?;
        Ok(part)
    }
}

/// `stage.json`: a finished stage's record and its key.
#[derive(Serialize, Deserialize)]
struct StageRecord<P> {
    part: P,
    key: StageKey,
}
