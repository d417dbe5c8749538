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
    #[arg(long, value_parser = super::at_least_one::<usize>)]
    pub max_pairs: Option<usize>,
    #[arg(long, value_parser = super::at_least_one::<usize>)]
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
    /// Train one stage alone: `router` (RODOS, ARLISS, DMoERM) trains just the router into
    /// OUT/stages/router, for router experiments (`rmroute eval-router --model OUT`); training the
    /// whole run later with --resume keeps it.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
}

/// A stage to train alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Router,
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
    if args.only == Some(Only::Router) {
        if add_domain.is_some() {
            bail!("--only router trains a router alone; --add-domain extends a finished run: pass one of them");
        }
        let stage = rmroute::methods::train_router(&cfg, device, &args.options())?;
        println!(
            "trained the router of {} → {} (evaluate it: rmroute eval-router --model {})",
            cfg.method(),
            stage.display(),
            cfg.out.display()
        );
        return Ok(());
    }
    let out = rmroute::methods::train(&cfg, device, &args.options(), add_domain)?;
    println!("trained {} → {}", cfg.method(), out.display());
    Ok(())
}
