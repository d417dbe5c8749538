//! `prepare` on fixtures written from each source's published format, bad records included, and on
//! the shipped real sample.

use std::path::{Path, PathBuf};

use rmroute::data::prepare::{prepare, PrepareError, PrepareOptions};
use rmroute::data::{read_pairs, PairRecord};

fn write(dir: &Path, relative: &str, text: &str) -> PathBuf {
    let path = dir.join(relative);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

fn options(input: &Path, out: &Path) -> PrepareOptions {
    PrepareOptions {
        input: input.to_path_buf(),
        out: out.to_path_buf(),
        domains: vec![],
        max_pairs: None,
        test_fraction: 0.0,
        seed: 7,
        skip_invalid: false,
    }
}

fn pairs(out: &Path, domain: &str, split: &str) -> Vec<PairRecord> {
    read_pairs(&out.join(domain).join(format!("{split}.jsonl"))).unwrap()
}

fn record_error(result: Result<impl std::fmt::Debug, PrepareError>) -> rmroute::data::RecordError {
    match result {
        Err(PrepareError::Record(e)) => e,
        other => panic!("expected a record error, got {other:?}"),
    }
}

fn hh(prompt_turns: &str, reply: &str) -> String {
    format!("{prompt_turns}\n\nAssistant: {reply}")
}

fn anthropic_line(chosen: &str, rejected: &str) -> String {
    serde_json::json!({"chosen": chosen, "rejected": rejected}).to_string() + "\n"
}

#[test]
fn anthropic_splits_prompt_and_final_turn_and_counts_dropped_pairs() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: What is 2+2?";
    let text = [
        anthropic_line(&hh(dialogue, "It is 4."), &hh(dialogue, "Fish.")),
        anthropic_line(&hh(dialogue, "Same."), &hh(dialogue, "Same.")),
        anthropic_line(&hh("\n\nHuman: A", "x"), &hh("\n\nHuman: B", "y")),
    ]
    .concat();
    write(raw.path(), "anthropic/helpful-base/test.jsonl", &text);
    let stats = prepare(&options(raw.path(), out.path())).unwrap();
    let train = pairs(out.path(), "anthropic", "train");
    assert_eq!(train.len(), 1);
    assert_eq!(train[0].prompt, format!("{dialogue}\n\nAssistant:"));
    assert_eq!(train[0].chosen, "It is 4.");
    assert_eq!(train[0].rejected, "Fish.");
    assert_eq!(train[0].id, "anthropic/helpful-base/test/1");
    let s = &stats.domains["anthropic"];
    assert_eq!(s.source_records, 3);
    assert_eq!(s.dropped["identical responses"], 1);
    assert_eq!(s.dropped["prompts differ"], 1);
}

#[test]
fn anthropic_empty_final_turn_is_a_conversion_rule_dropped_and_counted_by_default() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let text = [
        anthropic_line(&hh("\n\nHuman: Q", "fine"), &hh("\n\nHuman: Q", "bad")),
        anthropic_line(&hh("\n\nHuman: Q2", "yes"), &hh("\n\nHuman: Q2", " ")),
        anthropic_line(&hh("\n\nHuman: Q3", ""), &hh("\n\nHuman: Q3", "no")),
    ]
    .concat();
    write(raw.path(), "anthropic/x/test.jsonl", &text);
    let stats = prepare(&options(raw.path(), out.path())).unwrap();
    let s = &stats.domains["anthropic"];
    assert_eq!(s.dropped["empty final Assistant turn"], 2);
    assert!(s.invalid.is_empty());
    assert_eq!(pairs(out.path(), "anthropic", "train").len(), 1);
}

