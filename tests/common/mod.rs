//! Shared test helpers: where the shared fixtures and fetched models are, and tiny random checkpoints
//! written from Rust.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// `../shared/models/fixtures/<name>`; CI runs with `shared/` beside the clone.
pub fn fixture(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/models/fixtures").join(name);
    assert!(dir.is_dir(), "fixture {} is missing: the tests need ../shared beside the checkout", dir.display());
    dir
}

/// A model fetched by `scripts/fetch-models.sh` (which the README's test command runs first).
pub fn fetched_model(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models").join(name);
    assert!(dir.join("model.safetensors").is_file(), "{} is missing: run scripts/fetch-models.sh", dir.display());
    dir
}

fn random(rng: &mut StdRng, shape: &[usize], std: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * std * 1.7).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn layer_norm(t: &mut HashMap<String, Tensor>, rng: &mut StdRng, name: &str, h: usize) {
    let w: Vec<f32> = (0..h).map(|_| 1.0 + (rng.random::<f32>() - 0.5) * 0.4).collect();
    t.insert(format!("{name}.weight"), Tensor::from_vec(w, h, &Device::Cpu).unwrap());
    t.insert(format!("{name}.bias"), random(rng, &[h], 0.1));
}

fn linear(t: &mut HashMap<String, Tensor>, rng: &mut StdRng, name: &str, i: usize, o: usize) {
    t.insert(format!("{name}.weight"), random(rng, &[o, i], 0.2));
    t.insert(format!("{name}.bias"), random(rng, &[o], 0.1));
}

/// A tokenizer.json with a word-level vocabulary of `vocab` tokens `w0…`, plus BERT-style specials at 0-3.
pub fn word_tokenizer_json(vocab: usize) -> serde_json::Value {
    let mut v = serde_json::Map::new();
    for (i, s) in ["[PAD]", "[CLS]", "[SEP]", "[UNK]"].iter().enumerate() {
        v.insert(s.to_string(), i.into());
    }
    for i in 4..vocab {
        v.insert(format!("w{i}"), i.into());
    }
    let special = |id: usize, c: &str| serde_json::json!({"id": id, "content": c, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true});
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "[PAD]"), special(1, "[CLS]"), special(2, "[SEP]"), special(3, "[UNK]")],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "[SEP]", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]}, "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}}},
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": v, "unk_token": "[UNK]"}
    })
}

/// Options for the tiny random DeBERTa-v3-style checkpoint.
pub struct TinyDeberta {
    pub share_att_key: bool,
    pub position_biased_input: bool,
    pub embedding_size: Option<usize>,
    pub type_vocab_size: usize,
    pub position_buckets: i64,
    pub with_head: bool,
}

impl Default for TinyDeberta {
    fn default() -> Self {
        Self {
            share_att_key: true,
            position_biased_input: false,
            embedding_size: None,
            type_vocab_size: 0,
            position_buckets: 8,
            with_head: true,
        }
    }
}

pub const VOCAB: usize = 64;

