//! RoBERTa and GPT-2 against transformers: tiny random checkpoints that transformers wrote, with its
//! token ids and rewards (`tests/fixtures/tiny-{roberta,gpt2}-rm/rewards_ref.json`, made by
//! `scripts/make_appendix_e_fixtures.py`). Each pair alone, all pairs in one padded batch (right, and for
//! GPT-2 left padding and another pad id), pairs longer than `max_length` cut as transformers cuts them.

mod common;

use std::path::{Path, PathBuf};

use rmroute::backbone::{PaddingSide, Truncation};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Adapters;

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's reference file and the model, limited as transformers was.
fn load(name: &str) -> (serde_json::Value, RewardModel) {
    let dir = fixture_dir(name);
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rewards_ref.json")).unwrap()).unwrap();
    let mut model = RewardModel::load(&dir, &LoadOptions::default()).unwrap();
    let max_length = reference["max_length"].as_u64().unwrap() as usize;
    model.set_limits(max_length, Truncation::LongestFirst).unwrap();
    (reference, model)
}

fn pairs(reference: &serde_json::Value) -> Vec<(String, String)> {
    let pairs = reference["pairs"].as_array().unwrap();
    pairs.iter().map(|p| (p["prompt"].as_str().unwrap().into(), p["response"].as_str().unwrap().into())).collect()
}

fn floats(value: &serde_json::Value) -> Vec<f32> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

/// Rewards within 1e-5 relative (of the larger of |reward| and 1, as rewards near 0 have no scale).
fn assert_close(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let tolerance = 1e-5 * b.abs().max(1.0);
        assert!((a - b).abs() <= tolerance, "{what}: pair {i}: rmroute {a}, transformers {b}");
    }
}

/// Token ids as transformers' `tokenizer(prompt, response, truncation=True, max_length=…)`, each pair's
/// reward alone, and every pair in one right-padded batch.
fn check_family(name: &str) -> (serde_json::Value, RewardModel) {
    let (reference, model) = load(name);
    let pairs = pairs(&reference);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let mut cut = 0;
    for (i, (prompt, response)) in refs.iter().enumerate() {
        let row = model.tokens.encode_row(prompt, response).unwrap();
        let expected: Vec<u32> =
            reference["pairs"][i]["input_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(row.ids, expected, "{name}: token ids of pair {i}");
        cut += usize::from(row.truncated);
    }
    assert!(cut >= 2, "{name}: the fixture should hold pairs longer than max_length ({cut} cut)");
    let alone: Vec<f32> = refs.iter().flat_map(|pair| model.score(&[*pair], 1, &Adapters::None).unwrap()).collect();
    let expected_alone: Vec<f32> =
        reference["pairs"].as_array().unwrap().iter().map(|p| p["alone"].as_f64().unwrap() as f32).collect();
    assert_close(&alone, &expected_alone, &format!("{name}: alone"));
    let batch = model.score(&refs, refs.len(), &Adapters::None).unwrap();
    assert_close(&batch, &floats(&reference["batch_right"]), &format!("{name}: right-padded batch"));
    (reference, model)
}

#[test]
fn roberta_matches_transformers() {
    let (_, model) = check_family("tiny-roberta-rm");
    assert_eq!(model.family.model_type, "roberta");
    assert_eq!(model.tokens.pad_id, 1, "RoBERTa pads with padding_idx, which its position ids count from");
    // The fixture's 64 positions past padding_idx + 1.
    assert_eq!(model.max_positions, Some(64));
}

#[test]
fn gpt2_matches_transformers_with_either_padding_side_and_any_pad_id() {
    let (reference, mut model) = check_family("tiny-gpt2-rm");
    let pairs = pairs(&reference);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    assert_eq!(model.tokens.pad_id, reference["pad_token_id"].as_u64().unwrap() as u32);
    model.tokens.padding_side = PaddingSide::Left;
    let left = model.score(&refs, refs.len(), &Adapters::None).unwrap();
    assert_close(&left, &floats(&reference["batch_left"]), "gpt2: left-padded batch");
    // Another pad id (transformers' rule takes the eos when the config names none): the reward is read
    // where the attention mask says, never where a pad id is found.
    for side in [PaddingSide::Left, PaddingSide::Right] {
        model.tokens.padding_side = side;
        model.tokens.pad_id = 0;
        let other_pad = model.score(&refs, refs.len(), &Adapters::None).unwrap();
        assert_close(&other_pad, &floats(&reference["batch_right"]), &format!("gpt2: pad id 0, {side:?} padding"));
    }
}

/// Without `pad_token_id` in the config, GPT-2 pads with the eos (transformers' rule), gives the same
/// rewards, and names that id in the config of what it saves (transformers refuses batches without one).
#[test]
fn gpt2_without_a_pad_token_pads_with_the_eos_and_saves_it() {
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(fixture_dir("tiny-gpt2-rm")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("pad_token_id");
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

    let (reference, _) = load("tiny-gpt2-rm");
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.set_limits(reference["max_length"].as_u64().unwrap() as usize, Truncation::LongestFirst).unwrap();
    assert_eq!(model.tokens.pad_id, config["eos_token_id"].as_u64().unwrap() as u32);
    let pairs = pairs(&reference);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let batch = model.score(&refs, refs.len(), &Adapters::None).unwrap();
    assert_close(&batch, &floats(&reference["batch_right"]), "gpt2 without pad_token_id");

    let saved = tempfile::tempdir().unwrap();
    model.save_pretrained(saved.path()).unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(saved.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(written["pad_token_id"], config["eos_token_id"]);
}

/// A GPT-2 config with neither a pad nor an eos id is refused, naming the key to add: any pad id rmroute
/// picked would be written into what it saves, and transformers would skip that token in Python.
#[test]
fn gpt2_without_pad_or_eos_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(fixture_dir("tiny-gpt2-rm")).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, dir.path().join(file.file_name().unwrap())).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("pad_token_id");
    config["eos_token_id"] = serde_json::Value::Null;
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let err = RewardModel::load(dir.path(), &LoadOptions::default()).err().unwrap();
    let err = format!("{err:#}");
    assert!(err.contains("pad_token_id") && err.contains("eos_token_id"), "{err}");
}

/// Left padding on a model that reads its first token (RoBERTa's `<s>`) is refused, never a reward
/// read at a pad.
#[test]
fn left_padding_is_refused_where_the_head_reads_the_first_token() {
    let (reference, mut model) = load("tiny-roberta-rm");
    model.tokens.padding_side = PaddingSide::Left;
    let pairs = pairs(&reference);
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let err = model.score(&refs, refs.len(), &Adapters::None).unwrap_err().to_string();
    assert!(err.contains("padded on the right"), "{err}");
}
