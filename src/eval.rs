//! `rmroute eval`: pairwise accuracy per domain, parameter counts, inference time per step (one input,
//! as the paper's Table 6 measures it) and throughput at batch 32, written to `results.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::data::split::{mix, stable_hash};
use crate::data::{read_pairs, PairRecord};
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

/// The test pairs of `domain`: all of them, or `max_pairs` drawn with `seed` (kept in file order).
/// An empty test split is an error: an accuracy of nothing is not a number to average.
pub fn test_pairs(data: &Path, domain: &str, max_pairs: Option<usize>, seed: u64) -> Result<Vec<PairRecord>> {
    let path = data.join(domain).join("test.jsonl");
    let records = read_pairs(&path).with_context(|| format!("reading {}", path.display()))?;
    if records.is_empty() {
        bail!(
            "{} has no pairs: nothing to evaluate domain `{domain}` on (prepare it with a test split, or leave \
             the domain out)",
            path.display()
        );
    }
    let Some(cap) = max_pairs.filter(|&cap| cap < records.len()) else { return Ok(records) };
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix(seed, stable_hash(domain.as_bytes()))));
    let mut keep = order[..cap].to_vec();
    keep.sort_unstable();
    Ok(keep.into_iter().map(|i| records[i].clone()).collect())
}

/// Accuracy of `model` (with `adapters`) on each domain's `test.jsonl` in `data`; with `max_pairs`,
/// on that many pairs per domain sampled with `seed`.
pub fn accuracy_by_domain(
    model: &RewardModel,
    adapters: &Adapters,
    data: &Path,
    domains: &[String],
    max_pairs: Option<usize>,
    seed: u64,
) -> Result<(BTreeMap<String, DomainResult>, f64)> {
    let mut results = BTreeMap::new();
    let (mut pairs_done, mut seconds) = (0usize, 0f64);
    for domain in domains {
        let records = test_pairs(data, domain, max_pairs, seed)?;
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
        let accuracy = correct as f64 / records.len() as f64;
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
