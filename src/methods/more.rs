//! MoRE (router-reward-models.txt §3.1, Figure 1(b)): one reward model whose internal router sends
//! each input to a few reward experts: the hidden state its family's head reads (the first token of an
//! encoder, the last real token of a decoder) → LayerNorm → sparse MoE with noisy top-k gating →
//! LayerNorm → regression. Trained on all domains together with the pairwise loss plus the gate's
//! load-balancing loss.
//!
//! A MoRE run directory holds the encoder as a Hugging Face base model in `encoder/`
//! (`BertModel`/`DebertaV2Model`) and the head in `more.safetensors`: transformers has no class for
//! this head, and with no `config.json` at the top `from_pretrained(RUN)` fails rather than load the
//! encoder under a random classifier.

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use super::config::TrainConfig;
use super::manifest::{pairs_fingerprint, prepare_run_dir, RunMeta, Summary};
use super::scorer::{ExpertShares, MethodResults, ScoreOptions, Scored, Scores};
use super::stage_keys;
use crate::backbone::{resolve_model_dir, PairEncoder};
use crate::data::domains::TestSets;
use crate::data::PairRecord;
use crate::heads::moe::{MoeHead, MoeOutput, MoreConfig};
use crate::io::save_safetensors;
use crate::model::{LoadOptions, RewardModel};
use crate::nn::params::ParamStore;
use crate::nn::Ctx;
use crate::train::objective::{chosen_then_rejected, PairRewards, Pairwise, Rewards};
use crate::train::stage::{RunOptions, Stage, StageKey};
use crate::train::trainer;

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
        let token = self.encoder.token_states(&batch, ctx)?;
        Ok((self.head.forward(&token, ctx)?, batch.truncated))
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

    /// Loads the encoder and head of a MoRE run directory.
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
            encoder.hidden_size,
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

/// MoRE's rewards for pairs: chosen and rejected in one forward, with `coef` times the gate's
/// load-balancing loss as the auxiliary loss.
pub struct MoreRewards<'a> {
    pub model: &'a MoreModel,
    pub pairs: &'a [PairRecord],
    pub coef: f64,
}

impl PairRewards for MoreRewards<'_> {
    fn vars(&self) -> Vec<(String, Var)> {
        self.model.vars()
    }

    fn examples(&self) -> usize {
        self.pairs.len()
    }

    fn length(&self, example: usize) -> usize {
        crate::data::order::pair_length(&self.pairs[example])
    }

    fn rewards(&self, batch: &[usize], ctx: &Ctx) -> Result<Rewards> {
        let chunk: Vec<&PairRecord> = batch.iter().map(|&j| &self.pairs[j]).collect();
        let (out, truncated) = self.model.forward(&chosen_then_rejected(&chunk), ctx)?;
        let n = chunk.len();
        let (chosen, rejected) = (out.rewards.narrow(0, 0, n)?, out.rewards.narrow(0, n, n)?);
        Ok(Rewards { chosen, rejected, auxiliary: Some((out.balance * self.coef)?), truncated })
    }
}

/// Trains MoRE on every configured domain together and writes the run directory.
pub(crate) fn train(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    let more = cfg.more.clone().unwrap_or_default();
    let (domains, pairs) = cfg.train_pairs()?;
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
    encoder.set_limits(cfg.max_length, cfg.truncation)?;
    let hidden = encoder.hidden_size;
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
    let (trainer, adamw) = (cfg.trainer(), cfg.adamw());
    let key = StageKey::new(&stage_keys::whole_run(cfg), pairs_fingerprint(&pairs))?;
    let stage = Stage::whole_run(out, key, opts).with_legacy(stage_keys::legacy_whole_run);
    let objective = Pairwise(MoreRewards { model: &model, pairs: &pairs, coef: more.balance_coef });
    let trained = trainer::train(&objective, &trainer, &adamw, &stage)?;
    stage.finish(|dir| {
        model.encoder.write_encoder(&dir.join(ENCODER_DIR))?;
        model.save_head(&dir.join(HEAD_FILE))?;
        let mut config = cfg.clone();
        config.more = Some(MoreConfig { experts: Some(experts), ..more.clone() });
        let description = format!(
            "the encoder as a Hugging Face base model in {ENCODER_DIR}/; the MoE head ({experts} experts) in {HEAD_FILE}"
        );
        let summary = Summary::of(&trained, model.parameter_count(), trainable, description);
        RunMeta::new(&config, domains.clone(), summary).write(dir)
    })?;
    Ok(out.clone())
}

/// Loads a MoRE run for scoring.
pub fn load(dir: &Path, meta: &RunMeta, opts: &LoadOptions, choice: &ScoreOptions) -> Result<MoreModel> {
    if choice.adapter.is_some() {
        bail!("{} is a MoRE run: --adapter does not apply", dir.display());
    }
    let more = meta.config.more.clone().with_context(|| {
        format!("{}/rmroute.json is a MoRE run without its `more` section (top_k): train it again", dir.display())
    })?;
    let mut model = MoreModel::load(dir, &more, opts)?;
    let max_length = choice.max_length.unwrap_or(meta.config.max_length);
    model.encoder.set_limits(max_length, choice.truncation.unwrap_or(meta.config.truncation))?;
    Ok(model)
}

impl Scores for MoreModel {
    fn tokens(&self) -> &PairEncoder {
        &self.encoder.tokens
    }

    fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored> {
        Ok(Scored { rewards: MoreModel::score(self, pairs, batch_size)?, domains: None })
    }

    /// The gate's expert shares per domain on the test pairs.
    fn evaluate_more(&mut self, sets: &TestSets, _run: Option<&RunMeta>) -> Result<MethodResults> {
        let experts = self.head.experts();
        let mut shares = BTreeMap::new();
        for (domain, records) in sets {
            let inputs: Vec<(&str, &str)> = records
                .iter()
                .flat_map(|p| [(p.prompt.as_str(), p.chosen.as_str()), (p.prompt.as_str(), p.rejected.as_str())])
                .collect();
            let (_, gates) = self.score_with_gates(&inputs, 32)?;
            let mut sum = vec![0f64; experts];
            for row in &gates {
                for (s, g) in sum.iter_mut().zip(row) {
                    *s += f64::from(*g);
                }
            }
            shares.insert(domain.clone(), sum.iter().map(|s| s / gates.len().max(1) as f64).collect());
        }
        Ok(MethodResults { experts: Some(ExpertShares { experts, shares }), ..Default::default() })
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}
