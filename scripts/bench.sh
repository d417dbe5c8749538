#!/usr/bin/env bash
# rmroute against PyTorch + transformers (+ PEFT) on the same CPU, measured side by side in one run
# (never a timed test): scoring a batch of 32 sequences x 128 tokens, one full fine-tuning step and one
# LoRA step (16 pairs x 128 tokens), and each one's peak resident memory, for MiniLM and a
# DeBERTa-v3-base-shaped model with random weights; on request, a GPT-2-shaped one (124M, random; no LoRA
# row: the reference script names BERT's and DeBERTa's modules only). Each mode runs in its own process, rmroute and
# PyTorch alternating, with the same threads. Prints the Markdown table the README shows.
#
#   scripts/bench.sh                     # both backbones
#   scripts/bench.sh minilm              # or deberta-v3-base, or gpt2
#
# Environment:
#   BENCH_VENV   the PyTorch venv (made on first use from PyPI, shared with scripts/python-roundtrip.sh:
#                torch transformers peft safetensors, about 5.6 GB) default $HOME/.cache/rmroute/roundtrip-venv
#   THREADS      threads for both (default: the machine's cores)
#   WARMUP, ITERS  untimed and timed iterations per mode (default 2 and 7; medians are reported)
#   KEEP_WORK=1  keep the JSON figures and the random DeBERTa checkpoint
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
backbones=${1:-minilm,deberta-v3-base}
threads=${THREADS:-$(nproc)}
warmup=${WARMUP:-2}
iters=${ITERS:-7}
venv=${BENCH_VENV:-${ROUNDTRIP_VENV:-$HOME/.cache/rmroute/roundtrip-venv}}
reference=$repo/../shared/bench/torch_rm_bench.py
[ -f "$reference" ] || { echo "no PyTorch reference at $reference" >&2; exit 2; }

if ! "$venv/bin/python" -c 'import torch, transformers, peft, safetensors' 2>/dev/null; then
  echo "== making the Python venv $venv (torch transformers peft safetensors from PyPI)" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet torch transformers peft safetensors
fi
[ -d models/all-MiniLM-L6-v2 ] || scripts/fetch-models.sh >&2
cargo build --release --locked --quiet --example bench_rm
bin=$repo/target/release/examples/bench_rm

work=$(mktemp -d "${TMPDIR:-/tmp}/rmroute-bench.XXXXXX")
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT

# The DeBERTa-v3-base shape (184M parameters with its 128k vocabulary), random weights written by
# transformers in Hugging Face layout; the tokenizer is the fixture's (the benchmark feeds ids).
make_deberta() {
  local dir=$1
  "$venv/bin/python" - "$dir" "$repo/../shared/models/fixtures/tiny-deberta-v3-rm" <<'PY'
import shutil, sys, torch
from transformers import DebertaV2Config, DebertaV2Model
out, fixture = sys.argv[1:]
torch.manual_seed(0)
config = DebertaV2Config(vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=512, type_vocab_size=0,
                         relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                         share_att_key=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                         position_biased_input=False, layer_norm_eps=1e-7, hidden_act="gelu")
DebertaV2Model(config).save_pretrained(out)
for name in ("tokenizer.json", "spm.model", "tokenizer_config.json"):
    shutil.copy(f"{fixture}/{name}", f"{out}/{name}")
PY
}

# The GPT-2 shape (openai-community/gpt2's config: 124M parameters), random weights written by
# transformers; the tokenizer is the tiny fixture's (the benchmark feeds ids).
make_gpt2() {
  local dir=$1
  "$venv/bin/python" - "$dir" "$repo/tests/fixtures/tiny-gpt2-rm" <<'PY'
import shutil, sys, torch
from transformers import GPT2Config, GPT2Model
out, fixture = sys.argv[1:]
torch.manual_seed(0)
GPT2Model(GPT2Config()).save_pretrained(out)
for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(f"{fixture}/{name}", f"{out}/{name}")
PY
}

