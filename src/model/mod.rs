//! A reward model: an encoder of any family, its reward (or classifier) head, named LoRA adapters each
//! with its own head, and its tokenizer. The forward pass and scoring are in `forward.rs`, adapters in
//! `adapters.rs`, PEFT files in `peft.rs`, Hugging Face checkpoints out in `hf.rs`.

mod adapters;
mod forward;
mod hf;
mod peft;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor, Var};
use tokenizers::Tokenizer;

pub use peft::MERGED_KEY;

use crate::backbone::tokenizer::load_tokenizer;
use crate::backbone::{
    load_checkpoint, Batch, Checkpoint, Encoder, Family, HeadLayout, PairEncoder, PromptTruncation, Truncation,
};
use crate::heads::RewardHead;
use crate::nn::bf16::Precision;
use crate::nn::lora::LoraConfig;
use crate::nn::params::ParamStore;

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Full fine-tuning: encoder weights become trainable variables. Otherwise they are frozen.
    pub train_encoder: bool,
    /// Seeds the initialisation of anything the checkpoint lacks (a new reward head).
    pub seed: u64,
    /// Training may start from an encoder without a reward head: a new one is initialised (and listed
    /// in [`RewardModel::new_head`]). Otherwise scoring with a missing head is an error.
    pub new_head: bool,
    /// A classifier over these labels (a router over domains) instead of a one-output reward head.
    pub labels: Option<Vec<String>>,
    /// The encoder's linear layers score in bf16 (scoring only: refused with `train_encoder`).
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            train_encoder: false,
            seed: 0,
            new_head: false,
            labels: None,
            precision: Precision::F32,
        }
    }
}

/// A LoRA adapter of the model and its own reward head.
pub struct AdapterEntry {
    pub config: LoraConfig,
    pub head: RewardHead,
    store: Arc<ParamStore>,
}

pub struct RewardModel {
    /// The architecture family: how its checkpoints are named.
    pub family: &'static Family,
    pub encoder: Box<dyn Encoder>,
    pub head: RewardHead,
    /// Where the family's head sits in checkpoints and how it reads the encoder.
    pub head_layout: HeadLayout,
    /// The tokenizer with the length limit and truncation strategy.
    pub tokens: PairEncoder,
    /// The checkpoint's `config.json`.
    pub config: serde_json::Value,
    pub device: Device,
    /// The encoder's position limit (`None`: relative positions only, any length): `max_length` never
    /// exceeds it.
    pub max_positions: Option<usize>,
    /// The encoder's hidden size.
    pub hidden_size: usize,
    pub adapters: BTreeMap<String, AdapterEntry>,
    /// The head's output names (`id2label`): one for a reward model, the domains for a router.
    pub labels: Vec<String>,
    /// Reward-head tensors the checkpoint lacked, initialised from the seed (an encoder, not a reward
    /// model). Scoring with the base head is then an error unless loaded with `new_head`.
    pub new_head: Vec<String>,
    allow_new_head: bool,
    /// Where the weights came from, for error messages.
    source: String,
    encoder_store: Arc<ParamStore>,
    head_store: Arc<ParamStore>,
}

