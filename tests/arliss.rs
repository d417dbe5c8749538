//! ARLISS on the task whose answer is known (three domains with distinct prompt words and their own
//! reward markers): the router adapter must learn the domains, one pass with a reward adapter per row
//! must equal scoring each row alone and switching adapters one domain at a time, the frozen base must
//! never move, a new domain must leave every other adapter's files as they were, and a killed run must
//! resume to the same files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rmroute::methods::arliss::{Arliss, Switching, ROUTER_ADAPTER};
use rmroute::methods::config::{ArlissConfig, Method, RouterConfig, TrainConfig};
use rmroute::methods::{load as load_scorer, ScoreOptions, Scorer};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::lora::{LoraConfig, TargetModules};
use rmroute::nn::{Adapters, Ctx};
use rmroute::results::eval::{domain_test_sets, routed_results};
use rmroute::train::classification::Balance;
use rmroute::train::objective::{ModelRewards, Objective, Pairwise};
use rmroute::train::stage::RunOptions;
use rmroute::train::trainer::StoppedEarly;

fn train_arliss(
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
    add_domain: Option<&str>,
) -> anyhow::Result<PathBuf> {
    rmroute::methods::train(cfg, device, opts, add_domain)
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: TargetModules::names(&["query", "value", "dense"]),
    }
}

