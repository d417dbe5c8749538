//! A run of several parts (RODOS, ARLISS, DMoERM), loaded: finding its parts in its manifest, their
//! directories, the run's input limits, and scoring rows by the part of their domain.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::manifest::{Part, Role, RunMeta};
use super::scorer::ScoreOptions;
use crate::model::RewardModel;

/// The directory of a run's part, checked to hold `marker` (a finished part).
pub fn part_dir(dir: &Path, part: &Part, marker: &str) -> Result<PathBuf> {
    let path = dir.join(&part.path);
    if !path.join(marker).is_file() {
        bail!(
            "{}/rmroute.json names part `{}` at {}, which is missing or incomplete (train it again with --resume, \
             or restore the directory)",
            dir.display(),
            part.name,
            path.display()
        );
    }
    Ok(path)
}

/// The run's part of `role` for `domain` (none: any domain).
pub fn find_part<'a>(dir: &Path, meta: &'a RunMeta, role: Role, domain: Option<&str>) -> Result<&'a Part> {
    meta.parts.iter().find(|p| p.role == role && (domain.is_none() || p.domain.as_deref() == domain)).with_context(
        || {
            let what = match (role, domain) {
                (Role::Router, _) => "no router among its parts".to_string(),
                (_, Some(domain)) => format!("no reward part for domain `{domain}`"),
                (_, None) => "no such part".to_string(),
            };
            format!("{}/rmroute.json lists {what}", dir.display())
        },
    )
}

/// Sets the run's length limit and truncation on `model`, unless the caller chose others.
pub fn run_limits(model: &mut RewardModel, meta: &RunMeta, choice: &ScoreOptions) -> Result<()> {
    let max_length = choice.max_length.unwrap_or(meta.config.max_length);
    model.set_limits(max_length, choice.truncation.unwrap_or(meta.config.truncation))
}

/// [`run_limits`] for a router: also which end of a long prompt it reads, as the run's router settings say.
pub fn router_limits(model: &mut RewardModel, meta: &RunMeta, choice: &ScoreOptions) -> Result<()> {
    run_limits(model, meta, choice)?;
    if let Some(router) = meta.config.router() {
        model.set_prompt_truncation(router.prompt_truncation());
    }
    Ok(())
}

/// Groups rows by domain (in domain order), scores each group with `score`, and puts the rewards
/// back in row order; an unknown domain is an error naming the ones there are.
pub fn score_by_domain(
    pairs: &[(&str, &str)],
    domains: &[String],
    known: &[String],
    mut score: impl FnMut(&str, &[(&str, &str)]) -> Result<Option<Vec<f32>>>,
) -> Result<Vec<f32>> {
    if pairs.len() != domains.len() {
        bail!("{} pairs with {} domains", pairs.len(), domains.len());
    }
    let mut rewards = vec![f32::NAN; pairs.len()];
    let mut rows: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, d) in domains.iter().enumerate() {
        rows.entry(d.as_str()).or_default().push(i);
    }
    for (domain, rows) in rows {
        let inputs: Vec<(&str, &str)> = rows.iter().map(|&i| pairs[i]).collect();
        let scored = score(domain, &inputs)?.ok_or_else(|| unknown_domain(domain, known))?;
        for (&i, r) in rows.iter().zip(scored) {
            rewards[i] = r;
        }
    }
    Ok(rewards)
}

/// The error for a row routed (or sent) to a domain the run has no reward part for.
pub fn unknown_domain(domain: &str, known: &[String]) -> anyhow::Error {
    anyhow::anyhow!("no reward model for domain `{domain}` (have: {})", known.join(", "))
}