# Runs a command in its own process; prints its JSON line with the process's peak resident bytes added.
measure() {
  local out=$1
  shift
  python3 - "$out" "$@" <<'PY'
import json, resource, subprocess, sys
out, command = sys.argv[1], sys.argv[2:]
run = subprocess.run(command, capture_output=True, text=True)
if run.returncode != 0:
    sys.stderr.write(run.stdout + run.stderr)
    sys.exit(f"failed: {' '.join(command)}")
lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
figures = json.loads(lines[-1]) if lines else {}
figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
json.dump(figures, open(out, "w"))
PY
}

IFS=, read -ra backbone_list <<< "$backbones"
for backbone in "${backbone_list[@]}"; do
  case $backbone in
    minilm) model=$repo/models/all-MiniLM-L6-v2 ;;
    deberta-v3-base) model=$work/deberta-v3-base-random; [ -d "$model" ] || make_deberta "$model" >&2 ;;
    gpt2) model=$work/gpt2-random; [ -d "$model" ] || make_gpt2 "$model" >&2 ;;
    *) echo "unknown backbone $backbone (minilm, deberta-v3-base, gpt2)" >&2; exit 2 ;;
  esac
  modes="infer infer_bf16 train_full train_lora"
  [ "$backbone" != gpt2 ] || modes="infer infer_bf16 train_full"
  for mode in $modes; do
    echo "== $backbone $mode" >&2
    RAYON_NUM_THREADS=$threads measure "$work/$backbone-$mode-rmroute.json" \
      "$bin" "$mode" --model "$model" --warmup "$warmup" --iters "$iters"
    # bf16 scoring is set beside PyTorch's f32 scoring (the reference has no bf16 mode).
    [ "$mode" != infer_bf16 ] || continue
    HF_HUB_OFFLINE=1 measure "$work/$backbone-$mode-torch.json" \
      "$venv/bin/python" "$reference" --model-dir "$model" --modes "$mode" --threads "$threads" \
      --warmup "$warmup" --iters "$iters" --json "$work/$backbone-$mode-torch-own.json"
  done
done

"$venv/bin/python" - "$work" "$backbones" "$threads" <<'PY'
import json, os, platform, subprocess, sys
work, backbones, threads = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
import torch, transformers
names = {"minilm": "all-MiniLM-L6-v2 (22.7M)", "deberta-v3-base": "DeBERTa-v3-base shape, random (184M)",
         "gpt2": "GPT-2 shape, random (124M)"}
modes = {"infer": "scoring, s per batch (32 x 128)", "infer_bf16": "scoring in bf16 (`--dtype bf16`) vs PyTorch f32",
         "train_full": "full fine-tuning, s per step (16 pairs)",
         "train_lora": "LoRA r 8 q/k/v/attn-out, s per step"}
git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"rmroute {git}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{threads} threads on {os.cpu_count()} cores ({platform.machine()})\n")
print("| backbone | work | rmroute | PyTorch | speed vs PyTorch | peak memory rmroute / PyTorch |")
print("|---|---|---:|---:|---:|---:|")
for backbone in backbones:
    for mode, label in modes.items():
        if not os.path.exists(f"{work}/{backbone}-{mode}-rmroute.json"):
            continue
        ours = json.load(open(f"{work}/{backbone}-{mode}-rmroute.json"))
        ref = "infer" if mode == "infer_bf16" else mode
        theirs_own = json.load(open(f"{work}/{backbone}-{ref}-torch-own.json"))["results"][ref]
        theirs_rss = json.load(open(f"{work}/{backbone}-{ref}-torch.json"))["peak_rss_bytes"]
        a, b = ours["median_s_per_batch"], theirs_own["median_s_per_batch"]
        mib = lambda x: x / 2**20
        print(f"| {names[backbone]} | {label} | {a:.3f} | {b:.3f} | {b / a:.2f}x | "
              f"{mib(ours['peak_rss_bytes']):.0f} / {mib(theirs_rss):.0f} MiB ({ours['peak_rss_bytes'] / theirs_rss:.2f}x) |")
PY
[ "${KEEP_WORK:-0}" != 1 ] || echo "figures kept in $work" >&2
