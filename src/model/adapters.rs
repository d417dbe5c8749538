//! Named LoRA adapters, each with its own head: new ones, ones loaded from PEFT files, merged in.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use super::peft::{read_peft_config, MERGED_KEY};
use super::{count, AdapterEntry, RewardModel};
use crate::heads::RewardHead;
use crate::nn::lora::{LoraConfig, PEFT_PREFIX};
use crate::nn::params::ParamStore;

impl RewardModel {
    /// Adapter `name`; an error naming the adapters there are.
    pub fn adapter(&self, name: &str) -> Result<&AdapterEntry> {
        self.adapters
            .get(name)
            .with_context(|| format!("no adapter named `{name}` (have: {})", self.adapter_names().join(", ")))
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
            if key.starts_with(&format!("{}.", self.head_layout.classifier_key)) && self.head.outputs() != outputs {
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
            .get(&format!("{PEFT_PREFIX}.{}.weight", self.head_layout.classifier_key))
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
        let head = RewardHead::load(head_vb, &self.head_layout, outputs)?;
        self.adapters.insert(name.to_string(), AdapterEntry { config: config.clone(), head, store });
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

    /// Parameters of adapter `name`: its A/B matrices and its head.
    pub fn adapter_parameter_count(&self, name: &str) -> usize {
        let lora: usize = self
            .encoder
            .lora_linears()
            .iter()
            .filter_map(|l| l.adapter(name))
            .map(|a| a.a.elem_count() + a.b.elem_count())
            .sum();
        let head = self.adapters.get(name).map(|e| count(&e.head.tensors(&self.head_layout))).unwrap_or(0);
        lora + head
    }
}
