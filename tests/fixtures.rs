//! rmroute against outputs that transformers produced (`../shared/models/fixtures/`).

mod common;

use rmroute::backbone::tokenizer::{load_tokenizer, tokenizer_from_spm};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Adapters;

#[test]
fn tokenizer_built_from_spm_model_alone_gives_transformers_ids() {
    let dir = common::fixture("tiny-spm");
    let tokenizer = tokenizer_from_spm(&dir.join("spm.model")).unwrap();
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer_ref.json")).unwrap()).unwrap();
    let mut checked = 0;
    for row in reference["texts"].as_array().unwrap() {
        let got = tokenizer.encode(row["text"].as_str().unwrap(), true).unwrap();
        let want: Vec<u32> = serde_json::from_value(row["input_ids"].clone()).unwrap();
        assert_eq!(got.get_ids(), want.as_slice(), "text {:?}", row["text"]);
        checked += 1;
    }
    for row in reference["pairs"].as_array().unwrap() {
        let got = tokenizer.encode((row["prompt"].as_str().unwrap(), row["response"].as_str().unwrap()), true).unwrap();
        let ids: Vec<u32> = serde_json::from_value(row["input_ids"].clone()).unwrap();
        let types: Vec<u32> = serde_json::from_value(row["token_type_ids"].clone()).unwrap();
        assert_eq!(got.get_ids(), ids.as_slice(), "pair {:?}", row["prompt"]);
        assert_eq!(got.get_type_ids(), types.as_slice(), "pair {:?}", row["prompt"]);
        checked += 1;
    }
    assert_eq!(checked, 11);
    // The tokenizer.json transformers wrote gives the same ids as ours.
    let theirs = load_tokenizer(&dir).unwrap();
    for row in reference["texts"].as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        assert_eq!(theirs.encode(text, true).unwrap().get_ids(), tokenizer.encode(text, true).unwrap().get_ids());
    }
}

fn reference_rows() -> Vec<(String, String, f32, f32)> {
    let dir = common::fixture("tiny-deberta-v3-rm");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("rewards_ref.json")).unwrap()).unwrap();
    reference["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["prompt"].as_str().unwrap().to_string(),
                r["response"].as_str().unwrap().to_string(),
                r["reward"].as_f64().unwrap() as f32,
                r["reward_in_padded_batch"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

#[test]
fn tiny_deberta_v3_reward_model_reproduces_transformers_rewards() {
    let dir = common::fixture("tiny-deberta-v3-rm");
    // The fixture has tokenizer.json too; load from a copy with spm.model only, to use our converter.
    let spm_only = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "spm.model"] {
        std::fs::copy(dir.join(f), spm_only.path().join(f)).unwrap();
    }
    for model_dir in [dir.as_path(), spm_only.path()] {
        let model = RewardModel::load(model_dir, &LoadOptions::default()).unwrap();
        let rows = reference_rows();
        let pairs: Vec<(&str, &str)> = rows.iter().map(|(p, r, _, _)| (p.as_str(), r.as_str())).collect();
        let batched = model.score(&pairs, 8, &Adapters::None).unwrap();
        for (i, (p, r, alone, padded)) in rows.iter().enumerate() {
            let single = model.score(&[(p, r)], 1, &Adapters::None).unwrap()[0];
            assert!((single - alone).abs() <= 1e-4, "row {i}: alone {single} vs transformers {alone}");
            assert!(
                (batched[i] - padded).abs() <= 1e-4,
                "row {i}: padded batch {} vs transformers {padded}",
                batched[i]
            );
            assert!((batched[i] - single).abs() <= 1e-5, "row {i}: padded batch {} vs alone {single}", batched[i]);
        }
    }
}
