//! Encoders (DeBERTa-v2/v3, BERT) with LoRA-capable projections, and loading Hugging Face checkpoints
//! from a local directory or, online, by hub id.

pub mod bert;
pub mod deberta;
pub mod params;
pub mod tokenizer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::lora::LoraLinear;
use crate::nn::Ctx;

/// Defaults shared by the Hugging Face configs of both encoder families (transformers' values).
pub(crate) mod defaults {
    pub fn act() -> String {
        "gelu".into()
    }
    pub fn dropout() -> f32 {
        0.1
    }
    pub fn positions() -> usize {
        512
    }
    pub fn init() -> f64 {
        0.02
    }
}

pub use bert::{Bert, BertConfig};
pub use deberta::{Deberta, DebertaConfig};

/// The encoder families rmroute implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Bert,
    Deberta,
}

impl Arch {
    /// The attribute name of the encoder inside transformers' `…ForSequenceClassification`.
    pub fn prefix(self) -> &'static str {
        match self {
            Arch::Bert => "bert",
            Arch::Deberta => "deberta",
        }
    }
}

/// An encoder of either family.
pub enum Encoder {
    Bert(Box<Bert>),
    Deberta(Box<Deberta>),
}

impl Encoder {
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        ctx: &Ctx,
    ) -> candle_core::Result<Tensor> {
        match self {
            Encoder::Bert(m) => m.forward(input_ids, token_type_ids, attention_mask, ctx),
            Encoder::Deberta(m) => m.forward(input_ids, token_type_ids, attention_mask, ctx),
        }
    }

    pub fn lora_linears(&self) -> Vec<&LoraLinear> {
        match self {
            Encoder::Bert(m) => m.lora_linears(),
            Encoder::Deberta(m) => m.lora_linears(),
        }
    }

    pub fn lora_linears_mut(&mut self) -> Vec<&mut LoraLinear> {
        match self {
            Encoder::Bert(m) => m.lora_linears_mut(),
            Encoder::Deberta(m) => m.lora_linears_mut(),
        }
    }
}

/// A checkpoint's config and tensors, with tensor names in the layout of transformers'
/// `…ForSequenceClassification` (`bert.…`/`deberta.…`, `classifier.…`).
pub struct Checkpoint {
    pub dir: PathBuf,
    pub arch: Arch,
    /// `config.json` as read.
    pub config: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
    /// The weights file, for error messages.
    pub weights: PathBuf,
}

impl Checkpoint {
    pub fn bert_config(&self) -> Result<BertConfig> {
        let config: BertConfig = self.parse_config()?;
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        self.check(check_shape(h, heads, None, config.num_hidden_layers, config.vocab_size))?;
        Ok(config)
    }

    pub fn deberta_config(&self) -> Result<DebertaConfig> {
        let config: DebertaConfig = self.parse_config()?;
        let (h, heads) = (config.hidden_size, config.num_attention_heads);
        self.check(check_shape(h, heads, config.attention_head_size, config.num_hidden_layers, config.vocab_size))?;
        Ok(config)
    }

    fn parse_config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        crate::config::from_value(&self.config).with_context(|| format!("{}/config.json", self.dir.display()))
    }

    fn check(&self, result: std::result::Result<(), String>) -> Result<()> {
        result.map_err(|e| anyhow::anyhow!("{}/config.json: {e}", self.dir.display()))
    }
}

/// Refuses encoder shapes that would divide by zero or build an empty model.
fn check_shape(
    hidden: usize,
    heads: usize,
    head_size: Option<usize>,
    layers: usize,
    vocab: usize,
) -> std::result::Result<(), String> {
    for (name, value) in
        [("hidden_size", hidden), ("num_attention_heads", heads), ("num_hidden_layers", layers), ("vocab_size", vocab)]
    {
        if value == 0 {
            return Err(format!("`{name}` must be positive"));
        }
    }
    if head_size.is_none() && !hidden.is_multiple_of(heads) {
        return Err(format!("`hidden_size` {hidden} is not a multiple of `num_attention_heads` {heads}"));
    }
    if head_size == Some(0) {
        return Err("`attention_head_size` must be positive".into());
    }
    Ok(())
}

/// The files a checkpoint directory needs, as `(what, alternatives)`.
const NEEDED: [(&str, &[&str]); 3] = [
    ("config", &["config.json"]),
    ("weights", &["model.safetensors", "pytorch_model.bin"]),
    ("tokenizer", &["tokenizer.json", "spm.model"]),
];

