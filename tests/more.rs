//! MoRE: the sparse MoE head against a dense computation written out (every expert on every row,
//! gates as an explicit softmax over the top k), the balance loss against its formula, seeded noise,
//! finite-difference gradients, and training on a task whose answer is known.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmroute::heads::moe::{MoeHead, MoreConfig};
use rmroute::methods::config::{Method, TrainConfig};
use rmroute::methods::more::MoreModel;
use rmroute::methods::{load as load_scorer, ScoreOptions};
use rmroute::model::LoadOptions;
use rmroute::nn::params::ParamStore;
use rmroute::nn::Ctx;
use rmroute::results::eval::{accuracy_by_domain, domain_test_sets};
use rmroute::train::stage::RunOptions;

fn train_more(cfg: &TrainConfig, device: candle_core::Device, opts: &RunOptions) -> anyhow::Result<std::path::PathBuf> {
    rmroute::methods::train(cfg, device, opts, None)
}

const H: usize = 6;
const E: usize = 4;
const F: usize = 5;

fn random(rng: &mut StdRng, shape: &[usize], scale: f32) -> Vec<f32> {
    (0..shape.iter().product()).map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale).collect()
}

/// A head with random weights (gate and noise too, which a new head starts at zero).
fn head(top_k: usize, trainable: bool) -> (MoeHead, HashMap<String, Vec<f32>>, std::sync::Arc<ParamStore>) {
    let mut rng = StdRng::seed_from_u64(9);
    let mut raw: HashMap<String, (Vec<f32>, Vec<usize>)> = HashMap::new();
    let mut put = |name: &str, shape: &[usize], scale: f32, rng: &mut StdRng| {
        raw.insert(format!("more.{name}"), (random(rng, shape, scale), shape.to_vec()));
    };
    put("norm_in.weight", &[H], 0.3, &mut rng);
    put("norm_in.bias", &[H], 0.3, &mut rng);
    put("gate.weight", &[E, H], 1.0, &mut rng);
    put("noise.weight", &[E, H], 0.5, &mut rng);
    for e in 0..E {
        put(&format!("experts.{e}.fc1.weight"), &[F, H], 0.8, &mut rng);
        put(&format!("experts.{e}.fc1.bias"), &[F], 0.3, &mut rng);
        put(&format!("experts.{e}.fc2.weight"), &[H, F], 0.8, &mut rng);
        put(&format!("experts.{e}.fc2.bias"), &[H], 0.3, &mut rng);
    }
    put("norm_out.weight", &[H], 0.3, &mut rng);
    put("norm_out.bias", &[H], 0.3, &mut rng);
    put("regression.weight", &[1, H], 1.0, &mut rng);
    put("regression.bias", &[1], 0.3, &mut rng);
    let mut flat = HashMap::new();
    let mut tensors = HashMap::new();
    for (name, (mut values, shape)) in raw {
        if name.starts_with("more.norm") && name.ends_with("weight") {
            values.iter_mut().for_each(|v| *v += 1.0);
        }
        tensors.insert(name.clone(), Tensor::from_vec(values.clone(), shape, &Device::Cpu).unwrap());
        flat.insert(name, values);
    }
    let store = ParamStore::from_tensors(tensors, "test head", trainable);
    let cfg = MoreConfig { top_k, ..MoreConfig::default() };
    let head = MoeHead::load(store.var_builder(DType::F32, &Device::Cpu).pp("more"), H, E, F, &cfg).unwrap();
    (head, flat, store)
}

fn layer_norm(x: &[f64], w: &[f32], b: &[f32]) -> Vec<f64> {
    let mean = x.iter().sum::<f64>() / x.len() as f64;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64;
    x.iter().enumerate().map(|(i, v)| (v - mean) / (var + 1e-5).sqrt() * w[i] as f64 + b[i] as f64).collect()
}