#[test]
fn malformed_json_missing_field_wrong_type_and_bad_utf8_are_located() {
    let cases: [(&[u8], usize, Option<&str>); 4] = [
        (b"{\"chosen\": \"\\n\\nHuman: a\\n\\nAssistant: b\", \"rejected\": \"\\n\\nHuman: a\\n\\nAssistant: c\"}\n{not json\n", 2, None),
        (b"{\"chosen\": \"\\n\\nHuman: a\\n\\nAssistant: b\"}\n", 1, Some("rejected")),
        (b"{\"chosen\": 3, \"rejected\": \"x\"}\n", 1, Some("chosen")),
        (b"\n{\"chosen\": \"\\n\\nHuman: a\\n\\nAssistant: \xff\", \"rejected\": \"y\"}\n", 2, None),
    ];
    for (text, line, field) in cases {
        let raw = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = raw.path().join("anthropic/test.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        let e = record_error(prepare(&options(raw.path(), out.path())));
        assert_eq!((e.line, e.field.as_deref()), (line, field), "{e}");
        assert!(e.to_string().starts_with(&format!("{}:{line}:", path.display())), "{e}");
    }
}

#[test]
fn fuzzed_records_deep_nesting_and_raw_nul_are_located_not_a_crash() {
    let good = anthropic_line(&hh("a", "b"), &hh("a", "c"));
    let deep = format!("{{\"chosen\": {}{}, \"rejected\": \"x\"}}", "[".repeat(100_000), "]".repeat(100_000));
    for bad in [deep.as_bytes(), b"{\"chosen\": \"\n\nHuman: a\x00\n\nAssistant: b\", \"rejected\": \"y\"}"] {
        let raw = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let path = raw.path().join("anthropic/test.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, [good.as_bytes(), bad, b"\n"].concat()).unwrap();
        let e = record_error(prepare(&options(raw.path(), out.path())));
        assert!(e.line == 2 && e.to_string().starts_with(&format!("{}:2:", path.display())), "{e}");
    }
}

const HELLASWAG_TEXT: &str = "Roof shingle removal: A man is sitting on a roof. he\n3\nis using wrap to wrap a pair of skis.\nis ripping level tiles off.\nis holding a rubik's cube.\nstarts pulling up roofing on a roof.\nClean and jerk: A lady walks to a barbell. the lady\n0\nstands and lifts the weight.\nswings.\npulls the barbell forward.\npulls a rope.\n";

#[test]
fn hellaswag_text_form_picks_gold_and_a_seeded_wrong_ending() {
    let raw = tempfile::tempdir().unwrap();
    write(raw.path(), "hellaswag/val.txt", HELLASWAG_TEXT);
    let run = |seed: u64| {
        let out = tempfile::tempdir().unwrap();
        let mut opts = options(raw.path(), out.path());
        opts.seed = seed;
        prepare(&opts).unwrap();
        pairs(out.path(), "hellaswag", "train")
    };
    let a = run(1);
    assert_eq!(a.len(), 2);
    assert_eq!(a[0].prompt, "Roof shingle removal: A man is sitting on a roof. he");
    assert_eq!(a[0].chosen, "starts pulling up roofing on a roof.");
    assert_eq!(a[1].chosen, "stands and lifts the weight.");
    assert!(a.iter().all(|p| p.rejected != p.chosen));
    assert_eq!(a, run(1), "same seed, same file");
    let rejected: std::collections::HashSet<String> = (0..20).map(|s| run(s)[0].rejected.clone()).collect();
    assert_eq!(rejected.len(), 3, "the wrong ending is drawn from all three");
}

#[test]
fn hellaswag_text_bad_label_and_truncated_item() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(raw.path(), "hellaswag/val.txt", &HELLASWAG_TEXT.replacen("\n0\n", "\n7\n", 1));
    let e = record_error(prepare(&options(raw.path(), out.path())));
    assert_eq!((e.line, e.field.as_deref()), (8, Some("label")), "{e}");

    write(raw.path(), "hellaswag/val.txt", HELLASWAG_TEXT.strip_suffix("pulls a rope.\n").unwrap());
    let mut opts = options(raw.path(), out.path());
    opts.skip_invalid = true;
    let stats = prepare(&opts).unwrap();
    assert_eq!(stats.domains["hellaswag"].train.pairs, 1);
    assert_eq!(stats.domains["hellaswag"].invalid.values().sum::<usize>(), 1);
}

#[test]
fn hellaswag_jsonl_form_matches_the_text_form() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let line = |ind: u64, label: serde_json::Value| {
        serde_json::json!({"ind": ind, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
            "ctx": "A man is sitting on a roof. he", "endings": ["is using wrap.", "is ripping tiles off.", "is holding a cube.", "starts pulling up roofing."],
            "label": label, "source_id": "x", "split": "val", "split_type": "indomain"})
        .to_string()
    };
    write(raw.path(), "hellaswag/hellaswag_val.jsonl", &format!("{}\n{}\n", line(4, 3.into()), line(5, "3".into())));
    prepare(&options(raw.path(), out.path())).unwrap();
    let got = pairs(out.path(), "hellaswag", "train");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].prompt, "Roof shingle removal: A man is sitting on a roof. he");
    assert_eq!(got[0].chosen, "starts pulling up roofing.");
    assert_eq!(got[0].id, "hellaswag/hellaswag_val/4");

    write(raw.path(), "hellaswag/hellaswag_val.jsonl", &line(4, serde_json::Value::Null));
    let e = record_error(prepare(&options(raw.path(), out.path())));
    assert_eq!(e.field.as_deref(), Some("label"));
}

