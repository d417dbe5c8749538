//! `rmroute label-aspects` against a fake OpenAI-compatible judge on a loopback port: labels from both
//! response orders, a position-biased point discarded, transient failures survived, resumption that
//! never asks a question twice, and a refused key that stops the run with a hint.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

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

    let inject = {
        let mut judge = state.lock().unwrap();
        judge.requests += 1;
        judge.authorization.push(headers.get("authorization").map(|v| v.to_str().unwrap().to_string()));
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
        inject
    };
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
/// chosen response holds GOOD for even N, the rejected one for odd N. Some records carry aspects already.
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
                    3 => record["aspects"] = json!({"helpfulness": 1, "position": -1, "toxicity": 0}),
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

/// Every record has helpfulness ±1 by its marker and style 0; position is gone; toxicity stays.
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
