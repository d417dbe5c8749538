#!/usr/bin/env bash
# Writes tests/fixtures/legacy-runs/: one finished run of each method, trained by an older rmroute binary
# on a tiny random BERT (hidden 32, 2 layers, written here) and three word domains whose chosen responses
# carry a marker word, with the rewards that binary scored on each domain's test pairs
# (`expected/<method>-<domain>.jsonl`); and two unfinished runs of that binary (`unfinished/`): a RODOS
# run whose router had not started, and a Baseline run killed mid-training with its checkpoint, with the
# rewards that binary scored once it resumed copies of them to the end (`expected/resumed-…`).
# tests/legacy_runs.rs checks that today's code loads, scores, resumes and extends these runs with the
# same rewards.
#
#   scripts/make_legacy_runs.sh OLD_BIN [OUT]     # OUT defaults to tests/fixtures/legacy-runs
#
# The fixture in the repository was made with rmroute 0.1.0 at commit e81c131 (before the layers issue).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,11p' "$0"; exit 2; }
bin=$(realpath "$1")
out=$(realpath -m "${2:-$repo/tests/fixtures/legacy-runs}")
rm -rf "$out"
mkdir -p "$out"
cd "$out"

python3 - <<'EOF'
import json, os, random, struct

def save_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        shape, values = tensors[name]
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))

rng = random.Random(20261204)
def rand(*shape, scale=0.2):
    n = 1
    for d in shape:
        n *= d
    return list(shape), [rng.uniform(-scale, scale) * 1.7 for _ in range(n)]

vocab, h, inter, layers = 64, 32, 48, 2
t = {}
t["embeddings.word_embeddings.weight"] = rand(vocab, h, scale=0.5)
t["embeddings.position_embeddings.weight"] = rand(64, h, scale=0.5)
t["embeddings.token_type_embeddings.weight"] = rand(2, h, scale=0.5)
def layer_norm(name):
    t[f"{name}.weight"] = ([h], [1.0 + rng.uniform(-0.2, 0.2) for _ in range(h)])
    t[f"{name}.bias"] = rand(h, scale=0.1)
def linear(name, i, o):
    t[f"{name}.weight"] = rand(o, i)
    t[f"{name}.bias"] = rand(o, scale=0.1)
layer_norm("embeddings.LayerNorm")
for i in range(layers):
    p = f"encoder.layer.{i}"
    for proj in ["query", "key", "value"]:
        linear(f"{p}.attention.self.{proj}", h, h)
    linear(f"{p}.attention.output.dense", h, h)
    layer_norm(f"{p}.attention.output.LayerNorm")
    linear(f"{p}.intermediate.dense", h, inter)
    linear(f"{p}.output.dense", inter, h)
    layer_norm(f"{p}.output.LayerNorm")
os.makedirs("backbone", exist_ok=True)
save_safetensors("backbone/model.safetensors", t)
config = {
    "model_type": "bert", "architectures": ["BertModel"], "vocab_size": vocab, "hidden_size": h,
    "num_hidden_layers": layers, "num_attention_heads": 4, "intermediate_size": inter, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
    "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0,
}
json.dump(config, open("backbone/config.json", "w"), indent=2)
special = lambda i, c: {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
                        "normalized": False, "special": True}
words = {s: i for i, s in enumerate(["[PAD]", "[CLS]", "[SEP]", "[UNK]"])}
words.update({f"w{i}": i for i in range(4, vocab)})
tokenizer = {
    "version": "1.0", "truncation": None, "padding": None,
    "added_tokens": [special(0, "[PAD]"), special(1, "[CLS]"), special(2, "[SEP]"), special(3, "[UNK]")],
    "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
    "post_processor": {"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                   {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [1], "tokens": ["[CLS]"]},
                           "[SEP]": {"id": "[SEP]", "ids": [2], "tokens": ["[SEP]"]}}},
    "decoder": None, "model": {"type": "WordLevel", "vocab": words, "unk_token": "[UNK]"},
}
json.dump(tokenizer, open("backbone/tokenizer.json", "w"))

