//! Training on tasks whose answer is known: Baseline and BaseLoRA learn a synthetic preference, a
//! killed run resumes to the same weights, and BaseLoRA never touches a base weight.

mod common;

use std::path::Path;

use rmroute::backbone::encoding::Truncation;
use rmroute::methods::config::{Method, TrainConfig};
use rmroute::methods::{load as load_scorer, ScoreOptions};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::lora::{LoraConfig, TargetModules};
use rmroute::nn::Adapters;
use rmroute::results::eval::{accuracy_by_domain, domain_test_sets, test_pairs};
use rmroute::train::stage::RunOptions;
use rmroute::train::trainer::StoppedEarly;

fn train_baseline(
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
) -> anyhow::Result<std::path::PathBuf> {
    rmroute::methods::train(cfg, device, opts, None)
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
    let scorer = load_scorer(run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    assert_eq!(scorer.single().unwrap().1, &Adapters::None, "a run scores with its top-level model");
    let (by_domain, _) =
        accuracy_by_domain(&scorer, &domain_test_sets(data, &["dahoas".to_string()], None, 0).unwrap()).unwrap();
    by_domain["dahoas"].accuracy
}

fn marker_pairs() -> Vec<(&'static str, &'static str)> {
    vec![("w9 w10", "w5 w11 w12"), ("w9 w10", "w6 w11 w12"), ("w20 w21 w22", "w30 w5"), ("w20 w21 w22", "w30 w6")]
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

#[test]
fn baseline_learns_the_marker_task() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_marker_task(data.path(), 160, 100);
    let cfg = config(base.path(), data.path(), &out.path().join("run"));
    let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let accuracy = test_accuracy(&run, data.path());
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!((meta.method.as_str(), meta.steps, meta.epoch_seconds.len()), ("baseline", 60, 6));
}

/// The Appendix E families learn it too: RoBERTa (head on `<s>`) and GPT-2 (head on the last real
/// token), fully fine-tuned, and GPT-2 with LoRA on its Conv1D `c_attn` and `c_proj`.
#[test]
fn roberta_and_gpt2_learn_the_marker_task() {
    let data = tempfile::tempdir().unwrap();
    common::write_marker_task_in(data.path(), 160, 100, common::BPE_MARKERS, &common::BPE_FILLER);
    for (family, method) in [("roberta", Method::Baseline), ("gpt2", Method::Baseline), ("gpt2", Method::Baselora)] {
        let out = tempfile::tempdir().unwrap();
        let backbone = common::repo_fixture(&format!("tiny-{family}-rm"));
        let mut cfg = config(&backbone, data.path(), &out.path().join("run"));
        cfg.method = method;
        if method == Method::Baselora {
            cfg.lr = 1e-2;
            let targets = TargetModules::names(&["c_attn", "c_proj"]);
            cfg.lora = Some(LoraConfig { rank: 8, alpha: 16.0, dropout: 0.0, target_modules: targets });
        }
        let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
        let accuracy = test_accuracy(&run, data.path());
        assert!(accuracy >= 0.95, "{family} {method:?}: test accuracy {accuracy}");
    }
}

/// `bucket_by_length`: batches of similar lengths still learn the task, and the same seed gives the same
/// weights bit for bit (the batches stay seeded).
#[test]
fn length_bucketed_training_learns_the_marker_task_and_is_reproducible() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_marker_task(data.path(), 160, 100);
    let mut cfg = config(base.path(), data.path(), &out.path().join("a"));
    cfg.bucket_by_length = true;
    let a = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let accuracy = test_accuracy(&a, data.path());
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");
    cfg.out = out.path().join("b");
    let b = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let weights = |run: &Path| std::fs::read(run.join("model.safetensors")).unwrap();
    assert!(weights(&a) == weights(&b), "the same seed gave other weights");
    // The flag changes which pairs share a batch, so it changes the weights.
    cfg.bucket_by_length = false;
    cfg.out = out.path().join("plain");
    let plain = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    assert!(weights(&a) != weights(&plain), "bucket_by_length changed nothing");
}

