#!/usr/bin/env bash
# Load on `rmroute serve` over loopback against offline scoring of the same pairs (never a timed test;
# bounded: REQUESTS requests of PAIRS pairs at each of 1, 8 and 64 concurrent clients).
#   scripts/bench-serve.sh [MODEL_DIR]      default models/all-MiniLM-L6-v2 (fetched if missing)
# Environment: REQUESTS (default 64), PAIRS (default 4). Prints the Markdown table the README shows.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/all-MiniLM-L6-v2}
[ -d "$model" ] || scripts/fetch-models.sh
cargo build --release --locked --bin rmroute --example bench_serve
work=$(mktemp -d "${TMPDIR:-/tmp}/rmroute-bench-serve.XXXXXX")
trap 'rm -rf "$work"' EXIT
target/release/examples/bench_serve prepare "$work/model" --model "$model"
echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, $model"
echo
target/release/examples/bench_serve run "$work/model" --rmroute target/release/rmroute \
  --requests "${REQUESTS:-64}" --pairs "${PAIRS:-4}"
