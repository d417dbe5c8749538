//! The training loop shared by every method, driven by an objective (`objective.rs`) and the trainer's
//! settings (`config.rs`): seeded epochs, gradient accumulation, AdamW with linear warm-up and decay and
//! clipping, progress bars, `metrics.jsonl`, atomic checkpoints and `--resume`, all in the stage's
//! directory.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, CheckpointState};
use super::config::TrainerConfig;
use super::objective::Objective;
use super::optim::{linear_schedule, AdamW, AdamWConfig};
use super::stage::{Stage, METRICS_FILE};
use crate::data::order::training_order;
use crate::data::split::mix;
use crate::io::write_atomic;
use crate::nn::Ctx;

/// Batches per window that `bucket_by_length` sorts: wide enough to find similar lengths, narrow
/// enough that an epoch still mixes the data.
const BUCKET_WINDOW: usize = 50;

/// The result of a training run.
#[derive(Debug, Clone)]
pub struct Trained {
    pub steps: usize,
    pub epoch_seconds: Vec<f64>,
    pub truncated: usize,
    pub train_pairs: usize,
}

/// The error `train` returns when `RunOptions::stop_after` stopped it.
#[derive(Debug, thiserror::Error)]
#[error("stopped after step {0} as asked; continue with --resume")]
pub struct StoppedEarly(pub usize);

/// Trains `objective`'s variables in `stage`'s directory: seeded epochs of its examples, gradient
/// accumulation, AdamW with warm-up, decay and clipping, progress, `metrics.jsonl`, checkpoints and
/// `--resume`.
pub fn train(
    objective: &dyn Objective,
    trainer: &TrainerConfig,
    adamw: &AdamWConfig,
    stage: &Stage,
) -> Result<Trained> {
    let vars = objective.vars();
    if vars.is_empty() {
        bail!("nothing to train: no trainable parameters");
    }
    let device = vars[0].1.device().clone();
    let mut optimizer = AdamW::new(vars, *adamw)?.with_clipping(trainer.max_grad_norm);
    let examples = objective.examples();
    if examples == 0 {
        bail!("nothing to train on: no examples");
    }
    let opts = &stage.opts;
    let plan = Plan::new(trainer, examples);
    let checkpoint_dir = stage.dir.join("checkpoint");
    let metrics_path = stage.dir.join(METRICS_FILE);
    let mut state =
        CheckpointState { step: 0, epoch_seconds: vec![0.0; trainer.epochs], truncated: 0, key: stage.key.clone() };
    if opts.resume {
        state = checkpoint::load(&checkpoint_dir, &mut optimizer, &stage.key, stage.legacy, &device)?;
        keep_metrics_up_to(&metrics_path, state.step)?;
        if !opts.quiet {
            eprintln!("resuming {} at step {} of {}", stage.dir.display(), state.step, plan.total_steps);
        }
    } else if checkpoint_dir.exists() {
        bail!(
            "{} holds a checkpoint of an unfinished run: pass --resume to continue it, or choose another --out",
            checkpoint_dir.display()
        );
    } else {
        std::fs::create_dir_all(&stage.dir)?;
        std::fs::write(&metrics_path, b"")?;
    }
    let mut epoch_loop = EpochLoop {
        objective,
        trainer,
        plan,
        optimizer,
        stage,
        metrics: std::fs::OpenOptions::new().append(true).create(true).open(&metrics_path)?,
        stall: StallWatch::default(),
    };
    for epoch in 0..trainer.epochs {
        epoch_loop.run_epoch(epoch, &mut state)?;
    }
    Ok(Trained {
        steps: state.step,
        epoch_seconds: state.epoch_seconds,
        truncated: state.truncated,
        train_pairs: examples,
    })
}

/// Steps of the run, from the settings and the number of examples.
#[derive(Debug, Clone, Copy)]
struct Plan {
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    /// Examples per micro-batch.
    micro: usize,
}

impl Plan {
    fn new(trainer: &TrainerConfig, examples: usize) -> Self {
        let steps_per_epoch = examples.div_ceil(trainer.batch_size);
        let total_steps = steps_per_epoch * trainer.epochs;
        let warmup = (trainer.warmup_ratio * total_steps as f64).round() as usize;
        Self { steps_per_epoch, total_steps, warmup, micro: trainer.batch_size / trainer.grad_accum }
    }
}

/// The loop's working parts.
struct EpochLoop<'a> {
    objective: &'a dyn Objective,
    trainer: &'a TrainerConfig,
    plan: Plan,
    optimizer: AdamW,
    stage: &'a Stage,
    metrics: std::fs::File,
    stall: StallWatch,
}

/// Running figures of an epoch, for the progress bar and `metrics.jsonl`.
#[derive(Default)]
struct EpochFigures {
    seen: usize,
    correct: usize,
    loss_sum: f64,
    loss_n: usize,
    window_pairs: usize,
}

impl EpochFigures {
    fn loss(&self) -> f64 {
        self.loss_sum / self.loss_n.max(1) as f64
    }

    fn accuracy(&self) -> f64 {
        self.correct as f64 / self.seen.max(1) as f64
    }
}

