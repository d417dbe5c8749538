//! `report` on hand-made results: the expected mean ± std, parameter shares and CSV.

use std::collections::BTreeMap;

use rmroute::results::eval::{DomainResult, ExpertResult, Results, TaskResults};
use rmroute::results::plot::{accuracy_figure, curves_figure};
use rmroute::results::report::{mean_std, read_results, tables, tasks_markdown, write_csv};

fn results(method: &str, backbone: &str, seed: u64, hh: f64, oasst: f64, params: usize) -> Results {
    let mut domains = BTreeMap::new();
    domains.insert("anthropic".to_string(), DomainResult { pairs: 100, accuracy: hh });
    domains.insert("oasst".to_string(), DomainResult { pairs: 50, accuracy: oasst });
    Results {
        method: method.into(),
        backbone: backbone.into(),
        seed,
        domains,
        mean_accuracy: (hh + oasst) / 2.0,
        total_parameters: params,
        trainable_parameters: params / 10,
        seconds_per_step: 0.02 * seed as f64,
        pairs_per_second: 100.0,
        epoch_seconds: vec![10.0, 12.0],
        oracle: None,
        oracle_mean_accuracy: None,
        router: None,
        experts: None,
        parts: vec![],
        switching: None,
        precision: Default::default(),
        memory: None,
        tasks: None,
    }
}

/// A table never mixes f32 and bf16 results.
#[test]
fn results_scored_in_different_formats_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut bf16 = results("baseline", "minilm", 2, 0.6, 0.7, 1);
    bf16.precision = rmroute::nn::bf16::Precision::Bf16;
    let mut paths = vec![];
    for (i, r) in [results("baseline", "minilm", 1, 0.6, 0.7, 1), bf16].iter().enumerate() {
        let path = dir.path().join(format!("results{i}.json"));
        std::fs::write(&path, serde_json::to_vec(r).unwrap()).unwrap();
        paths.push(path);
    }
    let err = read_results(&paths).unwrap_err().to_string();
    assert!(err.contains("f32") && err.contains("bf16") && err.contains("--dtype"), "{err}");
    assert_eq!(read_results(&paths[..1]).unwrap().len(), 1);
}

#[test]
fn mean_and_sample_std() {
    let (m, s) = mean_std(&[0.60, 0.62, 0.64]);
    assert!((m - 0.62).abs() < 1e-12 && (s - 0.02).abs() < 1e-12, "{m} {s}");
    assert_eq!(mean_std(&[0.5]), (0.5, 0.0));
}

#[test]
fn tables_group_runs_by_method_and_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        results("baseline", "deberta-v3-large", 1, 0.60, 0.70, 435_000_000),
        results("baseline", "deberta-v3-large", 2, 0.62, 0.72, 435_000_000),
        results("baseline", "deberta-v3-large", 3, 0.64, 0.74, 435_000_000),
        results("baselora", "deberta-v3-base", 1, 0.50, 0.80, 207_000_000),
    ];
    let mut paths = vec![];
    for (i, r) in runs.iter().enumerate() {
        let run = dir.path().join(format!("run{i}"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::write(run.join("results.json"), serde_json::to_vec(r).unwrap()).unwrap();
        paths.push(run);
    }
    let t = tables(&read_results(&paths).unwrap());
    let md = &t.markdown;
    assert!(
        md.contains("| baseline | deberta-v3-large | 3 | 0.6200 ± 0.0200 | 0.7200 ± 0.0200 | 0.6700 ± 0.0200 |"),
        "{md}"
    );
    assert!(
        md.contains("| baselora | deberta-v3-base | 1 | 0.5000 ± 0.0000 | 0.8000 ± 0.0000 | 0.6500 ± 0.0000 |"),
        "{md}"
    );
    assert!(md.contains("| baselora | deberta-v3-base | 207.0 (47.6%) | 20.70 | 11 ± 1 |"), "{md}");
    assert!(md.contains("| baseline | deberta-v3-large | 0.0400 | 100.0 |"), "{md}");
    let written = write_csv(&t, dir.path()).unwrap();
    assert_eq!(written.len(), 3);
    let csv = std::fs::read_to_string(dir.path().join("table2.csv")).unwrap();
    assert!(csv.lines().nth(1).unwrap().starts_with("baseline,deberta-v3-large,3,0.620000,0.020000"), "{csv}");
}

#[test]
fn plots_are_svg_with_one_bar_per_method_and_domain_and_one_curve_per_run() {
    let dir = tempfile::tempdir().unwrap();
    let runs = [
        results("baseline", "minilm", 1, 0.60, 0.70, 22_000_000),
        results("baseline", "minilm", 2, 0.62, 0.72, 22_000_000),
        results("baselora", "minilm", 1, 0.55, 0.65, 22_000_000),
    ];
    let accuracy = dir.path().join("accuracy.svg");
    accuracy_figure(&runs, &accuracy).unwrap();
    let svg = std::fs::read_to_string(&accuracy).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("anthropic") && svg.contains("baselora (minilm)"));
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let metrics: String = (1..=5)
        .map(|s| {
            format!(
                "{{\"step\":{s},\"epoch\":1,\"loss\":{},\"accuracy\":0.6,\"lr\":1e-5,\"pairs_per_s\":3.0}}\n",
                0.7 - 0.05 * s as f64
            )
        })
        .collect();
    std::fs::write(run.join("metrics.jsonl"), metrics).unwrap();
    let curves = dir.path().join("curves.svg");
    curves_figure(&[("baseline seed 1".to_string(), run.as_path())], &curves).unwrap();
    let svg = std::fs::read_to_string(&curves).unwrap();
    assert!(svg.contains("Training loss") && svg.contains("baseline seed 1") && svg.contains("<polyline"), "{svg}");
}