# Three domains with their own prompt words; the chosen response holds the domain's good marker where
# the rejected one holds its bad one. alpha's pairs carry a capability point (DMoERM's experts).
for name, lo, (good, bad) in [("alpha", 8, ("w5", "w6")), ("beta", 21, ("w6", "w5")), ("gamma", 34, ("w7", "w4"))]:
    os.makedirs(f"data/{name}", exist_ok=True)
    for split, n in [("train", 48), ("test", 16)]:
        with open(f"data/{name}/{split}.jsonl", "w") as f:
            for i in range(n):
                prompt = " ".join(f"w{rng.randrange(lo, lo + 12)}" for _ in range(4))
                body = [f"w{rng.randrange(47, vocab)}" for _ in range(4)]
                chosen, rejected = body[:], body[:]
                chosen.insert(i % 4, good)
                rejected.insert(i % 4, bad)
                record = {"id": f"{name}/{split}/{i}", "domain": name, "prompt": prompt,
                          "chosen": " ".join(chosen), "rejected": " ".join(rejected)}
                if name == "alpha":
                    record["aspects"] = {"fluency": 1 if i % 5 else -1}
                f.write(json.dumps(record) + "\n")
EOF

# Small settings every method shares; the paths are relative to the repository, where tests run.
rel=${out#"$repo"/}
common='"backbone": "'$rel'/backbone", "data": "'$rel'/data", "seed": 5, "epochs": 2, "batch_size": 16,
  "lr": 5e-3, "warmup_ratio": 0.1, "max_length": 32, "log_every": 1'
lora='"lora": {"r": 4, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["query", "value", "dense"]}'
router='"router": {"epochs": 4, "lr": 5e-3, "balance": "class_weights"}'
mkdir -p configs
cat >configs/baseline.json <<EOF
{"method": "baseline", $common}
EOF
cat >configs/baselora.json <<EOF
{"method": "baselora", $common, $lora}
EOF
cat >configs/more.json <<EOF
{"method": "more", $common, "more": {"experts": 3, "top_k": 2, "expert_hidden": 32}}
EOF
cat >configs/rodos.json <<EOF
{"method": "rodos", $common, "rodos": {$router}}
EOF
cat >configs/arliss.json <<EOF
{"method": "arliss", $common, $lora, "arliss": {$router}}
EOF
cat >configs/dmoerm.json <<EOF
{"method": "dmoerm", $common, $lora, "dmoerm": {$router, "expert": {"epochs": 2}, "aggregator": {"epochs": 4, "lr": 1e-2}}}
EOF

cd "$repo"
for method in baseline baselora more rodos arliss dmoerm; do
  case $method in baseline | baselora) command=train-baseline ;; *) command=train-$method ;; esac
  "$bin" "$command" --config "$rel/configs/$method.json" --out "$rel/runs/$method" --quiet >/dev/null
  mkdir -p "$rel/expected"
  for domain in alpha beta gamma; do
    "$bin" score --model "$rel/runs/$method" --input "$rel/data/$domain/test.jsonl" \
      --out "$rel/expected/$method-$domain.jsonl" --quiet
  done
done
# Unfinished runs. RODOS: its reward models finished, its router not started.
mkdir -p "$rel/unfinished" "$rel/work"
"$bin" train-rodos --config "$rel/configs/rodos.json" --out "$rel/unfinished/rodos" --quiet >/dev/null
rm -rf "$rel/unfinished/rodos/rmroute.json" "$rel/unfinished/rodos/stages/router"
# Baseline: killed mid-training, with a checkpoint every step (the kill lands on some step of 360).
sed -e 's/"epochs": 2,/"epochs": 40,/' -e 's/"log_every": 1/"log_every": 10, "checkpoint_every": 1/' \
  "$rel/configs/baseline.json" >"$rel/configs/baseline-long.json"
timeout -s KILL 2 "$bin" train-baseline --config "$rel/configs/baseline-long.json" --out "$rel/unfinished/baseline" \
  --quiet >/dev/null 2>&1 || true
[ -f "$rel/unfinished/baseline/checkpoint/state.json" ] || { echo "the Baseline run left no checkpoint" >&2; exit 1; }
[ ! -f "$rel/unfinished/baseline/rmroute.json" ] || { echo "the Baseline run finished before the kill" >&2; exit 1; }
# What the older binary makes of them, resumed to the end where they are (that release resumes a stage
# only under the path it started in), then put back as they were.
for method in rodos baseline; do
  config=$rel/configs/$method.json
  [ "$method" = baseline ] && config=$rel/configs/baseline-long.json
  cp -r "$rel/unfinished/$method" "$rel/work/$method"
  "$bin" "train-$method" --config "$config" --out "$rel/unfinished/$method" --resume --quiet >/dev/null
  for domain in alpha beta gamma; do
    "$bin" score --model "$rel/unfinished/$method" --input "$rel/data/$domain/test.jsonl" \
      --out "$rel/expected/resumed-$method-$domain.jsonl" --quiet
  done
  rm -rf "$rel/unfinished/$method"
  mv "$rel/work/$method" "$rel/unfinished/$method"
done
rm -rf "$rel/work"
"$bin" --version >"$rel/VERSION"
du -sh "$out"
