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
use crate::data::io::write_atomic;
use crate::heads::RewardHead;
use crate::lora::{LoraConfig, PEFT_PREFIX};
use crate::nn::{Adapters, Ctx};

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: Device,
    /// Full fine-tuning: encoder weights become trainable variables. Otherwise they are frozen.
    pub train_encoder: bool,
    /// Seeds the initialisation of anything the checkpoint lacks (a new reward head).
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { device: Device::Cpu, train_encoder: false, seed: 0 }
    }
}

/// Token ids of a padded batch, `(batch, seq)` each.
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    /// Rows that had to be truncated to `max_length`.
    pub truncated: usize,
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
    pub tokenizer: Tokenizer,
    /// The checkpoint's `config.json`.
    pub config: serde_json::Value,
    pub device: Device,
    /// Longest input in tokens; longer pairs keep the end of the prompt and the start of the response.
    pub max_length: usize,
    pub adapters: BTreeMap<String, AdapterEntry>,
    encoder_store: Arc<ParamStore>,
    head_store: Arc<ParamStore>,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
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
        let head_tensors: HashMap<String, Tensor> = checkpoint
            .tensors
            .iter()
            .filter(|(k, _)| is_head_tensor(checkpoint.arch, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let encoder_tensors: HashMap<String, Tensor> =
            checkpoint.tensors.into_iter().filter(|(k, _)| !is_head_tensor(checkpoint.arch, k)).collect();
        let encoder_store = ParamStore::from_tensors(encoder_tensors, source.clone(), opts.train_encoder);
        let head_store = ParamStore::trainable(head_tensors, source, opts.seed);
        let vb = encoder_store.var_builder(DType::F32, &opts.device);
        let head_vb = head_store.var_builder(DType::F32, &opts.device);
        let prefix = checkpoint.arch.prefix();
        let (encoder, head, max_positions) = match (bert_config, deberta_config) {
            (Some(cfg), _) => {
                let head = RewardHead::load_bert(head_vb, &cfg)?;
                (Encoder::Bert(Box::new(Bert::load(vb.pp(prefix), &cfg)?)), head, cfg.max_position_embeddings)
            }
            (_, Some(cfg)) => {
                let head = RewardHead::load_deberta(head_vb, &cfg)?;
                (Encoder::Deberta(Box::new(Deberta::load(vb.pp(prefix), &cfg)?)), head, cfg.max_position_embeddings)
            }
            (None, None) => bail!("no encoder config"),
        };
        let id = |name: &str| tokenizer.token_to_id(name).with_context(|| format!("the tokenizer has no {name} token"));
        Ok(Self {
            arch: checkpoint.arch,
            encoder,
            head,
            cls_id: id("[CLS]")?,
            sep_id: id("[SEP]")?,
            pad_id: tokenizer.token_to_id("[PAD]").unwrap_or(0),
            tokenizer,
            config: checkpoint.config,
            device: opts.device.clone(),
            max_length: max_positions.min(512),
            adapters: BTreeMap::new(),
            encoder_store,
            head_store,
        })
    }

    /// Tokenizes `(prompt, response)` pairs as transformers' `tokenizer(prompt, response)` does
    /// (`[CLS] prompt [SEP] response [SEP]`, token types 0/1), padded to the longest row.
    pub fn encode(&self, pairs: &[(&str, &str)]) -> Result<Batch> {
        let mut rows: Vec<(Vec<u32>, Vec<u32>)> = Vec::with_capacity(pairs.len());
        let mut truncated = 0;
        for (prompt, response) in pairs {
            let encoding = self.tokenizer.encode((*prompt, *response), true).map_err(anyhow::Error::msg)?;
            if encoding.get_ids().len() <= self.max_length {
                rows.push((encoding.get_ids().to_vec(), encoding.get_type_ids().to_vec()));
                continue;
            }
            truncated += 1;
            let ids = |text: &str| -> Result<Vec<u32>> {
                Ok(self.tokenizer.encode(text, false).map_err(anyhow::Error::msg)?.get_ids().to_vec())
            };
            let (p, r) = (ids(prompt)?, ids(response)?);
            let budget = self.max_length.saturating_sub(3);
            let keep_r = r.len().min(budget.saturating_sub(p.len()).max(budget / 2));
            let keep_p = p.len().min(budget - keep_r);
            let mut input = vec![self.cls_id];
            input.extend_from_slice(&p[p.len() - keep_p..]);
            input.push(self.sep_id);
            let first_b = input.len();
            input.extend_from_slice(&r[..keep_r]);
            input.push(self.sep_id);
            let types = (0..input.len()).map(|i| u32::from(i >= first_b)).collect();
            rows.push((input, types));
        }
        let seq = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
        let (mut ids, mut types, mut mask) = (Vec::new(), Vec::new(), Vec::new());
        for (row_ids, row_types) in &rows {
            let pad = seq - row_ids.len();
            ids.extend(row_ids.iter().copied().chain(std::iter::repeat_n(self.pad_id, pad)));
            types.extend(row_types.iter().copied().chain(std::iter::repeat_n(0, pad)));
            mask.extend(std::iter::repeat_n(1u32, row_ids.len()).chain(std::iter::repeat_n(0, pad)));
        }
        let shape = (rows.len(), seq);
        Ok(Batch {
            input_ids: Tensor::from_vec(ids, shape, &self.device)?,
            token_type_ids: Tensor::from_vec(types, shape, &self.device)?,
            attention_mask: Tensor::from_vec(mask, shape, &self.device)?,
            truncated,
        })
    }

    /// Rewards `(batch,)` for an encoded batch; the adapters in `ctx` pick the encoder adapters and heads.
    pub fn forward(&self, batch: &Batch, ctx: &Ctx) -> Result<Tensor> {
        if let Adapters::One(name) = &ctx.adapters {
            if !self.adapters.contains_key(name) {
                bail!("no adapter named `{name}` (have: {})", self.adapter_names().join(", "));
            }
        }
        let hidden = self.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, ctx)?;
        Ok(match &ctx.adapters {
            Adapters::None => self.head.forward(&hidden, ctx)?,
            Adapters::One(name) => self.adapters[name].head.forward(&hidden, ctx)?,
            Adapters::PerRow(names) => {
                // Every head scores every row; each row keeps its own head's reward.
                let mut picked: Option<Tensor> = None;
                let mut heads: Vec<(Option<&String>, &RewardHead)> = vec![(None, &self.head)];
                heads.extend(self.adapters.iter().map(|(n, a)| (Some(n), &a.head)));
                for (name, head) in heads {
                    let rows: Vec<f32> = names.iter().map(|n| f32::from(u8::from(n.as_ref() == name))).collect();
                    if rows.iter().all(|&r| r == 0.0) {
                        continue;
                    }
                    let select = Tensor::from_vec(rows, names.len(), &self.device)?;
                    let part = (head.forward(&hidden, ctx)? * select)?;
                    picked = Some(match picked {
                        Some(sum) => (sum + part)?,
                        None => part,
                    });
                }
                match picked {
                    Some(t) => t,
                    None => Tensor::zeros(names.len(), DType::F32, &self.device)?,
                }
            }
        })
    }

    /// Rewards for `(prompt, response)` pairs in batches of `batch_size`, in evaluation mode.
    pub fn score(&self, pairs: &[(&str, &str)], batch_size: usize, adapters: &Adapters) -> Result<Vec<f32>> {
        let ctx = Ctx::eval().with_adapters(adapters.clone());
        let mut out = Vec::with_capacity(pairs.len());
        for chunk in pairs.chunks(batch_size.max(1)) {
            let batch = self.encode(chunk)?;
            out.extend(self.forward(&batch, &ctx)?.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    pub fn adapter_names(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// Adds a new adapter (A ~ U(±1/√in), B = 0) and its own head, a copy of the model's head.
    pub fn add_adapter(&mut self, name: &str, config: &LoraConfig, seed: u64) -> Result<()> {
        let mut head_tensors = HashMap::new();
        for (key, t) in self.head_tensors() {
            head_tensors.insert(format!("{PEFT_PREFIX}.{key}"), t.detach());
        }
        let store = ParamStore::trainable(head_tensors, format!("adapter `{name}`"), seed);
        self.attach_adapter(name, config, store)
    }

    /// Loads an adapter saved in PEFT's layout (`adapter_config.json`, `adapter_model.safetensors`).
    /// `trainable` makes its tensors variables (to continue training it).
    pub fn load_adapter(&mut self, dir: &Path, name: &str, trainable: bool) -> Result<()> {
        let config_path = dir.join("adapter_config.json");
        let config = read_peft_config(&config_path)?;
        let weights = dir.join("adapter_model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &Device::Cpu)
            .with_context(|| format!("reading {}", weights.display()))?;
        let source = weights.display().to_string();
        let store = if trainable {
            ParamStore::trainable(tensors, source, 0)
        } else {
            ParamStore::from_tensors(tensors, source, false)
        };
        self.attach_adapter(name, &config, store)
    }

    fn attach_adapter(&mut self, name: &str, config: &LoraConfig, store: Arc<ParamStore>) -> Result<()> {
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
            Arch::Bert => RewardHead::load_bert(head_vb, &serde_json::from_value(self.config.clone())?)?,
            Arch::Deberta => RewardHead::load_deberta(head_vb, &serde_json::from_value(self.config.clone())?)?,
        };
        self.adapters.insert(name.to_string(), AdapterEntry { config: config.clone(), head, store });
        Ok(())
    }

    /// Saves adapter `name` in PEFT's layout: A/B of every targeted layer and the reward head
    /// (`modules_to_save`), so reloading never loses the head.
    pub fn save_adapter(&self, name: &str, dir: &Path, base_model: &str) -> Result<()> {
        let entry = self.adapters.get(name).with_context(|| format!("no adapter named `{name}`"))?;
        let mut tensors = HashMap::new();
        for layer in self.encoder.lora_linears() {
            if let Some(adapter) = layer.adapter(name) {
                tensors.insert(format!("{PEFT_PREFIX}.{}.lora_A.weight", layer.path), adapter.a.clone());
                tensors.insert(format!("{PEFT_PREFIX}.{}.lora_B.weight", layer.path), adapter.b.clone());
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
            "target_modules": entry.config.target_modules,
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
        self.head = entry.head;
        Ok(())
    }

    /// The model's own head tensors, in checkpoint naming.
    pub fn head_tensors(&self) -> Vec<(String, Tensor)> {
        head_tensors(self.arch, &self.head)
    }

    /// Every encoder and head tensor in checkpoint naming (adapters not merged in).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, var) in self.encoder_store.vars() {
            tensors.insert(name, var.as_tensor().detach());
        }
        if tensors.is_empty() {
            // Frozen encoder: its tensors are the loaded ones (LoRA layers may have been merged).
            for key in self.encoder_store.names() {
                if let Some(t) = self.encoder_store.tensor(&key) {
                    tensors.insert(key, t);
                }
            }
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
    /// `tokenizer.json`) that transformers loads as `…ForSequenceClassification`.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut config = self.config.clone();
        let class = match self.arch {
            Arch::Bert => "BertForSequenceClassification",
            Arch::Deberta => "DebertaV2ForSequenceClassification",
        };
        config["architectures"] = serde_json::json!([class]);
        config["num_labels"] = 1.into();
        config["id2label"] = serde_json::json!({"0": "LABEL_0"});
        config["label2id"] = serde_json::json!({"LABEL_0": 0});
        write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
        save_safetensors(&self.state_dict()?, &dir.join("model.safetensors"))?;
        let tokenizer_json = self.tokenizer.to_string(true).map_err(anyhow::Error::msg)?;
        write_atomic(&dir.join("tokenizer.json"), tokenizer_json.as_bytes())?;
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
        let head = self
            .adapters
            .get(name)
            .map(|e| head_tensors(self.arch, &e.head).iter().map(|(_, t)| t.elem_count()).sum())
            .unwrap_or(0);
        lora + head
    }

    /// Parameters of the encoder and base head.
    pub fn parameter_count(&self) -> usize {
        self.state_dict().map(|t| t.values().map(|t| t.elem_count()).sum()).unwrap_or(0)
    }
}

/// The LoRA fields of a PEFT `adapter_config.json` (which has many more).
fn read_peft_config(path: &Path) -> Result<LoraConfig> {
    let value: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).with_context(|| format!("reading {}", path.display()))?)
            .with_context(|| format!("parsing {}", path.display()))?;
    let field = |name: &str| value.get(name).with_context(|| format!("{}: missing `{name}`", path.display()));
    let rank = field("r")?.as_u64().with_context(|| format!("{}: `r` is not an integer", path.display()))?;
    let alpha =
        field("lora_alpha")?.as_f64().with_context(|| format!("{}: `lora_alpha` is not a number", path.display()))?;
    let target_modules: Vec<String> = serde_json::from_value(field("target_modules")?.clone())
        .with_context(|| format!("{}: `target_modules` is not a list of names", path.display()))?;
    let dropout = value.get("lora_dropout").and_then(|v| v.as_f64()).unwrap_or(0.0) as f32;
    Ok(LoraConfig { rank: rank as usize, alpha, dropout, target_modules })
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

/// Writes safetensors through a temporary file and a rename.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let tensors: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<_>>()?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model.safetensors");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    candle_core::safetensors::save(&tensors, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
