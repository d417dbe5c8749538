//! Training on tasks whose answer is known: Baseline and BaseLoRA learn a synthetic preference, a
//! killed run resumes to the same weights, and BaseLoRA never touches a base weight.

mod common;

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmroute::config::TrainConfig;
use rmroute::eval::accuracy_by_domain;
use rmroute::lora::LoraConfig;
use rmroute::methods::baseline::train_baseline;
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Adapters;
use rmroute::train::trainer::{RunOptions, StoppedEarly};

/// A preference task with a known answer: the chosen response contains the marker `w5`, the rejected
/// one `w6` in its place; everything else is random words.
fn write_marker_task(dir: &Path, train: usize, test: usize) {
    let mut rng = StdRng::seed_from_u64(17);
    let mut words = |n: usize| (0..n).map(|_| format!("w{}", rng.random_range(8..common::VOCAB))).collect::<Vec<_>>();
    let mut write = |name: &str, n: usize| {
        let mut text = String::new();
        for i in 0..n {
            let prompt = words(4).join(" ");
            let body = words(5);
            let at = i % 5;
            let mut chosen = body.clone();
            chosen.insert(at, "w5".into());
            let mut rejected = body;
            rejected.insert(at, "w6".into());
            let record = serde_json::json!({"id": format!("dahoas/{name}/{i}"), "domain": "dahoas", "prompt": prompt,
                "chosen": chosen.join(" "), "rejected": rejected.join(" ")});
            text.push_str(&format!("{record}\n"));
        }
        std::fs::create_dir_all(dir.join("dahoas")).unwrap();
        std::fs::write(dir.join("dahoas").join(format!("{name}.jsonl")), text).unwrap();
    };
    write("train", train);
    write("test", test);
}

fn config(backbone: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        backbone: backbone.display().to_string(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        seed: 3,
        epochs: 6,
        batch_size: 16,
        lr: 2e-3,
        warmup_ratio: 0.1,
        max_length: 32,
        log_every: 1,
        ..TrainConfig::default()
    }
}

fn test_accuracy(run: &Path, data: &Path) -> f64 {
    let model = RewardModel::load(run, &LoadOptions::default()).unwrap();
    let mut model = model;
    let adapters = if run.join("adapters/default").is_dir() {
        model.load_adapter(&run.join("adapters/default"), "default", false).unwrap();
        Adapters::One("default".into())
    } else {
        Adapters::None
    };
    let (by_domain, _) = accuracy_by_domain(&model, &adapters, data, &["dahoas".to_string()], None).unwrap();
    by_domain["dahoas"].accuracy
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

#[test]
fn baseline_learns_the_marker_task() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_marker_task(data.path(), 160, 100);
    let cfg = config(base.path(), data.path(), &out.path().join("run"));
    let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let accuracy = test_accuracy(&run, data.path());
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    let meta = rmroute::run::RunMeta::read(&run).unwrap();
    assert_eq!((meta.method.as_str(), meta.steps, meta.epoch_seconds.len()), ("baseline", 60, 6));
}

#[test]
fn baselora_learns_the_marker_task_and_leaves_every_base_weight_bit_identical() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_deberta(base.path(), 1, &common::TinyDeberta { with_head: false, ..Default::default() });
    write_marker_task(data.path(), 160, 100);
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    cfg.lr = 1e-2;
    cfg.lora = Some(LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: ["query_proj", "key_proj", "value_proj", "dense"].map(String::from).to_vec(),
    });
    let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let accuracy = test_accuracy(&run, data.path());
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    let before =
        candle_core::safetensors::load(base.path().join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let after = candle_core::safetensors::load(run.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let mut compared = 0;
    for (name, t) in &before {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = after[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{name} changed");
        compared += 1;
    }
    assert!(compared > 30);
}

#[test]
fn a_killed_run_resumed_equals_the_uninterrupted_run() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 2, true, false);
    write_marker_task(data.path(), 48, 10);
    let mut cfg = config(base.path(), data.path(), &out.path().join("whole"));
    cfg.epochs = 2;
    cfg.batch_size = 8;
    cfg.grad_accum = 2;
    let whole = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();

    cfg.out = out.path().join("killed");
    let stop = RunOptions { quiet: true, resume: false, stop_after: Some(7) };
    let err = train_baseline(&cfg, candle_core::Device::Cpu, &stop).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    assert!(cfg.out.join("checkpoint/state.json").is_file());
    let again = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap_err();
    assert!(again.to_string().contains("--resume"), "{again}");
    let resumed =
        train_baseline(&cfg, candle_core::Device::Cpu, &RunOptions { quiet: true, resume: true, stop_after: None })
            .unwrap();

    let a = candle_core::safetensors::load(whole.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(resumed.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let x = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let y = b[name].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{name} differs after resume");
    }
    let lines = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines(&whole), lines(&resumed));
    assert!(!resumed.join("checkpoint").exists());
}
