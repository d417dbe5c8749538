//! MoRE (router-reward-models.txt §3.1, Figure 1(b)): one reward model whose internal router sends
//! each input to a few reward experts: the encoder's pooled vector (its first token) → LayerNorm →
//! sparse MoE with noisy top-k gating → LayerNorm → regression. Trained on all domains together with
//! the pairwise loss plus the gate's load-balancing loss.
//!
//! A MoRE run directory holds the encoder as a Hugging Face base model in `encoder/`
//! (`BertModel`/`DebertaV2Model`) and the head in `more.safetensors`: transformers has no class for
//! this head, and with no `config.json` at the top `from_pretrained(RUN)` fails rather than load the
//! encoder under a random classifier.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, IndexOp, Tensor, Var};

use crate::backbone::params::ParamStore;
use crate::backbone::resolve_model_dir;
use crate::config::{Method, TrainConfig};
use crate::data::io::StagedDir;
use crate::data::PairRecord;
use crate::model::{save_safetensors, LoadOptions, RewardModel};
use crate::moe::{MoeHead, MoeOutput, MoreConfig};
use crate::nn::Ctx;
use crate::run::{backbone_name, prepare_run_dir, RunMeta};
use crate::train::loss::{pairwise_correct, pairwise_loss};
use crate::train::objective::{chosen_then_rejected, MicroBatch, Objective};
use crate::train::trainer::{load_train_pairs, train_objective, RunOptions};

/// The head's file in a MoRE run directory.
pub const HEAD_FILE: &str = "more.safetensors";

/// The encoder's folder in a MoRE run directory.
pub const ENCODER_DIR: &str = "encoder";

/// An encoder with the MoE head.
pub struct MoreModel {
    pub encoder: RewardModel,
    pub head: MoeHead,
    store: Arc<ParamStore>,
}

impl MoreModel {
    /// The head's outputs for `(prompt, response)` pairs encoded as one batch.
    pub fn forward(&self, pairs: &[(&str, &str)], ctx: &Ctx) -> Result<(MoeOutput, usize)> {
        let batch = self.encoder.encode(pairs)?;
        let hidden = self.encoder.hidden(&batch, ctx)?;
        let pooled = hidden.i((.., 0))?.contiguous()?;
        Ok((self.head.forward(&pooled, ctx)?, batch.truncated))
    }

    /// Rewards in batches of `batch_size`, in evaluation mode (no gate noise, no dropout).
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Vec<f32>> {
        Ok(self.score_with_gates(pairs, batch_size)?.0)
    }

    /// Rewards and each input's gate weights over the experts.
    pub fn score_with_gates(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let (mut rewards, mut gates) = (Vec::new(), Vec::new());
        for chunk in pairs.chunks(batch_size.max(1)) {
            let (out, _) = self.forward(chunk, &Ctx::eval())?;
            rewards.extend(out.rewards.to_vec1::<f32>()?);
            gates.extend(out.gates.to_vec2::<f32>()?);
        }
        Ok((rewards, gates))
    }

    /// Loads a MoRE run directory.
    pub fn load(dir: &Path, config: &MoreConfig, opts: &LoadOptions) -> Result<Self> {
        let encoder = RewardModel::load(&dir.join(ENCODER_DIR), opts)?;
        let path = dir.join(HEAD_FILE);
        let tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu)
            .with_context(|| format!("reading the MoRE head {}", path.display()))?;
        let (experts, expert_hidden) = match tensors.get("more.experts.0.fc1.weight").map(|t| t.dims().to_vec()) {
            Some(dims) if dims.len() == 2 => (tensors.keys().filter(|k| k.ends_with(".fc1.weight")).count(), dims[0]),
            _ => bail!("{} has no `more.experts.0.fc1.weight`: not a MoRE head", path.display()),
        };
        let store = ParamStore::from_tensors(tensors, path.display().to_string(), opts.train_encoder);
        let head = MoeHead::load(
            store.var_builder(DType::F32, &opts.device).pp("more"),
            hidden_size(&encoder)?,
            experts,
            expert_hidden,
            config,
        )?;
        Ok(Self { encoder, head, store })
    }

    fn save_head(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self.store.used().into_iter().collect();
        save_safetensors(&tensors, path)
    }

    fn vars(&self) -> Vec<(String, Var)> {
        let mut vars = self.encoder.encoder_vars();
        vars.extend(self.store.vars());
        vars
    }

    fn parameter_count(&self) -> usize {
        let head: usize = self.store.used().iter().map(|(_, t)| t.elem_count()).sum();
        self.encoder.encoder_parameter_count() + head
    }
}

fn hidden_size(model: &RewardModel) -> Result<usize> {
    model
        .config
        .get("hidden_size")
        .and_then(|v| v.as_u64())
        .map(|h| h as usize)
        .context("config.json has no `hidden_size`")
}

