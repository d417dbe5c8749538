//! The reward model as a whole: gradients reach every trainable tensor, adapters survive save/load in
//! PEFT's layout with their head, merged equals unmerged, and padding never changes a reward.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::lora::{LoraConfig, TargetModules};
use rmroute::nn::{Adapters, Ctx};
use rmroute::train::loss::pairwise_loss;

const PAIRS: [(&str, &str, &str); 3] = [
    ("w4 w5 w6", "w7 w8", "w9 w10 w11 w12"),
    ("w13 w14", "w15", "w16 w17"),
    ("w20 w21 w22 w23 w24 w25", "w26 w27 w28", "w29"),
];

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: TargetModules::names(&[
            "query_proj",
            "key_proj",
            "value_proj",
            "dense",
            "query",
            "key",
            "value",
            "c_attn",
            "c_proj",
        ]),
    }
}

fn loss(model: &RewardModel, ctx: &Ctx) -> Tensor {
    let chosen: Vec<(&str, &str)> = PAIRS.iter().map(|(p, c, _)| (*p, *c)).collect();
    let rejected: Vec<(&str, &str)> = PAIRS.iter().map(|(p, _, r)| (*p, *r)).collect();
    let batch = model.encode(&[chosen, rejected].concat()).unwrap();
    let rewards = model.forward(&batch, ctx).unwrap();
    let n = PAIRS.len();
    pairwise_loss(&rewards.narrow(0, 0, n).unwrap(), &rewards.narrow(0, n, n).unwrap()).unwrap()
}

/// A tiny random checkpoint of `family` with its head: written here (DeBERTa, BERT) or as transformers
/// wrote it (RoBERTa, GPT-2).
fn tiny_checkpoint(family: &str, dir: &std::path::Path) -> std::path::PathBuf {
    match family {
        "deberta" => common::write_tiny_deberta(dir, 1, &common::TinyDeberta::default()),
        "bert" => common::write_tiny_bert(dir, 1, true, true),
        other => return common::repo_fixture(&format!("tiny-{other}-rm")),
    }
    dir.to_path_buf()
}

fn assert_all_grads_nonzero(model: &RewardModel, adapters: &[&str], ctx: &Ctx, expected_min: usize) {
    let vars = model.trainable_vars(adapters);
    assert!(vars.len() >= expected_min, "only {} trainable tensors", vars.len());
    // The pairwise loss cannot see a bias shared by chosen and rejected (its gradient is zero in exact
    // arithmetic, and only rounding ever made it otherwise), so the mean reward is added: every tensor
    // the rewards depend on then has a gradient that is not zero.
    let chosen: Vec<(&str, &str)> = PAIRS.iter().map(|(p, c, _)| (*p, *c)).collect();
    let rewards = model.forward(&model.encode(&chosen).unwrap(), ctx).unwrap();
    let grads = (loss(model, ctx) + rewards.mean_all().unwrap()).unwrap().backward().unwrap();
    for (name, var) in &vars {
        let g = grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

#[test]
fn every_trainable_tensor_gets_a_gradient_full_fine_tuning() {
    for arch in ["deberta", "bert", "roberta", "gpt2"] {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = tiny_checkpoint(arch, dir.path());
        let opts = LoadOptions { train_encoder: true, ..Default::default() };
        let model = RewardModel::load(&checkpoint, &opts).unwrap();
        // Encoder (every layer, norm, embedding table) and head; DeBERTa's 2 layers have 16 tensors each,
        // GPT-2's 12 (with 2 embedding tables, the final norm and the bias-free `score`: 29 in all).
        let expected = if arch == "gpt2" { 29 } else { 30 };
        assert_all_grads_nonzero(&model, &[], &Ctx::train(3), expected);
    }
}

#[test]
fn every_adapter_tensor_and_head_gets_a_gradient_and_the_base_none() {
    for arch in ["deberta", "bert", "roberta", "gpt2"] {
        let dir = tempfile::tempdir().unwrap();
        let mut model = RewardModel::load(&tiny_checkpoint(arch, dir.path()), &LoadOptions::default()).unwrap();
        model.add_adapter("hh", &lora(), 5).unwrap();
        // B starts at zero, so A's gradient is zero at the first step: move B off zero first, as one
        // optimizer step would.
        for (name, var) in model.trainable_vars(&["hh"]) {
            if name.contains("lora_B") {
                var.set(&(var.as_tensor() + 0.01).unwrap()).unwrap();
            }
        }
        let vars = model.trainable_vars(&["hh"]);
        let names: Vec<&String> = vars.iter().map(|(n, _)| n).collect();
        assert!(
            names
                .iter()
                .all(|n| n.contains("lora_") || ["classifier", "pooler", "score"].iter().any(|h| n.contains(h))),
            "{names:?}"
        );
        // 2 layers × 6 targeted linears × (A, B), plus the adapter's head (4 tensors); GPT-2 has 3
        // targeted Conv1D layers (c_attn and both c_proj) and a one-tensor `score` head.
        let expected = if arch == "gpt2" { 2 * 3 * 2 + 1 } else { 28 };
        assert_eq!(vars.len(), expected, "{arch}: {names:?}");
        let ctx = Ctx::train(3).with_adapters(Adapters::One("hh".into()));
        assert_all_grads_nonzero(&model, &["hh"], &ctx, expected);
        // and no frozen base weight is even in the graph's gradients
        let grads = loss(&model, &ctx).backward().unwrap();
        for layer in model.encoder.lora_linears() {
            assert!(grads.get(&layer.weight).is_none(), "{} got a gradient", layer.path);
        }
    }
}

#[test]
fn finite_differences_agree_with_the_pairwise_loss_gradient() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 2, &common::TinyDeberta::default());
    let patterns = [
        "classifier.weight",
        "layer.0.attention.self.query_proj.weight",
        "rel_embeddings.weight",
        "encoder.LayerNorm.weight",
    ];
    check_finite_differences(dir.path(), &patterns);
}