/// Writes a tiny random DeBERTa-v3-style checkpoint (hidden 32, 2 layers, 4 heads) into `dir`.
pub fn write_tiny_deberta(dir: &Path, seed: u64, o: &TinyDeberta) {
    let (h, layers, inter) = (32, 2, 48);
    let e = o.embedding_size.unwrap_or(h);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    t.insert("deberta.embeddings.word_embeddings.weight".into(), random(&mut rng, &[VOCAB, e], 0.5));
    if o.position_biased_input {
        t.insert("deberta.embeddings.position_embeddings.weight".into(), random(&mut rng, &[64, e], 0.5));
    }
    if o.type_vocab_size > 0 {
        t.insert(
            "deberta.embeddings.token_type_embeddings.weight".into(),
            random(&mut rng, &[o.type_vocab_size, e], 0.5),
        );
    }
    if e != h {
        t.insert("deberta.embeddings.embed_proj.weight".into(), random(&mut rng, &[h, e], 0.2));
    }
    layer_norm(&mut t, &mut rng, "deberta.embeddings.LayerNorm", h);
    let span = if o.position_buckets > 0 { o.position_buckets as usize } else { 64 };
    t.insert("deberta.encoder.rel_embeddings.weight".into(), random(&mut rng, &[2 * span, h], 0.5));
    layer_norm(&mut t, &mut rng, "deberta.encoder.LayerNorm", h);
    for i in 0..layers {
        let p = format!("deberta.encoder.layer.{i}");
        for proj in ["query_proj", "key_proj", "value_proj"] {
            linear(&mut t, &mut rng, &format!("{p}.attention.self.{proj}"), h, h);
        }
        if !o.share_att_key {
            linear(&mut t, &mut rng, &format!("{p}.attention.self.pos_key_proj"), h, h);
            linear(&mut t, &mut rng, &format!("{p}.attention.self.pos_query_proj"), h, h);
        }
        linear(&mut t, &mut rng, &format!("{p}.attention.output.dense"), h, h);
        layer_norm(&mut t, &mut rng, &format!("{p}.attention.output.LayerNorm"), h);
        linear(&mut t, &mut rng, &format!("{p}.intermediate.dense"), h, inter);
        linear(&mut t, &mut rng, &format!("{p}.output.dense"), inter, h);
        layer_norm(&mut t, &mut rng, &format!("{p}.output.LayerNorm"), h);
    }
    if o.with_head {
        linear(&mut t, &mut rng, "pooler.dense", h, h);
        linear(&mut t, &mut rng, "classifier", h, 1);
    }
    let mut config = serde_json::json!({
        "model_type": "deberta-v2", "architectures": ["DebertaV2ForSequenceClassification"],
        "vocab_size": VOCAB, "hidden_size": h, "num_hidden_layers": layers, "num_attention_heads": 4,
        "intermediate_size": inter, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 64, "type_vocab_size": o.type_vocab_size, "initializer_range": 0.02, "layer_norm_eps": 1e-7,
        "relative_attention": true, "max_relative_positions": -1, "position_buckets": o.position_buckets,
        "pad_token_id": 0, "position_biased_input": o.position_biased_input, "pos_att_type": "p2c|c2p",
        "norm_rel_ebd": "layer_norm", "share_att_key": o.share_att_key, "pooler_hidden_size": h, "pooler_dropout": 0,
        "pooler_hidden_act": "gelu", "num_labels": 1
    });
    if let Some(e) = o.embedding_size {
        config["embedding_size"] = e.into();
    }
    write_checkpoint(dir, &t, &config);
}

/// Writes a tiny random BERT checkpoint (hidden 32, 2 layers, 4 heads); `prefixed` adds `bert.`.
pub fn write_tiny_bert(dir: &Path, seed: u64, prefixed: bool, with_head: bool) {
    let (h, layers, inter) = (32, 2, 48);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = HashMap::new();
    let pre = if prefixed { "bert." } else { "" };
    t.insert(format!("{pre}embeddings.word_embeddings.weight"), random(&mut rng, &[VOCAB, h], 0.5));
    t.insert(format!("{pre}embeddings.position_embeddings.weight"), random(&mut rng, &[64, h], 0.5));
    t.insert(format!("{pre}embeddings.token_type_embeddings.weight"), random(&mut rng, &[2, h], 0.5));
    layer_norm(&mut t, &mut rng, &format!("{pre}embeddings.LayerNorm"), h);
    for i in 0..layers {
        let p = format!("{pre}encoder.layer.{i}");
        for proj in ["query", "key", "value"] {
            linear(&mut t, &mut rng, &format!("{p}.attention.self.{proj}"), h, h);
        }
        linear(&mut t, &mut rng, &format!("{p}.attention.output.dense"), h, h);
        layer_norm(&mut t, &mut rng, &format!("{p}.attention.output.LayerNorm"), h);
        linear(&mut t, &mut rng, &format!("{p}.intermediate.dense"), h, inter);
        linear(&mut t, &mut rng, &format!("{p}.output.dense"), inter, h);
        layer_norm(&mut t, &mut rng, &format!("{p}.output.LayerNorm"), h);
    }
    if with_head {
        linear(&mut t, &mut rng, &format!("{pre}pooler.dense"), h, h);
        linear(&mut t, &mut rng, "classifier", h, 1);
    }
    let config = serde_json::json!({
        "model_type": "bert", "architectures": ["BertForSequenceClassification"], "vocab_size": VOCAB, "hidden_size": h,
        "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": inter, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0, "num_labels": 1
    });
    write_checkpoint(dir, &t, &config);
}