#[test]
fn dmoerm_tasks_say_which_are_single_experts_and_why() {
    let r = |accuracy: f64| DomainResult { pairs: 10, accuracy };
    let mut tasks = BTreeMap::new();
    let experts: BTreeMap<String, ExpertResult> =
        [("helpfulness".to_string(), ExpertResult { point: Some(r(0.9)), overall: r(0.6) })].into();
    let few: BTreeMap<String, usize> = [("humor".to_string(), 3)].into();
    tasks.insert(
        "oasst".to_string(),
        TaskResults {
            single_expert: false,
            phase1: r(0.7),
            experts,
            aggregator: Some(r(0.8)),
            without_expert: few.clone(),
        },
    );
    let none = BTreeMap::new();
    tasks.insert(
        "plain".to_string(),
        TaskResults {
            single_expert: true,
            phase1: r(0.5),
            experts: none.clone(),
            aggregator: None,
            without_expert: BTreeMap::new(),
        },
    );
    tasks.insert(
        "sparse".to_string(),
        TaskResults { single_expert: true, phase1: r(0.5), experts: none, aggregator: None, without_expert: few },
    );
    let md = tasks_markdown(&tasks);
    assert!(md.contains("| oasst | expert `helpfulness` | 0.9000 (10) | 0.6000 |"), "{md}");
    assert!(md.contains("| oasst | no expert (too few labelled pairs): humor 3 |"), "{md}");
    assert!(md.contains("| oasst | aggregator over 1 experts | - | 0.8000 |"), "{md}");
    assert!(md.contains("| plain | reward model (single expert: no aspect labels) |"), "{md}");
    assert!(
        md.contains("| sparse | reward model (single expert: too few labelled pairs for an expert: humor 3) |"),
        "{md}"
    );
}

/// Writes each run's results.json into its own folder under `dir`; their paths.
fn write_runs(dir: &std::path::Path, runs: &[Results]) -> Vec<String> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| {
            let run = dir.join(format!("run{i}"));
            std::fs::create_dir_all(&run).unwrap();
            std::fs::write(run.join("results.json"), serde_json::to_vec(r).unwrap()).unwrap();
            run.display().to_string()
        })
        .collect()
}