fn matvec(w: &[f32], b: Option<&[f32]>, x: &[f64], out: usize) -> Vec<f64> {
    (0..out)
        .map(|o| {
            let dot: f64 = x.iter().enumerate().map(|(i, v)| w[o * x.len() + i] as f64 * v).sum();
            dot + b.map(|b| b[o] as f64).unwrap_or(0.0)
        })
        .collect()
}

/// erf through Abramowitz–Stegun 7.1.26 (|error| < 1.5e-7).
fn erf(z: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.3275911 * z.abs());
    let poly = ((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592;
    (1.0 - poly * t * (-z * z).exp()).copysign(z)
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

/// The standard normal CDF.
fn phi(z: f64) -> f64 {
    0.5 * (1.0 + erf(z / std::f64::consts::SQRT_2))
}

/// Every expert on the row, gates as an explicit softmax over the top k logits.
fn dense_reward(p: &HashMap<String, Vec<f32>>, x: &[f32], k: usize) -> (f64, Vec<f64>) {
    let x: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let xn = layer_norm(&x, &p["more.norm_in.weight"], &p["more.norm_in.bias"]);
    let logits = matvec(&p["more.gate.weight"], None, &xn, E);
    let mut order: Vec<usize> = (0..E).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top = &order[..k];
    let z: f64 = top.iter().map(|&e| logits[e].exp()).sum();
    let gates: Vec<f64> = (0..E).map(|e| if top.contains(&e) { logits[e].exp() / z } else { 0.0 }).collect();
    let mut mixed = vec![0f64; H];
    for e in 0..E {
        let w = |n: &str| p[&format!("more.experts.{e}.{n}")].as_slice();
        let hidden: Vec<f64> = matvec(w("fc1.weight"), Some(w("fc1.bias")), &xn, F).into_iter().map(gelu).collect();
        let out = matvec(w("fc2.weight"), Some(w("fc2.bias")), &hidden, H);
        for (m, o) in mixed.iter_mut().zip(out) {
            *m += gates[e] * o;
        }
    }
    let normed = layer_norm(&mixed, &p["more.norm_out.weight"], &p["more.norm_out.bias"]);
    (matvec(&p["more.regression.weight"], Some(&p["more.regression.bias"]), &normed, 1)[0], gates)
}

fn inputs(rows: usize, seed: u64) -> (Tensor, Vec<Vec<f32>>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let data: Vec<Vec<f32>> = (0..rows).map(|_| random(&mut rng, &[H], 1.5)).collect();
    (Tensor::from_vec(data.concat(), (rows, H), &Device::Cpu).unwrap(), data)
}

#[test]
fn sparse_experts_equal_the_dense_computation_with_explicit_top_k_gates() {
    for k in [1, 2, 3, E] {
        let (head, p, _) = head(k, false);
        let (x, rows) = inputs(7, 3);
        let out = head.forward(&x, &Ctx::eval()).unwrap();
        let rewards = out.rewards.to_vec1::<f32>().unwrap();
        let gates = out.gates.to_vec2::<f32>().unwrap();
        for (r, row) in rows.iter().enumerate() {
            let (want, want_gates) = dense_reward(&p, row, k);
            assert!((rewards[r] as f64 - want).abs() < 1e-4, "k {k} row {r}: {} vs {want}", rewards[r]);
            for e in 0..E {
                assert!((gates[r][e] as f64 - want_gates[e]).abs() < 1e-5, "k {k} row {r} expert {e}");
            }
            assert_eq!(gates[r].iter().filter(|&&g| g > 0.0).count(), k, "exactly k experts per row");
        }
        // Balance loss without noise: CV² of importance (gate sums) plus CV² of load (rows per expert).
        let cv2 = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64 / (m * m + 1e-10)
        };
        let importance: Vec<f64> = (0..E).map(|e| gates.iter().map(|g| g[e] as f64).sum()).collect();
        let load: Vec<f64> = (0..E).map(|e| gates.iter().filter(|g| g[e] > 0.0).count() as f64).collect();
        let got = out.balance.to_scalar::<f32>().unwrap() as f64;
        assert!((got - (cv2(&importance) + cv2(&load))).abs() < 1e-4, "k {k}: {got}");
    }
}

#[test]
fn gate_noise_is_seeded_and_only_in_training() {
    let (head, _, _) = head(2, false);
    let (x, _) = inputs(16, 4);
    let gates = |ctx: &Ctx| head.forward(&x, ctx).unwrap().gates.to_vec2::<f32>().unwrap();
    assert_eq!(gates(&Ctx::train(5)), gates(&Ctx::train(5)), "one seed, one draw");
    assert_ne!(gates(&Ctx::train(5)), gates(&Ctx::train(6)));
    assert_eq!(gates(&Ctx::eval()), gates(&Ctx::eval()));
    assert_ne!(gates(&Ctx::eval()), gates(&Ctx::train(5)), "the noise moves the gates in training");
}

#[test]
fn finite_differences_agree_with_the_gradient_of_reward_and_smooth_load() {
    let (head, _, store) = head(2, true);
    let (x, _) = inputs(6, 5);
    let loss = || {
        let out = head.forward(&x, &Ctx::train(11)).unwrap();
        (out.rewards.sum_all().unwrap() + (out.balance * 0.5).unwrap()).unwrap()
    };
    let grads = loss().backward().unwrap();
    let vars: Vec<(String, Var)> = store.vars();
    let mut checked = 0;
    for (name, var) in vars.iter().filter(|(n, _)| {
        n.ends_with("gate.weight") || n.ends_with("noise.weight") || n.ends_with("experts.1.fc1.weight")
    }) {
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let original = var.as_tensor().copy().unwrap();
        let flat = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let i = (0..flat.len()).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
        let at = |delta: f32| {
            let mut v = flat.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap()).unwrap();
            let l = loss().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            var.set(&original).unwrap();
            l
        };
        let eps = 1e-3f32;
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let rel = (numeric - analytic[i] as f64).abs() / (analytic[i].abs() as f64).max(1e-3);
        assert!(rel < 3e-2, "{name}[{i}]: numeric {numeric} vs analytic {}", analytic[i]);
        checked += 1;
    }
    assert_eq!(checked, 3);
}

