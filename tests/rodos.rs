//! RODOS on a task whose answer is known: three domains whose prompts are easy to tell apart (each
//! draws its words from its own range) and whose reward is a marker (chosen has `w5`, rejected `w6`).
//! The router must learn the domains, routing must cost nothing there, a new domain must leave the
//! old reward models untouched, and a killed run must resume to the same files.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rmroute::methods::config::{Method, RodosConfig, RouterConfig, TrainConfig};
use rmroute::methods::rodos::Rodos;
use rmroute::methods::{load as load_scorer, ScoreOptions};
use rmroute::model::LoadOptions;
use rmroute::results::eval::{domain_test_sets, routed_results};
use rmroute::train::classification::Balance;
use rmroute::train::stage::RunOptions;
use rmroute::train::trainer::StoppedEarly;

fn train_rodos(
    cfg: &TrainConfig,
    device: candle_core::Device,
    opts: &RunOptions,
    add_domain: Option<&str>,
) -> anyhow::Result<std::path::PathBuf> {
    rmroute::methods::train(cfg, device, opts, add_domain)
}

fn config(backbone: &Path, data: &Path, out: &Path) -> TrainConfig {
    TrainConfig {
        method: Method::Rodos,
        backbone: backbone.display().to_string(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        seed: 5,
        epochs: 5,
        batch_size: 16,
        lr: 2e-3,
        warmup_ratio: 0.1,
        max_length: 32,
        log_every: 1,
        rodos: Some(RodosConfig {
            router: RouterConfig {
                epochs: Some(12),
                lr: Some(2e-3),
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

/// The weights of a run's parts (metrics and stage records hold timings, which differ run to run).
fn weights(run: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::files(&run.join("stages")).into_iter().filter(|(p, _)| p.ends_with("model.safetensors")).collect()
}

#[test]
fn the_router_learns_the_domains_and_routing_costs_nothing() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    let run = train_rodos(
        &config(base.path(), data.path(), &out.path().join("run")),
        candle_core::Device::Cpu,
        &quiet(),
        None,
    )
    .unwrap();
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.domains, ["alpha", "beta", "gamma"]);
    assert_eq!(meta.parts.len(), 4);
    assert_eq!(meta.total_parameters, meta.parts.iter().map(|p| p.total_parameters).sum::<usize>());

    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    assert!(scorer.downcast_ref::<Rodos>().is_some() && scorer.is_routed());
    let results =
        routed_results(&scorer, &domain_test_sets(data.path(), &meta.domains, None, 0).unwrap()).unwrap().unwrap();
    assert!(results.router.accuracy >= 0.95, "router accuracy {}", results.router.accuracy);
    for domain in &meta.domains {
        let (routed, oracle) = (results.routed[domain].accuracy, results.oracle[domain].accuracy);
        assert_eq!(routed, oracle, "{domain}: routed {routed} vs oracle {oracle}");
        assert!(oracle >= 0.9, "{domain}: the domain's reward model learned the marker ({oracle})");
    }
    let total: usize = results.router.confusion.iter().flatten().sum();
    assert_eq!(total, 120);
    // Routing matters here: beta's pairs scored by alpha's model (opposite marker) come out wrong.
    let beta = rmroute::results::eval::test_pairs(data.path(), "beta", None, 0).unwrap();
    let inputs: Vec<(&str, &str)> = beta.iter().map(|p| (p.prompt.as_str(), p.chosen.as_str())).collect();
    let rejected: Vec<(&str, &str)> = beta.iter().map(|p| (p.prompt.as_str(), p.rejected.as_str())).collect();
    let (c, r) = (scorer.score_as(&inputs, "alpha", 8).unwrap(), scorer.score_as(&rejected, "alpha", 8).unwrap());
    let right = c.iter().zip(&r).filter(|(c, r)| c > r).count();
    assert!(right * 5 < beta.len(), "alpha's model on beta: {right} of {} right", beta.len());

    // Routed accuracy scores each pair with its own prompt's route, whatever order the batches are
    // cut in (shortest first): alpha's and beta's pairs mixed under one name, each checked one by one.
    let mut mixed = rmroute::results::eval::test_pairs(data.path(), "alpha", None, 0).unwrap();
    mixed.extend(beta.iter().cloned());
    let order = rmroute::data::order::pair_order(&mixed);
    assert_ne!(order, (0..mixed.len()).collect::<Vec<_>>(), "the batches must be cut out of file order");
    let sets: rmroute::results::eval::TestSets = [("alpha".to_string(), mixed.clone())].into_iter().collect();
    let results = routed_results(&scorer, &sets).unwrap().unwrap();
    let routed = scorer.router().unwrap();
    let one_by_one = mixed
        .iter()
        .filter(|p| {
            let domain = routed.domains()[routed.route(&[p.prompt.as_str()], 1).unwrap()[0]].clone();
            let inputs = [(p.prompt.as_str(), p.chosen.as_str()), (p.prompt.as_str(), p.rejected.as_str())];
            let rewards = routed.score_in(&inputs, &[domain.clone(), domain], 2).unwrap();
            rewards[0] > rewards[1]
        })
        .count();
    let routed_accuracy = results.routed["alpha"].accuracy;
    assert!(
        (routed_accuracy - one_by_one as f64 / mixed.len() as f64).abs() < 1e-12,
        "{routed_accuracy} vs {one_by_one}"
    );
    assert!(routed_accuracy >= 0.9, "each pair went to its own domain's model: {routed_accuracy}");

    // The router is a transformers classifier over the domains.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("stages/router/config.json")).unwrap()).unwrap();
    assert_eq!(config["num_labels"], 3);
    assert_eq!(config["id2label"], serde_json::json!({"0": "alpha", "1": "beta", "2": "gamma"}));
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    let tensors =
        candle_core::safetensors::load(run.join("stages/router/model.safetensors"), &candle_core::Device::Cpu).unwrap();
    assert_eq!(tensors["classifier.weight"].dims(), [3, 32]);

    // A manifest naming a missing part is an error that names it.
    std::fs::rename(run.join("stages/rm-beta"), out.path().join("elsewhere")).unwrap();
    let err = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).err().unwrap().to_string();
    assert!(err.contains("rm-beta") && err.contains("missing"), "{err}");
}

#[test]
fn adding_a_domain_trains_only_its_model_and_the_router() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    let mut cfg = config(base.path(), data.path(), &out.path().join("run"));
    cfg.domains = vec!["alpha".into(), "beta".into()];
    let run = train_rodos(&cfg, candle_core::Device::Cpu, &quiet(), None).unwrap();
    let before: BTreeMap<PathBuf, Vec<u8>> =
        common::files(&run.join("stages")).into_iter().filter(|(p, _)| !p.starts_with("router")).collect();
    assert!(before.len() >= 8, "{:?}", before.keys().collect::<Vec<_>>());

    let again = train_rodos(&cfg, candle_core::Device::Cpu, &quiet(), Some("alpha")).unwrap_err().to_string();
    assert!(again.contains("already has domain `alpha`"), "{again}");
    let mut other = cfg.clone();
    other.epochs = 9;
    let err = train_rodos(&other, candle_core::Device::Cpu, &quiet(), Some("gamma")).unwrap_err().to_string();
    assert!(err.contains("`epochs`") && err.contains("run's own settings"), "{err}");

    // Killed while the new router trains: the old run still loads and routes between its two domains.
    let stop =
        RunOptions { quiet: true, stop_after: Some(2), stop_in_stage: Some("router-3".into()), ..Default::default() };
    let err = train_rodos(&cfg, candle_core::Device::Cpu, &stop, Some("gamma")).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    assert_eq!(scorer.score(&[("w9 w10 w11 w12", "w5 w50")], 1).unwrap().domains.unwrap(), ["alpha"]);

    let resume = RunOptions { quiet: true, resume: true, ..Default::default() };
    train_rodos(&cfg, candle_core::Device::Cpu, &resume, Some("gamma")).unwrap();
    assert!(!run.join("stages/router").exists(), "the old router goes once the new one is in place");
    let after = common::files(&run.join("stages"));
    for (path, bytes) in &before {
        assert!(after.get(path) == Some(bytes), "{} changed", path.display());
    }
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.domains, ["alpha", "beta", "gamma"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("stages/router-3/config.json")).unwrap()).unwrap();
    assert_eq!(config["num_labels"], 3);
    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let scored = scorer.score(&[("w35 w36 w40 w41", "w5 w50")], 1).unwrap();
    assert_eq!(scored.domains.unwrap(), ["gamma"]);
}

#[test]
fn a_run_killed_in_the_second_domain_resumes_to_the_same_files() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    let mut cfg = config(base.path(), data.path(), &out.path().join("whole"));
    cfg.epochs = 2;
    let whole = train_rodos(&cfg, candle_core::Device::Cpu, &quiet(), None).unwrap();

    cfg.out = out.path().join("killed");
    let stop =
        RunOptions { quiet: true, stop_after: Some(3), stop_in_stage: Some("rm-beta".into()), ..Default::default() };
    let err = train_rodos(&cfg, candle_core::Device::Cpu, &stop, None).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    assert!(cfg.out.join("stages/rm-alpha/stage.json").is_file(), "the first domain finished");
    assert!(cfg.out.join("stages/rm-beta/checkpoint/state.json").is_file());
    let refused = train_rodos(&cfg, candle_core::Device::Cpu, &quiet(), None).unwrap_err().to_string();
    assert!(refused.contains("--resume"), "{refused}");
    let mut changed = cfg.clone();
    changed.max_pairs = Some(10);
    let resume = RunOptions { quiet: true, resume: true, ..Default::default() };
    let err = train_rodos(&changed, candle_core::Device::Cpu, &resume, None).unwrap_err().to_string();
    assert!(err.contains("rm-alpha") && err.contains("other settings"), "a finished stage of other settings: {err}");
    let resumed = train_rodos(&cfg, candle_core::Device::Cpu, &resume, None).unwrap();

    let (a, b) = (weights(&whole), weights(&resumed));
    assert_eq!(a.len(), 4);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, bytes) in &a {
        assert!(&b[path] == bytes, "{} differs after resume", path.display());
    }
    let lines = |run: &Path| std::fs::read_to_string(run.join("stages/rm-beta/metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines(&whole), lines(&resumed));
}

#[test]
fn train_rodos_eval_and_report_from_the_command_line() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_domain(data.path(), "code", 8, ("w5", "w6"), 32, 16, 1);
    common::write_domain(data.path(), "math", 21, ("w6", "w5"), 32, 16, 2);
    let run = out.path().join("run");
    let mut cfg = serde_json::to_value(config(base.path(), data.path(), &run)).unwrap();
    cfg["epochs"] = 2.into();
    let cfg_path = out.path().join("rodos.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let (rmroute, ok) = (common::rmroute, common::stdout_ok);
    ok(rmroute(&["train-rodos", "--config", cfg_path.to_str().unwrap(), "--quiet"]));
    let eval = ok(rmroute(&["eval", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
    assert!(eval.contains("routed accuracy") && eval.contains("Router confusion"), "{eval}");
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["method"], "rodos");
    assert_eq!(results["router"]["labels"], serde_json::json!(["code", "math"]));
    assert!(results["oracle"]["code"]["accuracy"].is_number());
    let report = ok(rmroute(&["report", run.to_str().unwrap(), "--out", out.path().to_str().unwrap()]));
    assert!(report.contains("| rodos |") && report.contains("rm-code") && report.contains("Oracle"), "{report}");

    // The wrong subcommand for the config's method says which one to run.
    let wrong = rmroute(&["train-baseline", "--config", cfg_path.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && err.contains("rmroute train-rodos"), "{err}");
    // A config that names no method is refused, naming the key.
    cfg.as_object_mut().unwrap().remove("method");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let missing = rmroute(&["train-rodos", "--config", cfg_path.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && err.contains("`method` is missing"), "{err}");
}

#[test]
fn class_weights_balance_the_domains_and_sampling_draws_them_evenly() {
    use rmroute::model::RewardModel;
    use rmroute::train::classification::DomainClassification;
    use rmroute::train::objective::Objective;
    let base = tempfile::tempdir().unwrap();
    common::write_tiny_bert(base.path(), 1, true, false);
    let labels3 = Some(vec!["a".to_string(), "b".to_string(), "c".to_string()]);
    let opts = LoadOptions { new_head: true, labels: labels3, ..Default::default() };
    let model = RewardModel::load(base.path(), &opts).unwrap();
    // 6 : 3 : 1 examples
    let labels: Vec<usize> = [vec![0; 6], vec![1; 3], vec![2; 1]].concat();
    let prompts: Vec<String> = (0..labels.len()).map(|i| format!("w{}", 8 + i)).collect();
    let weighted = DomainClassification::new(&model, None, &prompts, &labels, Balance::ClassWeights).unwrap();
    let want = [10.0 / 18.0, 10.0 / 9.0, 10.0 / 3.0];
    for (got, want) in weighted.class_weights.iter().zip(want) {
        assert!((got - want as f32).abs() < 1e-6, "{:?}", weighted.class_weights);
    }
    let plain = DomainClassification::new(&model, None, &prompts, &labels, Balance::None).unwrap();
    assert_eq!(plain.class_weights, [1.0, 1.0, 1.0]);
    let sampled = DomainClassification::new(&model, None, &prompts, &labels, Balance::Sampling).unwrap();
    let mut counts = [0usize; 3];
    for seed in 0..300 {
        for i in sampled.epoch_order(seed) {
            counts[labels[i]] += 1;
        }
    }
    // 3,000 draws, a third of them per domain, where the data holds 60% / 30% / 10%.
    assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
}

/// The router alone, as router experiments run it: `--only router` trains just the router stage,
/// `eval-router` measures it over test pairs and distinct prompts, and training the whole run with
/// `--resume` afterwards keeps that router byte for byte.
#[test]
fn a_router_trained_alone_is_evaluated_and_kept_by_the_whole_run() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    // Every test prompt of alpha twice (two pairs, one prompt): pairs and prompts count differently.
    let test = data.path().join("alpha/test.jsonl");
    let text = std::fs::read_to_string(&test).unwrap();
    let first = text.lines().next().unwrap().replace("alpha/test/0", "alpha/test/again");
    std::fs::write(&test, format!("{text}{first}\n")).unwrap();
    let run = out.path().join("run");
    let mut cfg = serde_json::to_value(config(base.path(), data.path(), &run)).unwrap();
    cfg["epochs"] = 2.into();
    let cfg_path = out.path().join("rodos.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let (rmroute, ok) = (common::rmroute, common::stdout_ok);
    let config_arg = cfg_path.to_str().unwrap();
    let trained = ok(rmroute(&["train-rodos", "--config", config_arg, "--only", "router", "--quiet"]));
    assert!(trained.contains("eval-router"), "{trained}");
    assert!(run.join("stages/router/stage.json").is_file() && !run.join("stages/rm-alpha").exists());
    assert!(!run.join("rmroute.json").exists(), "a router alone is not a finished run");
    let report =
        ok(rmroute(&["eval-router", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
    assert!(report.contains("Router accuracy") && report.contains("Router confusion"), "{report}");
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("stages/router/router-results.json")).unwrap()).unwrap();
    assert_eq!(results["labels"], serde_json::json!(["alpha", "beta", "gamma"]));
    let records = rmroute::data::read_pairs(&test).unwrap();
    let distinct: std::collections::BTreeSet<&str> = records.iter().map(|r| r.prompt.as_str()).collect();
    assert!(distinct.len() < records.len());
    assert_eq!(results["prompts"]["alpha"], distinct.len());
    let pairs: u64 = results["confusion"][0].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(pairs as usize, records.len());
    assert!(results["accuracy"].as_f64().unwrap() >= 0.95, "{results}");
    assert!(results["prompt_accuracy"].as_f64().unwrap() >= 0.95, "{results}");

    let router = common::files(&run.join("stages/router"));
    ok(rmroute(&["train-rodos", "--config", config_arg, "--resume", "--quiet"]));
    let mut after = common::files(&run.join("stages/router"));
    after.remove(Path::new("router-results.json"));
    let mut before = router;
    before.remove(Path::new("router-results.json"));
    assert_eq!(after, before, "the whole run kept the router trained alone");
    // eval-router on the finished run reads its router.
    ok(rmroute(&["eval-router", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
    assert!(run.join("router-results.json").is_file());
    // A method without a router says so.
    cfg["method"] = "baseline".into();
    cfg.as_object_mut().unwrap().remove("rodos");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let none = rmroute(&["train-baseline", "--config", config_arg, "--only", "router", "--quiet", "--force"]);
    let err = String::from_utf8_lossy(&none.stderr);
    assert!(!none.status.success() && err.contains("has no router"), "{err}");
}

/// Where a long prompt says what it asks at its end (as a conversation's latest turn does), the
/// router reads it by default (`keep_end`, issue 32) and learns the domains; told to keep the start, as
/// rmroute 0.1.0's router did, it reads only the shared opening and cannot. The stage records which.
#[test]
fn a_router_reads_the_end_of_a_long_prompt_unless_told_otherwise() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_three_domains(data.path());
    // 40 words drawn alike for every domain before each prompt's own words: past the 32 tokens read.
    for domain in ["alpha", "beta", "gamma"] {
        for split in ["train", "test"] {
            let path = data.path().join(domain).join(format!("{split}.jsonl"));
            let mut text = String::new();
            for (i, line) in std::fs::read_to_string(&path).unwrap().lines().enumerate() {
                let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
                let opening: Vec<String> = (0..40).map(|k| format!("w{}", 47 + (i * 7 + k * 3) % 16)).collect();
                record["prompt"] = format!("{} {}", opening.join(" "), record["prompt"].as_str().unwrap()).into();
                text.push_str(&format!("{record}\n"));
            }
            std::fs::write(&path, text).unwrap();
        }
    }
    let (rmroute, ok) = (common::rmroute, common::stdout_ok);
    let mut accuracy = BTreeMap::new();
    for cut in [None, Some("keep_start")] {
        let run = out.path().join(cut.unwrap_or("default"));
        let mut cfg = serde_json::to_value(config(base.path(), data.path(), &run)).unwrap();
        if let Some(cut) = cut {
            cfg["rodos"]["router"]["truncation"] = cut.into();
        }
        let cfg_path = out.path().join(format!("{}.json", cut.unwrap_or("default")));
        std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
        ok(rmroute(&["train-rodos", "--config", cfg_path.to_str().unwrap(), "--only", "router", "--quiet"]));
        let stage: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("stages/router/stage.json")).unwrap()).unwrap();
        let recorded = stage["key"]["settings"]["prompt_truncation"].as_str().unwrap().to_string();
        assert_eq!(recorded, cut.unwrap_or("keep_end"));
        ok(rmroute(&["eval-router", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
        let results: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("stages/router/router-results.json")).unwrap()).unwrap();
        accuracy.insert(recorded, results["accuracy"].as_f64().unwrap());
    }
    assert!(accuracy["keep_end"] >= 0.95, "{accuracy:?}");
    assert!(accuracy["keep_start"] <= 0.6, "the opening tells the domains apart: {accuracy:?}");
}
