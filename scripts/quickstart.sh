#!/usr/bin/env bash
# The README's main job on a fresh machine: fetch the offline default backbone, build, prepare the
# shipped real sample, train the quickstart config (Baseline on all-MiniLM-L6-v2) and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch-models.sh
cargo build --release --locked
bin=target/release/rmroute
$bin prepare --input data/sample --out prepared
$bin train-baseline --config configs/quickstart.json --force
$bin eval --model runs/quickstart --data prepared
$bin report runs/quickstart --out runs/quickstart --plot
