//! The training engine of the routed methods (RODOS, ARLISS): a reward part per domain, trained on that
//! domain alone, and a router over the domains that reads the prompt. Each part is a stage of the run
//! (`RUN/stages/<name>/`) with its own checkpoint and metrics; a finished stage is skipped on
//! `--resume`. A new domain costs its own part and a router retrain (`--add-domain`); the other parts
//! are not touched. RODOS keeps each part as a whole model; ARLISS keeps LoRA adapters (with their
//! heads) for one frozen base that the run references by checksum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::base::BaseRef;
use super::config::{RouterConfig, TrainConfig};
use super::manifest::{pairs_fingerprint, prepare_run_dir, Part, Role, RunMeta, Summary};
use super::method::Method;
use super::reward_model::{self, Keep};
use super::router::RouterPlan;
use super::stage_keys;
use crate::data::domains::resolve_domains;
use crate::data::PairRecord;
use crate::io::{read_json, write_json};
use crate::model::RewardModel;
use crate::train::stage::{RunOptions, Stage, StageKey};

/// The stage name of `domain`'s reward model.
pub fn reward_stage(domain: &str) -> String {
    format!("rm-{domain}")
}

/// The router's stage: `router` for a new run; a retrained router gets a stage of its own
/// (`router-<domains>`), so the old one serves until the new run description replaces it.
fn router_stage(domains: usize, added: bool) -> String {
    if added {
        format!("router-{domains}")
    } else {
        "router".into()
    }
}

/// How a routed method keeps its parts.
fn keeps_adapters(method: Method) -> bool {
    method == Method::Arliss
}

/// Trains `cfg.method` (RODOS or ARLISS) into `cfg.out`, or with `add_domain` extends a finished run of
/// it by one domain.
pub(crate) fn train_routed(
    cfg: &TrainConfig,
    device: Device,
    opts: &RunOptions,
    add_domain: Option<&str>,
) -> Result<PathBuf> {
    let method = cfg.method;
    let run = &cfg.out;
    let (cfg, domains, old) = match add_domain {
        None => (cfg.clone(), resolve_domains(&cfg.data, &cfg.domains)?, None),
        Some(new) => {
            let (cfg, domains, meta) = extend_run(cfg, new)?;
            (cfg, domains, Some(meta))
        }
    };
    if domains.len() < 2 {
        bail!(
            "{} routes between domains: {} has only {}",
            method.as_str().to_uppercase(),
            cfg.data.display(),
            domains.join(", ")
        );
    }
    // ARLISS's parts are adapters for one frozen base: the run records which weights (`check_base`).
    let base = if keeps_adapters(method) { Some(BaseRef::of(&cfg.backbone)?) } else { None };
    let mut pairs = BTreeMap::new();
    for domain in &domains {
        // Every domain's pairs: the router is trained on all of them.
        let loaded = cfg
            .domain_pairs(domain)
            .with_context(|| format!("the router needs every domain's training pairs (`{domain}`)"))?;
        pairs.insert(domain.clone(), loaded);
    }
    if old.is_none() {
        prepare_run_dir(run, opts.resume, opts.force)?;
    }
    std::fs::create_dir_all(run.join("stages"))?;
    if let Some(base) = &base {
        check_base(run, base, old.as_ref().and_then(|m| m.base.as_ref()))?;
    }

    let mut parts = Vec::new();
    for domain in &domains {
        let kept = old.as_ref().and_then(|m| m.parts.iter().find(|p| p.domain.as_deref() == Some(domain.as_str())));
        match kept {
            Some(part) => parts.push(part.clone()),
            None => parts.push(reward_part(&cfg, domain, &pairs[domain], device.clone(), opts)?),
        }
    }
    let router_name = router_stage(domains.len(), old.is_some());
    let default_router = RouterConfig::default();
    let section = cfg.router().unwrap_or(&default_router);
    let section_name = format!("{}.router", method.as_str());
    let router = RouterPlan {
        cfg: &cfg,
        section,
        section_name: &section_name,
        name: &router_name,
        adapter: keeps_adapters(method),
    };
    parts.push(router.train(&domains, &pairs, device, opts)?);

    let mut config = cfg.clone();
    config.domains = domains.clone();
    write_manifest(&config, domains, parts, base)?;
    // The manifest names the new router: an old one can go now.
    if let Some(meta) = &old {
        for part in meta.parts.iter().filter(|p| p.role == Role::Router && p.name != router_name) {
            std::fs::remove_dir_all(run.join(&part.path))
                .with_context(|| format!("removing the old router {}", part.path))?;
        }
    }
    Ok(run.clone())
}

