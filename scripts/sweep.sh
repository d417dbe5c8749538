#!/usr/bin/env bash
# Runs one config over several seeds, evaluates each run, then prints the paper's tables.
#   scripts/sweep.sh configs/baseline-minilm.json 1 2 3 4 5
# Environment: DATA (prepared folder, default: the config's), RUNS (default runs/), EXTRA (more train flags).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 CONFIG SEED..." >&2; exit 2; }
cd "$(dirname "$0")/.."
config=$1; shift
name=$(basename "$config" .json)
method=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("method", ""))' "$config")
case $method in
  baseline|baselora) command=train-baseline ;;
  more|rodos|arliss|dmoerm) command=train-$method ;;
  *) echo "$config names no known \"method\" (baseline, baselora, rodos, …)" >&2; exit 2 ;;
esac
bin=target/release/rmroute
cargo build --release --locked --quiet
data=${DATA:-$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("data", "prepared"))' "$config")}
runs=()
for seed in "$@"; do
  out=${RUNS:-runs}/$name-seed$seed
  if [ -f "$out/rmroute.json" ]; then
    echo "$out is done; skipping training" >&2
  elif [ -d "$out/checkpoint" ] || [ -d "$out/stages" ]; then
    $bin $command --config "$config" --seed "$seed" --out "$out" --data "$data" --resume ${EXTRA:-}
  else
    $bin $command --config "$config" --seed "$seed" --out "$out" --data "$data" ${EXTRA:-}
  fi
  $bin eval --model "$out" --data "$data"
  runs+=("$out")
done
$bin report "${runs[@]}" --out "${RUNS:-runs}/$name-report" --plot