/// A domain of the marker task: the chosen response holds `good` where the rejected one holds `bad`.
fn write_domain(data: &Path, name: &str, lo: usize, (good, bad): (&str, &str), n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for (split, count) in [("train", n), ("test", 40)] {
        let mut text = String::new();
        for i in 0..count {
            let prompt: Vec<String> = (0..4).map(|_| format!("w{}", rng.random_range(lo..lo + 12))).collect();
            let body: Vec<String> = (0..4).map(|_| format!("w{}", rng.random_range(47..common::VOCAB))).collect();
            let (mut chosen, mut rejected) = (body.clone(), body);
            chosen.insert(i % 4, good.into());
            rejected.insert(i % 4, bad.into());
            let record = serde_json::json!({"id": format!("{name}/{split}/{i}"), "domain": name,
                "prompt": prompt.join(" "), "chosen": chosen.join(" "), "rejected": rejected.join(" ")});
            text.push_str(&format!("{record}\n"));
        }
        std::fs::create_dir_all(data.join(name)).unwrap();
        std::fs::write(data.join(name).join(format!("{split}.jsonl")), text).unwrap();
    }
}

#[test]
fn more_learns_two_domains_and_loads_back_with_its_expert_shares() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_domain(data.path(), "alpha", 8, ("w5", "w6"), 96, 1);
    write_domain(data.path(), "beta", 21, ("w5", "w6"), 96, 2);
    let cfg = TrainConfig {
        method: Method::More,
        backbone: base.path().display().to_string(),
        data: data.path().to_path_buf(),
        out: out.path().join("run"),
        seed: 3,
        epochs: 8,
        batch_size: 16,
        lr: 2e-3,
        warmup_ratio: 0.1,
        max_length: 32,
        more: Some(MoreConfig { experts: Some(4), top_k: 2, expert_hidden: Some(32), noise: true, balance_coef: 0.01 }),
        ..TrainConfig::default()
    };
    let run = train_more(&cfg, Device::Cpu, &RunOptions { quiet: true, ..Default::default() }).unwrap();
    assert!(!run.join("config.json").exists(), "from_pretrained(RUN) must fail, not load a random classifier");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("encoder/config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertModel");
    let mut scorer = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).unwrap();
    assert!(scorer.downcast_ref::<MoreModel>().is_some());
    let domains = ["alpha".to_string(), "beta".to_string()];
    let (by_domain, _) =
        accuracy_by_domain(&scorer, &domain_test_sets(data.path(), &domains, None, 0).unwrap()).unwrap();
    for d in &domains {
        assert!(by_domain[d].accuracy >= 0.95, "{d}: {}", by_domain[d].accuracy);
    }
    let sets = domain_test_sets(data.path(), &domains, None, 0).unwrap();
    let shares = scorer.model.evaluate_more(&sets, None).unwrap().experts.unwrap();
    assert_eq!(shares.experts, 4);
    for row in shares.shares.values() {
        assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{row:?}");
    }
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.method, "more");
    assert!(meta.total_parameters > 0 && meta.trainable_parameters == meta.total_parameters);
}