fn config(backbone: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        method: Method::Arliss,
        backbone: backbone.display().to_string(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        seed: 5,
        epochs: 6,
        batch_size: 16,
        lr: 5e-3,
        warmup_ratio: 0.1,
        max_length: 32,
        log_every: 1,
        lora: Some(lora()),
        arliss: Some(ArlissConfig {
            router: RouterConfig {
                epochs: Some(12),
                lr: Some(5e-3),
                batch_size: None,
                balance: Balance::ClassWeights,
                ..Default::default()
            },
        }),
        ..TrainConfig::default()
    }
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

/// The adapters' files of a run (metrics and stage records hold timings, which differ run to run).
fn adapter_files(run: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::files(&run.join("stages"))
        .into_iter()
        .filter(|(p, _)| p.ends_with("adapter_model.safetensors") || p.ends_with("adapter_config.json"))
        .collect()
}

fn arliss_model(scorer: &Scorer) -> (&RewardModel, &BTreeMap<String, String>) {
    let arliss = scorer.downcast_ref::<Arliss>().expect("ARLISS loads as a routed scorer that keeps adapters");
    (&arliss.model, &arliss.adapters)
}

#[test]
fn arliss_routes_learns_each_domain_and_one_pass_equals_switching() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    let base_before = common::files(base.path());
    common::write_three_domains(data.path());
    let run = train_arliss(
        &config(base.path(), data.path(), &out.path().join("run")),
        candle_core::Device::Cpu,
        &quiet(),
        None,
    )
    .unwrap();
    assert_eq!(common::files(base.path()), base_before, "the base checkpoint is never written");

    // Only adapters and heads are kept: no copy of the base anywhere in the run.
    let kept = common::files(&run);
    assert!(kept.keys().all(|p| !p.ends_with("model.safetensors") && !p.ends_with("config.json")), "{:?}", kept.keys());
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.method, "arliss");
    let base_ref = meta.base.clone().unwrap();
    assert_eq!(base_ref.sha256, rmroute::methods::base::sha256_file(&base.path().join("model.safetensors")).unwrap());
    // Table 3's count: the base once, plus every adapter with its head.
    let base_model = RewardModel::load(base.path(), &LoadOptions::default()).unwrap();
    let adapters: usize = meta.parts.iter().map(|p| p.total_parameters).sum();
    assert_eq!(meta.total_parameters, base_model.encoder_parameter_count() + adapters);
    assert_eq!(meta.parts.len(), 4);
    assert!(meta.total_parameters < 2 * base_model.parameter_count(), "{} parameters", meta.total_parameters);

    // The router adapter is a PEFT adapter whose classifier has one output per domain.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("stages/router/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["task_type"].as_str()), (Some("LORA"), Some("SEQ_CLS")));
    let tensors =
        candle_core::safetensors::load(run.join("stages/router/adapter_model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    assert_eq!(tensors["base_model.model.classifier.weight"].dims(), [3, 32]);

    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let results =
        routed_results(&scorer, &domain_test_sets(data.path(), &meta.domains, None, 0).unwrap()).unwrap().unwrap();
    assert!(results.router.accuracy >= 0.95, "router accuracy {}", results.router.accuracy);
    for domain in &meta.domains {
        let routed = results.routed[domain].accuracy;
        assert!(routed >= 0.95, "{domain}: routed accuracy {routed}");
    }

    // A batch mixing all three domains: one pass with an adapter per row equals each row alone with
    // its domain's adapter, and equals switching adapters one domain at a time.
    let (model, names) = arliss_model(&scorer);
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for domain in ["gamma", "alpha", "beta"] {
        for p in rmroute::results::eval::test_pairs(data.path(), domain, Some(4), 3).unwrap() {
            rows.push((domain.to_string(), p.prompt.clone(), p.chosen.clone()));
            rows.push((domain.to_string(), p.prompt, p.rejected));
        }
    }
    rows.swap(1, 9);
    rows.swap(3, 17);
    let pairs: Vec<(&str, &str)> = rows.iter().map(|(_, p, r)| (p.as_str(), r.as_str())).collect();
    let domains: Vec<String> = rows.iter().map(|(d, _, _)| d.clone()).collect();
    let per_row = Adapters::PerRow(domains.iter().map(|d| Some(names[d].clone())).collect());
    let mixed = model.forward(&model.encode(&pairs).unwrap(), &Ctx::eval().with_adapters(per_row)).unwrap();
    let mixed = mixed.to_vec1::<f32>().unwrap();
    for (i, (pair, domain)) in pairs.iter().zip(&domains).enumerate() {
        let alone = model.score(&[*pair], 1, &Adapters::One(names[domain].clone())).unwrap()[0];
        assert!((mixed[i] - alone).abs() <= 1e-5, "row {i} ({domain}): {} vs {alone}", mixed[i]);
    }
    let one_pass = scorer.router().unwrap().score_in(&pairs, &domains, 32).unwrap();
    let choice = ScoreOptions { switching: Some(Switching::Sequential), ..Default::default() };
    let sequential = load_scorer(&run, &LoadOptions::default(), &choice).unwrap();
    let switched = sequential.router().unwrap().score_in(&pairs, &domains, 32).unwrap();
    for (i, (a, b)) in one_pass.iter().zip(&switched).enumerate() {
        assert!((a - b).abs() <= 1e-5, "row {i}: one pass {a}, sequential {b}");
    }
    assert!(one_pass.iter().zip(&mixed).all(|(a, b)| (a - b).abs() <= 1e-5));
    // Routing matters: beta's pairs scored by alpha's adapter (opposite marker) come out wrong.
    let beta = rmroute::results::eval::test_pairs(data.path(), "beta", None, 0).unwrap();
    let chosen: Vec<(&str, &str)> = beta.iter().map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect();
    let rejected: Vec<(&str, &str)> = beta.iter().map(|p| (p.prompt.as_str(), p.rejected.as_str())).collect();
    let (c, r) = (scorer.score_as(&chosen, "alpha", 8).unwrap(), scorer.score_as(&rejected, "alpha", 8).unwrap());
    let right = c.iter().zip(&r).filter(|(c, r)| c > r).count();
    assert!(right * 5 < beta.len(), "alpha's adapter on beta: {right} of {} right", beta.len());

    // A base whose weights changed is refused, naming the checksum; so is a router of other domains.
    common::write_tiny_bert(base.path(), 2, true, false);
    let err = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).err().unwrap().to_string();
    assert!(err.contains(&base_ref.sha256) && err.contains("other weights give wrong rewards"), "{err}");
}

