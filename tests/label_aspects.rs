//! `rmroute label-aspects` against a fake OpenAI-compatible judge on a loopback port: labels from both
//! response orders, a position-biased point discarded, transient failures survived, resumption that
//! never asks a question twice, a refused key that stops the run with a hint, questions the server
//! refuses or answers emptily left for the next run, labels label-aspects did not write kept unless
//! --overwrite, and a 429 that pauses every worker.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

const MODEL: &str = "judge-1";
const KEY_ENV: &str = "RMROUTE_TEST_JUDGE_KEY";

/// Three capability points: the judge answers `helpfulness` by the response holding GOOD, always
/// says A for `position` (so the two orders disagree), and always TIE for `style`.
const ASPECTS: &str = r#"{
    "helpfulness": "how well the response answers the request",
    "position": "whichever response is shown first",
    "style": "the writing style"
}"#;

/// What the fake judge saw and gave.
#[derive(Default)]
struct Judge {
    requests: usize,
    /// Proper answers per question `pair-N/aspect/good-first`.
    answered: HashMap<String, usize>,
    /// Pairs whose injected failure already happened.
    failed: Vec<u32>,
    /// Fail the first request of pairs 1-6 (500, too slow, not JSON, no choices, "maybe", 429).
    inject: bool,
    /// Answer 401 once this many proper answers were given.
    refuse_after: Option<usize>,
    refused: usize,
    authorization: Vec<Option<String>>,
    /// Pairs always answered 400 (too long for the context).
    too_long: Vec<u32>,
    /// Answer 400 to any request with `max_tokens`, as OpenAI's reasoning models do.
    refuse_max_tokens: bool,
    /// `max_tokens` of each request (null when absent).
    max_tokens: Vec<Value>,
    /// Pairs always answered with empty content cut off at the token limit, as thinking models do.
    cut_off: Vec<u32>,
    /// Answer the first request 429 (Retry-After: 1) and note when.
    throttle_once: bool,
    throttled_at: Option<Instant>,
    arrivals: Vec<Instant>,
    /// Time taken by each answer.
    delay: Duration,
}

type Shared = Arc<Mutex<Judge>>;

/// Starts the judge on a free loopback port; returns its state and the `--endpoint` to use.
fn start(judge: Judge) -> (Shared, String) {
    let shared = Arc::new(Mutex::new(judge));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = format!("http://{}/v1", listener.local_addr().unwrap());
    let state = shared.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let app = Router::new().route("/v1/chat/completions", post(answer)).with_state(state);
            axum::serve(listener, app).await.unwrap();
        });
    });
    (shared, endpoint)
}

