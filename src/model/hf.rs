//! The model out as a Hugging Face checkpoint: `…ForSequenceClassification` (`config.json` with its
//! labels, `model.safetensors`, `tokenizer.json`), or the bare encoder.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Result;
use candle_core::Tensor;

use super::RewardModel;
use crate::io::{save_safetensors, write_atomic, StagedDir};

impl RewardModel {
    /// The model's own head tensors, in checkpoint naming.
    pub fn head_tensors(&self) -> Vec<(String, Tensor)> {
        self.head.tensors(&self.head_layout)
    }

    /// The encoder tensors the forward pass uses and the model's head, in checkpoint naming, with any
    /// merged adapter folded in (tensors of the checkpoint the model never uses are left out).
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        for (name, t) in self.encoder_store.used() {
            tensors.insert(name, t.detach());
        }
        for layer in self.encoder.lora_linears() {
            tensors.insert(format!("{}.weight", layer.path), layer.stored_weight()?.detach());
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
        config["architectures"] = serde_json::json!([self.family.classifier_class]);
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
        // transformers reads a decoder's reward at the last token that is not `pad_token_id`, and
        // refuses batches without one: name the id rmroute pads with (GPT-2's eos).
        let decoder = self.head_layout.read_at == crate::backbone::ReadAt::LastReal;
        if decoder && config.get("pad_token_id").is_none_or(|v| v.is_null()) {
            config["pad_token_id"] = self.tokens.pad_id.into();
        }
        write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(&config)?)?;
        save_safetensors(&self.state_dict()?, &dir.join("model.safetensors"))?;
        write_atomic(&dir.join("tokenizer.json"), self.tokens.tokenizer_json()?.as_bytes())?;
        Ok(())
    }

    /// Writes the encoder alone as a Hugging Face base model (`BertModel`, `DebertaV2Model`) into `dir`:
    /// for methods whose head transformers has no class for (MoRE), so Python never loads it as a
    /// reward model it is not.
    pub fn write_encoder(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut config = self.config.clone();
        config["architectures"] = serde_json::json!([self.family.base_class]);
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
}
