//! The engine of the routed methods (RODOS, ARLISS): a reward part per domain, trained on that domain
//! alone, and a router over the domains that reads the prompt. Each part is a stage of the run
//! (`RUN/stages/<name>/`) with its own checkpoint and metrics; a finished stage is skipped on
//! `--resume`. A new domain costs its own part and a router retrain (`--add-domain`); the other parts
//! are not touched. RODOS keeps each part as a whole model; ARLISS keeps LoRA adapters (with their
//! heads) for one frozen base that the run references by checksum.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::base::BaseRef;
use crate::config::{Method, TrainConfig};
use crate::data::io::{write_atomic, StagedDir};
use crate::data::PairRecord;
use crate::methods::baseline::{train_reward_model, Keep, TrainedModel};
use crate::methods::router::{router_examples, train_router};
use crate::run::{backbone_name, fingerprint, pairs_fingerprint, prepare_run_dir, Part, Role, RunMeta};
use crate::train::trainer::{load_domain_pairs, resolve_domains, RunOptions};

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

/// Trains `method` (RODOS or ARLISS) into `cfg.out`, or with `add_domain` extends a finished run of it
/// by one domain.
pub fn train_routed(
    method: Method,
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
    add_domain: Option<&str>,
) -> Result<PathBuf> {
    cfg.validate()?;
    if cfg.method != method {
        bail!("the config trains method `{}`: run `rmroute {}`", cfg.method.name(), cfg.method.command());
    }
    let run = &cfg.out;
    let (cfg, domains, old) = match add_domain {
        None => (cfg.clone(), resolve_domains(&cfg.data, &cfg.domains)?, None),
        Some(new) => {
            let (cfg, domains, meta) = extend_run(method, cfg, new)?;
            (cfg, domains, Some(meta))
        }
    };
    if domains.len() < 2 {
        bail!(
            "{} routes between domains: {} has only {}",
            method.name().to_uppercase(),
            cfg.data.display(),
            domains.join(", ")
        );
    }
    // ARLISS's parts are adapters for one frozen base: the run records which weights (`check_base`).
    let base = if keeps_adapters(method) { Some(BaseRef::of(&cfg.backbone)?) } else { None };
    let mut pairs = BTreeMap::new();
    for domain in &domains {
        // Every domain's pairs: the router is trained on all of them.
        let loaded = load_domain_pairs(&cfg, domain)
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
            None => parts.push(reward_part(method, &cfg, domain, &pairs[domain], device.clone(), opts)?),
        }
    }
    let router_name = router_stage(domains.len(), old.is_some());
    parts.push(router_part(method, &cfg, &router_name, &domains, &pairs, device, opts)?);

    let mut config = cfg.clone();
    config.domains = domains.clone();
    write_manifest(method, &config, domains, parts, base)?;
    // The manifest names the new router: an old one can go now.
    if let Some(meta) = &old {
        for part in meta.parts.iter().filter(|p| p.role == Role::Router && p.name != router_name) {
            std::fs::remove_dir_all(run.join(&part.path))
                .with_context(|| format!("removing the old router {}", part.path))?;
        }
    }
    Ok(run.clone())
}

/// Every stage of an ARLISS run is trained on one base: the first records it in `stages/base.json`
/// (an extended run also has it in its manifest, `recorded`), and a resumed or extended run on other
/// weights or another tokenizer is refused: its finished adapters would not fit them.
fn check_base(run: &Path, base: &BaseRef, recorded: Option<&BaseRef>) -> Result<()> {
    let path = run.join("stages").join("base.json");
    let started: Option<BaseRef> = if path.is_file() {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Some(crate::config::parse_json(&text).with_context(|| format!("parsing {}", path.display()))?)
    } else {
        recorded.cloned()
    };
    match started {
        None => write_atomic(&path, &serde_json::to_vec_pretty(base)?)?,
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
        Some(_) if !path.is_file() => write_atomic(&path, &serde_json::to_vec_pretty(base)?)?,
        Some(_) => {}
    }
    Ok(())
}