fn completion(content: &str) -> Response {
    let body = json!({"object": "chat.completion", "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]});
    (StatusCode::OK, axum::Json(body)).into_response()
}

async fn answer(State(state): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let request: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(request["model"], MODEL);
    assert_eq!(request["temperature"], 0);
    assert_eq!(request["messages"][0]["role"], "system");
    let question = request["messages"][1]["content"].as_str().unwrap().to_string();
    let pair: u32 =
        question.split("pair-").nth(1).unwrap().split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
    let aspect = if question.contains("answers the request") {
        "helpfulness"
    } else if question.contains("shown first") {
        "position"
    } else {
        assert!(question.contains("writing style"), "{question}");
        "style"
    };
    let good_first = question.find("GOOD").unwrap() < question.find("BAD").unwrap();
    let reply = match aspect {
        "helpfulness" => match (pair % 3, good_first) {
            (0, true) => "A",
            (0, false) => "B",
            (1, true) => "**A**",
            (1, false) => "Response B.",
            (_, true) => " a\n",
            (_, false) => "\"b\"",
        },
        "position" => "A",
        _ => "TIE",
    };

    let (inject, delay) = {
        let mut judge = state.lock().unwrap();
        judge.requests += 1;
        judge.authorization.push(headers.get("authorization").map(|v| v.to_str().unwrap().to_string()));
        judge.arrivals.push(Instant::now());
        judge.max_tokens.push(request.get("max_tokens").cloned().unwrap_or(Value::Null));
        if judge.refuse_max_tokens && request.get("max_tokens").is_some() {
            let message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use \
                           'max_completion_tokens' instead.";
            let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": "max_tokens"}});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        if judge.too_long.contains(&pair) {
            let message = "This model's maximum context length is 4096 tokens. However, your messages resulted in \
                           5120 tokens.";
            let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
            return (StatusCode::BAD_REQUEST, axum::Json(body)).into_response();
        }
        if judge.cut_off.contains(&pair) {
            let body = json!({"object": "chat.completion", "model": MODEL, "choices": [{"index": 0,
                "message": {"role": "assistant", "content": ""}, "finish_reason": "length"}]});
            return (StatusCode::OK, axum::Json(body)).into_response();
        }
        if judge.throttle_once && judge.throttled_at.is_none() {
            judge.throttled_at = Some(Instant::now());
            return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response();
        }
        if judge.refuse_after.is_some_and(|k| judge.answered.values().sum::<usize>() >= k) {
            judge.refused += 1;
            let body = json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}});
            return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
        }
        let inject = judge.inject && (1..=6).contains(&pair) && !judge.failed.contains(&pair);
        if inject {
            judge.failed.push(pair);
        } else {
            *judge.answered.entry(format!("pair-{pair}/{aspect}/{good_first}")).or_default() += 1;
        }
        (inject, judge.delay)
    };
    if !delay.is_zero() {
        tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await.unwrap();
    }
    if !inject {
        return completion(reply);
    }
    match pair {
        1 => (StatusCode::INTERNAL_SERVER_ERROR, "upstream error").into_response(),
        2 => {
            // Longer than the client's --timeout-secs 2.
            tokio::task::spawn_blocking(|| std::thread::sleep(std::time::Duration::from_secs(3))).await.unwrap();
            completion(reply)
        }
        3 => (StatusCode::OK, "<html>busy</html>").into_response(),
        4 => (StatusCode::OK, axum::Json(json!({"object": "chat.completion", "choices": []}))).into_response(),
        5 => completion("maybe"),
        _ => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], "slow down").into_response(),
    }
}

/// Domains `alpha` (8 train, 2 test pairs) and `beta` (2 + 2); pair N's prompt names `pair-N`, and the
/// chosen response holds GOOD for even N, the rejected one for odd N. Pairs 0 and 3 carry a point that
/// is not asked for, which stays.
fn write_data(dir: &Path) -> usize {
    let mut n = 0;
    for (domain, train, test) in [("alpha", 8, 2), ("beta", 2, 2)] {
        std::fs::create_dir_all(dir.join(domain)).unwrap();
        for (split, count) in [("train", train), ("test", test)] {
            let mut text = String::new();
            for i in 0..count {
                let (good, bad) = (format!("Sure, here it is: GOOD answer {n}."), format!("No idea, BAD answer {n}."));
                let (chosen, rejected) = if n % 2 == 0 { (good, bad) } else { (bad, good) };
                let mut record = json!({"id": format!("{domain}/{split}/{i}"), "domain": domain,
                    "prompt": format!("\n\nHuman: question pair-{n}?\n\nAssistant:"),
                    "chosen": chosen, "rejected": rejected});
                match n {
                    0 => record["aspects"] = json!({"toxicity": 1}),
                    3 => record["aspects"] = json!({"toxicity": 0}),
                    _ => {}
                }
                text.push_str(&format!("{record}\n"));
                n += 1;
            }
            std::fs::write(dir.join(domain).join(format!("{split}.jsonl")), text).unwrap();
        }
    }
    n
}