/// RoBERTa (positions counted from the padding index, head on `<s>`) and GPT-2 (Conv1D weights trained
/// through their transposed view, causal attention, the head on the last real token).
#[test]
fn finite_differences_agree_on_roberta_and_gpt2() {
    let roberta = [
        "layer.0.attention.self.query.weight",
        "layer.1.output.dense.weight",
        "embeddings.position_embeddings.weight",
        "classifier.dense.weight",
        "classifier.out_proj.weight",
    ];
    check_finite_differences(&common::repo_fixture("tiny-roberta-rm"), &roberta);
    let gpt2 = [
        "h.0.attn.c_attn.weight",
        "h.1.mlp.c_fc.weight",
        "h.1.attn.c_proj.weight",
        "wpe.weight",
        "ln_f.weight",
        "score.weight",
    ];
    check_finite_differences(&common::repo_fixture("tiny-gpt2-rm"), &gpt2);
}

/// For each tensor whose name contains one of `patterns`, the analytic gradient of the pairwise loss at
/// its largest element against a central difference.
fn check_finite_differences(checkpoint: &std::path::Path, patterns: &[&str]) {
    let model = RewardModel::load(checkpoint, &LoadOptions { train_encoder: true, ..Default::default() }).unwrap();
    let ctx = Ctx::eval();
    let grads = loss(&model, &ctx).backward().unwrap();
    let vars = model.trainable_vars(&[]);
    for pattern in patterns {
        let found: Vec<_> = vars.iter().filter(|(n, _)| n.ends_with(pattern)).collect();
        assert_eq!(found.len(), 1, "{pattern} in {:?}", vars.iter().map(|(n, _)| n).collect::<Vec<_>>());
        let (name, var) = found[0];
        let analytic = grads.get(var.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let original = var.as_tensor().copy().unwrap();
        let flat = original.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // the element with the largest gradient, where the check is most sensitive
        let i = (0..flat.len()).max_by(|&a, &b| analytic[a].abs().total_cmp(&analytic[b].abs())).unwrap();
        let eps = 1e-2f32;
        let at = |delta: f32| {
            let mut v = flat.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap()).unwrap();
            let l = loss(&model, &ctx).to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            var.set(&original).unwrap();
            l
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        let rel = (numeric - analytic[i] as f64).abs() / analytic[i].abs().max(1e-3) as f64;
        assert!(rel < 2e-2, "{name}[{i}]: numeric {numeric} vs analytic {}", analytic[i]);
    }
}

fn rewards(model: &RewardModel, adapters: &Adapters) -> Vec<f32> {
    let pairs: Vec<(&str, &str)> = PAIRS.iter().flat_map(|(p, c, r)| [(*p, *c), (*p, *r)]).collect();
    model.score(&pairs, 8, adapters).unwrap()
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

/// Gives every adapter tensor of `name` seeded random values, as training would.
fn perturb_adapter(model: &RewardModel, name: &str) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(name.bytes().map(u64::from).sum::<u64>() + 40);
    for (_, var) in model.trainable_vars(&[name]) {
        let shape = var.as_tensor().shape().clone();
        let noise: Vec<f32> = (0..shape.elem_count()).map(|_| (rng.random::<f32>() - 0.5) * 0.6).collect();
        let noise = Tensor::from_vec(noise, shape, &Device::Cpu).unwrap();
        var.set(&(var.as_tensor() + noise).unwrap()).unwrap();
    }
}

#[test]
fn peft_adapter_round_trip_is_bit_identical_and_keeps_the_head() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 3, &common::TinyDeberta { with_head: false, ..Default::default() });
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.add_adapter("hh", &lora(), 9).unwrap();
    perturb_adapter(&model, "hh");
    let before = rewards(&model, &Adapters::One("hh".into()));
    let out = tempfile::tempdir().unwrap();
    model.save_adapter("hh", out.path(), "tiny").unwrap();

    let saved = candle_core::safetensors::load(out.path().join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert!(saved.contains_key("base_model.model.deberta.encoder.layer.0.attention.self.query_proj.lora_A.weight"));
    assert!(saved.contains_key("base_model.model.classifier.weight"), "the head is saved with the adapter");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_f64(), config["peft_type"].as_str()),
        (Some(4), Some(8.0), Some("LORA"))
    );
    // The config's value as written, not an f32 widened to 0.10000000149011612.
    let text = std::fs::read_to_string(out.path().join("adapter_config.json")).unwrap();
    assert!(text.contains("\"lora_dropout\": 0.1,"), "{text}");
    // target_modules is a pattern PEFT matches against whole module paths: exactly the adapted layers.
    let pattern = regex::Regex::new(config["target_modules"].as_str().expect("a pattern")).unwrap();
    let adapted: Vec<&str> = model.encoder.lora_linears().iter().map(|l| l.path.as_str()).collect();
    assert_eq!(adapted.len(), 12);
    assert!(adapted.iter().all(|p| pattern.is_match(p)));
    for other in ["pooler.dense", "classifier", "deberta.encoder.layer.0.attention.self.query_proj.x"] {
        assert!(!pattern.is_match(other), "{other} would be adapted in PEFT");
    }

    // A fresh base (with a different random head) plus the adapter gives the same rewards, bit for bit.
    let fresh_head = LoadOptions { seed: 77, new_head: true, ..Default::default() };
    let mut reloaded = RewardModel::load(dir.path(), &fresh_head).unwrap();
    reloaded.load_adapter(out.path(), "hh", false).unwrap();
    let again = out.path().join("again");
    reloaded.save_adapter("hh", &again, "tiny").unwrap();
    let resaved = candle_core::safetensors::load(again.join("adapter_model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(saved.len(), resaved.len());
    for (k, t) in &saved {
        let a = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = resaved[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{k} changed");
    }
    assert_eq!(before, rewards(&reloaded, &Adapters::One("hh".into())));
    assert_ne!(before, rewards(&reloaded, &Adapters::None), "the adapter matters");
}

#[test]
fn merged_adapter_model_saved_as_checkpoint_gives_the_same_rewards() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 4, false, false);
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.add_adapter("x", &lora(), 1).unwrap();
    perturb_adapter(&model, "x");
    let with_adapter = rewards(&model, &Adapters::One("x".into()));
    model.merge_adapter("x").unwrap();
    let merged = rewards(&model, &Adapters::None);
    assert!(close(&with_adapter, &merged, 1e-4), "{with_adapter:?} vs {merged:?}");
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(out.path()).unwrap();
    let reloaded = RewardModel::load(out.path(), &LoadOptions { seed: 99, ..Default::default() }).unwrap();
    assert!(close(&merged, &rewards(&reloaded, &Adapters::None), 1e-6));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForSequenceClassification");
    let tensors = candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.contains_key("bert.pooler.dense.weight") && tensors.contains_key("classifier.bias"));
}

