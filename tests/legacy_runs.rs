//! Run directories written by an earlier release (rmroute 0.1.0, before the layers issue; made by
//! `scripts/make_legacy_runs.sh`) still load and score with the rewards that release gave, a finished
//! RODOS or ARLISS run still takes a new domain, and an unfinished run of that release (finished stages,
//! a checkpoint mid-training) resumes to the rewards that release gave it, or is refused when its
//! settings changed.

mod common;

use std::path::{Path, PathBuf};

use common::{rmroute, stdout_ok};

const METHODS: [&str; 6] = ["baseline", "baselora", "more", "rodos", "arliss", "dmoerm"];
const DOMAINS: [&str; 3] = ["alpha", "beta", "gamma"];

/// The fixture, as the paths its runs record it (relative to the repository, where tests run).
fn fixture() -> &'static str {
    "tests/fixtures/legacy-runs"
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// `score` outputs with the same records (ids, routed domains) and rewards equal up to the last bits
/// that a CPU's kernels round differently: the fixture's rewards were written by a release build on one
/// machine, and gemm and the fused ops pick AVX-512 or AVX2 kernels at run time (scripts/identity.sh
/// checks two binaries bit for bit on one machine). `tolerance` is relative to rewards above 1.
fn assert_same_rewards(got: &str, expected: &str, tolerance: f64, what: &str) {
    let lines = |text: &str| -> Vec<serde_json::Value> {
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    };
    let (got, expected) = (lines(got), lines(expected));
    assert_eq!(got.len(), expected.len(), "{what}: other records");
    for (g, e) in got.iter().zip(&expected) {
        let (g, e) = (g.as_object().unwrap(), e.as_object().unwrap());
        assert_eq!(g.keys().collect::<Vec<_>>(), e.keys().collect::<Vec<_>>(), "{what}: {g:?} against {e:?}");
        for (key, value) in e {
            match (value.as_f64(), g[key].as_f64()) {
                (Some(want), Some(have)) => {
                    assert!(
                        (want - have).abs() <= tolerance * want.abs().max(1.0),
                        "{what}: {key} {have} against {want}"
                    )
                }
                _ => assert_eq!(&g[key], value, "{what}: {key}"),
            }
        }
    }
}

#[test]
fn every_method_scores_as_the_release_that_trained_it() {
    let out = tempfile::tempdir().unwrap();
    for method in METHODS {
        for domain in DOMAINS {
            let run = format!("{}/runs/{method}", fixture());
            let input = format!("{}/data/{domain}/test.jsonl", fixture());
            let scores = out.path().join(format!("{method}-{domain}.jsonl"));
            let scores_arg = scores.display().to_string();
            stdout_ok(rmroute(&["score", "--model", &run, "--input", &input, "--out", &scores_arg, "--quiet"]));
            let expected = std::fs::read_to_string(format!("{}/expected/{method}-{domain}.jsonl", fixture())).unwrap();
            let got = std::fs::read_to_string(&scores).unwrap();
            assert!(!expected.is_empty());
            assert_same_rewards(
                &got,
                &expected,
                1e-5,
                &format!("{method} on {domain}: rewards differ from the release's"),
            );
        }
    }
    // eval reads them too (a routed run: routed and oracle accuracy, the router's matrix).
    let results = out.path().join("results.json");
    let eval = rmroute(&[
        "eval",
        "--model",
        &format!("{}/runs/dmoerm", fixture()),
        "--data",
        &format!("{}/data", fixture()),
        "--out",
        &results.display().to_string(),
    ]);
    stdout_ok(eval);
    let results: serde_json::Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    assert_eq!(results["method"], "dmoerm");
    assert!(results["tasks"]["alpha"]["aggregator"]["accuracy"].is_number());
}

/// A copy of a legacy run and its data with a fourth domain beside the three it was trained on.
fn extendable(method: &str, root: &Path) -> (PathBuf, PathBuf) {
    let (run, data) = (root.join("run"), root.join("data"));
    copy_dir(&Path::new(fixture()).join("runs").join(method), &run);
    copy_dir(&Path::new(fixture()).join("data"), &data);
    copy_dir(&data.join("gamma"), &data.join("delta"));
    for split in ["train", "test"] {
        let path = data.join("delta").join(format!("{split}.jsonl"));
        let text = std::fs::read_to_string(&path).unwrap().replace("gamma", "delta");
        std::fs::write(&path, text).unwrap();
    }
    (run, data)
}

#[test]
fn a_finished_routed_run_of_the_release_takes_a_new_domain() {
    for method in ["rodos", "arliss"] {
        let root = tempfile::tempdir().unwrap();
        let (run, data) = extendable(method, root.path());
        let before = common::files(&run.join("stages/rm-alpha"));
        let config = format!("{}/configs/{method}.json", fixture());
        let (run_arg, data_arg) = (run.display().to_string(), data.display().to_string());
        let command = format!("train-{method}");
        stdout_ok(rmroute(&[
            &command,
            "--config",
            &config,
            "--out",
            &run_arg,
            "--data",
            &data_arg,
            "--add-domain",
            "delta",
            "--quiet",
        ]));
        assert_eq!(common::files(&run.join("stages/rm-alpha")), before, "{method}: an old part was touched");
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("rmroute.json")).unwrap()).unwrap();
        assert_eq!(meta["domains"], serde_json::json!(["alpha", "beta", "gamma", "delta"]));
        assert!(run.join("stages/router-4").is_dir() && !run.join("stages/router").exists());
        let input = data.join("delta/test.jsonl").display().to_string();
        let scored = stdout_ok(rmroute(&["score", "--model", &run_arg, "--input", &input, "--quiet"]));
        assert_eq!(scored.lines().count(), 16, "{method}");
    }
}