fn write_checkpoint(dir: &Path, tensors: &HashMap<String, Tensor>, config: &serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(config).unwrap()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_vec(&word_tokenizer_json(VOCAB)).unwrap()).unwrap();
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Domain `name` with prompts from words `w{lo}..w{lo+12}`; the chosen response holds `good` where the
/// rejected one holds `bad`. Domains with opposite markers make a misrouted pair scored wrong.
#[allow(clippy::too_many_arguments)]
pub fn write_domain(
    data: &Path,
    name: &str,
    lo: usize,
    (good, bad): (&str, &str),
    train: usize,
    test: usize,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut write = |split: &str, n: usize| {
        let mut text = String::new();
        for i in 0..n {
            let prompt: Vec<String> = (0..4).map(|_| format!("w{}", rng.random_range(lo..lo + 12))).collect();
            let body: Vec<String> = (0..4).map(|_| format!("w{}", rng.random_range(47..VOCAB))).collect();
            let at = i % 4;
            let (mut chosen, mut rejected) = (body.clone(), body);
            chosen.insert(at, good.into());
            rejected.insert(at, bad.into());
            let record = serde_json::json!({"id": format!("{name}/{split}/{i}"), "domain": name, "prompt": prompt.join(" "),
                "chosen": chosen.join(" "), "rejected": rejected.join(" ")});
            text.push_str(&format!("{record}\n"));
        }
        std::fs::create_dir_all(data.join(name)).unwrap();
        std::fs::write(data.join(name).join(format!("{split}.jsonl")), text).unwrap();
    };
    write("train", train);
    write("test", test);
}

/// Three domains with names that are none of the paper's five.
pub fn write_three_domains(data: &Path) {
    write_domain(data, "alpha", 8, ("w5", "w6"), 64, 40, 1);
    write_domain(data, "beta", 21, ("w6", "w5"), 64, 40, 2);
    write_domain(data, "gamma", 34, ("w7", "w4"), 48, 40, 3);
}

/// Every file under `dir`, by relative path, with its bytes.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// Runs the `rmroute` binary as a user would.
pub fn rmroute(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rmroute")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

/// The standard output of a run that must have succeeded (its standard error otherwise).
pub fn stdout_ok(output: std::process::Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// A stage key for a training run that nothing resumes.
pub fn no_key() -> rmroute::train::stage::StageKey {
    rmroute::train::stage::StageKey::new(&(), String::new()).unwrap()
}

/// A preference task with a known answer: the chosen response contains the marker `w5`, the rejected
/// one `w6` in its place; everything else is random words `w8`…, one token each in the word tokenizer.
pub fn write_marker_task(dir: &Path, train: usize, test: usize) {
    let filler: Vec<String> = (8..VOCAB).map(|i| format!("w{i}")).collect();
    write_marker_task_in(dir, train, test, ("w5", "w6"), &filler);
}

/// Words that are one token each in the byte-level BPE of `tests/fixtures/tiny-{roberta,gpt2}-rm`
/// (where `w5` would be two tokens that `w55` also starts with), and the markers among them.
pub const BPE_MARKERS: (&str, &str) = ("help", "not");
pub const BPE_FILLER: [&str; 20] = [
    "about", "also", "and", "are", "but", "can", "for", "from", "have", "know", "like", "more", "some", "that", "the",
    "they", "this", "use", "want", "with",
];

/// The marker task (`dahoas/{train,test}.jsonl`) with the given markers (chosen, rejected) and filler.
pub fn write_marker_task_in<S: AsRef<str>>(dir: &Path, train: usize, test: usize, markers: (&str, &str), filler: &[S]) {
    let mut rng = StdRng::seed_from_u64(17);
    let mut words =
        |n: usize| (0..n).map(|_| filler[rng.random_range(0..filler.len())].as_ref().to_string()).collect::<Vec<_>>();
    let mut write = |name: &str, n: usize| {
        let mut text = String::new();
        for i in 0..n {
            let prompt = words(4).join(" ");
            let body = words(5);
            let at = i % 5;
            let mut chosen = body.clone();
            chosen.insert(at, markers.0.into());
            let mut rejected = body;
            rejected.insert(at, markers.1.into());
            let record = serde_json::json!({"id": format!("dahoas/{name}/{i}"), "domain": "dahoas", "prompt": prompt,
                "chosen": chosen.join(" "), "rejected": rejected.join(" ")});
            text.push_str(&format!("{record}\n"));
        }
        std::fs::create_dir_all(dir.join("dahoas")).unwrap();
        std::fs::write(dir.join("dahoas").join(format!("{name}.jsonl")), text).unwrap();
    };
    write("train", train);
    write("test", test);
}

/// A fixture of `tests/fixtures` (committed with the script that made it).
pub fn repo_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}
