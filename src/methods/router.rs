//! The external router (router-reward-models.txt §3.2): the backbone with a classifier over the
//! domains, trained with cross-entropy on prompts alone (a router never sees the response), saved as
//! transformers' `…ForSequenceClassification` with `num_labels` = domains and `id2label` naming them.
//! RODOS uses it; ARLISS trains the same router as a LoRA adapter with a classifier head on a frozen
//! base, saved in PEFT layout; DMoERM routes through it too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::backbone::resolve_model_dir;
use crate::config::TrainConfig;
use crate::data::io::StagedDir;
use crate::data::PairRecord;
use crate::methods::baseline::{Keep, TrainedModel};
use crate::model::{LoadOptions, RewardModel};
use crate::train::objective::{Balance, DomainClassification};
use crate::train::trainer::{train_objective, RunOptions};

/// What a router learns from: the domains (its labels, in order) and prompts labelled by domain index.
pub struct RouterExamples {
    pub domains: Vec<String>,
    pub prompts: Vec<String>,
    pub labels: Vec<usize>,
}

/// The router's examples: each distinct prompt of each domain's pairs, labelled by its domain index.
pub fn router_examples(domains: &[String], pairs: &BTreeMap<String, Vec<PairRecord>>) -> RouterExamples {
    let (mut prompts, mut labels) = (Vec::new(), Vec::new());
    for (label, domain) in domains.iter().enumerate() {
        let mut seen = BTreeSet::new();
        for pair in pairs.get(domain).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(pair.prompt.as_str()) {
                prompts.push(pair.prompt.clone());
                labels.push(label);
            }
        }
    }
    RouterExamples { domains: domains.to_vec(), prompts, labels }
}

/// Trains the router into `out` (checkpoints and metrics there while training; the finished classifier
/// staged whole and swapped in, with whatever `finish` writes): the whole backbone with a classifier
/// (`Keep::Model`), or a LoRA adapter of the config's `lora` settings with its classifier on the frozen
/// backbone (`Keep::Adapter`).
#[allow(clippy::too_many_arguments)]
pub fn train_router(
    cfg: &TrainConfig,
    examples: &RouterExamples,
    balance: Balance,
    device: candle_core::Device,
    out: &Path,
    opts: &RunOptions,
    keep: Keep,
    finish: impl FnOnce(&Path, &TrainedModel) -> Result<()>,
) -> Result<TrainedModel> {
    let RouterExamples { domains, prompts, labels } = examples;
    let backbone_dir = resolve_model_dir(&cfg.backbone)?;
    let adapter = match keep {
        Keep::Model => None,
        Keep::Adapter(name) => Some(name),
    };
    let load = LoadOptions {
        device,
        train_encoder: adapter.is_none(),
        seed: cfg.seed,
        new_head: true,
        labels: adapter.is_none().then(|| domains.to_vec()),
        ..Default::default()
    };
    let mut model = RewardModel::load(&backbone_dir, &load)
        .with_context(|| format!("loading the backbone {} for the router", backbone_dir.display()))?;
    model.set_limits(cfg.max_length, cfg.truncation);
    if let Some(name) = adapter {
        let Some(lora) = &cfg.lora else { bail!("a router adapter needs the config's `lora` section") };
        model.add_classifier_adapter(name, lora, cfg.seed, domains.len())?;
    }
    let objective = DomainClassification::new(&model, adapter, prompts, labels, balance)?;
    if !opts.quiet {
        let counts: Vec<String> = domains
            .iter()
            .enumerate()
            .map(|(i, d)| format!("{d} {}", labels.iter().filter(|&&l| l == i).count()))
            .collect();
        eprintln!("router: {} prompts ({}), balance {balance:?}", prompts.len(), counts.join(", "));
    }
    let trainable =
        model.trainable_vars(&adapter.into_iter().collect::<Vec<_>>()).iter().map(|(_, v)| v.elem_count()).sum();
    let trained = train_objective(&objective, cfg, out, opts)?;
    let staged = StagedDir::new(out)?;
    std::fs::copy(out.join("metrics.jsonl"), staged.path().join("metrics.jsonl"))?;
    let (total_parameters, description) = match adapter {
        None => {
            model.write_pretrained(staged.path())?;
            (model.parameter_count(), format!("router: a classifier over the domains {}", domains.join(", ")))
        }
        Some(name) => {
            model.write_adapter(name, staged.path(), &cfg.backbone)?;
            let what = format!(
                "router adapter: LoRA and a classifier over the domains {} for the backbone `{}`",
                domains.join(", "),
                cfg.backbone
            );
            (model.adapter_parameter_count(name), what)
        }
    };
    let result = TrainedModel {
        trained,
        total_parameters,
        trainable_parameters: trainable,
        description,
        adapters: BTreeMap::new(),
    };
    finish(staged.path(), &result)?;
    staged.commit()?;
    Ok(result)
}
