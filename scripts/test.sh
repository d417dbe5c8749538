#!/usr/bin/env bash
# The README's test command: fetches what the tests need, then runs every test on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -x scripts/fetch-models.sh ]; then
  scripts/fetch-models.sh
fi
cargo test --locked "$@"
