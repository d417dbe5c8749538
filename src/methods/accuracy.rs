//! Pairwise accuracy of any scorer on pair records: the share of pairs whose chosen response scores
//! strictly higher than the rejected one (a tie counts as wrong), scored 32 pairs at a time, shortest
//! first.

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::data::order::pair_order;
use crate::data::PairRecord;
use crate::train::loss::pairwise_correct;
use crate::train::objective::chosen_then_rejected;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DomainResult {
    pub pairs: usize,
    pub accuracy: f64,
}

/// The share of `records` whose chosen response `score` ranks above the rejected one.
pub fn accuracy(
    records: &[PairRecord],
    score: impl FnMut(&[(&str, &str)]) -> Result<Vec<f32>>,
) -> Result<DomainResult> {
    let correct = count_correct(records, score)?;
    Ok(DomainResult { pairs: records.len(), accuracy: correct as f64 / records.len().max(1) as f64 })
}

/// Pairs whose chosen response out-scores the rejected one, scoring 32 pairs at a time, shortest
/// first (each batch pads to its longest row, so similar lengths together pad little).
pub fn count_correct(
    records: &[PairRecord],
    mut score: impl FnMut(&[(&str, &str)]) -> Result<Vec<f32>>,
) -> Result<usize> {
    count_correct_indexed(records, |_, inputs| score(inputs))
}

/// [`count_correct`], telling `score` which records (their indices in `records`) each batch holds.
pub fn count_correct_indexed(
    records: &[PairRecord],
    mut score: impl FnMut(&[usize], &[(&str, &str)]) -> Result<Vec<f32>>,
) -> Result<usize> {
    let mut correct = 0;
    for chunk in pair_order(records).chunks(32) {
        let refs: Vec<&PairRecord> = chunk.iter().map(|&i| &records[i]).collect();
        let rewards = score(chunk, &chosen_then_rejected(&refs))?;
        let (chosen, rejected) = rewards.split_at(chunk.len());
        correct += pairwise_correct(chosen, rejected);
    }
    Ok(correct)
}
