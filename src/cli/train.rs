//! `rmroute train-*`: every method takes `--config FILE` and the same few overrides.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use rmroute::methods::config::TrainConfig;
use rmroute::train::stage::RunOptions;

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The experiment's JSON config (see configs/).
    #[arg(long)]
    pub config: PathBuf,
    /// Prepared data folder (overrides `data`).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run directory (overrides `out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// cpu, cuda or cuda:N (overrides `device`).
    #[arg(long)]
    pub device: Option<String>,
    /// Training pairs per domain (overrides `max_pairs`).
    #[arg(long)]
    pub max_pairs: Option<usize>,
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Continue a killed run from its last checkpoint in the run directory.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Replace a finished (or unfinished) run in the run directory, results included.
    #[arg(long)]
    pub force: bool,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// The config file with the command-line overrides applied.
    pub fn config(&self) -> Result<TrainConfig> {
        let mut cfg = TrainConfig::load(&self.config)?;
        if let Some(d) = &self.data {
            cfg.data = d.clone();
        }
        if let Some(o) = &self.out {
            cfg.out = o.clone();
        }
        if let Some(s) = self.seed {
            cfg.seed = s;
        }
        if let Some(d) = &self.device {
            cfg.device = d.clone();
        }
        if let Some(m) = self.max_pairs {
            cfg.max_pairs = Some(m);
        }
        if let Some(e) = self.epochs {
            cfg.epochs = e;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn options(&self) -> RunOptions {
        RunOptions { quiet: self.quiet, resume: self.resume, stop_after: None, force: self.force, stop_in_stage: None }
    }
}

#[derive(Debug, Args)]
pub struct RoutedArgs {
    #[command(flatten)]
    pub common: TrainArgs,
    /// Extend the finished run in the run directory by this domain (its data from the config's `data`
    /// or --data): trains its reward model (ARLISS: its adapter) and retrains the router; the other
    /// domains' files are not touched.
    #[arg(long)]
    pub add_domain: Option<String>,
}

/// Every `train-*` subcommand: `command` is the one the user ran; the config must name a method it
/// trains.
pub fn run(command: &str, args: &TrainArgs, add_domain: Option<&str>) -> Result<()> {
    let cfg = args.config()?;
    if cfg.method.command() != command {
        bail!("the config trains method `{}`: run `rmroute {}`", cfg.method.as_str(), cfg.method.command());
    }
    let device = super::device(&cfg.device)?;
    let out = rmroute::methods::train(&cfg, device, &args.options(), add_domain)?;
    println!("trained {} → {}", cfg.method(), out.display());
    Ok(())
}
