//! The external router (router-reward-models.txt §3.2): the backbone with a classifier over the
//! domains, trained with cross-entropy on prompts alone (a router never sees the response), saved as
//! transformers' `…ForSequenceClassification` with `num_labels` = domains and `id2label` naming them.
//! RODOS uses it; ARLISS trains the same router as a LoRA adapter with a classifier head on a frozen
//! base, saved in PEFT layout; DMoERM routes through it too. The router is a stage of its run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::config::{ModelSettings, RouterConfig, TrainConfig};
use super::manifest::{Part, Role};
use super::reward_model::load_backbone;
use super::scorer::DomainRouter;
use super::stage_keys;
use crate::backbone::{resolve_model_dir, PromptTruncation};
use crate::data::PairRecord;
use crate::model::{LoadOptions, RewardModel};
use crate::nn::Adapters;
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
        let prompts_cut = self.section.prompt_truncation();
        let trained = stage_keys::reward_model(&model, &trainer, &adamw, cfg.max_pairs);
        let settings = stage_keys::router(trained, self.section.balance, prompts_cut, self.adapter, domains);
        let stage = Stage::part(&cfg.out, self.name, StageKey::new(&settings, inputs)?, opts)
            .with_legacy(stage_keys::legacy_router);
        if let Some(part) = stage.finished()? {
            return Ok(part);
        }
        let adapter = self.adapter.then_some(ROUTER_ADAPTER);
        let mut router = load_router(&model, domains, adapter, cfg.seed, device)?;
        router.set_prompt_truncation(prompts_cut);
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

/// A router alone, loaded from its stage directory (`RUN/stages/router…`, finished): for router
/// experiments (`rmroute train-<method> --only router`, `rmroute eval-router`). It routes; it gives no
/// rewards.
pub struct RouterOnly {
    pub domains: Vec<String>,
    pub model: RewardModel,
    /// The router adapter's name (ARLISS), none for a whole classifier.
    adapter: Option<String>,
}

/// What a router stage's key records of its settings.
#[derive(serde::Deserialize)]
struct RouterStageSettings {
    model: ModelSettings,
    prompt_truncation: PromptTruncation,
    adapter: bool,
    domains: Vec<String>,
}

#[derive(serde::Deserialize)]
struct RouterStageRecord {
    key: crate::train::stage::StageKey,
}

impl RouterOnly {
    /// Loads the finished router stage in `dir`: the classifier there, or the router adapter there on
    /// the backbone its key names, with the input limits it trained with.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let path = dir.join(crate::train::stage::STAGE_FILE);
        if !path.is_file() {
            bail!("{} holds no finished stage ({} is missing)", dir.display(), path.display());
        }
        let record: RouterStageRecord = crate::io::read_json(&path).with_context(|| {
            format!("{} is not a router stage of this release (evaluate the finished run instead)", dir.display())
        })?;
        let settings: RouterStageSettings = crate::io::from_value(&record.key.settings)
            .with_context(|| format!("{}: not a router stage", path.display()))?;
        let (mut model, adapter) = if settings.adapter {
            let base = resolve_model_dir(&settings.model.backbone)?;
            let mut model = RewardModel::load(&base, opts)?;
            model.load_adapter(dir, ROUTER_ADAPTER, false)?;
            (model, Some(ROUTER_ADAPTER.to_string()))
        } else {
            (RewardModel::load(dir, opts)?, None)
        };
        model.set_limits(settings.model.max_length, settings.model.truncation)?;
        model.set_prompt_truncation(settings.prompt_truncation);
        Ok(Self { domains: settings.domains, model, adapter })
    }
}

impl DomainRouter for RouterOnly {
    fn domains(&self) -> &[String] {
        &self.domains
    }

    fn route(&self, prompts: &[&str], batch_size: usize) -> Result<Vec<usize>> {
        let adapters = self.adapter.clone().map(Adapters::One).unwrap_or_default();
        self.model.classify(prompts, batch_size, &adapters)
    }

    fn score_in(&self, _pairs: &[(&str, &str)], _domains: &[String], _batch_size: usize) -> Result<Vec<f32>> {
        bail!("a router alone gives no rewards: evaluate the finished run for its rewards")
    }
}