/// A local checkpoint directory for `spec`: the path itself if it is a directory, else a hub id
/// fetched through hf-hub (from its cache when `HF_HUB_OFFLINE=1`).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() || spec.starts_with('.') || spec.starts_with('/') || spec.matches('/').count() > 1 {
        bail!("model `{spec}` is not a directory (expected a Hugging Face checkpoint directory or a hub id like `microsoft/deberta-v3-base`)");
    }
    let offline = std::env::var("HF_HUB_OFFLINE").map(|v| v == "1" || v.eq_ignore_ascii_case("true")).unwrap_or(false);
    let cache = hf_hub::Cache::from_env();
    let mut found: Vec<PathBuf> = Vec::new();
    let mut missing: Vec<String> = Vec::new();
    let api = if offline { None } else { hf_hub::api::sync::ApiBuilder::from_env().build().ok() };
    for (what, names) in NEEDED {
        let mut got = None;
        for name in names {
            got = cache.model(spec.to_string()).get(name);
            if got.is_none() {
                if let Some(api) = &api {
                    got = api.model(spec.to_string()).get(name).ok();
                }
            }
            if got.is_some() {
                break;
            }
        }
        match got {
            Some(p) => found.push(p),
            None => missing.push(format!("{what} ({})", names.join(" or "))),
        }
    }
    if !missing.is_empty() {
        bail!(
            "model `{spec}` is not a local directory, and the hub {} it: missing {}. Looked in the hub cache at {}. \
             Download it where the hub is reachable and pass the directory instead.",
            if offline { "is offline (HF_HUB_OFFLINE=1) and the cache lacks" } else { "could not provide" },
            missing.join(", "),
            cache.path().display()
        );
    }
    found[0].parent().map(Path::to_path_buf).context("hub cache path has no parent")
}

/// Reads `config.json` and the weights of a checkpoint directory.
pub fn load_checkpoint(dir: &Path) -> Result<Checkpoint> {
    let missing: Vec<String> = NEEDED
        .iter()
        .filter(|(_, names)| !names.iter().any(|n| dir.join(n).is_file()))
        .map(|(what, names)| format!("{what} ({})", names.join(" or ")))
        .collect();
    if !missing.is_empty() {
        bail!("checkpoint directory {} lacks {}", dir.display(), missing.join(", "));
    }
    let config_path = dir.join("config.json");
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let arch = match config.get("model_type").and_then(|v| v.as_str()) {
        Some("bert") => Arch::Bert,
        Some("deberta-v2") => Arch::Deberta,
        Some(other) => bail!("{}: model_type `{other}` is not supported (bert or deberta-v2)", config_path.display()),
        None => bail!("{}: no `model_type`", config_path.display()),
    };
    let (weights, raw) = if dir.join("model.safetensors").is_file() {
        let p = dir.join("model.safetensors");
        let t = candle_core::safetensors::load(&p, &Device::Cpu).with_context(|| format!("reading {}", p.display()))?;
        (p, t.into_iter().collect::<Vec<_>>())
    } else {
        let p = dir.join("pytorch_model.bin");
        let t = candle_core::pickle::read_all(&p).with_context(|| format!("reading {}", p.display()))?;
        (p, t)
    };
    let prefix = arch.prefix();
    let mut tensors = HashMap::new();
    for (name, tensor) in raw {
        let tensor = if tensor.dtype() == DType::F32 || tensor.dtype().is_int() {
            tensor
        } else {
            tensor.to_dtype(DType::F32)?
        };
        tensors.insert(canonical_name(arch, &name, prefix), tensor);
    }
    Ok(Checkpoint { dir: dir.to_path_buf(), arch, config, tensors, weights })
}

/// Encoder tensors saved without their model prefix (a bare `BertModel`, as all-MiniLM-L6-v2 ships)
/// get it, so every checkpoint reads like `…ForSequenceClassification`.
fn canonical_name(arch: Arch, name: &str, prefix: &str) -> String {
    let encoder_part = name.starts_with("embeddings.")
        || name.starts_with("encoder.")
        || (arch == Arch::Bert && name.starts_with("pooler."));
    if encoder_part {
        format!("{prefix}.{name}")
    } else {
        name.to_string()
    }
}