/// The pairwise loss plus `coef` times the gate's load-balancing loss.
pub struct MorePairwise<'a> {
    pub model: &'a MoreModel,
    pub pairs: &'a [PairRecord],
    pub coef: f64,
}

impl Objective for MorePairwise<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.model.vars()
    }

    fn examples(&self) -> usize {
        self.pairs.len()
    }

    fn length(&self, example: usize) -> usize {
        crate::bucket::pair_length(&self.pairs[example])
    }

    fn micro_batch(&self, batch: &[usize], ctx: Ctx) -> Result<MicroBatch> {
        let chunk: Vec<&PairRecord> = batch.iter().map(|&j| &self.pairs[j]).collect();
        let inputs = chosen_then_rejected(&chunk);
        let (out, truncated) = self.model.forward(&inputs, &ctx)?;
        let n = chunk.len();
        let (chosen, rejected) = (out.rewards.narrow(0, 0, n)?, out.rewards.narrow(0, n, n)?);
        let loss = (pairwise_loss(&chosen, &rejected)? + (out.balance * self.coef)?)?;
        let correct = pairwise_correct(&chosen.to_vec1::<f32>()?, &rejected.to_vec1::<f32>()?);
        Ok(MicroBatch { loss, correct, truncated })
    }
}

/// Trains MoRE on every configured domain together and writes the run directory.
pub fn train_more(cfg: &TrainConfig, device: candle_core::Device, opts: &RunOptions) -> Result<PathBuf> {
    cfg.validate()?;
    if cfg.method != Method::More {
        bail!("the config trains method `{}`: run `rmroute {}`", cfg.method.name(), cfg.method.command());
    }
    let more = cfg.more.clone().unwrap_or_default();
    let (domains, pairs) = load_train_pairs(cfg)?;
    let backbone_dir = resolve_model_dir(&cfg.backbone)?;
    let load = LoadOptions {
        device: device.clone(),
        train_encoder: true,
        seed: cfg.seed,
        new_head: true,
        labels: None,
        ..Default::default()
    };
    let mut encoder = RewardModel::load(&backbone_dir, &load)
        .with_context(|| format!("loading the backbone {}", backbone_dir.display()))?;
    encoder.set_limits(cfg.max_length, cfg.truncation);
    let hidden = hidden_size(&encoder)?;
    let experts = more.experts.unwrap_or(domains.len()).max(more.top_k);
    let store = ParamStore::trainable(HashMap::new(), "a new MoRE head", cfg.seed);
    let vb = store.var_builder(DType::F32, &device).pp("more");
    let head = MoeHead::load(vb, hidden, experts, more.expert_hidden.unwrap_or(hidden), &more)?;
    let model = MoreModel { encoder, head, store };
    let out = &cfg.out;
    prepare_run_dir(out, opts.resume, opts.force)?;
    let trainable: usize = model.vars().iter().map(|(_, v)| v.elem_count()).sum();
    if !opts.quiet {
        eprintln!(
            "more: {} training pairs from {} on {}, {experts} experts (top {}), {trainable} trainable parameters",
            pairs.len(),
            domains.join(", "),
            backbone_dir.display(),
            more.top_k
        );
    }
    let objective = MorePairwise { model: &model, pairs: &pairs, coef: more.balance_coef };
    let trained = train_objective(&objective, cfg, out, opts)?;

    let staged = StagedDir::new(out)?;
    std::fs::copy(out.join("metrics.jsonl"), staged.path().join("metrics.jsonl"))?;
    model.encoder.write_encoder(&staged.path().join(ENCODER_DIR))?;
    model.save_head(&staged.path().join(HEAD_FILE))?;
    let mut config = cfg.clone();
    config.more = Some(MoreConfig { experts: Some(experts), ..more });
    RunMeta {
        method: Method::More.name().into(),
        domains,
        backbone: cfg.backbone.clone(),
        backbone_name: backbone_name(&cfg.backbone),
        seed: cfg.seed,
        rmroute_version: env!("CARGO_PKG_VERSION").into(),
        config,
        train_pairs: trained.train_pairs,
        truncated_pairs: trained.truncated,
        steps: trained.steps,
        epoch_seconds: trained.epoch_seconds,
        total_parameters: model.parameter_count(),
        trainable_parameters: trainable,
        model: format!(
            "the encoder as a Hugging Face base model in {ENCODER_DIR}/; the MoE head ({experts} experts) in {HEAD_FILE}"
        ),
        adapters: BTreeMap::new(),
        parts: vec![],
        base: None,
        aspect_pairs: BTreeMap::new(),
        routes_by_task: false,
    }
    .write(staged.path())?;
    staged.commit()?;
    Ok(out.clone())
}
