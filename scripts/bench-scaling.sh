#!/usr/bin/env bash
# Does rmroute's time grow linearly with the data? Scores and trains on 1k, 4k and 16k real pairs (never
# a timed test) and prints seconds and pairs per second for each: flat pairs/s is linear growth.
#
#   scripts/bench-scaling.sh                     # SPLADE-tiny at 128 tokens, real pairs of ../shared/data
#   BACKBONE=models/all-MiniLM-L6-v2 SIZES=1000,4000 scripts/bench-scaling.sh
#
# The pairs are the prepared training pairs of every domain in turn (anthropic, hellaswag, oasst, ...),
# taken again from the start when the data runs out; scoring uses a Baseline trained here on 32 pairs,
# training is one epoch of Baseline at batch 16. Environment: DATA (raw or prepared), SIZES, BACKBONE,
# MAX_LENGTH, THREADS, KEEP_WORK=1.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
backbone=${BACKBONE:-models/splade-tiny}
max_length=${MAX_LENGTH:-128}
sizes=${SIZES:-1000,4000,16000}
data=${DATA:-$repo/../shared/data}
threads=${THREADS:-$(nproc)}

[ -d "$backbone" ] || scripts/fetch-models.sh >&2
cargo build --release --locked --quiet
bin=$repo/target/release/rmroute
work=$(mktemp -d "${TMPDIR:-/tmp}/rmroute-bench-scaling.XXXXXX")
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
if [ -f "$data/stats.json" ]; then
  prepared=$data
else
  prepared=$work/prepared
  "$bin" prepare --input "$data" --out "$prepared" --seed 1 >&2
fi

config() { # data dir, max_pairs or null
  cat <<EOF
{"method": "baseline", "backbone": "$backbone", "data": "$1", "seed": 1, "epochs": 1, "batch_size": 16,
 "lr": 0.0002, "max_length": $max_length, "max_pairs": $2, "device": "cpu"}
EOF
}
config "$prepared" 32 >"$work/scorer.json"
"$bin" train-baseline --config "$work/scorer.json" --out "$work/scorer" --quiet >&2

IFS=, read -ra size_list <<<"$sizes"
for n in "${size_list[@]}"; do
  # n pairs, domains interleaved, ids made unique; a small test split so training can finish its run.
  mkdir -p "$work/data-$n/scale"
  python3 - "$prepared" "$n" "$work/data-$n/scale" <<'PY'
import itertools, json, os, sys
prepared, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
domains = sorted(d for d in os.listdir(prepared) if os.path.isfile(os.path.join(prepared, d, "train.jsonl")))
pools = [[json.loads(l) for l in open(os.path.join(prepared, d, "train.jsonl")) if l.strip()] for d in domains]
rows = [r for group in itertools.zip_longest(*pools) for r in group if r is not None]
with open(os.path.join(out, "train.jsonl"), "w") as f:
    for i in range(n):
        r = dict(rows[i % len(rows)], id=f"scale/{i}", domain="scale")
        f.write(json.dumps(r) + "\n")
with open(os.path.join(out, "test.jsonl"), "w") as f:
    for i in range(16):
        f.write(json.dumps(dict(rows[i], id=f"scale-test/{i}", domain="scale")) + "\n")
PY
  echo "== $n pairs: scoring" >&2
  start=$(date +%s.%N)
  RAYON_NUM_THREADS=$threads "$bin" score --model "$work/scorer" --input "$work/data-$n/scale/train.jsonl" \
    --out "$work/scores-$n.jsonl" --quiet
  end=$(date +%s.%N)
  python3 -c "print($end - $start)" >"$work/score-$n.s"
  echo "== $n pairs: training one epoch" >&2
  config "$work/data-$n" null >"$work/train-$n.json"
  RAYON_NUM_THREADS=$threads "$bin" train-baseline --config "$work/train-$n.json" --out "$work/run-$n" --quiet >&2
done

python3 - "$work" "$sizes" "$backbone" "$max_length" "$threads" <<'PY'
import json, sys
work, sizes, backbone, max_length, threads = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], *sys.argv[3:]
print(f"{backbone}, max_length {max_length}, {threads} threads; scoring is the whole `rmroute score` process, "
      "training the epoch's own seconds (rmroute.json)\n")
print("| pairs | scoring, s | scoring, pairs/s | training one epoch, s | training, pairs/s |")
print("|---:|---:|---:|---:|---:|")
for n in sizes:
    score = float(open(f"{work}/score-{n}.s").read())
    train = sum(json.load(open(f"{work}/run-{n}/rmroute.json"))["epoch_seconds"])
    print(f"| {n} | {score:.1f} | {n / score:.0f} | {train:.1f} | {n / train:.1f} |")
PY
[ "${KEEP_WORK:-0}" != 1 ] || echo "figures kept in $work" >&2
