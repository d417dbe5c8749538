//! Pair encoding with truncation against ids made by transformers' tokenizers on long real pairs
//! (`tests/fixtures/truncation.json`, written by `scripts/make_truncation_fixtures.py`): `longest_first`
//! is `tokenizer(prompt, response, truncation=True, max_length=N)`, `keep_prompt_end` the rule written
//! independently in Python.

mod common;

use std::path::PathBuf;

use rmroute::backbone::encoding::{PairEncoder, Truncation};
use rmroute::backbone::tokenizer::load_tokenizer;

fn tokenizer_dir(name: &str) -> PathBuf {
    match name {
        "all-MiniLM-L6-v2" => common::fetched_model(name),
        "tiny-spm" => common::fixture(name),
        other => panic!("unknown tokenizer {other} in the fixture"),
    }
}

#[test]
fn both_strategies_give_the_ids_python_gives() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/truncation.json");
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    let (mut checked, mut truncated) = (0, 0);
    let mut seen = std::collections::BTreeSet::new();
    for case in cases {
        let name = case["tokenizer"].as_str().unwrap();
        let strategy: Truncation = serde_json::from_value(case["strategy"].clone()).unwrap();
        let max_length = case["max_length"].as_u64().unwrap() as usize;
        let encoder = PairEncoder::new(load_tokenizer(&tokenizer_dir(name)).unwrap(), max_length, strategy);
        let row = encoder.encode_row(case["prompt"].as_str().unwrap(), case["response"].as_str().unwrap()).unwrap();
        let want_ids: Vec<u32> = serde_json::from_value(case["input_ids"].clone()).unwrap();
        let want_types: Vec<u32> = serde_json::from_value(case["token_type_ids"].clone()).unwrap();
        let label = format!("{name} {strategy} {max_length} {}", case["pair"]);
        assert_eq!(row.ids, want_ids, "{label}");
        assert_eq!(row.type_ids, want_types, "{label}");
        let long = case["untruncated_length"].as_u64().unwrap() as usize > max_length;
        assert_eq!(row.truncated, long, "{label}");
        assert!(row.ids.len() <= max_length, "{label}");
        truncated += usize::from(long);
        checked += 1;
        seen.insert((name.to_string(), strategy.to_string()));
    }
    assert_eq!(seen.len(), 4, "both tokenizers, both strategies: {seen:?}");
    assert!(truncated >= 40 && checked > truncated, "{truncated} of {checked} cases are truncated");
}

#[test]
fn the_strategies_differ_on_a_long_prompt() {
    let tokenizer = load_tokenizer(&common::fixture("tiny-spm")).unwrap();
    let prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
    let response = "alpha beta gamma delta";
    let longest = PairEncoder::new(tokenizer.clone(), 12, Truncation::LongestFirst).encode_row(prompt, response);
    let end = PairEncoder::new(tokenizer, 12, Truncation::KeepPromptEnd).encode_row(prompt, response);
    let (longest, end) = (longest.unwrap(), end.unwrap());
    assert!(longest.truncated && end.truncated);
    assert_ne!(longest.ids, end.ids);
    assert_eq!((longest.ids.len(), end.ids.len()), (12, 12));
}

/// A prompt read alone (by a router) keeps its end or its start: the ids of the untruncated prompt,
/// cut on the side the setting names, between the specials.
#[test]
fn a_prompt_alone_keeps_the_end_or_the_start_it_is_told() {
    use rmroute::backbone::encoding::PromptTruncation;
    let tokenizer = load_tokenizer(&common::fixture("tiny-spm")).unwrap();
    let prompt = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen";
    let mut whole = PairEncoder::new(tokenizer.clone(), 512, Truncation::LongestFirst);
    let full = whole.encode_single(prompt).unwrap();
    assert!(!full.truncated && full.ids.len() > 12);
    let inner = &full.ids[1..full.ids.len() - 1];
    for (cut, kept) in
        [(PromptTruncation::KeepEnd, &inner[inner.len() - 10..]), (PromptTruncation::KeepStart, &inner[..10])]
    {
        whole.max_length = 12;
        whole.prompt_truncation = cut;
        let row = whole.encode_single(prompt).unwrap();
        assert!(row.truncated);
        assert_eq!(row.ids.len(), 12);
        assert_eq!(
            (row.ids[0], row.ids[11]),
            (full.ids[0], full.ids[full.ids.len() - 1]),
            "{cut:?}: the specials stay"
        );
        assert_eq!(&row.ids[1..11], kept, "{cut:?}");
    }
    // Before routers had a setting of their own, the pairs' truncation decided (still the default).
    let pair_cut = |t| PairEncoder::new(tokenizer.clone(), 12, t).prompt_truncation;
    assert_eq!(pair_cut(Truncation::LongestFirst), PromptTruncation::KeepStart);
    assert_eq!(pair_cut(Truncation::KeepPromptEnd), PromptTruncation::KeepEnd);
}
