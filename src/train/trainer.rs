//! The training loop shared by every method, driven by an objective (`objective.rs`): AdamW with linear
//! warm-up and decay, gradient accumulation and clipping, seeded epoch order and dropout, progress bars,
//! metrics, atomic checkpoints and `--resume`.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::bucket::training_order;
use crate::config::TrainConfig;
use crate::data::io::{write_atomic, StagedDir};
use crate::data::split::mix;
use crate::data::{read_pairs, PairRecord};
use crate::model::{save_safetensors, RewardModel};
use crate::nn::Ctx;
use crate::train::objective::{Objective, Pairwise};
use crate::train::optim::{linear_schedule, AdamW, AdamWConfig};

/// Batches per window that `bucket_by_length` sorts: wide enough to find similar lengths, narrow
/// enough that an epoch still mixes the data.
const BUCKET_WINDOW: usize = 50;

/// How a run is driven, besides its config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub quiet: bool,
    /// Continue from `RUN_DIR/checkpoint/`.
    pub resume: bool,
    /// Stop after this many optimizer steps (leaving a checkpoint), as if the run were killed there.
    pub stop_after: Option<usize>,
    /// Replace a finished run (or an unfinished one) in the run directory.
    pub force: bool,
    /// With `stop_after`: the stage it applies to (a run of several stages), none = every run.
    pub stop_in_stage: Option<String>,
}

/// The training pairs of the configured domains.
pub fn load_train_pairs(cfg: &TrainConfig) -> Result<(Vec<String>, Vec<PairRecord>)> {
    let domains = resolve_domains(&cfg.data, &cfg.domains)?;
    let mut pairs = Vec::new();
    for domain in &domains {
        pairs.extend(load_domain_pairs(cfg, domain)?);
    }
    if pairs.is_empty() {
        bail!("no training pairs in {} for domains {}", cfg.data.display(), domains.join(", "));
    }
    Ok((domains, pairs))
}

/// One domain's training pairs, capped at `max_pairs` by a seeded shuffle; none is an error.
pub fn load_domain_pairs(cfg: &TrainConfig, domain: &str) -> Result<Vec<PairRecord>> {
    let path = cfg.data.join(domain).join("train.jsonl");
    let mut records = read_pairs(&path)?;
    if let Some(cap) = cfg.max_pairs {
        records.shuffle(&mut StdRng::seed_from_u64(mix(cfg.seed, 0x7061_6972)));
        records.truncate(cap);
    }
    if records.is_empty() {
        bail!("{} has no pairs: nothing to train domain `{domain}` on", path.display());
    }
    Ok(records)
}

/// The domains to use: those named, or every folder of `data` with a `train.jsonl` (any name: a
/// user's `code` or `math` is a domain like the five of the paper), sorted.
pub fn resolve_domains(data: &Path, named: &[String]) -> Result<Vec<String>> {
    if !named.is_empty() {
        for d in named {
            let f = data.join(d).join("train.jsonl");
            if !f.is_file() {
                bail!("no {} (run `rmroute prepare` first, or fix `domains`)", f.display());
            }
        }
        return Ok(named.to_vec());
    }
    let mut found: Vec<String> = std::fs::read_dir(data)
        .with_context(|| format!("reading the prepared data folder {}", data.display()))?
        .flatten()
        .filter(|e| e.path().join("train.jsonl").is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|name| !name.starts_with('.'))
        .collect();
    found.sort();
    if found.is_empty() {
        bail!(
            "no prepared domains in {} (run `rmroute prepare --input RAW --out {}` first)",
            data.display(),
            data.display()
        );
    }
    Ok(found)
}

/// What a checkpoint records besides tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    epoch_seconds: Vec<f64>,
    truncated: usize,
    config: TrainConfig,
}

/// The result of a training run.
pub struct Trained {
    pub steps: usize,
    pub epoch_seconds: Vec<f64>,
    pub truncated: usize,
    pub train_pairs: usize,
}

/// Trains `model`'s trainable variables (for `adapter`, or the encoder and base head) on `pairs`.
pub fn train(
    model: &RewardModel,
    adapter: Option<&str>,
    pairs: &[PairRecord],
    cfg: &TrainConfig,
    run_dir: &Path,
    opts: &RunOptions,
) -> Result<Trained> {
    train_objective(&Pairwise { model, adapter, pairs }, cfg, run_dir, opts)
}

