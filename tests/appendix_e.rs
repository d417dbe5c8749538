//! The Appendix E backbones as a user runs them: every method trains on RoBERTa and on GPT-2 through
//! `rmroute train-*`, then `eval`, `score` (f32 and bf16; ARLISS one-pass and sequential) and `report`;
//! and `scripts/reproduce.sh --table7` trains and reports Table 7's set on tiny checkpoints.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{rmroute, stdout_ok};

/// Three domains (`common::write_three_domains`), with aspect labels on `alpha` for DMoERM's experts.
fn write_data(data: &Path) {
    common::write_three_domains(data);
    let path = data.join("alpha/train.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut labelled = String::new();
    for (i, line) in text.lines().enumerate() {
        let mut record: serde_json::Value = serde_json::from_str(line).unwrap();
        let sign = |keep: bool| if keep { 1 } else { -1 };
        record["aspects"] = serde_json::json!({"helpfulness": sign(i % 3 != 0), "fluency": sign(i % 2 == 0)});
        labelled.push_str(&format!("{record}\n"));
    }
    std::fs::write(&path, labelled).unwrap();
}

/// A user's config for `method` on `backbone`, trained briefly.
fn config(method: &str, backbone: &Path, data: &Path, out: &Path, lora_targets: &[&str]) -> serde_json::Value {
    let mut cfg = serde_json::json!({
        "method": method, "backbone": backbone, "data": data, "out": out, "seed": 2, "epochs": 1,
        "batch_size": 16, "lr": 5e-3, "max_length": 40, "log_every": 4,
    });
    let lora = serde_json::json!({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": lora_targets});
    match method {
        "baselora" | "arliss" | "dmoerm" => cfg["lora"] = lora,
        _ => {}
    }
    match method {
        "more" => cfg["more"] = serde_json::json!({"top_k": 2, "noise": true, "balance_coef": 0.01}),
        "rodos" => cfg["rodos"] = serde_json::json!({"router": {"epochs": 2}}),
        "arliss" => cfg["arliss"] = serde_json::json!({"router": {"epochs": 2}}),
        "dmoerm" => {
            cfg["dmoerm"] = serde_json::json!({"router": {"epochs": 2}, "min_aspect_pairs": 4,
                "expert": {"epochs": 1}, "aggregator": {"epochs": 2, "lr": 1e-3}})
        }
        _ => {}
    }
    cfg
}

fn scores(model: &Path, input: &Path, extra: &[&str]) -> Vec<f64> {
    let out = input.with_extension(format!("{}.out", extra.join("-")));
    let mut args = vec!["score", "--model", model.to_str().unwrap(), "--input", input.to_str().unwrap()];
    args.extend(["--out", out.to_str().unwrap(), "--quiet"]);
    args.extend(extra);
    stdout_ok(rmroute(&args));
    let text = std::fs::read_to_string(&out).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .flat_map(|v| [v["chosen"].as_f64().unwrap(), v["rejected"].as_f64().unwrap()])
        .collect()
}

#[test]
fn every_method_trains_evaluates_scores_and_reports_on_roberta_and_gpt2() {
    let (data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_data(data.path());
    let input = out.path().join("pairs.jsonl");
    let test = std::fs::read_to_string(data.path().join("beta/test.jsonl")).unwrap();
    std::fs::write(&input, test.lines().take(6).collect::<Vec<_>>().join("\n")).unwrap();

    let mut runs: Vec<PathBuf> = Vec::new();
    for (family, targets) in
        [("roberta", ["query", "key", "value", "dense"].as_slice()), ("gpt2", &["c_attn", "c_proj"])]
    {
        let backbone = common::repo_fixture(&format!("tiny-{family}-rm"));
        for method in ["baseline", "baselora", "more", "rodos", "arliss", "dmoerm"] {
            let run = out.path().join(format!("{method}-{family}"));
            let cfg = config(method, &backbone, data.path(), &run, targets);
            let file = out.path().join(format!("{method}-{family}.json"));
            std::fs::write(&file, cfg.to_string()).unwrap();
            let command = if method == "baselora" { "train-baseline".to_string() } else { format!("train-{method}") };
            stdout_ok(rmroute(&[&command, "--config", file.to_str().unwrap(), "--quiet"]));
            stdout_ok(rmroute(&["eval", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
            let results: serde_json::Value =
                serde_json::from_slice(&std::fs::read(run.join("results.json")).unwrap()).unwrap();
            for domain in ["alpha", "beta", "gamma"] {
                let accuracy = results["domains"][domain]["accuracy"].as_f64();
                assert!(accuracy.is_some_and(|a| (0.0..=1.0).contains(&a)), "{method} on {family}: {results}");
            }

            let f32_rewards = scores(&run, &input, &[]);
            assert_eq!(f32_rewards.len(), 12);
            assert!(f32_rewards.iter().all(|r| r.is_finite()), "{method} on {family}: {f32_rewards:?}");
            let bf16 = scores(&run, &input, &["--dtype", "bf16"]);
            for (a, b) in f32_rewards.iter().zip(&bf16) {
                assert!((a - b).abs() <= 5e-2 * a.abs().max(1.0), "{method} on {family}: bf16 {b} vs f32 {a}");
            }
            if method == "arliss" {
                let sequential = scores(&run, &input, &["--switching", "sequential"]);
                for (a, b) in f32_rewards.iter().zip(&sequential) {
                    assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{family}: sequential {b} vs one pass {a}");
                }
            }
            runs.push(run);
        }
    }

    let tables = out.path().join("tables");
    let mut args = vec!["report".to_string()];
    args.extend(runs.iter().map(|r| r.display().to_string()));
    args.extend(["--out".into(), tables.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let md = stdout_ok(rmroute(&args));
    for family in ["tiny-roberta-rm", "tiny-gpt2-rm"] {
        for method in ["baseline", "baselora", "more", "rodos", "arliss", "dmoerm"] {
            assert!(md.contains(&format!("| {method} | {family} |")), "no {method} row for {family}:\n{md}");
        }
    }
}

/// `scripts/reproduce.sh --table7` with each of Table 7's backbones replaced by a tiny checkpoint of its
/// family: eight Baseline runs, evaluated, and one report with a row in each table (Table 3's holds the
/// parameter count).
#[test]
fn reproduce_table7_trains_and_reports_every_row_on_tiny_checkpoints() {
    let (models, data, out) =
        (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_three_domains(data.path());
    let mut paths = Vec::new();
    for (i, name) in ["deberta-v3-large", "deberta-v3-base", "deberta-v3-small", "deberta-v3-xsmall"].iter().enumerate()
    {
        let dir = models.path().join(name);
        common::write_tiny_deberta(&dir, i as u64, &common::TinyDeberta { with_head: false, ..Default::default() });
        paths.push(format!("{name}={}", dir.display()));
    }
    for (i, name) in ["bert-base", "bert-small"].iter().enumerate() {
        let dir = models.path().join(name);
        common::write_tiny_bert(&dir, i as u64, true, false);
        paths.push(format!("{name}={}", dir.display()));
    }
    for (name, fixture) in [("roberta-base", "tiny-roberta-rm"), ("gpt2", "tiny-gpt2-rm")] {
        let dir = models.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for file in std::fs::read_dir(common::repo_fixture(fixture)).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, dir.join(file.file_name().unwrap())).unwrap();
        }
        paths.push(format!("{name}={}", dir.display()));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reproduce.sh");
    let mut command = Command::new("bash");
    command.arg(&script).args(["--table7", "--seeds", "1", "--device", "cpu", "--max-length", "40"]);
    command.args(["--data", data.path().to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    for path in &paths {
        command.args(["--backbone-path", path]);
    }
    let run = command.env("RMROUTE_BIN", env!("CARGO_BIN_EXE_rmroute")).env("RUST_BACKTRACE", "0").output().unwrap();
    let md = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{md}\n{}", String::from_utf8_lossy(&run.stderr));
    for name in [
        "deberta-v3-large",
        "deberta-v3-base",
        "deberta-v3-small",
        "deberta-v3-xsmall",
        "bert-base",
        "bert-small",
        "roberta-base",
        "gpt2",
    ] {
        assert!(out.path().join(format!("runs/baseline-{name}-seed1/results.json")).is_file(), "{name}");
        let rows = md.lines().filter(|l| l.starts_with(&format!("| baseline | {name} |"))).count();
        assert_eq!(rows, 3, "a row in Table 2, Table 3 (the parameter column) and Table 6 for {name}:\n{md}");
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("configs/baseline-gpt2.json")).unwrap()).unwrap();
    assert_eq!(config["max_length"], 40);
    assert!(config["backbone"].as_str().unwrap().ends_with("/gpt2"), "{config}");

    // The set is its own: mixing it with another selection is refused before anything runs.
    let mixed = Command::new("bash").arg(&script).args(["--table7", "--quick"]).output().unwrap();
    assert!(!mixed.status.success() && String::from_utf8_lossy(&mixed.stderr).contains("--table7 is its own set"));
}
