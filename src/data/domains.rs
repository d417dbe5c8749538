//! Domains of a prepared data folder and their pairs: which folders are domains, each domain's training
//! pairs (capped by a seeded draw), and the test sets a run is evaluated on (by domain, or by the
//! records' `task`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::split::{mix, stable_hash};
use super::{read_pairs, PairRecord};

/// The domains to use: those named, or every folder of `data` with a `train.jsonl` (any name: a
/// user's `code` or `math` is a domain like the five of the paper), sorted.
pub fn resolve_domains(data: &Path, named: &[String]) -> Result<Vec<String>> {
    if !named.is_empty() {
        for d in named {
            let f = data.join(d).join("train.jsonl");
            if !f.is_file() {
                bail!("no {} (run `rmroute prepare` first, or fix `domains`)", f.display());
            }
        }
        return Ok(named.to_vec());
    }
    let mut found: Vec<String> = std::fs::read_dir(data)
        .with_context(|| format!("reading the prepared data folder {}", data.display()))?
        .flatten()
        .filter(|e| e.path().join("train.jsonl").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| !name.starts_with('.'))
        .collect();
    found.sort();
    if found.is_empty() {
        bail!(
            "no prepared domains in {} (run `rmroute prepare --input RAW --out {}` first)",
            data.display(),
            data.display()
        );
    }
    Ok(found)
}

/// One domain's training pairs, capped at `max_pairs` by a shuffle seeded with `seed`; none is an error.
pub fn load_domain_pairs(data: &Path, domain: &str, max_pairs: Option<usize>, seed: u64) -> Result<Vec<PairRecord>> {
    let path = data.join(domain).join("train.jsonl");
    let mut records = read_pairs(&path)?;
    if let Some(cap) = max_pairs {
        records.shuffle(&mut StdRng::seed_from_u64(mix(seed, 0x7061_6972)));
        records.truncate(cap);
    }
    if records.is_empty() {
        bail!("{} has no pairs: nothing to train domain `{domain}` on", path.display());
    }
    Ok(records)
}

/// The training pairs of `domains` (resolved as [`resolve_domains`] does), each domain capped as
/// [`load_domain_pairs`] caps it, in domain order.
pub fn load_train_pairs(
    data: &Path,
    named: &[String],
    max_pairs: Option<usize>,
    seed: u64,
) -> Result<(Vec<String>, Vec<PairRecord>)> {
    let domains = resolve_domains(data, named)?;
    let mut pairs = Vec::new();
    for domain in &domains {
        pairs.extend(load_domain_pairs(data, domain, max_pairs, seed)?);
    }
    if pairs.is_empty() {
        bail!("no training pairs in {} for domains {}", data.display(), domains.join(", "));
    }
    Ok((domains, pairs))
}

/// The test pairs a run is evaluated on, by domain, or by task for a DMoERM run routed by the records'
/// `task` fields.
pub type TestSets = BTreeMap<String, Vec<PairRecord>>;

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

/// Each domain's test pairs ([`test_pairs`]).
pub fn domain_test_sets(data: &Path, domains: &[String], max_pairs: Option<usize>, seed: u64) -> Result<TestSets> {
    domains.iter().map(|d| Ok((d.clone(), test_pairs(data, d, max_pairs, seed)?))).collect()
}

/// The test pairs of `domains` grouped by their records' `task` (every record must carry one), with
/// `max_pairs` per task drawn as [`test_pairs`] draws them per domain.
pub fn task_test_sets(data: &Path, domains: &[String], max_pairs: Option<usize>, seed: u64) -> Result<TestSets> {
    let by_domain = domain_test_sets(data, domains, None, seed)?;
    let tasks = super::task::group_by_task(&by_domain)?.with_context(|| {
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