#[test]
fn hellaswag_original_files_test_on_the_validation_split() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let item = |ind: u64, label: Option<u64>| {
        let mut v = serde_json::json!({"ind": ind, "activity_label": "Cooking", "ctx": format!("Context {ind}."),
            "endings": ["one.", "two.", "three.", "four."], "split": "x"});
        if let Some(l) = label {
            v["label"] = l.into();
        }
        v.to_string() + "\n"
    };
    write(raw.path(), "hellaswag/hellaswag_train.jsonl", &(item(1, Some(0)) + &item(2, Some(1))));
    write(raw.path(), "hellaswag/hellaswag_val.jsonl", &(item(10, Some(2)) + &item(11, Some(3)) + &item(12, Some(0))));
    write(raw.path(), "hellaswag/hellaswag_test.jsonl", &item(20, None));
    let stats = prepare(&options(raw.path(), out.path())).unwrap();
    let test = pairs(out.path(), "hellaswag", "test");
    let ids: Vec<&str> = test.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["hellaswag/hellaswag_val/10", "hellaswag/hellaswag_val/11", "hellaswag/hellaswag_val/12"]);
    assert_eq!(pairs(out.path(), "hellaswag", "train").len(), 2);
    let s = &stats.domains["hellaswag"];
    assert_eq!(s.unused_files, ["hellaswag_test.jsonl"]);
    assert!(s.split.contains("validation"), "{}", s.split);
}

fn message(
    id: &str,
    parent: Option<&str>,
    role: &str,
    text: &str,
    rank: Option<u64>,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut m = serde_json::json!({"message_id": id, "parent_id": parent, "text": text, "role": role, "lang": "en",
        "rank": rank, "deleted": false, "review_result": true, "synthetic": false, "message_tree_id": "t1", "tree_state": "ready_for_export"});
    if let serde_json::Value::Object(extra) = extra {
        m.as_object_mut().unwrap().extend(extra);
    }
    m
}

fn labels(toxicity: f64, quality: f64) -> serde_json::Value {
    serde_json::json!({"labels": {"name": ["toxicity", "quality"], "value": [toxicity, quality], "count": [3, 3]}})
}

