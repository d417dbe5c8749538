//! RODOS (router-reward-models.txt §3.2, Figure 1(c)): one reward model per domain, each trained as
//! Baseline on its domain alone, and an external router that reads the prompt and picks the model that
//! scores it. The stages, `--resume` and `--add-domain` are the routed engine's (`routed.rs`).

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{Method, TrainConfig};
use crate::methods::routed::train_routed;
use crate::train::trainer::RunOptions;

pub use crate::methods::routed::reward_stage;

/// Trains RODOS into `cfg.out`, or with `add_domain` extends a finished RODOS run by one domain.
pub fn train_rodos(
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
    add_domain: Option<&str>,
) -> Result<PathBuf> {
    train_routed(Method::Rodos, cfg, device, opts, add_domain)
}
