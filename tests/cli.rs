//! The `rmroute` binary as a user runs it.

mod common;

use std::process::Command;

fn rmroute(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rmroute")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

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
fn prepare_reports_the_bad_record_and_suggests_skip_invalid() {
    let sample = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
    let out = tempfile::tempdir().unwrap();
    let run = rmroute(&["prepare", "--input", sample.to_str().unwrap(), "--out", out.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(err.contains("harmless-base/test.jsonl:87: field `chosen`") && err.contains("--skip-invalid"), "{err}");
}
