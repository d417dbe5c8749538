#!/usr/bin/env bash
# The router ablation of issue 32: RODOS's router (and ARLISS's router adapter) trained alone with
# `train-<method> --only router` and measured with `eval-router`, beside the PyTorch reference
# (scripts/torch_router.py) on the same data with the same settings, one setting changed at a time.
# Prints a Markdown table of router accuracy on the test split (over pairs and over distinct prompts).
#
#   scripts/router-ablation.sh DATA [SETTINGS...]
#
# DATA is a prepared folder whose domains the router chooses among (all of its domains; cap a big one
# beforehand so that both tools see the same pairs). Each SETTING is a name (default: all of them):
#   base         the issue's setting: MiniLM, 1 epoch, batch 32, lr 2e-5, warm-up 0.1, 128 tokens, seed 1,
#                class weights, prompts cut keeping their start (rmroute's router before issue 32)
#   keep_end     base, prompts cut keeping their end (transformers' truncation_side="left")
#   no_weights   keep_end without class weights
#   sampling     keep_end, each epoch drawn domain first (rmroute only: the reference has no sampler)
#   epochs3      keep_end, 3 epochs
#   lr5e-5       keep_end, lr 5e-5
#   seed2        keep_end, seed 2 (the spread between seeds)
#   arliss       ARLISS's router adapter (LoRA r 12, alpha 768, dropout 0.1 on query/key/value/dense,
#                as configs/arliss-minilm.json) with base's settings
#   arliss_keep_end   the adapter with keep_end
#
# Environment: RMROUTE_BIN (default: target/release/rmroute, built if missing), BENCH_VENV (the PyTorch
# venv of scripts/bench.sh), WORK (default: a temporary folder, kept), TORCH=0 to skip the reference.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ $# -ge 1 ] || { sed -n '2,25p' "$0"; exit 2; }
data=$(realpath "$1")
shift
settings=${*:-base keep_end no_weights sampling epochs3 lr5e-5 seed2 arliss arliss_keep_end}
venv=${BENCH_VENV:-${ROUNDTRIP_VENV:-$HOME/.cache/rmroute/roundtrip-venv}}
work=$(realpath -m "${WORK:-$(mktemp -d)}")
mkdir -p "$work"
cd "$repo"
[ -d models/all-MiniLM-L6-v2 ] || scripts/fetch-models.sh
if [ "${TORCH:-1}" = 1 ] && ! "$venv/bin/python" -c 'import torch, transformers, peft' 2>/dev/null; then
  echo "== making the Python venv $venv (torch transformers peft safetensors from PyPI)" >&2
  mkdir -p "$(dirname "$venv")"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet torch transformers peft safetensors
fi
bin=${RMROUTE_BIN:-$repo/target/release/rmroute}
[ -x "$bin" ] || cargo build --release --locked
domains=$(cd "$data" && ls -d */ | tr -d / | paste -sd, -)
echo "data: $data ($domains); work: $work" >&2

for setting in $settings; do
  method=rodos epochs=1 lr=2e-5 seed=1 balance=class_weights cut=keep_start lora=0
  case $setting in
    base) ;;
    keep_end) cut=keep_end ;;
    no_weights) cut=keep_end balance=none ;;
    sampling) cut=keep_end balance=sampling ;;
    epochs3) cut=keep_end epochs=3 ;;
    lr5e-5) cut=keep_end lr=5e-5 ;;
    seed2) cut=keep_end seed=2 ;;
    arliss) method=arliss lora=12 ;;
    arliss_keep_end) method=arliss lora=12 cut=keep_end ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac
  python3 - "$repo/configs/$method-minilm.json" "$work/$setting.json" "$data" "$work/$setting" \
    "$epochs" "$lr" "$seed" "$balance" "$cut" <<'EOF'
import json, sys
source, target, data, out, epochs, lr, seed, balance, cut = sys.argv[1:]
config = json.load(open(source))
config.update({"data": data, "out": out, "epochs": int(epochs), "lr": float(lr), "seed": int(seed),
               "batch_size": 32, "warmup_ratio": 0.1, "max_length": 128, "log_every": 10})
config[config["method"]]["router"] = {"balance": balance, "truncation": cut}
json.dump(config, open(target, "w"), indent=2)
EOF
  echo "== $setting: rmroute" >&2
  start=$(date +%s)
  "$bin" "train-$method" --config "$work/$setting.json" --only router --force --quiet >/dev/null
  "$bin" eval-router --model "$work/$setting" --data "$data" --out "$work/$setting-rmroute.json" >/dev/null
  echo "$(( $(date +%s) - start ))" >"$work/$setting-rmroute.seconds"
  if [ "${TORCH:-1}" = 1 ] && [ "$balance" != sampling ]; then
    echo "== $setting: PyTorch" >&2
    side=$([ "$cut" = keep_end ] && echo left || echo right)
    start=$(date +%s)
    "$venv/bin/python" scripts/torch_router.py --backbone models/all-MiniLM-L6-v2 --data "$data" \
      --domains "$domains" --epochs "$epochs" --lr "$lr" --seed "$seed" --balance "$balance" \
      --truncation-side "$side" --lora "$lora" --lora-alpha 768 --lora-dropout 0.1 --max-length 128 \
      --threads "$(nproc)" >"$work/$setting-torch.json"
    echo "$(( $(date +%s) - start ))" >"$work/$setting-torch.seconds"
  fi
done

python3 - "$work" "$domains" $settings <<'EOF'
import json, os, sys
work, domains, settings = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
def load(path):
    return json.load(open(path)) if os.path.exists(path) else None
cols = " | ".join(f"{d} pairs | {d} prompts" for d in domains)
print(f"| setting | tool | {cols} | all pairs | all prompts | s |")
print("|---|---|" + "---:|" * (2 * len(domains) + 3))
for setting in settings:
    for tool in ["rmroute", "torch"]:
        r = load(f"{work}/{setting}-{tool}.json")
        if r is None:
            continue
        if tool == "rmroute":
            pairs, prompts, all_pairs, all_prompts = r["per_domain"], r["per_domain_prompts"], r["accuracy"], r["prompt_accuracy"]
        else:
            pairs, prompts, all_pairs, all_prompts = r["per_pair"], r["per_prompt"], r["accuracy"], r["prompt_accuracy"]
        seconds = open(f"{work}/{setting}-{tool}.seconds").read().strip()
        cells = " | ".join(f"{pairs[d]:.3f} | {prompts[d]:.3f}" for d in domains)
        ap = f"{all_prompts:.3f}" if all_prompts is not None else "-"
        print(f"| {setting} | {'PyTorch' if tool == 'torch' else 'rmroute'} | {cells} | {all_pairs:.3f} | {ap} | {seconds} |")
EOF