fn oasst_messages() -> Vec<serde_json::Value> {
    let none = serde_json::json!({});
    vec![
        message("p1", None, "prompter", "How do I boil an egg?", None, none.clone()),
        message("a1", Some("p1"), "assistant", "Put it in boiling water for 8 minutes.", Some(0), labels(0.0, 0.9)),
        message("a2", Some("p1"), "assistant", "Eggs are birds.", Some(2), labels(0.5, 0.2)),
        message("a3", Some("p1"), "assistant", "Use a pan.", Some(1), labels(0.0, 0.9)),
        message("a4", Some("p1"), "assistant", "Deleted reply.", Some(3), serde_json::json!({"deleted": true})),
        message("a5", Some("p1"), "assistant", "Nicht Englisch.", Some(4), serde_json::json!({"lang": "de"})),
        message("p2", Some("a1"), "prompter", "And a soft one?", None, none.clone()),
        message("a6", Some("p2"), "assistant", "Six minutes.", Some(0), none.clone()),
        message("a7", Some("p2"), "assistant", "An hour.", Some(1), none.clone()),
        message("a8", Some("p2"), "assistant", "Failed review.", Some(2), serde_json::json!({"review_result": false})),
    ]
}

#[test]
fn oasst_pairs_best_reply_with_each_lower_ranked_one_and_signs_aspects() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let text: String = oasst_messages().iter().map(|m| m.to_string() + "\n").collect();
    write(raw.path(), "oasst/messages.jsonl", &text);
    let stats = prepare(&options(raw.path(), out.path())).unwrap();
    let got = pairs(out.path(), "oasst", "train");
    let summary: Vec<(&str, &str)> = got.iter().map(|p| (p.chosen.as_str(), p.rejected.as_str())).collect();
    assert_eq!(
        summary,
        [
            ("Put it in boiling water for 8 minutes.", "Use a pan."),
            ("Put it in boiling water for 8 minutes.", "Eggs are birds."),
            ("Six minutes.", "An hour.")
        ]
    );
    assert_eq!(got[0].prompt, "\n\nHuman: How do I boil an egg?\n\nAssistant:");
    assert_eq!(
        got[2].prompt,
        "\n\nHuman: How do I boil an egg?\n\nAssistant: Put it in boiling water for 8 minutes.\n\nHuman: And a soft one?\n\nAssistant:"
    );
    let aspects = got[1].aspects.as_ref().unwrap();
    assert_eq!(
        (aspects["toxicity"], aspects["quality"]),
        (1, 1),
        "less toxic and better quality: chosen better on both"
    );
    assert_eq!(got[0].aspects.as_ref().unwrap()["quality"], 0);
    assert!(got[2].aspects.is_none());
    let s = &stats.domains["oasst"];
    assert_eq!(s.source_records, 10);
    assert_eq!(
        (s.dropped["message deleted"], s.dropped["message not English"], s.dropped["message failed review"]),
        (1, 1, 1)
    );
}

#[test]
fn oasst_tree_export_gives_the_same_pairs_as_flat_messages() {
    let messages = oasst_messages();
    fn nest(id: &str, all: &[serde_json::Value]) -> serde_json::Value {
        let mut node = all.iter().find(|m| m["message_id"] == id).unwrap().clone();
        let replies: Vec<_> =
            all.iter().filter(|m| m["parent_id"] == id).map(|m| nest(m["message_id"].as_str().unwrap(), all)).collect();
        node.as_object_mut().unwrap().remove("parent_id");
        node["replies"] = replies.into();
        node
    }
    let tree =
        serde_json::json!({"message_tree_id": "t1", "tree_state": "ready_for_export", "prompt": nest("p1", &messages)});
    let flat: String = messages.iter().map(|m| m.to_string() + "\n").collect();
    let run = |text: &str| {
        let raw = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        write(raw.path(), "oasst/data.jsonl", text);
        prepare(&options(raw.path(), out.path())).unwrap();
        pairs(out.path(), "oasst", "train")
            .into_iter()
            .map(|p| (p.prompt, p.chosen, p.rejected, p.aspects))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(&(tree.to_string() + "\n")), run(&flat));
}