#[test]
fn baselora_learns_the_marker_task_and_its_run_directory_is_the_merged_model() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_deberta(base.path(), 1, &common::TinyDeberta { with_head: false, ..Default::default() });
    common::write_marker_task(data.path(), 160, 100);
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    cfg.lr = 1e-2;
    cfg.method = Method::Baselora;
    cfg.lora = Some(LoraConfig {
        rank: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: TargetModules::names(&["query_proj", "key_proj", "value_proj", "dense"]),
    });
    let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let accuracy = test_accuracy(&run, data.path());
    assert!(accuracy >= 0.95, "test accuracy {accuracy}");

    // The run directory is the merged model, so transformers loads what rmroute scores; the adapter
    // on the untouched backbone gives the same rewards.
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert!(meta.model.contains("merged"), "{}", meta.model);
    assert!(meta.adapters.contains_key("default"));
    let merged = RewardModel::load(&run, &LoadOptions::default()).unwrap();
    let choice = ScoreOptions { adapter: Some("default".into()), ..Default::default() };
    let adapter = load_scorer(&run, &LoadOptions::default(), &choice).unwrap();
    let (adapter_model, adapter_sel) = adapter.single().unwrap();
    assert_eq!(adapter_sel, &Adapters::One("default".into()));
    let a = merged.score(&marker_pairs(), 4, &Adapters::None).unwrap();
    let b = adapter_model.score(&marker_pairs(), 4, adapter_sel).unwrap();
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-4), "{a:?} vs {b:?}");
    assert!(a[0] > a[1] && a[2] > a[3], "{a:?}");
    let saved = candle_core::safetensors::load(run.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let base =
        candle_core::safetensors::load(base.path().join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let query = "deberta.encoder.layer.0.attention.self.query_proj.weight";
    assert_ne!(
        saved[query].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        base[query].flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        "the top-level model has the adapter merged in"
    );
    assert!(saved.contains_key("classifier.weight") && saved.contains_key("pooler.dense.weight"));

    // The adapter is never applied twice: named by its path it is the run's own (on the backbone); a
    // copy of the merged files with the adapter beside them refuses it.
    let by_path =
        ScoreOptions { adapter: Some(run.join("adapters/default").display().to_string()), ..Default::default() };
    let scorer = load_scorer(&run, &LoadOptions::default(), &by_path).unwrap();
    let c = scorer.score(&marker_pairs(), 4).unwrap().rewards;
    assert!(a.iter().zip(&c).all(|(x, y)| (x - y).abs() < 1e-4), "{a:?} vs {c:?}");
    let copy = out.path().join("copy");
    std::fs::create_dir_all(copy.join("adapters")).unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(run.join(f), copy.join(f)).unwrap();
    }
    std::fs::create_dir_all(copy.join("adapters/default")).unwrap();
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(run.join("adapters/default").join(f), copy.join("adapters/default").join(f)).unwrap();
    }
    let err = load_scorer(&copy, &LoadOptions::default(), &ScoreOptions::default()).err().unwrap().to_string();
    assert!(err.contains("already has adapter `default` merged in"), "{err}");
    let elsewhere =
        ScoreOptions { adapter: Some(copy.join("adapters/default").display().to_string()), ..Default::default() };
    let err = load_scorer(&run, &LoadOptions::default(), &elsewhere).err().unwrap().to_string();
    assert!(err.contains("is an rmroute run"), "{err}");

    // Parameters: the backbone's encoder once, the adapter's A/B and its head — no unused base head.
    let adapter_file = candle_core::safetensors::load(
        run.join("adapters/default/adapter_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let lora: usize = adapter_file.iter().filter(|(k, _)| k.contains(".lora_")).map(|(_, t)| t.elem_count()).sum();
    assert!(lora > 0);
    assert_eq!(meta.total_parameters, merged.parameter_count() + lora);
}

#[test]
fn baselora_optimizer_holds_only_the_adapter_and_its_head() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_deberta(base.path(), 1, &common::TinyDeberta { with_head: false, ..Default::default() });
    common::write_marker_task(data.path(), 32, 4);
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    cfg.method = Method::Baselora;
    cfg.lora = Some(LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, target_modules: TargetModules::names(&["dense"]) });
    let stop = RunOptions { quiet: true, stop_after: Some(1), ..Default::default() };
    let err = train_baseline(&cfg, candle_core::Device::Cpu, &stop).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    // The checkpoint holds exactly the optimizer's variables.
    let held =
        candle_core::safetensors::load(cfg.out.join("checkpoint/weights.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let names: Vec<&String> = held.keys().collect();
    assert_eq!(names.len(), 2 * 2 * 3 + 4, "{names:?}");
    for name in names {
        let adapter = name.contains(".lora_A.") || name.contains(".lora_B.");
        let head =
            name.ends_with("classifier.weight") || name.ends_with("classifier.bias") || name.contains("pooler.dense");
        assert!(adapter || head, "the optimizer holds base tensor {name}");
    }
}

#[test]
fn a_finished_run_is_not_overwritten_without_force() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 2, true, false);
    common::write_marker_task(data.path(), 16, 4);
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    cfg.epochs = 1;
    let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    std::fs::write(run.join("results.json"), b"{}").unwrap();
    let err = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap_err().to_string();
    assert!(err.contains("finished run") && err.contains("--force"), "{err}");
    assert!(run.join("results.json").is_file());
    let force = RunOptions { quiet: true, force: true, ..Default::default() };
    train_baseline(&cfg, candle_core::Device::Cpu, &force).unwrap();
    assert!(!run.join("results.json").exists(), "old results do not outlive their run");
    assert!(run.join("rmroute.json").is_file());

    // A run killed before its first checkpoint is not removed without --force either.
    let killed = out.path().join("killed");
    std::fs::create_dir_all(&killed).unwrap();
    std::fs::write(killed.join("metrics.jsonl"), b"").unwrap();
    cfg.out = killed.clone();
    let err = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap_err().to_string();
    assert!(err.contains("unfinished run") && err.contains("--force"), "{err}");
    assert!(killed.join("metrics.jsonl").is_file());

    let stranger = out.path().join("notes");
    std::fs::create_dir_all(&stranger).unwrap();
    std::fs::write(stranger.join("todo.txt"), b"mine").unwrap();
    cfg.out = stranger.clone();
    let err = train_baseline(&cfg, candle_core::Device::Cpu, &force).unwrap_err().to_string();
    assert!(err.contains("not an rmroute run directory"), "{err}");
    assert!(stranger.join("todo.txt").is_file());
}

