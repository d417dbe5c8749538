//! `rmroute train-*`: every method takes `--config FILE` and the same few overrides.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use rmroute::config::TrainConfig;
use rmroute::methods::arliss::train_arliss;
use rmroute::methods::baseline::train_baseline;
use rmroute::methods::dmoerm::train_dmoerm;
use rmroute::methods::more::train_more;
use rmroute::methods::rodos::train_rodos;
use rmroute::train::trainer::RunOptions;

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

pub fn run_baseline(args: TrainArgs) -> Result<()> {
    let cfg = args.config()?;
    let device = super::device(&cfg.device)?;
    let out = train_baseline(&cfg, device, &args.options())?;
    println!("trained {} → {}", cfg.method(), out.display());
    Ok(())
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

pub fn run_arliss(args: RoutedArgs) -> Result<()> {
    let cfg = args.common.config()?;
    let device = super::device(&cfg.device)?;
    let out = train_arliss(&cfg, device, &args.common.options(), args.add_domain.as_deref())?;
    println!("trained arliss → {}", out.display());
    Ok(())
}

pub fn run_rodos(args: RoutedArgs) -> Result<()> {
    let cfg = args.common.config()?;
    let device = super::device(&cfg.device)?;
    let out = train_rodos(&cfg, device, &args.common.options(), args.add_domain.as_deref())?;
    println!("trained rodos → {}", out.display());
    Ok(())
}

pub fn run_more(args: TrainArgs) -> Result<()> {
    let cfg = args.config()?;
    let device = super::device(&cfg.device)?;
    let out = train_more(&cfg, device, &args.options())?;
    println!("trained more → {}", out.display());
    Ok(())
}

pub fn run_dmoerm(args: TrainArgs) -> Result<()> {
    let cfg = args.config()?;
    let device = super::device(&cfg.device)?;
    let out = train_dmoerm(&cfg, device, &args.options())?;
    println!("trained dmoerm → {}", out.display());
    Ok(())
}
