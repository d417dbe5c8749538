//! The methods of the papers, one file each, reading like the paper's section: which stages it trains,
//! with which objective, what is frozen, and how it loads and scores. One [`Method`] enum names them
//! everywhere (the config, `rmroute.json`, the loader); [`train`] and [`load`] dispatch on it, and
//! every loaded method scores behind one trait ([`Scores`]).

pub mod accuracy;
pub mod arliss;
pub mod base;
pub mod baseline;
pub mod config;
pub mod dmoerm;
pub mod manifest;
pub mod method;
pub mod more;
pub mod parts;
pub mod reward_model;
pub mod rodos;
pub mod routed;
pub mod router;
pub mod scorer;
pub mod single;
pub mod stage_keys;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::Device;

pub use manifest::RunMeta;
pub use method::Method;
pub use scorer::{DomainRouter, MethodResults, ScoreOptions, Scored, Scorer, Scores};

use crate::model::LoadOptions;
use crate::train::stage::RunOptions;
use config::TrainConfig;

/// Trains `cfg.method` into `cfg.out` (with `add_domain`, extends a finished RODOS or ARLISS run by one
/// domain); the run directory.
pub fn train(cfg: &TrainConfig, device: Device, opts: &RunOptions, add_domain: Option<&str>) -> Result<PathBuf> {
    cfg.validate()?;
    if add_domain.is_some() && !cfg.method.adds_domains() {
        bail!("--add-domain extends RODOS and ARLISS runs; the config trains `{}`", cfg.method.as_str());
    }
    match cfg.method {
        Method::Baseline | Method::Baselora => baseline::train(cfg, device, opts),
        Method::More => more::train(cfg, device, opts),
        Method::Rodos | Method::Arliss => routed::train_routed(cfg, device, opts, add_domain),
        Method::Dmoerm => dmoerm::train(cfg, device, opts),
    }
}

/// Trains only the router stage of `cfg`'s routed method (RODOS's or ARLISS's over the domains,
/// DMoERM's over the tasks) into `cfg.out/stages/router`, for router experiments; its directory. The
/// run stays unfinished: training it whole with `--resume` keeps this router.
pub fn train_router(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    cfg.validate()?;
    match cfg.method {
        Method::Rodos | Method::Arliss => routed::train_router_only(cfg, device, opts),
        Method::Dmoerm => dmoerm::train_router_only(cfg, device, opts),
        other => bail!("method `{other}` has no router (RODOS, ARLISS and DMoERM have one)"),
    }
}

/// Loads `dir` for scoring: an rmroute run (its `rmroute.json` says which method made it, and the
/// method loads it), or a Hugging Face reward model checkpoint with optional PEFT adapters.
pub fn load(dir: &Path, opts: &LoadOptions, choice: &ScoreOptions) -> Result<Scorer> {
    let run = if RunMeta::exists(dir) { Some(RunMeta::read(dir)?) } else { None };
    let method = run.as_ref().map(|m| m.method);
    if choice.switching.is_some() && method != Some(Method::Arliss) {
        match method {
            Some(method) => {
                bail!("--switching applies to ARLISS runs; {} is a `{}` run", dir.display(), method.as_str())
            }
            None => bail!("--switching applies to ARLISS runs; {} is not one", dir.display()),
        }
    }
    let several = matches!(method, Some(Method::Rodos | Method::Arliss | Method::Dmoerm));
    if choice.adapter.is_some() && several {
        bail!(
            "{} is a `{}` run of several models: --adapter does not apply",
            dir.display(),
            method.map_or("", Method::as_str)
        );
    }
    let model: Box<dyn Scores> = match (method, run.as_ref()) {
        (Some(Method::More), Some(meta)) => Box::new(more::load(dir, meta, opts, choice)?),
        (Some(Method::Rodos), Some(meta)) => Box::new(rodos::load(dir, meta, opts, choice)?),
        (Some(Method::Arliss), Some(meta)) => Box::new(arliss::load(dir, meta, opts, choice)?),
        (Some(Method::Dmoerm), Some(meta)) => Box::new(dmoerm::load(dir, meta, opts, choice)?),
        _ => Box::new(single::load(dir, run.as_ref(), opts, choice)?),
    };
    Ok(Scorer { model, run })
}