/// RoBERTa and GPT-2 adapters: PEFT's layout (GPT-2's Conv1D layers with `fan_in_fan_out: true`) read
/// back bit for bit, merged equals unmerged, and the merged checkpoint keeps each family's layout
/// (GPT-2's `c_attn` stored (in, out) as transformers' Conv1D holds it).
#[test]
fn roberta_and_gpt2_adapters_round_trip_in_peft_layout_and_merge() {
    for (family, fan_in_fan_out, conv) in
        [("roberta", false, None), ("gpt2", true, Some(("transformer.h.0.attn.c_attn.weight", [32, 96])))]
    {
        let base = common::repo_fixture(&format!("tiny-{family}-rm"));
        let mut model = RewardModel::load(&base, &LoadOptions::default()).unwrap();
        model.add_adapter("x", &lora(), 1).unwrap();
        perturb_adapter(&model, "x");
        let with_adapter = rewards(&model, &Adapters::One("x".into()));
        assert_ne!(with_adapter, rewards(&model, &Adapters::None), "{family}: the adapter matters");

        let saved = tempfile::tempdir().unwrap();
        model.save_adapter("x", saved.path(), family).unwrap();
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(saved.path().join("adapter_config.json")).unwrap()).unwrap();
        assert_eq!(config["fan_in_fan_out"].as_bool(), Some(fan_in_fan_out), "{family}");
        let mut reloaded =
            RewardModel::load(&base, &LoadOptions { seed: 5, new_head: true, ..Default::default() }).unwrap();
        reloaded.load_adapter(saved.path(), "x", false).unwrap();
        assert_eq!(with_adapter, rewards(&reloaded, &Adapters::One("x".into())), "{family}: PEFT round trip");

        model.merge_adapter("x").unwrap();
        let merged = rewards(&model, &Adapters::None);
        assert!(close(&with_adapter, &merged, 1e-4), "{family}: {with_adapter:?} vs {merged:?}");
        let out = tempfile::tempdir().unwrap();
        model.save_pretrained(out.path()).unwrap();
        let again = RewardModel::load(out.path(), &LoadOptions { seed: 99, ..Default::default() }).unwrap();
        assert!(close(&merged, &rewards(&again, &Adapters::None), 1e-6), "{family}: merged checkpoint");
        if let Some((name, shape)) = conv {
            let tensors = candle_core::safetensors::load(out.path().join("model.safetensors"), &Device::Cpu).unwrap();
            assert_eq!(tensors[name].dims(), shape, "{name} is stored as Conv1D (in, out)");
        }
    }
}