#[test]
fn training_an_adapter_moves_only_the_adapter() {
    let (base, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 3, true, false);
    common::write_three_domains(data.path());
    let opts = LoadOptions { new_head: true, ..Default::default() };
    let mut model = RewardModel::load(base.path(), &opts).unwrap();
    let before = model.state_dict().unwrap();
    model.add_adapter("rm-alpha", &lora(), 1).unwrap();
    model.add_classifier_adapter(ROUTER_ADAPTER, &lora(), 1, 3).unwrap();
    let pairs = rmroute::data::read_pairs(&data.path().join("alpha/train.jsonl")).unwrap();
    let objective = Pairwise(ModelRewards { model: &model, adapter: Some("rm-alpha"), pairs: &pairs });
    let vars = objective.vars();
    assert!(!vars.is_empty());
    for (name, _) in &vars {
        assert!(name.contains("lora_") || name.contains("classifier") || name.contains("pooler"), "{name}");
        assert!(name.starts_with("base_model.model."), "only the adapter's own tensors: {name}");
    }
    // The router adapter's objective too: its LoRA and its classifier over the 3 domains, nothing else.
    let prompts: Vec<String> = pairs.iter().map(|p| p.prompt.clone()).collect();
    let labels: Vec<usize> = (0..prompts.len()).map(|i| i % 3).collect();
    let routing = rmroute::train::classification::DomainClassification::new(
        &model,
        Some(ROUTER_ADAPTER),
        &prompts,
        &labels,
        Balance::None,
    )
    .unwrap();
    let router_vars = routing.vars();
    assert!(router_vars.iter().all(|(name, _)| name.starts_with("base_model.model.")), "{router_vars:?}");
    let router_count: usize = router_vars.iter().map(|(_, v)| v.elem_count()).sum();
    assert_eq!(router_count, model.adapter_parameter_count(ROUTER_ADAPTER));
    assert_eq!(model.adapter(ROUTER_ADAPTER).unwrap().head.outputs(), 3);
    let too_many = [3usize];
    assert!(rmroute::train::classification::DomainClassification::new(
        &model,
        Some(ROUTER_ADAPTER),
        &prompts[..1],
        &too_many,
        Balance::None
    )
    .is_err());

    let out = tempfile::tempdir().unwrap();
    let mut cfg = config(base.path(), data.path(), out.path());
    cfg.epochs = 2;
    let objective = Pairwise(ModelRewards { model: &model, adapter: Some("rm-alpha"), pairs: &pairs });
    let stage = rmroute::train::stage::Stage::whole_run(out.path(), common::no_key(), &quiet());
    let trained = rmroute::train::trainer::train(&objective, &cfg.trainer(), &cfg.adamw(), &stage).unwrap();
    assert!(trained.steps > 0);
    let after = model.state_dict().unwrap();
    assert_eq!(before.len(), after.len());
    for (name, t) in &before {
        let diff = common::max_abs_diff(t, &after[name]);
        assert_eq!(diff, 0.0, "{name} moved while training an adapter");
    }
    let lora_b = model.encoder.lora_linears()[0].adapter("rm-alpha").unwrap().b.clone();
    assert!(lora_b.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "the adapter trained");
}

#[test]
fn adding_a_domain_keeps_every_other_adapter_byte_identical() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    cfg.domains = vec!["alpha".into(), "beta".into()];
    let run = train_arliss(&cfg, candle_core::Device::Cpu, &quiet(), None).unwrap();
    let before: BTreeMap<PathBuf, Vec<u8>> =
        common::files(&run.join("stages")).into_iter().filter(|(p, _)| !p.starts_with("router")).collect();
    assert!(before.keys().any(|p| p.ends_with("rm-beta/adapter_model.safetensors")), "{:?}", before.keys());

    // Killed while the new router trains: the old run still loads and routes between its two domains.
    let stop =
        RunOptions { quiet: true, stop_after: Some(2), stop_in_stage: Some("router-3".into()), ..Default::default() };
    let err = train_arliss(&cfg, candle_core::Device::Cpu, &stop, Some("gamma")).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    assert_eq!(scorer.score(&[("w9 w10 w11 w12", "w5 w50")], 1).unwrap().domains.unwrap(), ["alpha"]);

    let resume = RunOptions { quiet: true, resume: true, ..Default::default() };
    train_arliss(&cfg, candle_core::Device::Cpu, &resume, Some("gamma")).unwrap();
    let after = common::files(&run.join("stages"));
    for (path, bytes) in &before {
        assert!(after.get(path) == Some(bytes), "{} changed", path.display());
    }
    assert!(!run.join("stages/router").exists(), "the old router adapter goes once the new one is in place");
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.domains, ["alpha", "beta", "gamma"]);
    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let scored = scorer.score(&[("w35 w36 w40 w41", "w5 w50"), ("w22 w23 w24 w25", "w5 w50")], 2).unwrap();
    assert_eq!(scored.domains.unwrap(), ["gamma", "beta"]);

    // A base with other weights cannot grow the run: its adapters would not fit the old ones' base.
    let mut other = cfg.clone();
    let moved = tempfile::tempdir().unwrap();
    common::write_tiny_bert(moved.path(), 9, true, false);
    other.backbone = moved.path().display().to_string();
    std::fs::create_dir_all(data.path().join("delta")).unwrap();
    std::fs::copy(data.path().join("alpha/train.jsonl"), data.path().join("delta/train.jsonl")).unwrap();
    let err = train_arliss(&other, candle_core::Device::Cpu, &quiet(), Some("delta")).unwrap_err().to_string();
    assert!(err.contains("`backbone`"), "{err}");
    // Nor can other weights at the same path.
    common::write_tiny_bert(base.path(), 9, true, false);
    let err = train_arliss(&cfg, candle_core::Device::Cpu, &quiet(), Some("delta")).unwrap_err().to_string();
    assert!(err.contains("now has other weights"), "{err}");
    assert!(!run.join("stages/rm-delta").exists());
}