/// The loop every method shares: seeded epochs of `objective`'s examples, gradient accumulation,
/// AdamW with warm-up and decay, clipping, progress, `metrics.jsonl`, checkpoints and `--resume`.
pub fn train_objective(
    objective: &dyn Objective,
    cfg: &TrainConfig,
    run_dir: &Path,
    opts: &RunOptions,
) -> Result<Trained> {
    let vars = objective.vars();
    if vars.is_empty() {
        bail!("nothing to train: no trainable parameters");
    }
    let device = vars[0].1.device().clone();
    let mut optimizer = AdamW::new(
        vars,
        AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
            max_grad_norm: cfg.max_grad_norm,
        },
    )?;
    let examples = objective.examples();
    if examples == 0 {
        bail!("nothing to train on: no examples");
    }
    let steps_per_epoch = examples.div_ceil(cfg.batch_size);
    let total_steps = steps_per_epoch * cfg.epochs;
    let warmup = (cfg.warmup_ratio * total_steps as f64).round() as usize;
    let checkpoint_dir = run_dir.join("checkpoint");
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut state =
        CheckpointState { step: 0, epoch_seconds: vec![0.0; cfg.epochs], truncated: 0, config: cfg.clone() };
    if opts.resume {
        state = load_checkpoint(&checkpoint_dir, &mut optimizer, cfg, &device)?;
        keep_metrics_up_to(&metrics_path, state.step)?;
        if !opts.quiet {
            eprintln!("resuming {} at step {} of {total_steps}", run_dir.display(), state.step);
        }
    } else if checkpoint_dir.exists() {
        bail!(
            "{} holds a checkpoint of an unfinished run: pass --resume to continue it, or choose another --out",
            checkpoint_dir.display()
        );
    } else {
        std::fs::create_dir_all(run_dir)?;
        std::fs::write(&metrics_path, b"")?;
    }
    let mut metrics = std::fs::OpenOptions::new().append(true).create(true).open(&metrics_path)?;
    let micro = cfg.batch_size / cfg.grad_accum;
    let mut recent_losses: Vec<f64> = Vec::new();
    let mut first_losses: Option<f64> = None;
    let mut warned = false;

    for epoch in 0..cfg.epochs {
        let first_step = epoch * steps_per_epoch;
        if state.step >= first_step + steps_per_epoch {
            continue;
        }
        let mut order = objective.epoch_order(mix(cfg.seed, epoch as u64));
        if cfg.bucket_by_length {
            let seed = mix(cfg.seed, 0x6275_636b ^ epoch as u64);
            order = training_order(&order, |i| objective.length(i), cfg.batch_size, BUCKET_WINDOW, seed);
        }
        let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(steps_per_epoch as u64) };
        bar.set_style(ProgressStyle::with_template(
            "epoch {prefix} {bar:25} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )?);
        bar.set_prefix(format!("{}/{}", epoch + 1, cfg.epochs));
        bar.set_position((state.step - first_step.min(state.step)) as u64);
        let (mut seen, mut correct, mut loss_sum, mut loss_n) = (0usize, 0usize, 0f64, 0usize);
        let epoch_start = Instant::now();
        let mut window_start = Instant::now();
        let mut window_pairs = 0usize;
        for (i, batch) in order.chunks(cfg.batch_size).enumerate() {
            let step = first_step + i;
            if step < state.step {
                continue;
            }
            let lr = linear_schedule(cfg.lr, step, total_steps, warmup);
            let mut grads = optimizer.empty_grads();
            let mut step_loss = 0f64;
            for (m, chunk) in batch.chunks(micro).enumerate() {
                let ctx = Ctx::train(mix(cfg.seed, ((step * cfg.grad_accum + m) as u64) << 8 | 1));
                let out = objective.micro_batch(chunk, ctx)?;
                state.truncated += out.truncated;
                let share = chunk.len() as f64 / batch.len() as f64;
                optimizer.accumulate(&(&out.loss * share)?.backward()?, &mut grads)?;
                step_loss += out.loss.to_scalar::<f32>()? as f64 * share;
                correct += out.correct;
            }
            optimizer.step(&grads, lr)?;
            seen += batch.len();
            window_pairs += batch.len();
            loss_sum += step_loss;
            loss_n += 1;
            state.step = step + 1;
            recent_losses.push(step_loss);
            if recent_losses.len() == 50 && first_losses.is_none() {
                first_losses = Some(recent_losses.iter().sum::<f64>() / 50.0);
            }
            if recent_losses.len() > 50 {
                recent_losses.remove(0);
            }
            if !warned && state.step >= 300 {
                if let Some(first) = first_losses {
                    let last = recent_losses.iter().sum::<f64>() / recent_losses.len() as f64;
                    if (first - last).abs() < 0.01 {
                        warned = true;
                        bar.suspend(|| {
                            eprintln!(
                                "warning: the training loss has not moved in {} steps ({first:.4} → {last:.4}); \
                             accuracy stuck near 0.5 usually means a wrong learning rate or broken pooling",
                                state.step
                            )
                        });
                    }
                }
            }
            let pairs_per_s = window_pairs as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} {:.1} pairs/s",
                loss_sum / loss_n as f64,
                correct as f64 / seen as f64,
                pairs_per_s
            ));
            bar.inc(1);
            if state.step.is_multiple_of(cfg.log_every.max(1)) || i + 1 == steps_per_epoch {
                let line = serde_json::json!({
                    "step": state.step, "epoch": epoch + 1, "loss": loss_sum / loss_n as f64,
                    "accuracy": correct as f64 / seen as f64, "lr": lr, "pairs_per_s": pairs_per_s,
                });
                writeln!(metrics, "{line}")?;
                window_start = Instant::now();
                window_pairs = 0;
            }
            let epoch_end = i + 1 == steps_per_epoch;
            let stop_here = opts.stop_after == Some(state.step);
            if epoch_end || stop_here || (cfg.checkpoint_every > 0 && state.step.is_multiple_of(cfg.checkpoint_every)) {
                // The checkpoint records this epoch's time so far; `state` adds it once the epoch ends.
                let mut snapshot = state.clone();
                snapshot.epoch_seconds[epoch] += epoch_start.elapsed().as_secs_f64();
                save_checkpoint(&checkpoint_dir, &optimizer, &snapshot)?;
            }
            if stop_here {
                bar.abandon();
                bail!(StoppedEarly(state.step));
            }
        }
        state.epoch_seconds[epoch] += epoch_start.elapsed().as_secs_f64();
        bar.finish();
        if !opts.quiet {
            eprintln!(
                "epoch {}/{}: loss {:.4}, train accuracy {:.3}, {:.0} s",
                epoch + 1,
                cfg.epochs,
                loss_sum / loss_n.max(1) as f64,
                correct as f64 / seen.max(1) as f64,
                state.epoch_seconds[epoch]
            );
        }
    }
    Ok(Trained {
        steps: state.step,
        epoch_seconds: state.epoch_seconds,
        truncated: state.truncated,
        train_pairs: examples,
    })
}

