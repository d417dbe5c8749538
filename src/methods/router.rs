//! The external router (router-reward-models.txt §3.2): the backbone with a classifier over the
//! domains, trained with cross-entropy on prompts alone (a router never sees the response), saved as
//! transformers' `…ForSequenceClassification` with `num_labels` = domains and `id2label` naming them.
//! RODOS uses it; ARLISS trains the same router as a LoRA adapter with a classifier head on a frozen
//! base, saved in PEFT layout; DMoERM routes through it too. The router is a stage of its run.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::config::{ModelSettings, RouterConfig, TrainConfig};
use super::manifest::{Part, Role};
use super::reward_model::load_backbone;
use super::stage_keys;
use crate::data::PairRecord;
use crate::model::RewardModel;
use crate::train::classification::DomainClassification;
use crate::train::stage::{fingerprint, RunOptions, Stage, StageKey};
use crate::train::trainer::train;

/// The in-memory name of ARLISS's router adapter (its reward adapters are named by their stages).
pub const ROUTER_ADAPTER: &str = "router";

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

/// A router to train as a stage of a run.
pub struct RouterPlan<'a> {
    /// The experiment: the backbone, limits, LoRA settings, trainer and optimizer settings.
    pub cfg: &'a TrainConfig,
    /// The router's own section (`rodos.router`, `arliss.router`, `dmoerm.router`).
    pub section: &'a RouterConfig,
    /// The section's name, for errors.
    pub section_name: &'a str,
    /// The stage's name (`router`, or `router-<domains>` for a retrained one).
    pub name: &'a str,
    /// A LoRA adapter with its classifier on the frozen backbone (ARLISS), else the whole backbone.
    pub adapter: bool,
}

impl RouterPlan<'_> {
    /// The router over `domains` trained on their `pairs`' prompts, or its finished stage.
    pub fn train(
        &self,
        domains: &[String],
        pairs: &BTreeMap<String, Vec<PairRecord>>,
        device: Device,
        opts: &RunOptions,
    ) -> Result<Part> {
        let cfg = self.cfg;
        let trainer = cfg.trainer().with(&self.section.overrides());
        trainer.validate("").with_context(|| format!("the router's settings (`{}`)", self.section_name))?;
        let model = cfg.model();
        let adamw = cfg.adamw();
        let examples = router_examples(domains, pairs);
        let labels: Vec<String> = examples.labels.iter().map(|l| l.to_string()).collect();
        let inputs = fingerprint(examples.prompts.iter().map(String::as_str).chain(labels.iter().map(String::as_str)));
        let settings = stage_keys::router(&model, &trainer, &adamw, self.section.balance, self.adapter, domains);
        let stage = Stage::part(&cfg.out, self.name, StageKey::new(&settings, inputs)?, opts)
            .with_legacy(stage_keys::legacy_router);
        if let Some(part) = stage.finished()? {
            return Ok(part);
        }
        let adapter = self.adapter.then_some(ROUTER_ADAPTER);
        let router = load_router(&model, domains, adapter, cfg.seed, device)?;
        let RouterExamples { prompts, labels, .. } = &examples;
        let objective = DomainClassification::new(&router, adapter, prompts, labels, self.section.balance)?;
        if !stage.opts.quiet {
            let counts: Vec<String> = domains
                .iter()
                .enumerate()
                .map(|(i, d)| format!("{d} {}", labels.iter().filter(|&&l| l == i).count()))
                .collect();
            eprintln!("router: {} prompts ({}), balance {:?}", prompts.len(), counts.join(", "), self.section.balance);
        }
        let trainable = router.trainable_count(&adapter.into_iter().collect::<Vec<_>>());
        let trained = train(&objective, &trainer, &adamw, &stage)?;
        stage.finish(|dir| {
            let total = match adapter {
                None => {
                    router.write_pretrained(dir)?;
                    router.parameter_count()
                }
                Some(name) => {
                    router.write_adapter(name, dir, &model.backbone)?;
                    router.adapter_parameter_count(name)
                }
            };
            Ok(Part::new(self.name, Role::Router, None, &trained, (total, trainable)))
        })
    }
}

/// The backbone with a new classifier over `domains`: its own head (RODOS), or a new LoRA adapter of
/// `settings.lora` with its classifier on the frozen backbone (ARLISS).
fn load_router(
    settings: &ModelSettings,
    domains: &[String],
    adapter: Option<&str>,
    seed: u64,
    device: Device,
) -> Result<RewardModel> {
    let labels = adapter.is_none().then(|| domains.to_vec());
    let (mut model, _) =
        load_backbone(settings, adapter.is_none(), labels, seed, device).context("the router's backbone")?;
    if let Some(name) = adapter {
        let Some(lora) = &settings.lora else { bail!("a router adapter needs the config's `lora` section") };
        model.add_classifier_adapter(name, lora, seed, domains.len())?;
    }
    Ok(model)
}
