//! `rmroute serve` on a free loopback port with tiny models: the rewards `score` gives, for 64 clients
//! at once; a 4xx with a JSON error for each bad input while the server keeps serving; a request in
//! flight still answered when SIGINT arrives; routed runs name each item's domain; OpenRLHF's client.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rmroute::methods::{load as load_scorer, ScoreOptions};
use rmroute::model::LoadOptions;

/// A server process and its address.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rmroute"))
            .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://").map(str::to_string) else {
            let mut err = String::new();
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("the server did not start: {line:?} {err}");
        };
        Server { child, addr }
    }

    /// `(status, body)` of a request; the connection closes after it.
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut stream = TcpStream::connect(&self.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).ok(); // a server refusing an over-long body may close early
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).ok();
        let reply = String::from_utf8_lossy(&reply).to_string();
        let status = reply.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }

    fn post(&self, path: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
        let (status, text) = self.request("POST", path, body.to_string().as_bytes());
        (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}")))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pairs(n: usize, seed: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let k = i + seed;
            let prompt = format!("w{} w{} w{}", 8 + k % 20, 9 + k % 17, 30 + k % 11);
            let response = (0..1 + k % 7).map(|j| format!("w{}", 5 + (k * 3 + j) % 50)).collect::<Vec<_>>().join(" ");
            (prompt, response)
        })
        .collect()
}

fn expected(model: &Path, pairs: &[(String, String)]) -> Vec<f32> {
    let scorer = load_scorer(model, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let refs: Vec<(&str, &str)> = pairs.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    scorer.score(&refs, 1).unwrap().rewards
}

fn close(got: &serde_json::Value, want: &[f32]) {
    let got: Vec<f64> = got.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - f64::from(*w)).abs() <= 1e-5, "{got:?} vs {want:?}");
    }
}

