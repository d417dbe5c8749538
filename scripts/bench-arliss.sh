#!/usr/bin/env bash
# ARLISS inference against a Baseline model of the same backbone, measured side by side (never a timed
# test): 32 pairs of 128 tokens whose rows cycle through 5 domains, on the CPU with the machine's
# threads. Prints the Markdown table the README shows.
#   scripts/bench-arliss.sh [MODEL_DIR]      default models/all-MiniLM-L6-v2 (fetched if missing)
# Environment: ROUNDS (default 9; medians of interleaved rounds), KEEP_WORK=1 keeps the JSON figures.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/all-MiniLM-L6-v2}
[ -d "$model" ] || scripts/fetch-models.sh
cargo build --release --locked --example bench_arliss
bin=target/release/examples/bench_arliss
work=$(mktemp -d "${TMPDIR:-/tmp}/rmroute-bench-arliss.XXXXXX")
[ "${KEEP_WORK:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
"$bin" prepare "$work" --model "$model"
"$bin" throughput "$work" --rounds "${ROUNDS:-9}" > "$work/throughput.json"
# Memory: what the process holds, with mimalloc returning freed pages at once rather than after its
# default delay (loading's transient buffers would otherwise count as resident for a few milliseconds).
MIMALLOC_PURGE_DELAY=0 "$bin" memory baseline "$work" > "$work/memory-baseline.json"
MIMALLOC_PURGE_DELAY=0 "$bin" memory arliss "$work" > "$work/memory-arliss.json"
echo "$(git rev-parse --short HEAD 2>/dev/null || echo unknown), $(nproc) cores, $model"
echo
"$bin" table "$work"
[ "${KEEP_WORK:-0}" != 1 ] || echo "figures kept in $work"
