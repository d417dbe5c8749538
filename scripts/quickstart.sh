#!/usr/bin/env bash
# The README's main job on a fresh machine: fetch the offline default backbone, build, prepare the
# shipped real sample, train the quickstart config (RODOS on all-MiniLM-L6-v2: a reward model per domain
# and a router that sends each prompt to its domain's model) and evaluate it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
scripts/fetch-models.sh
cargo build --release --locked
bin=target/release/rmroute
$bin prepare --input data/sample --out prepared
$bin train-rodos --config configs/quickstart.json --force
$bin eval --model runs/quickstart --data prepared
$bin report runs/quickstart --out runs/quickstart --plot
cat <<'TEXT'

What to read above:
- The router (its accuracy per domain and the confusion matrix): it learned to tell the three domains
  apart from the prompt alone, well above chance (1/3), and sends each pair to its domain's reward model.
  That routing is what RODOS, ARLISS and DMoERM are about (MoRE routes inside the model).
- The pairwise accuracies (routed and oracle) are expected near chance (0.5): each domain's reward model
  saw 64 pairs for one epoch, far too few to learn which of two answers people prefer (the paper trains on
  tens of thousands; see "Reproducing the paper" in the README). HellaSwag stays near chance even
  in the paper.
TEXT
echo "quickstart: $(( $(date +%s) - start )) s in all; plots in runs/quickstart/*.svg"
