//! Reading a checkpoint directory in Hugging Face layout (`config.json`, the weights, the tokenizer),
//! local or, online, by hub id through hf-hub.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::{family, Family};

/// A checkpoint's config and tensors, with tensor names in the layout of transformers'
/// `…ForSequenceClassification` (`bert.…`/`deberta.…`, `classifier.…`).
pub struct Checkpoint {
    pub dir: PathBuf,
    pub family: &'static Family,
    /// `config.json` as read.
    pub config: serde_json::Value,
    pub tensors: HashMap<String, Tensor>,
    /// The weights file, for error messages.
    pub weights: PathBuf,
}

impl Checkpoint {
    /// `config.json` read as the family's config type; errors name the file and the key.
    pub fn parse_config<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        crate::io::from_value(&self.config).with_context(|| format!("{}/config.json", self.dir.display()))
    }

    /// An error about `config.json`, naming it.
    pub fn config_error(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}/config.json: {e}", self.dir.display())
    }
}

/// Refuses encoder shapes that would divide by zero or build an empty model.
pub fn check_shape(
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
    let family = match config.get("model_type").and_then(|v| v.as_str()) {
        Some(model_type) => family(model_type).map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?,
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
    let mut tensors = HashMap::new();
    for (name, tensor) in raw {
        let tensor = if tensor.dtype() == DType::F32 || tensor.dtype().is_int() {
            tensor
        } else {
            tensor.to_dtype(DType::F32)?
        };
        tensors.insert(canonical_name(family, &name), tensor);
    }
    Ok(Checkpoint { dir: dir.to_path_buf(), family, config, tensors, weights })
}

/// Encoder tensors saved without their model prefix (a bare `BertModel`, as all-MiniLM-L6-v2 ships)
/// get it, so every checkpoint reads like `…ForSequenceClassification`.
fn canonical_name(family: &Family, name: &str) -> String {
    if family.bare_modules.iter().any(|m| name.starts_with(m) && name[m.len()..].starts_with('.')) {
        format!("{}.{name}", family.prefix)
    } else {
        name.to_string()
    }
}
