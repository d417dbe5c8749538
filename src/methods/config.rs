//! Experiment configs: one JSON file per experiment under `configs/`. Every field has the paper's
//! default (router-reward-models.txt, Appendix A); an unknown key is an error that names it.
//!
//! The file stays flat (what users have today keeps working); the values the layers below take are
//! built from it: the reward model's settings ([`ModelSettings`]), the trainer's ([`TrainerConfig`])
//! and the optimizer's ([`AdamWConfig`]). A stage's own section (`router`, `expert`, `aggregator`)
//! gives a new [`TrainerConfig`] through [`TrainerConfig::with`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::backbone::{PromptTruncation, Truncation};
use crate::data::domains::{load_domain_pairs, load_train_pairs};
use crate::data::PairRecord;
use crate::heads::moe::MoreConfig;
use crate::io::parse_json;
use crate::nn::lora::{LoraConfig, TargetModules};
use crate::train::classification::Balance;
use crate::train::config::{StageOverrides, TrainerConfig};
use crate::train::optim::AdamWConfig;

pub use super::method::Method;

/// RODOS (router-reward-models.txt §3.2): its router's training.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RodosConfig {
    pub router: RouterConfig,
}

/// ARLISS (router-reward-models.txt §3.3): its router adapter's training (the reward adapters and
/// the router adapter share the config's `lora` settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArlissConfig {
    pub router: RouterConfig,
}

/// DMoERM (dmoerm.txt): the outer router's training, and the three stages of each task's inner model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DmoermConfig {
    /// The outer router over the tasks (trained only when there are two or more).
    pub router: RouterConfig,
    /// Share of each task's training pairs for stage 1 (the task's reward model) and stage 2 (the
    /// experts); the rest trains the aggregator on pairs the experts never saw.
    pub phase1_fraction: f64,
    /// Stage 1 fine-tunes the whole encoder (`full`) or a LoRA adapter merged in after (`lora`).
    pub phase1: Phase1,
    /// The capability points to train experts for; empty = every aspect the task's pairs carry.
    pub aspects: Vec<String>,
    /// An aspect with fewer labelled (non-tie) stage-1 pairs than this gets no expert (the run says so).
    pub min_aspect_pairs: usize,
    /// Stage 2's training (the experts share the config's `lora` settings).
    pub expert: StageConfig,
    /// Stage 3's training of the MLP over the experts' pooled vectors.
    pub aggregator: StageConfig,
}

impl Default for DmoermConfig {
    fn default() -> Self {
        Self {
            router: RouterConfig::default(),
            phase1_fraction: 0.6,
            phase1: Phase1::Full,
            aspects: vec![],
            min_aspect_pairs: 10,
            expert: StageConfig::default(),
            aggregator: StageConfig::default(),
        }
    }
}

/// How DMoERM's stage 1 trains the task's reward model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase1 {
    #[default]
    Full,
    Lora,
}

/// A stage's own training settings (`dmoerm.expert`, `dmoerm.aggregator`); each unset one is the config's.
pub type StageConfig = StageOverrides;

/// The external router: a classifier over domains trained with cross-entropy on prompts alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Default: the config's `epochs`.
    pub epochs: Option<usize>,
    /// Default: the config's `lr`.
    pub lr: Option<f64>,
    /// Default: the config's `batch_size`.
    pub batch_size: Option<usize>,
    /// `class_weights` (default), `sampling` or `none`: the paper's domains range from 57% to 4%.
    pub balance: Balance,
    /// Which end of a prompt longer than `max_length` the router reads: `keep_end` (the default: the
    /// latest turns, which say what is asked; the router matched PyTorch's only so, issue 32) or
    /// `keep_start` (rmroute 0.1.0's routers under `longest_first`). A run written by 0.1.0 reads as
    /// what its router did ([`RouterConfig::legacy`]).
    pub truncation: Option<PromptTruncation>,
}

impl RouterConfig {
    /// Which end of a long prompt the router reads.
    pub fn prompt_truncation(&self) -> PromptTruncation {
        self.truncation.unwrap_or_default()
    }

    /// The setting of a router trained before it existed (rmroute 0.1.0): a prompt read alone kept
    /// the end its pairs' `truncation` implied.
    pub fn legacy(&mut self, truncation: Truncation) {
        self.truncation = Some(PromptTruncation::following(truncation));
    }