#[test]
fn train_more_eval_and_report_from_the_command_line() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_domain(data.path(), "alpha", 8, ("w5", "w6"), 32, 1);
    write_domain(data.path(), "beta", 21, ("w5", "w6"), 32, 2);
    let run = out.path().join("run");
    let cfg = serde_json::json!({"method": "more", "backbone": base.path(), "data": data.path(), "out": run,
        "epochs": 1, "batch_size": 16, "lr": 1e-3, "max_length": 32, "more": {"top_k": 1}});
    let cfg_path = out.path().join("more.json");
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let (rmroute, ok) = (common::rmroute, common::stdout_ok);
    ok(rmroute(&["train-more", "--config", cfg_path.to_str().unwrap(), "--quiet"]));
    let meta = rmroute::methods::manifest::RunMeta::read(&run).unwrap();
    assert_eq!(meta.config.more.unwrap().experts, Some(2), "experts default to the number of domains");
    let eval = ok(rmroute(&["eval", "--model", run.to_str().unwrap(), "--data", data.path().to_str().unwrap()]));
    assert!(eval.contains("Expert shares") && eval.contains("expert 1"), "{eval}");
    let report = ok(rmroute(&["report", run.to_str().unwrap(), "--out", out.path().to_str().unwrap(), "--plot"]));
    assert!(report.contains("| more |") && report.contains("Expert shares"), "{report}");
    let svg = std::fs::read_to_string(out.path().join("experts.svg")).unwrap();
    assert!(svg.contains("<rect") && svg.contains("alpha"), "a heat map with a row per domain");
    let scored = out.path().join("scores.jsonl");
    let input = out.path().join("in.jsonl");
    std::fs::write(&input, "{\"prompt\": \"w9 w10\", \"response\": \"w5 w50\"}\n").unwrap();
    ok(rmroute(&[
        "score",
        "--model",
        run.to_str().unwrap(),
        "--input",
        input.to_str().unwrap(),
        "--out",
        scored.to_str().unwrap(),
        "--quiet",
    ]));
    assert!(std::fs::read_to_string(&scored).unwrap().contains("\"reward\""));
}