/// For `--add-domain`: the run's own settings (only `data` and `device` may differ), its domains plus
/// the new one, and its description, whose reward parts are all finished.
fn extend_run(method: Method, cfg: &TrainConfig, new: &str) -> Result<(TrainConfig, Vec<String>, RunMeta)> {
    if new.is_empty() || new.starts_with('.') || new.contains(['/', '\\']) {
        bail!("`{new}` is not a domain name (a folder name of the prepared data)");
    }
    let run = &cfg.out;
    let meta =
        RunMeta::read(run).with_context(|| format!("--add-domain extends a finished `{}` run", method.name()))?;
    if meta.method != method.name() {
        bail!("{} is a `{}` run, not a `{}` run", run.display(), meta.method, method.name());
    }
    if meta.domains.iter().any(|d| d == new) {
        bail!("{} already has domain `{new}`", run.display());
    }
    let mut own = meta.config.clone();
    (own.data, own.device, own.out) = (cfg.data.clone(), cfg.device.clone(), cfg.out.clone());
    let mut asked = cfg.clone();
    asked.domains = own.domains.clone();
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
    method: Method,
    cfg: &TrainConfig,
    domain: &str,
    pairs: &[PairRecord],
    device: candle_core::Device,
    opts: &RunOptions,
) -> Result<Part> {
    let name = reward_stage(domain);
    let dir = cfg.out.join("stages").join(&name);
    let mut stage_cfg = cfg.clone();
    stage_cfg.domains = vec![domain.to_string()];
    stage_cfg.out = dir.clone();
    let inputs = pairs_fingerprint(pairs);
    if let Some(part) = Part::read_done(&dir, &stage_cfg, &inputs)? {
        return Ok(part);
    }
    let part = |m: &TrainedModel| part_record(&name, Role::Reward, Some(domain), m);
    let domains = [domain.to_string()];
    let stage_opts = stage_options(opts, &name, &dir);
    let keep = if keeps_adapters(method) { Keep::Adapter(&name) } else { Keep::Model };
    let finish = |s: &Path, m: &TrainedModel| part(m).write_done(s, &stage_cfg, &inputs);
    let trained =
        train_reward_model(&stage_cfg, pairs, &domains, device, &dir, &stage_opts, keep, &|_| Ok(()), finish)?;
    Ok(part(&trained))
}

/// The router over every domain (ARLISS: an adapter with a classifier head), or its finished stage.
pub(crate) fn router_part(
    method: Method,
    cfg: &TrainConfig,
    name: &str,
    domains: &[String],
    pairs: &BTreeMap<String, Vec<PairRecord>>,
    device: candle_core::Device,
    opts: &RunOptions,
) -> Result<Part> {
    let dir = cfg.out.join("stages").join(name);
    let router_cfg = router_config(cfg, domains, &dir)?;
    let examples = router_examples(domains, pairs);
    let labels: Vec<String> = examples.labels.iter().map(|l| l.to_string()).collect();
    let inputs = fingerprint(examples.prompts.iter().map(String::as_str).chain(labels.iter().map(String::as_str)));
    if let Some(part) = Part::read_done(&dir, &router_cfg, &inputs)? {
        return Ok(part);
    }
    let balance = cfg.router().map(|r| r.balance).unwrap_or_default();
    let part = |m: &TrainedModel| part_record(name, Role::Router, None, m);
    let stage_opts = stage_options(opts, name, &dir);
    let keep = if keeps_adapters(method) { Keep::Adapter(ROUTER_ADAPTER) } else { Keep::Model };
    let finish = |s: &Path, m: &TrainedModel| part(m).write_done(s, &router_cfg, &inputs);
    let trained = train_router(&router_cfg, &examples, balance, device, &dir, &stage_opts, keep, finish)?;
    Ok(part(&trained))
}

/// The in-memory name of ARLISS's router adapter (its reward adapters are named by their stages).
pub const ROUTER_ADAPTER: &str = "router";