/// Runs `label-aspects` with the key variable set to `key` (or unset) and no proxy.
fn label(endpoint: &str, dir: &Path, key: Option<&str>, extra: &[&str]) -> Output {
    let aspects = dir.join("aspects.json");
    std::fs::write(&aspects, ASPECTS).unwrap();
    let data = dir.join("data");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rmroute"));
    cmd.args(["label-aspects", "--endpoint", endpoint, "--model", MODEL, "--aspects"])
        .arg(&aspects)
        .arg("--data")
        .arg(&data)
        .args(["--api-key-env", KEY_ENV, "--quiet"])
        .args(extra)
        .env("RUST_BACKTRACE", "0");
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env_remove(var);
    }
    match key {
        Some(key) => cmd.env(KEY_ENV, key),
        None => cmd.env_remove(KEY_ENV),
    };
    cmd.output().unwrap()
}

/// Sets the `aspects` of the `index`-th record of a split file, as `prepare` does for OASST.
fn set_aspects(dir: &Path, file: &str, index: usize, aspects: Value) {
    let path = dir.join("data").join(file);
    let mut lines: Vec<Value> =
        std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines[index]["aspects"] = aspects;
    std::fs::write(&path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn summary(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("data/aspect-labels.json")).unwrap()).unwrap()
}

fn read_records(dir: &Path) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for domain in ["alpha", "beta"] {
        for split in ["train", "test"] {
            let text = std::fs::read_to_string(dir.join("data").join(domain).join(format!("{split}.jsonl"))).unwrap();
            for line in text.lines() {
                let record: Value = serde_json::from_str(line).unwrap();
                out.insert(record["id"].as_str().unwrap().to_string(), record);
            }
        }
    }
    out
}

/// Every record has helpfulness ±1 by its marker and style 0; position has none; toxicity stays.
fn assert_labelled(dir: &Path, before: &BTreeMap<String, Value>) {
    let after = read_records(dir);
    assert_eq!(after.len(), before.len());
    for (id, record) in &after {
        let old = &before[id];
        for field in ["domain", "prompt", "chosen", "rejected"] {
            assert_eq!(record[field], old[field], "{id} {field}");
        }
        let helpful = if record["chosen"].as_str().unwrap().contains("GOOD") { 1 } else { -1 };
        let mut want = json!({"helpfulness": helpful, "style": 0});
        if let Some(toxicity) = old["aspects"].get("toxicity") {
            want["toxicity"] = toxicity.clone();
        }
        assert_eq!(record["aspects"], want, "{id}");
    }
}

#[test]
fn labels_come_from_both_orders_and_other_fields_stay() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = write_data(&dir.path().join("data"));
    let before = read_records(dir.path());
    let (judge, endpoint) = start(Judge::default());
    common::stdout_ok(label(&endpoint, dir.path(), None, &["--concurrency", "3"]));
    assert_labelled(dir.path(), &before);
    // Records keep their order.
    let alpha = std::fs::read_to_string(dir.path().join("data/alpha/train.jsonl")).unwrap();
    let ids: Vec<String> = alpha.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].to_string()).collect();
    assert_eq!(ids, (0..8).map(|i| format!("\"alpha/train/{i}\"")).collect::<Vec<_>>());

    let judge = judge.lock().unwrap();
    assert_eq!(judge.requests, pairs * 3 * 2);
    assert!(judge.authorization.iter().all(Option::is_none), "no key set, no header sent");
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("data/aspect-labels.json")).unwrap()).unwrap();
    assert_eq!(summary["model"], MODEL);
    let counts = |aspect: &str| summary["aspects"][aspect].clone();
    assert_eq!(
        counts("helpfulness"),
        json!({"pairs": 14, "chosen_better": 7, "rejected_better": 7, "tie": 0, "inconsistent": 0, "unanswered": 0,
            "agreement": 1.0})
    );
    assert_eq!(
        counts("position"),
        json!({"pairs": 14, "chosen_better": 0, "rejected_better": 0, "tie": 0, "inconsistent": 14, "unanswered": 0,
            "agreement": 0.0})
    );
    assert_eq!(counts("style")["tie"], 14);
    assert_eq!(summary["by_domain"]["beta"]["test"]["helpfulness"]["pairs"], 2);
}

