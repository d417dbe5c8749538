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

use crate::bf16::Precision;
use crate::data::split::{mix, stable_hash};
use crate::data::{read_pairs, PairRecord};
use crate::load::{Kind, RoutedParts, Scorer, Switching};
use crate::methods::dmoerm::aspect_pairs;
use crate::nn::Adapters;
use crate::train::loss::pairwise_correct;
use crate::train::objective::chosen_then_rejected;

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
    /// A routed method: accuracy when every pair is scored by its true domain's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle: Option<BTreeMap<String, DomainResult>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oracle_mean_accuracy: Option<f64>,
    /// A routed method: how often the router picks each prompt's true domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router: Option<RouterResults>,
    /// MoRE: the share of gate weight each domain's inputs give each expert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertShares>,
    /// The parts of a run of several models, for Table 3.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<crate::run::Part>,
    /// ARLISS: routed scoring of mixed-domain batches with each way of switching adapters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switching: Option<Vec<SwitchingTiming>>,
    /// The number format the linear layers scored in (`--dtype`); absent means f32.
    #[serde(default, skip_serializing_if = "is_f32")]
    pub precision: Precision,
    /// Resident memory of the evaluating process (Linux).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    /// DMoERM: each task's inner model, stage by stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<BTreeMap<String, TaskResults>>,
}

/// DMoERM: one task's inner model on the task's test pairs (the true task, no routing).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskResults {
    /// The task had no aspect labels: its stage-1 reward model alone is its reward (a single expert).
    pub single_expert: bool,
    /// The stage-1 reward model alone, on the overall preference.
    pub phase1: DomainResult,
    /// Each capability point's expert, with its own head.
    pub experts: BTreeMap<String, ExpertResult>,
    /// The aggregator over the experts, on the overall preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregator: Option<DomainResult>,
    /// Aspects the task's pairs carry that got no expert (under `dmoerm.min_aspect_pairs`), with their
    /// labelled stage-1 pairs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_expert: BTreeMap<String, usize>,
}

/// One capability expert: on its own point (the test pairs labelled on it, turned to its preference;
/// none when no test pair is), and on the overall preference.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertResult {
    pub point: Option<DomainResult>,
    pub overall: DomainResult,
}

/// For a DMoERM scorer: each task's stage-1 model, experts and aggregator on its test pairs.
pub fn task_results(scorer: &Scorer, sets: &TestSets) -> Result<Option<BTreeMap<String, TaskResults>>> {
    let Kind::Routed(routed) = &scorer.kind else { return Ok(None) };
    let RoutedParts::Tasks { tasks, .. } = &routed.parts else { return Ok(None) };
    let mut out = BTreeMap::new();
    for (domain, records) in sets {
        let inner = tasks.get(domain).with_context(|| format!("the run has no task `{domain}`"))?;
        let phase1 = accuracy(records, |inputs| inner.model.score(inputs, inputs.len(), &Adapters::None))?;
        let mut experts = BTreeMap::new();
        for (aspect, adapter) in &inner.experts {
            let by_expert = |inputs: &[(&str, &str)]| inner.score_expert(adapter, inputs, inputs.len());
            let labelled = aspect_pairs(records, aspect);
            let point = if labelled.is_empty() { None } else { Some(accuracy(&labelled, by_expert)?) };
            experts.insert(aspect.clone(), ExpertResult { point, overall: accuracy(records, by_expert)? });
        }
        let aggregator = match &inner.aggregator {
            Some(_) => Some(accuracy(records, |inputs| inner.score(inputs, inputs.len()))?),
            None => None,
        };
        let without_expert = scorer
            .run
            .as_ref()
            .and_then(|meta| meta.aspect_pairs.get(domain))
            .map(|counts| {
                // Aspects no pair carries are not "too few": the task simply has none.
                counts
                    .iter()
                    .filter(|(a, n)| **n > 0 && !experts.contains_key(*a))
                    .map(|(a, n)| (a.clone(), *n))
                    .collect()
            })
            .unwrap_or_default();
        let single_expert = inner.experts.is_empty();
        out.insert(domain.clone(), TaskResults { single_expert, phase1, experts, aggregator, without_expert });
    }
    Ok(Some(out))
}

