//! `rmroute eval`: pairwise accuracy per domain (routed and oracle for a routed method, with the
//! router's own accuracy and confusion matrix), parameter counts, inference time per step (one input,
//! as the paper's Table 6 measures it), throughput at batch 32, and what the method reports beyond
//! accuracy, written to `results.json`.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::data::domains::{domain_test_sets, task_test_sets, test_pairs, TestSets};
pub use crate::methods::accuracy::DomainResult;
pub use crate::methods::scorer::{ExpertResult, ExpertShares, SwitchingTiming, TaskResults};

use crate::methods::accuracy::{count_correct, count_correct_indexed};
use crate::methods::{DomainRouter, Scorer};
use crate::nn::bf16::Precision;

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
    pub parts: Vec<crate::methods::manifest::Part>,
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

/// The router on the test prompts: accuracy overall and per domain, counted over test pairs (each
/// pair's prompt routed) and over distinct prompts (a prompt of several pairs counted once), and the
/// confusion matrix over test pairs (`confusion[true][predicted]`, in `labels` order).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouterResults {
    pub labels: Vec<String>,
    pub accuracy: f64,
    pub per_domain: BTreeMap<String, f64>,
    /// Over distinct prompts; absent in results written before it was counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub per_domain_prompts: BTreeMap<String, f64>,
    /// Distinct test prompts per domain.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub prompts: BTreeMap<String, usize>,
    pub confusion: Vec<Vec<usize>>,
}

/// The router's pick for each test pair (by domain, in the set's order) and its results. Each distinct
/// prompt of a domain is routed once, 32 at a time.
pub fn router_results(
    router: &dyn DomainRouter,
    sets: &TestSets,
) -> Result<(RouterResults, BTreeMap<String, Vec<usize>>)> {
    let labels = router.domains().to_vec();
    let mut confusion = vec![vec![0usize; labels.len()]; labels.len()];
    let (mut per_domain, mut per_domain_prompts, mut prompts_count) =
        (BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    let (mut prompt_hits, mut prompt_total) = (0usize, 0usize);
    let mut picks = BTreeMap::new();
    for (domain, records) in sets {
        let truth = labels.iter().position(|l| l == domain).with_context(|| {
            format!("the router does not know domain `{domain}` (it chooses among {})", labels.join(", "))
        })?;
        let mut distinct: Vec<&str> = records.iter().map(|p| p.prompt.as_str()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        let routed = router.route(&distinct, 32)?;
        let picked: Vec<usize> = records
            .iter()
            .map(|p| distinct.binary_search(&p.prompt.as_str()).map(|i| routed[i]))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("a prompt lost while routing"))?;
        for &p in &picked {
            confusion[truth][p] += 1;
        }
        let hits = routed.iter().filter(|&&p| p == truth).count();
        per_domain.insert(domain.clone(), picked.iter().filter(|&&p| p == truth).count() as f64 / picked.len() as f64);
        per_domain_prompts.insert(domain.clone(), hits as f64 / routed.len().max(1) as f64);
        prompts_count.insert(domain.clone(), routed.len());
        (prompt_hits, prompt_total) = (prompt_hits + hits, prompt_total + routed.len());
        picks.insert(domain.clone(), picked);
    }
    let total: usize = confusion.iter().flatten().sum();
    let hits: usize = (0..labels.len()).map(|i| confusion[i][i]).sum();
    let results = RouterResults {
        labels,
        accuracy: hits as f64 / total.max(1) as f64,
        per_domain,
        prompt_accuracy: Some(prompt_hits as f64 / prompt_total.max(1) as f64),
        per_domain_prompts,
        prompts: prompts_count,
        confusion,
    };
    Ok((results, picks))
}

/// Routed and oracle accuracy per domain, and the router's own results, for a routed scorer.
pub struct RoutedResults {
    pub routed: BTreeMap<String, DomainResult>,
    pub oracle: BTreeMap<String, DomainResult>,
    pub router: RouterResults,
    /// Pairs per second of routed scoring (routing included), 32 pairs at a time.
    pub pairs_per_second: f64,
}

/// Accuracy of `scorer` on each domain's test pairs (routed, for a routed scorer). Also pairs/s at
/// batch 32.
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

/// For a routed scorer: accuracy with the router's choices and with the true domains (oracle), and
/// the router's accuracy and confusion matrix on the test prompts.
pub fn routed_results(scorer: &Scorer, sets: &TestSets) -> Result<Option<RoutedResults>> {
    let Some(routed) = scorer.router() else { return Ok(None) };
    let labels = routed.domains().to_vec();
    let start = Instant::now();
    let (router, picks) = router_results(routed, sets)?;
    let mut seconds = start.elapsed().as_secs_f64();
    let mut pairs_done = 0usize;
    let (mut routed_acc, mut oracle_acc) = (BTreeMap::new(), BTreeMap::new());
    for (domain, records) in sets {
        let picked = &picks[domain];
        let start = Instant::now();
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