#[test]
fn per_row_adapters_in_the_full_model_equal_each_row_alone() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 6, &common::TinyDeberta::default());
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    for name in ["a", "b"] {
        model.add_adapter(name, &lora(), 2).unwrap();
        perturb_adapter(&model, name);
    }
    // Six rows in an order that is not grouped by adapter: the model groups them (runs of several rows,
    // each adapter's position projection computed once per run) and puts the rewards back in order.
    let pairs: Vec<(&str, &str)> = PAIRS.iter().chain(PAIRS.iter().rev()).map(|(p, c, _)| (*p, *c)).collect();
    let names: Vec<Option<String>> =
        ["b", "a", "", "a", "b", "a"].iter().map(|n| (!n.is_empty()).then(|| n.to_string())).collect();
    let mixed = model.score(&pairs, 8, &Adapters::PerRow(names.clone())).unwrap();
    for (i, name) in names.iter().enumerate() {
        let adapters = name.clone().map(Adapters::One).unwrap_or_default();
        let alone = model.score(&pairs[i..i + 1], 1, &adapters).unwrap()[0];
        assert!((mixed[i] - alone).abs() <= 1e-5 * alone.abs().max(1.0), "row {i}: {} vs {alone}", mixed[i]);
    }
    assert_ne!(mixed[0], mixed[5], "the same pair with two adapters scores differently");
}