impl RewardModel {
    /// Loads a checkpoint directory (Hugging Face layout). A missing reward head is initialised from
    /// `opts.seed`; a missing encoder tensor is an error that names it.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        let checkpoint = load_checkpoint(dir)?;
        let tokenizer = load_tokenizer(dir)?;
        Self::from_checkpoint(checkpoint, tokenizer, opts)
    }

    pub fn from_checkpoint(mut checkpoint: Checkpoint, tokenizer: Tokenizer, opts: &LoadOptions) -> Result<Self> {
        let family = checkpoint.family;
        let encoder_config = (family.config)(&checkpoint)?;
        let layout = encoder_config.head();
        let source = checkpoint.weights.display().to_string();
        let tensors = std::mem::take(&mut checkpoint.tensors);
        let (mut head_tensors, encoder_tensors): (HashMap<String, Tensor>, HashMap<String, Tensor>) =
            tensors.into_iter().partition(|(k, _)| layout.owns(k));
        let classifier_weight = format!("{}.weight", layout.classifier_key);
        let classifier_prefix = format!("{}.", layout.classifier_key);
        // A reward head has one output; a router one per label. A checkpoint's own head says which it is.
        let outputs = match (&opts.labels, head_tensors.get(&classifier_weight)) {
            (Some(labels), _) => labels.len(),
            (None, Some(w)) => w.dims().first().copied().unwrap_or(1),
            (None, None) => 1,
        };
        if head_tensors.get(&classifier_weight).is_some_and(|w| w.dims().first() != Some(&outputs)) {
            // A classifier over other labels (a reward head under a new router) starts anew.
            head_tensors.retain(|k, _| !k.starts_with(&classifier_prefix));
        }
        let labels = match &opts.labels {
            Some(labels) => labels.clone(),
            None => checkpoint_labels(&checkpoint.config, outputs),
        };
        let encoder_store = ParamStore::from_tensors(encoder_tensors, source.clone(), opts.train_encoder);
        let head_store = ParamStore::trainable(head_tensors, source, opts.seed);
        let vb = encoder_store.var_builder(DType::F32, &opts.device);
        let head = RewardHead::load(head_store.var_builder(DType::F32, &opts.device), &layout, outputs)?;
        let mut encoder = encoder_config.build(vb.pp(family.prefix))?;
        if opts.precision == Precision::Bf16 {
            if opts.train_encoder {
                bail!("bf16 is a scoring mode: train in f32");
            }
            for layer in encoder.lora_linears_mut() {
                layer.use_bf16()?;
            }
        }
        let new_head = head_store.initialised();
        let max_positions = encoder_config.max_positions();
        let mut tokens = PairEncoder::new(tokenizer, default_length(max_positions), Truncation::default());
        if let Some(pad) = encoder_config.pad_token_id() {
            tokens.pad_id = pad;
        }
        Ok(Self {
            family,
            encoder,
            head,
            head_layout: layout,
            tokens,
            config: checkpoint.config,
            device: opts.device.clone(),
            max_positions,
            hidden_size: encoder_config.hidden_size(),
            adapters: BTreeMap::new(),
            labels,
            new_head,
            allow_new_head: opts.new_head,
            source: checkpoint.dir.display().to_string(),
            encoder_store,
            head_store,
        })
    }

    /// Sets the longest input and how longer pairs are cut (a prompt read alone then keeps the end
    /// `truncation` implies, until [`Self::set_prompt_truncation`]). A length beyond the encoder's position
    /// limit is an error: cutting it silently would train and score on other inputs than asked for.
    pub fn set_limits(&mut self, max_length: usize, truncation: Truncation) -> Result<()> {
        if let Some(limit) = self.max_positions.filter(|&limit| max_length > limit) {
            bail!(
                "max_length {max_length} is more than {} can encode: it has {limit} positions \
                 (from its config.json: max_position_embeddings, less pad_token_id + 1 for RoBERTa; n_positions for GPT-2). Set max_length to {limit} or less (a run trained \
                 by rmroute 0.1.0 with a longer max_length was cut at {limit}: load it with --max-length {limit})",
                self.source
            );
        }
        self.tokens.max_length = max_length;
        self.tokens.truncation = truncation;
        self.tokens.prompt_truncation = PromptTruncation::following(truncation);
        Ok(())
    }

    /// The longest input when neither a run nor the user sets one: 512 (what transformers' tokenizers
    /// default to), or the position limit where it is lower. A longer one is there for the asking.
    pub fn default_max_length(&self) -> usize {
        default_length(self.max_positions)
    }

    /// Which end of a long prompt read alone (by a router) survives.
    pub fn set_prompt_truncation(&mut self, truncation: PromptTruncation) {
        self.tokens.prompt_truncation = truncation;
    }

    pub fn max_length(&self) -> usize {
        self.tokens.max_length
    }

    /// Tokenizes `(prompt, response)` pairs as transformers' `tokenizer(prompt, response)` does,
    /// truncated by the model's strategy and padded to the longest row.
    pub fn encode(&self, pairs: &[(&str, &str)]) -> Result<Batch> {
        self.check_padding_side()?;
        self.tokens.encode(pairs, &self.device)
    }

    /// Tokenizes prompts alone (a router never sees the response), truncated and padded.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Batch> {
        self.check_padding_side()?;
        self.tokens.encode_prompts(prompts, &self.device)
    }

    /// Left padding only where the head reads the last real token: an encoder that reads the first
    /// token (and counts absolute positions from the left) would read a pad.
    fn check_padding_side(&self) -> Result<()> {
        if self.tokens.padding_side == crate::backbone::PaddingSide::Left
            && self.head_layout.read_at == crate::backbone::ReadAt::First
        {
            bail!("{} reads its first token: it must be padded on the right, not the left", self.source);
        }
        Ok(())
    }

    /// The model's own reward head; an error when the checkpoint had none and this is not training.
    fn base_head(&self) -> Result<&RewardHead> {
        if !self.new_head.is_empty() && !self.allow_new_head {
            bail!(
                "{} has no reward head (missing {}): it is an encoder, not a reward model. Train one on it \
                 (`rmroute train-baseline`), or score with a reward model or an adapter that has its own head",
                self.source,
                self.new_head.join(", ")
            );
        }
        Ok(&self.head)
    }

    /// The encoder's trainable variables alone (full fine-tuning), without any head.
    pub fn encoder_vars(&self) -> Vec<(String, Var)> {
        self.encoder_store.vars()
    }

    /// Trainable variables: the encoder's when fully fine-tuned, then the base head when no adapter is
    /// named, else the named adapters' (each with its own head).
    pub fn trainable_vars(&self, adapters: &[&str]) -> Vec<(String, Var)> {
        let mut vars = self.encoder_store.vars();
        if adapters.is_empty() {
            vars.extend(self.head_store.vars());
        }
        for name in adapters {
            if let Some(entry) = self.adapters.get(*name) {
                vars.extend(entry.store.vars());
            }
        }
        vars
    }

    /// The number of trainable parameters for `adapters` (see [`Self::trainable_vars`]).
    pub fn trainable_count(&self, adapters: &[&str]) -> usize {
        self.trainable_vars(adapters).iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Parameters of the encoder that the forward pass uses: tensors the encoder never asks for (integer
    /// `position_ids`, DeBERTa-v3's MLM head) are not parameters of a reward model.
    pub fn encoder_parameter_count(&self) -> usize {
        let used: HashMap<String, Tensor> = self.encoder_store.used().into_iter().collect();
        used.values().filter(|t| t.dtype().is_float()).map(|t| t.elem_count()).sum()
    }

    /// Parameters of the model's own reward head.
    pub fn head_parameter_count(&self) -> usize {
        count(&self.head_tensors())
    }

    /// Parameters of the encoder and the model's head: transformers' `num_parameters()` of the same
    /// `…ForSequenceClassification`.
    pub fn parameter_count(&self) -> usize {
        self.encoder_parameter_count() + self.head_parameter_count()
    }
}

/// `id2label` of a checkpoint's config when it names `outputs` labels, else `LABEL_i`.
fn checkpoint_labels(config: &serde_json::Value, outputs: usize) -> Vec<String> {
    let named: Option<Vec<String>> = config.get("id2label").and_then(|m| m.as_object()).and_then(|m| {
        (0..outputs).map(|i| m.get(&i.to_string()).and_then(|v| v.as_str()).map(str::to_string)).collect()
    });
    match named {
        Some(labels) if labels.len() == outputs && config["id2label"].as_object().map(|m| m.len()) == Some(outputs) => {
            labels
        }
        _ => (0..outputs).map(|i| format!("LABEL_{i}")).collect(),
    }
}

fn count(tensors: &[(String, Tensor)]) -> usize {
    tensors.iter().map(|(_, t)| t.elem_count()).sum()
}

/// See [`RewardModel::default_max_length`].
fn default_length(max_positions: Option<usize>) -> usize {
    max_positions.map_or(512, |limit| limit.min(512))
}