    /// The router's own epochs, learning rate and batch size.
    pub fn overrides(&self) -> StageOverrides {
        StageOverrides { epochs: self.epochs, lr: self.lr, batch_size: self.batch_size }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// The method this config trains; required in a config file (never guessed).
    pub method: Method,
    /// A checkpoint directory in Hugging Face layout, or a hub id.
    pub backbone: String,
    /// The prepared data folder (`<domain>/train.jsonl`, `test.jsonl`).
    pub data: PathBuf,
    /// Domains to train on; empty means every domain folder present in `data`.
    pub domains: Vec<String>,
    /// The run directory.
    pub out: PathBuf,
    pub seed: u64,
    pub epochs: usize,
    /// Pairs per optimizer step (split into `grad_accum` micro-batches).
    pub batch_size: usize,
    /// Gradient accumulation steps: the paper trained DeBERTa-large with batch 8.
    pub grad_accum: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Share of optimizer steps spent on linear warm-up; the rest decays linearly to 0.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip; 0 turns clipping off.
    pub max_grad_norm: f64,
    /// Longest input in tokens (clamped to the backbone's position limit).
    pub max_length: usize,
    /// How pairs longer than `max_length` are cut: `longest_first` (transformers' default) or
    /// `keep_prompt_end`. `eval` and `score` use what training used.
    pub truncation: Truncation,
    /// Cap on training pairs per domain (taken in file order after a seeded shuffle); none = all.
    pub max_pairs: Option<usize>,
    /// Training batches of similar lengths: each window of 50 shuffled batches is sorted by length, cut
    /// into batches, and the batches shuffled again (seeded), so each pads little. Off by default:
    /// it changes which pairs share a batch, so results differ from a run without it.
    pub bucket_by_length: bool,
    /// Cap on test pairs per domain for `eval`; none = all.
    pub max_eval_pairs: Option<usize>,
    /// A metrics line every N optimizer steps.
    pub log_every: usize,
    /// A checkpoint every N optimizer steps (and at each epoch end); 0 = epoch ends only.
    pub checkpoint_every: usize,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// The adapters of `baselora` (one, with its head), `arliss` (one per domain and the router's) and
    /// `dmoerm` (its capability-point experts, and stage 1 when `dmoerm.phase1` is `lora`).
    pub lora: Option<LoraConfig>,
    /// The section of `rodos`.
    pub rodos: Option<RodosConfig>,
    /// The section of `more`.
    pub more: Option<MoreConfig>,
    /// The section of `arliss`.
    pub arliss: Option<ArlissConfig>,
    /// The section of `dmoerm`.
    pub dmoerm: Option<DmoermConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            method: Method::Baseline,
            backbone: "microsoft/deberta-v3-base".into(),
            data: "prepared".into(),
            domains: vec![],
            out: "runs/run".into(),
            seed: 42,
            epochs: 3,
            batch_size: 32,
            grad_accum: 1,
            lr: 5e-6,
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            warmup_ratio: 0.0,
            max_grad_norm: 1.0,
            max_length: 512,
            truncation: Truncation::LongestFirst,
            max_pairs: None,
            bucket_by_length: false,
            max_eval_pairs: None,
            log_every: 10,
            checkpoint_every: 0,
            device: "cpu".into(),
            lora: None,
            rodos: None,
            more: None,
            arliss: None,
            dmoerm: None,
        }
    }
}

/// The paper's LoRA: rank 12, alpha 768, dropout 0.1 on the attention projections and dense layers.
pub fn paper_lora(target_modules: &[&str]) -> LoraConfig {
    LoraConfig { rank: 12, alpha: 768.0, dropout: 0.1, target_modules: TargetModules::names(target_modules) }
}