#[test]
fn the_truncation_used_in_training_is_recorded_and_used_for_scoring() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 2, true, false);
    common::write_marker_task(data.path(), 16, 4);
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    (cfg.epochs, cfg.max_length, cfg.truncation) = (1, 12, Truncation::KeepPromptEnd);
    let run = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.config.truncation, Truncation::KeepPromptEnd);
    assert!(meta.truncated_pairs > 0, "prompts of 4 words and responses of 6 overflow 12 tokens");
    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let model = scorer.single().unwrap().0;
    assert_eq!((model.tokens.truncation, model.max_length()), (Truncation::KeepPromptEnd, 12));
    let choice =
        ScoreOptions { truncation: Some(Truncation::LongestFirst), max_length: Some(16), ..Default::default() };
    let scorer = load_scorer(&run, &LoadOptions::default(), &choice).unwrap();
    let model = scorer.single().unwrap().0;
    assert_eq!((model.tokens.truncation, model.max_length()), (Truncation::LongestFirst, 16));
}

#[test]
fn eval_samples_test_pairs_with_the_seed_and_refuses_an_empty_split() {
    let data = tempfile::tempdir().unwrap();
    common::write_marker_task(data.path(), 4, 60);
    let all = test_pairs(data.path(), "dahoas", None, 1).unwrap();
    let ids = |pairs: &[rmroute::data::PairRecord]| pairs.iter().map(|p| p.id.clone()).collect::<Vec<_>>();
    let a = test_pairs(data.path(), "dahoas", Some(10), 1).unwrap();
    assert_eq!(a.len(), 10);
    assert_ne!(ids(&a), ids(&all[..10]), "not simply the first pairs of the file");
    assert_eq!(ids(&a), ids(&test_pairs(data.path(), "dahoas", Some(10), 1).unwrap()), "same seed, same sample");
    assert_ne!(ids(&a), ids(&test_pairs(data.path(), "dahoas", Some(10), 2).unwrap()));
    let position = |id: &String| all.iter().position(|p| &p.id == id).unwrap();
    assert!(ids(&a).windows(2).all(|w| position(&w[0]) < position(&w[1])), "kept in file order");
    std::fs::write(data.path().join("dahoas/test.jsonl"), "").unwrap();
    let err = test_pairs(data.path(), "dahoas", None, 1).unwrap_err().to_string();
    assert!(err.contains("has no pairs"), "{err}");
}

#[test]
fn a_killed_run_resumed_equals_the_uninterrupted_run() {
    killed_and_resumed(false);
}

/// With batches cut by length, the order is rebuilt from the seed on resume: the same weights too.
#[test]
fn a_killed_length_bucketed_run_resumed_equals_the_uninterrupted_run() {
    killed_and_resumed(true);
}

/// RoBERTa and GPT-2 too (GPT-2's Conv1D weights are trained through a transposed view of what the
/// checkpoint stores).
#[test]
fn killed_roberta_and_gpt2_runs_resumed_equal_the_uninterrupted_runs() {
    for family in ["roberta", "gpt2"] {
        killed_and_resumed_on(&common::repo_fixture(&format!("tiny-{family}-rm")), false, true);
    }
}

fn killed_and_resumed(bucket_by_length: bool) {
    let base = tempfile::tempdir().unwrap();
    common::write_tiny_bert(base.path(), 2, true, false);
    killed_and_resumed_on(base.path(), bucket_by_length, false);
}

fn killed_and_resumed_on(backbone: &Path, bucket_by_length: bool, bpe: bool) {
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    if bpe {
        common::write_marker_task_in(data.path(), 48, 10, common::BPE_MARKERS, &common::BPE_FILLER);
    } else {
        common::write_marker_task(data.path(), 48, 10);
    }
    let mut cfg = config(backbone, data.path(), &out.path().join("whole"));
    cfg.epochs = 2;
    cfg.batch_size = 8;
    cfg.grad_accum = 2;
    cfg.bucket_by_length = bucket_by_length;
    let whole = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();

    cfg.out = out.path().join("killed");
    let stop = RunOptions { quiet: true, stop_after: Some(7), ..Default::default() };
    let err = train_baseline(&cfg, candle_core::Device::Cpu, &stop).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    assert!(cfg.out.join("checkpoint/state.json").is_file());
    let again = train_baseline(&cfg, candle_core::Device::Cpu, &quiet()).unwrap_err();
    assert!(again.to_string().contains("--resume"), "{again}");
    let resumed =
        train_baseline(&cfg, candle_core::Device::Cpu, &RunOptions { quiet: true, resume: true, ..Default::default() })
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