#[test]
fn per_row_training_passes_draw_the_same_dropout_as_one_adapter() {
    // Rows all with one adapter, in training mode: the grouped per-row pass must draw the same dropout
    // masks, in the same order, as the one-adapter pass, and leave the stream where it would.
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 7, &common::TinyDeberta::default());
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.add_adapter("a", &lora(), 2).unwrap();
    perturb_adapter(&model, "a");
    let pairs: Vec<(&str, &str)> = PAIRS.iter().map(|(p, c, _)| (*p, *c)).collect();
    let batch = model.encode(&pairs).unwrap();
    let one = Ctx::train(11).with_adapters(Adapters::One("a".into()));
    let per_row = Ctx::train(11).with_adapters(Adapters::PerRow(vec![Some("a".into()); pairs.len()]));
    let (x, y) = (model.forward(&batch, &one).unwrap(), model.forward(&batch, &per_row).unwrap());
    assert_eq!(common::max_abs_diff(&x, &y), 0.0);
    assert!(
        common::max_abs_diff(
            &x,
            &model.forward(&batch, &Ctx::train(12).with_adapters(Adapters::One("a".into()))).unwrap()
        ) > 0.0,
        "dropout is on"
    );
    let (x, y) = (model.forward(&batch, &one).unwrap(), model.forward(&batch, &per_row).unwrap());
    assert_eq!(common::max_abs_diff(&x, &y), 0.0, "the second pass of each continues the same stream");
}

#[test]
fn a_missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 1, &common::TinyDeberta::default());
    let path = dir.path().join("model.safetensors");
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.remove("deberta.encoder.layer.1.attention.self.value_proj.bias");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = RewardModel::load(dir.path(), &LoadOptions::default()).err().unwrap();
    let text = format!("{err:#}");
    assert!(text.contains("deberta.encoder.layer.1.attention.self.value_proj.bias"), "{text}");
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let text = format!("{:#}", RewardModel::load(dir.path(), &LoadOptions::default()).err().unwrap());
    assert!(text.contains("tokenizer.json or spm.model"), "{text}");
}

#[test]
fn a_reward_is_the_same_alone_and_in_a_padded_batch_on_minilm() {
    let opts = LoadOptions { seed: 1, new_head: true, ..Default::default() };
    let model = RewardModel::load(&common::fetched_model("all-MiniLM-L6-v2"), &opts).unwrap();
    let short = ("Is the sky blue?", "Yes.");
    let long = ("Explain in detail why the sky is blue during the day and red at sunset.", "Because of Rayleigh scattering: shorter wavelengths scatter more strongly in the atmosphere, so blue light reaches us from all directions, while at sunset light travels through more air and the blue is scattered away.");
    let alone = model.score(&[short], 1, &Adapters::None).unwrap()[0];
    let batched = model.score(&[long, short, long], 3, &Adapters::None).unwrap();
    assert!((alone - batched[1]).abs() <= 1e-5, "{alone} vs {}", batched[1]);
    assert!((batched[0] - batched[2]).abs() <= 1e-6);
}

#[test]
fn an_encoder_without_a_reward_head_refuses_to_score_and_names_the_missing_tensors() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 5, true, false);
    let model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    let err = model.score(&[("w4", "w5")], 1, &Adapters::None).unwrap_err().to_string();
    assert!(err.contains("no reward head") && err.contains("classifier.weight"), "{err}");
    assert!(err.contains("bert.pooler.dense.weight"), "{err}");
    let err = model.score(&[("w4", "w5")], 1, &Adapters::PerRow(vec![None])).unwrap_err().to_string();
    assert!(err.contains("no reward head"), "{err}");
    // Training may start from it: the new head is listed, once, for the caller to say so.
    let opts = LoadOptions { new_head: true, ..Default::default() };
    let model = RewardModel::load(dir.path(), &opts).unwrap();
    assert_eq!(model.new_head.len(), 4, "{:?}", model.new_head);
    assert!(model.score(&[("w4", "w5")], 1, &Adapters::None).is_ok());
}

#[test]
fn an_unknown_per_row_adapter_is_an_error_not_a_reward_of_zero() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 6, &common::TinyDeberta::default());
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.add_adapter("a", &lora(), 2).unwrap();
    let names = vec![Some("a".to_string()), Some("nope".to_string())];
    let err = model.score(&[("w4", "w5"), ("w6", "w7")], 2, &Adapters::PerRow(names)).unwrap_err().to_string();
    assert!(err.contains("no adapter named `nope`") && err.contains("have: a"), "{err}");
}