/// Writes `rmroute.json`: the run's description with its parts, last, so it names only finished ones.
fn write_manifest(
    method: Method,
    cfg: &TrainConfig,
    domains: Vec<String>,
    parts: Vec<Part>,
    base: Option<BaseRef>,
) -> Result<()> {
    let sum = |f: fn(&Part) -> usize| parts.iter().map(f).sum::<usize>();
    // Table 3 counts ARLISS as its base plus every adapter and head; RODOS as the sum of its models.
    let base_parameters = match &base {
        Some(base) => crate::model::RewardModel::load(&base.dir, &Default::default())?.encoder_parameter_count(),
        None => 0,
    };
    let model = match method {
        Method::Arliss => format!(
            "ARLISS: LoRA adapters (a reward adapter per domain and a router adapter) for the base `{}`, \
             which is referenced, not copied; see `parts` and `base`",
            cfg.backbone
        ),
        _ => "RODOS: a reward model per domain and a router; see `parts`".into(),
    };
    let rewards = || parts.iter().filter(|p| p.role == Role::Reward);
    let one_epoch = crate::run::one_epoch_seconds(&parts);
    RunMeta {
        method: method.name().into(),
        domains,
        backbone: cfg.backbone.clone(),
        backbone_name: backbone_name(&cfg.backbone),
        seed: cfg.seed,
        rmroute_version: env!("CARGO_PKG_VERSION").into(),
        config: cfg.clone(),
        train_pairs: rewards().map(|p| p.train_examples).sum(),
        truncated_pairs: rewards().map(|p| p.truncated).sum(),
        steps: sum(|p| p.steps),
        epoch_seconds: vec![one_epoch],
        total_parameters: base_parameters + sum(|p| p.total_parameters),
        trainable_parameters: sum(|p| p.trainable_parameters),
        model,
        adapters: BTreeMap::new(),
        parts,
        base,
        aspect_pairs: BTreeMap::new(),
        routes_by_task: false,
    }
    .write(&cfg.out)
}

/// The router's training settings: the config's, with the `rodos.router` / `arliss.router` overrides.
fn router_config(cfg: &TrainConfig, domains: &[String], dir: &Path) -> Result<TrainConfig> {
    let mut router = cfg.clone();
    router.domains = domains.to_vec();
    router.out = dir.to_path_buf();
    if let Some(section) = cfg.router() {
        router.epochs = section.epochs.unwrap_or(cfg.epochs);
        router.lr = section.lr.unwrap_or(cfg.lr);
        router.batch_size = section.batch_size.unwrap_or(cfg.batch_size);
    }
    router.validate().with_context(|| format!("the router's settings (`{}.router`)", cfg.method.name()))?;
    Ok(router)
}

/// A stage resumes from its own checkpoint when the run resumes; `stop_after` applies to the stage
/// `stop_in_stage` names (or to every stage when it names none).
pub(crate) fn stage_options(opts: &RunOptions, name: &str, dir: &Path) -> RunOptions {
    let has_checkpoint = dir.join("checkpoint/state.json").is_file()
        || StagedDir::moved_aside(&dir.join("checkpoint")).is_some_and(|d| d.join("state.json").is_file());
    let stops_here = opts.stop_in_stage.as_deref().is_none_or(|s| s == name);
    RunOptions {
        quiet: opts.quiet,
        resume: opts.resume && has_checkpoint,
        stop_after: if stops_here { opts.stop_after } else { None },
        force: false,
        stop_in_stage: None,
    }
}

pub(crate) fn part_record(name: &str, role: Role, domain: Option<&str>, m: &TrainedModel) -> Part {
    Part {
        name: name.to_string(),
        role,
        domain: domain.map(str::to_string),
        aspect: None,
        path: format!("stages/{name}"),
        train_examples: m.trained.train_pairs,
        truncated: m.trained.truncated,
        steps: m.trained.steps,
        epoch_seconds: m.trained.epoch_seconds.clone(),
        total_parameters: m.total_parameters,
        trainable_parameters: m.trainable_parameters,
    }
}
