#!/usr/bin/env bash
# `rmroute eval` end to end against PyTorch on the real test splits (never a timed test): the same
# model, the same pairs, the same max_length, the same threads. rmroute cuts batches by length (each
# padded to its longest row); PyTorch scores in file order, each batch padded to its longest row, and
# padded to max_length. Both accuracies are printed: they must agree.
#
#   scripts/bench-eval.sh                      # all-MiniLM-L6-v2 at 512 tokens on ../shared/data
#   BACKBONE=models/splade-tiny MAX_LENGTH=128 scripts/bench-eval.sh
#
# The model is a Baseline run trained here for a few steps (TRAIN_PAIRS per domain, default 8, in batches of 4): the
# timing needs a model in rmroute's run layout, not a good one. Environment: DATA (raw or prepared,
# default ../shared/data), THREADS, BENCH_VENV (the PyTorch venv of scripts/bench.sh), KEEP_WORK=1,
# PADDINGS (PyTorch's runs, default "longest max_length"; "longest" alone halves the time), DTYPE
# (rmroute's --dtype, default f32).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
backbone=${BACKBONE:-models/all-MiniLM-L6-v2}
max_length=${MAX_LENGTH:-512}
train_pairs=${TRAIN_PAIRS:-8}
data=${DATA:-$repo/../shared/data}
threads=${THREADS:-$(nproc)}
paddings=${PADDINGS:-longest max_length}
dtype=${DTYPE:-f32}
venv=${BENCH_VENV:-${ROUNDTRIP_VENV:-$HOME/.cache/rmroute/roundtrip-venv}}

if ! "$venv/bin/python" -c 'import torch, transformers' 2>/dev/null; then
  echo "== making the Python venv $venv (torch transformers peft safetensors from PyPI)" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet torch transformers peft safetensors
fi
[ -d "$backbone" ] || scripts/fetch-models.sh >&2
cargo build --release --locked --quiet
bin=$repo/target/release/rmroute

work=$(mktemp -d "${TMPDIR:-/tmp}/rmroute-bench-eval.XXXXXX")
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
if [ -f "$data/stats.json" ]; then
  prepared=$data
else
  prepared=$work/prepared
  "$bin" prepare --input "$data" --out "$prepared" --seed 1 >&2
fi
cat >"$work/config.json" <<EOF
{"method": "baseline", "backbone": "$backbone", "data": "$prepared", "seed": 1, "epochs": 1,
 "batch_size": 4, "lr": 0.0001, "max_length": $max_length, "max_pairs": $train_pairs, "device": "cpu"}
EOF
echo "== training a $backbone Baseline on $train_pairs pairs per domain (a model to time, not a good one)" >&2
"$bin" train-baseline --config "$work/config.json" --out "$work/run" --quiet >&2

# Wall time of a whole process, with its JSON or its output kept.
timed() {
  local out=$1
  shift
  local start end
  start=$(date +%s.%N)
  "$@" >"$out" || { echo "failed: $*" >&2; return 1; } # set -e does not reach into $(...)
  end=$(date +%s.%N)
  python3 -c "print($end - $start)"
}
echo "== rmroute eval --dtype $dtype" >&2
ours_s=$(RAYON_NUM_THREADS=$threads timed "$work/rmroute.txt" \
  "$bin" eval --model "$work/run" --data "$prepared" --dtype "$dtype" --out "$work/rmroute.json")
for padding in $paddings; do
  echo "== PyTorch, padded to $padding" >&2
  HF_HUB_OFFLINE=1 timed "$work/torch-$padding.json" "$venv/bin/python" scripts/torch_eval.py \
    --run "$work/run" --data "$prepared" --padding "$padding" --threads "$threads" >"$work/torch-$padding.s"
done

python3 - "$work" "$ours_s" "$backbone" "$max_length" "$threads" "$dtype" "$paddings" <<'PY'
import json, sys
work, ours_s, backbone, max_length, threads, dtype, paddings = sys.argv[1], float(sys.argv[2]), *sys.argv[3:]
ours = json.load(open(f"{work}/rmroute.json"))
pairs = sum(d["pairs"] for d in ours["domains"].values())
print(f"{backbone}, max_length {max_length}, {pairs} test pairs, {threads} threads\n")
print("| engine | batches | process, s | scoring, pairs/s | rmroute speed (process) | "
      + " | ".join(ours["domains"]) + " |")
print("|---|---|---:|---:|---:|" + "---:|" * len(ours["domains"]))
accuracy = lambda r: " | ".join(f"{r['domains'][d]['accuracy']:.4f}" for d in ours["domains"])
print(f"| rmroute eval --dtype {dtype} | cut by length, padded to the longest | {ours_s:.1f} | {ours['pairs_per_second']:.1f} | 1.00x | "
      f"{accuracy(ours)} |")
disagree = []
labels = {"longest": "file order, padded to the longest", "max_length": "file order, padded to max_length"}
for padding in paddings.split():
    label = labels[padding]
    theirs = json.load(open(f"{work}/torch-{padding}.json"))
    disagree += [d for d in ours["domains"] if abs(ours["domains"][d]["accuracy"] - theirs["domains"][d]["accuracy"]) > 1e-9]
    process = float(open(f"{work}/torch-{padding}.s").read())
    print(f"| PyTorch + transformers | {label} | {process:.1f} | {pairs / theirs['scoring_s']:.1f} | "
          f"{process / ours_s:.2f}x | {accuracy(theirs)} |")
if disagree and dtype == "f32":
    sys.exit(f"the engines' accuracies differ on {sorted(set(disagree))}: the models or inputs are not the same")
if disagree:
    print(f"\n{dtype} rounding moved accuracy on {sorted(set(disagree))} (near-tied pairs flip; f32 must agree)")
PY
[ "${KEEP_WORK:-0}" != 1 ] || echo "figures kept in $work" >&2
