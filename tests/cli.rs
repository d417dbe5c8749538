//! The `rmroute` binary as a user runs it.

mod common;

use std::process::Command;

use common::{rmroute, stdout_ok};

#[test]
fn score_writes_one_line_per_record_for_pairs_and_single_responses() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"id\": \"p1\", \"prompt\": \"How do I copy a file?\", \"chosen\": \"Use cp source destination.\", \"rejected\": \"No.\"}\n\
         {\"prompt\": \"How do I copy a file?\", \"response\": \"Use cp source destination.\"}\n",
    )
    .unwrap();
    let out = dir.path().join("rewards.jsonl");
    let model = common::fixture("tiny-deberta-v3-rm");
    let run = rmroute(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "p1");
    // transformers' reward for this pair (rewards_ref.json)
    assert!((lines[0]["chosen"].as_f64().unwrap() - -3.606372117996216).abs() < 1e-4);
    assert_eq!(lines[1]["id"], "2");
    assert!((lines[1]["reward"].as_f64().unwrap() - lines[0]["chosen"].as_f64().unwrap()).abs() < 1e-6);
}

#[test]
fn bad_input_line_and_offline_hub_id_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"a\", \"response\": \"b\"}\n{\"prompt\": \"a\"}\n").unwrap();
    let model = common::fixture("tiny-deberta-v3-rm");
    let run = rmroute(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("in.jsonl:2: field `response`"), "{err}");

    let run = Command::new(env!("CARGO_BIN_EXE_rmroute"))
        .args(["score", "--model", "microsoft/deberta-v3-base", "--input", input.to_str().unwrap()])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("config.json") && err.contains("offline"), "{err}");
}

#[test]
fn prepare_converts_the_shipped_sample_without_skip_invalid_and_locates_a_broken_record() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
    let out = tempfile::tempdir().unwrap();
    let run = rmroute(&["prepare", "--input", sample.to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stats: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("stats.json")).unwrap()).unwrap();
    assert_eq!(stats["domains"]["anthropic"]["dropped"]["empty final Assistant turn"], 2);

    let raw = tempfile::tempdir().unwrap();
    let file = raw.path().join("anthropic/test.jsonl");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "{\"chosen\": \"\\n\\nHuman: a\\n\\nAssistant: b\", \"rejected\": 5}\n").unwrap();
    let run = rmroute(&["prepare", "--input", raw.path().to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(err.contains("test.jsonl:1: field `rejected`") && err.contains("--skip-invalid"), "{err}");
}

/// `--dtype bf16` scores the same file near transformers' f32 reward, and not with f32's exact numbers.
#[test]
fn score_in_bf16_stays_near_f32() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"How do I copy a file?\", \"response\": \"Use cp source destination.\"}\n")
        .unwrap();
    let model = common::fixture("tiny-deberta-v3-rm");
    let out = stdout_ok(rmroute(&[
        "score",
        "--model",
        model.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--quiet",
    ]));
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    let reward = line["reward"].as_f64().unwrap();
    // transformers' f32 reward for this input (rewards_ref.json)
    let f32_reward = -3.606372117996216;
    assert!((reward - f32_reward).abs() < 0.1 && reward != f32_reward, "{reward}");
}

#[test]
fn score_refuses_an_encoder_without_a_reward_head() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"Is the sky blue?\", \"response\": \"Yes.\"}\n").unwrap();
    let model = common::fetched_model("all-MiniLM-L6-v2");
    let run = rmroute(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--quiet"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "rewards from a random head: {}", String::from_utf8_lossy(&run.stdout));
    assert!(err.contains("no reward head") && err.contains("classifier.weight"), "{err}");
}

#[test]
fn score_takes_a_peft_adapter_directory_for_the_model() {
    use rmroute::model::{LoadOptions, RewardModel};
    use rmroute::nn::lora::{LoraConfig, TargetModules};
    use rmroute::nn::Adapters;
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    common::write_tiny_deberta(&base, 3, &common::TinyDeberta { with_head: false, ..Default::default() });
    let mut model = RewardModel::load(&base, &LoadOptions::default()).unwrap();
    let lora = LoraConfig { rank: 2, alpha: 4.0, dropout: 0.0, target_modules: TargetModules::names(&["query_proj"]) };
    model.add_adapter("x", &lora, 5).unwrap();
    for (_, var) in model.trainable_vars(&["x"]) {
        var.set(&(var.as_tensor() + 0.05).unwrap()).unwrap();
    }
    let adapter = dir.path().join("my-adapter");
    model.save_adapter("x", &adapter, base.to_str().unwrap()).unwrap();
    let want = model.score(&[("w4 w5", "w6 w7")], 1, &Adapters::One("x".into())).unwrap()[0];

    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"w4 w5\", \"response\": \"w6 w7\"}\n").unwrap();
    let out = dir.path().join("out.jsonl");
    let (base, adapter, input, out_s) =
        (base.to_str().unwrap(), adapter.to_str().unwrap(), input.to_str().unwrap(), out.to_str().unwrap());
    let run = rmroute(&["score", "--model", base, "--adapter", adapter, "--input", input, "--out", out_s, "--quiet"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let line: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&out).unwrap().trim()).unwrap();
    assert!((line["reward"].as_f64().unwrap() - want as f64).abs() < 1e-5, "{line} vs {want}");

    let run = rmroute(&["score", "--model", base, "--adapter", "missing", "--input", input, "--quiet"]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && err.contains("no adapter `missing`"), "{err}");
}

#[test]
fn a_count_flag_at_zero_is_an_error_naming_the_flag() {
    for args in [
        &["score", "--model", "m", "--input", "in.jsonl", "--batch-size", "0"][..],
        &["serve", "--model", "m", "--max-batch", "0"],
        &["prepare", "--input", "raw", "--out", "p", "--max-pairs", "0"],
        &["train-baseline", "--config", "c.json", "--epochs", "0"],
    ] {
        let run = rmroute(args);
        let err = String::from_utf8_lossy(&run.stderr);
        let flag = args[args.len() - 2];
        assert!(
            run.status.code() == Some(2) && err.contains(flag) && err.contains("must be at least 1"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn fuzzed_score_input_is_named_by_file_and_line_never_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let model = common::fixture("tiny-deberta-v3-rm");
    let good = "{\"prompt\": \"How do I copy a file?\", \"response\": \"Use cp.\"}\n";
    let deep = format!("{{\"prompt\": {}{}, \"response\": \"b\"}}", "[".repeat(100_000), "]".repeat(100_000));
    for bad in [
        deep.as_bytes(),
        b"{\"prompt\": \"a\xff\", \"response\": \"b\"}",
        b"{\"prompt\": \"a\x00\"}",
        b"{\"prompt\": \"a\"",
    ] {
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, [good.as_bytes(), bad, b"\n"].concat()).unwrap();
        let run =
            rmroute(&["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap(), "--quiet"]);
        let err = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.code() == Some(1) && err.contains("in.jsonl:2"), "{:?}: {err}", run.status);
    }
}
