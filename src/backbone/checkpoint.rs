//! Reading a checkpoint directory in Hugging Face layout (`config.json`, the weights, the tokenizer),
//! local or, online, by hub id through hf-hub.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use super::{family, Family, FAMILIES};

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
    ("tokenizer", &["tokenizer.json", "spm.model", "vocab.txt"]),
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
    // A tokenizer built from vocab.txt takes `do_lower_case` from tokenizer_config.json, which is optional.
    if found.iter().any(|p| p.ends_with("vocab.txt"))
        && cache.model(spec.to_string()).get("tokenizer_config.json").is_none()
    {
        if let Some(api) = &api {
            let _ = api.model(spec.to_string()).get("tokenizer_config.json");
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
    let mut config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&config_path).with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    if !config.is_object() {
        bail!("{}: not a JSON object", config_path.display());
    }
    let family = match config.get("model_type").filter(|v| !v.is_null()) {
        Some(model_type) => {
            let model_type = model_type
                .as_str()
                .with_context(|| format!("{}: `model_type` is not a string", config_path.display()))?;
            family(model_type).map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))?
        }
        None => {
            let name = model_name(dir);
            let found = model_type_in_name(&name);
            let Some(family) = found.and_then(|t| family(t).ok()) else {
                let known: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
                let names = match found {
                    Some(other) => format!("names `{other}`, not a family rmroute reads"),
                    None => "names no family rmroute reads".to_string(),
                };
                bail!(
                    "{}: no `model_type`, and the checkpoint's name `{name}` {names} ({}). \
                     Add \"model_type\" to config.json (\"model_type\": \"bert\" for a BERT).",
                    config_path.display(),
                    known.join(", ")
                );
            };
            // Written back into the config, so a model saved from this checkpoint names its family.
            config["model_type"] = family.model_type.into();
            family
        }
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

/// The name transformers matched families in for a config without `model_type`: the hub id for a
/// directory in the hub cache (`…/models--prajjwal1--bert-small/snapshots/<commit>`), else the
/// directory's own name.
fn model_name(dir: &Path) -> String {
    let dir =
        if dir.file_name().is_none() { dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()) } else { dir.into() };
    let name = |p: Option<&Path>| p.and_then(Path::file_name).map(|n| n.to_string_lossy().into_owned());
    let snapshots = dir.parent();
    if name(snapshots).as_deref() == Some("snapshots") {
        if let Some(repo) = name(snapshots.and_then(Path::parent)).as_deref().and_then(|n| n.strip_prefix("models--")) {
            return repo.replace("--", "/");
        }
    }
    name(Some(&dir)).unwrap_or_default()
}

/// transformers' model types (`CONFIG_MAPPING` keys in 5.25) that contain a family's: a name holding
/// one of them is that model, not the family (`distilbert-base`, `microsoft/deberta-v3-small` are no BERT).
const OTHER_TYPES: &[&str] = &[
    "albert",
    "bert-generation",
    "camembert",
    "colmodernvbert",
    "convbert",
    "deberta",
    "distilbert",
    "eurobert",
    "flaubert",
    "hubert",
    "ibert",
    "megatron-bert",
    "mobilebert",
    "modernbert",
    "modernbert-decoder",
    "modernvbert",
    "nomic_bert",
    "rembert",
    "roberta-prelayernorm",
    "roc_bert",
    "squeezebert",
    "ultrabert",
    "ultravbert",
    "visual_bert",
    "wav2vec2-bert",
    "xlm-roberta",
    "xlm-roberta-xl",
];

/// The longest model type found in `name`, as transformers 4's `AutoConfig` picked a config class for
/// a `config.json` without `model_type` (`roberta-base` is RoBERTa, not BERT).
fn model_type_in_name(name: &str) -> Option<&'static str> {
    let types = FAMILIES.iter().map(|f| f.model_type).chain(OTHER_TYPES.iter().copied());
    types.filter(|t| name.contains(t)).max_by_key(|t| t.len())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint directory `name` under `root` whose config.json has no `model_type`.
    fn untyped_checkpoint(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("config.json"), r#"{"hidden_size": 4}"#).unwrap();
        std::fs::write(dir.join("vocab.txt"), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n").unwrap();
        let tensors = HashMap::from([("x".to_string(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())]);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        dir
    }

    #[test]
    fn model_type_in_name_is_the_longest_found() {
        let found = model_type_in_name;
        assert_eq!(found("bert-small"), Some("bert"));
        assert_eq!(found("prajjwal1/bert-small"), Some("bert"));
        assert_eq!(found("roberta-base"), Some("roberta"), "roberta contains bert: the longer name wins");
        assert_eq!(found("FacebookAI/roberta-base"), Some("roberta"));
        assert_eq!(found("microsoft/deberta-v2-xlarge"), Some("deberta-v2"));
        assert_eq!(found("openai-community/gpt2"), Some("gpt2"));
        // DeBERTa-v3 names hold `bert` too, but are DeBERTa (v1 for transformers 4), which rmroute does not read.
        assert_eq!(found("microsoft/deberta-v3-small"), Some("deberta"));
        assert_eq!(found("distilbert-base-uncased"), Some("distilbert"));
        assert_eq!(found("FacebookAI/xlm-roberta-base"), Some("xlm-roberta"));
        assert_eq!(found("t5-small"), None);
    }

    #[test]
    fn model_name_is_the_hub_id_in_the_hub_cache_else_the_directory_name() {
        let hub = Path::new("/cache/hub/models--prajjwal1--bert-small/snapshots/0123abcd");
        assert_eq!(model_name(hub), "prajjwal1/bert-small");
        assert_eq!(model_name(Path::new("/data/models/bert-small")), "bert-small");
        assert_eq!(model_name(Path::new("/data/models/bert-small/")), "bert-small");
        assert_eq!(model_name(Path::new("/data/snapshots/x")), "x");
    }

    #[test]
    fn config_without_model_type_takes_the_family_its_name_names() {
        let root = tempfile::tempdir().unwrap();
        for (name, expected) in [
            ("bert-small", "bert"),
            ("roberta-base", "roberta"),
            ("models--prajjwal1--bert-small/snapshots/0123abcd", "bert"),
        ] {
            let checkpoint = load_checkpoint(&untyped_checkpoint(root.path(), name)).unwrap();
            assert_eq!(checkpoint.family.model_type, expected, "{name}");
            // Written into the config, so a model saved from it reloads under any directory name.
            assert_eq!(checkpoint.config["model_type"], expected, "{name}");
        }
    }

    #[test]
    fn config_without_model_type_and_no_family_of_ours_in_the_name_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let err = load_checkpoint(&untyped_checkpoint(root.path(), "tiny-model")).err().unwrap().to_string();
        assert!(err.contains("config.json: no `model_type`"), "{err}");
        assert!(err.contains("`tiny-model` names no family rmroute reads (bert"), "{err}");
        assert!(err.contains("Add \"model_type\" to config.json"), "{err}");
        let err = load_checkpoint(&untyped_checkpoint(root.path(), "deberta-v3-small")).err().unwrap().to_string();
        assert!(err.contains("`deberta-v3-small` names `deberta`, not a family rmroute reads"), "{err}");
    }

    #[test]
    fn config_that_is_not_an_object_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let dir = untyped_checkpoint(root.path(), "bert-small");
        std::fs::write(dir.join("config.json"), "[1, 2]").unwrap();
        let err = load_checkpoint(&dir).err().unwrap().to_string();
        assert!(err.contains("not a JSON object"), "{err}");
    }
}