#[test]
fn oasst_bad_role_is_located() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let mut messages = oasst_messages();
    messages[3]["role"] = "robot".into();
    write(raw.path(), "oasst/m.jsonl", &messages.iter().map(|m| m.to_string() + "\n").collect::<String>());
    let e = record_error(prepare(&options(raw.path(), out.path())));
    assert_eq!((e.line, e.field.as_deref()), (4, Some("role")));
}

fn shp_line(history: &str, a: &str, b: &str, label: serde_json::Value) -> String {
    serde_json::json!({"post_id": "abc", "domain": "askscience_train", "upvote_ratio": 0.9, "history": history,
        "c_root_id_A": "x", "c_root_id_B": "y", "created_at_utc_A": 1, "created_at_utc_B": 2, "score_A": 10, "score_B": 3,
        "human_ref_A": a, "human_ref_B": b, "labels": label, "seconds_difference": 1.0, "score_ratio": 3.3})
    .to_string()
        + "\n"
}

#[test]
fn shp_keeps_its_own_split_and_follows_labels() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(
        raw.path(),
        "shp/askscience/train.json",
        &(shp_line("Why is the sky blue?", "Rayleigh scattering.", "Because.", 1.into())
            + &shp_line("Why?", "No.", "Yes, because.", 0.into())),
    );
    write(raw.path(), "shp/askscience/test.json", &shp_line("Is water wet?", "Depends.", "Yes.", 1.into()));
    write(raw.path(), "shp/askscience/validation.json", &shp_line("Q?", "A.", "B.", 1.into()));
    let mut opts = options(raw.path(), out.path());
    opts.test_fraction = 0.5;
    let stats = prepare(&opts).unwrap();
    let train = pairs(out.path(), "shp", "train");
    assert_eq!((train[0].chosen.as_str(), train[0].rejected.as_str()), ("Rayleigh scattering.", "Because."));
    assert_eq!((train[1].chosen.as_str(), train[1].rejected.as_str()), ("Yes, because.", "No."));
    assert_eq!(pairs(out.path(), "shp", "test").len(), 1);
    assert_eq!(stats.domains["shp"].unused_files, ["askscience/validation.json"]);

    write(raw.path(), "shp/askscience/test.json", &shp_line("Is water wet?", "Depends.", "Yes.", "yes".into()));
    let e = record_error(prepare(&opts));
    assert_eq!(e.field.as_deref(), Some("labels"));
}

#[test]
fn dahoas_pairs_and_missing_field() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let line =
        |p: &str, c: &str, r: &str| serde_json::json!({"prompt": p, "chosen": c, "rejected": r}).to_string() + "\n";
    write(
        raw.path(),
        "dahoas/train.jsonl",
        &(line("Write a haiku.", "Leaves fall", "no") + &line("Hi", "Hello", "Hello")),
    );
    let stats = prepare(&options(raw.path(), out.path())).unwrap();
    assert_eq!(pairs(out.path(), "dahoas", "train").len(), 1);
    assert_eq!(stats.domains["dahoas"].dropped["identical responses"], 1);

    write(raw.path(), "dahoas/train.jsonl", "{\"prompt\": \"p\", \"chosen\": \"c\"}\n");
    let e = record_error(prepare(&options(raw.path(), out.path())));
    assert_eq!((e.line, e.field.as_deref()), (1, Some("rejected")));
}

#[test]
fn hash_split_never_puts_a_prompt_in_both_splits_and_cap_is_seeded() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let text: String = (0..400)
        .map(|i| serde_json::json!({"prompt": format!("prompt {}", i % 100), "chosen": format!("good {i}"), "rejected": "bad"}).to_string() + "\n")
        .collect();
    write(raw.path(), "dahoas/train.jsonl", &text);
    let mut opts = options(raw.path(), out.path());
    opts.test_fraction = 0.3;
    prepare(&opts).unwrap();
    let train = pairs(out.path(), "dahoas", "train");
    let test = pairs(out.path(), "dahoas", "test");
    assert_eq!(train.len() + test.len(), 400);
    assert!((60..180).contains(&test.len()), "{} test pairs", test.len());
    let test_prompts: std::collections::HashSet<_> = test.iter().map(|p| &p.prompt).collect();
    assert!(train.iter().all(|p| !test_prompts.contains(&p.prompt)));

    opts.max_pairs = Some(50);
    let stats = prepare(&opts).unwrap();
    let capped = [pairs(out.path(), "dahoas", "train"), pairs(out.path(), "dahoas", "test")].concat();
    assert_eq!(capped.len(), 50);
    assert_eq!(stats.domains["dahoas"].pairs_over_cap, 350);
    prepare(&opts).unwrap();
    assert_eq!(capped, [pairs(out.path(), "dahoas", "train"), pairs(out.path(), "dahoas", "test")].concat());
}

