//! `rmroute score`: rewards for pair records or single responses, in batches.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use rmroute::data::error::At;
use rmroute::data::lines::read_lines;
use rmroute::io::write_atomic;

use super::model::ModelArgs;

#[derive(Debug, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL of pair records (`prompt`, `chosen`, `rejected`) or of `{"id"?, "prompt", "response"}`.
    #[arg(long)]
    pub input: PathBuf,
    /// Output JSONL; standard output when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 16, value_parser = super::at_least_one::<usize>)]
    pub batch_size: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// One input line: a pair, or one response.
enum Item {
    Pair { id: String, prompt: String, chosen: String, rejected: String },
    Single { id: String, prompt: String, response: String },
}

impl Item {
    /// Bytes, standing in for tokens when batches are cut by length.
    fn length(&self) -> usize {
        match self {
            Item::Pair { prompt, chosen, rejected, .. } => prompt.len() + chosen.len().max(rejected.len()),
            Item::Single { prompt, response, .. } => prompt.len() + response.len(),
        }
    }
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
    let (_, scorer) = args.model.load()?;
    let items = read_items(&args.input)?;
    let bar = if args.quiet { ProgressBar::hidden() } else { ProgressBar::new(items.len() as u64) };
    bar.set_style(ProgressStyle::with_template(
        "scoring {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {per_sec}",
    )?);
    // Batches are cut shortest first (each pads to its longest row); lines are written in input order.
    let lengths: Vec<usize> = items.iter().map(Item::length).collect();
    let order = rmroute::data::order::length_order(&lengths);
    let mut lines = vec![serde_json::Value::Null; items.len()];
    for indices in order.chunks(args.batch_size.max(1)) {
        let chunk: Vec<&Item> = indices.iter().map(|&i| &items[i]).collect();
        let mut inputs: Vec<(&str, &str)> = Vec::new();
        for item in &chunk {
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
        for (item, &index) in chunk.iter().zip(indices) {
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
            lines[index] = line;
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
