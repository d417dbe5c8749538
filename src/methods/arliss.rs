//! ARLISS (router-reward-models.txt §3.3, Figure 1(d)): one frozen base model, a LoRA reward adapter
//! with its own head per domain, and a router adapter with a classifier over the domains; only the
//! adapters and heads are trained and kept (PEFT layout, one per stage), the base is referenced by its
//! checksum. Scoring routes each prompt with the router adapter, then scores a batch of any domain mix
//! in one forward pass with a reward adapter per row (`load.rs`), so switching costs nothing.
//! The stages, `--resume` and `--add-domain` are the routed engine's (`routed.rs`).

use std::path::PathBuf;

use anyhow::Result;

use crate::config::{Method, TrainConfig};
use crate::methods::routed::train_routed;
use crate::train::trainer::RunOptions;

pub use crate::methods::routed::ROUTER_ADAPTER;

/// Trains ARLISS into `cfg.out`, or with `add_domain` extends a finished ARLISS run by one domain:
/// the new domain's adapter and a new router adapter; every other adapter's files stay as they are.
pub fn train_arliss(
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
    add_domain: Option<&str>,
) -> Result<PathBuf> {
    train_routed(Method::Arliss, cfg, device, opts, add_domain)
}
