//! `rmroute score`: rewards for pair records or single responses, in batches.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use rmroute::backbone::resolve_model_dir;
use rmroute::data::error::At;
use rmroute::data::io::{read_lines, write_atomic};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Adapters;

use super::device;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A reward model: a checkpoint directory in Hugging Face layout (optionally with `adapters/<name>/`
    /// in PEFT layout), an rmroute run directory, or a hub id.
    #[arg(long)]
    pub model: String,
    /// JSONL of pair records (`prompt`, `chosen`, `rejected`) or of `{"id"?, "prompt", "response"}`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL; standard output when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The adapter to score with, when the model directory has several.
    #[arg(long)]
    pub adapter: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Longest input in tokens (the end of the prompt and the start of the response are kept).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One input line: a pair, or one response.
enum Item {
    Pair { id: String, prompt: String, chosen: String, rejected: String },
    Single { id: String, prompt: String, response: String },
}

fn read_items(path: &Path) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    for line in read_lines(path)? {
        let (number, text) = line?;
        if text.trim().is_empty() {
            continue;
        }
        let at = At { file: path, line: number };
        let obj = at.parse_object(&text)?;
        let id = match obj.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => (items.len() + 1).to_string(),
        };
        let prompt = at.str_field(&obj, "prompt")?.to_string();
        items.push(if obj.contains_key("response") {
            Item::Single { id, prompt, response: at.str_field(&obj, "response")?.to_string() }
        } else if obj.contains_key("chosen") || obj.contains_key("rejected") {
            Item::Pair {
                id,
                prompt,
                chosen: at.str_field(&obj, "chosen")?.to_string(),
                rejected: at.str_field(&obj, "rejected")?.to_string(),
            }
        } else {
            return Err(at.err(Some("response"), "missing (expected `response`, or `chosen` and `rejected`)").into());
        });
    }
    Ok(items)
}

/// Loads a model directory with its adapter, if it has any; returns the adapters to score with.
pub fn load_for_scoring(dir: &Path, adapter: Option<&str>, opts: &LoadOptions) -> Result<(RewardModel, Adapters)> {
    let mut model = RewardModel::load(dir, opts)?;
    let adapters_dir = dir.join("adapters");
    let mut names: Vec<String> = Vec::new();
    if adapters_dir.is_dir() {
        for entry in std::fs::read_dir(&adapters_dir)? {
            let path = entry?.path();
            if path.join("adapter_config.json").is_file() {
                let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                model.load_adapter(&path, &name, false)?;
                names.push(name);
            }
        }
    }
    names.sort();
    let chosen = match (adapter, names.as_slice()) {
        (Some(a), _) if names.iter().any(|n| n == a) => Adapters::One(a.to_string()),
        (Some(a), _) => bail!("no adapter `{a}` in {} (have: {})", adapters_dir.display(), names.join(", ")),
        (None, []) => Adapters::None,
        (None, [one]) => Adapters::One(one.clone()),
        (None, _) => bail!("{} holds several adapters ({}): pick one with --adapter", dir.display(), names.join(", ")),
    };
    Ok((model, chosen))
}

pub fn run(args: ScoreArgs) -> Result<()> {
    let dir = resolve_model_dir(&args.model)?;
    let opts = LoadOptions { device: device(&args.device)?, ..Default::default() };
    let (mut model, adapters) = load_for_scoring(&dir, args.adapter.as_deref(), &opts)
        .with_context(|| format!("loading the model in {}", dir.display()))?;
    if let Some(max) = args.max_length {
        model.max_length = max;
    }
    let items = read_items(&args.input)?;
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(items.len() as u64) };
    bar.set_style(ProgressStyle::with_template(
        "scoring {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
    )?);
    let mut lines = Vec::with_capacity(items.len());
    for chunk in items.chunks(args.batch_size.max(1)) {
        let mut inputs: Vec<(&str, &str)> = Vec::new();
        for item in chunk {
            match item {
                Item::Pair { prompt, chosen, rejected, .. } => {
                    inputs.push((prompt, chosen));
                    inputs.push((prompt, rejected));
                }
                Item::Single { prompt, response, .. } => inputs.push((prompt, response)),
            }
        }
        let rewards = model.score(&inputs, inputs.len(), &adapters)?;
        let mut next = rewards.iter();
        for item in chunk {
            let mut take = || next.next().copied().unwrap_or(f32::NAN);
            lines.push(match item {
                Item::Pair { id, .. } => serde_json::json!({"id": id, "chosen": take(), "rejected": take()}),
                Item::Single { id, .. } => serde_json::json!({"id": id, "reward": take()}),
            });
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let mut text = Vec::new();
    for line in &lines {
        serde_json::to_writer(&mut text, line)?;
        text.push(b'\n');
    }
    match &args.out {
        Some(path) => write_atomic(path, &text).with_context(|| format!("writing {}", path.display()))?,
        None => std::io::stdout().write_all(&text)?,
    }
    Ok(())
}