/// The tensors of a checkpoint file that are floating point, counted.
fn float_elements(path: &std::path::Path) -> usize {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    tensors.values().filter(|t| t.dtype().is_float()).map(|t| t.elem_count()).sum()
}

#[test]
fn parameter_counts_are_what_the_forward_pass_uses() {
    // transformers' BertForSequenceClassification(num_labels=1).num_parameters() on all-MiniLM-L6-v2
    let opts = LoadOptions { new_head: true, ..Default::default() };
    let minilm = RewardModel::load(&common::fetched_model("all-MiniLM-L6-v2"), &opts).unwrap();
    assert_eq!(minilm.parameter_count(), 22_713_601);
    // A transformers-made DebertaV2ForSequenceClassification: every tensor it saved is a parameter.
    let fixture = common::fixture("tiny-deberta-v3-rm");
    let rm = RewardModel::load(&fixture, &LoadOptions::default()).unwrap();
    assert_eq!(rm.parameter_count(), float_elements(&fixture.join("model.safetensors")));

    // An MLM head and integer position ids in the checkpoint are not parameters of a reward model.
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 8, &common::TinyDeberta::default());
    let path = dir.path().join("model.safetensors");
    let plain = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap().parameter_count();
    assert_eq!(plain, float_elements(&path));
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    tensors.insert("lm_predictions.lm_head.bias".into(), Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap());
    tensors.insert("mask_predictions.dense.weight".into(), Tensor::zeros((32, 32), DType::F32, &Device::Cpu).unwrap());
    tensors.insert("deberta.embeddings.position_ids".into(), Tensor::zeros((1, 64), DType::I64, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    assert_eq!(model.parameter_count(), plain);
    // and a saved model keeps only what it uses
    let out = tempfile::tempdir().unwrap();
    model.save_pretrained(&out.path().join("m")).unwrap();
    let saved = candle_core::safetensors::load(out.path().join("m/model.safetensors"), &Device::Cpu).unwrap();
    assert!(!saved.keys().any(|k| k.contains("predictions") || k.contains("position_ids")));
}

fn edit_json(path: &std::path::Path, key: &str, value: serde_json::Value) {
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    config[key] = value;
    std::fs::write(path, serde_json::to_vec(&config).unwrap()).unwrap();
}

#[test]
fn bad_checkpoint_and_adapter_configs_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 1, true, true);
    let config = dir.path().join("config.json");
    edit_json(&config, "hidden_size", "big".into());
    let err = format!("{:#}", RewardModel::load(dir.path(), &LoadOptions::default()).err().unwrap());
    assert!(err.contains("`hidden_size`") && err.contains("invalid type"), "{err}");
    edit_json(&config, "hidden_size", 32.into());
    edit_json(&config, "num_attention_heads", 0.into());
    let err = format!("{:#}", RewardModel::load(dir.path(), &LoadOptions::default()).err().unwrap());
    assert!(err.contains("`num_attention_heads` must be positive"), "{err}");
    edit_json(&config, "num_attention_heads", 5.into());
    let err = format!("{:#}", RewardModel::load(dir.path(), &LoadOptions::default()).err().unwrap());
    assert!(err.contains("not a multiple"), "{err}");
    edit_json(&config, "num_attention_heads", 4.into());

    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.add_adapter("x", &lora(), 1).unwrap();
    let adapter = dir.path().join("adapters/x");
    model.save_adapter("x", &adapter, "tiny").unwrap();
    edit_json(&adapter.join("adapter_config.json"), "r", 0.into());
    let err = format!("{:#}", model.load_adapter(&adapter, "y", false).unwrap_err());
    assert!(err.contains("adapter_config.json") && err.contains("`r` must be positive"), "{err}");
}

#[test]
fn save_pretrained_replaces_the_whole_directory_at_once() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 4, true, true);
    let model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("model");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("stale.bin"), b"old").unwrap();
    model.save_pretrained(&target).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&target).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    names.sort();
    assert_eq!(names, ["config.json", "model.safetensors", "tokenizer.json"]);
    let siblings: Vec<String> =
        std::fs::read_dir(out.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(siblings, ["model"], "no temporary directory is left behind");
}