/// The error `train` returns when `RunOptions::stop_after` stopped it.
#[derive(Debug, thiserror::Error)]
#[error("stopped after step {0} as asked; continue with --resume")]
pub struct StoppedEarly(pub usize);

/// Writes the checkpoint into a fresh directory, syncs it, then swaps it in, so a crash leaves either
/// the old checkpoint or the new one, never half of one.
fn save_checkpoint(dir: &Path, optimizer: &AdamW, state: &CheckpointState) -> Result<()> {
    let staged = StagedDir::new(dir)?;
    let weights: HashMap<String, Tensor> =
        optimizer.vars().map(|(n, v)| (n.to_string(), v.as_tensor().clone())).collect();
    save_safetensors(&weights, &staged.path().join("weights.safetensors"))?;
    save_safetensors(&optimizer.state(), &staged.path().join("optimizer.safetensors"))?;
    write_atomic(&staged.path().join("state.json"), &serde_json::to_vec_pretty(state)?)?;
    staged.commit()?;
    Ok(())
}

fn load_checkpoint(dir: &Path, optimizer: &mut AdamW, cfg: &TrainConfig, device: &Device) -> Result<CheckpointState> {
    let dir: PathBuf = if dir.join("state.json").is_file() {
        dir.to_path_buf()
    } else if let Some(aside) = StagedDir::moved_aside(dir).filter(|d| d.join("state.json").is_file()) {
        aside // a crash between the two renames of a checkpoint's commit
    } else {
        bail!("nothing to resume: no checkpoint in {}", dir.display());
    };
    let state: CheckpointState = serde_json::from_slice(&std::fs::read(dir.join("state.json"))?)
        .with_context(|| format!("reading {}/state.json", dir.display()))?;
    if state.config != *cfg {
        bail!(
            "the checkpoint in {} was made with a different config; resume with the same config and flags",
            dir.display()
        );
    }
    let weights = candle_core::safetensors::load(dir.join("weights.safetensors"), device)?;
    for (name, var) in optimizer.vars() {
        let t = weights.get(name).with_context(|| format!("checkpoint lacks `{name}`"))?;
        var.set(t)?;
    }
    let opt_state = candle_core::safetensors::load(dir.join("optimizer.safetensors"), device)?;
    optimizer.load_state(&opt_state, state.step)?;
    Ok(state)
}

/// On resume, drops metric lines logged after the checkpoint (they will be logged again).
fn keep_metrics_up_to(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    write_atomic(path, kept.as_bytes())?;
    Ok(())
}