impl TrainConfig {
    /// Reads a config file; unknown keys and wrong types are errors naming the key and the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let raw: serde_json::Value =
            parse_json(&text).with_context(|| format!("config {}: not JSON", path.display()))?;
        if raw.get("method").is_none() {
            anyhow::bail!(
                "config {}: `method` is missing: name the method it trains (baseline, baselora, rodos, more, arliss or dmoerm)",
                path.display()
            );
        }
        let config: Self = parse_json(&text).with_context(|| format!("config {}", path.display()))?;
        config.validate().with_context(|| format!("config {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        self.trainer().validate("")?;
        anyhow::ensure!(self.max_length >= 8, "`max_length` must be at least 8");
        anyhow::ensure!(self.max_pairs != Some(0), "`max_pairs` must be at least 1 (leave it out for every pair)");
        if let Some(lora) = &self.lora {
            lora.validate().map_err(|e| anyhow::anyhow!("`lora`: {e}"))?;
        }
        let method = self.method.as_str();
        let sections: [(&str, bool, &[Method]); 5] = [
            ("lora", self.lora.is_some(), &[Method::Baselora, Method::Arliss, Method::Dmoerm]),
            ("rodos", self.rodos.is_some(), &[Method::Rodos]),
            ("more", self.more.is_some(), &[Method::More]),
            ("arliss", self.arliss.is_some(), &[Method::Arliss]),
            ("dmoerm", self.dmoerm.is_some(), &[Method::Dmoerm]),
        ];
        for (section, present, owners) in sections {
            let owned = owners.contains(&self.method);
            if present && !owned {
                let names: Vec<&str> = owners.iter().map(|m| m.as_str()).collect();
                anyhow::bail!("a `{section}` section belongs to method `{}`, not `{method}`", names.join("` or `"));
            }
            if !present && owned {
                let hint = if section == "lora" {
                    " (rank `r`, `lora_alpha`, `target_modules`)"
                } else {
                    " (it may be `{}` for the defaults)"
                };
                anyhow::bail!("method `{method}` needs a `{section}` section{hint}");
            }
        }
        if let Some(more) = &self.more {
            anyhow::ensure!(more.top_k > 0, "`more.top_k` must be positive");
            anyhow::ensure!(more.experts != Some(0), "`more.experts` must be positive");
            anyhow::ensure!(more.experts.is_none_or(|e| more.top_k <= e), "`more.top_k` exceeds `more.experts`");
            anyhow::ensure!(more.expert_hidden != Some(0), "`more.expert_hidden` must be positive");
            anyhow::ensure!(more.balance_coef >= 0.0, "`more.balance_coef` must be at least 0");
        }
        if let Some(d) = &self.dmoerm {
            anyhow::ensure!(
                d.phase1_fraction > 0.0 && d.phase1_fraction < 1.0,
                "`dmoerm.phase1_fraction` must be in (0, 1): stage 1 and the aggregator each need a share"
            );
            anyhow::ensure!(d.min_aspect_pairs > 0, "`dmoerm.min_aspect_pairs` must be positive");
            for (name, stage) in [("expert", &d.expert), ("aggregator", &d.aggregator)] {
                stage.validate(&format!("dmoerm.{name}"))?;
            }
            for aspect in &d.aspects {
                crate::data::record::check_name(aspect)
                    .map_err(|why| anyhow::anyhow!("`dmoerm.aspects`: not an aspect name: {why}"))?;
            }
        }
        let routers = [
            ("rodos", self.rodos.as_ref().map(|r| &r.router)),
            ("arliss", self.arliss.as_ref().map(|a| &a.router)),
            ("dmoerm", self.dmoerm.as_ref().map(|d| &d.router)),
        ];
        for (section, router) in routers {
            if let Some(router) = router {
                router.overrides().validate(&format!("{section}.router"))?;
            }
        }
        Ok(())
    }

    /// The router section of a routed method (RODOS, ARLISS, DMoERM), if any.
    pub fn router(&self) -> Option<&RouterConfig> {
        self.rodos
            .as_ref()
            .map(|r| &r.router)
            .or(self.arliss.as_ref().map(|a| &a.router))
            .or(self.dmoerm.as_ref().map(|d| &d.router))
    }

    /// [`Self::router`], to change.
    pub fn router_mut(&mut self) -> Option<&mut RouterConfig> {
        if let Some(r) = self.rodos.as_mut() {
            return Some(&mut r.router);
        }
        if let Some(a) = self.arliss.as_mut() {
            return Some(&mut a.router);
        }
        self.dmoerm.as_mut().map(|d| &mut d.router)
    }

    pub fn method(&self) -> &'static str {
        self.method.as_str()
    }

    /// The reward model's settings: what a model trained from this config is built from.
    pub fn model(&self) -> ModelSettings {
        ModelSettings {
            backbone: self.backbone.clone(),
            max_length: self.max_length,
            truncation: self.truncation,
            lora: self.lora.clone(),
        }
    }

    /// The trainer's settings.
    pub fn trainer(&self) -> TrainerConfig {
        TrainerConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            grad_accum: self.grad_accum,
            lr: self.lr,
            warmup_ratio: self.warmup_ratio,
            max_grad_norm: self.max_grad_norm,
            log_every: self.log_every,
            checkpoint_every: self.checkpoint_every,
            bucket_by_length: self.bucket_by_length,
            seed: self.seed,
        }
    }

    /// The optimizer's settings.
    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_eps,
            weight_decay: self.weight_decay,
        }
    }

    /// One domain's training pairs (`max_pairs` of them, drawn with the seed).
    pub fn domain_pairs(&self, domain: &str) -> Result<Vec<PairRecord>> {
        load_domain_pairs(&self.data, domain, self.max_pairs, self.seed)
    }

    /// The configured domains and their training pairs, all together.
    pub fn train_pairs(&self) -> Result<(Vec<String>, Vec<PairRecord>)> {
        load_train_pairs(&self.data, &self.domains, self.max_pairs, self.seed)
    }
}