#[test]
fn a_500_a_timeout_malformed_replies_and_a_429_are_retried() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = write_data(&dir.path().join("data"));
    let before = read_records(dir.path());
    let (judge, endpoint) = start(Judge { inject: true, ..Default::default() });
    let output = label(&endpoint, dir.path(), Some("sk-test"), &["--timeout-secs", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    common::stdout_ok(output);
    assert_labelled(dir.path(), &before);
    let judge = judge.lock().unwrap();
    assert_eq!(judge.failed.len(), 6, "every failure was injected");
    assert_eq!(judge.requests, pairs * 3 * 2 + 6, "one retry per failure");
    assert!(judge.answered.values().all(|&n| n == 1));
    assert!(judge.authorization.iter().all(|a| a.as_deref() == Some("Bearer sk-test")));
    for kind in ["HTTP 429", "HTTP 5xx/408", "timeout", "3 × malformed reply"] {
        assert!(stderr.contains(kind), "{kind}: {stderr}");
    }
}

#[test]
fn a_second_run_asks_nothing_and_an_interrupted_run_asks_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_data(&dir.path().join("data")) * 3 * 2;
    let before = read_records(dir.path());

    // The judge refuses everything after 20 answers: the run stops with the 401, keeping the 20.
    let (judge, endpoint) = start(Judge { refuse_after: Some(20), ..Default::default() });
    let args = ["--timeout-secs", "20"];
    let output = label(&endpoint, dir.path(), None, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("HTTP 401") && stderr.contains("the same command asks only"), "{stderr}");
    let log = std::fs::read_to_string(dir.path().join("data/alpha/aspect-answers.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 20);
    assert_eq!(read_records(dir.path()), before, "no split was complete, none was rewritten");

    judge.lock().unwrap().refuse_after = None;
    common::stdout_ok(label(&endpoint, dir.path(), None, &args));
    assert_labelled(dir.path(), &before);
    {
        let judge = judge.lock().unwrap();
        assert_eq!(judge.answered.len(), questions);
        assert!(judge.answered.values().all(|&n| n == 1), "no question answered twice");
        assert_eq!(judge.requests, questions + judge.refused);
    }

    // Everything answered: the same command asks nothing and changes no file.
    let files = common::files(dir.path());
    let requests = judge.lock().unwrap().requests;
    let output = label(&endpoint, dir.path(), None, &args);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    common::stdout_ok(output);
    assert_eq!(judge.lock().unwrap().requests, requests);
    assert_eq!(common::files(dir.path()), files);
    assert!(stderr.contains(&format!("{questions} answered before, 0 asked now")), "{stderr}");
}

#[test]
fn a_refused_key_stops_the_run_and_names_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    write_data(&dir.path().join("data"));
    let (judge, endpoint) = start(Judge { refuse_after: Some(0), ..Default::default() });
    let output = label(&endpoint, dir.path(), Some("sk-secret-123"), &["--concurrency", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("HTTP 401") && stderr.contains(&format!("${KEY_ENV} was refused")), "{stderr}");
    assert!(stderr.contains("Incorrect API key provided"), "the server's reason: {stderr}");
    assert!(!stderr.contains("sk-secret-123"), "the key is never printed");
    assert!(judge.lock().unwrap().refused <= 2, "the run stops at the first refusal");

    let output = label(&endpoint, dir.path(), None, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&format!("{KEY_ENV} is not set")), "{stderr}");
    assert!(!dir.path().join("data/aspect-labels.json").exists());
}

#[test]
fn a_question_the_server_refuses_is_left_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_data(&dir.path().join("data")) * 3 * 2;
    let before = read_records(dir.path());
    // Pairs 7 (alpha/train/7), 8 and 9 (alpha/test/0 and 1) are too long for the judge.
    let (judge, endpoint) = start(Judge { too_long: vec![7, 8, 9], ..Default::default() });
    let output = label(&endpoint, dir.path(), None, &["--concurrency", "2"]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    common::stdout_ok(output);
    assert!(stderr.contains("HTTP 400 (This model's maximum context length"), "{stderr}");
    assert!(stderr.contains("18 questions got no answer"), "{stderr}");
    assert_eq!(judge.lock().unwrap().requests, questions, "a refused question is not retried");
    let summary = summary(dir.path());
    assert_eq!(summary["aspects"]["helpfulness"]["unanswered"], 3);
    assert_eq!(summary["aspects"]["helpfulness"]["chosen_better"], 6);
    let unanswered = summary["unanswered"].as_array().unwrap();
    assert_eq!(unanswered.len(), 18);
    let first = unanswered.iter().find(|u| u["id"] == "alpha/train/7" && u["aspect"] == "style").unwrap();
    assert!(first["file"].as_str().unwrap().ends_with("alpha/train.jsonl"), "{first}");
    assert!(first["reason"].as_str().unwrap().contains("maximum context length is 4096"), "{first}");
    let records = read_records(dir.path());
    for id in ["alpha/train/7", "alpha/test/0", "alpha/test/1"] {
        assert_eq!(records[id]["aspects"], Value::Null, "{id}: unanswered, no label");
    }
    assert_eq!(records["alpha/train/6"]["aspects"], json!({"helpfulness": 1, "style": 0}));

    // A second run asks only the 18 again and still finishes, although every question it asks is refused.
    let output = label(&endpoint, dir.path(), None, &["--concurrency", "2"]);
    common::stdout_ok(output);
    assert_eq!(judge.lock().unwrap().requests, questions + 18);

    judge.lock().unwrap().too_long.clear();
    common::stdout_ok(label(&endpoint, dir.path(), None, &[]));
    assert_labelled(dir.path(), &before);
    assert_eq!(judge.lock().unwrap().requests, questions + 36);
}

#[test]
fn a_server_that_refuses_every_request_stops_the_run_with_its_reason_and_max_tokens_0_leaves_the_field_out() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_data(&dir.path().join("data")) * 3 * 2;
    let before = read_records(dir.path());
    let (judge, endpoint) = start(Judge { refuse_max_tokens: true, ..Default::default() });
    let output = label(&endpoint, dir.path(), None, &["--concurrency", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("were refused") && stderr.contains("Unsupported parameter: 'max_tokens'"), "{stderr}");
    assert!(stderr.contains("--max-tokens"), "{stderr}");
    {
        let judge = judge.lock().unwrap();
        assert!(judge.requests < questions, "the run stopped early: {}", judge.requests);
        assert!(judge.max_tokens.iter().all(|m| *m == json!(8)), "8 by default");
    }

    let output = label(&endpoint, dir.path(), None, &["--max-tokens", "0"]);
    common::stdout_ok(output);
    assert_labelled(dir.path(), &before);
    let judge = judge.lock().unwrap();
    assert!(judge.max_tokens.iter().rev().take(questions).all(Value::is_null));
}

#[test]
fn an_empty_reply_is_asked_once_more_then_left_unanswered() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_data(&dir.path().join("data")) * 3 * 2;
    let (judge, endpoint) = start(Judge { cut_off: vec![4], ..Default::default() });
    let started = Instant::now();
    let output = label(&endpoint, dir.path(), None, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    common::stdout_ok(output);
    assert_eq!(judge.lock().unwrap().requests, questions + 6, "each of pair 4's 6 questions asked twice");
    assert!(started.elapsed() < Duration::from_secs(10), "no back-off");
    assert!(stderr.contains("token limit") && stderr.contains("6 questions got no answer"), "{stderr}");
    assert_eq!(summary(dir.path())["aspects"]["style"]["unanswered"], 1);

    // A thinking model that never answers within the limit stops the run with a hint.
    let dir = tempfile::tempdir().unwrap();
    write_data(&dir.path().join("data"));
    let (judge, endpoint) = start(Judge { cut_off: (0..14).collect(), ..Default::default() });
    let output = label(&endpoint, dir.path(), None, &["--concurrency", "1"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no usable answer") && stderr.contains("--max-tokens"), "{stderr}");
    assert!(judge.lock().unwrap().requests < 2 * questions);
}

#[test]
fn labels_label_aspects_did_not_write_are_kept_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_data(&dir.path().join("data")) * 3 * 2;
    let before = read_records(dir.path());
    // Human labels on pairs 3 and 5 (lines 4 and 6 of alpha/train.jsonl), as `prepare` writes for OASST.
    set_aspects(dir.path(), "alpha/train.jsonl", 3, json!({"helpfulness": 1, "position": -1, "toxicity": 0}));
    set_aspects(dir.path(), "alpha/train.jsonl", 5, json!({"helpfulness": 1, "position": 1}));
    let human = common::files(&dir.path().join("data"));
    let (judge, endpoint) = start(Judge { too_long: vec![5], ..Default::default() });

    let output = label(&endpoint, dir.path(), None, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("alpha/train.jsonl:4: the pair already has a `helpfulness` label"), "{stderr}");
    assert!(stderr.contains("(and 3 more") && stderr.contains("`llm_helpfulness`"), "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(judge.lock().unwrap().requests, 0, "refused before asking anything");
    for (path, bytes) in &human {
        assert_eq!(&common::files(&dir.path().join("data"))[path], bytes, "{}", path.display());
    }

    // --overwrite replaces pair 3's labels (the judge says -1; position disagrees, so it goes); pair 5's
    // questions are refused, so its labels stay.
    common::stdout_ok(label(&endpoint, dir.path(), None, &["--overwrite"]));
    let records = read_records(dir.path());
    assert_eq!(records["alpha/train/3"]["aspects"], json!({"helpfulness": -1, "style": 0, "toxicity": 0}));
    assert_eq!(records["alpha/train/5"]["aspects"], json!({"helpfulness": 1, "position": 1}));

    // Pair 5's labels are still not label-aspects' own.
    let output = label(&endpoint, dir.path(), None, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("alpha/train.jsonl:6: the pair already has a `helpfulness` label"), "{stderr}");

    judge.lock().unwrap().too_long.clear();
    common::stdout_ok(label(&endpoint, dir.path(), None, &["--overwrite"]));
    assert_labelled(dir.path(), &before);

    // Every label is now label-aspects' own: no --overwrite needed, nothing asked, nothing changed.
    let files = common::files(dir.path());
    let requests = judge.lock().unwrap().requests;
    let output = label(&endpoint, dir.path(), None, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    common::stdout_ok(output);
    assert!(stderr.contains(&format!("{questions} answered before, 0 asked now")), "{stderr}");
    assert_eq!(judge.lock().unwrap().requests, requests);
    assert_eq!(common::files(dir.path()), files);
}

#[test]
fn a_429_pauses_every_worker() {
    let dir = tempfile::tempdir().unwrap();
    let questions = write_data(&dir.path().join("data")) * 3 * 2;
    let before = read_records(dir.path());
    let judge = Judge { throttle_once: true, delay: Duration::from_millis(40), ..Default::default() };
    let (judge, endpoint) = start(judge);
    common::stdout_ok(label(&endpoint, dir.path(), None, &["--concurrency", "4"]));
    assert_labelled(dir.path(), &before);
    let judge = judge.lock().unwrap();
    assert_eq!(judge.requests, questions + 1);
    let at = judge.throttled_at.unwrap();
    let during: Vec<Duration> = judge
        .arrivals
        .iter()
        .map(|t| t.saturating_duration_since(at))
        .filter(|d| (Duration::from_millis(300)..Duration::from_millis(900)).contains(d))
        .collect();
    assert!(during.is_empty(), "requests during the Retry-After second: {during:?}");
}
