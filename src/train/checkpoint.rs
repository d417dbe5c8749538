//! Checkpoints: the trained variables, the optimizer's moments and the loop's state, written into a
//! fresh directory and swapped in, so a crash leaves the old checkpoint or the new one, never half of
//! one. The state records the stage's key: a checkpoint resumes only with the same settings and data.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::key::{LegacySettings, StageKey};
use super::optim::AdamW;
use crate::io::{read_json, save_safetensors, write_json, StagedDir};

const STATE_FILE: &str = "state.json";

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    pub epoch_seconds: Vec<f64>,
    pub truncated: usize,
    pub key: StageKey,
}

/// The state of a checkpoint of rmroute 0.1.0 (its `config` is read by the stage's [`LegacySettings`]).
#[derive(Deserialize)]
struct LegacyState {
    step: usize,
    epoch_seconds: Vec<f64>,
    truncated: usize,
}

/// Whether `dir` holds a checkpoint (or one a crash left moved aside between the two renames of its
/// commit).
pub fn exists(dir: &Path) -> bool {
    dir.join(STATE_FILE).is_file() || StagedDir::moved_aside(dir).is_some_and(|d| d.join(STATE_FILE).is_file())
}

/// Writes the checkpoint into a fresh directory, syncs it, then swaps it in.
pub fn save(dir: &Path, optimizer: &AdamW, state: &CheckpointState) -> Result<()> {
    let staged = StagedDir::new(dir)?;
    let weights: HashMap<String, Tensor> =
        optimizer.vars().map(|(n, v)| (n.to_string(), v.as_tensor().clone())).collect();
    save_safetensors(&weights, &staged.path().join("weights.safetensors"))?;
    save_safetensors(&optimizer.state(), &staged.path().join("optimizer.safetensors"))?;
    write_json(&staged.path().join(STATE_FILE), state)?;
    staged.commit()?;
    Ok(())
}

/// Restores the optimizer's variables and moments from the checkpoint in `dir`, which must have been
/// made with `key`; a checkpoint of rmroute 0.1.0 is read with `legacy` (it records no data fingerprint:
/// its settings alone are checked, as that release checked them).
pub fn load(
    dir: &Path,
    optimizer: &mut AdamW,
    key: &StageKey,
    legacy: Option<LegacySettings>,
    device: &Device,
) -> Result<CheckpointState> {
    let dir: PathBuf = if dir.join(STATE_FILE).is_file() {
        dir.to_path_buf()
    } else if let Some(aside) = StagedDir::moved_aside(dir).filter(|d| d.join(STATE_FILE).is_file()) {
        aside // a crash between the two renames of a checkpoint's commit
    } else {
        bail!("nothing to resume: no checkpoint in {}", dir.display());
    };
    let raw: serde_json::Value = read_json(&dir.join(STATE_FILE))?;
    let state = match (raw.get("key"), raw.get("config")) {
        (None, Some(config)) => {
            let Some(legacy) = legacy else {
                bail!(
                    "the checkpoint in {} was made by an older rmroute (it records a whole config, not a stage key): \
                     finish the run with the release that started it, or start over with --force",
                    dir.display()
                );
            };
            if let Some(why) = key.legacy_mismatch(legacy, config, None)? {
                bail!("the checkpoint in {} {why}", dir.display());
            }
            let old: LegacyState =
                crate::io::from_value(&raw).with_context(|| format!("reading {}/{STATE_FILE}", dir.display()))?;
            CheckpointState {
                step: old.step,
                epoch_seconds: old.epoch_seconds,
                truncated: old.truncated,
                key: key.clone(),
            }
        }
        _ => {
            let state: CheckpointState =
                crate::io::from_value(&raw).with_context(|| format!("reading {}/{STATE_FILE}", dir.display()))?;
            if let Some(why) = key.mismatch(&state.key) {
                bail!("the checkpoint in {} {why}", dir.display());
            }
            state
        }
    };
    let weights = candle_core::safetensors::load(dir.join("weights.safetensors"), device)?;
    for (name, var) in optimizer.vars() {
        let t = weights.get(name).with_context(|| format!("checkpoint lacks `{name}`"))?;
        var.set(t)?;
    }
    let opt_state = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
    optimizer.load_state(&opt_state, state.step)?;
    Ok(state)
}