#[test]
fn rewards_equal_score_for_many_clients_and_bad_input_gets_a_4xx() {
    let model = tempfile::tempdir().unwrap();
    common::write_tiny_bert(model.path(), 4, true, true);
    let server = Server::start(model.path(), &["--max-batch", "16", "--max-wait-ms", "10", "--max-body-bytes", "4000"]);
    assert_eq!(server.request("GET", "/health", b"").0, 200);
    let (status, info) = server.request("GET", "/info", b"");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (status, info["max_length"].as_u64(), info["truncation"].as_str()),
        (200, Some(64), Some("longest_first"))
    );

    // /score and /get_reward give what `rmroute score` gives.
    let some = pairs(5, 0);
    let want = expected(model.path(), &some);
    let body = serde_json::json!({"pairs": some.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r})).collect::<Vec<_>>()});
    let (status, got) = server.post("/score", &body);
    assert_eq!(status, 200, "{got}");
    close(&got["rewards"], &want);
    assert!(got["domains"].is_null());
    let input = model.path().join("in.jsonl");
    let lines: String =
        some.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r}).to_string() + "\n").collect();
    std::fs::write(&input, lines).unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_rmroute"))
        .args(["score", "--model", model.path().to_str().unwrap(), "--input", input.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let cli: Vec<f32> = String::from_utf8_lossy(&cli.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reward"].as_f64().unwrap() as f32)
        .collect();
    close(&got["rewards"], &cli);
    let queries: Vec<String> = some.iter().map(|(p, r)| format!("{p}{r}")).collect();
    let prompts: Vec<&String> = some.iter().map(|(p, _)| p).collect();
    let (status, got) =
        server.post("/get_reward", &serde_json::json!({"query": queries, "prompts": prompts, "labels": vec!["x"; 5]}));
    assert_eq!(status, 200, "{got}");
    close(&got["rewards"], &want);
    close(&got["scores"], &want);
    // Without prompts, a query splits before its final Assistant turn, as `prepare` splits HH-RLHF.
    let (status, got) =
        server.post("/get_reward", &serde_json::json!({"query": ["\n\nHuman: w9 w10\n\nAssistant: w5 w6"]}));
    assert_eq!(status, 200, "{got}");
    close(&got["rewards"], &expected(model.path(), &[("\n\nHuman: w9 w10\n\nAssistant:".into(), "w5 w6".into())]));

    // 64 clients at once, each with its own pairs: every one gets its own rewards.
    let all: Vec<Vec<(String, String)>> = (0..64).map(|c| pairs(1 + c % 5, 7 * c)).collect();
    let wants: Vec<Vec<f32>> = all.iter().map(|p| expected(model.path(), p)).collect();
    std::thread::scope(|scope| {
        for (mine, want) in all.iter().zip(&wants) {
            let server = &server;
            scope.spawn(move || {
                let body = serde_json::json!({"pairs": mine.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r})).collect::<Vec<_>>()});
                let (status, got) = server.post("/score", &body);
                assert_eq!(status, 200, "{got}");
                close(&got["rewards"], want);
            });
        }
    });

    // Each bad input gets its 4xx with a JSON error that says what is wrong; the server keeps serving.
    let bad: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/score", b"{not json".to_vec(), 400, "malformed"),
        ("/score", br#"{"pairs": "w5"}"#.to_vec(), 400, "pairs"),
        ("/score", br#"{"pairs": []}"#.to_vec(), 400, "empty"),
        ("/score", br#"{"pairs": [{"prompt": "w5", "respons": "w6"}]}"#.to_vec(), 400, "respons"),
        ("/score", br#"{"pairs": [{"prompt": "w5", "response": 7}]}"#.to_vec(), 400, "response"),
        ("/get_reward", br#"{"query": []}"#.to_vec(), 400, "empty"),
        ("/get_reward", br#"{"query": ["w5 w6"], "prompts": ["w5", "w6"]}"#.to_vec(), 400, "prompts"),
        ("/get_reward", br#"{"query": ["w5 w6", "w7 w8"], "prompts": ["w5", "w9"]}"#.to_vec(), 400, "query 1"),
        ("/get_reward", br#"{"query": ["w5 w6"]}"#.to_vec(), 400, "Assistant"),
        ("/get_reward", br#"{"prompts": ["w5"]}"#.to_vec(), 400, "query"),
        ("/get_reward", br#"{"query": "w5 w6", "prompts": ["w5"]}"#.to_vec(), 400, "query"),
        ("/get_reward", vec![0xff, 0xfe], 400, "UTF-8"),
        ("/nowhere", b"{}".to_vec(), 404, "no such endpoint"),
        (
            "/score",
            format!(r#"{{"pairs": [{{"prompt": "{}", "response": "w5"}}]}}"#, "w9 ".repeat(2000)).into_bytes(),
            413,
            "too large",
        ),
    ];
    let (status, text) = server.request("GET", "/score", b"");
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("POST /get_reward"), "{text}");
    for (path, body, status, says) in bad {
        let (got, text) = server.request("POST", path, &body);
        assert_eq!(got, status, "{path} {}: {text}", String::from_utf8_lossy(&body[..body.len().min(80)]));
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let message = error["error"].as_str().unwrap();
        assert!(message.contains(says), "{path}: {message}");
        let (ok, got) = server.post("/score", &body_of(&some[..1]));
        assert_eq!(ok, 200, "the next good request after {path}: {got}");
    }
}

/// RoBERTa and GPT-2 (a decoder: the reward at the last real token) served to 16 clients at once, whose
/// pairs the server batches with padding: each gets the reward its pairs have alone.
#[test]
fn roberta_and_gpt2_are_served_with_the_rewards_each_pair_has_alone() {
    for family in ["roberta", "gpt2"] {
        let model = common::repo_fixture(&format!("tiny-{family}-rm"));
        let server = Server::start(&model, &["--max-batch", "16", "--max-wait-ms", "20"]);
        let all: Vec<Vec<(String, String)>> = (0..16).map(|c| pairs(1 + c % 5, 3 * c)).collect();
        let wants: Vec<Vec<f32>> = all.iter().map(|p| expected(&model, p)).collect();
        std::thread::scope(|scope| {
            for (mine, want) in all.iter().zip(&wants) {
                let server = &server;
                scope.spawn(move || {
                    let (status, got) = server.post("/score", &body_of(mine));
                    assert_eq!(status, 200, "{family}: {got}");
                    close(&got["rewards"], want);
                });
            }
        });
    }
}

fn body_of(pairs: &[(String, String)]) -> serde_json::Value {
    serde_json::json!({"pairs": pairs.iter().map(|(p, r)| serde_json::json!({"prompt": p, "response": r})).collect::<Vec<_>>()})
}

#[test]
fn a_request_in_flight_is_answered_when_the_server_is_told_to_stop() {
    let model = tempfile::tempdir().unwrap();
    common::write_tiny_bert(model.path(), 4, true, true);
    // A long batching wait (5 s) holds the request in the server when the signal comes (after 1 s).
    let mut server = Server::start(model.path(), &["--max-batch", "64", "--max-wait-ms", "5000"]);
    let some = pairs(3, 1);
    let want = expected(model.path(), &some);
    std::thread::scope(|scope| {
        let server_ref = &server;
        let request = scope.spawn(move || server_ref.post("/score", &body_of(&some)));
        std::thread::sleep(Duration::from_millis(1000));
        let pid = server.child.id().to_string();
        assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
        let (status, got) = request.join().unwrap();
        assert_eq!(status, 200, "{got}");
        close(&got["rewards"], &want);
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().unwrap() {
            break exit;
        }
        assert!(std::time::Instant::now() < deadline, "the server did not stop after its last request");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_routed_run_names_each_items_domain_and_openrlhfs_client_reads_the_rewards() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    common::write_domain(data.path(), "code", 8, ("w5", "w6"), 32, 8, 1);
    common::write_domain(data.path(), "math", 21, ("w6", "w5"), 32, 8, 2);
    let run = out.path().join("run");
    let lora = rmroute::nn::lora::LoraConfig {
        rank: 4,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: rmroute::nn::lora::TargetModules::names(&["query", "value", "dense"]),
    };
    let cfg = rmroute::methods::config::TrainConfig {
        method: rmroute::methods::config::Method::Arliss,
        backbone: base.path().display().to_string(),
        data: data.path().to_path_buf(),
        out: run.clone(),
        epochs: 2,
        batch_size: 16,
        lr: 5e-3,
        max_length: 32,
        lora: Some(lora),
        arliss: Some(Default::default()),
        ..Default::default()
    };
    let quiet = rmroute::train::stage::RunOptions { quiet: true, ..Default::default() };
    rmroute::methods::train(&cfg, candle_core::Device::Cpu, &quiet, None).unwrap();
    let server = Server::start(&run, &[]);
    let (status, info) = server.request("GET", "/info", b"");
    assert_eq!(status, 200);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        (info["method"].as_str(), info["domains"].clone()),
        (Some("arliss"), serde_json::json!(["code", "math"]))
    );

    let test = rmroute::results::eval::test_pairs(data.path(), "math", Some(3), 0).unwrap();
    let some: Vec<(String, String)> = test.iter().map(|p| (p.prompt.clone(), p.chosen.clone())).collect();
    let scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    let refs: Vec<(&str, &str)> = some.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
    let offline = scorer.score(&refs, 8).unwrap();
    let (status, got) = server.post("/score", &body_of(&some));
    assert_eq!(status, 200, "{got}");
    close(&got["rewards"], &offline.rewards);
    let domains = serde_json::json!(offline.domains.unwrap());
    assert_eq!(got["domains"], domains);
    // /get_reward: OpenRLHF concatenates `extra_logs` values as tensors, so the domain names go beside.
    let queries: Vec<String> = some.iter().map(|(p, r)| format!("{p}{r}")).collect();
    let prompts: Vec<&String> = some.iter().map(|(p, _)| p).collect();
    let (status, got) =
        server.post("/get_reward", &serde_json::json!({"query": queries, "prompts": prompts, "labels": null}));
    assert_eq!(status, 200, "{got}");
    close(&got["rewards"], &offline.rewards);
    assert_eq!(got["domains"], domains);
    for (key, values) in got["extra_logs"].as_object().unwrap() {
        assert!(values.as_array().unwrap().iter().all(|v| v.is_number()), "extra_logs.{key}: {values}");
    }

    // OpenRLHF's remote_rm_fn, as scripts/openrlhf_client.py writes it, when Python is here.
    if Command::new("python3").arg("--version").output().is_ok_and(|o| o.status.success()) {
        let spec = out.path().join("queries.json");
        std::fs::write(&spec, serde_json::json!({"query": queries, "prompts": prompts}).to_string()).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openrlhf_client.py");
        let url = format!("http://{}/get_reward", server.addr);
        let run = Command::new("python3").arg(script).args([url.as_str(), spec.to_str().unwrap()]).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let reply: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
        close(&reply["rewards"], &offline.rewards);
    }
}

#[test]
fn hostile_bodies_from_the_fuzzer_get_a_4xx_naming_the_problem_and_the_server_keeps_serving() {
    let model = tempfile::tempdir().unwrap();
    common::write_tiny_bert(model.path(), 4, true, true);
    let server = Server::start(model.path(), &[]);
    let deep = format!("{{\"pairs\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: [(&str, Vec<u8>, &str); 5] = [
        ("/score", deep.into_bytes(), "malformed request"),
        ("/score", b"{\"pairs\": [{\"prompt\": \"a\xff\", \"response\": \"b\"}]}".to_vec(), "not UTF-8"),
        ("/score", b"{\"pairs\": [{\"prompt\": \"a\x00\", \"response\": \"b\"}]}".to_vec(), "malformed request"),
        ("/get_reward", b"{\"query\": [null]}".to_vec(), "query"),
        ("/score", b"{\"pairs\": [{\"prompt\": \"a\", \"response\": \"b\"}], \"pairs\": 1}".to_vec(), "pairs"),
    ];
    for (path, body, names) in cases {
        let (status, text) = server.request("POST", path, &body);
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status} {text:?}: {e}"));
        let message = error["error"].as_str().unwrap_or_default();
        assert!(status == 400 && message.contains(names), "{path} {status}: {message}");
    }
    let (status, got) = server.post("/score", &body_of(&pairs(2, 0)));
    assert_eq!((status, got["rewards"].as_array().map(Vec::len)), (200, Some(2)), "{got}");
}
