//! DMoERM on a task whose answer is known. In task `combo` each response has a level 0–2 on two
//! capability points (helpfulness, fluency), written as marker words; in every pair the points trade
//! off (the response better on one is never better on the other), and the overall preference is their
//! sum. So an expert that learns its own point ranks about half the overall pairs right, and only the
//! aggregator over both can rank them all. Task `plain` has no aspect labels: a single expert.

mod common;

use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use rmroute::methods::config::{DmoermConfig, Method, RouterConfig, StageConfig, TrainConfig};
use rmroute::methods::dmoerm::Dmoerm;
use rmroute::methods::{load as load_scorer, ScoreOptions};
use rmroute::model::LoadOptions;
use rmroute::nn::lora::{LoraConfig, TargetModules};
use rmroute::nn::{Adapters, Ctx};
use rmroute::results::eval::{domain_test_sets, routed_results};
use rmroute::train::classification::Balance;
use rmroute::train::stage::RunOptions;
use rmroute::train::trainer::StoppedEarly;

fn train_dmoerm(
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
) -> anyhow::Result<std::path::PathBuf> {
    rmroute::methods::train(cfg, device, opts, None)
}

const HELPFULNESS: [&str; 3] = ["w10", "w11", "w12"];
const FLUENCY: [&str; 3] = ["w13", "w14", "w15"];