/// Routed scoring of mixed-domain batches (routing included) with one way of switching adapters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchingTiming {
    pub mode: Switching,
    /// Mean seconds to score one input from each domain together (the paper's Table 6 step).
    pub seconds_per_step: f64,
    /// Pairs per second, 32 pairs of mixed domains at a time.
    pub pairs_per_second: f64,
}

/// Resident memory in bytes: once the model is loaded, and the process's peak.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Memory {
    pub loaded_bytes: u64,
    pub peak_bytes: u64,
}

/// `(resident, peak resident)` bytes of this process, from `/proc/self/status`; none elsewhere.
pub fn resident_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// ARLISS: routed scoring of mixed-domain batches, timed with each way of switching adapters.
/// `by_domain` holds each domain's test pairs; batches interleave them (one of each domain in turn).
/// None for a scorer with nothing to switch.
pub fn switching_timings(scorer: &mut Scorer, by_domain: &[Vec<PairRecord>]) -> Result<Option<Vec<SwitchingTiming>>> {
    let Kind::Routed(routed) = &mut scorer.kind else { return Ok(None) };
    let Some(original) = routed.switching() else { return Ok(None) };
    let longest = by_domain.iter().map(Vec::len).max().unwrap_or(0);
    let mixed: Vec<&PairRecord> = (0..longest).flat_map(|i| by_domain.iter().filter_map(move |d| d.get(i))).collect();
    let steps: Vec<Vec<(&str, &str)>> = (0..longest.min(10))
        .map(|i| by_domain.iter().filter_map(|d| d.get(i)).map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect())
        .collect();
    let mut timings = Vec::new();
    for mode in [Switching::OnePass, Switching::Sequential] {
        routed.set_switching(mode);
        let score = |inputs: &[(&str, &str)]| routed.score(inputs, inputs.len()).map(|_| ());
        if let Some(first) = steps.first() {
            score(first)?; // warm-up
        }
        let start = Instant::now();
        for step in &steps {
            score(step)?;
        }
        let seconds_per_step = start.elapsed().as_secs_f64() / steps.len().max(1) as f64;
        let start = Instant::now();
        for chunk in mixed.chunks(32) {
            score(&chosen_then_rejected(chunk))?;
        }
        let pairs_per_second = mixed.len() as f64 / start.elapsed().as_secs_f64().max(1e-9);
        timings.push(SwitchingTiming { mode, seconds_per_step, pairs_per_second });
    }
    routed.set_switching(original);
    Ok(Some(timings))
}

/// The router on the test prompts: accuracy overall and per domain, and the confusion matrix
/// (`confusion[true][predicted]`, in `labels` order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterResults {
    pub labels: Vec<String>,
    pub accuracy: f64,
    pub per_domain: BTreeMap<String, f64>,
    pub confusion: Vec<Vec<usize>>,
}

/// Where MoRE's gate sends each domain: `shares[domain][e]` is the mean gate weight of expert `e` over
/// the domain's test inputs (chosen and rejected responses), each row summing to 1.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExpertShares {
    pub experts: usize,
    pub shares: BTreeMap<String, Vec<f64>>,
}

/// For a MoRE scorer: the gate's expert shares per domain on the test pairs.
pub fn expert_shares(scorer: &Scorer, sets: &TestSets) -> Result<Option<ExpertShares>> {
    let Kind::More(model) = &scorer.kind else { return Ok(None) };
    let experts = model.head.experts();
    let mut shares = BTreeMap::new();
    for (domain, records) in sets {
        let inputs: Vec<(&str, &str)> = records
            .iter()
            .flat_map(|p| [(p.prompt.as_str(), p.chosen.as_str()), (p.prompt.as_str(), p.rejected.as_str())])
            .collect();
        let (_, gates) = model.score_with_gates(&inputs, 32)?;
        let mut sum = vec![0f64; experts];
        for row in &gates {
            for (s, g) in sum.iter_mut().zip(row) {
                *s += f64::from(*g);
            }
        }
        shares.insert(domain.clone(), sum.iter().map(|s| s / gates.len().max(1) as f64).collect());
    }
    Ok(Some(ExpertShares { experts, shares }))
}