#[test]
fn adapter_files_with_tensors_or_options_rmroute_would_ignore_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 1, true, true);
    let mut model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    model.add_adapter("x", &lora(), 1).unwrap();
    let adapter = dir.path().join("adapters/x");
    model.save_adapter("x", &adapter, "tiny").unwrap();
    // LoRA weights for the pooler, as PEFT's `["dense"]` would train them
    let file = adapter.join("adapter_model.safetensors");
    let mut tensors: HashMap<String, Tensor> = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    let extra = "base_model.model.bert.pooler.dense.lora_A.weight";
    tensors.insert(extra.into(), Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap());
    candle_core::safetensors::save(&tensors, &file).unwrap();
    let err = format!("{:#}", model.load_adapter(&adapter, "y", false).unwrap_err());
    assert!(err.contains("would be ignored") && err.contains(extra), "{err}");
    assert!(model.adapter_names() == ["x"], "the refused adapter is not left half attached");
    tensors.remove(extra);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    model.load_adapter(&adapter, "y", false).unwrap();
    edit_json(&adapter.join("adapter_config.json"), "use_rslora", true.into());
    let err = format!("{:#}", model.load_adapter(&adapter, "z", false).unwrap_err());
    assert!(err.contains("use_rslora") && err.contains("not supported"), "{err}");
}

/// `--dtype bf16` on the tiny random models: rewards near f32's (random weights amplify rounding far
/// more than trained ones; real weights are in `tests/real_minilm.rs`), and not f32's exactly, so the
/// bf16 path really ran; with an adapter too.
#[test]
fn bf16_scoring_stays_near_f32() {
    use rmroute::nn::bf16::Precision;
    let near = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 0.05 * (1.0 + x.abs()));
    let bf16 = LoadOptions { precision: Precision::Bf16, ..Default::default() };
    let fixture = common::fixture("tiny-deberta-v3-rm");
    let exact = rewards(&RewardModel::load(&fixture, &LoadOptions::default()).unwrap(), &Adapters::None);
    let rounded = rewards(&RewardModel::load(&fixture, &bf16).unwrap(), &Adapters::None);
    // The DeBERTa fixture amplifies most (0.22 on a reward of -1.25): it keeps every preference.
    let prefers = |r: &[f32]| r.chunks(2).map(|c| c[0] > c[1]).collect::<Vec<_>>();
    assert_eq!(prefers(&exact), prefers(&rounded), "{exact:?} vs {rounded:?}");
    assert!(exact.iter().zip(&rounded).all(|(x, y)| (x - y).abs() < 0.25), "{exact:?} vs {rounded:?}");
    assert!(!close(&exact, &rounded, 0.0), "bf16 gave f32's rewards exactly: {rounded:?}");

    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 4, false, true);
    let mut f32_model = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    f32_model.add_adapter("x", &lora(), 1).unwrap();
    perturb_adapter(&f32_model, "x");
    let saved = tempfile::tempdir().unwrap();
    f32_model.save_adapter("x", saved.path(), "tiny").unwrap();
    let mut bf16_model = RewardModel::load(dir.path(), &bf16).unwrap();
    // Training in bf16 is refused; a saved adapter scores.
    let err = bf16_model.add_adapter("y", &lora(), 1).unwrap_err();
    assert!(err.to_string().contains("bf16 is a scoring mode"), "{err}");
    assert!(bf16_model.load_adapter(saved.path(), "x", true).is_err());
    bf16_model.load_adapter(saved.path(), "x", false).unwrap();
    let adapters = Adapters::One("x".into());
    let (exact, rounded) = (rewards(&f32_model, &adapters), rewards(&bf16_model, &adapters));
    assert!(near(&exact, &rounded), "{exact:?} vs {rounded:?}");
    assert!(!close(&exact, &rounded, 0.0));
    // Merging re-rounds the merged weight: still the adapter's rewards.
    bf16_model.merge_adapter("x").unwrap();
    assert!(near(&exact, &rewards(&bf16_model, &Adapters::None)));
}

#[test]
fn bf16_is_refused_for_training() {
    let options =
        LoadOptions { precision: rmroute::nn::bf16::Precision::Bf16, train_encoder: true, ..Default::default() };
    let err = RewardModel::load(&common::fixture("tiny-deberta-v3-rm"), &options).err().expect("loaded for training");
    assert!(err.to_string().contains("bf16 is a scoring mode"), "{err}");
}
