//! The splits a labelling run reads and writes back: a label the run did not write is never replaced
//! without `--overwrite`, each split is rewritten (atomically) once its questions are answered, and the
//! run's summary counts the outcome per split and capability point.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::answers::LoggedLabel;
use super::{Aspect, AspectCounts, LabelSummary, PairOutcome, Verdict};
use crate::data::lines::read_lines;
use crate::data::PairRecord;
use crate::io::write_atomic_with;

/// One split as read; shared with the workers.
pub(super) struct SplitData {
    pub(super) domain: usize,
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) records: Vec<PairRecord>,
}

/// One split's answers so far: `[chosen first, rejected first]` per record and capability point.
pub(super) struct SplitAnswers {
    pub(super) answers: Vec<[Option<Verdict>; 2]>,
    pub(super) pending: usize,
}

/// Refuses to replace a label of an asked point that label-aspects did not write (`prepare`'s human
/// labels, say): the split file is its only copy.
pub(super) fn refuse_foreign_labels(
    path: &Path,
    split: &str,
    records: &[PairRecord],
    aspects: &[Aspect],
    logged: &HashSet<LoggedLabel>,
) -> Result<()> {
    let mut foreign = records.iter().enumerate().flat_map(|(r, record)| {
        aspects.iter().filter_map(move |aspect| {
            let label = *record.aspects.as_ref()?.get(&aspect.name)?;
            let key = (split.to_string(), record.id.clone(), aspect.name.clone(), label);
            (!logged.contains(&key)).then_some((r, &aspect.name))
        })
    });
    let Some((r, name)) = foreign.next() else { return Ok(()) };
    let more = match foreign.count() {
        0 => String::new(),
        n => format!(" (and {n} more in this file)"),
    };
    bail!(
        "{}:{}: the pair already has a `{name}` label that label-aspects did not write{more}, and asking for \
         `{name}` would replace it; name the capability point differently in the aspects file (such as \
         `llm_{name}`), or pass --overwrite to replace such labels",
        path.display(),
        line_of(path, r)?
    )
}

/// The line of a split file holding its `index`-th record (`read_pairs` skips blank lines).
fn line_of(path: &Path, index: usize) -> Result<usize> {
    let mut records = 0;
    for line in read_lines(path)? {
        let (number, text) = line?;
        if !text.trim().is_empty() {
            if records == index {
                return Ok(number);
            }
            records += 1;
        }
    }
    Ok(index + 1)
}

/// The split's records with the asked capability points set from the answers: a consistent pair gets
/// its label, an inconsistent one loses the key (a label that label-aspects wrote, or one --overwrite
/// replaces), an unanswered one keeps what it had; other keys stay as they were.
fn labelled(data: &SplitData, answers: &[[Option<Verdict>; 2]], aspects: &[Aspect]) -> Vec<PairRecord> {
    data.records
        .iter()
        .enumerate()
        .map(|(r, record)| {
            let mut map = record.aspects.clone().unwrap_or_default();
            for (a, aspect) in aspects.iter().enumerate() {
                match PairOutcome::of(answers[r * aspects.len() + a]) {
                    PairOutcome::Label(label) => map.insert(aspect.name.clone(), label),
                    PairOutcome::Inconsistent => map.remove(&aspect.name),
                    PairOutcome::Unanswered => None,
                };
            }
            PairRecord { aspects: (!map.is_empty()).then_some(map), ..record.clone() }
        })
        .collect()
}

/// Rewrites the split file atomically when its labels changed; true when it did.
pub(super) fn rewrite_split(data: &SplitData, answers: &[[Option<Verdict>; 2]], aspects: &[Aspect]) -> Result<bool> {
    let records = labelled(data, answers, aspects);
    if records == data.records {
        return Ok(false);
    }
    write_pairs(&data.path, &records).with_context(|| format!("rewriting {}", data.path.display()))?;
    Ok(true)
}

fn write_pairs(path: &Path, records: &[PairRecord]) -> std::io::Result<()> {
    write_atomic_with(path, |w| {
        for record in records {
            serde_json::to_writer(&mut *w, record)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

/// The run's summary: what `model` answered for `aspects` over `domains`' `splits`.
pub(super) fn summarise(
    model: &str,
    splits: &[String],
    aspects: &[Aspect],
    domains: &[String],
    data: &[SplitData],
    state: &[SplitAnswers],
) -> LabelSummary {
    let mut summary = LabelSummary {
        model: model.to_string(),
        domains: domains.to_vec(),
        splits: splits.to_vec(),
        ..Default::default()
    };
    let empty = || -> BTreeMap<String, AspectCounts> {
        aspects.iter().map(|a| (a.name.clone(), AspectCounts::default())).collect()
    };
    summary.aspects.extend(empty());
    for (split, answers) in data.iter().zip(state) {
        let by_split = summary.by_domain.entry(domains[split.domain].clone()).or_default();
        let by_aspect = by_split.entry(split.name.clone()).or_insert_with(empty);
        for r in 0..split.records.len() {
            for (a, aspect) in aspects.iter().enumerate() {
                let outcome = PairOutcome::of(answers.answers[r * aspects.len() + a]);
                for counts in [&mut *by_aspect, &mut summary.aspects] {
                    if let Some(c) = counts.get_mut(&aspect.name) {
                        c.add(outcome);
                    }
                }
            }
        }
    }
    summary
}