/// What a reward model trained from a config is built from: the backbone, the input length and how
/// longer inputs are cut, and the adapter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    pub backbone: String,
    pub max_length: usize,
    pub truncation: Truncation,
    pub lora: Option<LoraConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_papers_and_unknown_keys_are_named() {
        let c: TrainConfig = serde_json::from_str("{}").unwrap();
        assert_eq!((c.lr, c.batch_size, c.epochs), (5e-6, 32, 3));
        let err = serde_json::from_str::<TrainConfig>("{\"learning_rate\": 1e-5}").unwrap_err().to_string();
        assert!(err.contains("unknown field `learning_rate`"), "{err}");
        let err = parse_json::<TrainConfig>(
            "{\"lora\": {\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q\"], \"rnak\": 3}}",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("rnak"), "{err}");
    }

    #[test]
    fn every_shipped_config_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut loaded = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                TrainConfig::load(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                loaded += 1;
            }
        }
        assert!(loaded >= 40, "{loaded} configs");
    }

    #[test]
    fn type_errors_name_the_key_path_and_zero_rank_is_refused() {
        let err =
            parse_json::<TrainConfig>("{\"lora\": {\"r\": \"four\", \"lora_alpha\": 8, \"target_modules\": [\"q\"]}}")
                .unwrap_err()
                .to_string();
        assert!(err.starts_with("`lora.r`:") && err.contains("invalid type"), "{err}");
        let err = parse_json::<TrainConfig>("{\"truncation\": \"middle\"}").unwrap_err().to_string();
        assert!(err.starts_with("`truncation`:") && err.contains("longest_first"), "{err}");
        let zero: TrainConfig =
            parse_json("{\"lora\": {\"r\": 0, \"lora_alpha\": 8, \"target_modules\": [\"q\"]}}").unwrap();
        let err = zero.validate().unwrap_err().to_string();
        assert!(err.contains("`r` must be positive"), "{err}");
    }

    #[test]
    fn each_method_has_its_section_and_no_other() {
        let parse = |text: &str| parse_json::<TrainConfig>(text).unwrap().validate().map_err(|e| e.to_string());
        assert!(parse("{\"method\": \"rodos\"}").unwrap_err().contains("needs a `rodos` section"));
        assert!(parse("{\"method\": \"more\", \"more\": {\"top_k\": 3, \"experts\": 2}}")
            .unwrap_err()
            .contains("exceeds"));
        assert!(parse("{\"method\": \"rodos\", \"rodos\": {}}").is_ok());
        let lora = "\"lora\": {\"r\": 4, \"lora_alpha\": 8, \"target_modules\": [\"q\"]}";
        assert!(parse(&format!("{{\"method\": \"rodos\", \"rodos\": {{}}, {lora}}}"))
            .unwrap_err()
            .contains("`baselora`"));
        assert!(parse("{\"method\": \"baselora\"}").unwrap_err().contains("needs a `lora` section"));
        assert!(parse("{\"method\": \"arliss\", \"arliss\": {}}").unwrap_err().contains("needs a `lora` section"));
        assert!(parse(&format!("{{\"method\": \"arliss\", {lora}}}"))
            .unwrap_err()
            .contains("needs a `arliss` section"));
        assert!(parse(&format!("{{\"method\": \"arliss\", \"arliss\": {{}}, {lora}}}")).is_ok());
        assert!(parse("{\"method\": \"baseline\", \"rodos\": {}}").unwrap_err().contains("belongs to method `rodos`"));
        assert!(parse(&format!("{{\"method\": \"dmoerm\", {lora}}}"))
            .unwrap_err()
            .contains("needs a `dmoerm` section"));
        assert!(parse(&format!("{{\"method\": \"dmoerm\", \"dmoerm\": {{}}, {lora}}}")).is_ok());
        assert!(parse(&format!("{{\"method\": \"dmoerm\", \"dmoerm\": {{\"phase1_fraction\": 1.0}}, {lora}}}"))
            .unwrap_err()
            .contains("phase1_fraction"));
        assert!(parse(&format!("{{\"method\": \"dmoerm\", \"dmoerm\": {{\"aggregator\": {{\"lr\": 0}}}}, {lora}}}"))
            .unwrap_err()
            .contains("`dmoerm.aggregator.lr`"));
        let err = parse_json::<TrainConfig>("{\"method\": \"rodso\"}").unwrap_err().to_string();
        assert!(err.starts_with("`method`:") && err.contains("rodos"), "{err}");
        let err =
            parse_json::<TrainConfig>("{\"method\": \"rodos\", \"rodos\": {\"routr\": {}}}").unwrap_err().to_string();
        assert!(err.contains("routr"), "{err}");
    }
}
