//! The flags that pick and load a model to score with, shared by `score` and `serve`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use rmroute::backbone::{resolve_model_dir, Truncation};
use rmroute::methods::arliss::Switching;
use rmroute::methods::{ScoreOptions, Scorer};
use rmroute::model::LoadOptions;
use rmroute::nn::bf16::Precision;

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// A reward model: a checkpoint directory in Hugging Face layout (optionally with `adapters/<name>/`
    /// in PEFT layout), an rmroute run directory, or a hub id.
    #[arg(long)]
    pub model: String,
    /// The adapter to score with: a name under `MODEL/adapters/`, or the directory of a PEFT adapter
    /// (`adapter_config.json`, `adapter_model.safetensors`) for MODEL.
    #[arg(long)]
    pub adapter: Option<String>,
    /// Longest input in tokens (default: the run's `max_length`, else the model's limit).
    #[arg(long, value_parser = super::at_least_one::<usize>)]
    pub max_length: Option<usize>,
    /// How longer pairs are cut (default: the run's strategy, else longest_first as transformers does).
    #[arg(long, value_enum)]
    pub truncation: Option<Truncation>,
    /// ARLISS: score a batch of mixed domains in one pass with a reward adapter per row (one_pass,
    /// the default), or one domain's rows at a time, switching adapters between them (sequential).
    #[arg(long, value_enum)]
    pub switching: Option<Switching>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, or bf16: the encoder's linear layers score with bf16 weights and inputs (f32 sums), on
    /// AVX-512 BF16 where the CPU has it; rewards stay within about 1e-2 of f32.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub dtype: Precision,
}

impl ModelArgs {
    /// The model's directory and what scores with it.
    pub fn load(&self) -> Result<(PathBuf, Scorer)> {
        if self.max_length.is_some_and(|n| n < 8) {
            bail!("--max-length must be at least 8");
        }
        let dir = resolve_model_dir(&self.model)?;
        let opts = LoadOptions { device: super::device(&self.device)?, precision: self.dtype, ..Default::default() };
        let choice = ScoreOptions {
            adapter: self.adapter.clone(),
            max_length: self.max_length,
            truncation: self.truncation,
            switching: self.switching,
        };
        let scorer = rmroute::methods::load(&dir, &opts, &choice)
            .with_context(|| format!("loading the model in {}", dir.display()))?;
        Ok((dir, scorer))
    }
}