#[test]
fn gradients_reach_only_the_selected_experts() {
    let (head, _, store) = head(1, true);
    let (x, _) = inputs(3, 6);
    let out = head.forward(&x, &Ctx::eval()).unwrap();
    let gates = out.gates.to_vec2::<f32>().unwrap();
    let used: Vec<usize> = (0..E).filter(|&e| gates.iter().any(|g| g[e] > 0.0)).collect();
    assert!(used.len() < E, "3 rows, top 1: some expert is idle ({used:?})");
    let grads = out.rewards.sum_all().unwrap().backward().unwrap();
    for (name, var) in store.vars().iter().filter(|(n, _)| n.contains(".experts.")) {
        let expert: usize = name.split('.').nth(2).unwrap().parse().unwrap();
        match grads.get(var.as_tensor()) {
            // an idle expert was never computed: it is not even in the graph
            None => assert!(!used.contains(&expert), "{name}: selected but no gradient"),
            Some(g) => {
                assert!(used.contains(&expert), "{name}: idle expert in the graph");
                assert!(g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}");
            }
        }
    }
}

#[test]
fn the_balance_loss_punishes_a_skewed_gate_and_its_gradient_matches_finite_differences() {
    let (head, _, store) = head(E, true);
    let (x, _) = inputs(8, 7);
    let gate = store.vars().into_iter().find(|(n, _)| n.ends_with("gate.weight")).unwrap().1;
    let balance = || head.forward(&x, &Ctx::eval()).unwrap().balance.to_scalar::<f32>().unwrap();
    gate.set(&Tensor::zeros((E, H), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let uniform = balance();
    let mut skew = vec![0f32; E * H];
    skew[..H].iter_mut().for_each(|v| *v = 3.0);
    let skewed_gate = Tensor::from_vec(skew, (E, H), &Device::Cpu).unwrap();
    gate.set(&skewed_gate).unwrap();
    let skewed = balance();
    assert!(uniform < 1e-6 && skewed > 0.05, "uniform {uniform}, skewed {skewed}");

    // Finite differences of the balance loss alone (noisy, top 2: the smooth load estimator).
    let (head, _, store) = self::head(2, true);
    let loss = || head.forward(&x, &Ctx::train(21)).unwrap().balance;
    let grads = loss().backward().unwrap();
    for (name, var) in store.vars().iter().filter(|(n, _)| n.ends_with("gate.weight") || n.ends_with("noise.weight")) {
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let original = var.as_tensor().copy().unwrap();
        let flat = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let i = (0..flat.len()).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
        let at = |delta: f32| {
            let mut v = flat.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap()).unwrap();
            let l = loss().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            var.set(&original).unwrap();
            l
        };
        let numeric = (at(1e-3) - at(-1e-3)) / 2e-3;
        let rel = (numeric - analytic[i] as f64).abs() / (analytic[i].abs() as f64).max(1e-3);
        assert!(rel < 3e-2, "{name}[{i}]: numeric {numeric} vs analytic {}", analytic[i]);
    }
}

#[test]
fn a_killed_more_run_resumes_bit_identically() {
    use rmroute::train::trainer::StoppedEarly;
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_domain(data.path(), "alpha", 8, ("w5", "w6"), 24, 1);
    write_domain(data.path(), "beta", 21, ("w5", "w6"), 24, 2);
    let mut cfg = TrainConfig {
        method: Method::More,
        backbone: base.path().display().to_string(),
        data: data.path().to_path_buf(),
        out: out.path().join("whole"),
        seed: 4,
        epochs: 2,
        batch_size: 8,
        grad_accum: 2,
        lr: 1e-3,
        max_length: 32,
        more: Some(MoreConfig::default()),
        ..TrainConfig::default()
    };
    let quiet = RunOptions { quiet: true, ..Default::default() };
    let whole = train_more(&cfg, Device::Cpu, &quiet).unwrap();
    cfg.out = out.path().join("killed");
    let stop = RunOptions { quiet: true, stop_after: Some(5), ..Default::default() };
    let err = train_more(&cfg, Device::Cpu, &stop).unwrap_err();
    assert!(err.downcast_ref::<StoppedEarly>().is_some(), "{err}");
    let resumed =
        train_more(&cfg, Device::Cpu, &RunOptions { quiet: true, resume: true, ..Default::default() }).unwrap();
    for file in ["encoder/model.safetensors", "more.safetensors"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(resumed.join(file)).unwrap());
        assert!(a == b, "{file} differs after resume");
    }
}

