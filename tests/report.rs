//! `report` on hand-made results: the expected mean ± std, parameter shares and CSV.

use std::collections::BTreeMap;

use rmroute::eval::{DomainResult, Results};
use rmroute::report::{mean_std, read_results, tables, write_csv};

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
    }
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
