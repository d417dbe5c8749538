//! `rmroute score`: rewards for pair records or single responses, in batches.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use rmroute::backbone::resolve_model_dir;
use rmroute::data::error::At;
use rmroute::data::io::{read_lines, write_atomic};
use rmroute::encoding::Truncation;
use rmroute::load::{load_scorer, ScoreOptions, Switching};
use rmroute::model::LoadOptions;

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
    /// The adapter to score with: a name under `MODEL/adapters/`, or the directory of a PEFT adapter
    /// (`adapter_config.json`, `adapter_model.safetensors`) for MODEL.
    #[arg(long)]
    pub adapter: Option<String>,
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Longest input in tokens (default: the run's `max_length`, else the model's limit).
    #[arg(long)]
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

pub fn run(args: ScoreArgs) -> Result<()> {
    if args.max_length.is_some_and(|n| n < 8) {
        bail!("--max-length must be at least 8");
    }
    let dir = resolve_model_dir(&args.model)?;
    let opts = LoadOptions { device: device(&args.device)?, ..Default::default() };
    let choice = ScoreOptions {
        adapter: args.adapter.clone(),
        max_length: args.max_length,
        truncation: args.truncation,
        switching: args.switching,
    };
    let scorer =
        load_scorer(&dir, &opts, &choice).with_context(|| format!("loading the model in {}", dir.display()))?;
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
        let scored = scorer.score(&inputs, inputs.len())?;
        let mut next = scored.rewards.iter();
        let mut routed = scored.domains.iter().flatten();
        for item in chunk {
            let mut take = || next.next().copied().unwrap_or(f32::NAN);
            let mut line = match item {
                Item::Pair { id, .. } => serde_json::json!({"id": id, "chosen": take(), "rejected": take()}),
                Item::Single { id, .. } => serde_json::json!({"id": id, "reward": take()}),
            };
            if let Some(domain) = routed.next() {
                line["domain"] = domain.clone().into();
                if matches!(item, Item::Pair { .. }) {
                    routed.next(); // the rejected response goes where its prompt went
                }
            }
            lines.push(line);
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
