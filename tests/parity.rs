//! Our encoders against candle-transformers' `debertav2` and `bert` on the same tiny random checkpoints,
//! written from Rust here: hidden states must agree (max abs diff ≤ 1e-4 in f32) on every real token,
//! with and without padding.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{bert as ct_bert, debertav2 as ct_deberta};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rmroute::model::{LoadOptions, RewardModel};
use rmroute::nn::Ctx;

/// Random ids `(3, seq)`; row 0 is full, rows 1 and 2 are padded after `seq - 5` and `seq / 2` tokens.
fn inputs(seq: usize, padded: bool) -> (Tensor, Tensor, Tensor, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(3);
    let lengths = if padded { vec![seq, seq - 5, seq / 2] } else { vec![seq; 3] };
    let mut ids = vec![];
    let mut types = vec![];
    let mut mask = vec![];
    for &len in &lengths {
        for j in 0..seq {
            ids.push(if j < len { rng.random_range(4..common::VOCAB as u32) } else { 0 });
            types.push(u32::from(j >= len / 2 && j < len));
            mask.push(u32::from(j < len));
        }
    }
    let t = |v: Vec<u32>| Tensor::from_vec(v, (3, seq), &Device::Cpu).unwrap();
    (t(ids), t(types), t(mask), lengths)
}

fn assert_close_on_tokens(ours: &Tensor, theirs: &Tensor, lengths: &[usize], what: &str) {
    for (row, &len) in lengths.iter().enumerate() {
        let a = ours.i((row, ..len)).unwrap();
        let b = theirs.i((row, ..len)).unwrap();
        let diff = common::max_abs_diff(&a, &b);
        assert!(diff <= 1e-4, "{what}: row {row} differs by {diff}");
    }
}

fn check_deberta(options: common::TinyDeberta, seq: usize, what: &str) {
    check_deberta_against(options, seq, what, serde_json::json!({}));
}

/// [`check_deberta`] with `their_config`'s keys set in candle-transformers' copy of the config.
fn check_deberta_against(options: common::TinyDeberta, seq: usize, what: &str, their_config: serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_deberta(dir.path(), 11, &options);
    let ours = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    for (key, value) in their_config.as_object().unwrap() {
        config[key] = value.clone();
    }
    let config: ct_deberta::Config = serde_json::from_value(config).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.path().join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let theirs = ct_deberta::DebertaV2Model::load(vb.pp("deberta"), &config).unwrap();
    for padded in [false, true] {
        let (ids, types, mask, lengths) = inputs(seq, padded);
        let a = ours.encoder.forward(&ids, &types, &mask, &Ctx::eval()).unwrap();
        // NOTE: candle-transformers adds position embeddings of shape (1, seq, h) to a (batch, seq, h)
        // tensor without broadcasting, so it runs one row at a time here.
        let rows: Vec<Tensor> = (0..3)
            .map(|r| {
                let row = |t: &Tensor| t.i(r..r + 1).unwrap();
                theirs.forward(&row(&ids), Some(row(&types)), Some(row(&mask))).unwrap()
            })
            .collect();
        let b = Tensor::cat(&rows, 0).unwrap();
        assert_close_on_tokens(&a, &b, &lengths, &format!("{what}, padded={padded}"));
    }
}

#[test]
fn deberta_v3_style_matches_candle_transformers() {
    check_deberta(common::TinyDeberta::default(), 12, "v3 (share_att_key, buckets)");
}

#[test]
fn deberta_log_buckets_beyond_half_the_bucket_size_match() {
    // 8 buckets: relative distances beyond ±4 fall in log-spaced buckets.
    check_deberta(common::TinyDeberta::default(), 30, "log buckets");
}

#[test]
fn deberta_v3_reads_past_max_position_embeddings_as_candle_transformers_does() {
    // Relative positions only: 100 tokens on a 64-position config, which transformers accepts too.
    // candle-transformers slices a position-id buffer of max_position_embeddings even where it adds no
    // absolute positions, so its copy gets 128 of them, and the relative span (which defaults to
    // max_position_embeddings) stays 64 as ours.
    let theirs = serde_json::json!({"max_position_embeddings": 128, "max_relative_positions": 64});
    check_deberta_against(common::TinyDeberta::default(), 100, "v3 beyond 64 positions", theirs);
}