/// Trains only the router stage of a RODOS or ARLISS run (`RUN/stages/router`), for router
/// experiments; the run stays unfinished, and training it whole with `--resume` keeps this router.
pub(crate) fn train_router_only(cfg: &TrainConfig, device: Device, opts: &RunOptions) -> Result<PathBuf> {
    let method = cfg.method;
    let run = &cfg.out;
    let domains = resolve_domains(&cfg.data, &cfg.domains)?;
    if domains.len() < 2 {
        bail!("a router chooses between domains: {} has only {}", cfg.data.display(), domains.join(", "));
    }
    let base = if keeps_adapters(method) { Some(BaseRef::of(&cfg.backbone)?) } else { None };
    let mut pairs = BTreeMap::new();
    for domain in &domains {
        pairs.insert(domain.clone(), cfg.domain_pairs(domain)?);
    }
    prepare_run_dir(run, opts.resume, opts.force)?;
    std::fs::create_dir_all(run.join("stages"))?;
    if let Some(base) = &base {
        check_base(run, base, None)?;
    }
    let default_router = RouterConfig::default();
    let section_name = format!("{}.router", method.as_str());
    let router = RouterPlan {
        cfg,
        section: cfg.router().unwrap_or(&default_router),
        section_name: &section_name,
        name: "router",
        adapter: keeps_adapters(method),
    };
    router.train(&domains, &pairs, device, opts)?;
    Ok(run.join("stages").join("router"))
}

/// Every stage of an ARLISS run is trained on one base: the first records it in `stages/base.json`
/// (an extended run also has it in its manifest, `recorded`), and a resumed or extended run on other
/// weights or another tokenizer is refused: its finished adapters would not fit them.
fn check_base(run: &Path, base: &BaseRef, recorded: Option<&BaseRef>) -> Result<()> {
    let path = run.join("stages").join("base.json");
    let started: Option<BaseRef> = if path.is_file() { Some(read_json(&path)?) } else { recorded.cloned() };
    match started {
        None => write_json(&path, base)?,
        Some(started) if (&started.sha256, &started.tokenizer_sha256) != (&base.sha256, &base.tokenizer_sha256) => {
            bail!(
                "the backbone `{}` now has other weights or another tokenizer (sha256 {}, {}) than {} was trained on \
                 (sha256 {}, {}): its finished adapters would not fit other base weights. Put back the base they \
                 were trained on, or start over with --force",
                base.spec,
                base.sha256,
                base.tokenizer_sha256,
                run.display(),
                started.sha256,
                started.tokenizer_sha256
            );
        }
        Some(_) if !path.is_file() => write_json(&path, base)?,
        Some(_) => {}
    }
    Ok(())
}