#[test]
fn compare_passes_an_equal_table_names_a_moved_cell_and_refuses_a_missing_method() {
    use rmroute::results::compare::{compare, expected_table};
    let runs = [
        results("baseline", "minilm", 1, 0.60, 0.70, 22_000_000),
        results("baseline", "minilm", 2, 0.64, 0.72, 22_000_000),
        results("rodos", "minilm", 1, 0.61, 0.69, 90_000_000),
        results("rodos", "minilm", 2, 0.63, 0.71, 90_000_000),
    ];
    let expected = expected_table(&runs, 3.0, "test");
    // 3 groups of cells per method (anthropic, oasst, average).
    assert_eq!(expected.cells.len(), 6);
    let anthropic = expected.cells.iter().find(|c| c.method == "baseline" && c.domain == "anthropic").unwrap();
    assert!((anthropic.mean - 0.62).abs() < 1e-12 && anthropic.seeds == 2 && anthropic.pairs == 100);
    // The tolerance is the seeds' spread (0.028) or the sampling error on 100 pairs (0.049), the larger.
    assert!((anthropic.tolerance() - (0.62f64 * 0.38 / 100.0).sqrt()).abs() < 1e-12);

    let same = compare(&runs, &expected).unwrap();
    assert!(same.failed.is_empty() && same.passed.len() == 6, "{:?}", same.failed);

    // Baseline's anthropic accuracy falls from 0.62 to 0.40: more than 3 × 0.0485 away.
    let mut moved = runs.clone();
    moved[0] = results("baseline", "minilm", 1, 0.38, 0.70, 22_000_000);
    moved[1] = results("baseline", "minilm", 2, 0.42, 0.72, 22_000_000);
    let result = compare(&moved, &expected).unwrap();
    // The average (0.555 against 0.665) stays within 3 × 0.0402, its sampling error
    // √(0.62·0.38/100 + 0.71·0.29/50)/2, which the 50 OASST pairs dominate.
    let average = expected.cells.iter().find(|c| c.method == "baseline" && c.domain == "average").unwrap();
    let want = (0.62f64 * 0.38 / 100.0 + 0.71 * 0.29 / 50.0).sqrt() / 2.0;
    assert!((average.tolerance() - want).abs() < 1e-12, "{} vs {want}", average.tolerance());
    assert_eq!(result.failed.len(), 1, "{:?}", result.failed);
    assert!(result.failed[0].starts_with("baseline (minilm), anthropic: 0.4000 against 0.6200"), "{:?}", result.failed);

    // A method the expected table lacks is listed as unchecked, not failed and not silently passed.
    let baseline_only = expected_table(&runs[..2], 3.0, "test");
    let extra = compare(&runs, &baseline_only).unwrap();
    assert!(extra.failed.is_empty() && extra.passed.len() == 3, "{:?}", extra.failed);
    assert_eq!(extra.unchecked.len(), 3, "{:?}", extra.unchecked);
    assert!(extra.unchecked.iter().all(|l| l.starts_with("rodos (minilm)")), "{:?}", extra.unchecked);

    // Runs scored on another test set (other pair counts) are refused, not judged by these tolerances.
    let mut fewer = runs.clone();
    fewer[0].domains.get_mut("anthropic").unwrap().pairs = 60;
    let err = compare(&fewer, &expected).unwrap_err().to_string();
    assert!(err.contains("60 test pairs") && err.contains("not the same test set"), "{err}");
    let empty = rmroute::results::compare::ExpectedTable { about: String::new(), k: 3.0, cells: vec![] };
    assert!(compare(&runs, &empty).unwrap_err().to_string().contains("no cells"));

    let err = compare(&runs[..2], &expected).unwrap_err().to_string();
    assert!(err.contains("rodos (minilm) anthropic") && err.contains("refresh the expected table"), "{err}");

    // The same through the command line: the exit status says it, and the message names the cell.
    let dir = tempfile::tempdir().unwrap();
    let expected_path = dir.path().join("expected.json");
    let saved = write_runs(&dir.path().join("saved"), &runs);
    let mut args: Vec<&str> = vec!["report"];
    args.extend(saved.iter().map(String::as_str));
    let out = dir.path().display().to_string();
    let expected_arg = expected_path.display().to_string();
    args.extend(["--out", &out, "--save-expected", &expected_arg]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rmroute")).args(&args).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let moved_runs = write_runs(&dir.path().join("moved"), &moved);
    let mut args: Vec<&str> = vec!["report"];
    args.extend(moved_runs.iter().map(String::as_str));
    args.extend(["--out", &out, "--compare", &expected_arg]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_rmroute")).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("1 of 6 figures moved"), "{stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("MOVED baseline (minilm), anthropic: 0.4000"));
}
