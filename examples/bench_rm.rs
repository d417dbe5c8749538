//! The reward-model workload of `../shared/bench/torch_rm_bench.py`, in rmroute, for a side-by-side
//! comparison (`scripts/bench.sh` drives both; never a timed test).
//!
//! `bench_rm MODE --model DIR [--batch 32] [--seq 128] [--warmup 2] [--iters 7]`, MODE one of
//! - `infer`: a forward pass in evaluation mode, rewards for the batch;
//! - `infer_bf16`: the same with `--dtype bf16` (the encoder's linear layers in bf16);
//! - `train_full`: forward with dropout, the pairwise loss, backward and an AdamW step, every parameter
//!   trainable;
//! - `train_lora`: the same with a LoRA adapter (r 8, alpha 16, no dropout) on the attention's
//!   query/key/value projections and output dense, and its head, trainable; the base frozen.
//!
//! The batch is `batch` rows of `seq` random token ids with no padding, as the PyTorch script's: the
//! first half chosen, the second rejected. Prints one JSON line with the median seconds per batch (and,
//! for training, of its forward pass, backward pass and optimizer step).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmroute::backbone::encoding::Batch;
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::bf16::Precision;
use rmroute::nn::lora::{LoraConfig, TargetModules};
use rmroute::nn::{Adapters, Ctx};
use rmroute::train::loss::pairwise_loss;
use rmroute::train::optim::{AdamW, AdamWConfig};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADAPTER: &str = "bench";

fn main() -> Result<()> {
    rmroute::ops::alloc::keep_freed_memory(); // as the rmroute binary does
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let number = |name: &str, default: usize| -> Result<usize> {
        flag(name)
            .map(|v| v.parse().with_context(|| format!("{name} {v}: not a number")))
            .transpose()
            .map(|v| v.unwrap_or(default))
    };
    let Some(mode) = args.first().cloned() else {
        bail!(
            "usage: bench_rm infer|infer_bf16|train_full|train_lora --model DIR [--batch 32] [--seq 128] [--warmup 2] [--iters 7]"
        )
    };
    let model_dir = PathBuf::from(flag("--model").context("--model DIR is required")?);
    let (batch_size, seq) = (number("--batch", 32)?, number("--seq", 128)?);
    let (warmup, iters) = (number("--warmup", 2)?, number("--iters", 7)?);
    if batch_size % 2 != 0 || iters == 0 {
        bail!("--batch must be even (pairs) and --iters positive");
    }
    let train_encoder = mode == "train_full";
    let precision = if mode == "infer_bf16" { Precision::Bf16 } else { Precision::F32 };
    let opts = LoadOptions { train_encoder, new_head: true, precision, ..Default::default() };
    let mut model = RewardModel::load(&model_dir, &opts)?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json"))?)?;
    let vocab = config["vocab_size"].as_u64().context("config.json has no vocab_size")? as u32;
    let batch = random_batch(vocab, batch_size, seq)?;

    // Seconds of the forward pass (with the loss), the backward pass and the optimizer step, per step.
    let mut phases: Vec<[f64; 3]> = Vec::new();
    let times = match mode.as_str() {
        "infer" | "infer_bf16" => {
            let ctx = Ctx::eval();
            timed(warmup, iters, || {
                model.forward(&batch, &ctx)?.to_vec1::<f32>()?;
                Ok(())
            })?
        }
        "train_full" | "train_lora" => {
            let adapters: Vec<&str> = if train_encoder {
                vec![]
            } else {
                let deberta = model.encoder.lora_linears().iter().any(|l| l.path.contains("query_proj"));
                let targets: &[&str] = if deberta {
                    &["query_proj", "key_proj", "value_proj", "attention.output.dense"]
                } else {
                    &["query", "key", "value", "attention.output.dense"]
                };
                let lora =
                    LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, target_modules: TargetModules::names(targets) };
                model.add_adapter(ADAPTER, &lora, 1)?;
                vec![ADAPTER]
            };
            let mut optimizer = AdamW::new(
                model.trainable_vars(&adapters),
                AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 },
            )?;
            let ctx = Ctx::train(1).with_adapters(match adapters.first() {
                Some(name) => Adapters::One(name.to_string()),
                None => Adapters::None,
            });
            let half = batch_size / 2;
            let times = timed(warmup, iters, || {
                let start = Instant::now();
                let rewards = model.forward(&batch, &ctx)?;
                let loss = pairwise_loss(&rewards.narrow(0, 0, half)?, &rewards.narrow(0, half, half)?)?;
                let forward = start.elapsed().as_secs_f64();
                let grads = loss.backward()?;
                let backward = start.elapsed().as_secs_f64() - forward;
                let mut accumulated = optimizer.empty_grads();
                optimizer.accumulate(&grads, &mut accumulated)?;
                optimizer.step(&accumulated, 1e-5)?;
                phases.push([forward, backward, start.elapsed().as_secs_f64() - forward - backward]);
                Ok(())
            })?;
            phases.drain(..warmup);
            times
        }
        other => bail!("unknown mode `{other}` (infer, infer_bf16, train_full, train_lora)"),
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let trainable: usize = match mode.as_str() {
        "infer" | "infer_bf16" => 0,
        "train_lora" => model.adapter_parameter_count(ADAPTER),
        _ => model.parameter_count(),
    };
    let phase_median = |i: usize| {
        let mut v: Vec<f64> = phases.iter().map(|p| p[i]).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    println!(
        "{}",
        serde_json::json!({
            "forward_s": phase_median(0),
            "backward_s": phase_median(1),
            "optimizer_s": phase_median(2),
            "mode": mode,
            "median_s_per_batch": median,
            "seq_per_s": batch_size as f64 / median,
            "all_s": times,
            "trainable_params": trainable,
            "threads": candle_core::utils::get_num_threads(),
        })
    );
    Ok(())
}

/// `rows` sequences of `seq` random ids (a start and an end token like the PyTorch script's), no padding.
fn random_batch(vocab: u32, rows: usize, seq: usize) -> Result<Batch> {
    if vocab <= 1000 {
        bail!("the benchmark draws ids from 1000..vocab, and this vocabulary has {vocab}");
    }
    let mut rng = StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..rows * seq)
        .map(|i| match i % seq {
            0 => 101,
            p if p == seq - 1 => 102,
            _ => rng.random_range(1000..vocab),
        })
        .collect();
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (rows, seq), &Device::Cpu)?,
        token_type_ids: Tensor::zeros((rows, seq), candle_core::DType::U32, &Device::Cpu)?,
        attention_mask: Tensor::ones((rows, seq), candle_core::DType::U32, &Device::Cpu)?,
        truncated: 0,
    })
}

/// Seconds of each of `iters` calls after `warmup` untimed ones.
fn timed(warmup: usize, iters: usize, mut step: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    for _ in 0..warmup {
        step()?;
    }
    (0..iters)
        .map(|_| {
            let start = Instant::now();
            step()?;
            Ok(start.elapsed().as_secs_f64())
        })
        .collect()
}