#[test]
fn the_smooth_load_is_shazeers_formula_with_the_same_noise_draws() {
    let k = 2;
    let (head, p, _) = head(k, false);
    let (x, rows) = inputs(9, 8);
    let seed = 31;
    let out = head.forward(&x, &Ctx::train(seed)).unwrap();
    // The head draws nothing else from the pass's RNG: the same draws, reproduced here.
    let draws = Ctx::train(seed).standard_normal(rows.len() * E);
    let softplus = |v: f64| v.max(0.0) + (1.0 + (-v.abs()).exp()).ln();
    let (mut importance, mut load) = (vec![0f64; E], vec![0f64; E]);
    for (r, row) in rows.iter().enumerate() {
        let xr: Vec<f64> = row.iter().map(|&v| v as f64).collect();
        let xn = layer_norm(&xr, &p["more.norm_in.weight"], &p["more.norm_in.bias"]);
        let clean = matvec(&p["more.gate.weight"], None, &xn, E);
        let std: Vec<f64> =
            matvec(&p["more.noise.weight"], None, &xn, E).into_iter().map(|v| softplus(v) + 1e-2).collect();
        let noisy: Vec<f64> = (0..E).map(|e| clean[e] + draws[r * E + e] as f64 * std[e]).collect();
        let mut order: Vec<usize> = (0..E).collect();
        order.sort_by(|&a, &b| noisy[b].total_cmp(&noisy[a]));
        let z: f64 = order[..k].iter().map(|&e| noisy[e].exp()).sum();
        for e in 0..E {
            let inside = order[..k].contains(&e);
            if inside {
                importance[e] += noisy[e].exp() / z;
            }
            // the k-th largest noisy logit among the other experts
            let others: Vec<f64> = order.iter().filter(|&&o| o != e).map(|&o| noisy[o]).collect();
            let threshold = others[k - 1];
            load[e] += phi((clean[e] - threshold) / std[e]);
        }
    }
    let cv2 = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64 / (m * m + 1e-10)
    };
    let want = cv2(&importance) + cv2(&load);
    let got = out.balance.to_scalar::<f32>().unwrap() as f64;
    assert!((got - want).abs() < 1e-4 * want.max(1.0), "{got} vs {want}");
}

#[test]
fn a_more_run_without_its_more_section_is_refused_not_scored_with_defaults() {
    let (base, data, out) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::write_tiny_bert(base.path(), 1, true, false);
    write_domain(data.path(), "alpha", 8, ("w5", "w6"), 16, 1);
    write_domain(data.path(), "beta", 21, ("w5", "w6"), 16, 2);
    let cfg = TrainConfig {
        method: Method::More,
        backbone: base.path().display().to_string(),
        data: data.path().to_path_buf(),
        out: out.path().join("run"),
        epochs: 1,
        batch_size: 16,
        max_length: 32,
        more: Some(MoreConfig { top_k: 1, ..MoreConfig::default() }),
        ..TrainConfig::default()
    };
    let run = train_more(&cfg, Device::Cpu, &RunOptions { quiet: true, ..Default::default() }).unwrap();
    let path = run.join("rmroute.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    meta["config"].as_object_mut().unwrap().remove("more");
    std::fs::write(&path, serde_json::to_vec(&meta).unwrap()).unwrap();
    let err = load_scorer(&run, &LoadOptions::default(), &ScoreOptions::default()).err().unwrap().to_string();
    assert!(err.contains("without its `more` section"), "{err}");
}