#[test]
fn max_length_beyond_absolute_positions_is_an_error_naming_both_and_relative_ones_have_no_cap() {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(&dir.path().join("bert"), 5, false, true);
    let mut bert = RewardModel::load(&dir.path().join("bert"), &LoadOptions::default()).unwrap();
    let err = bert.set_limits(100, Default::default()).unwrap_err().to_string();
    assert!(err.contains("max_length 100") && err.contains("64 positions"), "{err}");
    bert.set_limits(64, Default::default()).unwrap();
    assert_eq!(bert.max_length(), 64);

    common::write_tiny_deberta(&dir.path().join("deberta"), 11, &common::TinyDeberta::default());
    let mut deberta = RewardModel::load(&dir.path().join("deberta"), &LoadOptions::default()).unwrap();
    deberta.set_limits(1024, Default::default()).unwrap();
    let long = vec!["w5"; 300].join(" ");
    let batch = deberta.encode(&[(long.as_str(), "w6 w7")]).unwrap();
    assert!(batch.truncated == 0 && batch.input_ids.dim(1).unwrap() > 300, "cut to {:?}", batch.input_ids.dims());
    let rewards = deberta.score(&[(long.as_str(), "w6 w7")], 1, &rmroute::nn::Adapters::None).unwrap();
    assert!(rewards[0].is_finite());
}

#[test]
fn deberta_v2_style_separate_position_projections_match() {
    let options = common::TinyDeberta {
        share_att_key: false,
        position_biased_input: true,
        type_vocab_size: 2,
        position_buckets: -1,
        ..Default::default()
    };
    check_deberta(options, 16, "v2 (pos_key_proj, absolute positions, token types)");
}

#[test]
fn deberta_embedding_projection_matches() {
    let options = common::TinyDeberta { embedding_size: Some(24), ..Default::default() };
    check_deberta(options, 10, "embed_proj");
}

fn check_bert(prefixed: bool) {
    let dir = tempfile::tempdir().unwrap();
    common::write_tiny_bert(dir.path(), 5, prefixed, true);
    let ours = RewardModel::load(dir.path(), &LoadOptions::default()).unwrap();
    let config: ct_bert::Config =
        serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.path().join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let theirs = ct_bert::BertModel::load(vb, &config).unwrap();
    for padded in [false, true] {
        let (ids, types, mask, lengths) = inputs(14, padded);
        let a = ours.encoder.forward(&ids, &types, &mask, &Ctx::eval()).unwrap();
        let b = theirs.forward(&ids, &types, Some(&mask)).unwrap();
        assert_close_on_tokens(&a, &b, &lengths, &format!("bert prefixed={prefixed}, padded={padded}"));
    }
}

#[test]
fn bert_matches_candle_transformers_with_and_without_prefix() {
    check_bert(true);
    check_bert(false);
}

/// The real pretrained SPLADE-tiny (old `gamma`/`beta` LayerNorm names, no pooler) against candle-transformers.
#[test]
fn real_splade_tiny_matches_candle_transformers() {
    let dir = common::fetched_model("splade-tiny");
    let ours = RewardModel::load(&dir, &LoadOptions::default()).unwrap();
    let text_pairs =
        [("What is a reward model?", "A model that scores responses."), ("Hi", "Hello there, how are you?")];
    let batch = ours.encode(&text_pairs).unwrap();
    let a = ours.encoder.forward(&batch.input_ids, &batch.token_type_ids, &batch.attention_mask, &Ctx::eval()).unwrap();
    let config: ct_bert::Config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[dir.join("model.safetensors")], DType::F32, &Device::Cpu).unwrap()
    };
    let vb = vb.rename_f(|name: &str| {
        name.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
    });
    let theirs = ct_bert::BertModel::load(vb, &config).unwrap();
    let b = theirs.forward(&batch.input_ids, &batch.token_type_ids, Some(&batch.attention_mask)).unwrap();
    let lengths: Vec<usize> =
        batch.attention_mask.sum(1).unwrap().to_vec1::<u32>().unwrap().iter().map(|&l| l as usize).collect();
    assert_close_on_tokens(&a, &b, &lengths, "splade-tiny");
}
