//! One reward model that scores on its own: a Baseline or BaseLoRA run (its top-level model, or the
//! backbone with one of its adapters), or any Hugging Face reward model checkpoint with an optional
//! PEFT adapter (under `adapters/<name>/` or elsewhere).

use std::any::Any;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::manifest::RunMeta;
use super::scorer::{ScoreOptions, Scored, Scorer, Scores};
use crate::backbone::{resolve_model_dir, PairEncoder};
use crate::model::{LoadOptions, RewardModel};
use crate::nn::Adapters;

/// A reward model and the adapters its forward pass uses.
pub struct SingleModel {
    pub model: RewardModel,
    pub adapters: Adapters,
}

impl Scores for SingleModel {
    fn tokens(&self) -> &PairEncoder {
        &self.model.tokens
    }

    fn score(&self, pairs: &[(&str, &str)], batch_size: usize) -> Result<Scored> {
        Ok(Scored { rewards: self.model.score(pairs, batch_size, &self.adapters)?, domains: None })
    }

    fn parameter_count(&self) -> Option<usize> {
        Some(self.model.parameter_count())
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Scorer {
    /// A scorer of one reward model: the model and the adapters it scores with.
    pub fn single(&self) -> Option<(&RewardModel, &Adapters)> {
        self.downcast_ref::<SingleModel>().map(|s| (&s.model, &s.adapters))
    }
}

/// Loads a run of one reward model (`run` its manifest) or a plain checkpoint (`run` none).
///
/// A run scores with its top-level model (for BaseLoRA, the adapter merged into the backbone); naming
/// one of its adapters scores with the backbone plus that adapter instead, which gives the same
/// rewards. A plain checkpoint scores with its own head, or with the adapter named or the only one
/// under `adapters/`.
pub fn load(dir: &Path, run: Option<&RunMeta>, opts: &LoadOptions, choice: &ScoreOptions) -> Result<SingleModel> {
    let adapters_dir = dir.join("adapters");
    let wanted = match choice.adapter.as_deref() {
        Some(adapter) => Some(which_adapter(adapter, &adapters_dir)?),
        None => None,
    };
    let (mut model, adapters) = match (run, wanted) {
        (Some(meta), Some(Wanted::Named(name))) => {
            // The run's adapter on the backbone it was trained from (the top level has it merged in).
            let backbone = resolve_model_dir(&meta.backbone)
                .with_context(|| format!("loading the backbone of {} for adapter `{name}`", dir.display()))?;
            let mut model = RewardModel::load(&backbone, opts)?;
            model.load_adapter(&adapters_dir.join(&name), &name, false)?;
            (model, Adapters::One(name))
        }
        (Some(_), Some(Wanted::Elsewhere(path))) => bail!(
            "{} is an rmroute run: it scores with its own model or its adapters under {}. To score the adapter \
             in {}, pass the model it was trained for as --model",
            dir.display(),
            adapters_dir.display(),
            path.display()
        ),
        (Some(_), None) => (RewardModel::load(dir, opts)?, Adapters::None),
        (None, Some(wanted)) => {
            let path = match &wanted {
                Wanted::Named(name) => adapters_dir.join(name),
                Wanted::Elsewhere(path) => path.clone(),
            };
            let name = adapter_name(&path);
            let mut model = RewardModel::load(dir, opts)?;
            model.load_adapter(&path, &name, false)?;
            (model, Adapters::One(name))
        }
        (None, None) => {
            let mut model = RewardModel::load(dir, opts)?;
            match adapter_names(&adapters_dir)?.as_slice() {
                [] => (model, Adapters::None),
                [one] => {
                    model.load_adapter(&adapters_dir.join(one), one, false)?;
                    (model, Adapters::One(one.clone()))
                }
                several => {
                    bail!("{} holds several adapters ({}): pick one with --adapter", dir.display(), several.join(", "))
                }
            }
        }
    };
    let trained = run.map(|m| (m.config.max_length, m.config.truncation));
    let max_length = choice.max_length.or(trained.map(|t| t.0)).unwrap_or(model.default_max_length());
    let truncation = choice.truncation.or(trained.map(|t| t.1)).unwrap_or_default();
    model.set_limits(max_length, truncation)?;
    Ok(SingleModel { model, adapters })
}

/// Where an `--adapter` lives.
enum Wanted {
    /// `MODEL/adapters/<name>/`.
    Named(String),
    /// A PEFT adapter directory elsewhere.
    Elsewhere(PathBuf),
}

/// A plain name is an adapter under `adapters_dir`; anything else is a directory path (one that
/// points into `adapters_dir` is the same as its name).
fn which_adapter(adapter: &str, adapters_dir: &Path) -> Result<Wanted> {
    let is_name = !adapter.contains(['/', '\\']) && adapter != "." && adapter != "..";
    if is_name {
        if adapters_dir.join(adapter).join("adapter_config.json").is_file() {
            return Ok(Wanted::Named(adapter.to_string()));
        }
        bail!(
            "no adapter `{adapter}` in {} (have: {}); a PEFT adapter elsewhere is given by its directory path",
            adapters_dir.display(),
            adapter_names(adapters_dir)?.join(", ")
        );
    }
    let path = Path::new(adapter);
    if !path.join("adapter_config.json").is_file() {
        bail!("no adapter `{adapter}`: not a directory with adapter_config.json");
    }
    let canonical = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    if let (Ok(home), Some(parent)) = (adapters_dir.canonicalize(), canonical.parent()) {
        if parent == home {
            return Ok(Wanted::Named(adapter_name(&canonical)));
        }
    }
    Ok(Wanted::Elsewhere(path.to_path_buf()))
}

/// Adapter directories under `dir` (each with `adapter_config.json`), sorted.
fn adapter_names(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    if dir.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.join("adapter_config.json").is_file() {
                names.push(adapter_name(&path));
            }
        }
    }
    names.sort();
    Ok(names)
}

fn adapter_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "adapter".into())
}