#[test]
fn outputs_leave_no_temporary_files_and_unknown_domain_is_named() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    write(raw.path(), "dahoas/train.jsonl", "{\"prompt\": \"p\", \"chosen\": \"c\", \"rejected\": \"r\"}\n");
    prepare(&options(raw.path(), out.path())).unwrap();
    let mut names: Vec<String> = walk(out.path());
    names.sort();
    assert_eq!(names, ["dahoas/test.jsonl", "dahoas/train.jsonl", "stats.json"]);

    let mut opts = options(raw.path(), out.path());
    opts.domains = vec!["reddit".into()];
    assert!(prepare(&opts).unwrap_err().to_string().contains("unknown domain `reddit`"));
    opts.domains = vec!["shp".into()];
    assert!(prepare(&opts).unwrap_err().to_string().contains("shp"));
}

fn walk(dir: &Path) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            found.extend(walk(&path).into_iter().map(|f| format!("{name}/{f}")));
        } else {
            found.push(path.file_name().unwrap().to_string_lossy().to_string());
        }
    }
    found
}

/// The shipped real sample: counts checked against the raw files by an independent Python count
/// (see the note on the foundation issue).
#[test]
fn shipped_sample_prepares_with_expected_counts() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sample");
    let out = tempfile::tempdir().unwrap();
    let mut opts = options(&sample, out.path());
    opts.test_fraction = 0.1;
    opts.skip_invalid = true;
    let stats = prepare(&opts).unwrap();
    let total = |d: &str| stats.domains[d].train.pairs + stats.domains[d].test.pairs;
    assert_eq!(stats.domains["anthropic"].source_records, 450);
    assert_eq!(stats.domains["hellaswag"].source_records, 400);
    assert_eq!(total("hellaswag"), 400);
    assert_eq!(
        total("anthropic"),
        450 - stats.domains["anthropic"].dropped.values().sum::<usize>()
            - stats.domains["anthropic"].invalid.values().sum::<usize>()
    );
    assert!(total("oasst") > 100, "{}", total("oasst"));
    for domain in ["anthropic", "hellaswag", "oasst"] {
        assert!(stats.domains[domain].test.pairs > 0, "{domain} has a test split");
    }
}

#[test]
fn the_output_folder_is_replaced_whole_and_a_foreign_folder_is_refused() {
    let raw = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let dialogue = "\n\nHuman: Hi";
    write(raw.path(), "anthropic/test.jsonl", &anthropic_line(&hh(dialogue, "Hello."), &hh(dialogue, "Go away.")));
    write(out.path(), "oasst/train.jsonl", "{}\n");
    write(out.path(), "stats.json", "{}");
    prepare(&options(raw.path(), out.path())).unwrap();
    assert!(!out.path().join("oasst").exists(), "a domain of an earlier prepare does not outlive it");
    assert_eq!(pairs(out.path(), "anthropic", "train").len(), 1);

    let foreign = tempfile::tempdir().unwrap();
    write(foreign.path(), "thesis.tex", "mine");
    let err = prepare(&options(raw.path(), foreign.path())).unwrap_err().to_string();
    assert!(err.contains("not a prepared data folder"), "{err}");
    assert!(foreign.path().join("thesis.tex").is_file());
}