/// For `--add-domain`: the run's own settings (only `data` and `device` may differ), its domains plus
/// the new one, and its description, whose reward parts are all finished.
fn extend_run(cfg: &TrainConfig, new: &str) -> Result<(TrainConfig, Vec<String>, RunMeta)> {
    let method = cfg.method;
    if new.is_empty() || new.starts_with('.') || new.contains(['/', '\\']) {
        bail!("`{new}` is not a domain name (a folder name of the prepared data)");
    }
    let run = &cfg.out;
    let meta =
        RunMeta::read(run).with_context(|| format!("--add-domain extends a finished `{}` run", method.as_str()))?;
    if meta.method != method {
        bail!("{} is a `{}` run, not a `{}` run", run.display(), meta.method.as_str(), method.as_str());
    }
    if meta.domains.iter().any(|d| d == new) {
        bail!("{} already has domain `{new}`", run.display());
    }
    let mut own = meta.config.clone();
    (own.data, own.device, own.out) = (cfg.data.clone(), cfg.device.clone(), cfg.out.clone());
    let mut asked = cfg.clone();
    asked.domains = own.domains.clone();
    // A config that leaves the router's truncation unset asks for what the run's router does.
    if let (Some(mine), Some(theirs)) = (asked.router_mut(), own.router()) {
        mine.truncation = mine.truncation.or(theirs.truncation);
    }
    let differ = differing_keys(&own, &asked)?;
    if !differ.is_empty() {
        bail!(
            "--add-domain trains with the run's own settings, and these differ from its rmroute.json: {} \
             (use the run's config; only --data and --device may change)",
            differ.join(", ")
        );
    }
    let mut domains = meta.domains.clone();
    domains.push(new.to_string());
    Ok((own, domains, meta))
}

/// Top-level config keys whose values differ.
fn differing_keys(a: &TrainConfig, b: &TrainConfig) -> Result<Vec<String>> {
    let (a, b) = (serde_json::to_value(a)?, serde_json::to_value(b)?);
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return Ok(vec![]) };
    Ok(a.iter().filter(|(k, v)| b.get(*k) != Some(v)).map(|(k, _)| format!("`{k}`")).collect())
}

/// `domain`'s reward part, trained on its pairs alone (RODOS: a whole model as Baseline; ARLISS: an
/// adapter with its head), or its finished stage.
fn reward_part(
    cfg: &TrainConfig,
    domain: &str,
    pairs: &[PairRecord],
    device: Device,
    opts: &RunOptions,
) -> Result<Part> {
    let name = reward_stage(domain);
    let (model, trainer, adamw) = (cfg.model(), cfg.trainer(), cfg.adamw());
    let key =
        StageKey::new(&stage_keys::reward_model(&model, &trainer, &adamw, cfg.max_pairs), pairs_fingerprint(pairs))?;
    let stage = Stage::part(&cfg.out, &name, key, opts).with_legacy(stage_keys::legacy_reward_model);
    if let Some(part) = stage.finished()? {
        return Ok(part);
    }
    let keep = if keeps_adapters(cfg.method) { Keep::Adapter(&name) } else { Keep::Model };
    let run = reward_model::load(&model, keep, cfg.seed, device, stage.opts.quiet)?;
    run.train(pairs, domain, &trainer, &adamw, &stage, cfg.method(), |_, trained| {
        let parameters = (trained.total_parameters, trained.trainable_parameters);
        Ok(Part::new(&name, Role::Reward, Some(domain), &trained.trained, parameters))
    })
}

/// Writes `rmroute.json`: the run's description with its parts, last, so it names only finished ones.
fn write_manifest(cfg: &TrainConfig, domains: Vec<String>, parts: Vec<Part>, base: Option<BaseRef>) -> Result<()> {
    // Table 3 counts ARLISS as its base plus every adapter and head; RODOS as the sum of its models.
    let base_parameters = match &base {
        Some(base) => RewardModel::load(&base.dir, &Default::default())?.encoder_parameter_count(),
        None => 0,
    };
    let model = match cfg.method {
        Method::Arliss => format!(
            "ARLISS: LoRA adapters (a reward adapter per domain and a router adapter) for the base `{}`, \
             which is referenced, not copied; see `parts` and `base`",
            cfg.backbone
        ),
        _ => "RODOS: a reward model per domain and a router; see `parts`".into(),
    };
    let mut summary = Summary::of_parts(&parts, model);
    let rewards = || parts.iter().filter(|p| p.role == Role::Reward);
    summary.train_pairs = rewards().map(|p| p.train_examples).sum();
    summary.truncated_pairs = rewards().map(|p| p.truncated).sum();
    summary.total_parameters += base_parameters;
    let mut meta = RunMeta::new(cfg, domains, summary);
    meta.parts = parts;
    meta.base = base;
    meta.write(&cfg.out)
}