/// `n` pairs of task `combo`: levels `(h, f)` per response, points trading off, overall = h + f.
fn write_combo(data: &Path, split: &str, n: usize, seed: u64) {
    let levels: Vec<(usize, usize)> = (0..3).flat_map(|h| (0..3).map(move |f| (h, f))).collect();
    let mut kinds = Vec::new();
    for &a in &levels {
        for &b in &levels {
            let (dh, df) = (a.0 as i32 - b.0 as i32, a.1 as i32 - b.1 as i32);
            if a.0 + a.1 > b.0 + b.1 && dh * df <= 0 {
                kinds.push((a, b));
            }
        }
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::new();
    for i in 0..n {
        let (better, worse) = *kinds.choose(&mut rng).unwrap();
        let prompt: Vec<String> = (0..4).map(|_| format!("w{}", rng.random_range(20..32))).collect();
        let body: Vec<String> = (0..4).map(|_| format!("w{}", rng.random_range(47..common::VOCAB))).collect();
        let (at_h, at_f) = (rng.random_range(0..=4), rng.random_range(0..=5));
        let response = |(h, f): (usize, usize)| {
            let mut words = body.clone();
            words.insert(at_h, HELPFULNESS[h].to_string());
            words.insert(at_f, FLUENCY[f].to_string());
            words.join(" ")
        };
        let sign = |d: i32| d.signum();
        let aspects = serde_json::json!({
            "helpfulness": sign(better.0 as i32 - worse.0 as i32),
            "fluency": sign(better.1 as i32 - worse.1 as i32),
        });
        let record = serde_json::json!({"id": format!("combo/{split}/{i}"), "domain": "combo", "prompt": prompt.join(" "),
            "chosen": response(better), "rejected": response(worse), "aspects": aspects});
        text.push_str(&format!("{record}\n"));
    }
    std::fs::create_dir_all(data.join("combo")).unwrap();
    std::fs::write(data.join("combo").join(format!("{split}.jsonl")), text).unwrap();
}

fn write_data(data: &Path) {
    write_combo(data, "train", 320, 1);
    write_combo(data, "test", 120, 2);
    common::write_domain(data, "plain", 34, ("w7", "w4"), 64, 40, 3);
}

fn config(backbone: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        method: Method::Dmoerm,
        backbone: backbone.display().to_string(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        seed: 3,
        epochs: 5,
        batch_size: 16,
        lr: 2e-3,
        warmup_ratio: 0.1,
        max_length: 32,
        log_every: 1,
        lora: Some(LoraConfig {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: TargetModules::names(&["query", "value", "dense"]),
        }),
        dmoerm: Some(DmoermConfig {
            router: RouterConfig {
                epochs: Some(12),
                lr: Some(2e-3),
                batch_size: None,
                balance: Balance::ClassWeights,
                ..Default::default()
            },
            expert: StageConfig { epochs: Some(10), lr: Some(5e-3), batch_size: None },
            aggregator: StageConfig { epochs: Some(40), lr: Some(1e-2), batch_size: None },
            ..DmoermConfig::default()
        }),
        ..TrainConfig::default()
    }
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

#[test]
fn experts_learn_their_points_and_the_aggregator_beats_each_of_them() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_data(data.path());
    let run = out.path().join("run");
    let cfg = config(base.path(), data.path(), &run);

    // Killed in the middle of the fluency expert: stage 1 is finished, and no later stage touches it.
    let stop = RunOptions { stop_after: Some(3), stop_in_stage: Some("expert-combo-fluency".into()), ..quiet() };
    let err = train_dmoerm(&cfg, candle_core::Device::Cpu, &stop).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err:#}");
    let stage1 = common::files(&run.join("stages/rm-combo"));
    assert!(stage1.contains_key(Path::new("model.safetensors")), "{:?}", stage1.keys());
    let resumed = RunOptions { resume: true, ..quiet() };
    train_dmoerm(&cfg, candle_core::Device::Cpu, &resumed).unwrap();
    assert_eq!(common::files(&run.join("stages/rm-combo")), stage1, "stage 2 and 3 leave stage 1 as it was");

    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    let names: Vec<&str> = meta.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["rm-combo", "expert-combo-fluency", "expert-combo-helpfulness", "aggregator-combo", "rm-plain", "router"]
    );
    assert_eq!(meta.total_parameters, meta.parts.iter().map(|p| p.total_parameters).sum::<usize>());
    // Stage 2 trains the experts' adapters and heads alone: the stage-1 encoder is frozen under them.
    let stage1_parameters = meta.parts[0].total_parameters;
    for expert in meta.parts.iter().filter(|p| p.name.starts_with("expert-")) {
        assert_eq!(expert.trainable_parameters, expert.total_parameters, "{}", expert.name);
        assert!(expert.total_parameters * 5 < stage1_parameters, "{}: {}", expert.name, expert.total_parameters);
    }
    // Each expert's head is its own trained parameter, saved with its adapter.
    for aspect in ["fluency", "helpfulness"] {
        let dir = run.join(format!("stages/expert-combo-{aspect}"));
        let tensors =
            candle_core::safetensors::load(dir.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
        let stage1_head =
            candle_core::safetensors::load(run.join("stages/rm-combo/model.safetensors"), &candle_core::Device::Cpu)
                .unwrap();
        let moved =
            common::max_abs_diff(&tensors["base_model.model.classifier.weight"], &stage1_head["classifier.weight"]);
        assert!(moved > 1e-4, "{aspect}: the expert's head never trained ({moved})");
    }

    let mut scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let sets = domain_test_sets(data.path(), &meta.domains, None, 0).unwrap();
    let tasks = scorer.model.evaluate_more(&sets, scorer.run.as_ref()).unwrap().tasks.unwrap();
    let combo = &tasks["combo"];
    assert!(!combo.single_expert && tasks["plain"].single_expert);
    assert!(tasks["plain"].aggregator.is_none() && tasks["plain"].experts.is_empty());
    let aggregator = combo.aggregator.as_ref().unwrap().accuracy;
    for (aspect, expert) in &combo.experts {
        let point = expert.point.as_ref().unwrap().accuracy;
        assert!(point >= 0.95, "{aspect} expert on its own point: {point}");
        assert!(
            aggregator > expert.overall.accuracy + 0.1,
            "aggregator {aggregator} vs {aspect} expert {} on the overall preference",
            expert.overall.accuracy
        );
    }
    assert!(aggregator >= 0.9, "aggregator {aggregator}");
    let routed =
        routed_results(&scorer, &domain_test_sets(data.path(), &meta.domains, None, 0).unwrap()).unwrap().unwrap();
    assert!(routed.router.accuracy >= 0.95, "router {}", routed.router.accuracy);
    assert_eq!(routed.oracle["combo"].accuracy, aggregator, "the task's reward is the aggregator's");

    // The K-copies pass (each row repeated with a different expert per copy) equals K separate passes.
    let Some(Dmoerm { tasks, .. }) = scorer.downcast_ref::<Dmoerm>() else { panic!("DMoERM loads its tasks") };
    let inner = &tasks["combo"];
    let records = rmroute::results::eval::test_pairs(data.path(), "combo", Some(5), 1).unwrap();
    let pairs: Vec<(&str, &str)> = records.iter().map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect();
    let batch = inner.model.encode(&pairs).unwrap();
    let together = inner.features(&batch, &Ctx::eval()).unwrap();
    let separate: Vec<candle_core::Tensor> = inner
        .experts
        .iter()
        .map(|(_, adapter)| {
            inner.model.pooled(&batch, &Ctx::eval().with_adapters(Adapters::One(adapter.clone()))).unwrap()
        })
        .collect();
    let separate = candle_core::Tensor::cat(&separate, 1).unwrap();
    assert_eq!(together.dims(), separate.dims());
    let diff = common::max_abs_diff(&together, &separate);
    assert!(diff <= 1e-5, "K copies in one pass vs K passes: {diff}");
}

#[test]
fn the_command_line_trains_evaluates_and_reports_a_single_task() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_combo(data.path(), "train", 60, 1);
    write_combo(data.path(), "test", 30, 2);
    let run = out.path().join("run");
    let mut cfg = serde_json::to_value(config(base.path(), data.path(), &run)).unwrap();
    cfg["epochs"] = 1.into();
    cfg["dmoerm"]["expert"]["epochs"] = 1.into();
    cfg["dmoerm"]["aggregator"]["epochs"] = 2.into();
    cfg["dmoerm"]["phase1"] = "lora".into();
    let cfg_path = out.path().join("dmoerm.json");
    let cfg_arg = cfg_path.display().to_string();

    // An aspect no pair carries (a typo, or labels not made yet) is refused before anything is trained.
    cfg["dmoerm"]["aspects"] = serde_json::json!(["helpfulness", "honesty"]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let output = common::rmroute(&["train-dmoerm", "--config", &cfg_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success() && stderr.contains("aspect `honesty`"), "{stderr}");
    assert!(!run.exists());

    cfg["dmoerm"]["aspects"] = serde_json::json!(["helpfulness"]);
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let output = common::rmroute(&["train-dmoerm", "--config", &cfg_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    // One task: nothing to route.
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert!(meta.parts.iter().all(|p| p.name != "router"));
    assert!(meta.aspect_pairs["combo"]["helpfulness"] >= 10, "{:?}", meta.aspect_pairs);
    // A LoRA stage 1 is merged into the task's reward model, on which the experts are trained.
    assert!(run.join("stages/rm-combo/adapters/default/adapter_config.json").is_file());
    let rm_config = std::fs::read_to_string(run.join("stages/rm-combo/config.json")).unwrap();
    assert!(rm_config.contains(rmroute::model::MERGED_KEY), "{rm_config}");

    let run_arg = run.display().to_string();
    let data_arg = data.path().display().to_string();
    let printed = common::stdout_ok(common::rmroute(&["eval", "--model", &run_arg, "--data", &data_arg]));
    assert!(printed.contains("expert `helpfulness`") && printed.contains("aggregator over 1 experts"), "{printed}");
    let report = common::stdout_ok(common::rmroute(&["report", &run_arg, "--out", &out.path().display().to_string()]));
    assert!(report.contains("DMoERM inner models") && report.contains("stage-1 reward model"), "{report}");

    // A typo in the section is named.
    cfg["dmoerm"]["phase1_fractoin"] = 0.5.into();
    std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap()).unwrap();
    let output = common::rmroute(&["train-dmoerm", "--config", &cfg_arg, "--force"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("phase1_fractoin"), "{stderr}");
}

#[test]
fn tasks_named_in_the_records_cut_across_the_domain_folders() {
    let (base, raw, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_combo(raw.path(), "train", 60, 1);
    write_combo(raw.path(), "test", 20, 2);
    common::write_domain(raw.path(), "plain", 34, ("w7", "w4"), 40, 20, 3);
    // Folders `first` and `second` each hold pairs of both tasks, named by their `task` field.
    let data = out.path().join("data");
    for split in ["train", "test"] {
        let mut folders = [String::new(), String::new()];
        for task in ["combo", "plain"] {
            let text = std::fs::read_to_string(raw.path().join(task).join(format!("{split}.jsonl"))).unwrap();
            for (i, line) in text.lines().enumerate() {
                let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
                record["task"] = task.into();
                folders[i % 2].push_str(&format!("{record}\n"));
            }
        }
        for (name, text) in ["first", "second"].iter().zip(&folders) {
            std::fs::create_dir_all(data.join(name)).unwrap();
            std::fs::write(data.join(name).join(format!("{split}.jsonl")), text).unwrap();
        }
    }
    let run = out.path().join("run");
    let mut cfg = config(base.path(), &data, &run);
    cfg.epochs = 2;
    let dm = cfg.dmoerm.as_mut().unwrap();
    (dm.expert.epochs, dm.aggregator.epochs, dm.router.epochs) = (Some(1), Some(2), Some(6));
    train_dmoerm(&cfg, candle_core::Device::Cpu, &quiet()).unwrap();
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert!(meta.routes_by_task);
    assert_eq!(meta.domains, ["combo", "plain"]);
    assert_eq!(meta.config.domains, ["first", "second"], "the data folders the tasks came from");
    assert!(meta.parts.iter().any(|p| p.name == "aggregator-combo") && meta.parts.iter().any(|p| p.name == "rm-plain"));

    let (run_arg, data_arg) = (run.display().to_string(), data.display().to_string());
    let printed = common::stdout_ok(common::rmroute(&["eval", "--model", &run_arg, "--data", &data_arg]));
    let results: rmroute::results::eval::Results =
        serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results.domains.keys().collect::<Vec<_>>(), ["combo", "plain"], "{printed}");
    assert_eq!((results.domains["combo"].pairs, results.domains["plain"].pairs), (20, 20));
    assert!(results.router.unwrap().accuracy >= 0.9, "{printed}");

    // Test data without one of the run's tasks is refused, not averaged without it.
    let other = out.path().join("other");
    for name in ["first", "second"] {
        let text = std::fs::read_to_string(data.join(name).join("test.jsonl")).unwrap();
        let kept: String =
            text.lines().filter(|l| l.contains("\"task\":\"combo\"")).map(|l| format!("{l}\n")).collect();
        std::fs::create_dir_all(other.join(name)).unwrap();
        std::fs::write(other.join(name).join("test.jsonl"), kept).unwrap();
        std::fs::copy(data.join(name).join("train.jsonl"), other.join(name).join("train.jsonl")).unwrap();
    }
    let other_arg = other.display().to_string();
    let output = common::rmroute(&["eval", "--model", &run_arg, "--data", &other_arg]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("task `plain`"), "{stderr}");

    // A record without a task among records with one is refused, naming it.
    let second = data.join("second/train.jsonl");
    let mut text = std::fs::read_to_string(&second).unwrap();
    text.push_str(&format!(
        "{}\n",
        serde_json::json!({"id": "stray/1", "domain": "second", "prompt": "w20",
        "chosen": "w10 w13", "rejected": "w11 w14"})
    ));
    std::fs::write(&second, text).unwrap();
    let err = train_dmoerm(&cfg, candle_core::Device::Cpu, &RunOptions { force: true, ..quiet() }).unwrap_err();
    assert!(format!("{err:#}").contains("`stray/1`"), "{err:#}");
}

#[test]
fn a_resumed_run_refuses_a_finished_stage_whose_data_changed() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_combo(data.path(), "train", 60, 1);
    write_combo(data.path(), "test", 10, 2);
    let run = out.path().join("run");
    let mut cfg = config(base.path(), data.path(), &run);
    cfg.epochs = 1;
    let stop = RunOptions { stop_after: Some(1), stop_in_stage: Some("expert-combo-fluency".into()), ..quiet() };
    let err = train_dmoerm(&cfg, candle_core::Device::Cpu, &stop).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err:#}");
    // Stage 1 is finished; the pairs it was trained on change before the run resumes.
    let train = data.path().join("combo/train.jsonl");
    let text = std::fs::read_to_string(&train).unwrap();
    std::fs::write(&train, text.replacen("w2", "w3", 200)).unwrap();
    let resumed = RunOptions { resume: true, ..quiet() };
    let err = format!("{:#}", train_dmoerm(&cfg, candle_core::Device::Cpu, &resumed).unwrap_err());
    assert!(err.contains("stages/rm-combo") && err.contains("other data"), "{err}");
    // Put back, it resumes; another learning rate for the aggregator alone does not undo stages 1 and 2.
    std::fs::write(&train, text).unwrap();
    cfg.dmoerm.as_mut().unwrap().aggregator.lr = Some(2e-2);
    train_dmoerm(&cfg, candle_core::Device::Cpu, &resumed).unwrap();
}
