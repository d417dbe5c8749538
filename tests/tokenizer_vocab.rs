//! BERT checkpoints laid out as prajjwal1/bert-small ships on the hub: `vocab.txt` and no
//! `tokenizer.json`, a `config.json` without `model_type`, a BertForPreTraining `pytorch_model.bin`.
//! Against transformers' ids and pooled outputs in `tests/fixtures/bert-vocab{,-cased}/reference.json`
//! (made by `scripts/make_bert_vocab_fixture.py`).

use std::path::{Path, PathBuf};

use rmroute::backbone::tokenizer::load_tokenizer;
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::{Adapters, Ctx};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn reference(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("reference.json")).unwrap()).unwrap()
}

fn ids(value: &serde_json::Value) -> Vec<u32> {
    value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// The ids the tokenizers library gives for a row: where transformers' call differs (an empty response,
/// which transformers 5 drops), the fixture records the library's as `tokenizers_…`.
fn expected(row: &serde_json::Value) -> (Vec<u32>, Vec<u32>) {
    match row.get("tokenizers_input_ids") {
        Some(input_ids) => (ids(input_ids), ids(&row["tokenizers_token_type_ids"])),
        None => (ids(&row["input_ids"]), ids(&row["token_type_ids"])),
    }
}

/// Every text and pair of the fixture encodes to transformers' ids and token type ids.
fn check_against_transformers(name: &str, lowercase: bool) {
    let dir = fixture_dir(name);
    let reference = reference(&dir);
    assert_eq!(reference["do_lower_case"], lowercase);
    let tokenizer = load_tokenizer(&dir).unwrap();
    for row in reference["texts"].as_array().unwrap() {
        let text = row["text"].as_str().unwrap();
        let encoding = tokenizer.encode(text, true).unwrap();
        let (input_ids, type_ids) = expected(row);
        assert_eq!(encoding.get_ids(), input_ids, "{name}: ids of {text:?}");
        assert_eq!(encoding.get_type_ids(), type_ids, "{name}: type ids of {text:?}");
    }
    for row in reference["pairs"].as_array().unwrap() {
        let (prompt, response) = (row["prompt"].as_str().unwrap(), row["response"].as_str().unwrap());
        let encoding = tokenizer.encode((prompt, response), true).unwrap();
        let (input_ids, type_ids) = expected(row);
        assert_eq!(encoding.get_ids(), input_ids, "{name}: ids of ({prompt:?}, {response:?})");
        assert_eq!(encoding.get_type_ids(), type_ids, "{name}: type ids of ({prompt:?}, {response:?})");
    }
}

#[test]
fn vocab_txt_tokenizer_matches_transformers_lowercased() {
    check_against_transformers("bert-vocab", true);
}

#[test]
fn vocab_txt_tokenizer_matches_transformers_cased_from_tokenizer_config() {
    check_against_transformers("bert-vocab-cased", false);
}

#[test]
fn vocab_txt_special_tokens_come_from_the_vocab() {
    let tokenizer = load_tokenizer(&fixture_dir("bert-vocab")).unwrap();
    let id = |t: &str| tokenizer.token_to_id(t);
    assert_eq!(
        (id("[PAD]"), id("[UNK]"), id("[CLS]"), id("[SEP]"), id("[MASK]")),
        (Some(0), Some(5), Some(6), Some(7), Some(8))
    );
    let decoded = tokenizer.decode(tokenizer.encode("hello, world", true).unwrap().get_ids(), true).unwrap();
    assert_eq!(decoded, "hello, world");
}

fn vocab_dir(root: &Path, lines: &str) -> PathBuf {
    let dir = root.join("bert-vocab-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vocab.txt"), lines).unwrap();
    dir
}

#[test]
fn vocab_txt_without_a_special_token_is_an_error_naming_the_file() {
    let root = tempfile::tempdir().unwrap();
    let dir = vocab_dir(root.path(), "[PAD]\n[UNK]\n[SEP]\n[MASK]\nhello\n");
    let err = format!("{:#}", load_tokenizer(&dir).err().unwrap());
    assert!(err.contains(&dir.join("vocab.txt").display().to_string()), "{err}");
    assert!(err.contains("has no [CLS] token"), "{err}");
}

#[test]
fn vocab_txt_without_mask_gets_it_appended_as_transformers_does() {
    let root = tempfile::tempdir().unwrap();
    let dir = vocab_dir(root.path(), "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\nworld\r\n");
    let tokenizer = load_tokenizer(&dir).unwrap();
    assert_eq!(tokenizer.token_to_id("[MASK]"), Some(6));
    assert_eq!(tokenizer.encode("hello [MASK] world", true).unwrap().get_ids(), [2, 4, 6, 5, 3]);
}

#[test]
fn tokenizer_config_with_a_bad_do_lower_case_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let dir = vocab_dir(root.path(), "[PAD]\n[UNK]\n[CLS]\n[SEP]\n");
    std::fs::write(dir.join("tokenizer_config.json"), r#"{"do_lower_case": "yes"}"#).unwrap();
    let err = format!("{:#}", load_tokenizer(&dir).err().unwrap());
    assert!(err.contains("tokenizer_config.json: `do_lower_case` is not true or false"), "{err}");
}

fn pooled(model: &RewardModel, prompt: &str, response: &str) -> Vec<f32> {
    let batch = model.encode(&[(prompt, response)]).unwrap();
    model.pooled(&batch, &Ctx::eval()).unwrap().to_vec2::<f32>().unwrap().remove(0)
}

/// The fixture's BertForPreTraining (`cls.*` MLM/NSP tensors beside `bert.*`, config.json without
/// `model_type`, named `bert-vocab`) loads as BERT, reads as transformers does, and a model saved from
/// it names its family, so it reloads from a directory whose name names none.
#[test]
fn bert_small_layout_loads_as_bert_and_its_save_reloads() {
    let dir = fixture_dir("bert-vocab");
    let reference = reference(&dir);
    // A new reward head, as training starts from bert-small.
    let model = RewardModel::load(&dir, &LoadOptions { new_head: true, ..LoadOptions::default() }).unwrap();
    assert_eq!(model.family.model_type, "bert");
    assert_eq!(model.config["model_type"], "bert");
    let pairs: Vec<(&str, &str)> = reference["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["prompt"].as_str().unwrap(), row["response"].as_str().unwrap()))
        .collect();
    for (row, (prompt, response)) in reference["pairs"].as_array().unwrap().iter().zip(&pairs) {
        let encoded = model.tokens.encode_row(prompt, response).unwrap();
        let (input_ids, type_ids) = expected(row);
        assert_eq!((encoded.ids, encoded.type_ids), (input_ids, type_ids), "ids of ({prompt:?}, {response:?})");
        if row.get("tokenizers_input_ids").is_some() {
            continue; // transformers' pooled output is of other ids (no second [SEP])
        }
        let theirs: Vec<f32> =
            row["pooler_output"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let ours = pooled(&model, prompt, response);
        for (a, b) in ours.iter().zip(&theirs) {
            assert!(
                (a - b).abs() <= 1e-5,
                "pooled ({prompt:?}, {response:?}): rmroute {ours:?}, transformers {theirs:?}"
            );
        }
    }
    let rewards = model.score(&pairs, 2, &Adapters::None).unwrap();

    let out = tempfile::tempdir().unwrap();
    let saved = out.path().join("run");
    model.save_pretrained(&saved).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(saved.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "bert");
    let reloaded = RewardModel::load(&saved, &LoadOptions::default()).unwrap();
    assert_eq!(reloaded.score(&pairs, 2, &Adapters::None).unwrap(), rewards);
}