#[test]
fn a_run_killed_in_the_second_domain_resumes_to_the_same_files() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    let mut cfg = config(base.path(), data.path(), &out.path().join("whole"));
    cfg.epochs = 2;
    let whole = train_arliss(&cfg, candle_core::Device::Cpu, &quiet(), None).unwrap();

    cfg.out = out.path().join("killed");
    let stop =
        RunOptions { quiet: true, stop_after: Some(3), stop_in_stage: Some("rm-beta".into()), ..Default::default() };
    let err = train_arliss(&cfg, candle_core::Device::Cpu, &stop, None).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    assert!(cfg.out.join("stages/rm-alpha/adapter_model.safetensors").is_file(), "the first domain finished");
    assert!(cfg.out.join("stages/rm-beta/checkpoint/state.json").is_file());
    let resume = RunOptions { quiet: true, resume: true, ..Default::default() };
    // Resuming on other base weights is refused: the finished adapter was trained on the old ones.
    let weights = base.path().join("model.safetensors");
    std::fs::copy(&weights, out.path().join("kept.safetensors")).unwrap();
    common::write_tiny_bert(base.path(), 2, true, false);
    let err = train_arliss(&cfg, candle_core::Device::Cpu, &resume, None).unwrap_err().to_string();
    assert!(err.contains("other base weights"), "{err}");
    std::fs::copy(out.path().join("kept.safetensors"), &weights).unwrap();
    let resumed = train_arliss(&cfg, candle_core::Device::Cpu, &resume, None).unwrap();

    let (a, b) = (adapter_files(&whole), adapter_files(&resumed));
    assert_eq!(a.len(), 8, "{:?}", a.keys());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(&b[path] == bytes, "{} differs after resume", path.display());
    }
}

#[test]
fn train_arliss_eval_score_and_report_from_the_command_line() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_domain(data.path(), "code", 8, ("w5", "w6"), 32, 16, 1);
    common::write_domain(data.path(), "math", 21, ("w6", "w5"), 32, 16, 2);
    let run = out.path().join("run");
    let mut cfg = serde_json::to_value(config(base.path(), data.path(), &run)).unwrap();
    cfg["epochs"] = 2.into();
    let cfg_path = out.path().join("arliss.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let (rmroute, ok) = (common::rmroute, common::stdout_ok);
    ok(rmroute(&["train-arliss", "--config", cfg_path.to_str().unwrap(), "--quiet"]));
    let eval = ok(rmroute(&["eval", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
    assert!(eval.contains("routed accuracy") && eval.contains("sequential"), "{eval}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["method"], "arliss");
    assert_eq!(results["router"]["labels"], serde_json::json!(["code", "math"]));
    let modes: Vec<&str> =
        results["switching"].as_array().unwrap().iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["one_pass", "sequential"]);
    assert!(results["memory"]["loaded_bytes"].as_u64().unwrap() > 0);
    let report = ok(rmroute(&["report", run.to_str().unwrap(), "--out", out.path().to_str().unwrap()]));
    assert!(report.contains("| arliss |") && report.contains("Oracle"), "{report}");

    // `score` gives the same rewards whichever way adapters are switched.
    let input = out.path().join("in.jsonl");
    std::fs::copy(data.path().join("math/test.jsonl"), &input).unwrap();
    let score = |mode: &str| {
        let text = ok(rmroute(&[
            "score",
            "--model",
            run.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--switching",
            mode,
            "--quiet",
        ]));
        text.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    let (one, seq) = (score("one_pass"), score("sequential"));
    assert_eq!(one.len(), 16);
    for (a, b) in one.iter().zip(&seq) {
        assert_eq!(a["domain"], b["domain"]);
        assert!((a["chosen"].as_f64().unwrap() - b["chosen"].as_f64().unwrap()).abs() < 1e-5, "{a} vs {b}");
    }
    let wrong = rmroute(&["train-rodos", "--config", cfg_path.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("rmroute train-arliss"), "{err}");
}