/// Routed and oracle accuracy per domain, and the router's own results, for a routed scorer.
pub struct RoutedResults {
    pub routed: BTreeMap<String, DomainResult>,
    pub oracle: BTreeMap<String, DomainResult>,
    pub router: RouterResults,
    /// Pairs per second of routed scoring (routing included), 32 pairs at a time.
    pub pairs_per_second: f64,
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
    Ok(sample(records, domain, max_pairs, seed))
}

/// `max_pairs` of `records` drawn with `seed` and the set's name, kept in file order; all of them
/// without a cap.
fn sample(records: Vec<PairRecord>, name: &str, max_pairs: Option<usize>, seed: u64) -> Vec<PairRecord> {
    let Some(cap) = max_pairs.filter(|&cap| cap < records.len()) else { return records };
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix(seed, stable_hash(name.as_bytes()))));
    let mut keep = order[..cap].to_vec();
    keep.sort_unstable();
    keep.into_iter().map(|i| records[i].clone()).collect()
}

/// The test pairs a run is evaluated on, by domain, or by task for a DMoERM run routed by the records'
/// `task` fields.
pub type TestSets = BTreeMap<String, Vec<PairRecord>>;

/// Each domain's test pairs ([`test_pairs`]).
pub fn domain_test_sets(data: &Path, domains: &[String], max_pairs: Option<usize>, seed: u64) -> Result<TestSets> {
    domains.iter().map(|d| Ok((d.clone(), test_pairs(data, d, max_pairs, seed)?))).collect()
}

/// The test pairs of `domains` grouped by their records' `task` (every record must carry one), with
/// `max_pairs` per task drawn as [`test_pairs`] draws them per domain.
pub fn task_test_sets(data: &Path, domains: &[String], max_pairs: Option<usize>, seed: u64) -> Result<TestSets> {
    let by_domain = domain_test_sets(data, domains, None, seed)?;
    let tasks = crate::data::task::group_by_task(&by_domain)?.with_context(|| {
        format!(
            "the run routes by the records' `task`, and the test pairs of {} in {} carry none",
            domains.join(", "),
            data.display()
        )
    })?;
    Ok(tasks
        .into_iter()
        .map(|(task, records)| {
            let kept = sample(records, &task, max_pairs, seed);
            (task, kept)
        })
        .collect())
}

/// Accuracy of `scorer` on each domain's `test.jsonl` in `data` (routed, for a routed scorer); with
/// `max_pairs`, on that many pairs per domain sampled with `seed`. Also pairs/s at batch 32.
pub fn accuracy_by_domain(scorer: &Scorer, sets: &TestSets) -> Result<(BTreeMap<String, DomainResult>, f64)> {
    let mut results = BTreeMap::new();
    let (mut pairs_done, mut seconds) = (0usize, 0f64);
    for (domain, records) in sets {
        let start = Instant::now();
        let correct = count_correct(records, |inputs| Ok(scorer.score(inputs, inputs.len())?.rewards))?;
        seconds += start.elapsed().as_secs_f64();
        pairs_done += records.len();
        let accuracy = correct as f64 / records.len() as f64;
        results.insert(domain.clone(), DomainResult { pairs: records.len(), accuracy });
    }
    Ok((results, pairs_done as f64 / seconds.max(1e-9)))
}

/// The share of `records` whose chosen response `score` ranks above the rejected one.
fn accuracy(records: &[PairRecord], score: impl FnMut(&[(&str, &str)]) -> Result<Vec<f32>>) -> Result<DomainResult> {
    let correct = count_correct(records, score)?;
    Ok(DomainResult { pairs: records.len(), accuracy: correct as f64 / records.len().max(1) as f64 })
}