impl EpochLoop<'_> {
    /// One epoch from where `state` is (an epoch already done is skipped).
    fn run_epoch(&mut self, epoch: usize, state: &mut CheckpointState) -> Result<()> {
        let (trainer, plan, opts) = (self.trainer, self.plan, &self.stage.opts);
        let first_step = epoch * plan.steps_per_epoch;
        if state.step >= first_step + plan.steps_per_epoch {
            return Ok(());
        }
        let mut order = self.objective.epoch_order(mix(trainer.seed, epoch as u64));
        if trainer.bucket_by_length {
            let seed = mix(trainer.seed, 0x6275_636b ^ epoch as u64);
            order = training_order(&order, |i| self.objective.length(i), trainer.batch_size, BUCKET_WINDOW, seed);
        }
        let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(plan.steps_per_epoch as u64) };
        bar.set_style(ProgressStyle::with_template(
            "epoch {prefix} {bar:25} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
        )?);
        bar.set_prefix(format!("{}/{}", epoch + 1, trainer.epochs));
        bar.set_position((state.step - first_step.min(state.step)) as u64);
        let mut figures = EpochFigures::default();
        let epoch_start = Instant::now();
        let mut window_start = Instant::now();
        for (i, batch) in order.chunks(trainer.batch_size).enumerate() {
            let step = first_step + i;
            if step < state.step {
                continue;
            }
            let lr = linear_schedule(trainer.lr, step, plan.total_steps, plan.warmup);
            let step_loss = self.step(batch, step, lr, state, &mut figures)?;
            state.step = step + 1;
            if let Some(warning) = self.stall.record(step_loss, state.step) {
                bar.suspend(|| eprintln!("{warning}"));
            }
            let pairs_per_s = figures.window_pairs as f64 / window_start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!(
                "loss {:.4} acc {:.3} {:.1} pairs/s",
                figures.loss(),
                figures.correct as f64 / figures.seen as f64,
                pairs_per_s
            ));
            bar.inc(1);
            let epoch_end = i + 1 == plan.steps_per_epoch;
            if state.step.is_multiple_of(trainer.log_every.max(1)) || epoch_end {
                let line = serde_json::json!({
                    "step": state.step, "epoch": epoch + 1, "loss": figures.loss_sum / figures.loss_n as f64,
                    "accuracy": figures.correct as f64 / figures.seen as f64, "lr": lr, "pairs_per_s": pairs_per_s,
                });
                writeln!(self.metrics, "{line}")?;
                window_start = Instant::now();
                figures.window_pairs = 0;
            }
            let stop_here = opts.stop_after == Some(state.step);
            let cadence = trainer.checkpoint_every > 0 && state.step.is_multiple_of(trainer.checkpoint_every);
            if epoch_end || stop_here || cadence {
                // The checkpoint records this epoch's time so far; `state` adds it once the epoch ends.
                let mut snapshot = state.clone();
                snapshot.epoch_seconds[epoch] += epoch_start.elapsed().as_secs_f64();
                checkpoint::save(&self.stage.dir.join("checkpoint"), &self.optimizer, &snapshot)?;
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
                trainer.epochs,
                figures.loss(),
                figures.accuracy(),
                state.epoch_seconds[epoch]
            );
        }
        Ok(())
    }

    /// One optimizer step over `batch`, its micro-batches' gradients accumulated; its loss.
    fn step(
        &mut self,
        batch: &[usize],
        step: usize,
        lr: f64,
        state: &mut CheckpointState,
        figures: &mut EpochFigures,
    ) -> Result<f64> {
        let trainer = self.trainer;
        let mut grads = self.optimizer.empty_grads();
        let mut step_loss = 0f64;
        for (m, chunk) in batch.chunks(self.plan.micro).enumerate() {
            let ctx = Ctx::train(mix(trainer.seed, ((step * trainer.grad_accum + m) as u64) << 8 | 1));
            let out = self.objective.micro_batch(chunk, ctx)?;
            state.truncated += out.truncated;
            let share = chunk.len() as f64 / batch.len() as f64;
            self.optimizer.accumulate(&(&out.loss * share)?.backward()?, &mut grads)?;
            step_loss += out.loss.to_scalar::<f32>()? as f64 * share;
            figures.correct += out.correct;
        }
        self.optimizer.step(&grads, lr)?;
        figures.seen += batch.len();
        figures.window_pairs += batch.len();
        figures.loss_sum += step_loss;
        figures.loss_n += 1;
        Ok(step_loss)
    }
}

/// Watches for a loss that does not move: the mean of the first 50 steps against the last 50, once,
/// from step 300 on.
#[derive(Default)]
struct StallWatch {
    recent: Vec<f64>,
    first: Option<f64>,
    warned: bool,
}

impl StallWatch {
    /// Records a step's loss; a warning the first time the loss has stalled.
    fn record(&mut self, loss: f64, steps: usize) -> Option<String> {
        self.recent.push(loss);
        if self.recent.len() == 50 && self.first.is_none() {
            self.first = Some(self.recent.iter().sum::<f64>() / 50.0);
        }
        if self.recent.len() > 50 {
            self.recent.remove(0);
        }
        if self.warned || steps < 300 {
            return None;
        }
        let first = self.first?;
        let last = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        if (first - last).abs() >= 0.01 {
            return None;
        }
        self.warned = true;
        Some(format!(
            "warning: the training loss has not moved in {steps} steps ({first:.4} → {last:.4}); accuracy stuck near \
             0.5 usually means a wrong learning rate or broken pooling"
        ))
    }
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