/// A copy of one of the release's unfinished runs.
fn unfinished(method: &str, root: &Path) -> PathBuf {
    let run = root.join(method);
    copy_dir(&Path::new(fixture()).join("unfinished").join(method), &run);
    run
}

#[test]
fn an_unfinished_run_of_the_release_resumes_as_the_release_resumed_it() {
    // RODOS: its reward models finished (stage records of 0.1.0), its router to train. Baseline: killed
    // mid-training, a checkpoint of 0.1.0 to continue from.
    // Routers read the end of a long prompt since 0.2.0: the release's own router asks for its start.
    for (method, config) in [("rodos", "rodos"), ("baseline", "baseline-long")] {
        let root = tempfile::tempdir().unwrap();
        let run = unfinished(method, root.path());
        let run_arg = run.display().to_string();
        let mut settings: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format!("{}/configs/{config}.json", fixture())).unwrap()).unwrap();
        if method == "rodos" {
            settings["rodos"]["router"]["truncation"] = "keep_start".into();
        }
        let config = root.path().join("config.json").display().to_string();
        std::fs::write(&config, serde_json::to_vec(&settings).unwrap()).unwrap();
        let command = format!("train-{method}");
        stdout_ok(rmroute(&[&command, "--config", &config, "--out", &run_arg, "--resume", "--quiet"]));
        for domain in DOMAINS {
            let input = format!("{}/data/{domain}/test.jsonl", fixture());
            let got = stdout_ok(rmroute(&["score", "--model", &run_arg, "--input", &input, "--quiet"]));
            let expected =
                std::fs::read_to_string(format!("{}/expected/resumed-{method}-{domain}.jsonl", fixture())).unwrap();
            // Training steps carry the kernels' rounding on (rewards near 5 agree to about 2e-4 between an
            // AVX-512 and another machine); a resume that redid, skipped or re-drew steps moves them far more.
            let what = format!("{method} on {domain}: resumed to other rewards than the release's");
            assert_same_rewards(&got, &expected, 1e-3, &what);
        }
    }
}

#[test]
fn an_unfinished_run_of_the_release_with_other_settings_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let run = unfinished("rodos", root.path());
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}/configs/rodos.json", fixture())).unwrap()).unwrap();
    config["lr"] = 1e-3.into();
    let changed = root.path().join("changed.json");
    std::fs::write(&changed, serde_json::to_vec(&config).unwrap()).unwrap();
    let (run_arg, config_arg) = (run.display().to_string(), changed.display().to_string());
    let resumed = rmroute(&["train-rodos", "--config", &config_arg, "--out", &run_arg, "--resume", "--quiet"]);
    assert!(!resumed.status.success());
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(err.contains("rm-alpha") && err.contains("other settings") && err.contains("--force"), "{err}");
    assert!(err.contains("lr`: 0.005 there, 0.001 now"), "the setting that differs is named: {err}");
}

/// rmroute 0.1.0 cut every input at 512 tokens whatever `max_length` said; its runs read as trained so.
#[test]
fn a_run_of_the_release_reads_its_max_length_as_it_was_cut() {
    use rmroute::methods::manifest::RunMeta;
    let root = tempfile::tempdir().unwrap();
    let run = root.path().join("run");
    copy_dir(&Path::new(fixture()).join("runs/baseline"), &run);
    let path = run.join("rmroute.json");
    let mut raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    raw["config"]["max_length"] = 1024.into();
    for (version, read) in [("0.1.0", 512), ("0.2.0", 1024)] {
        raw["rmroute_version"] = version.into();
        std::fs::write(&path, serde_json::to_vec(&raw).unwrap()).unwrap();
        assert_eq!(RunMeta::read(&run).unwrap().config.max_length, read, "{version}");
    }
}

/// A routed run's manifest written by the release has no `truncation` in its router's settings: its
/// router read a long prompt's start (the end `longest_first` implied then), and still does; a manifest
/// of this release with the setting unset means the new default, the end.
#[test]
fn a_router_of_the_release_reads_prompts_as_it_did() {
    use rmroute::backbone::PromptTruncation;
    use rmroute::methods::manifest::RunMeta;
    for method in ["rodos", "arliss", "dmoerm"] {
        let root = tempfile::tempdir().unwrap();
        let run = root.path().join("run");
        copy_dir(&Path::new(fixture()).join("runs").join(method), &run);
        let meta = RunMeta::read(&run).unwrap();
        assert_eq!(meta.config.router().unwrap().prompt_truncation(), PromptTruncation::KeepStart, "{method}");
        let path = run.join("rmroute.json");
        let mut raw: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(raw["config"][method]["router"].is_object(), "{method}");
        raw["config"][method]["router"]["truncation"] = serde_json::Value::Null;
        std::fs::write(&path, serde_json::to_vec(&raw).unwrap()).unwrap();
        let meta = RunMeta::read(&run).unwrap();
        assert_eq!(meta.config.router().unwrap().prompt_truncation(), PromptTruncation::KeepEnd, "{method}");
    }
}
