//! `rmroute eval`: pairwise accuracy per domain, parameter counts, inference time per step (one input,
//! as the paper's Table 6 measures it) and throughput at batch 32, written to `results.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::data::read_pairs;
use crate::model::RewardModel;
use crate::nn::Adapters;
use crate::train::loss::pairwise_correct;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainResult {
    pub pairs: usize,
    pub accuracy: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    pub method: String,
    pub backbone: String,
    pub seed: u64,
    pub domains: BTreeMap<String, DomainResult>,
    /// Mean of the per-domain accuracies.
    pub mean_accuracy: f64,
    pub total_parameters: usize,
    pub trainable_parameters: usize,
    /// Mean seconds to score one input alone.
    pub seconds_per_step: f64,
    /// Pairs per second when scoring at batch 32.
    pub pairs_per_second: f64,
    pub epoch_seconds: Vec<f64>,
}

/// Accuracy of `model` (with `adapters`) on each domain's `test.jsonl` in `data`.
pub fn accuracy_by_domain(
    model: &RewardModel,
    adapters: &Adapters,
    data: &Path,
    domains: &[String],
    max_pairs: Option<usize>,
) -> Result<(BTreeMap<String, DomainResult>, f64)> {
    let mut results = BTreeMap::new();
    let (mut pairs_done, mut seconds) = (0usize, 0f64);
    for domain in domains {
        let path = data.join(domain).join("test.jsonl");
        let mut records = read_pairs(&path).with_context(|| format!("reading {}", path.display()))?;
        if let Some(cap) = max_pairs {
            records.truncate(cap);
        }
        let mut correct = 0;
        for chunk in records.chunks(32) {
            let inputs: Vec<(&str, &str)> = chunk
                .iter()
                .map(|p| (p.prompt.as_str(), p.chosen.as_str()))
                .chain(chunk.iter().map(|p| (p.prompt.as_str(), p.rejected.as_str())))
                .collect();
            let start = Instant::now();
            let rewards = model.score(&inputs, inputs.len(), adapters)?;
            seconds += start.elapsed().as_secs_f64();
            let (chosen, rejected) = rewards.split_at(chunk.len());
            correct += pairwise_correct(chosen, rejected);
        }
        pairs_done += records.len();
        let accuracy = if records.is_empty() { 0.0 } else { correct as f64 / records.len() as f64 };
        results.insert(domain.clone(), DomainResult { pairs: records.len(), accuracy });
    }
    Ok((results, pairs_done as f64 / seconds.max(1e-9)))
}

/// Mean seconds to score one `(prompt, response)` alone, over up to `n` inputs (after one warm-up).
pub fn seconds_per_step(model: &RewardModel, adapters: &Adapters, inputs: &[(&str, &str)], n: usize) -> Result<f64> {
    let Some(first) = inputs.first() else { return Ok(0.0) };
    model.score(&[*first], 1, adapters)?;
    let take = inputs.len().min(n).max(1);
    let start = Instant::now();
    for input in &inputs[..take] {
        model.score(&[*input], 1, adapters)?;
    }
    Ok(start.elapsed().as_secs_f64() / take as f64)
}
