//! A reward model: encoder + reward head (+ named LoRA adapters, each with its own head), its
//! tokenizer, and how it is loaded, run and saved in Hugging Face/PEFT layout.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use tokenizers::Tokenizer;

use crate::backbone::params::ParamStore;
use crate::backbone::tokenizer::load_tokenizer;
use crate::backbone::{load_checkpoint, Arch, Bert, Checkpoint, Deberta, Encoder};
use crate::bf16::Precision;
use crate::data::io::{sync_file, write_atomic, StagedDir};
use crate::encoding::{Batch, PairEncoder, Truncation};
use crate::heads::RewardHead;
use crate::lora::{LoraConfig, TargetModules, PEFT_PREFIX};
use crate::nn::{Adapters, Ctx};

/// The `config.json` key listing the adapters merged into a checkpoint's weights.
pub const MERGED_KEY: &str = "rmroute_merged_adapters";

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
    pub arch: Arch,
    pub encoder: Encoder,
    pub head: RewardHead,
    /// The tokenizer with the length limit and truncation strategy.
    pub tokens: PairEncoder,
    /// The checkpoint's `config.json`.
    pub config: serde_json::Value,
    pub device: Device,
    /// The encoder's position limit: `max_length` never exceeds it.
    pub max_positions: usize,
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

    pub fn from_checkpoint(checkpoint: Checkpoint, tokenizer: Tokenizer, opts: &LoadOptions) -> Result<Self> {
        let bert_config = if checkpoint.arch == Arch::Bert { Some(checkpoint.bert_config()?) } else { None };
        let deberta_config = if checkpoint.arch == Arch::Deberta { Some(checkpoint.deberta_config()?) } else { None };
        let source = checkpoint.weights.display().to_string();
        let mut head_tensors: HashMap<String, Tensor> = checkpoint
            .tensors
            .iter()
            .filter(|(k, _)| is_head_tensor(checkpoint.arch, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let encoder_tensors: HashMap<String, Tensor> =
            checkpoint.tensors.into_iter().filter(|(k, _)| !is_head_tensor(checkpoint.arch, k)).collect();
        // A reward head has one output; a router one per label. A checkpoint's own head says which it is.
        let outputs = match (&opts.labels, head_tensors.get("classifier.weight")) {
            (Some(labels), _) => labels.len(),
            (None, Some(w)) => w.dims().first().copied().unwrap_or(1),
            (None, None) => 1,
        };
        if head_tensors.get("classifier.weight").is_some_and(|w| w.dims().first() != Some(&outputs)) {
            // A classifier over other labels (a reward head under a new router) starts anew.
            head_tensors.retain(|k, _| !k.starts_with("classifier."));
        }
        let labels = match &opts.labels {
            Some(labels) => labels.clone(),
            None => checkpoint_labels(&checkpoint.config, outputs),
        };
        let encoder_store = ParamStore::from_tensors(encoder_tensors, source.clone(), opts.train_encoder);
        let head_store = ParamStore::trainable(head_tensors, source, opts.seed);
        let vb = encoder_store.var_builder(DType::F32, &opts.device);
        let head_vb = head_store.var_builder(DType::F32, &opts.device);
        let prefix = checkpoint.arch.prefix();
        let (encoder, head, max_positions) = match (bert_config, deberta_config) {
            (Some(cfg), _) => {
                let head = RewardHead::load_bert(head_vb, &cfg, outputs)?;
                (Encoder::Bert(Box::new(Bert::load(vb.pp(prefix), &cfg)?)), head, cfg.max_position_embeddings)
            }
            (_, Some(cfg)) => {
                let head = RewardHead::load_deberta(head_vb, &cfg, outputs)?;
                (Encoder::Deberta(Box::new(Deberta::load(vb.pp(prefix), &cfg)?)), head, cfg.max_position_embeddings)
            }
            (None, None) => bail!("no encoder config"),
        };
        let mut encoder = encoder;
        if opts.precision == Precision::Bf16 {
            if opts.train_encoder {
                bail!("bf16 is a scoring mode: train in f32");
            }
            for layer in encoder.lora_linears_mut() {
                layer.use_bf16()?;
            }
        }
        let new_head = head_store.initialised();
        let max_positions = max_positions.min(512);
        Ok(Self {
            arch: checkpoint.arch,
            encoder,
            head,
            tokens: PairEncoder::new(tokenizer, max_positions, Truncation::default()),
            config: checkpoint.config,
            device: opts.device.clone(),
            max_positions,
            adapters: BTreeMap::new(),
            labels,
            new_head,
            allow_new_head: opts.new_head,
            source: checkpoint.dir.display().to_string(),
            encoder_store,
            head_store,
        })
    }

    /// Sets the longest input (at most the encoder's position limit) and how longer pairs are cut.
    pub fn set_limits(&mut self, max_length: usize, truncation: Truncation) {
        self.tokens.max_length = max_length.min(self.max_positions);
        self.tokens.truncation = truncation;
    }

    pub fn max_length(&self) -> usize {
        self.tokens.max_length
    }

    /// Tokenizes `(prompt, response)` pairs as transformers' `tokenizer(prompt, response)` does,
    /// truncated by the model's strategy and padded to the longest row.
    pub fn encode(&self, pairs: &[(&str, &str)]) -> Result<Batch> {
        self.tokens.encode(pairs, &self.device)
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

    /// Rewards `(batch,)` for an encoded batch; the adapters in `ctx` pick the encoder adapters and heads.
    pub fn forward(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        self.per_head(batch, ctx, |head, hidden, ctx| Ok(head.forward(hidden, ctx)?))
    }

    /// The pooled vectors `(batch, pooler size)` the heads read, each row from its adapter's head.
    pub fn pooled(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        self.per_head(batch, ctx, |head, hidden, ctx| Ok(head.pooled(hidden, ctx)?))
    }

    /// `apply` of each row's head (the adapter's, or the model's own) to the encoder's output, the
    /// adapters in `ctx` picking the encoder adapters and heads.
    fn per_head(
        &self,
        batch: &Batch,
        ctx: &Ctx,
        apply: impl Fn(&RewardHead, &Tensor, &Ctx) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let known = |name: &String| -> Result<()> {
            if !self.adapters.contains_key(name) {
                bail!("no adapter named `{name}` (have: {})", self.adapter_names().join(", "));
            }
            Ok(())
        };
        match &ctx.adapters {
            Adapters::None => {
                self.base_head()?;
            }
            Adapters::One(name) => known(name)?,
            Adapters::PerRow(names) => {
                for name in names {
                    match name {
                        Some(name) => known(name)?,
                        None => {
                            self.base_head()?;
                        }
                    }
                }
            }
        }
        if let Adapters::PerRow(names) = &ctx.adapters {
            return self.forward_grouped(batch, names, ctx, apply);
        }
        let hidden = self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, ctx)?;
        match &ctx.adapters {
            Adapters::One(name) => apply(&self.adapters[name].head, &hidden, ctx),
            Adapters::None | Adapters::PerRow(_) => apply(&self.head, &hidden, ctx),
        }
    }

    /// `apply` with an adapter (or none) per row. The rows are grouped by adapter first (a stable sort),
    /// so every layer applies each adapter once, to one run of rows, and each run's head reads its
    /// rows; the outputs go back to the batch's order.
    fn forward_grouped(
        &self,
        batch: &Batch,
        names: &[Option<String>],
        ctx: &Ctx,
        apply: impl Fn(&RewardHead, &Tensor, &Ctx) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let mut order: Vec<usize> = (0..names.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let index = Tensor::from_vec(order.iter().map(|&i| i as u32).collect::<Vec<_>>(), order.len(), &self.device)?;
        let grouped = Batch {
            input_ids: batch.input_ids.index_select(&index, 0)?,
            token_type_ids: batch.token_type_ids.index_select(&index, 0)?,
            attention_mask: batch.attention_mask.index_select(&index, 0)?,
            truncated: batch.truncated,
        };
        let sorted_names: Vec<Option<String>> = order.iter().map(|&i| names[i].clone()).collect();
        let sorted = ctx.fork(Adapters::PerRow(sorted_names.clone()));
        let hidden =
            self.encoder.forward(&grouped.input_ids, &grouped.token_type_ids, &grouped.attention_mask, &sorted)?;
        let mut outputs = Vec::new();
        let mut start = 0;
        while start < sorted_names.len() {
            let name = &sorted_names[start];
            let len = sorted_names[start..].iter().take_while(|n| *n == name).count();
            let head = match name {
                Some(name) => &self.adapter(name)?.head,
                None => self.base_head()?,
            };
            outputs.push(apply(head, &hidden.narrow(0, start, len)?, &sorted)?);
            start += len;
        }
        ctx.set_rng_state(sorted.rng_state());
        let outputs = Tensor::cat(&outputs, 0)?;
        let mut back = vec![0u32; order.len()];
        for (position, &row) in order.iter().enumerate() {
            back[row] = position as u32;
        }
        Ok(outputs.index_select(&Tensor::from_vec(back, order.len(), &self.device)?, 0)?)
    }

    /// Tokenizes prompts alone (a router never sees the response), truncated and padded.
    pub fn encode_prompts(&self, prompts: &[&str]) -> Result<Batch> {
        self.tokens.encode_prompts(prompts, &self.device)
    }

    /// Classifier logits `(batch, labels)` for prompt-only batches: from the model's own head, or with
    /// one adapter in `ctx`, from that adapter and its head (a router adapter).
    pub fn logits(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        let head = match &ctx.adapters {
            Adapters::None => self.base_head()?,
            Adapters::One(name) => &self.adapter(name)?.head,
            Adapters::PerRow(_) => bail!("classifier logits take one adapter for the whole batch"),
        };
        let hidden = self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, ctx)?;
        Ok(head.logits(&hidden, ctx)?)
    }

    /// Adapter `name`; an error naming the adapters there are.
    pub fn adapter(&self, name: &str) -> Result<&AdapterEntry> {
        self.adapters
            .get(name)
            .with_context(|| format!("no adapter named `{name}` (have: {})", self.adapter_names().join(", ")))
    }

    /// The most likely label of each prompt, in batches of `batch_size`, in evaluation mode, from the
    /// model's own head or from the classifier adapter `adapters` names.
    /// Batches are cut shortest first ([`crate::bucket`]); the labels come back in input order.
    pub fn classify(&self, prompts: &[&str], batch_size: usize, adapters: &Adapters) -> Result<Vec<usize>> {
        adapters.check_rows(prompts.len())?;
        let order = crate::bucket::text_order(prompts);
        let mut sorted = Vec::with_capacity(prompts.len());
        for chunk in order.chunks(batch_size.max(1)) {
            let texts: Vec<&str> = chunk.iter().map(|&i| prompts[i]).collect();
            let ctx = Ctx::eval().with_adapters(adapters.of_rows(chunk)?);
            let logits = self.logits(&self.encode_prompts(&texts)?, &ctx)?;
            sorted.extend(logits.argmax(1)?.to_vec1::<u32>()?.into_iter().map(|i| i as usize));
        }
        Ok(crate::bucket::restore(&sorted, &order)?)
    }

    /// Rewards for `(prompt, response)` pairs in batches of `batch_size`, in evaluation mode. Batches
    /// are cut shortest first ([`crate::bucket`]); the rewards come back in input order.
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize, adapters: &Adapters) -> Result<Vec<f32>> {
        adapters.check_rows(pairs.len())?;
        let order = crate::bucket::input_order(pairs);
        let mut sorted = Vec::with_capacity(pairs.len());
        for chunk in order.chunks(batch_size.max(1)) {
            let inputs: Vec<(&str, &str)> = chunk.iter().map(|&i| pairs[i]).collect();
            let ctx = Ctx::eval().with_adapters(adapters.of_rows(chunk)?);
            sorted.extend(self.forward(&self.encode(&inputs)?, &ctx)?.to_vec1::<f32>()?);
        }
        Ok(crate::bucket::restore(&sorted, &order)?)
    }

    /// New or trainable adapters are training, which runs in f32 (bf16's layers pass no gradient).
    fn refuse_training_in_bf16(&self) -> Result<()> {
        if self.encoder.lora_linears().iter().any(|l| l.is_bf16()) {
            bail!("bf16 is a scoring mode: train adapters on a model loaded in f32");
        }
        Ok(())
    }

    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// Adds a new adapter (A ~ U(±1/√in), B = 0) and its own reward head, a copy of the model's head.
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig, seed: u64) -> Result<()> {
        self.add_classifier_adapter(name, config, seed, 1)
    }

    /// Adds a new adapter whose head has `outputs` outputs (a router adapter: one per domain). The
    /// head's pooler starts as the model's; a classifier of another size starts from `seed`.
    pub fn add_classifier_adapter(&mut self, name: &str, config: &LoraConfig, seed: u64, outputs: usize) -> Result<()> {
        self.refuse_training_in_bf16()?;
        let mut head_tensors = HashMap::new();
        for (key, t) in self.head_tensors() {
            if key.starts_with("classifier.") && self.head.outputs() != outputs {
                continue;
            }
            head_tensors.insert(format!("{PEFT_PREFIX}.{key}"), t.detach());
        }
        let store = ParamStore::trainable(head_tensors, format!("adapter `{name}`"), seed);
        self.attach_adapter(name, config, store, outputs)
    }

    /// Loads an adapter saved in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`).
    /// `trainable` makes its tensors variables (to continue training it).
    pub fn load_adapter(&mut self, dir: &Path, name: &str, trainable: bool) -> Result<()> {
        if trainable {
            self.refuse_training_in_bf16()?;
        }
        let config_path = dir.join("adapter_config.json");
        let config = read_peft_config(&config_path)?;
        let weights = dir.join("adapter_model.safetensors");
        let merged = self.config.get(MERGED_KEY).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        if merged.iter().any(|m| m.as_str() == Some(name)) {
            bail!(
                "{} already has adapter `{name}` merged in (`{MERGED_KEY}` in its config.json): score it alone, \
                 or load the adapter onto the backbone it was trained from",
                self.source
            );
        }
        let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .with_context(|| format!("reading {}", weights.display()))?;
        let from_file: Vec<String> = tensors.keys().cloned().collect();
        // A head tensor PEFT did not save is the base model's own, where the base checkpoint has it.
        for (key, t) in self.head_tensors() {
            if !self.new_head.contains(&key) {
                tensors.entry(format!("{PEFT_PREFIX}.{key}")).or_insert_with(|| t.detach());
            }
        }
        let source = weights.display().to_string();
        // A router adapter's classifier has one output per domain; a reward adapter's one.
        let outputs = tensors
            .get(&format!("{PEFT_PREFIX}.classifier.weight"))
            .and_then(|w| w.dims().first().copied())
            .unwrap_or(1);
        let store = if trainable {
            ParamStore::trainable(tensors, source, 0)
        } else {
            ParamStore::from_tensors(tensors, source, false)
        };
        self.attach_adapter(name, &config, store.clone(), outputs)
            .with_context(|| format!("loading the adapter in {}", dir.display()))?;
        // Every tensor of the file must have found its place: LoRA weights for a layer rmroute does not
        // adapt (PEFT's `["dense"]` also catches the pooler) would otherwise be dropped without a word.
        let used: std::collections::HashSet<String> = store.used().into_iter().map(|(n, _)| n).collect();
        let mut unused: Vec<&String> = from_file.iter().filter(|k| !used.contains(*k)).collect();
        if !unused.is_empty() {
            unused.sort();
            self.adapters.remove(name);
            for layer in self.encoder.lora_linears_mut() {
                layer.remove_adapter(name);
            }
            bail!(
                "{}: {} tensor(s) of the adapter would be ignored, e.g. `{}`: they belong to layers this model does not \
                 adapt or load (train the adapter with target_modules naming only the encoder's layers)",
                weights.display(),
                unused.len(),
                unused[0]
            );
        }
        Ok(())
    }

    fn attach_adapter(
        &mut self,
        name: &str,
        config: &LoraConfig,
        store: Arc<ParamStore>,
        outputs: usize,
    ) -> Result<()> {
        if self.adapters.contains_key(name) {
            bail!("adapter `{name}` already exists");
        }
        let vb = store.var_builder(DType::F32, &self.device);
        let mut targeted = 0;
        for layer in self.encoder.lora_linears_mut() {
            if config.targets(&layer.path) {
                layer.add_adapter(name, config, &vb)?;
                targeted += 1;
            }
        }
        if targeted == 0 {
            bail!("LoRA target_modules {:?} match no layer of this encoder", config.target_modules);
        }
        let head_vb = vb.pp(PEFT_PREFIX);
        let head = match self.arch {
            Arch::Bert => RewardHead::load_bert(head_vb, &serde_json::from_value(self.config.clone())?, outputs)?,
            Arch::Deberta => RewardHead::load_deberta(head_vb, &serde_json::from_value(self.config.clone())?, outputs)?,
        };
        self.adapters.insert(name.to_string(), AdapterEntry { config: config.clone(), head, store });
        Ok(())
    }

    /// Saves adapter `name` in PEFT's layout: A/B of every targeted layer and the reward head
    /// (`modules_to_save`), so reloading never loses the head. `target_modules` is written as a pattern
    /// matching exactly the adapted layers. The directory is written whole under a temporary name.
    pub fn save_adapter(&self, name: &str, dir: &Path, base_model: &str) -> Result<()> {
        let staged = StagedDir::new(dir)?;
        self.write_adapter(name, staged.path(), base_model)?;
        staged.commit()?;
        Ok(())
    }

    /// Writes adapter `name`'s files (PEFT layout) into `dir`, a directory being staged.
    pub fn write_adapter(&self, name: &str, dir: &Path, base_model: &str) -> Result<()> {
        let entry = self.adapters.get(name).with_context(|| format!("no adapter named `{name}`"))?;
        let mut tensors = HashMap::new();
        let mut adapted = Vec::new();
        for layer in self.encoder.lora_linears() {
            if let Some(adapter) = layer.adapter(name) {
                tensors.insert(format!("{PEFT_PREFIX}.{}.lora_A.weight", layer.path), adapter.a.clone());
                tensors.insert(format!("{PEFT_PREFIX}.{}.lora_B.weight", layer.path), adapter.b.clone());
                adapted.push(layer.path.as_str());
            }
        }
        for (key, t) in head_tensors(self.arch, &entry.head) {
            tensors.insert(format!("{PEFT_PREFIX}.{key}"), t);
        }
        // PEFT saves the reward head of a sequence-classification model as modules_to_save.
        let modules_to_save = ["classifier", "pooler"];
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "SEQ_CLS",
            "base_model_name_or_path": base_model,
            "r": entry.config.rank,
            "lora_alpha": entry.config.alpha,
            "lora_dropout": entry.config.dropout,
            "target_modules": TargetModules::exactly(&adapted),
            "modules_to_save": modules_to_save,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true
        });
        std::fs::create_dir_all(dir)?;
        save_safetensors(&tensors, &dir.join("adapter_model.safetensors"))?;
        write_atomic(&dir.join("adapter_config.json"), &serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    /// Folds adapter `name` into the encoder and makes its head the model's head, for export.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        let entry = self.adapters.remove(name).with_context(|| format!("no adapter named `{name}`"))?;
        for layer in self.encoder.lora_linears_mut() {
            layer.merge(name)?;
        }
        // Recorded in config.json, so the same adapter is never applied a second time on top.
        let mut merged = self.config.get(MERGED_KEY).and_then(|v| v.as_array()).cloned().unwrap_or_default();
        merged.push(name.into());
        self.config[MERGED_KEY] = merged.into();
        self.head = entry.head;
        self.new_head.clear();
        Ok(())
    }

    /// The model's own head tensors, in checkpoint naming.
    pub fn head_tensors(&self) -> Vec<(String, Tensor)> {
        head_tensors(self.arch, &self.head)
    }

    /// The encoder tensors the forward pass uses and the model's head, in checkpoint naming, with any
    /// merged adapter folded in (tensors of the checkpoint the model never uses are left out).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in self.encoder_store.used() {
            tensors.insert(name, t.detach());
        }
        for layer in self.encoder.lora_linears() {
            tensors.insert(format!("{}.weight", layer.path), layer.weight.detach());
            if let Some(b) = &layer.bias {
                tensors.insert(format!("{}.bias", layer.path), b.detach());
            }
        }
        for (key, t) in self.head_tensors() {
            tensors.insert(key, t.detach());
        }
        Ok(tensors)
    }

    /// Saves the model as a Hugging Face checkpoint (`config.json` with one label, `model.safetensors`,
    /// `tokenizer.json`) that transformers loads as `…ForSequenceClassification`. The directory is
    /// written whole under a temporary name, synced and renamed, so it is never half old, half new.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        let staged = StagedDir::new(dir)?;
        self.write_pretrained(staged.path())?;
        staged.commit()?;
        Ok(())
    }

    /// Writes the checkpoint files into `dir` (a directory being staged).
    pub fn write_pretrained(&self, dir: &Path) -> Result<()> {
        self.base_head()?;
        std::fs::create_dir_all(dir)?;
        let mut config = self.config.clone();
        let class = match self.arch {
            Arch::Bert => "BertForSequenceClassification",
            Arch::Deberta => "DebertaV2ForSequenceClassification",
        };
        config["architectures"] = serde_json::json!([class]);
        config["num_labels"] = self.labels.len().into();
        let id2label: serde_json::Map<String, serde_json::Value> =
            self.labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            self.labels.iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect();
        config["id2label"] = id2label.into();
        config["label2id"] = label2id.into();
        if self.labels.len() > 1 {
            config["problem_type"] = "single_label_classification".into();
        }
        write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
        save_safetensors(&self.state_dict()?, &dir.join("model.safetensors"))?;
        write_atomic(&dir.join("tokenizer.json"), self.tokens.tokenizer_json()?.as_bytes())?;
        Ok(())
    }

    /// The encoder's trainable variables alone (full fine-tuning), without any head.
    pub fn encoder_vars(&self) -> Vec<(String, Var)> {
        self.encoder_store.vars()
    }

    /// The encoder's output for a batch, `(batch, seq, hidden)`.
    pub fn hidden(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        Ok(self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, ctx)?)
    }

    /// Writes the encoder alone as a Hugging Face base model (`BertModel`, `DebertaV2Model`) into `dir`:
    /// for methods whose head transformers has no class for (MoRE), so Python never loads it as a
    /// reward model it is not.
    pub fn write_encoder(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut config = self.config.clone();
        let class = match self.arch {
            Arch::Bert => "BertModel",
            Arch::Deberta => "DebertaV2Model",
        };
        config["architectures"] = serde_json::json!([class]);
        if let Some(map) = config.as_object_mut() {
            for key in ["num_labels", "id2label", "label2id", "problem_type"] {
                map.remove(key);
            }
        }
        write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
        let heads: Vec<String> = self.head_tensors().into_iter().map(|(k, _)| k).collect();
        let mut tensors = self.state_dict()?;
        tensors.retain(|k, _| !heads.contains(k));
        save_safetensors(&tensors, &dir.join("model.safetensors"))?;
        write_atomic(&dir.join("tokenizer.json"), self.tokens.tokenizer_json()?.as_bytes())?;
        Ok(())
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

    /// Parameters of adapter `name`: its A/B matrices and its head.
    pub fn adapter_parameter_count(&self, name: &str) -> usize {
        let lora: usize = self
            .encoder
            .lora_linears()
            .iter()
            .filter_map(|l| l.adapter(name))
            .map(|a| a.a.elem_count() + a.b.elem_count())
            .sum();
        let head = self.adapters.get(name).map(|e| count(&head_tensors(self.arch, &e.head))).unwrap_or(0);
        lora + head
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

/// The LoRA fields of a PEFT `adapter_config.json` (which has many more).
fn read_peft_config(path: &Path) -> Result<LoraConfig> {
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    if let Some(kind) = value.get("peft_type").and_then(|v| v.as_str()).filter(|k| *k != "LORA") {
        bail!("{}: peft_type `{kind}` is not supported (only LORA)", path.display());
    }
    let field = |name: &str| value.get(name).with_context(|| format!("{}: missing `{name}`", path.display()));
    let rank = field("r")?.as_u64().with_context(|| format!("{}: `r` is not an integer", path.display()))?;
    let alpha =
        field("lora_alpha")?.as_f64().with_context(|| format!("{}: `lora_alpha` is not a number", path.display()))?;
    let target_modules: TargetModules = serde_json::from_value(field("target_modules")?.clone())
        .with_context(|| format!("{}: `target_modules` is neither a list of names nor a pattern", path.display()))?;
    let dropout = match value.get("lora_dropout") {
        None | Some(serde_json::Value::Null) => 0.0,
        Some(v) => v.as_f64().with_context(|| format!("{}: `lora_dropout` is not a number", path.display()))?,
    };
    // PEFT options that change the scale, the layers or the arithmetic: refused rather than ignored.
    let off = |key: &str, default_ok: &dyn Fn(&serde_json::Value) -> bool| -> Result<()> {
        match value.get(key) {
            Some(v) if !v.is_null() && !default_ok(v) => {
                bail!("{}: `{key}: {v}` is not supported (rmroute implements plain LoRA)", path.display())
            }
            _ => Ok(()),
        }
    };
    off("use_rslora", &|v| v == false)?;
    off("use_dora", &|v| v == false)?;
    off("fan_in_fan_out", &|v| v == false)?;
    off("bias", &|v| v == "none")?;
    off("rank_pattern", &|v| v.as_object().is_some_and(|o| o.is_empty()))?;
    off("alpha_pattern", &|v| v.as_object().is_some_and(|o| o.is_empty()))?;
    off("layers_to_transform", &|_| false)?;
    let config = LoraConfig { rank: rank as usize, alpha, dropout, target_modules };
    config.validate().map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(config)
}

fn is_head_tensor(arch: Arch, key: &str) -> bool {
    key.starts_with("classifier.")
        || match arch {
            Arch::Bert => key.starts_with("bert.pooler."),
            Arch::Deberta => key.starts_with("pooler."),
        }
}

fn head_tensors(arch: Arch, head: &RewardHead) -> Vec<(String, Tensor)> {
    let pooler = match arch {
        Arch::Bert => "bert.pooler.dense",
        Arch::Deberta => "pooler.dense",
    };
    let mut out = vec![(format!("{pooler}.weight"), head.pooler.weight.clone())];
    if let Some(b) = &head.pooler.bias {
        out.push((format!("{pooler}.bias"), b.clone()));
    }
    out.push(("classifier.weight".into(), head.classifier.weight.clone()));
    if let Some(b) = &head.classifier.bias {
        out.push(("classifier.bias".into(), b.clone()));
    }
    out
}

/// Writes safetensors through a temporary file, synced, and a rename.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.safetensors");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    sync_file(&tmp).with_context(|| format!("syncing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