/// Pairs whose chosen response out-scores the rejected one, scoring 32 pairs at a time, shortest
/// first (`bucket`: each batch pads to its longest row, so similar lengths together pad little).
fn count_correct(records: &[PairRecord], mut score: impl FnMut(&[(&str, &str)]) -> Result<Vec<f32>>) -> Result<usize> {
    count_correct_indexed(records, |_, inputs| score(inputs))
}

/// [`count_correct`], telling `score` which records (their indices in `records`) each batch holds.
fn count_correct_indexed(
    records: &[PairRecord],
    mut score: impl FnMut(&[usize], &[(&str, &str)]) -> Result<Vec<f32>>,
) -> Result<usize> {
    let mut correct = 0;
    for chunk in crate::bucket::pair_order(records).chunks(32) {
        let refs: Vec<&PairRecord> = chunk.iter().map(|&i| &records[i]).collect();
        let rewards = score(chunk, &chosen_then_rejected(&refs))?;
        let (chosen, rejected) = rewards.split_at(chunk.len());
        correct += pairwise_correct(chosen, rejected);
    }
    Ok(correct)
}

/// For a routed scorer: accuracy with the router's choices and with the true domains (oracle), and
/// the router's accuracy and confusion matrix on the test prompts.
pub fn routed_results(scorer: &Scorer, sets: &TestSets) -> Result<Option<RoutedResults>> {
    let Kind::Routed(routed) = &scorer.kind else { return Ok(None) };
    let labels = routed.domains.clone();
    let mut confusion = vec![vec![0usize; labels.len()]; labels.len()];
    let (mut pairs_done, mut seconds) = (0usize, 0f64);
    let (mut routed_acc, mut oracle_acc, mut per_domain) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (domain, records) in sets {
        let truth = labels.iter().position(|l| l == domain).with_context(|| {
            format!("the router does not know domain `{domain}` (it chooses among {})", labels.join(", "))
        })?;
        let prompts: Vec<&str> = records.iter().map(|p| p.prompt.as_str()).collect();
        let start = Instant::now();
        let picked = routed.route(&prompts, 32)?;
        for &p in &picked {
            confusion[truth][p] += 1;
        }
        per_domain.insert(domain.clone(), picked.iter().filter(|&&p| p == truth).count() as f64 / picked.len() as f64);
        // Routed: the chosen and the rejected response of a pair go to the model its prompt routes to.
        let correct = count_correct_indexed(records, |indices, inputs| {
            let chosen: Vec<String> = indices.iter().map(|&i| labels[picked[i]].clone()).collect();
            let both: Vec<String> = chosen.iter().chain(&chosen).cloned().collect();
            routed.score_in(inputs, &both, inputs.len())
        })?;
        seconds += start.elapsed().as_secs_f64();
        pairs_done += records.len();
        routed_acc.insert(
            domain.clone(),
            DomainResult { pairs: records.len(), accuracy: correct as f64 / records.len() as f64 },
        );
        let correct = count_correct(records, |inputs| scorer.score_as(inputs, domain, inputs.len()))?;
        oracle_acc.insert(
            domain.clone(),
            DomainResult { pairs: records.len(), accuracy: correct as f64 / records.len() as f64 },
        );
    }
    let total: usize = confusion.iter().flatten().sum();
    let hits: usize = (0..labels.len()).map(|i| confusion[i][i]).sum();
    let router = RouterResults { labels, accuracy: hits as f64 / total.max(1) as f64, per_domain, confusion };
    let pairs_per_second = pairs_done as f64 / seconds.max(1e-9);
    Ok(Some(RoutedResults { routed: routed_acc, oracle: oracle_acc, router, pairs_per_second }))
}

/// Mean seconds to score one `(prompt, response)` alone (routing included), over up to `n` inputs
/// (after one warm-up).
pub fn seconds_per_step(scorer: &Scorer, inputs: &[(&str, &str)], n: usize) -> Result<f64> {
    let Some(first) = inputs.first() else { return Ok(0.0) };
    scorer.score(&[*first], 1)?;
    let take = inputs.len().min(n).max(1);
    let start = Instant::now();
    for input in &inputs[..take] {
        scorer.score(&[*input], 1)?;
    }
    Ok(start.elapsed().as_secs_f64() / take as f64)
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}
